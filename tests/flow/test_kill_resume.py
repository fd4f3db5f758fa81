"""kill -9 during labelling, then rerun: the same labels as an uninterrupted run, and no committed pair judged
twice — for the offline judge and for the openai backend against a local OpenAI-compatible server.

The victim does not race a timer: its progress callback blocks for good once enough pairs are done and says so
on stdout; the test kills it only then, so a slow or a fast machine kills it at the same point."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from tests.openai_stub import free_port

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-03-01"

DRIVER = textwrap.dedent("""
    import sys, json, threading
    from flywheel.settings import configure_environment
    paths = configure_environment()
    from flywheel.config import load_config
    from flywheel.data.golden import seed_golden
    from flywheel.data.lake import open_lake
    from flywheel.judge.backends import OpenAIJudge
    from flywheel.judge.calibrate import calibrate
    from flywheel.judge.online import OnlineSettings
    from flywheel.judge.policy import load_policy
    from flywheel.labeling import daily as labeling
    from flywheel.labeling.candidates import retrieve_candidates
    date, block_after, base_url = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    cfg = load_config("configs/ci.yaml")
    seed_golden(cfg.resolve(cfg.golden), open_lake(paths))
    if base_url != "-":
        cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={
            "backend": "openai", "openai_base_url": base_url, "openai_model": "stub", "max_in_flight": 4})})
        version = OpenAIJudge(load_policy(cfg.resolve(cfg.policy)), "stub", base_url,
                              settings=OnlineSettings.from_config(cfg.judge)).version
        cal = {"judge_version": version, "gate": {"passed": True, "reason": "test"}}
    else:
        cal = calibrate(cfg, paths)
    retrieve_candidates(date, cfg, paths)
    print("PENDING", len(labeling.pending_pairs(date, cal["judge_version"], paths)), flush=True)
    done = [0]

    def progress(n=1):
        done[0] += n
        if block_after and done[0] >= block_after:
            print("BLOCKED", done[0], flush=True)
            threading.Event().wait()          # hold here until killed (the online labeller's loop with it)

    out = labeling.label_candidates(date, cal, cfg, paths, batch_size=16, progress=progress)
    print("DONE", json.dumps({"labelled": out["labelled"], "version": cal["judge_version"]}), flush=True)
""")


def _finish(proc: subprocess.Popen) -> str:
    """stdout of a run that must end by itself; killed if it has not after 10 minutes."""
    try:
        return proc.communicate(timeout=600)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _run(home: Path, block_after: int, base_url: str = "-"):
    env = {**os.environ, "FLYWHEEL_HOME": str(home), "OPENAI_API_KEY": "k"}
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "MLFLOW_TRACKING_URI", "HF_HOME", "MPLCONFIGDIR",
              "IR_DATASETS_HOME"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, "-c", DRIVER, DATE, str(block_after), base_url], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)


def _labels(home: Path):
    from flywheel.data.lake import Lake

    return Lake(home / "lake").read("judge_labels", DATE)


def _pending(out: str) -> int:
    return int(next(line for line in out.splitlines() if line.startswith("PENDING")).split()[1])


def _stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture()
def stub_server():
    """The OpenAI-compatible stub as a process of its own (it must outlive the killed labeller)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "tests/openai_stub.py", "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(600):
            try:
                _stats(url)
                break
            except OSError:
                assert proc.poll() is None, "the stub server exited"
                time.sleep(0.1)
        yield url
    finally:
        proc.kill()
        proc.wait()


def _kill_and_resume(tmp_path, base_url: str = "-"):
    clean = _run(tmp_path / "clean", 0, base_url)
    out = _finish(clean)
    total = _pending(out)
    assert clean.returncode == 0 and "DONE" in out

    victim = _run(tmp_path / "killed", 40, base_url)
    try:
        lines = []
        for line in victim.stdout:                  # read until it says it is blocked mid-run
            lines.append(line)
            if line.startswith(("BLOCKED", "DONE")):
                break
        assert lines and lines[-1].startswith("BLOCKED"), f"the victim did not block: {lines}"
    finally:
        os.kill(victim.pid, signal.SIGKILL)         # blocked for good, or failed: either way it goes now
        victim.wait()
    committed = len(_labels(tmp_path / "killed"))
    assert 0 < committed < total

    rerun = _run(tmp_path / "killed", 0, base_url)
    out = _finish(rerun)
    assert rerun.returncode == 0, out
    assert _pending(out) == total - committed            # nothing committed is asked again

    a = _labels(tmp_path / "clean").sort_values(["query_id", "doc_id"]).reset_index(drop=True)
    b = _labels(tmp_path / "killed").sort_values(["query_id", "doc_id"]).reset_index(drop=True)
    assert not b.duplicated(["query_id", "doc_hash", "judge_version"]).any()
    assert len(a) == len(b) == total
    cols = ["query_id", "doc_id", "doc_hash", "grade", "score", "judge_version", "policy_hash", "parse_status"]
    assert a[cols].equals(b[cols])
    return total, committed


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_uninterrupted_labels(tmp_path):
    _kill_and_resume(tmp_path)


@pytest.mark.slow
def test_kill_9_of_an_openai_labelling_run_loses_only_the_requests_in_flight(tmp_path, stub_server):
    total, committed = _kill_and_resume(tmp_path, stub_server)
    # three runs over the same pairs: the clean one asked each pair once; the killed and resumed ones together asked
    # each pair once more, except those in flight or finished-but-uncommitted at the kill (asked twice)
    stats = _stats(stub_server)
    lost = stats["calls"] - 2 * total
    assert 0 <= lost <= 40 - committed + 4 and stats["max_requests_per_pair"] <= 3, (stats, total, committed)
