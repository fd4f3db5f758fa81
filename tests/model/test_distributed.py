"""Training across processes on CPUs (gloo), as a GPU cluster runs it: ``torchrun`` jobs started by
flywheel.training.launch on a tiny Qwen3 ranker (tests/dist_jobs.py).

- DDP over 2 processes takes the optimizer steps of one process with the same global batch (one process
  accumulating 2 micro-batches): the same weights, bitwise on CPU float32 (tolerance 1e-6 stated in case a
  platform's gloo sums in another order);
- FSDP2 over 2 processes: the same weights within 1e-6 (its reduce-scatter sums gradients in another order);
- kill -9 of one rank mid-epoch: the launch fails naming that rank and the signal; the rerun resumes from the last
  step checkpoint and ends with the uninterrupted run's weights;
- a rank that raises fails the launch with that rank's own traceback.
"""

import os
import signal
import threading
import time

import pytest
import torch

from flywheel.config import FlywheelConfig, LaunchSettings
from flywheel.training import launch
from models.data import micro_batches
from models.train import accumulation_steps
from tests.dist_jobs import save_tiny_base

TWO = LaunchSettings(nproc_per_node=2)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Qwen3 ranker saved as the jobs' starting point."""
    d = tmp_path_factory.mktemp("dist")
    save_tiny_base(d / "base")
    return d


def _run(base, name: str, world: LaunchSettings = TWO, log=None, **kw) -> tuple[dict, dict]:
    from flywheel.settings import configure_environment

    out = base / f"{name}.pt"
    res = launch.run("tests.dist_jobs:train_toy", {"base": str(base / "base"), "out": str(out), **kw}, world,
                     FlywheelConfig(), configure_environment(), log=log or (lambda line: None))
    return res, torch.load(out)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def single(base):
    """One process, 2 micro-batches accumulated per step: the reference for 2 processes x 1 micro-batch."""
    return _run(base, "single", LaunchSettings(), accum=2)


@pytest.fixture(scope="module")
def ddp(base):
    return _run(base, "ddp", strategy="ddp")


def test_global_batch_is_the_configured_one_whatever_the_number_of_processes():
    assert accumulation_steps(32, 1, 8, None) == 4 and accumulation_steps(32, 2, 8, None) == 2
    assert accumulation_steps(32, 4, None, 2) == 2 and accumulation_steps(32, 2, None, None) == 1
    with pytest.raises(ValueError, match="micro_batch_size x grad_accum_steps x processes"):
        accumulation_steps(32, 2, 5, None)
    import numpy as np

    b = np.arange(7)
    parts = [[m.tolist() for m in micro_batches(b, 2, 2, r)] for r in range(2)]   # 4 parts, part j to rank j mod 2
    assert parts == [[[0, 1], [4, 5]], [[2, 3], [6]]]
    q = np.array([0, 0, 0, 1, 1, 2, 3])                                            # cut between queries
    assert [[m.tolist() for m in micro_batches(b, 2, 2, r, q)] for r in range(2)] == [[[0, 1, 2], [5]], [[3, 4], [6]]]


def test_ddp_on_two_processes_equals_one_process_with_the_same_global_batch(base, single, ddp):
    from models.ranker import load_ranker

    (one, w1), (two, w2) = single, ddp
    assert two["world"] == 2 and two["strategy"] == "ddp" and one["world"] == 1
    assert len(one["losses"]) == len(two["losses"]) == 10                  # 40 pairs / 8 a step x 2 epochs
    assert two["losses"] == pytest.approx(one["losses"], abs=1e-6)
    assert _max_diff(w1, w2) <= 1e-6
    start = load_ranker(base / "base")[0].state_dict()
    assert _max_diff(w1, start) > 1e-3                                      # and training did move the weights


