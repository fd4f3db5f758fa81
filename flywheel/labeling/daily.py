"""Flow stage 3, second half: label the new pairs among today's candidates with the calibrated judge.

"New" means: no label yet in the store for (query, document content hash, judge version) — a pair is never
paid for twice. Labels are committed in small atomic batches, so a crash loses at most one batch and a rerun
continues where it stopped. Queries of the golden test split are never candidates: they stay unseen by training.
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from datetime import datetime, timezone

import pandas as pd

from flywheel.config import FlywheelConfig
from flywheel.data.lake import open_lake, sha256_text
from flywheel.judge import store
from flywheel.settings import Paths


class GateClosed(RuntimeError):
    """Bulk labelling refused: the judge version did not pass calibration."""


def pending_pairs(date: str, judge_version: str, paths: Paths) -> pd.DataFrame:
    """Candidates of ``date`` that have no label by ``judge_version`` anywhere in the store."""
    lk = open_lake(paths)
    cands = lk.read("candidates", date)
    labels = lk.read("judge_labels")
    done = set(zip(labels.query_id, labels.doc_hash, labels.judge_version))
    todo = cands[[(q, h, judge_version) not in done for q, h in zip(cands.query_id, cands.doc_hash)]]
    todo = todo.drop_duplicates(["query_id", "doc_hash"])
    q = lk.read("queries")[["query_id", "text", "split"]].rename(columns={"text": "query"})
    d = lk.read("documents")[["doc_id", "content_hash", "title", "text"]].rename(columns={"content_hash": "doc_hash"})
    out = todo.merge(q, on="query_id").merge(d, on=["doc_id", "doc_hash"])
    leaked = out[out.split == "test"]
    if len(leaked):
        raise RuntimeError(f"{len(leaked)} candidate(s) belong to golden test queries: they must never be labelled "
                           f"for training (e.g. {leaked.query_id.iloc[0]})")
    return out.sort_values(["query_id", "doc_id"]).reset_index(drop=True)


def shard_of(query_id: str, n_shards: int) -> int:
    """Stable shard of a query (every pair of a query lands in the same shard, whatever the process)."""
    return int(sha256_text(query_id)[:8], 16) % n_shards


def label_candidates(date: str, calibration: dict, cfg: FlywheelConfig, paths: Paths, run_id: str | None = None,
                     batch_size: int = 64, progress=None, fail_after_batches: int | None = None,
                     shard: int = 0, n_shards: int = 1) -> dict:
    """Label today's pending pairs. Refuses (GateClosed) unless ``calibration['gate']['passed']``.

    ``shard``/``n_shards`` restrict the work to the queries of one shard (see ``shard_of``), so shards can run as
    parallel tasks on any executor: each commits its own content-keyed files and never touches another's pairs.
    ``fail_after_batches`` injects a crash after that many committed batches (for resumption tests).
    """
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    if not calibration["gate"]["passed"]:
        raise GateClosed(f"judge {calibration['judge_version']} is blocked from bulk labelling: "
                         f"{calibration['gate']['reason']}")
    from flywheel.judge.policy import load_policy

    policy = load_policy(cfg.resolve(cfg.policy))
    judge = store.load_judge(calibration["judge_version"], policy, cfg, paths)
    lk = open_lake(paths)
    todo = pending_pairs(date, judge.version, paths)
    if n_shards > 1:
        if judge.backend == "openai" and cfg.judge.mode == "batch":
            raise ValueError("batch mode submits one Batch API job per day: run it with n_shards=1")
        todo = todo[[shard_of(q, n_shards) == shard for q in todo.query_id]]
    run_id = run_id or uuid.uuid4().hex[:12]
    counts = {"pending": int(len(todo)), "labelled": 0, "shard": f"{shard}/{n_shards}",
              "host": f"{socket.gethostname()}:{os.getpid()}"}

    def commit(part: pd.DataFrame, j: pd.DataFrame, day: str | None = None) -> None:
        part, j = part.reset_index(drop=True), j.reset_index(drop=True)
        rows = part[["query_id", "doc_id", "doc_hash"]].assign(
            date=day or date, policy_hash=policy.version, judge_backend=judge.backend, judge_model=judge.model,
            prompt_hash=judge.prompt_hash, judge_version=judge.version, run_id=run_id,
            created_at=pd.Timestamp(datetime.now(timezone.utc)))
        rows = pd.concat([rows, j], axis=1)
        rows["grade"] = rows.grade.astype("Int8")
        lk.write("judge_labels", rows, date=day or date, grades=range(policy.max_grade + 1))
        counts["labelled"] += len(rows)

    if judge.backend == "openai" and cfg.judge.mode == "batch":
        counts["batch"] = _label_by_batch(date, judge, commit, paths)
    elif judge.backend == "openai":
        import asyncio

        def commit_batch(batch):
            if fail_after_batches is not None and counts.get("batches", 0) >= fail_after_batches:
                raise RuntimeError(f"injected failure after {counts['batches']} committed label batch(es)")
            idx = [i for i, _ in batch]
            commit(todo.loc[idx], pd.DataFrame([j for _, j in batch], index=idx))
            counts["batches"] = counts.get("batches", 0) + 1

        judge.settings.commit_every = batch_size
        counts["online"] = asyncio.run(judge.labeller().run(todo, commit_batch, progress))
        record_usage(date, judge.version, policy.version, run_id, counts["online"], paths)
    else:
        for b, s in enumerate(range(0, len(todo), batch_size)):
            if fail_after_batches is not None and b >= fail_after_batches:
                raise RuntimeError(f"injected failure after {b} committed label batch(es)")
            part = todo.iloc[s:s + batch_size]
            commit(part, judge.judge(part))
            if progress:
                progress(len(part))
    counts.update(day_summary(date, judge.version, paths), run_id=run_id)
    return counts


USAGE_FIELDS = ("requests", "retries", "prompt_tokens", "completion_tokens", "cost_usd", "failed")


def record_usage(date: str, judge_version: str, policy_version: str, run_id: str, usage: dict, paths: Paths) -> None:
    """Append what a paid labelling run used (tokens, cost) to ``<lake>/_state/usage.jsonl``, one line a run, so
    a day's cost can be read back beside its labels (the workbench shows it)."""
    rec = {"date": date, "judge_version": judge_version, "policy_version": policy_version, "run_id": run_id,
           **{k: usage.get(k, 0) for k in USAGE_FIELDS}}
    path = paths.lake / "_state" / "usage.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(rec) + "\n").encode())   # one O_APPEND write: parallel shards never interleave
    finally:
        os.close(fd)


