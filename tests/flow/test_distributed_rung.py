"""The ladder's tasks on 2 processes (torchrun, gloo), as on a GPU machine: kill -9 of one rank mid-epoch of the
teacher, Prefect's retry of the task resumes from the last step checkpoint and saves the very weights (same sha256)
an uninterrupted 2-process run saves; then the mid rung distilled on 2 processes, its teacher scores scored by both
ranks, one shard of queries each, stored once and equal to one process's scores."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import labelled_day

pytestmark = pytest.mark.slow
DATE = "2026-07-01"


def test_kill_9_of_a_rank_then_the_tasks_retry_resumes_and_ends_with_the_uninterrupted_weights(prefect_server,
                                                                                                monkeypatch):
    from prefect import flow

    from flywheel.data.lake import open_lake
    from flywheel.training import ladder
    from tasks import train

    paths, cfg, cal = labelled_day("configs/ci.yaml", DATE)
    teacher = cfg.ladder.rungs[0].model_copy(update={
        "strategy": "ddp", "launch": cfg.ladder.rungs[0].launch.model_copy(update={"nproc_per_node": 2})})
    cfg = cfg.model_copy(update={"ladder": cfg.ladder.model_copy(update={
        "rungs": [teacher, *cfg.ladder.rungs[1:]], "checkpoint_every": 2, "batch_size": 16})})
    labels_fp = open_lake(paths).fingerprint("judge_labels")

    @flow(name="teacher-on-two-processes")
    def teach():
        return train.train_teacher.with_options(refresh_cache=True)(cal["judge_version"], labels_fp, cfg)

    whole = teach()
    assert whole["validation"]["steps"] >= 6               # enough steps for a kill mid-epoch
    out = Path(whole["path"])
    assert not ladder.steps_dir(out).exists()              # step checkpoints go once the rung is saved

    held = ladder.steps_dir(out) / "held"
    monkeypatch.setenv("FLYWHEEL_TEST_HOLD_AT_STEP", "4")       # rank 1 waits after step 4's checkpoint, to be killed

    def kill_when_held():
        while not held.exists():
            time.sleep(0.1)
        os.kill(int(held.read_text()), signal.SIGKILL)

    threading.Thread(target=kill_when_held, daemon=True).start()
    again = teach()                                        # attempt 1 dies; the task's retry resumes
    assert again["model_version"] == whole["model_version"]                 # sha256 of the saved weights
    assert again["validation"]["validation_curve"] == whole["validation"]["validation_curve"]
    assert not ladder.steps_dir(out).exists()
    logs = "\n".join(p.read_text(errors="replace") for p in (paths.home / "jobs").rglob("*.log"))
    assert "HELD rank 1" in logs and "resumed from step-00000004.pt" in logs     # killed, then resumed: not redone

    from models.ranker import load_ranker, score_pairs

    monkeypatch.delenv("FLYWHEEL_TEST_HOLD_AT_STEP")          # the mid rung runs through

    mid_rung = cfg.ladder.rungs[1].model_copy(update={"strategy": "ddp", "launch": teacher.launch})
    cfg2 = cfg.model_copy(update={"ladder": cfg.ladder.model_copy(update={
        "rungs": [teacher, mid_rung, cfg.ladder.rungs[2]]})})

    @flow(name="mid-on-two-processes")
    def distil_mid():
        return train.distil.with_options(refresh_cache=True)("mid", again, cal["judge_version"], cfg2)

    mid = distil_mid()
    assert mid["parent"] == again["model_version"] and mid["train_pairs"] > 0
    stored = open_lake(paths).read("teacher_scores")
    stored = stored[stored.model_version == again["model_version"]]
    assert not stored.duplicated(["query_id", "doc_hash"]).any()            # each pair scored and stored once
    assert not list((paths.models / "score-parts" / again["model_version"]).glob("*.parquet"))  # merged, then gone
    pairs = ladder.distillation_pairs(again, cal["judge_version"], 0, cfg2, paths)   # read back from the lake
    m, tok, c = load_ranker(again["path"])
    sample = pairs.sample(min(60, len(pairs)), random_state=0)
    one = score_pairs(m, tok, c, sample["query"].tolist(), sample.title.tolist(), sample.text.tolist())
    assert sample.teacher_score.tolist() == pytest.approx(one, abs=1e-5)
