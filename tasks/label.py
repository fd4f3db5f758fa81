"""Tasks: retrieve today's candidates, label the new pairs, validate the day's labels."""

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.labeling import candidates
from flywheel.labeling import daily as lib
from tasks._common import artifact, content_key, paths, progress, resolve_secrets


@task(name="add-pseudo-queries", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def add_pseudo_queries(n: int, seed: int, queries_fp: str, documents_fp: str) -> dict:
    """Queries made from documents (``retrieval.pseudo_queries``), written to the lake's queries once per corpus:
    keyed by the seeded tables, so the next day's candidates stay cached. Returns ``queries_fp`` after the write."""
    from flywheel.data.lake import open_lake

    lk = open_lake(paths())
    out = candidates.add_pseudo_queries(n, seed, lk)
    return out | {"queries_fp": lk.fingerprint("queries")}


@task(name="retrieve-candidates", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def retrieve_candidates(date: str, cfg: FlywheelConfig, queries_fp: str, documents_fp: str) -> dict:
    return candidates.retrieve_candidates(date, cfg, paths())


@task(name="label-candidates", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def label_candidates(date: str, calibration: dict, cfg: FlywheelConfig, candidates_fp: str) -> dict:
    if cfg.judge.backend == "openai":
        resolve_secrets("OPENAI_API_KEY")
    pending = len(lib.pending_pairs(date, calibration["judge_version"], paths())) if calibration["gate"]["passed"] else None
    with progress(f"labelling {date}", pending) as advance:
        out = lib.label_candidates(date, calibration, cfg, paths(), progress=advance)
    artifact("daily-labels", f"**{date}**: {out['labelled']} new labels by judge `{out['judge_version']}` "
             f"({out['day_total']} today); status {out['status']}; grades {out['grade_distribution']}")
    return out


@task(name="label-shard", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def label_shard(date: str, calibration: dict, cfg: FlywheelConfig, candidates_fp: str, shard: int, n_shards: int) -> dict:
    """One shard of the day's labelling (the queries with ``shard_of(query) == shard``); runs on any task runner."""
    if cfg.judge.backend == "openai":
        resolve_secrets("OPENAI_API_KEY")
    return lib.label_candidates(date, calibration, cfg, paths(), shard=shard, n_shards=n_shards)


@task(name="merge-label-shards", retries=0)
def merge_label_shards(date: str, calibration: dict, shards: list[dict]) -> dict:
    out = lib.merge_shards(date, calibration["judge_version"], shards, paths())
    artifact("daily-labels", f"**{date}**: {out['labelled']} new labels by judge `{out['judge_version']}` from "
             f"{out['shards']} shards ({out['day_total']} today); status {out['status']}; "
             f"grades {out['grade_distribution']}")
    return out


def partition_key(context, parameters: dict) -> str:
    """The content key plus the day's partition as it is on disk now: a file that changed behind the labelling
    task's back (a writer that skipped the contract, a hand edit) is validated again, not served from cache."""
    from flywheel.data.lake import open_lake

    files = open_lake(paths()).files("judge_labels", parameters["date"])
    live = [(f.name, s.st_size, s.st_mtime_ns) for f in files for s in [f.stat()]]   # an edit in place changes these
    return content_key(context, parameters | {"partition_on_disk": live})


@task(name="validate-labels", retries=0, cache_key_fn=partition_key, persist_result=True)
def validate_labels(date: str, labels_fp: str) -> dict:
    return lib.validate_labels(date, paths())


@task(name="check-retraining", retries=2, retry_delay_seconds=1)
def check_retraining(judge_version: str, cfg: FlywheelConfig, config: str) -> dict:
    """Not cached: counts the labels now. When more than ``retrain_after_labels`` arrived since the last training,
    emits ``flywheel.retraining.due``, the event the ``retraining`` deployment's trigger (prefect.yaml) answers —
    as the task's last step, so a retry of a failed step before it cannot queue a second retraining."""
    from prefect.events import emit_event

    from flywheel.labeling import retraining

    snap = retraining.labels_snapshot(judge_version, paths())
    out = retraining.retraining_due(snap, retraining.last_training(paths()), cfg.retrain_after_labels)
    artifact("retraining-due", f"**Retraining {'due' if out['due'] else 'not due'}**: {out['reason']}.")
    if out["due"]:
        emit_event(event="flywheel.retraining.due",
                   resource={"prefect.resource.id": f"flywheel.labels.{cfg.registered_model}",
                             "prefect.resource.name": cfg.registered_model},
                   payload={"config": config, "judge_version": judge_version, "new_labels": out["new_labels"],
                            "labels_fingerprint": snap["fingerprint"]})
    return out | {"snapshot": snap}
