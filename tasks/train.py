"""Tasks: train the teacher, distil each rung, prune the student, distil its compressed forms."""

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.training import ladder as lib
from tasks._common import artifact, content_key, paths, progress


@task(name="train-teacher", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def train_teacher(judge_version: str, labels_fp: str, cfg: FlywheelConfig) -> dict:
    with progress("train teacher", None) as advance:
        return lib.train_teacher(judge_version, labels_fp, cfg, paths(), progress=advance)


@task(name="distil-rung", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def distil(rung: str, parent: dict, judge_version: str, cfg: FlywheelConfig, engagement: dict | None = None) -> dict:
    teachers = parent["rung"] + (" + engagement" if engagement else "")
    with progress(f"distil {teachers} → {rung}", None) as advance:
        return lib.distil(rung, parent, judge_version, cfg, paths(), progress=advance, engagement=engagement)


@task(name="engagement-events", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def engagement_events(date: str, cfg: FlywheelConfig, golden_hash: str) -> dict:
    """Simulated click logs for the day (engagement.simulate), else what the engagement_events table holds."""
    if cfg.engagement.simulate:
        out = lib.simulate_engagement(date, cfg, paths())
        artifact("engagement", f"**{date}** (SIMULATED click model): {out['impressions']} impressions, "
                 f"{out['clicks']} clicks, {out['applies']} applies; CTR by position {out['ctr_by_position']}")
        return out
    from flywheel.data.lake import open_lake

    lk = open_lake(paths())
    return {"date": date, "simulated": False, "rows": int(len(lk.read("engagement_events"))),
            "fingerprint": lk.fingerprint("engagement_events")}


@task(name="train-engagement-teacher", retries=1, retry_delay_seconds=1, cache_key_fn=content_key,
      persist_result=True)
def train_engagement_teacher(events_fp: str, cfg: FlywheelConfig) -> dict:
    with progress("train engagement teacher", None) as advance:
        return lib.train_engagement_teacher(events_fp, cfg, paths(), progress=advance)


@task(name="prune-student", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def prune_student(student: dict, judge_version: str, cfg: FlywheelConfig, mlp_keep: float | None = None,
                  name: str = "student_pruned") -> dict:
    with progress(f"prune + recover {name}", None) as advance:
        return lib.prune_student(student, judge_version, cfg, paths(), progress=advance, mlp_keep=mlp_keep,
                                 name=name)


@task(name="compress-student", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def compress_student(student: dict, form: str, size: int, judge_version: str, cfg: FlywheelConfig) -> dict:
    from flywheel.training import compression

    with progress(f"distil {student['rung']} → {form} compression ({size})", None) as advance:
        return compression.compress_student(student, form, size, judge_version, cfg, paths(), progress=advance)
