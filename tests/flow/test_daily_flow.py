"""The daily flow end to end on the CI config: the gate blocks, a late crash resumes from cache without
rewriting a row, a warm rerun redoes nothing, and the served champion reproduces the offline scores."""

import pytest

from flywheel.config import load_config
from flywheel.data.lake import PRIMARY_KEYS
from flywheel.data.schemas import SCHEMAS
from flywheel.evaluation import evaluate
from flywheel.judge import calibrate
from flywheel.labeling import candidates
from flywheel.labeling import daily as labeling
from flywheel.serving import registry
from flywheel.training import compression, ladder

pytestmark = pytest.mark.slow
DATE = "2026-01-05"


@pytest.fixture(scope="module")
def cfg():
    """One configuration for the module: the serving port is part of every task's cache key, so the tests after
    the first find its stages cached, as a daily run would (the service is stopped after each run)."""
    from tests.openai_stub import free_port

    return load_config("configs/ci.yaml").model_copy(update={"serve_port": free_port()})


def _count_calls(monkeypatch, module, name, counter):
    real = getattr(module, name)

    def wrapped(*a, **k):
        counter[name] = counter.get(name, 0) + 1
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)


def _assert_no_duplicate_rows(paths):
    from flywheel.data.lake import Lake

    lake = Lake(paths.lake)
    for table in SCHEMAS:
        df = lake.read(table)
        assert not df.duplicated(PRIMARY_KEYS[table]).any(), f"{table} has a row written twice"


def test_gate_blocks_bulk_labelling(prefect_server, cfg, home):
    from flows.daily import daily_flywheel
    from flywheel.data.lake import Lake

    strict = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"min_qwk": 0.99})})
    with pytest.raises(labeling.GateClosed, match="below the threshold 0.990"):
        daily_flywheel(strict, "2026-01-04")
    assert Lake(home / "lake").read("judge_labels").empty


