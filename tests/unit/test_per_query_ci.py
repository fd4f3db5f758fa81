"""Per-query NDCG@10 and paired-bootstrap intervals: the figures the quality bench puts beside each of the issue's
rules, so a ratio measured on a few dozen held-out queries says how far it can be trusted."""

import math

import numpy as np
import pandas as pd
import pytest

from flywheel.evaluation.evaluate import rerank_ndcg, rerank_ndcg_by_query
from flywheel.metrics import mean_of, ndcg_at_10, ndcg_at_10_by_query, paired_bootstrap_ci


def _dcg(gains):
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def test_ndcg_by_query_matches_hand_computed_values_and_averages_to_the_mean():
    # ids whose text order differs from their insertion order (q9 before q10): values stay with their query
    pairs = pd.DataFrame({"query_id": ["q9"] * 3 + ["q10"] * 2 + ["q3"] * 2,
                          "doc_id": ["a", "b", "c", "d", "e", "f", "g"],
                          "aggregated_grade": [3.0, 0.0, 1.0, 1.0, 2.0, 0.0, 0.0]})   # q3: nothing relevant
    scores = [0.1, 0.9, 0.5, 1.0, 0.0, 0.3, 0.2]            # q9: b, c, a; q10: d, e
    by = ndcg_at_10_by_query(pairs, scores)
    assert set(by) == {"q9", "q10"}                          # q3 has no ideal ranking: left out, as in the mean
    assert by["q9"] == pytest.approx(_dcg([0, 1, 3]) / _dcg([3, 1, 0]), rel=1e-9)
    assert by["q10"] == pytest.approx(_dcg([1, 2]) / _dcg([2, 1]), rel=1e-9)
    assert ndcg_at_10(pairs, scores) == mean_of(by) == pytest.approx((by["q9"] + by["q10"]) / 2)


def test_rerank_by_query_scores_an_empty_pool_zero_and_averages_to_the_protocol_figure():
    test = pd.DataFrame({"query_id": ["q1", "q1", "q2"], "doc_id": ["a", "b", "c"],
                         "aggregated_grade": [2.0, 0.0, 1.0]})
    pool = pd.DataFrame({"query_id": ["q1", "q1"], "doc_id": ["u", "a"], "aggregated_grade": [0.0, 2.0]})
    by = rerank_ndcg_by_query(test, pool, [0.9, 0.1])        # q1: u (unjudged) above a; q2's pool came back empty
    assert by == {"q1": pytest.approx(_dcg([0, 2]) / _dcg([2])), "q2": 0.0}
    assert rerank_ndcg(test, pool, [0.9, 0.1]) == pytest.approx(mean_of(by))


def test_bootstrap_interval_holds_the_measured_ratio_and_narrows_with_more_queries():
    rng = np.random.default_rng(7)

    def draw(n):                                            # a student ~5% below its teacher, noisy per query
        t = rng.uniform(0.4, 1.0, n)
        return ({f"q{i}": float(x) for i, x in enumerate(np.clip(t * 0.95 + rng.normal(0, 0.1, n), 0, 1))},
                {f"q{i}": float(x) for i, x in enumerate(t)})

    s57, t57 = draw(57)
    lo, hi = paired_bootstrap_ci(s57, t57)
    point = mean_of(s57) / mean_of(t57)
    assert lo < point < hi
    s900, t900 = draw(900)
    lo2, hi2 = paired_bootstrap_ci(s900, t900)
    assert (hi - lo) > 3 * (hi2 - lo2)                      # ~sqrt(900 / 57) = 4x narrower
    # a paired difference: a constant gain has no spread at all; a ratio of a system to itself is exactly 1
    dlo, dhi = paired_bootstrap_ci({q: v + 0.02 for q, v in t57.items()}, t57, "diff")
    assert dlo == pytest.approx(0.02) and dhi == pytest.approx(0.02)
    assert paired_bootstrap_ci(t57, t57) == (pytest.approx(1.0), pytest.approx(1.0))


def test_bootstrap_pairs_queries_by_id_and_refuses_what_it_cannot_pair():
    a = {"q1": 0.5, "q2": 0.7, "q3": 0.9}
    b = {"q3": 0.9, "q2": 0.7, "q1": 0.5, "q9": 0.0}        # other order, one extra query: paired by id, q9 dropped
    assert paired_bootstrap_ci(a, b) == (pytest.approx(1.0), pytest.approx(1.0))
    with pytest.raises(ValueError, match="2 or more queries in common"):
        paired_bootstrap_ci({"q1": 0.5}, {"q1": 0.4, "q2": 0.3})
    with pytest.raises(ValueError, match="'ratio' or 'diff'"):
        paired_bootstrap_ci(a, b, "quotient")
