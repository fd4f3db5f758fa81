"""The rerank protocol's NDCG@10: unjudged documents count as not relevant, and a relevant document the first
stage missed still counts in the ideal ranking (TREC-style), so the figure is below the judged-pool one."""

import math

import pandas as pd
import pytest

from flywheel.evaluation.evaluate import rerank_ndcg
from flywheel.metrics import ndcg_at_10


def _dcg(gains):
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def test_rerank_ndcg_counts_unjudged_as_zero_and_missed_relevant_in_the_ideal():
    test = pd.DataFrame({"query_id": ["q1"] * 3 + ["q2"] * 2, "doc_id": ["a", "b", "c", "x", "y"],
                         "aggregated_grade": [3.0, 1.0, 2.0, 0.0, 0.0]})          # q2 has nothing relevant
    # first stage for q1 found a, b and two unjudged documents u1, u2 — not c (grade 2)
    pool = pd.DataFrame({"query_id": ["q1"] * 4 + ["q2"], "doc_id": ["u1", "a", "u2", "b", "x"],
                         "aggregated_grade": [0.0, 3.0, 0.0, 1.0, 0.0]})
    scores = [0.9, 0.8, 0.1, 0.5, 1.0]                       # q1 ranking: u1, a, b, u2
    got = rerank_ndcg(test, pool, scores)
    want = _dcg([0, 3, 1, 0]) / _dcg([3, 2, 1])              # q2 left out: no relevant judgment
    assert got == pytest.approx(want, rel=1e-6)
    judged_only = ndcg_at_10(test[test.query_id == "q1"], [0.8, 0.5, 0.0])
    assert got < judged_only                                 # the same ranker, a harder protocol


def test_a_query_whose_pool_is_empty_scores_zero_not_skipped():
    test = pd.DataFrame({"query_id": ["q1", "q2"], "doc_id": ["a", "b"], "aggregated_grade": [2.0, 1.0]})
    pool = pd.DataFrame({"query_id": ["q1"], "doc_id": ["a"], "aggregated_grade": [2.0]})
    assert rerank_ndcg(test, pool, [1.0]) == pytest.approx(0.5)


def test_incompleteness_says_how_much_of_the_top_ten_was_judged_and_scores_the_judged_documents_alone():
    from flywheel.evaluation.evaluate import incompleteness

    # q3's one judgment averages 0.33 (one rater of three said 1): it rounds to 0, so NDCG leaves q3 out
    test = pd.DataFrame({"query_id": ["q1"] * 3 + ["q2", "q3"], "doc_id": ["a", "b", "c", "x", "z"],
                         "aggregated_grade": [3.0, 1.0, 2.0, 0.0, 1 / 3]})
    pool = pd.DataFrame({"query_id": ["q1"] * 4 + ["q2", "q3"], "doc_id": ["u1", "a", "u2", "b", "x", "u3"],
                         "aggregated_grade": [0.0, 3.0, 0.0, 1.0, 0.0, 0.0]})
    surfaces_unjudged = [0.9, 0.8, 0.7, 0.5, 1.0, 1.0]      # q1: u1, a, u2, b
    got = incompleteness(test, pool, surfaces_unjudged)
    assert got["judged@10"] == pytest.approx(0.5)            # q2, q3: nothing relevant: left out, as in NDCG
    # condensed: the unjudged documents removed, q1 ranks a, b; c (missed by the first stage) stays in the ideal
    assert got["condensed_ndcg@10"] == pytest.approx(_dcg([3, 1]) / _dcg([3, 2, 1]), rel=1e-6)
    assert rerank_ndcg(test, pool, surfaces_unjudged) < got["condensed_ndcg@10"]
    # the same order of the judged documents with the unjudged ones last: full judged@10 is not possible (4 in
    # the top 10, 2 judged), and the condensed figure does not move — it reads the judged documents' order only
    last = incompleteness(test, pool, [0.1, 0.8, 0.0, 0.5, 1.0, 1.0])
    assert last["judged@10"] == pytest.approx(0.5)
    assert last["condensed_ndcg@10"] == pytest.approx(got["condensed_ndcg@10"])
    assert rerank_ndcg(test, pool, [0.1, 0.8, 0.0, 0.5, 1.0, 1.0]) == pytest.approx(got["condensed_ndcg@10"])
