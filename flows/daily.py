"""The daily flywheel: policy → calibration gate → candidates → labels → contract → teacher → mid → student →
pruned student → evaluation → compressed students → registry → scoring service. Run: ``python -m flows.daily [--config FILE]``."""

from __future__ import annotations

from datetime import date as _date

from flywheel.settings import configure_environment

configure_environment()   # before prefect/mlflow read their settings

from prefect import flow  # noqa: E402

from flows import stages  # noqa: E402
from flywheel.config import FlywheelConfig, load_config  # noqa: E402
from tasks import train  # noqa: E402


@flow(name="daily-flywheel")
def daily_flywheel(cfg: FlywheelConfig = FlywheelConfig(), date: str | None = None,
                   keep_serving: bool = False) -> dict:
    """Everything once: the labelling half, then the retraining half on the day's labels (``make demo``)."""
    date = date or _date.today().isoformat()
    clock = stages.Clock()
    train.plan_ladder(cfg)      # a rung that cannot fit the GPUs stops the flow here, before any GPU time
    lab = stages.labelling_stages(cfg, date, clock)
    return stages.training_stages(cfg, date, clock, lab, lab["labels"]["fingerprint"], keep_serving)


label_day = stages.label_day


def task_runner(cfg: FlywheelConfig):
    """The flow's task runner from the configuration: Prefect's thread pool, or a Dask cluster (prefect-dask)."""
    f = cfg.fanout
    if f.task_runner != "dask":
        return None
    from prefect_dask import DaskTaskRunner

    if f.dask_address:
        return DaskTaskRunner(address=f.dask_address)
    return DaskTaskRunner(cluster_kwargs={"n_workers": f.dask_workers, "threads_per_worker": f.dask_threads_per_worker,
                                          "processes": True, "dashboard_address": None})


def with_runner(cfg: FlywheelConfig):
    runner = task_runner(cfg)
    return daily_flywheel if runner is None else daily_flywheel.with_options(task_runner=runner)


def print_summary(summary: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from flywheel.evaluation.report import tables

    console = Console()
    for title, cols, rows in tables(summary):
        tab = Table(title=title)
        for c in cols:
            tab.add_column(c)
        for r in rows:
            tab.add_row(*[f"{c:.4f}" if isinstance(c, float) else ("" if c is None else str(c)) for c in r])
        console.print(tab)
    console.print(f"Report: {summary['report']}")


def main(config: str | None = None, date: str | None = None, keep_serving: bool = False) -> dict:
    cfg = load_config(config)
    summary = with_runner(cfg)(cfg, date, keep_serving)
    print_summary(summary)
    return summary


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--date", default=None, help="run date YYYY-MM-DD (default: today)")
    ap.add_argument("--keep-serving", action="store_true", help="leave the scoring service running")
    a = ap.parse_args()
    main(a.config, a.date, a.keep_serving)
