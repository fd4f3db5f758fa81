"""Tasks: train the teacher, distil each rung, prune the student."""

from prefect import task

from flywheel import ladder as lib
from flywheel.config import FlywheelConfig
from tasks._common import content_key, paths, progress


@task(name="train-teacher", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def train_teacher(judge_version: str, labels_fp: str, cfg: FlywheelConfig) -> dict:
    with progress("train teacher", None) as advance:
        return lib.train_teacher(judge_version, labels_fp, cfg, paths(), progress=advance)


@task(name="distil-rung", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def distil(rung: str, parent: dict, judge_version: str, cfg: FlywheelConfig) -> dict:
    with progress(f"distil {parent['rung']} → {rung}", None) as advance:
        return lib.distil(rung, parent, judge_version, cfg, paths(), progress=advance)


@task(name="prune-student", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def prune_student(student: dict, judge_version: str, cfg: FlywheelConfig) -> dict:
    with progress("prune + recover student", None) as advance:
        return lib.prune_student(student, judge_version, cfg, paths(), progress=advance)
