"""Tasks: train the teacher, distil each rung, prune the student, distil its compressed forms."""

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.training import ladder as lib
from flywheel.training import launch
from tasks._common import artifact, content_key, markdown_table, paths, progress


def _launch(target: str, kwargs: dict, rung: str, cfg: FlywheelConfig, advance) -> dict:
    """Run ``target`` where the rung's ``launch`` says: here, or as a torchrun job whose every rank's log lines
    reach this task's log (a failed rank fails the task; its retry resumes from the last step checkpoint)."""
    import logging

    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    r = next(x for x in cfg.ladder.rungs if x.name == rung)
    try:
        logger = get_run_logger()
    except MissingContextError:          # the task's body called outside a run (task.fn in tests)
        logger = logging.getLogger("flywheel.training")
    return launch.run(f"flywheel.training.ladder:{target}", kwargs, r.launch, cfg, paths(), log=logger.info,
                      progress=advance)


@task(name="plan-ladder")
def plan_ladder(cfg: FlywheelConfig) -> dict:
    """Stop the flow before any GPU time is spent when a rung cannot fit this machine's GPUs (``flywheel plan``'s
    figures); on a machine without CUDA the rungs train on the CPU and nothing is checked."""
    from flywheel.training.plan import check_this_machine

    out = check_this_machine(cfg)          # ValueError naming the setting to change
    if out["checked"]:
        artifact("ladder-plan", markdown_table([{"rung": r, "GiB per GPU": g, "of": out["gpu_memory_gib"]}
                                                for r, g in out["rungs"].items()]))
    return out


@task(name="train-teacher", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def train_teacher(judge_version: str, labels_fp: str, cfg: FlywheelConfig) -> dict:
    with progress("train teacher", None) as advance:
        return _launch("train_teacher", {"judge_version": judge_version, "labels_fingerprint": labels_fp},
                       "teacher", cfg, advance)


@task(name="distil-rung", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def distil(rung: str, parent: dict, judge_version: str, cfg: FlywheelConfig, engagement: dict | None = None,
           teacher: dict | None = None) -> dict:
    # the teacher only where the rung learns its scores: the task's cache key stays what it was elsewhere
    teacher = teacher if next(x for x in cfg.ladder.rungs if x.name == rung).distil_from == "teacher" else None
    teachers = (teacher or parent)["rung"] + (" + engagement" if engagement else "")
    with progress(f"distil {teachers} → {rung}", None) as advance:
        return _launch("distil", {"rung_name": rung, "parent": parent, "judge_version": judge_version,
                                  "engagement": engagement, "teacher": teacher}, rung, cfg, advance)


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
        return _launch("train_engagement_teacher", {"events_fingerprint": events_fp}, "teacher", cfg, advance)


@task(name="prune-student", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def prune_student(student: dict, judge_version: str, cfg: FlywheelConfig, mlp_keep: float | None = None,
                  name: str = "student_pruned") -> dict:
    with progress(f"prune + recover {name}", None) as advance:
        return _launch("prune_student", {"student": student, "judge_version": judge_version, "mlp_keep": mlp_keep,
                                         "name": name}, "student", cfg, advance)


@task(name="compress-student", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def compress_student(student: dict, form: str, size: int, judge_version: str, cfg: FlywheelConfig) -> dict:
    from flywheel.training import compression

    with progress(f"distil {student['rung']} → {form} compression ({size})", None) as advance:
        return compression.compress_student(student, form, size, judge_version, cfg, paths(), progress=advance)


@task(name="labels-snapshot", retries=2, retry_delay_seconds=1)
def labels_snapshot(judge_version: str) -> dict:
    """Not cached: what the lake holds for the judge now; its fingerprint keys the teacher's cache."""
    from flywheel.labeling import retraining

    return retraining.labels_snapshot(judge_version, paths())


@task(name="record-training", retries=2, retry_delay_seconds=1)
def record_training(snapshot: dict, date: str, champion: int | None) -> dict:
    """After registration: the labels this training used, so the labelling flow counts new labels from here."""
    from flywheel.labeling import retraining

    return retraining.record_training(snapshot, paths(), trained_at=date, champion=champion)
