"""kill -9 during labelling, then rerun: the same labels as an uninterrupted run, and no pair judged twice."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-03-01"

DRIVER = textwrap.dedent("""
    import sys, time, json
    from flywheel.settings import configure_environment
    paths = configure_environment()
    from flywheel.config import load_config
    from flywheel.data.lake import open_lake as lake
    from flywheel.data.golden import seed_golden
    from flywheel.judge.calibrate import calibrate
    from flywheel.labeling import daily as labeling
    from flywheel.labeling.candidates import retrieve_candidates
    cfg = load_config("configs/ci.yaml")
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    cal = calibrate(cfg, paths)
    retrieve_candidates(sys.argv[1], cfg, paths)
    slow = float(sys.argv[2])
    print("PENDING", len(labeling.pending_pairs(sys.argv[1], cal["judge_version"], paths)), flush=True)
    out = labeling.label_candidates(sys.argv[1], cal, cfg, paths, batch_size=16,
                                    progress=lambda n: time.sleep(slow))
    print("DONE", json.dumps({"labelled": out["labelled"], "version": cal["judge_version"]}), flush=True)
""")


def _run(home: Path, slow: float, **kw):
    env = {**os.environ, "FLYWHEEL_HOME": str(home)}
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "MLFLOW_TRACKING_URI", "HF_HOME", "MPLCONFIGDIR",
              "IR_DATASETS_HOME"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-c", DRIVER, DATE, str(slow)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, **kw)


def _labels(home: Path):
    from flywheel.data.lake import Lake

    return Lake(home / "lake").read("judge_labels", DATE)


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_labels(tmp_path):
    clean = _run(tmp_path / "clean", 0.0)
    out, _ = clean.communicate(timeout=600)
    total = int(next(l for l in out.splitlines() if l.startswith("PENDING")).split()[1])
    assert clean.returncode == 0 and "DONE" in out

    victim = _run(tmp_path / "killed", 0.5)
    part = tmp_path / "killed" / "lake" / "judge_labels" / f"date={DATE}"
    deadline = time.time() + 600
    while len(list(part.glob("part-*.parquet"))) < 3:
        assert victim.poll() is None, "labelling finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    committed = len(_labels(tmp_path / "killed"))
    assert 0 < committed < total

    rerun = _run(tmp_path / "killed", 0.0)
    out, _ = rerun.communicate(timeout=600)
    pending_after = int(next(l for l in out.splitlines() if l.startswith("PENDING")).split()[1])
    assert pending_after == total - committed            # nothing committed is asked again
    assert rerun.returncode == 0

    a = _labels(tmp_path / "clean").sort_values(["query_id", "doc_id"]).reset_index(drop=True)
    b = _labels(tmp_path / "killed").sort_values(["query_id", "doc_id"]).reset_index(drop=True)
    assert not b.duplicated(["query_id", "doc_hash", "judge_version"]).any()
    assert len(a) == len(b) == total
    cols = ["query_id", "doc_id", "doc_hash", "grade", "score", "judge_version", "policy_hash", "parse_status"]
    assert a[cols].equals(b[cols])
