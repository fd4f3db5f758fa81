"""Tasks: register every rung in MLflow with lineage; gate and move the aliases."""

from prefect import task

from flywheel import registry as lib
from flywheel.config import FlywheelConfig
from tasks._common import artifact, code_version, content_key, paths


@task(name="register-models", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def register_models(rungs: dict, evaluation: dict, lineage: dict, cfg: FlywheelConfig,
                    deployable: str = "student_pruned") -> dict:
    out = {}
    for name, rung in rungs.items():
        # The deployable model (the pruned student when accepted) goes under the main name; every rung is also
        # kept under its own name.
        registered = cfg.registered_model if name == deployable else f"{cfg.registered_model}-{name}"
        metrics = {"ndcg@10": evaluation["systems"][name]["ndcg@10"],
                   "items_per_s": evaluation["systems"][name].get("items_per_s")}
        out[name] = lib.log_ranker(rung, metrics, lineage | {"code_version": code_version(),
                                                            "parent": rung.get("parent", "judge-labels")},
                                   paths(), registered)
    lib.set_alias(cfg.registered_model, "challenger", out[deployable]["version"], paths())
    return out


@task(name="promote", retries=2, retry_delay_seconds=1)
def promote(registered: dict, evaluation: dict, cfg: FlywheelConfig, deployable: str = "student_pruned") -> dict:
    """Not cached: the decision depends on the registry's current champion."""
    systems = evaluation["systems"]
    out = lib.promote_challenger(cfg.registered_model, registered[deployable]["version"],
                                 systems[deployable]["ndcg@10"], systems["teacher"]["ndcg@10"],
                                 cfg.promotion, paths())
    artifact("promotion", f"**{cfg.registered_model}** challenger v{out['challenger']}: "
             f"{'promoted' if out['promoted'] else 'not promoted'} — {out['reason']}. "
             f"Champion is v{out['champion'] or 'none'}.")
    return out


@task(name="log-curves", retries=2, retry_delay_seconds=1)
def log_curves(summary: dict) -> str:
    """The size-versus-NDCG and input-length-versus-NDCG plots, logged to MLflow."""
    return lib.log_curves(summary, paths())
