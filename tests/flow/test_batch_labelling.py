"""Batch mode: submit, record the batch id, poll across runs, ingest, resubmit failed lines — no pair twice."""


from flywheel.config import load_config
from flywheel.data.golden import seed_golden
from flywheel.data.lake import open_lake as lake
from flywheel.judge.backends import OpenAIJudge
from flywheel.judge.online import OnlineSettings
from flywheel.judge.policy import load_policy
from flywheel.labeling import daily as labeling
from flywheel.labeling.candidates import retrieve_candidates
from flywheel.settings import get_paths
from tests.openai_stub import StubServer

DATE = "2026-05-01"


def test_batch_mode_across_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    paths = get_paths(tmp_path / "home")
    base = load_config("configs/ci.yaml")
    seed_golden(base.resolve(base.golden), lake(paths))
    with StubServer(batch_fail_rate=0.2) as server:
        judge_cfg = base.judge.model_copy(update={"backend": "openai", "mode": "batch", "openai_model": "stub",
                                                  "openai_base_url": server.base_url})
        cfg = base.model_copy(update={"judge": judge_cfg, "retrieval": base.retrieval.model_copy(
            update={"k_bm25": 2, "k_dense": 2, "n_random": 0})})
        version = OpenAIJudge(load_policy(cfg.resolve(cfg.policy)), "stub", server.base_url,
                              settings=OnlineSettings.from_config(cfg.judge)).version
        cal = {"judge_version": version, "gate": {"passed": True, "reason": "test"}}
        retrieve_candidates(DATE, cfg, paths)
        run1 = labeling.label_candidates(DATE, cal, cfg, paths)          # submits
        assert run1["labelled"] == 0 and run1["batch"]["submitted"] == run1["pending"] > 0
        batch_id = run1["batch"]["batch_id"]
        assert (paths.home / "batches" / version / f"{batch_id}.json").exists()
        run2 = labeling.label_candidates(DATE, cal, cfg, paths)          # still running: nothing resubmitted
        assert run2["batch"]["still_running"] == 1 and run2["batch"]["submitted"] == 0
        run3 = labeling.label_candidates(DATE, cal, cfg, paths)          # finished: ingest, resubmit failures
        failed = run3["batch"]["failed_lines"]
        assert run3["batch"]["ingested_batches"] == 1 and failed > 0
        assert run3["labelled"] == run1["pending"] - failed == run3["batch"]["labels"]
        assert run3["batch"]["submitted"] == failed
        for _ in range(12):                                             # later runs finish the failures
            r = labeling.label_candidates(DATE, cal, cfg, paths)
            if r["pending"] == 0:
                break
        assert r["pending"] == 0 and r["batch"]["submitted"] == 0
        assert server.stats.get("uploads", 0) >= 2
    labels = lake(paths).read("judge_labels", DATE)
    assert len(labels) == run1["pending"] and not labels.duplicated(["query_id", "doc_hash", "judge_version"]).any()
    assert labels.parse_status.eq("ok").all() and labels.run_id.nunique() >= 2
