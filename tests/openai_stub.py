"""A local OpenAI-compatible chat-completions server for tests and benchmarks.

Replies come from ``reply(request_json, n_call) -> (content, finish_reason, refusal)``; the default grades a
pair by how many query words the document contains, deterministically. Faults can be injected: latency,
a share of requests failing transiently (429 with retry-after, 500, or a stall past the client's timeout).
Run in a thread (tests) or as its own process (benchmarks: ``python tests/openai_stub.py --port P ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import threading
import time
from collections import Counter

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


def overlap_reply(body: dict, n: int):
    user = body["messages"][1]["content"] if len(body["messages"]) > 1 else ""
    q = json.loads(re.search(r"Query: (\".*?\")\n", user).group(1)) if "Query:" in user else ""
    doc = user.split("<document>", 1)[-1].lower()
    hits = sum(1 for w in set(q.lower().split()) if w in doc)
    grade = min(3, hits)
    return json.dumps({"grade": grade, "dimensions": {"topical_match": grade}, "rationale": f"{hits} words"}), "stop", None


def _logprobs(content: str) -> dict:
    """Token log-probabilities for a reply: every digit is its own token; the grade digit gets 70% of the
    mass, its neighbours share the rest (a judge that is fairly sure)."""
    import math

    tokens = re.findall(r"\d|[^\d]+", content)
    out = []
    for t in tokens:
        entry = {"token": t, "logprob": -0.01, "bytes": None, "top_logprobs": []}
        if t.isdigit():
            g = int(t)
            alts = {g: 0.7} | {a: 0.3 / len(n) for n in [[x for x in (g - 1, g + 1) if 0 <= x <= 3]] for a in n}
            entry["logprob"] = math.log(0.7)
            entry["top_logprobs"] = [{"token": str(a), "logprob": math.log(p), "bytes": None} for a, p in alts.items()]
        out.append(entry)
    return {"content": out, "refusal": None}


def build_app(reply=overlap_reply, latency: float = 0.0, fail_rate: float = 0.0, stall_s: float | None = 5.0,
              seed: int = 0, stats: dict | None = None, batch_fail_rate: float = 0.0, retry_after: str = "0.05",
              fault_for=None) -> FastAPI:
    """``fault_for(n, body)`` → "429" / "500" / "stall" / None picks the fault of call ``n`` deterministically
    (else ``fail_rate`` draws one). A stall with ``stall_s=None`` holds the request until the client hangs up:
    the client's own timeout ends it, whatever the machine's speed."""
    app = FastAPI()
    rng = random.Random(seed)
    stats = stats if stats is not None else {}
    stats.setdefault("calls", 0)
    stats.setdefault("per_pair", Counter())
    stats.setdefault("faults", Counter())

    @app.post("/v1/chat/completions")
    async def chat(req: Request):
        body = await req.json()
        stats["calls"] += 1
        n = stats["calls"]
        stats["per_pair"][body["messages"][1]["content"] if len(body["messages"]) > 1 else ""] += 1
        stats.setdefault("last", body)
        if latency:
            await asyncio.sleep(latency)
        kind = fault_for(n, body) if fault_for else (
            rng.choice(["429", "500", "stall"]) if fail_rate and rng.random() < fail_rate else None)
        if kind:
            stats["faults"][kind] += 1
            if kind == "429":
                return JSONResponse({"error": {"message": "rate limited", "type": "rate_limit"}}, status_code=429,
                                    headers={"retry-after": retry_after} if retry_after else {})
            if kind == "500":
                return JSONResponse({"error": {"message": "boom", "type": "server_error"}}, status_code=500)
            if stall_s is not None:
                await asyncio.sleep(stall_s)
            else:
                while not await req.is_disconnected():
                    await asyncio.sleep(0.02)
                return JSONResponse({}, status_code=499)
        content, finish, refusal = reply(body, n)
        logprobs = _logprobs(content) if body.get("logprobs") and content else None
        prompt_tokens = sum(len(m.get("content") or "") for m in body["messages"]) // 4
        return {"id": f"c{n}", "object": "chat.completion", "created": int(time.time()), "model": body["model"],
                "choices": [{"index": 0, "finish_reason": finish, "logprobs": logprobs,
                             "message": {"role": "assistant", "content": content, "refusal": refusal}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(content or "") // 4,
                          "total_tokens": prompt_tokens + len(content or "") // 4}}

    # ---- Files and Batch API: a batch runs on the second retrieve; ``batch_fail_rate`` of its lines fail.
    files: dict = {}
    batches: dict = {}

    def _file(fid, name, data, purpose):
        files[fid] = data
        return {"id": fid, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": name, "purpose": purpose, "status": "processed"}

    @app.post("/v1/files")
    async def upload(req: Request):
        raw = await req.body()
        boundary = req.headers["content-type"].split("boundary=", 1)[1].strip('"').encode()
        data, purpose, name = b"", "batch", "upload.jsonl"
        for part in raw.split(b"--" + boundary):
            head, _, content = part.partition(b"\r\n\r\n")
            content = content[:-2] if content.endswith(b"\r\n") else content
            if b'name="file"' in head:
                data = content
                m = re.search(rb'filename="([^"]*)"', head)
                name = m.group(1).decode() if m else name
            elif b'name="purpose"' in head:
                purpose = content.decode().strip()
        stats["uploads"] = stats.get("uploads", 0) + 1
        return _file(f"file-{len(files) + 1}", name, data, purpose)

    @app.get("/v1/files/{fid}/content")
    def content(fid: str):
        from fastapi.responses import Response
        return Response(files[fid], media_type="application/jsonl")

    def _batch_view(b):
        return {k: v for k, v in b.items() if not k.startswith("_")}

    @app.post("/v1/batches")
    async def create_batch(req: Request):
        body = await req.json()
        bid = f"batch_{len(batches) + 1}"
        batches[bid] = {"id": bid, "object": "batch", "endpoint": body["endpoint"], "errors": None,
                        "input_file_id": body["input_file_id"], "completion_window": body["completion_window"],
                        "status": "validating", "output_file_id": None, "error_file_id": None,
                        "created_at": int(time.time()), "metadata": body.get("metadata"), "_polls": 0}
        return _batch_view(batches[bid])

    @app.get("/v1/batches/{bid}")
    def retrieve_batch(bid: str):
        b = batches[bid]
        b["_polls"] += 1
        if b["status"] == "validating":
            b["status"] = "in_progress"
        elif b["status"] == "in_progress":
            out = []
            for raw in files[b["input_file_id"]].decode().splitlines():
                line = json.loads(raw)
                stats["batch_lines"] = stats.get("batch_lines", 0) + 1
                stats["per_pair"][line["body"]["messages"][1]["content"]] += 1
                if batch_fail_rate and rng.random() < batch_fail_rate:
                    out.append({"id": f"r-{line['custom_id']}", "custom_id": line["custom_id"], "response": {
                        "status_code": 500, "body": {"error": {"message": "boom"}}}, "error": None})
                    continue
                c, finish, refusal = reply(line["body"], 0)
                out.append({"id": f"r-{line['custom_id']}", "custom_id": line["custom_id"], "error": None,
                            "response": {"status_code": 200, "body": {
                                "id": "x", "object": "chat.completion", "created": 0, "model": line["body"]["model"],
                                "choices": [{"index": 0, "finish_reason": finish, "message": {
                                    "role": "assistant", "content": c, "refusal": refusal}}]}}})
            fid = f"file-{len(files) + 1}"
            _file(fid, "output.jsonl", "\n".join(json.dumps(o) for o in out).encode(), "batch_output")
            b.update(status="completed", output_file_id=fid)
        return _batch_view(b)

    @app.get("/stats")
    def get_stats():
        return {"calls": stats["calls"], "faults": dict(stats["faults"]),
                "max_requests_per_pair": max(stats["per_pair"].values(), default=0)}

    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class StubServer:
    """In-thread server: ``with StubServer(...) as s: s.base_url``; ``s.calls`` lists the request bodies."""

    def __init__(self, reply=overlap_reply, **faults):
        self.calls: list = []

        def recording(body, n):
            self.calls.append(body)
            return reply(body, n)

        self.stats: dict = {}
        self.port = free_port()
        app = build_app(recording, stats=self.stats, **faults)
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="error"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self._thread.start()
        while not self._server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self._server.should_exit = True
        self._thread.join(timeout=10)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fail-rate", type=float, default=0.0)
    ap.add_argument("--stall", type=float, default=5.0)
    a = ap.parse_args()
    uvicorn.run(build_app(latency=a.latency, fail_rate=a.fail_rate, stall_s=a.stall), host="127.0.0.1",
                port=a.port, log_level="error")
