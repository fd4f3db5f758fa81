"""Launch a rung's training where its config says: in this process, or as a ``torchrun`` job.

``launch.nproc_per_node`` × ``launch.nnodes`` = 1 runs the function here, as before. More processes: the job
(function, its JSON arguments, the config) is written to ``FLYWHEEL_HOME/jobs/<name>-<key>/job.json`` and
``python -m torch.distributed.run`` starts :mod:`flywheel.training.worker` on every rank, which calls the same
function (every rank trains its share; rank 0 saves and writes ``result.json``). One machine uses ``--standalone``
(a free local port); several meet at ``rdzv_endpoint`` through the c10d rendezvous — run the same flow task on
each machine, with ``FLYWHEEL_HOME`` on storage they share (step checkpoints and the result are read from it).

Every rank's output is streamed to ``log`` line by line, prefixed with its rank by torchrun (``--tee 3``), and kept
under ``logs/`` in the job directory. A failed rank fails the launch with that rank's error (the traceback the
worker wrote, or the signal that killed it); the task's retry launches again and the training resumes from its
last step checkpoint (:func:`models.train.train_ranker`), not from step 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

from flywheel.config import FlywheelConfig, LaunchSettings
from flywheel.data.lake import sha256_text
from flywheel.settings import REPO_ROOT, Paths


class RankFailed(RuntimeError):
    """A distributed rung failed; ``rank`` is the first failed rank (None when torchrun gave no rank)."""

    def __init__(self, message: str, rank: int | None = None):
        super().__init__(message)
        self.rank = rank


def resolve(target: str) -> Callable:
    """``package.module:function`` → the function."""
    import importlib

    module, _, name = target.partition(":")
    if not name:
        raise ValueError(f"job target {target!r} must be 'package.module:function'")
    return getattr(importlib.import_module(module), name)


def job_dir(target: str, kwargs: dict, cfg: FlywheelConfig, paths: Paths) -> Path:
    """The job's directory, keyed by what it computes: a retry of the same work finds its own job again."""
    key = sha256_text(target, json.dumps(kwargs, sort_keys=True, default=str), cfg.model_dump_json())[:12]
    return paths.home / "jobs" / f"{target.rsplit(':', 1)[-1]}-{key}"