def read_usage(paths: Paths, date: str | None = None, policy_version: str | None = None) -> list[dict]:
    path = paths.lake / "_state" / "usage.jsonl"
    if not path.exists():
        return []
    recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in recs if (date is None or r["date"] == date)
            and (policy_version is None or r["policy_version"] == policy_version)]


def day_summary(date: str, judge_version: str, paths: Paths) -> dict:
    """What the store holds for ``date`` by ``judge_version``: totals, statuses, grades, and its fingerprint."""
    lk = open_lake(paths)
    day = lk.read("judge_labels", date)
    day = day[day.judge_version == judge_version]
    return {
        "date": date, "judge_version": judge_version,
        "day_total": int(len(day)),
        "status": day.parse_status.value_counts().to_dict(),
        "grade_distribution": {int(k): int(v) for k, v in day.grade.dropna().astype(int).value_counts().sort_index().items()},
        "fingerprint": lk.fingerprint("judge_labels", date),
    }


def merge_shards(date: str, judge_version: str, shards: list[dict], paths: Paths) -> dict:
    """One day's result from its shards' results: summed counts, the day's totals read back from the store."""
    out = {"pending": sum(s["pending"] for s in shards), "labelled": sum(s["labelled"] for s in shards),
           "shards": len(shards), "run_id": ",".join(s["run_id"] for s in shards),
           "hosts": sorted({s["host"] for s in shards})}
    online = [s["online"] for s in shards if "online" in s]
    if online:
        out["online"] = {k: sum(o.get(k, 0) for o in online) for k in online[0] if isinstance(online[0][k], (int, float))}
    return {**out, **day_summary(date, judge_version, paths)}


