"""The retraining deployment: every label the calibrated judge has given → teacher → mid → student → pruned →
evaluation → registry (metric-gated champion) → deployment check. Run: ``python -m flows.retraining [--config FILE]``."""

from __future__ import annotations

from datetime import date as _date

from flywheel.settings import configure_environment

configure_environment()   # before prefect/mlflow read their settings

from prefect import flow  # noqa: E402

from flows import stages  # noqa: E402
from flywheel.config import load_config  # noqa: E402
from tasks import train  # noqa: E402
from tasks._common import artifact, markdown_table  # noqa: E402


@flow(name="retraining")
def retraining(config: str = "configs/demo.yaml", date: str | None = None, keep_serving: bool = False) -> dict:
    """``config``: a config file (relative to the repository); ``date``: the run's date for lineage (default
    today). A rerun after a crash resumes: trained rungs, evaluations and registrations are cache hits."""
    cfg = load_config(config)
    date = date or _date.today().isoformat()
    clock = stages.Clock()
    train.plan_ladder(cfg)      # a rung that cannot fit the GPUs stops the flow here, before any GPU time
    pre = stages.prerequisites(cfg, clock)
    if not pre["calibration"]["gate"]["passed"]:
        raise RuntimeError(f"the calibration gate blocks judge {pre['calibration']['judge_version']}: "
                           f"{pre['calibration']['gate']['reason']}; its labels are not used for training")
    snap = train.labels_snapshot(pre["calibration"]["judge_version"])
    summary = stages.training_stages(cfg, date, clock, pre | {"labels": snap}, snap["fingerprint"], keep_serving)
    summary["trained_on"] = train.record_training(snap, date, summary["promotion"].get("champion"))
    artifact("retraining-run", f"## Retraining {date} ({cfg.name}) on {snap['labels']} labels of judge "
             f"`{snap['judge_version']}`\n\n" + markdown_table(clock.stages))
    return summary


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--date", default=None, help="run date YYYY-MM-DD (default: today)")
    a = ap.parse_args()
    from flows.daily import print_summary

    print_summary(retraining(a.config, a.date))