def _job_env(home) -> dict:
    """The ranks' environment: this one, with the repository importable and the job's flywheel home."""
    return os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
                         "FLYWHEEL_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def torchrun_command(launch: LaunchSettings, job: Path, rdzv_id: str) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={launch.nproc_per_node}",
           f"--nnodes={launch.nnodes}", "--max-restarts=0", "--tee=3", f"--log-dir={job / 'logs'}"]
    if launch.nnodes == 1:
        cmd.append("--standalone")
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={launch.rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
    return cmd + ["-m", "flywheel.training.worker", str(job)]


def run(target: str, kwargs: dict, launch: LaunchSettings, cfg: FlywheelConfig, paths: Paths,
        log: Callable[[str], None] = print, progress=None):
    """Call ``target(**kwargs, cfg=cfg, paths=paths)`` in this process (with ``progress``), or on every rank of
    a torchrun job, and return its result (rank 0's). ``kwargs`` must be JSON-serialisable."""
    if launch.world_size == 1:
        return resolve(target)(**kwargs, cfg=cfg, paths=paths, progress=progress)
    job = job_dir(target, kwargs, cfg, paths)
    job.mkdir(parents=True, exist_ok=True)
    for stale in [job / "result.json", *job.glob("error-rank*.txt")]:
        stale.unlink(missing_ok=True)
    spec = {"target": target, "kwargs": kwargs, "config": cfg.model_dump(mode="json"), "home": str(paths.home),
            "lake": str(paths.lake), "launch": launch.model_dump(), "rdzv_id": launch.rdzv_id or job.name}
    tmp = job / f".job.json.tmp-{os.getpid()}"
    tmp.write_text(json.dumps(spec, indent=2, default=str))
    os.replace(tmp, job / "job.json")
    cmd = torchrun_command(launch, job, launch.rdzv_id or job.name)
    log(f"launching {target} on {launch.world_size} processes: {' '.join(cmd)}")
    if launch.nnodes > 1:
        log(f"waiting for {launch.nnodes - 1} more node(s) at {launch.rdzv_endpoint}: on each, with FLYWHEEL_HOME "
            f"on the same shared storage, run `flywheel join` (or: {' '.join(cmd)})")
    env = _job_env(paths.home)
    # its own process group: stopping the job (timeout, a cancelled flow run) stops torchrun and every rank it
    # started, so no orphaned rank keeps its GPU when the task is retried
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    tail: list[str] = []

    def read():
        for line in proc.stdout:
            log(line.rstrip())
            tail.append(line.rstrip())
            del tail[:-400]

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = proc.wait(timeout=launch.timeout_s)
    except subprocess.TimeoutExpired:
        _stop(proc)
        raise RankFailed(f"{target} ran past launch.timeout_s = {launch.timeout_s:g} s: stopped every rank") from None
    except BaseException:
        _stop(proc)
        raise
    reader.join(timeout=10)
    if rc != 0:
        raise _failure(job, rc, tail)
    return json.loads((job / "result.json").read_text())


def _stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM to torchrun's process group (it forwards it to the ranks), SIGKILL after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def pending_jobs(paths: Paths, since: float = 0.0) -> list[tuple[Path, float]]:
    """Multi-node jobs (job directory, launch time) written to the shared home after ``since`` (epoch seconds)
    that have no result yet, oldest first: what the other machines of a job join. Node 0 writes ``job.json``
    again at every launch, so a retry of the same job is a new launch time to join."""
    out = []
    for spec in (paths.home / "jobs").glob("*/job.json"):
        job, t = spec.parent, spec.stat().st_mtime
        if t >= since and not (job / "result.json").exists():
            if json.loads(spec.read_text()).get("launch", {}).get("nnodes", 1) > 1:
                out.append((job, t))
    return sorted(out, key=lambda jt: jt[1])


def join(job: Path, log: Callable[[str], None] = print) -> int:
    """Run this machine's share of a multi-node ``job``: torchrun with the job's own launch settings and
    rendezvous id, meeting node 0 at its ``rdzv_endpoint``. Returns torchrun's exit code."""
    spec = json.loads((job / "job.json").read_text())
    launch = LaunchSettings.model_validate(spec["launch"])
    cmd = torchrun_command(launch, job, spec["rdzv_id"])
    log(f"joining {job.name}: {' '.join(cmd)}")
    return subprocess.run(cmd, cwd=REPO_ROOT, env=_job_env(spec["home"])).returncode


def _failure(job: Path, rc: int, tail: list[str]) -> RankFailed:
    """The failed rank's error. torchrun's "Root Cause (first observed failure)" names the rank that failed first
    (a rank killed by a signal writes no traceback; the others then fail on a closed connection); that rank's
    traceback file, when it wrote one, is the message."""
    text = "\n".join(tail)
    root = text[text.rfind("Root Cause"):] if "Root Cause" in text else ""
    m = re.search(r"rank\s*:\s*(\d+)", root)
    rank = int(m.group(1)) if m else None
    errors = {int(re.search(r"rank(\d+)", p.name).group(1)): p for p in job.glob("error-rank*.txt")}
    if rank is None and errors:
        rank = min(errors, key=lambda r: errors[r].stat().st_mtime)
    if rank in errors:
        trace = errors[rank].read_text().strip()
        last = trace.splitlines()[-1] if trace else "(no message)"
        return RankFailed(f"rank {rank} failed: {last}\n{trace}", rank)
    sig = re.search(r"Signal (\d+) \((\w+)\)", root)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", root)
    why = (f"killed by signal {sig.group(1)} ({sig.group(2)})" if sig else
           f"exit code {code.group(1)}" if code else f"torchrun exit code {rc}")
    return RankFailed(f"rank {rank if rank is not None else '?'} failed: {why}\n{root or text}", rank)
