"""What the workbench reads back about a policy version: the judge's calibration under it (from the MLflow runs
the calibrate stage logs, or from an impact preview that judged it), its largest disagreements with the human
raters, and the day's labels under it (grade distribution, statuses, cost)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from flywheel.settings import Paths

CALIBRATION_EXPERIMENT = "flywheel-calibration"


_SUMMARIES: dict[str, dict] = {}               # run id -> calibration.json (a finished run's artifact never changes)
_LISTING: dict[str, tuple[float, dict]] = {}   # tracking URI -> (when, policy version -> newest run)
LISTING_TTL_S = 20.0


def calibrations(paths: Paths) -> dict[str, dict]:
    """policy version -> the newest calibration summary logged for it (tags.policy_version) in MLflow. The run
    listing is kept for ``LISTING_TTL_S`` and each summary for good, so a page does not download them again."""
    import tempfile

    from mlflow.tracking import MlflowClient

    cached = _LISTING.get(paths.mlflow_uri)
    if cached and time.monotonic() - cached[0] < LISTING_TTL_S:
        return cached[1]
    client = MlflowClient(tracking_uri=paths.mlflow_uri)   # not the process-wide URI: the app may share a process
    exp = client.get_experiment_by_name(CALIBRATION_EXPERIMENT)
    out: dict[str, dict] = {}
    if exp is not None:
        for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=200):
            version = run.data.tags.get("policy_version")
            if version and version not in out:
                out[version] = {"run_id": run.info.run_id, "source": "calibration run"}
    for rec in out.values():
        if rec["run_id"] not in _SUMMARIES:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    _SUMMARIES[rec["run_id"]] = json.loads(
                        Path(client.download_artifacts(rec["run_id"], "calibration.json", tmp)).read_text())
            except Exception as exc:   # an unreadable artifact store is shown, not fatal
                rec["error"] = f"calibration.json unreadable: {exc}"
                continue
        rec["summary"] = _SUMMARIES[rec["run_id"]]
    _LISTING[paths.mlflow_uri] = (time.monotonic(), out)
    return out


_PREVIEWED: dict[str, tuple[float, dict]] = {}


def previewed(previews_dir: Path) -> dict[str, dict]:
    """policy version -> calibration figures measured by a finished impact preview (either side of it)."""
    out = {}
    for result in sorted(previews_dir.glob("*/result.json"), key=lambda p: p.stat().st_mtime):
        mtime = result.stat().st_mtime
        if _PREVIEWED.get(str(result), (None,))[0] != mtime:
            r = json.loads(result.read_text())
            _PREVIEWED[str(result)] = (mtime, {f["policy_version"]: f for f in r.get("calibration", {}).values()})
        for version, figures in _PREVIEWED[str(result)][1].items():
            out[version] = {"summary": figures, "source": f"impact preview {result.parent.name}"}
    return out


def disagreements(summary: dict, n: int = 25) -> list[dict]:
    """The golden pairs where the judge is furthest from the raters' mean grade, largest gap first."""
    rows = [g for g in summary.get("golden_grades", []) if g.get("grade") is not None]
    for g in rows:
        g["gap"] = round(g["grade"] - g["human"], 2)
    return sorted(rows, key=lambda g: -abs(g["gap"]))[:n]


LOOKBACK = 60


def day_labels(version: str, paths: Paths, date: str | None = None) -> dict | None:
    """The labels of ``date`` (default: the latest day with any) graded under policy ``version``."""
    from flywheel.data.lake import open_lake
    from flywheel.labeling.daily import read_usage

    lk = open_lake(paths)
    dates = lk.dates("judge_labels")
    if date is None:   # the latest of the last LOOKBACK days with a label under it, reading one column
        date = next((d for d in reversed(dates[-LOOKBACK:])
                     if any((pd.read_parquet(f, columns=["policy_hash"]).policy_hash == version).any()
                            for f in lk.files("judge_labels", d))), None)
    if date is None or date not in dates:
        return None
    day = lk.read("judge_labels", date)
    mine = day[day.policy_hash == version]
    usage = read_usage(paths, date, version)
    return {"date": date, "labels": int(len(mine)), "other_versions": int(len(day) - len(mine)),
            "status": {str(k): int(v) for k, v in mine.parse_status.value_counts().items()},
            "grades": {int(k): int(v) for k, v in mine.grade.dropna().astype(int).value_counts().sort_index().items()},
            "judges": sorted(mine.judge_version.unique().tolist()),
            "backend": sorted(mine.judge_backend.unique().tolist()),
            "cost_usd": round(sum(u.get("cost_usd", 0) for u in usage), 4) if usage else 0.0,
            "paid_runs": len(usage), "dates": dates}
