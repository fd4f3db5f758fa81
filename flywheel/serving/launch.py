"""Starting the scoring service: one process, or one process per device behind one port.

``flywheel serve`` (or ``python -m flywheel.serving.launch``) runs uvicorn on the app of
flywheel.serving.service. With ``--devices cuda:0,cuda:1,…`` this process binds the port once and starts one
worker process per device, each seeing only its GPU (``CUDA_VISIBLE_DEVICES``) and accepting connections from the
shared socket, so the kernel spreads connections (not requests: a client holding one keep-alive connection stays
on one worker) over the GPUs; ``/metrics`` from any of them sums all of them
(prometheus-client's multiprocess mode). A worker that dies is started again; SIGTERM is passed on to every
worker, which stops accepting, finishes the requests it holds (``serving.drain_s``) and exits.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def settings_from(args):
    """ServingConfig from ``--config`` (its ``serving:`` section), then ``--settings`` JSON, then the flags."""
    from flywheel.config import ServingConfig, load_config

    base = load_config(args.config).serving if args.config else ServingConfig()
    over = json.loads(args.settings) if args.settings else {}
    for key in ("device", "dtype", "max_batch_items", "max_wait_ms", "forward_batch"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    return ServingConfig.model_validate(base.model_dump() | over)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flywheel serve", description=(
        "Serve models:/<model>@<alias> over HTTP: POST /score and /v1/rerank, POST /reload, GET /health, /ready, "
        "/metrics. Settings come from the config's serving: section (see README, 'Serving in production'); the "
        "flags override it. Set FLYWHEEL_SCORER_TOKEN to require 'Authorization: Bearer <token>'."))
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept connections from other machines")
    ap.add_argument("--model", default="flywheel-ranker", help="registered model name")
    ap.add_argument("--alias", default="champion", help="registry alias to serve and follow")
    ap.add_argument("--config", help="a flywheel config file; its serving: section is used")
    ap.add_argument("--settings", help=argparse.SUPPRESS)          # JSON of ServingConfig fields (the deploy task)
    ap.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    ap.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    ap.add_argument("--max-batch-items", type=int, help="pairs per batch across requests (0: batching off)")
    ap.add_argument("--max-wait-ms", type=float, help="how long a batch waits to fill")
    ap.add_argument("--forward-batch", type=int, help="pairs per forward pass inside a batch")
    ap.add_argument("--devices", help="one worker process per device behind one port, e.g. cuda:0,cuda:1")
    ap.add_argument("--fd", type=int, help=argparse.SUPPRESS)      # a worker: accept on this inherited socket
    return ap


def run_one(args, settings) -> None:
    import uvicorn

    from flywheel.serving.registry import setup_mlflow
    from flywheel.serving.service import create_app
    from flywheel.settings import configure_environment

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    setup_mlflow(configure_environment())
    app = create_app(args.model, args.alias, settings, load_first=args.fd is not None)
    # uvicorn drains on SIGTERM, restores the handler it found and raises the signal again: exit 0 after a drain
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    where = {"fd": args.fd} if args.fd is not None else {"host": args.host, "port": args.port}
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=settings.drain_s,
                                           **where))
    server.handle_exit = drain_on_signal(app, server.handle_exit)
    server.run()


def drain_on_signal(app, stop):
    """The worker's SIGTERM/SIGINT handler: ``/ready`` says 503 from the signal on (``app.state.begin_drain``,
    which takes no lock), then uvicorn's own ``stop`` lets the requests in flight finish."""
    def handle_exit(sig, frame):
        app.state.begin_drain()
        stop(sig, frame)

    return handle_exit


def run_replicas(args, settings, devices: list[str]) -> int:
    """Bind once, start a worker per device on the shared socket, keep them running until SIGTERM/SIGINT."""
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    sock.set_inheritable(True)
    from prometheus_client import multiprocess

    metrics_dir = tempfile.mkdtemp(prefix="flywheel-serve-metrics-")
    stopping = False

    def start(device: str) -> subprocess.Popen:
        env = os.environ | {"PROMETHEUS_MULTIPROC_DIR": metrics_dir}
        if device.startswith("cuda:"):
            env["CUDA_VISIBLE_DEVICES"], device = device.split(":", 1)[1], "cuda"
        cmd = [sys.executable, "-m", "flywheel.serving.launch", "--fd", str(sock.fileno()), "--model", args.model,
               "--alias", args.alias, "--settings", json.dumps(settings.model_dump() | {"device": device})]
        return subprocess.Popen(cmd, pass_fds=[sock.fileno()], env=env)

    def on_signal(signum, _frame):
        # the socket is closed by the loop below, not here: a signal arriving while a worker is being started
        # again would close the descriptor start() is passing on (not by blocking signals around start(): a
        # child inherits the blocked mask and would never see SIGTERM)
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)

    procs = {i: start(d) for i, d in enumerate(devices)}             # by position: "cpu,cpu" is two workers
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"serving {args.model}@{args.alias} on {args.host}:{args.port} with {len(devices)} workers: "
          + ", ".join(f"{devices[i]} (pid {p.pid})" for i, p in procs.items()), flush=True)
    restarts = {i: 0 for i in procs}
    next_start = {i: 0.0 for i in procs}
    while True:
        time.sleep(0.5)
        for i, p in list(procs.items()):
            if p.poll() is not None and not stopping and time.time() >= next_start[i]:
                multiprocess.mark_process_dead(p.pid, metrics_dir)    # its live gauges leave /metrics
                restarts[i] += 1
                delay = min(60.0, 0.5 * 2 ** min(restarts[i], 7))      # a worker that keeps dying backs off
                print(f"worker on {devices[i]} (pid {p.pid}) exited with {p.returncode}; starting it again "
                      f"(restart {restarts[i]}; next no sooner than {delay:.0f}s)", flush=True)
                procs[i] = start(devices[i])
                next_start[i] = time.time() + delay
        if stopping:
            sock.close()                   # no new connections queue up in a backlog nobody will accept from
            for p in procs.values():       # again: a worker started while the signal arrived has not had it
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            deadline = time.time() + 2 * settings.drain_s + 10
            for p in procs.values():
                try:
                    p.wait(max(0.1, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    p.kill()
            shutil.rmtree(metrics_dir, ignore_errors=True)
            return 0


def main(argv=None) -> int:
    from pydantic import ValidationError

    args = parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        msgs = [f"serving.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        print("flywheel serve: invalid settings:\n  " + "\n  ".join(msgs), file=sys.stderr)
        return 2
    if args.devices and args.fd is None:
        return run_replicas(args, settings, [d.strip() for d in args.devices.split(",") if d.strip()])
    run_one(args, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