def _label_by_batch(date: str, judge, commit, paths: Paths) -> dict:
    """Ingest finished batches of this judge version, then submit today's pending pairs as a new batch."""
    from openai import OpenAI

    from flywheel.judge import batch

    client = OpenAI(base_url=judge.base_url, api_key=judge.api_key, timeout=judge.settings.timeout_s)
    lk = open_lake(paths)

    def commit_lines(done, day):
        if not done:
            return
        cands = lk.read("candidates", day).drop_duplicates(["query_id", "doc_hash"]).set_index(["query_id", "doc_hash"])
        keys = [tuple(cid.split("|", 1)) for cid, _ in done]
        part = pd.DataFrame({"query_id": [k[0] for k in keys], "doc_hash": [k[1] for k in keys],
                             "doc_id": [cands.loc[k, "doc_id"] for k in keys]})
        # labels go to the day the pairs were submitted for, whatever day the batch finished
        commit(part, pd.DataFrame([j for _, j in done]), day)

    ingested = batch.poll_and_ingest(client, paths.home, judge.version, judge.policy, commit_lines)
    # pending again now that finished batches are in the store, minus what still sits in an open batch
    pending = pending_pairs(date, judge.version, paths)
    waiting = batch.in_flight_ids(paths.home, judge.version)
    fresh = pending[[batch.custom_id(q, h) not in waiting for q, h in zip(pending.query_id, pending.doc_hash)]]
    state = batch.submit(client, judge.labeller(), fresh, paths.home, judge.version, date)
    return {**ingested, "submitted": int(len(fresh)), "batch_id": state["batch_id"] if state else None}


def validate_labels(date: str, paths: Paths) -> dict:
    """Stage 4: re-validate the whole day's partition with its contract (raises ContractError on failure). Each
    label's grade is checked against the scale of the policy version it records (``policy_hash``), read back from
    the policies ingested under the flywheel home."""
    from flywheel.data import contracts
    from flywheel.judge.policy import stored_policy

    day = open_lake(paths).read("judge_labels", date)
    if day.empty:
        raise contracts.ContractError(f"no judge labels for {date}: nothing to train on")
    for version, part in day.groupby("policy_hash", dropna=False):
        try:
            policy = stored_policy(version, paths)
        except FileNotFoundError as exc:
            raise contracts.ContractError(f"table 'judge_labels' of {date}: {exc}") from None
        contracts.validate("judge_labels", part, range(policy.max_grade + 1))
    return {"date": date, "rows": int(len(day)), "unparsed_rate": float((day.parse_status != "ok").mean())}


def training_pairs(judge_version: str, paths: Paths) -> pd.DataFrame:
    """Every usable label of ``judge_version`` (parse_status ok) with its text; never a golden test query."""
    lk = open_lake(paths)
    lab = lk.read("judge_labels")
    lab = lab[(lab.judge_version == judge_version) & (lab.parse_status == "ok")]
    q = lk.read("queries")[["query_id", "text", "split"]].rename(columns={"text": "query"})
    d = lk.read("documents")[["doc_id", "content_hash", "title", "text"]].rename(columns={"content_hash": "doc_hash"})
    out = lab.merge(q, on="query_id").merge(d, on=["doc_id", "doc_hash"])
    assert not (out.split == "test").any(), "golden test queries reached the training set"
    return out.sort_values(["query_id", "doc_id"]).reset_index(drop=True)
