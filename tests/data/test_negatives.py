"""Assumed negatives for positive-only qrels (flywheel/retrieval/negatives.py): sampled from each query's unjudged
first-stage candidates, grade 0, marked by rater_id, hard ones among the top ranks, seeded, and only when the
qrels lack judged zeros."""

import json
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from flywheel.data.beir import read_beir
from flywheel.data.lake import Lake
from flywheel.retrieval.negatives import ASSUMED_RATER, add_assumed_negatives, is_positive_only

ROOT = Path(__file__).resolve().parents[2]
CRANFIELD = ROOT.parent / "shared" / "datasets" / "cranfield" / "beir"
TOPICS = ["crime incidents", "city budget", "building permits", "school test scores", "restaurant inspections",
          "traffic collisions", "park facilities", "affordable housing", "water quality", "bus ridership",
          "tree inventory", "library loans"]
CITIES = ["Austin", "Boston", "Chicago", "Denver", "Seattle"]
# query -> (split, judged (doc, grade) pairs); positives only, as in most BEIR sets
QRELS = {"q0": ("dev", [("d0-0", 3), ("d0-1", 1)]), "q1": ("dev", [("d3-2", 3), ("d3-4", 2), ("d4-2", 1)]),
         "q2": ("test", [("d5-1", 3), ("d5-3", 1)]), "q3": ("test", [("d8-0", 2), ("d8-4", 2)])}
QUERIES = {"q0": "crime incidents Austin", "q1": "school test scores Chicago", "q2": "traffic collisions Boston",
           "q3": "water quality"}
PER_QUERY, DEPTH, HARD_SHARE = 10, 30, 0.5


