"""Flow stage 10: the scoring service. A FastAPI app that loads ``models:/<name>@champion`` and scores
(query, documents[]) → scores[] in one forward pass per batch (no generation), plus the deploy step that starts
or hot-reloads it and smoke-tests that it reproduces the offline scores.

Run it: ``flywheel serve`` (or ``python -m flywheel.serving.service --port 8765``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

import pandas as pd
from pydantic import BaseModel, Field

from flywheel.settings import REPO_ROOT, Paths, configure_environment


class Doc(BaseModel):
    title: str
    text: str = ""


class ScoreRequest(BaseModel):
    query: str = Field(min_length=1)
    documents: list[Doc] = Field(min_length=1, max_length=1000)


def create_app(model_name: str, alias: str = "champion"):
    from fastapi import FastAPI, HTTPException

    app = FastAPI(title="flywheel scoring service")
    state: dict = {}
    lock = threading.Lock()

    def load():
        import mlflow
        import mlflow.pyfunc
        from mlflow import MlflowClient

        mv = MlflowClient().get_model_version_by_alias(model_name, alias)
        model = mlflow.pyfunc.load_model(f"models:/{model_name}@{alias}")
        with lock:
            state.update(model=model, version=mv.version, model_version=mv.tags.get("model_version"))
        return mv.version

    @app.on_event("startup")
    def _startup():
        load()

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model_name, "alias": alias, "version": state.get("version"),
                "model_version": state.get("model_version")}

    @app.post("/reload")
    def reload():
        return {"version": load()}

    @app.post("/score")
    def score(req: ScoreRequest):
        with lock:
            model = state.get("model")
        if model is None:
            raise HTTPException(503, "no model loaded")
        df = pd.DataFrame({"query": req.query, "title": [d.title for d in req.documents],
                           "text": [d.text for d in req.documents]})
        return {"scores": [float(s) for s in model.predict(df)], "version": state["version"]}

    return app


def _get(url: str, data: dict | None = None, timeout: float = 60.0) -> dict:
    req = urllib.request.Request(url, data=json.dumps(data).encode() if data is not None else None,
                                 headers={"Content-Type": "application/json"}, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def offline_scorer(checkpoint: str):
    """Scores exactly as training and evaluation do: the checkpoint and its contract, loaded directly."""
    from models.ranker import load_ranker, score_pairs

    model, tok, contract = load_ranker(checkpoint)

    def score(df: pd.DataFrame) -> list[float]:
        from flywheel.retrieval.embeddings import document_inputs

        titles, texts = df.title.tolist(), df.text.tolist()
        return score_pairs(model, tok, contract, df["query"].tolist(), titles, texts,
                           **document_inputs(contract, titles, texts))

    return score


def deploy_champion(model_name: str, champion_version: str | None, trained_version: str, trained_checkpoint: str,
                    pairs: pd.DataFrame, port: int, paths: Paths, keep_running: bool = False) -> dict:
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
    return deploy_and_smoke_test(model_name, offline, pairs, port, paths, keep_running)


def deploy_and_smoke_test(model_name: str, offline, pairs: pd.DataFrame, port: int, paths: Paths,
                          keep_running: bool = False, tolerance: float = 1e-4) -> dict:
    """Start (or hot-reload) the service on ``port``, score ``pairs`` through HTTP, one request per query, and
    compare with ``offline(pairs)``. Raises if any score differs by more than ``tolerance``."""

    base = f"http://127.0.0.1:{port}"
    proc = None
    try:
        _get(f"{base}/reload", {})
        started = "reloaded"
    except OSError:
        log = open(paths.home / "serving.log", "a")
        proc = subprocess.Popen([sys.executable, "-m", "flywheel.serving.service", "--port", str(port), "--model", model_name],
                                cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        started = "started"
        deadline = time.time() + 120
        while True:
            try:
                _get(f"{base}/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"scoring service did not come up; see {paths.home / 'serving.log'}")
                time.sleep(0.5)
    try:
        health = _get(f"{base}/health")
        max_diff, n = 0.0, 0
        for qid, g in pairs.groupby("query_id"):
            served = _get(f"{base}/score", {"query": g["query"].iloc[0], "documents": [
                {"title": t, "text": x} for t, x in zip(g.title, g.text)]})["scores"]
            max_diff = max(max_diff, max(abs(a - b) for a, b in zip(served, offline(g))))
            n += len(g)
        if max_diff > tolerance:
            raise RuntimeError(f"served scores differ from offline scores by {max_diff:.2e} > {tolerance}")
        return {"service": base, "action": started, "served_version": health["version"],
                "model_version": health["model_version"], "pairs_checked": n, "max_abs_diff": max_diff,
                "running": keep_running or proc is None}
    finally:
        if proc is not None and not keep_running:
            proc.terminate()
            proc.wait(timeout=30)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Serve models:/<model>@<alias> for scoring over HTTP.")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--model", default="flywheel-ranker")
    ap.add_argument("--alias", default="champion")
    a = ap.parse_args(argv)
    paths = configure_environment()
    from flywheel.serving.registry import setup_mlflow

    setup_mlflow(paths)
    import uvicorn

    uvicorn.run(create_app(a.model, a.alias), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
