"""Labelling fanned out as mapped Prefect tasks on a local two-worker Dask cluster (prefect-dask) writes exactly
the labels of a sequential run: same pairs, grades, dimension scores and rationales, nothing twice."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from flywheel.labeling.daily import shard_of

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-02-11"

DRIVER = textwrap.dedent("""
    import json, os, shutil, sys
    from flywheel.settings import configure_environment
    paths = configure_environment()
    from prefect import flow
    from flywheel.config import load_config
    from flywheel.data.lake import open_lake as lake
    from flywheel.data.golden import seed_golden
    from flywheel.judge.calibrate import calibrate
    from flywheel.labeling import daily as labeling
    from flywheel.labeling.candidates import retrieve_candidates
    from flows.daily import label_day, task_runner

    date = sys.argv[1]
    cfg = load_config("configs/ci.yaml")
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    cal = calibrate(cfg, paths)
    cands = retrieve_candidates(date, cfg, paths)

    seq = labeling.label_candidates(date, cal, cfg, paths)
    lake(paths).read("judge_labels", date).to_parquet(paths.home / "sequential.parquet")
    shutil.rmtree(paths.lake / "judge_labels" / f"date={date}")
    assert labeling.pending_pairs(date, cal["judge_version"], paths).shape[0] == seq["pending"]

    dask_cfg = cfg.model_copy(update={"fanout": cfg.fanout.model_copy(update={
        "shards": 4, "task_runner": "dask", "dask_workers": 2})})

    @flow(name="label-fanout")
    def fanout():
        return label_day(date, cal, dask_cfg, cands["fingerprint"])

    out = fanout.with_options(task_runner=task_runner(dask_cfg))()
    print("RESULT", json.dumps({"sequential": seq["labelled"], "fanout": out, "driver": os.getpid()}), flush=True)
""")


@pytest.mark.slow
def test_two_worker_dask_cluster_gives_the_sequential_labels(tmp_path):
    env = {**os.environ, "FLYWHEEL_HOME": str(tmp_path / "home")}
    for k in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "HF_HOME",
              "MPLCONFIGDIR", "IR_DATASETS_HOME"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", DRIVER, DATE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT")).split(" ", 1)[1])
    out = res["fanout"]
    assert out["shards"] == 4 and out["labelled"] == res["sequential"] > 0
    # the shards ran in the cluster's worker processes, not in the flow's process
    workers = {h.rsplit(":", 1)[1] for h in out["hosts"]}
    assert str(res["driver"]) not in workers and 1 <= len(workers) <= 2

    from flywheel.data.lake import Lake

    keys = ["query_id", "doc_id", "doc_hash", "judge_version"]
    same = ["grade", "dimension_scores", "rationale", "parse_status", "policy_hash", "prompt_hash"]
    seq = _sorted(pd.read_parquet(tmp_path / "home" / "sequential.parquet"), keys)
    fan = _sorted(Lake(tmp_path / "home" / "lake").read("judge_labels", DATE), keys)
    assert not fan.duplicated(keys).any()
    assert len(fan) == len(seq)
    assert fan[keys + same].equals(seq[keys + same])
    # The judge's continuous score agrees to float32 rounding only: Dask workers run torch on one thread and the
    # bi-encoder sees other batches, which moves the last bits of a cosine (measured: 4.8e-7 at most).
    assert (fan.score - seq.score).abs().max() < 1e-5
    # four shards, four runs: each label says which shard run wrote it, and a query never spans two shards
    assert fan.run_id.nunique() == 4
    assert (fan.groupby("query_id").run_id.nunique() == 1).all()
    by_run = fan.groupby("run_id").query_id.apply(lambda q: {shard_of(x, 4) for x in q})
    assert all(len(s) == 1 for s in by_run)


def _sorted(df, keys):
    return df.sort_values(keys).reset_index(drop=True)
