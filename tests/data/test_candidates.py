"""Stratified candidates: the calibrated judge's grades over the day's candidates cover the scale far more evenly
than top-k retrieval's, which piles up at the top grades."""

import numpy as np
import pytest

from flywheel.config import load_config
from flywheel.data.golden import seed_golden
from flywheel.data.lake import open_lake as lake
from flywheel.judge.calibrate import calibrate
from flywheel.judge.policy import load_policy
from flywheel.judge.store import load_judge
from flywheel.labeling.candidates import retrieve_candidates
from flywheel.settings import configure_environment


@pytest.fixture(scope="module")
def setup():
    paths = configure_environment()
    cfg = load_config("configs/ci.yaml")
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    cal = calibrate(cfg, paths)
    judge = load_judge(cal["judge_version"], load_policy(cfg.resolve(cfg.policy)), cfg, paths)
    return paths, cfg, judge


def _judged(date, cfg, paths, judge):
    out = retrieve_candidates(date, cfg, paths)
    lk = lake(paths)
    c = lk.read("candidates", date)
    q = lk.read("queries")[["query_id", "text"]].rename(columns={"text": "query"})
    d = lk.read("documents")[["doc_id", "title", "text"]]
    pairs = c.merge(q, on="query_id").merge(d, on="doc_id")
    return out, pairs.assign(grade=judge.judge(pairs).grade.to_numpy(dtype=int))


def test_stratified_candidates_cover_the_grade_scale(setup):
    paths, cfg, judge = setup
    topk_cfg = cfg.model_copy(update={"retrieval": cfg.retrieval.model_copy(update={
        "per_grade": 0, "k_bm25": 6, "k_dense": 6, "n_random": 2})})
    strat_cfg = cfg.model_copy(update={"retrieval": cfg.retrieval.model_copy(update={
        "per_grade": 3, "pool_depth": 30, "n_random": 4})})
    top_out, top = _judged("2026-04-01", topk_cfg, paths, judge)
    strat_out, strat = _judged("2026-04-02", strat_cfg, paths, judge)
    assert (strat.groupby("query_id").size() <= 12).all()
    assert sorted(strat_out["predicted_grades"]) == [0, 1, 2, 3]      # recorded with every candidate

    # Judged by the calibrated judge (the pre-judge only steered sampling). Measured at about the same budget
    # (722 vs 756 pairs): top-k ∪ random spans 2.76 grades per query, stratified 2.89, while the rare grade 3
    # keeps 40 of top-k's 44 pairs.
    span_top = top.groupby("query_id").grade.nunique().mean()
    span_strat = strat.groupby("query_id").grade.nunique().mean()
    n_top, n_strat = np.bincount(top.grade, minlength=4), np.bincount(strat.grade, minlength=4)
    print(f"grades per query: top-k {span_top:.2f}, stratified {span_strat:.2f}; "
          f"grade counts: top-k {n_top.tolist()}, stratified {n_strat.tolist()}")
    assert span_strat >= span_top + 0.1
    assert n_strat[3] >= 0.85 * n_top[3]
    # nearly every query's candidates span at least two predicted grades (top hits alone often span one)
    per_query = strat.groupby("query_id").predicted_grade.apply(lambda g: set(g.dropna().astype(int)))
    assert (per_query.apply(len) >= 2).mean() > 0.95

    again = retrieve_candidates("2026-04-02", strat_cfg, paths)
    assert again["fingerprint"] == strat_out["fingerprint"]        # same pool and seed: the same candidates


def test_calibrate_command_exits_3_when_the_gate_blocks(setup, tmp_path):
    """`flywheel calibrate` is the product manager's dry run of the gate: exit 0 and the agreement table when the
    judge may label, exit 3 and the reason when it may not."""
    import yaml
    from typer.testing import CliRunner

    from flywheel.cli import app

    paths, cfg, _ = setup
    raw = yaml.safe_load(open(cfg.resolve("configs/ci.yaml")))
    passing, strict = tmp_path / "ci.yaml", tmp_path / "strict.yaml"
    passing.write_text(yaml.safe_dump(raw | {"golden": str(cfg.resolve(cfg.golden)), "policy": str(cfg.resolve(cfg.policy))}))
    strict.write_text(yaml.safe_dump(raw | {"golden": str(cfg.resolve(cfg.golden)), "policy": str(cfg.resolve(cfg.policy)),
                                            "judge": raw["judge"] | {"min_qwk": 0.99}}))
    ok = CliRunner().invoke(app, ["calibrate", "--config", str(passing)])
    assert ok.exit_code == 0, ok.output
    blocked = CliRunner().invoke(app, ["calibrate", "--config", str(strict), "--output", str(tmp_path / "s.json")])
    assert blocked.exit_code == 3, blocked.output
    assert "0.990" in blocked.output and '"passed": false' in (tmp_path / "s.json").read_text()


def test_pseudo_queries_are_seeded_once_and_retrieved_like_real_queries(tmp_path):
    """retrieval.pseudo_queries: queries made from documents join the lake's queries (never the test split), the
    day's candidates include pools for them, so the judge labels them; adding them again changes nothing, so the
    candidates' cache key (the queries' fingerprint) stays the same from day to day."""
    from flywheel.labeling.candidates import add_pseudo_queries
    from flywheel.settings import get_paths

    paths = get_paths(tmp_path / "home")
    for p in (paths.lake, paths.models):
        p.mkdir(parents=True, exist_ok=True)
    cfg = load_config("configs/ci.yaml")
    lk = lake(paths)
    seed_golden(cfg.resolve(cfg.golden), lk)
    before = lk.read("queries")
    stats = add_pseudo_queries(15, cfg.seed, lk)
    assert stats["requested"] == 15 and stats["made"] == 15 and not stats.get("why_fewer")
    fp = lk.fingerprint("queries")
    after = lk.read("queries")
    made = after[after.query_id.str.startswith("pseudo:")]
    assert len(after) == len(before) + 15 and len(made) == 15 and stats["added"] == 15
    assert made.split.isna().all() and made.source.str.startswith("pseudo:").all()
    assert not set(made.text.str.lower()) & set(before.text.str.lower())      # never a golden query's text
    assert add_pseudo_queries(15, cfg.seed, lk)["added"] == 0 and lk.fingerprint("queries") == fp
    more = add_pseudo_queries(25, cfg.seed, lk)                    # asking for more later adds only the new ones
    after = lk.read("queries")
    made = after[after.query_id.str.startswith("pseudo:")]
    assert more["added"] == 10 and after.query_id.is_unique and len(made) == 25

    out = retrieve_candidates("2026-04-03", cfg, paths)
    cands = lk.read("candidates", "2026-04-03")
    assert set(made.query_id) <= set(cands.query_id)                       # every pseudo-query gets a pool
    assert out["queries"] == int((after.split.fillna("") != "test").sum())
