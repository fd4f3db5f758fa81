"""The daily labelling deployment: policy → calibration gate → candidates → labels → contract, then whether
enough new labels arrived to trigger the retraining deployment. Run: ``python -m flows.labelling [--config FILE]``."""

from __future__ import annotations

from datetime import date as _date

from flywheel.settings import configure_environment

configure_environment()   # before prefect/mlflow read their settings

from prefect import flow  # noqa: E402

from flows import stages  # noqa: E402
from flywheel.config import load_config  # noqa: E402
from tasks import label  # noqa: E402
from tasks._common import artifact, markdown_table  # noqa: E402


@flow(name="daily-labelling", retries=1, retry_delay_seconds=30)
def daily_labelling(config: str = "configs/demo.yaml", date: str | None = None) -> dict:
    """``config``: a config file (relative to the repository); ``date``: the labelling day (default today).
    A retry (or a rerun) resumes: finished tasks are cache hits and committed labels are never asked again."""
    cfg = load_config(config)
    date = date or _date.today().isoformat()
    clock = stages.Clock()
    lab = stages.labelling_stages(cfg, date, clock)
    due = label.check_retraining(lab["calibration"]["judge_version"], cfg, config)
    artifact("labelling-run", f"## Labelling {date} ({cfg.name})\n\n" + markdown_table(clock.stages)
             + f"\n\nRetraining {'**due**' if due['due'] else 'not due'}: {due['reason']}.")
    return {"date": date, "config": cfg.name, "stages": clock.stages, "labels": lab["labels"],
            "calibration": {k: lab["calibration"][k] for k in ("judge_version", "gate")}, "retraining": due}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--date", default=None, help="labelling day YYYY-MM-DD (default: today)")
    a = ap.parse_args()
    out = daily_labelling(a.config, a.date)
    print(f"{out['labels']['labelled']} new labels on {out['date']}; retraining: {out['retraining']['reason']}")
