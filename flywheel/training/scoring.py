"""Score distillation pairs with the rung above, over every rank of a job: the teacher-scoring stage at scale.

The pairs still missing from ``teacher_scores`` are cut by query into one shard per rank (the sorted query ids,
round-robin). Each rank scores its shard and commits it as one Parquet part, written atomically and named by its
content (the parent's version and the shard's (query, document hash) pairs), then all ranks wait for each other
and read every part back. A part that exists is never scored again: a job that crashed after some ranks committed
scores, on the rerun, only the shards that are missing. Rank 0 then writes the merged rows to the lake's
``teacher_scores`` in one write and removes the parts.

The scores are the single-process scores: each pair is scored by the same model with the same length-bucketed
scorer; what can differ between one process and several is only which pairs share a batch, which the scorer's
contract makes irrelevant up to float rounding (|Δ| ≤ 1e-5 for float32, tested).
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from flywheel.data.lake import sha256_text
from flywheel.settings import Paths


def shards(query_ids, world: int) -> list[list[str]]:
    qs = sorted(pd.unique(pd.Series(query_ids, dtype=str)))
    return [qs[r::world] for r in range(world)]


def part_path(parent: dict, rows: pd.DataFrame, paths: Paths) -> Path:
    key = sha256_text(parent["rung"], parent["model_version"],
                      *sorted(f"{q}|{h}" for q, h in zip(rows.query_id, rows.doc_hash)))[:16]
    return paths.models / "score-parts" / parent["model_version"] / f"part-{key}.parquet"


def score_shard(parent: dict, rows: pd.DataFrame, paths: Paths, device=None) -> tuple[Path, bool]:
    """Score ``rows`` (query_id, doc_hash, query, title, text) with ``parent`` and commit the part: (its path,
    whether it was scored now — False when the part was already there)."""
    out = part_path(parent, rows, paths)
    if out.exists() or rows.empty:
        return out, False
    from models.ranker import load_ranker, score_pairs
    from models.runtime import resolve_device

    model, tok, contract = load_ranker(parent["path"])
    model.to(device or resolve_device("auto", int(os.environ.get("LOCAL_RANK", "0"))))
    scores = score_pairs(model, tok, contract, rows["query"].tolist(), rows.title.tolist(), rows.text.tolist())
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    rows[["query_id", "doc_hash"]].assign(score=scores).to_parquet(tmp, index=False)
    os.replace(tmp, out)
    return out, True


def score_missing(parent: dict, missing: pd.DataFrame, paths: Paths, rank: int = 0, world: int = 1,
                  barrier=lambda: None) -> pd.DataFrame:
    """Scores of ``missing`` (one row per pair) as query_id, doc_hash, score: this rank scores its shard, every
    rank reads all shards' parts after ``barrier()``."""
    parts = []
    for r, qs in enumerate(shards(missing.query_id, world)):
        rows = missing[missing.query_id.isin(qs)]      # in the caller's order: one process scores as before
        if r == rank:
            score_shard(parent, rows, paths)
        parts.append(part_path(parent, rows, paths) if len(rows) else None)
    barrier()
    got = [pd.read_parquet(p) for p in parts if p is not None]
    return pd.concat(got, ignore_index=True) if got else pd.DataFrame(columns=["query_id", "doc_hash", "score"])


def remove_parts(parent: dict, paths: Paths) -> None:
    d = paths.models / "score-parts" / parent["model_version"]
    for p in d.glob("part-*.parquet"):
        p.unlink(missing_ok=True)
