"""One configuration path: where MLflow, the lake and the results live comes from the environment (the stack) or
from the flywheel home (embedded); and the retraining decision the labelling flow takes."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flywheel.labeling.retraining import retraining_due

pytestmark = pytest.mark.unit
ROOT = Path(__file__).resolve().parents[2]

PROBE = ("from flywheel.settings import configure_environment; import os; p = configure_environment(); "
         "print(p.lake, p.mlflow_uri, p.remote_tracking, os.environ['MLFLOW_TRACKING_URI'], sep='|')")


def _probe(env: dict) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().split("|")


def _env(**kw) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYWHEEL_", "MLFLOW_", "PREFECT_"))}
    return env | kw


def test_the_stack_environment_says_where_mlflow_and_the_lake_are(tmp_path):
    lake, home = tmp_path / "shared-lake", tmp_path / "home"
    got = _probe(_env(FLYWHEEL_HOME=str(home), FLYWHEEL_LAKE=str(lake), MLFLOW_TRACKING_URI="http://mlflow:5000"))
    assert got == [str(lake), "http://mlflow:5000", "True", "http://mlflow:5000"]


def test_embedded_defaults_live_under_the_home(tmp_path):
    home = tmp_path / "home"
    got = _probe(_env(FLYWHEEL_HOME=str(home)))
    assert got == [str(home / "lake"), f"sqlite:///{home}/mlflow/mlflow.db", "False",
                   f"sqlite:///{home}/mlflow/mlflow.db"]


def test_a_child_with_another_home_does_not_inherit_its_parents_derived_store(tmp_path):
    """A parent's derived SQLite URI is not a user's setting: a child started on another home uses its own."""
    parent = _probe(_env(FLYWHEEL_HOME=str(tmp_path / "a")))
    child_env = _env(FLYWHEEL_HOME=str(tmp_path / "b"), MLFLOW_TRACKING_URI=parent[1],
                     FLYWHEEL_DERIVED_TRACKING_URI=parent[1])
    assert _probe(child_env)[1] == f"sqlite:///{tmp_path}/b/mlflow/mlflow.db"


@pytest.mark.parametrize("now,last,threshold,due,new", [
    (600, None, 500, True, 600),                                         # never trained: every label is new
    (600, {"judge_version": "j1", "labels": 200}, 500, False, 400),
    (701, {"judge_version": "j1", "labels": 200}, 500, True, 501),
    (700, {"judge_version": "j1", "labels": 200}, 500, False, 500),     # "more than", not "at least"
    (50, {"judge_version": "j0", "labels": 10_000}, 20, True, 50),       # a recalibrated judge starts afresh
    (100, {"judge_version": "j1", "labels": 100}, 0, False, 0),
])
def test_retraining_is_due_after_more_than_the_threshold_of_new_labels(now, last, threshold, due, new):
    out = retraining_due({"judge_version": "j1", "labels": now, "fingerprint": "f"}, last, threshold)
    assert (out["due"], out["new_labels"]) == (due, new)
    assert str(threshold) in out["reason"]