def _beir(d: Path, qrels: dict = QRELS) -> Path:
    """60 documents (12 topics x 5 cities), 4 queries, qrels as given."""
    (d / "qrels").mkdir(parents=True)
    docs = [{"_id": f"d{ti}-{ci}", "title": f"{c} {t.title()}",
             "text": f"Records of {t} in {c}, published by the city of {c} and updated every month."}
            for ti, t in enumerate(TOPICS) for ci, c in enumerate(CITIES)]
    (d / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in docs))
    (d / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    for split in ("dev", "test"):
        rows = [(q, doc, g) for q, (s, judged) in qrels.items() if s == split for doc, g in judged]
        (d / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                                  + "".join(f"{q}\t{c}\t{g}\n" for q, c, g in rows))
    return d


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    return read_beir(_beir(tmp_path_factory.mktemp("beir") / "city"))


@pytest.fixture(scope="module")
def retriever(tables):
    from flywheel.retrieval.hybrid import HybridRetriever

    return HybridRetriever(tables["documents"])


def _add(tables, retriever, **kw):
    kw = {"per_query": PER_QUERY, "depth": DEPTH, "hard_share": HARD_SHARE, "retriever": retriever} | kw
    return add_assumed_negatives(tables, **kw)


def _assumed(t) -> pd.DataFrame:
    lab = t["golden_labels"]
    return lab[lab.rater_id == ASSUMED_RATER]


def _pairs(df: pd.DataFrame) -> set:
    return set(zip(df.query_id, df.doc_id))


def test_positive_only_qrels_get_assumed_negatives_per_query(tables, retriever):
    assert is_positive_only(tables["golden_labels"])
    out, stats = _add(tables, retriever)
    neg, human = _assumed(out), tables["golden_labels"]
    assert stats["positive_only"] and stats["applied"] and stats["assumed_negatives"] == 4 * PER_QUERY
    assert neg.groupby("query_id").size().to_dict() == {f"city:{q}": PER_QUERY for q in QRELS}
    assert not _pairs(neg) & _pairs(human)              # never a judged document
    assert not neg.duplicated(["query_id", "doc_id"]).any()
    assert (neg.grade == 0).all() and (neg.aggregated_grade == 0).all() and (neg.n_raters == 1).all()
    split = dict(zip(human.query_id, human.split))
    assert (neg.split == neg.query_id.map(split)).all()
    assert {k: v["assumed_negatives"] for k, v in stats["per_split"].items()} == {"calibration": 20, "test": 20}
    pd.testing.assert_frame_equal(out["golden_labels"][out["golden_labels"].rater_id != ASSUMED_RATER], human)


def test_the_labels_fit_the_golden_labels_schema_and_contract(tables, retriever, tmp_path):
    out, _ = _add(tables, retriever)
    Lake(tmp_path / "lake").write("golden_labels", out["golden_labels"])   # validates schema and contracts
    back = Lake(tmp_path / "lake").read("golden_labels")
    assert (back.rater_id == ASSUMED_RATER).sum() == 4 * PER_QUERY


def test_at_least_hard_share_come_from_the_top_ranks(tables, retriever):
    out, stats = _add(tables, retriever)
    n_hard = round(HARD_SHARE * PER_QUERY)
    assert stats["hard"] == 4 * n_hard
    q = tables["queries"][tables["queries"].query_id.isin(out["golden_labels"].query_id)]
    c = retriever.candidates(q, k_bm25=DEPTH, k_dense=DEPTH, n_random=0)
    c["best"] = c[["bm25_rank", "dense_rank"]].min(axis=1)
    best = dict(zip(zip(c.query_id, c.doc_id), c.best))
    n_judged = tables["golden_labels"].groupby("query_id").size()
    for qid, g in _assumed(out).groupby("query_id"):
        ranks = [best[(qid, d)] for d in g.doc_id]     # every negative is a first-stage candidate
        # the k-th best-ranked candidate has best rank <= k; judged documents may take some of the top places
        assert sum(r <= n_hard + n_judged[qid] for r in ranks) >= n_hard, (qid, sorted(ranks))
        assert max(ranks) <= DEPTH


def test_seeded_deterministic_and_per_query(tables, retriever):
    a, _ = _add(tables, retriever, seed=7)
    b, _ = _add(tables, retriever, seed=7)
    pd.testing.assert_frame_equal(a["golden_labels"], b["golden_labels"])
    c, _ = _add(tables, retriever, seed=8)
    assert _pairs(_assumed(a)) != _pairs(_assumed(c))
    again, _ = _add(a, retriever, seed=7)            # assumed rows are replaced, not stacked
    pd.testing.assert_frame_equal(again["golden_labels"], a["golden_labels"])
    lab = tables["golden_labels"]
    one = dict(tables, golden_labels=lab[lab.query_id == "city:q2"])
    solo, _ = _add(one, retriever, seed=7)            # a query's sample does not depend on the others
    assert set(_assumed(solo).doc_id) == set(_assumed(a)[_assumed(a).query_id == "city:q2"].doc_id)


def test_judged_zeros_leave_the_dataset_unchanged_in_auto_mode(tmp_path):
    qrels = {q: (s, judged + [(f"d{(i + 6) % 12}-0", 0)]) for i, (q, (s, judged)) in enumerate(QRELS.items())}
    t = read_beir(_beir(tmp_path / "graded", qrels))
    assert not is_positive_only(t["golden_labels"])
    out, stats = add_assumed_negatives(t)              # no retriever is built when nothing is added
    assert not stats["positive_only"] and not stats["applied"] and stats["assumed_negatives"] == 0
    for name in t:
        pd.testing.assert_frame_equal(out[name], t[name])


def test_mode_forces_the_decision(tables, retriever, tmp_path):
    out, stats = _add(tables, retriever, mode="never")
    assert stats["assumed_negatives"] == 0 and len(out["golden_labels"]) == len(tables["golden_labels"])
    qrels = {q: (s, judged + [(f"d{(i + 6) % 12}-0", 0)]) for i, (q, (s, judged)) in enumerate(QRELS.items())}
    graded = read_beir(_beir(tmp_path / "city", qrels))     # same name and documents: the retriever fits
    out, stats = _add(graded, retriever, mode="always")
    assert stats["applied"] and len(_assumed(out)) == 4 * PER_QUERY
    assert not _pairs(_assumed(out)) & _pairs(graded["golden_labels"])


@pytest.mark.parametrize("kw, message", [({"mode": "sometimes"}, "mode must be"), ({"per_query": 0}, "per_query"),
                                         ({"hard_share": 1.5}, "hard_share")])
def test_bad_arguments_are_named(tables, kw, message):
    with pytest.raises(ValueError, match=message):
        add_assumed_negatives(tables, **kw)


def test_quality_bench_golden_counts_human_and_assumed_apart(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    from quality import golden_from_beir

    from flywheel.data.golden import load_golden

    counts = golden_from_beir(_beir(tmp_path / "city"), tmp_path / "golden", "auto", PER_QUERY)
    assert counts["queries"] == 4 and counts["test_queries"] == 2 and counts["documents"] == 60
    assert counts["judged_pairs"] == 9                  # human judgments only
    assert counts["positive_only_qrels"] and counts["assumed_negatives"] == 4 * PER_QUERY
    assert counts["assumed_negatives_per_split"] == {"calibration": 20, "test": 20}
    g = load_golden(tmp_path / "golden")
    assert (g.pairs("test").aggregated_grade == 0).sum() == 2 * PER_QUERY
    never = golden_from_beir(tmp_path / "city", tmp_path / "golden-never", "never")
    assert never["assumed_negatives"] == 0 and never["judged_pairs"] == 9


def test_cli_import_adds_the_assumed_negatives_to_the_lake(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from flywheel.cli import app

    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(app, ["import", "beir", str(_beir(tmp_path / "city")), "--negatives-per-query", "5"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["assumed_negatives"] == 20
    lab = Lake(tmp_path / "home" / "lake").read("golden_labels")
    assert (lab.rater_id == ASSUMED_RATER).sum() == 20 and (lab.rater_id != ASSUMED_RATER).sum() == 9
    r = CliRunner().invoke(app, ["import", "beir", str(tmp_path / "city"), "--negatives", "maybe"])
    assert r.exit_code == 2 and "--negatives" in r.output


@pytest.mark.slow
@pytest.mark.skipif(not CRANFIELD.exists(), reason="../shared/datasets/cranfield not present")
def test_cranfield_every_query_gets_grade_zero_pairs():
    """Real positive-only qrels: before, no query has a grade-0 pair; after, every query does (65-145 s on 2
    shared cores, most of it encoding the 1,400 abstracts)."""
    t = read_beir(CRANFIELD)
    assert is_positive_only(t["golden_labels"])
    assert (t["golden_labels"].grade > 0).all()
    start = time.monotonic()
    out, stats = add_assumed_negatives(t)
    lab = out["golden_labels"]
    zero_share = lab.groupby("query_id").grade.apply(lambda g: (g == 0).mean())
    assert len(zero_share) == 225 and (zero_share > 0).all()
    assert stats["assumed_negatives"] == 225 * 20 and stats["short_queries"] == 0
    print(f"cranfield: {stats} in {time.monotonic() - start:.0f} s", file=sys.stderr)