def test_fsdp_validates_every_two_steps_and_keeps_the_best_state_like_one_process(base):
    """FSDP2 on 2 processes with validation every 2 steps: every rank runs the sharded model forward on the
    held-out pairs, rank 0's figure decides; the same history, best step and weights (1e-6: FSDP's reduce-scatter
    sums gradients in another order) as one process accumulating 2 micro-batches."""
    one, w1 = _run(base, "val-single", LaunchSettings(), accum=2, validate=True)
    two, w2 = _run(base, "val-fsdp", strategy="fsdp", validate=True)
    assert two["strategy"] == "fsdp" and two["world"] == 2
    steps = [0, 2, 4, 5, 6, 8, 10]                      # every 2 steps and at each epoch's end (5 steps an epoch)
    assert [s for s, _ in two["history"]] == [s for s, _ in one["history"]] == steps
    assert [v for _, v in two["history"]] == pytest.approx([v for _, v in one["history"]], abs=1e-5)
    assert two["best_step"] == one["best_step"] and _max_diff(w1, w2) <= 1e-6


def test_kill_9_of_a_rank_mid_epoch_then_rerun_resumes_from_the_step_checkpoint(base, ddp, monkeypatch):
    ck = base / "steps-killed"
    monkeypatch.setenv("FLYWHEEL_TEST_HOLD_AT_STEP", "6")     # the last rank waits after step 6's checkpoint
    kw = {"strategy": "ddp", "checkpoint_every": 3, "ckpt_dir": str(ck)}

    def kill_when_held():
        while not (ck / "held").exists():
            time.sleep(0.1)
        os.kill(int((ck / "held").read_text()), signal.SIGKILL)

    threading.Thread(target=kill_when_held, daemon=True).start()
    with pytest.raises(launch.RankFailed, match=r"rank 1 failed: killed by signal 9 \(SIGKILL\)") as err:
        _run(base, "killed", **kw)
    assert err.value.rank == 1
    assert sorted(p.name for p in ck.glob("step-*.pt")) == ["step-00000003.pt", "step-00000006.pt"]
    lines: list[str] = []
    res, w = _run(base, "killed", log=lines.append, **kw)                # the same job again: resumes at step 6
    assert res["losses"] == pytest.approx(ddp[0]["losses"], abs=1e-6)
    assert _max_diff(ddp[1], w) <= 1e-6
    for r in (0, 1):                                                   # every rank's log reaches the caller
        assert any(line.startswith(f"[default{r}]") and "resumed from step-00000006.pt" in line for line in lines)


def test_a_rank_that_raises_fails_the_launch_with_its_own_traceback(base):
    with pytest.raises(launch.RankFailed, match=r"rank \d failed: ValueError: ladder.batch_size 8 must equal") as err:
        _run(base, "bad", strategy="ddp", micro=3)
    assert "Traceback" in str(err.value)


def test_two_machines_meet_at_the_rendezvous_and_train_as_two_processes_of_one_machine(base, ddp):
    """Node 0 launches a 2-node job (one process each, c10d rendezvous on a free port); `flywheel join`, started
    as the other machine would start it, finds the job in the shared home and runs its share: the weights of
    2 processes on one machine, and `join` exits 0."""
    import subprocess
    import sys

    from flywheel.settings import REPO_ROOT, get_paths
    from tests.openai_stub import free_port

    nodes = LaunchSettings(nproc_per_node=1, nnodes=2, rdzv_endpoint=f"127.0.0.1:{free_port()}")
    joiner = subprocess.Popen([sys.executable, "-m", "flywheel.cli", "join", "--since", str(time.time() - 1),
                               "--idle-timeout", "120"], cwd=REPO_ROOT,
                              env=os.environ | {"FLYWHEEL_HOME": str(get_paths().home)})
    try:
        res, w = _run(base, "nodes", nodes, strategy="ddp")
        assert joiner.wait(timeout=120) == 0
    finally:
        joiner.kill()
    assert res["world"] == 2
    assert _max_diff(ddp[1], w) <= 1e-6
