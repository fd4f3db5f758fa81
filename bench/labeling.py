"""Online labelling throughput against a local OpenAI-compatible server with fixed latency per request.

    python bench/labeling.py [--latency 0.25] [--concurrency 1 8 64] [--seconds 5]

For each concurrency c it labels about c/latency × seconds pairs and prints pairs/s, the fraction of the ideal
c/latency, and the client's CPU time per request. Then, with 30% of requests failing transiently (429 with
retry-after, 500, stalls past the timeout), it checks that every pair is labelled exactly once.
The server runs in its own process so it does not share the client's interpreter.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flywheel.settings import configure_environment  # noqa: E402


def start_server(port: int, latency: float, fail_rate: float) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "openai_stub.py"), "--port", str(port),
                          "--latency", str(latency), "--fail-rate", str(fail_rate), "--stall", "3"], cwd=ROOT)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=1)
            return p
        except OSError:
            time.sleep(0.1)
    p.kill()
    raise SystemExit("stub server did not start")


def stats(port: int) -> dict:
    import json

    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/stats").read())


def label(pairs, port, settings) -> tuple[list, dict, float, float]:
    from flywheel.judge.online import OnlineLabeller
    from flywheel.judge.policy import load_policy

    committed: list = []
    lab = OnlineLabeller(load_policy(ROOT / "policies" / "open_data_search.md"), "stub",
                         f"http://127.0.0.1:{port}/v1", "bench-key", settings)
    cpu, wall = time.process_time(), time.perf_counter()
    out = asyncio.run(lab.run(pairs, lambda b: committed.extend(b)))
    return committed, out, time.perf_counter() - wall, time.process_time() - cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.25)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    configure_environment()
    import pandas as pd

    from flywheel.data.golden import load_golden
    from flywheel.judge.online import OnlineSettings
    from tests.openai_stub import free_port

    base = load_golden().pairs()
    port = free_port()
    server = start_server(port, a.latency, 0.0)
    try:
        print(f"latency {a.latency * 1000:.0f} ms per request")
        print(f"{'concurrency':>11s} {'pairs':>6s} {'pairs/s':>8s} {'ideal':>7s} {'of ideal':>8s} {'client CPU ms/req':>18s}")
        for c in a.concurrency:
            n = max(8, int(c / a.latency * a.seconds))
            pairs = pd.concat([base] * (n // len(base) + 1), ignore_index=True).head(n)
            committed, out, wall, cpu = label(pairs, port, OnlineSettings(max_in_flight=c, commit_every=32))
            assert len(committed) == n and out["failed"] == 0
            rate, ideal = n / wall, c / a.latency
            print(f"{c:11d} {n:6d} {rate:8.1f} {ideal:7.1f} {rate / ideal:8.1%} {1000 * cpu / out['requests']:18.2f}")
    finally:
        server.terminate()
    port = free_port()
    server = start_server(port, 0.01, 0.3)
    try:
        pairs = base.head(300).reset_index(drop=True)
        settings = OnlineSettings(max_in_flight=32, timeout_s=1.0, max_retries=12, backoff_base_s=0.05,
                                  backoff_cap_s=0.5, commit_every=16)
        committed, out, wall, _ = label(pairs, port, settings)
        idx = [i for i, _ in committed]
        s = stats(port)
        print(f"30% transient failures: {len(pairs)} pairs, {s['calls']} requests ({s['faults']}), "
              f"{out['retries']} retries; lost {len(set(pairs.index) - set(idx))}, "
              f"duplicated {len(idx) - len(set(idx))}, failed {out['failed']}, {wall:.1f} s")
    finally:
        server.terminate()


if __name__ == "__main__":
    main()
