"""The flow's deploy step: start the scoring service on ``models:/<name>@champion`` (or make a running one
reload the alias), then prove it before calling the deployment done:

1. parity — every pair of a sample scored through HTTP, one request per query, equals the offline score of the
   same model within the scoring contract's tolerance (1e-4 in float32);
2. batching — the same requests sent all at once (so the service batches them together) score as they did
   alone, within the same tolerance.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from flywheel.settings import REPO_ROOT, Paths
from models.contract import SCORE_TOLERANCE


def call(url: str, data: dict | None = None, timeout: float = 60.0, token: str | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    token = token or os.environ.get("FLYWHEEL_SCORER_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None, headers=headers,
                                 method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def wait_ready(base: str, proc: subprocess.Popen | None, log_path, timeout: float = 180.0) -> dict:
    deadline = time.time() + timeout
    while True:
        try:
            return call(f"{base}/ready", timeout=2)
        except (OSError, urllib.error.HTTPError):
            if (proc is not None and proc.poll() is not None) or time.time() > deadline:
                raise RuntimeError(f"scoring service at {base} did not become ready; see {log_path}") from None
            time.sleep(0.3)


def offline_scorer(checkpoint: str):
    """Scores exactly as training and evaluation do: the checkpoint and its contract, loaded directly."""
    from flywheel.retrieval.embeddings import document_inputs
    from models.ranker import load_ranker, score_pairs

    model, tok, contract = load_ranker(checkpoint)

    def score(df: pd.DataFrame) -> list[float]:
        titles, texts = df.title.tolist(), df.text.tolist()
        return score_pairs(model, tok, contract, df["query"].tolist(), titles, texts,
                           **document_inputs(contract, titles, texts))

    return score


def deploy_champion(model_name: str, champion_version: str | None, trained_version: str, trained_checkpoint: str,
                    pairs: pd.DataFrame, port: int, paths: Paths, keep_running: bool = False,
                    settings=None) -> dict:
    """Deploy ``models:/<name>@champion`` and check it against the offline scores of the same model: the
    checkpoint as training saved it when the champion is today's model, else the registered copy."""
    if champion_version is None:
        return {"skipped": "no champion to deploy"}
    if champion_version == trained_version:
        offline = offline_scorer(trained_checkpoint)
    else:
        import mlflow.pyfunc

        model = mlflow.pyfunc.load_model(f"models:/{model_name}/{champion_version}")
        offline = lambda df: list(model.predict(df))  # noqa: E731
    return deploy_and_smoke_test(model_name, offline, pairs, port, paths, keep_running, settings=settings)


def deploy_and_smoke_test(model_name: str, offline, pairs: pd.DataFrame, port: int, paths: Paths,
                          keep_running: bool = False, tolerance: float | None = None, settings=None) -> dict:
    """Start (or hot-reload) the service on ``port``, then the parity and batching checks of the module
    docstring. Raises if a score differs by more than ``tolerance`` (default: the contract's for the served
    dtype)."""
    base = f"http://127.0.0.1:{port}"
    proc, log_path = None, paths.home / "serving.log"
    try:
        call(f"{base}/reload", {})
        started = "reloaded"
    except (OSError, urllib.error.HTTPError):
        cmd = [sys.executable, "-m", "flywheel.serving.launch", "--port", str(port), "--model", model_name]
        if settings is not None:
            cmd += ["--settings", settings.model_dump_json()]
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=open(log_path, "a"), stderr=subprocess.STDOUT,
                                env=os.environ.copy())
        started = "started"
    try:
        ready = wait_ready(base, proc, log_path)
        tol = tolerance if tolerance is not None else SCORE_TOLERANCE[ready["dtype"]]
        bodies = [(g, {"query": g["query"].iloc[0],
                       "documents": [{"title": t, "text": x} for t, x in zip(g.title, g.text)]})
                  for _, g in pairs.groupby("query_id")]
        alone, parity = [], 0.0
        for g, body in bodies:
            served = call(f"{base}/score", body)["scores"]
            alone.append(served)
            parity = max(parity, max(abs(a - b) for a, b in zip(served, offline(g))))
        if parity > tol:
            raise RuntimeError(f"served scores differ from offline scores by {parity:.2e} > {tol}")
        with ThreadPoolExecutor(len(bodies)) as ex:          # all at once: the service batches them together
            together = list(ex.map(lambda b: call(f"{base}/score", b[1])["scores"], bodies))
        batching = max(abs(a - b) for s, t in zip(alone, together) for a, b in zip(s, t))
        if batching > tol:
            raise RuntimeError(f"scores of requests batched together differ from the same requests alone by "
                               f"{batching:.2e} > {tol}")
        return {"service": base, "action": started, "served_version": ready["version"],
                "model_version": ready["model_version"], "device": ready["device"], "dtype": ready["dtype"],
                "pairs_checked": int(len(pairs)), "max_abs_diff": parity, "batching_max_abs_diff": batching,
                "tolerance": tol, "running": keep_running or proc is None}
    finally:
        if proc is not None and not keep_running:
            proc.terminate()
            proc.wait(timeout=60)