def test_crash_in_a_late_stage_resumes_from_cache_and_warm_rerun_redoes_nothing(prefect_server, cfg, monkeypatch):
    from flows.daily import daily_flywheel
    from flywheel.serving.registry import alias_version
    from tasks._common import paths

    def broken(*a, **k):
        raise RuntimeError("injected failure in evaluation")

    monkeypatch.setattr(evaluate, "evaluate_all", broken)
    with pytest.raises(RuntimeError, match="injected failure"):
        daily_flywheel(cfg, DATE)
    monkeypatch.undo()
    first_files = {t: set((paths().lake / t).rglob("part-*.parquet")) for t in SCHEMAS}

    calls: dict = {}
    for mod, name in [(calibrate, "calibrate"), (candidates, "retrieve_candidates"), (labeling, "label_candidates"),
                      (labeling, "validate_labels"), (ladder, "train_teacher"), (ladder, "distil"),
                      (ladder, "simulate_engagement"), (ladder, "train_engagement_teacher"), (ladder, "prune_student"),
                      (evaluate, "evaluate_all"), (compression, "compress_student"),
                      (evaluate, "evaluate_compression"), (registry, "log_ranker"), (registry, "log_curves")]:
        _count_calls(monkeypatch, mod, name, calls)
    summary = daily_flywheel(cfg, DATE)
    # after the crash in evaluation: evaluation, compression, registration (4 rungs + 2 compressed) and the curves
    assert calls == {"evaluate_all": 1, "compress_student": 2, "evaluate_compression": 1, "log_ranker": 6,
                     "log_curves": 1}, f"stages before the crash ran again: {calls}"
    _assert_no_duplicate_rows(paths())
    for t in ("judge_labels", "candidates"):
        assert set((paths().lake / t).rglob("part-*.parquet")) == first_files[t]
    # teacher_scores only gained the deployable student's scores for compression distillation (after the crash)
    assert set((paths().lake / "teacher_scores").rglob("part-*.parquet")) >= first_files["teacher_scores"]
    ts = __import__("flywheel.data.lake", fromlist=["Lake"]).Lake(paths().lake).read("teacher_scores")
    assert set(ts.teacher) == {"teacher", "mid", "student", "engagement", summary["pruning"]["deployable"]}

    ev = summary["evaluation"]["systems"]
    assert set(ev) >= {"bm25", "judge", "teacher", "mid", "student", "student_pruned"}
    # every rung ranks the held-out test queries well above chance and near its teacher (random scores already
    # reach about 0.84 on these small judged pools, so the floor is measured, not assumed)
    import numpy as np

    from flywheel.data.golden import load_golden
    from flywheel.metrics import ndcg_at_10

    test = load_golden(cfg.resolve(cfg.golden)).pairs("test")
    rng = np.random.default_rng(0)
    chance = float(np.mean([ndcg_at_10(test, rng.random(len(test))) for _ in range(20)]))
    print({k: round(v["ndcg@10"], 4) for k, v in ev.items()}, f"chance {chance:.4f}")
    for rung in ("teacher", "mid", "student", "student_pruned"):
        assert ev[rung]["ndcg@10"] > chance + 0.02, (rung, ev[rung]["ndcg@10"], chance)
    assert ev["student"]["ndcg@10"] >= 0.97 * ev["teacher"]["ndcg@10"]
    # do no harm: the ladder's untrained start is a baseline beside the bi-encoder and BM25, and every rung was
    # validated on queries it never trained on — the teacher against the judge's labels, the distilled rungs
    # against their parent's ranking with the judge's figure beside it — and ended on its best validated state
    assert summary["evaluation"]["baselines"] == ["zero_shot_start", "bi-encoder", "bm25"]
    for rung in ("teacher", "mid", "student", "student_pruned"):
        v = summary["rungs"][rung]["validation"]
        # configs/ci.yaml has no retrieval pools (ladder.pool_per_query 0): every rung validates on the judge
        assert v["by"] == "judge" and "judge_kept" not in v and v["queries"] >= 5, (rung, v)
        kept = dict(v["validation_curve"])[v["best_step"]]
        assert kept == v["validation_best"] >= max(x for _, x in v["validation_curve"]) - 1e-4, (rung, v)
        assert v["kept"] in {"best", "start"} and v["validation_curve"][0][0] == 0
    rr = summary["evaluation"]["rerank"]
    assert rr["depth"] == 20 and 0 < rr["judged_share"] < 1 and "rerank_ndcg@10" in ev["teacher"]
    assert summary["evaluation"]["gate_metric"] == "rerank_ndcg@10"      # ~5 judged documents a query: small pools
    # unjudged documents only ever cost a system in the rerank protocol: removing them (condensed lists) cannot
    # lower its figure, and judged@10 says how many of its top ten a human judged
    for name, v in ev.items():
        if "rerank_ndcg@10" in v:
            assert 0 < v["rerank_judged@10"] <= 1, (name, v)
            assert v["rerank_condensed_ndcg@10"] >= v["rerank_ndcg@10"] - 1e-9, (name, v)
    assert summary["rungs"]["student_pruned"]["params_non_embedding"] < summary["rungs"]["student"]["params_non_embedding"]
    assert summary["calibration"]["test"]["qwk"] > 0.4
    # Compression: both forms evaluated on much shorter documents; the length curve and combined figure exist.
    comp = summary["compression"]
    assert set(comp["systems"]) == {"compressed_fields8", "compressed_soft2"}
    assert comp["systems"]["compressed_soft2"]["doc_tokens"] == 2
    assert comp["uncompressed"]["doc_tokens"] > 10 * 2
    assert comp["systems"]["compressed_fields8"]["doc_tokens"] <= 8
    assert len(comp["length_curve"]) == 4 and comp["combined"]["teacher_naive_items_per_s"] > 0
    acc = summary["pruning"]
    assert acc["deployable"] == ("student_pruned" if acc["ndcg_ratio"] >= 0.98 and acc["speedup"] > 1 else "student")
    # The judge labels carry their lineage.
    labels = __import__("flywheel.data.lake", fromlist=["Lake"]).Lake(paths().lake).read("judge_labels", DATE)
    assert labels.policy_hash.nunique() == 1 and labels.judge_version.eq(summary["calibration"]["judge_version"]).all()
    assert (labels.parse_status == "ok").all() and labels.grade.between(0, 3).all()
    # Served champion reproduces offline scores.
    dep = summary["deploy"]
    assert dep["pairs_checked"] > 10 and dep["max_abs_diff"] <= 1e-4 and dep["batching_max_abs_diff"] <= 1e-4
    champion = alias_version(cfg.registered_model, "champion", paths())
    assert champion is not None and summary["promotion"]["champion"] == str(champion.version)
    # Compressed students are registered under names of their own and served by alias like any ranker; the
    # soft-token one embeds the request's documents itself and scores them as evaluation did.
    import mlflow.pyfunc
    import numpy as np

    from flywheel.data.golden import load_golden
    from flywheel.retrieval.embeddings import doc_embeddings
    from models.ranker import load_ranker, score_pairs

    test = load_golden(cfg.resolve(cfg.golden)).pairs("test")
    sample = test[test.query_id.isin(sorted(test.query_id.unique())[:4])].reset_index(drop=True)
    for name in comp["systems"]:
        reg = summary["registered"][name]
        assert reg["name"] == f"{cfg.registered_model}-{name}"
        assert str(alias_version(reg["name"], "challenger", paths()).version) == reg["version"]
        m, tok, c = load_ranker(summary["rungs"][name]["path"])
        kw = {"doc_emb": doc_embeddings(sample, paths())} if c.compression == "soft" else {}
        offline = score_pairs(m, tok, c, sample["query"].tolist(), sample.title.tolist(), sample.text.tolist(), **kw)
        served = mlflow.pyfunc.load_model(f"models:/{reg['name']}@challenger").predict(
            sample[["query", "title", "text"]].iloc[::-1])[::-1]           # batch composition changed too
        assert np.abs(np.asarray(served) - np.asarray(offline)).max() <= 1e-4, name
        assert summary["promotion"]["compressed"][name]["challenger"] == reg["version"]

    calls.clear()
    again = daily_flywheel(cfg, DATE)
    assert calls == {}, f"a warm rerun recomputed {calls}"
    assert again["promotion"]["champion"] == str(champion.version)
    assert not again["promotion"]["promoted"] and "already the champion" in again["promotion"]["reason"]
    assert again["evaluation"] == summary["evaluation"]
    _assert_no_duplicate_rows(paths())


