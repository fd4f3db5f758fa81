"""Batch mode for the openai backend: the OpenAI Batch API (``/v1/files``, ``/v1/batches``), about half the price.

A run ingests every finished batch of this judge version first, then submits the still-pending pairs (none
that sit in an unfinished batch) as one JSONL file, and records the batch under
``FLYWHEEL_HOME/batches/<judge_version>/<batch_id>.json``. Batches are polled across flow runs; lines that
failed come back as pending and are resubmitted by the next run. Batch replies get no repair round: a reply
that does not parse is stored as ``unparsed``.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pandas as pd

from flywheel.judge.prompt import judgment_row, parse_reply

ENDPOINT = "/v1/chat/completions"


def custom_id(query_id: str, doc_hash: str) -> str:
    return f"{query_id}|{doc_hash}"


def request_lines(labeller, pairs: pd.DataFrame) -> list[dict]:
    """One Batch API request per pair, with the same body the online mode sends."""
    return [{"custom_id": custom_id(r["query_id"], r["doc_hash"]), "method": "POST", "url": ENDPOINT,
             "body": labeller.request_body(labeller.messages(r))} for _, r in pairs.iterrows()]


def _state_dir(home: Path, judge_version: str) -> Path:
    d = Path(home) / "batches" / judge_version
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write_state(path: Path, state: dict) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}")
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)


def open_batches(home: Path, judge_version: str) -> list[dict]:
    states = (json.loads(p.read_text()) for p in sorted(_state_dir(home, judge_version).glob("*.json")))
    return [s for s in states if s["status"] not in ("ingested", "failed", "expired", "cancelled")]


def judgment_from_line(line: dict, policy) -> dict | None:
    """A judgment from one output line, or None when the request itself failed (the pair stays pending)."""
    resp = line.get("response") or {}
    if line.get("error") or resp.get("status_code") != 200:
        return None
    choice = resp["body"]["choices"][0]
    msg = choice["message"]
    if msg.get("refusal"):
        return judgment_row("refused", None, msg["refusal"])
    raw = msg.get("content")
    if choice.get("finish_reason") == "length":
        return judgment_row("truncated", None, raw)
    return judgment_row(*parse_reply(raw, policy), raw)


def poll_and_ingest(client, home: Path, judge_version: str, policy, commit) -> dict:
    """Check every open batch; ingest the finished ones through ``commit(list of (custom_id, judgment), date)``,
    ``date`` being the day the batch was submitted for."""
    counts = {"checked": 0, "ingested_batches": 0, "labels": 0, "failed_lines": 0, "still_running": 0}
    for state in open_batches(home, judge_version):
        counts["checked"] += 1
        b = client.batches.retrieve(state["batch_id"])
        state["status"] = b.status
        path = _state_dir(home, judge_version) / f"{state['batch_id']}.json"
        if b.status in ("validating", "in_progress", "finalizing", "cancelling"):
            counts["still_running"] += 1
        elif b.status == "completed":
            done = []
            if b.output_file_id:
                for raw in client.files.content(b.output_file_id).text.splitlines():
                    if raw.strip():
                        line = json.loads(raw)
                        j = judgment_from_line(line, policy)
                        if j is None:
                            counts["failed_lines"] += 1
                        else:
                            done.append((line["custom_id"], j))
            commit(done, state["date"])
            counts["labels"] += len(done)
            counts["ingested_batches"] += 1
            state["status"] = "ingested"
        _write_state(path, state)
    return counts


def submit(client, labeller, pairs: pd.DataFrame, home: Path, judge_version: str, date: str) -> dict | None:
    """Upload ``pairs`` as one JSONL file and create a batch; the state file is the record across runs."""
    if pairs.empty:
        return None
    lines = request_lines(labeller, pairs)
    payload = "\n".join(json.dumps(l) for l in lines).encode()
    f = client.files.create(file=(f"flywheel-{date}.jsonl", payload), purpose="batch")
    b = client.batches.create(input_file_id=f.id, endpoint=ENDPOINT, completion_window="24h",
                              metadata={"judge_version": judge_version, "date": date})
    state = {"batch_id": b.id, "input_file_id": f.id, "status": b.status, "date": date,
             "judge_version": judge_version, "custom_ids": [l["custom_id"] for l in lines]}
    _write_state(_state_dir(home, judge_version) / f"{b.id}.json", state)
    return state


def in_flight_ids(home: Path, judge_version: str) -> set[str]:
    return {c for s in open_batches(home, judge_version) for c in s["custom_ids"]}
