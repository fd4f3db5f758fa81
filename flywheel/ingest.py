"""Stage 1: ingest the grading policy and seed the lake with the golden set's queries and documents."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path

from flywheel.golden import load_golden
from flywheel.lake import Lake
from flywheel.policy import load_policy
from flywheel.settings import Paths


def ingest_policy(policy_path: str | Path, paths: Paths) -> dict:
    """Validate the policy, store a copy under its version, and append it to the version log."""
    policy = load_policy(policy_path)
    store = paths.home / "policies"
    store.mkdir(parents=True, exist_ok=True)
    copy = store / f"{policy.name}-{policy.version}.md"
    if not copy.exists():
        tmp = store / f".tmp-{policy.version}"
        shutil.copyfile(policy_path, tmp)
        os.replace(tmp, copy)
        with open(store / "versions.jsonl", "a") as log:
            log.write(json.dumps({"name": policy.name, "version": policy.version, "source": str(policy_path),
                                  "ingested_at": datetime.now(timezone.utc).isoformat()}) + "\n")
    return {"name": policy.name, "version": policy.version, "path": str(copy),
            "grades": len(policy.scale), "dimensions": [d.name for d in policy.dimensions]}


def seed_golden(golden_dir: str | Path, lake: Lake) -> dict:
    """Write the golden set's queries, documents and per-rater labels into the lake (idempotent)."""
    g = load_golden(golden_dir)
    lake.write("queries", g.queries)
    lake.write("documents", g.documents)
    lake.write("golden_labels", g.labels)
    return {"golden_hash": g.content_hash, "queries": len(g.queries), "documents": len(g.documents),
            "judgments": len(g.labels)}