def test_a_bad_label_partition_stops_the_flow_before_training(prefect_server, cfg, monkeypatch):
    """Labels that reach the lake without passing their contract (a writer that skipped it, a hand edit) are caught
    by the validate stage, even on a rerun whose labelling is a cache hit, and nothing downstream runs."""
    from flows.daily import daily_flywheel
    from flywheel.data.contracts import ContractError
    from flywheel.data.lake import Lake
    from tasks._common import paths

    daily_flywheel(cfg, DATE)                                     # warm: the day is labelled and valid
    lake = Lake(paths().lake)
    bad = lake.read("judge_labels", DATE).head(3).assign(grade=9, doc_hash="not-a-real-hash")
    bad["grade"] = bad.grade.astype("Int8")
    part = lake.write("judge_labels", bad, date=DATE, validate=False)
    calls: dict = {}
    for name in ("train_teacher", "distil", "prune_student"):
        _count_calls(monkeypatch, ladder, name, calls)
    try:
        with pytest.raises(ContractError, match="judge_labels"):
            daily_flywheel(cfg, DATE)
        assert calls == {}, f"training ran on a partition that failed its contract: {calls}"
    finally:
        part.unlink()
    daily_flywheel(cfg, DATE)                                     # the partition restored: the day passes again


def test_a_policy_edit_is_picked_up_by_the_next_daily_run(prefect_server, cfg, tmp_path):
    """Recalibration first, then labels of the new judge version; the old version's labels stay."""
    from flows.daily import daily_flywheel
    from flywheel.data.lake import Lake
    from tasks._common import paths

    first = daily_flywheel(cfg, DATE)                     # cached from the test above, or computed
    edited = tmp_path / "policy.md"
    src = cfg.resolve(cfg.policy).read_text()
    edited.write_text(src.replace("Judge only from the dataset's name and description.",
                                  "Judge only from the dataset's name and its description."))
    second = daily_flywheel(cfg.model_copy(update={"policy": str(edited)}), "2026-01-06")
    old_v, new_v = first["calibration"]["judge_version"], second["calibration"]["judge_version"]
    assert old_v != new_v and second["calibration"]["policy_version"] != first["calibration"]["policy_version"]
    labels = Lake(paths().lake).read("judge_labels")
    before = labels[labels.judge_version == old_v]
    assert len(before) == first["labels"]["day_total"]      # old labels kept, marked with their version
    assert second["labels"]["labelled"] > 0 and (labels[labels.judge_version == new_v].policy_hash ==
                                                 second["calibration"]["policy_version"]).all()
    # the ladder retrains from the new version's labels (a prose edit leaves the offline grades as they were)
    assert second["rungs"]["teacher"]["path"] != first["rungs"]["teacher"]["path"]
