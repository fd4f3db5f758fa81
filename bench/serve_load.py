"""Load test of the scoring service over loopback, beside the same model's offline throughput, in one run.

    python bench/serve_load.py [--model minilm-student|qwen3-tiny|qwen3-mini] [--clients 64] [--seconds 60]

Registers the model in a throwaway flywheel home, starts ``flywheel serve`` on it (a real process), and drives it
with ``--clients`` concurrent clients (aiohttp, one connection each) for ``--seconds``, each request one golden
query with 20–100 golden documents; then the same with batching off (``--max-batch-items 0``). Prints for each:
requests, items/s, p50/p95/p99 latency of the answered (200) requests, answers by status, mean batch size (from the service's /metrics); and the
offline items/s of the same model on the same requests (``models.ranker.score_pairs``, batched, in this process,
while no service runs; measured before and after the service phases, the mean reported). Ends with a bad-input round: malformed JSON, wrong types, an empty query, 0 and 100,000
documents, a 20 MB field, NUL bytes — each must get its 4xx while ``/ready`` stays 200.

The clients share this machine's cores with the service: on a 2-core VM they take a share of the CPU the
service would otherwise have (reported as the client process's CPU time).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_and_register(model: str, home: Path, dtype: str = "float32", compress_to: int = 0) -> str:
    """Save ``model`` (see --model) under ``home`` and register it as ``bench-ranker@champion``."""
    from flywheel.serving.registry import log_ranker, set_alias
    from flywheel.settings import get_paths
    from models.ranker import save_ranker

    if model == "minilm-student":                    # the demo's deployable student: MiniLM layers 0, 2, 5
        from models.contract import ScoringContract
        from models.cross_encoder import build_cross_encoder

        m, tok = build_cross_encoder([0, 2, 5])
        contract = ScoringContract(max_length=128, dtype=dtype)
    else:
        from flywheel.data.golden import load_golden
        from models import decoder as dec

        g = load_golden()
        tok = dec.train_bpe_tokenizer((g.documents.title + ". " + g.documents.text).tolist() + g.queries.text.tolist())
        extra = {"compression": "fields", "doc_fields": ("title", "text"), "doc_budget": compress_to} if compress_to \
            else {}
        contract = dec.decoder_contract(tok, max_length=160, dtype=dtype, **extra)
        from scoring import random_lm

        m = dec.DecoderRanker(random_lm(model, tok), contract.yes_token_id, contract.no_token_id)
    if dtype == "bfloat16":                          # half the bytes to save, register and load
        import torch

        m = m.to(torch.bfloat16)
    path = save_ranker(m, tok, contract, home / "bench-model")
    paths = get_paths()
    v = log_ranker({"rung": "student", "path": str(path), "model_version": model, "layers": 0,
                    "params_non_embedding": 0}, {"ndcg@10": 0.0}, {}, paths, "bench-ranker")["version"]
    set_alias("bench-ranker", "champion", v, paths)
    return str(path)


def requests_of(n: int, seed: int = 0, docs: tuple[int, int] = (20, 100)) -> list[bytes]:
    import numpy as np

    from flywheel.data.golden import load_golden

    g = load_golden()
    rng = np.random.default_rng(seed)
    queries, d = g.queries.text.tolist(), g.documents
    out = []
    for _ in range(n):
        k = int(rng.integers(docs[0], docs[1] + 1))
        idx = rng.choice(len(d), size=k, replace=k > len(d))
        out.append(json.dumps({"query": queries[int(rng.integers(len(queries)))],
                               "documents": [{"title": d.title.iloc[i], "text": d.text.iloc[i]} for i in idx]}
                              ).encode())
    return out


def start_service(port: int, home: Path, *flags: str) -> subprocess.Popen:
    log = open(home / f"serve-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flywheel.serving.launch", "--port", str(port), "--model",
                             "bench-ranker", *flags], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            env=os.environ | {"FLYWHEEL_HOME": str(home)}, start_new_session=True)
    import urllib.request

    deadline = time.time() + 600
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"service did not become ready: {(home / f'serve-{port}.log').read_text()[-3000:]}")
        time.sleep(0.3)


def stop_service(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def scrape(base: str) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    val = lambda name: sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))  # noqa: E731
    return {"batch_sum": val("flywheel_batch_items_sum"), "batch_count": val("flywheel_batch_items_count")}


async def drive(base: str, bodies: list[bytes], clients: int, seconds: float) -> dict:
    """``clients`` concurrent clients sending ``bodies`` round-robin until ``seconds`` pass."""
    import aiohttp

    lat, codes, items = [], {}, 0
    sizes = [len(json.loads(b)["documents"]) for b in bodies]
    until = time.perf_counter() + seconds
    counter = iter(range(10 ** 9))

    async def client(session):
        nonlocal items
        while time.perf_counter() < until:
            i = next(counter) % len(bodies)
            t0 = time.perf_counter()
            try:
                async with session.post(f"{base}/score", data=bodies[i],
                                        headers={"Content-Type": "application/json"}) as r:
                    await r.read()
                    code = r.status
                    retry_after = float(r.headers.get("Retry-After", 0)) if code == 503 else 0.0
            except aiohttp.ClientError as exc:
                code, retry_after = type(exc).__name__, 0.0
            if code == 200:                   # latency of answered requests; refusals are fast and counted apart
                lat.append(time.perf_counter() - t0)
            codes[code] = codes.get(code, 0) + 1
            if code == 200:
                items += sizes[i]
            if retry_after:                   # a polite client, as rerank SDKs are: wait as told, then retry
                await asyncio.sleep(min(retry_after, max(0.0, until - time.perf_counter())))

    t0, cpu0 = time.perf_counter(), time.process_time()
    conn = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as session:
        await asyncio.gather(*(client(session) for _ in range(clients)))
    wall = time.perf_counter() - t0
    import numpy as np

    p = np.percentile(lat, [50, 95, 99]) * 1000 if lat else [float("nan")] * 3
    return {"requests": sum(codes.values()), "items_per_s": items / wall, "p50_ms": p[0], "p95_ms": p[1], "p99_ms": p[2],
            "codes": codes, "client_cpu_share": (time.process_time() - cpu0) / wall}


def offline_items_per_s(checkpoint: str, bodies: list[bytes], forward_batch: int = 64, device: str = "cpu") -> float:
    """The same model scoring the same requests' pairs in this process, all at once (score_pairs batches them)."""
    import torch

    from models.ranker import load_ranker, score_pairs

    model, tok, c = load_ranker(checkpoint)
    model = model.to(device)
    q, t, x = [], [], []
    for b in bodies:
        r = json.loads(b)
        q += [r["query"]] * len(r["documents"])
        t += [d["title"] for d in r["documents"]]
        x += [d["text"] for d in r["documents"]]
    score_pairs(model, tok, c, q[:64], t[:64], x[:64], forward_batch)                  # warm-up
    t0 = time.perf_counter()
    score_pairs(model, tok, c, q, t, x, forward_batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return len(q) / (time.perf_counter() - t0)


BAD = [("malformed JSON", b'{"query": "crime", "documents": ['), ("wrong types", b'{"query": 5, "documents": "x"}'),
       ("empty query", b'{"query": "", "documents": [{"title": "a"}]}'),
       ("0 documents", b'{"query": "crime", "documents": []}'),
       ("100,000 documents", json.dumps({"query": "crime", "documents": [{"title": "a"}] * 100_000}).encode()),
       ("20 MB field", json.dumps({"query": "crime", "documents": [{"title": "a", "text": "x" * 20_000_000}]}).encode()),
       ("NUL bytes", b'{"query": "cri\\u0000me", "documents": [{"title": "a\\u0000"}]}')]


def bad_input_round(base: str) -> list[tuple[str, int, float, int]]:
    """(case, status, seconds, /ready status) for each bad request."""
    import urllib.error
    import urllib.request

    out = []
    for name, body in BAD:
        t0 = time.perf_counter()
        try:
            code = urllib.request.urlopen(urllib.request.Request(f"{base}/score", data=body), timeout=60).status
        except urllib.error.HTTPError as exc:
            code = exc.code
        dt = time.perf_counter() - t0
        ready = urllib.request.urlopen(f"{base}/ready", timeout=10).status
        out.append((name, code, dt, ready))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen3-tiny", choices=["qwen3-tiny", "qwen3-mini", "minilm-student"],
                    help="qwen3-*: tiny decoders built from a config; minilm-student: the demo's deployable shape "
                         "(MiniLM layers 0, 2, 5), compute-bound on a CPU")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=60.0, help="per phase (batching on, batching off)")
    ap.add_argument("--requests", type=int, default=200, help="distinct request bodies, sent round-robin")
    ap.add_argument("--max-batch-items", type=int, default=4096)
    ap.add_argument("--port", type=int, default=18765)
    a = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="flywheel-serve-load-"))
    from flywheel.settings import configure_environment

    configure_environment(home)
    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    checkpoint = build_and_register(a.model, home)
    bodies = requests_of(a.requests)
    offline_before = offline_items_per_s(checkpoint, bodies)
    console.print(f"model {a.model}; {len(bodies)} requests of 20–100 golden documents; offline "
                  f"{offline_before:,.0f} items/s; {a.clients} clients × {a.seconds:.0f} s per phase; "
                  f"{os.cpu_count()} CPUs shared by clients and service")
    base = f"http://127.0.0.1:{a.port}"
    rows = {}
    for phase, flags in (("batching on", ["--max-batch-items", str(a.max_batch_items)]),
                         ("batching off", ["--max-batch-items", "0"])):
        proc = start_service(a.port, home, *flags)
        try:
            asyncio.run(drive(base, bodies[:8], 4, 3.0))                    # warm the connections and the model
            before = scrape(base)
            rows[phase] = asyncio.run(drive(base, bodies, a.clients, a.seconds))
            after = scrape(base)
            n = after["batch_count"] - before["batch_count"]
            rows[phase]["mean_batch"] = (after["batch_sum"] - before["batch_sum"]) / n if n else 0.0
            if phase == "batching on":
                bad = bad_input_round(base)
        finally:
            stop_service(proc)
    # offline again after the service phases: this VM's speed drifts by ±15% over minutes; the mean of before
    # and after is what the service is compared with
    offline = (offline_before + offline_items_per_s(checkpoint, bodies)) / 2
    t = Table(title=f"scoring service under load ({a.model})")
    for col in ("", "requests", "items/s", "p50 ms", "p95 ms", "p99 ms", "answers by status", "mean batch",
                "client CPU"):
        t.add_column(col, justify="right")
    for phase, r in rows.items():
        t.add_row(phase, str(r["requests"]), f"{r['items_per_s']:,.0f}", f"{r['p50_ms']:.0f}", f"{r['p95_ms']:.0f}",
                  f"{r['p99_ms']:.0f}", " ".join(f"{k}:{v}" for k, v in sorted(r["codes"].items(), key=str)),
                  f"{r['mean_batch']:.0f}", f"{r['client_cpu_share']:.0%}")
    t.add_row("offline (same model, mean of before and after)", "", f"{offline:,.0f}", "", "", "", "", "", "")
    console.print(t)
    on, off = rows["batching on"], rows["batching off"]
    five = sum(v for k, v in on["codes"].items() if str(k).startswith("5"))
    console.print(f"served / offline items/s: {on['items_per_s'] / offline:.2f} (target ≥ 0.8); batching on / off: "
                  f"{on['items_per_s'] / max(off['items_per_s'], 1e-9):.2f}x (target ≥ 3x); 5xx answers: {five}")
    b = Table(title="bad-input round (batching on)")
    for col in ("case", "status", "seconds", "/ready"):
        b.add_column(col)
    for name, code, dt, ready in bad:
        b.add_row(name, str(code), f"{dt:.2f}", str(ready))
    console.print(b)


if __name__ == "__main__":
    main()
