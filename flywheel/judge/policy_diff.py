"""Impact preview of a policy change, before it goes live: what changed in the policy, how agreement with the
golden set moves, and every golden pair whose grade changes. Both versions are judged by the configured judge.

(The offline judge reads a policy through its grade scale and ``document_fields``; a prose-only change gives it
a new version but the same grades. An LLM judge reads all of it.)
"""

from __future__ import annotations

import difflib

from flywheel.config import FlywheelConfig
from flywheel.judge.agreement import agreement
from flywheel.judge.policy import load_policy
from flywheel.settings import Paths


def describe_changes(old_path, new_path) -> list[str]:
    old, new = load_policy(old_path), load_policy(new_path)
    out = [f"version {old.version} -> {new.version}"]
    for g_old, g_new in zip(old.scale, new.scale):
        if g_old != g_new:
            out.append(f"grade {g_old.grade}: {g_old.label!r} -> {g_new.label!r}"
                       + (" (definition changed)" if g_old.definition != g_new.definition else ""))
    if len(old.scale) != len(new.scale):
        out.append(f"scale: {len(old.scale)} -> {len(new.scale)} grades")
    od, nd = {d.name for d in old.dimensions}, {d.name for d in new.dimensions}
    out += [f"dimension added: {d}" for d in sorted(nd - od)] + [f"dimension removed: {d}" for d in sorted(od - nd)]
    if old.document_fields != new.document_fields:
        out.append(f"document_fields: {old.document_fields} -> {new.document_fields}")
    if old.examples != new.examples:
        out.append(f"examples: {len(old.examples)} -> {len(new.examples)}")
    if old.guidance != new.guidance:
        changed = sum(1 for l in difflib.ndiff(old.guidance.splitlines(), new.guidance.splitlines()) if l[:1] in "+-")
        out.append(f"guidance: {changed} line(s) changed")
    return out


def policy_impact(old_path, new_path, cfg: FlywheelConfig, paths: Paths) -> dict:
    from flywheel.judge.calibrate import calibrate

    runs = {}
    for name, p in (("old", old_path), ("new", new_path)):
        runs[name] = calibrate(cfg.model_copy(update={"policy": str(p)}), paths)
    before = {(g["query_id"], g["doc_id"]): g for g in runs["old"]["golden_grades"]}
    changed = []
    for g in runs["new"]["golden_grades"]:
        b = before.get((g["query_id"], g["doc_id"]))
        if b is not None and b["grade"] != g["grade"]:
            changed.append({"query": g["query"], "title": g["title"], "split": g["split"], "human": g["human"],
                            "old": b["grade"], "new": g["grade"]})
    figures = {}
    n_grades = {"old": load_policy(old_path).max_grade + 1, "new": load_policy(new_path).max_grade + 1}
    for name, r in runs.items():
        for split in ("calibration", "test"):
            gs = [g for g in r["golden_grades"] if g["split"] == split and g["grade"] is not None]
            if gs:
                figures[(name, split)] = agreement([g["grade"] for g in gs], [g["human"] for g in gs], n_grades[name])
    return {"changes": describe_changes(old_path, new_path),
            "judge_versions": {k: r["judge_version"] for k, r in runs.items()},
            "gate": {k: r["gate"] for k, r in runs.items()},
            "agreement": {f"{n}/{s}": {k: v for k, v in m.items() if k != "confusion"} for (n, s), m in figures.items()},
            "changed_pairs": sorted(changed, key=lambda c: -abs((c["new"] or 0) - (c["old"] or 0)))}
