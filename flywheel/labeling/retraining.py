"""When to retrain: the labels the judge has added since the last training, against ``retrain_after_labels``.

The labelling flow asks :func:`retraining_due` after each day's labels and, when it says so, emits one event that
the ``retraining`` deployment's trigger (prefect.yaml) answers; the retraining flow records what it trained on with
:func:`record_training`. The record lives beside the lake (``<lake>/_state/last_training.json``), so every worker
that mounts the lake reads the same one; it is written atomically after registration.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from flywheel.data.lake import open_lake
from flywheel.settings import Paths


def labels_snapshot(judge_version: str, paths: Paths) -> dict:
    """How many usable labels (parse_status ok) ``judge_version`` has given so far, and the table's fingerprint."""
    lk = open_lake(paths)
    lab = lk.read("judge_labels")
    n = int(((lab.judge_version == judge_version) & (lab.parse_status == "ok")).sum()) if len(lab) else 0
    return {"judge_version": judge_version, "labels": n, "fingerprint": lk.fingerprint("judge_labels")}


def _record_path(paths: Paths) -> Path:
    return paths.lake / "_state" / "last_training.json"


def last_training(paths: Paths) -> dict | None:
    p = _record_path(paths)
    return json.loads(p.read_text()) if p.exists() else None


def record_training(snapshot: dict, paths: Paths, **extra) -> dict:
    """Write what the finished training used (temp file, then rename: a reader never sees half a record)."""
    p = _record_path(paths)
    p.parent.mkdir(parents=True, exist_ok=True)
    rec = snapshot | extra
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".last_training.")
    with os.fdopen(fd, "w") as f:
        json.dump(rec, f, indent=1, sort_keys=True)
    os.replace(tmp, p)
    return rec


def retraining_due(snapshot: dict, last: dict | None, threshold: int) -> dict:
    """Pure decision: retrain when more than ``threshold`` usable labels arrived since the last training.

    Labels of another judge version than the one last trained on all count as new (a recalibrated judge — e.g.
    after a policy edit — starts a new label set); with no training on record, every label is new."""
    same_judge = last is not None and last.get("judge_version") == snapshot["judge_version"]
    before = int(last.get("labels", 0)) if same_judge else 0
    new = max(0, snapshot["labels"] - before)
    due = new > threshold
    since = (f"since the training of {last.get('trained_at', 'an earlier run')}" if same_judge
             else "with no training on this judge version yet")
    return {"due": due, "new_labels": new, "threshold": threshold,
            "reason": f"{new} new labels {since}: {'more than' if due else 'not more than'} "
                      f"retrain_after_labels = {threshold}"}
