"""Impact preview of a policy change, before it goes live: what changed in the policy, how agreement with the
golden set moves, and every golden pair whose grade changes. Both versions are judged by the configured judge.

(The offline judge reads a policy through its grade scale and ``document_fields``; a prose-only change gives it
a new version but the same grades. An LLM judge reads all of it.)
"""

from __future__ import annotations

import difflib

from flywheel.config import FlywheelConfig
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
        edited = sum(a != b for a, b in zip(old.examples, new.examples))
        out.append(f"examples: {len(old.examples)} -> {len(new.examples)}" + (f", {edited} edited" if edited else ""))
    if old.guidance != new.guidance:
        changed = sum(1 for l in difflib.ndiff(old.guidance.splitlines(), new.guidance.splitlines()) if l[:1] in "+-")
        out.append(f"guidance: {changed} line(s) changed")
    return out


def policy_impact(old_path, new_path, cfg: FlywheelConfig, paths: Paths, progress=None) -> dict:
    """Judge the golden set under both policies. ``progress(message, step, steps)`` is told each stage, and how
    many pairs (LLM judge) or feature rows (offline judge) are done within it.

    Returns what changed in the text, both judge versions and gates, agreement per version and split, each
    version's calibration figures, and every golden pair whose grade changes (with the raters' own grades and
    the judge's rationale under each policy), largest changes first."""
    from flywheel.data.golden import load_golden
    from flywheel.judge.calibrate import _with_ci, calibrate

    runs = {}
    for step, (name, p) in enumerate((("old", old_path), ("new", new_path))):
        message = f"judging the golden set under the {'current' if name == 'old' else 'new'} policy"
        done = [0]

        def advance(n, message=message, step=step, done=done):
            done[0] += n
            progress(f"{message}: {done[0]:,} done", step, 2)

        if progress:
            progress(message, step, 2)
        runs[name] = calibrate(cfg.model_copy(update={"policy": str(p)}), paths, progress=advance if progress else None)
    if progress:
        progress("comparing", 2, 2)
    labels = load_golden(cfg.resolve(cfg.golden)).labels
    raters = labels.groupby(["query_id", "doc_id"]).grade.agg(lambda g: sorted(int(x) for x in g)).to_dict()
    before = {(g["query_id"], g["doc_id"]): g for g in runs["old"]["golden_grades"]}
    changed = []
    for g in runs["new"]["golden_grades"]:
        b = before.get((g["query_id"], g["doc_id"]))
        if b is not None and b["grade"] != g["grade"]:
            changed.append({"query": g["query"], "title": g["title"], "text": g.get("text", ""), "split": g["split"],
                            "human": g["human"], "raters": raters.get((g["query_id"], g["doc_id"]), []),
                            "old": b["grade"], "new": g["grade"], "old_rationale": b.get("rationale"),
                            "new_rationale": g.get("rationale")})
    figures = {}
    n_grades = {"old": load_policy(old_path).max_grade + 1, "new": load_policy(new_path).max_grade + 1}
    for name, r in runs.items():
        for split in ("calibration", "test"):
            gs = [g for g in r["golden_grades"] if g["split"] == split and g["grade"] is not None]
            if gs:
                figures[(name, split)] = _with_ci([g["grade"] for g in gs], [g["human"] for g in gs], n_grades[name])
    return {"changes": describe_changes(old_path, new_path),
            "judge_versions": {k: r["judge_version"] for k, r in runs.items()},
            "policy_versions": {k: r["policy_version"] for k, r in runs.items()},
            "gate": {k: r["gate"] for k, r in runs.items()},
            "agreement": {f"{n}/{s}": {k: v for k, v in m.items() if k != "confusion"} for (n, s), m in figures.items()},
            "calibration": {k: calibration_figures(r) for k, r in runs.items()},
            "changed_pairs": sorted(changed, key=lambda c: -abs((c["new"] or 0) - (c["old"] or 0)))}


def calibration_figures(summary: dict) -> dict:
    """The part of a calibration summary people read: agreement per split with intervals, the BM25 baseline,
    the human ceiling, slices, the gate — without the per-pair grades."""
    keep = ("judge_version", "policy_version", "backend", "model", "calibration", "test", "bm25_baseline_test",
            "human_ceiling", "gate", "threshold")
    return {k: summary[k] for k in keep if k in summary}


def save_impact(result: dict, path) -> None:
    """Write an impact preview as JSON, atomically (the workbench reads it while the preview runs elsewhere)."""
    import json
    import os
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(result, default=_plain))
    os.replace(tmp, path)


def _plain(o):
    if hasattr(o, "item"):   # numpy scalars
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)
