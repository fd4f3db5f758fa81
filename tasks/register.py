"""Tasks: register every rung in MLflow with lineage; gate and move the aliases."""

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.serving import registry as lib
from tasks._common import artifact, code_version, content_key, paths


@task(name="register-models", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def register_models(rungs: dict, evaluation: dict, lineage: dict, cfg: FlywheelConfig,
                    deployable: str = "student_pruned", compressed: dict | None = None,
                    compression: dict | None = None) -> dict:
    """Every rung under ``<registered_model>-<rung>``, the deployable one (the pruned student when accepted) under
    ``<registered_model>`` itself as its ``challenger``; compressed students (``compressed``, measured in
    ``compression``) under ``<registered_model>-<form><size>``, each its own ``challenger``."""
    lineage = lineage | {"code_version": code_version()}
    out = {}
    for name, rung in rungs.items():
        registered = cfg.registered_model if name == deployable else f"{cfg.registered_model}-{name}"
        metrics = {"ndcg@10": evaluation["systems"][name]["ndcg@10"],
                   "items_per_s": evaluation["systems"][name].get("items_per_s")}
        out[name] = lib.log_ranker(rung, metrics, lineage | {"parent": rung.get("parent", "judge-labels")},
                                   paths(), registered)
    lib.set_alias(cfg.registered_model, "challenger", out[deployable]["version"], paths())
    for name, rung in (compressed or {}).items():
        m = compression["systems"][name]
        out[name] = lib.log_ranker(rung, {"ndcg@10": m["ndcg@10"], "items_per_s": m.get("items_per_s"),
                                          "doc_tokens": m.get("doc_tokens"),
                                          "doc_tokens_ratio": m.get("doc_tokens_ratio")},
                                   lineage | {"parent": rung["parent"], "compression": rung["compression"]},
                                   paths(), f"{cfg.registered_model}-{name}")
        lib.set_alias(out[name]["name"], "challenger", out[name]["version"], paths())
    return out


@task(name="promote", retries=2, retry_delay_seconds=1)
def promote(registered: dict, evaluation: dict, cfg: FlywheelConfig, deployable: str = "student_pruned",
            compression: dict | None = None) -> dict:
    """Not cached: the decision depends on the registry's current champion. Compressed students pass the same
    gate (against the baselines, the teacher and their own name's champion), so each can be served by alias."""
    systems = evaluation["systems"]
    metric = evaluation.get("gate_metric", "ndcg@10")      # the rerank protocol's figure when judged pools are small
    teacher = systems["teacher"][metric]
    baselines = {b: systems[b][metric] for b in evaluation.get("baselines", []) if b in systems}
    out = lib.promote_challenger(cfg.registered_model, registered[deployable]["version"],
                                 systems[deployable][metric], teacher, cfg.promotion, paths(), baselines)
    lines = [f"**{cfg.registered_model}** challenger v{out['challenger']}: "
             f"{'promoted' if out['promoted'] else 'not promoted'} — {out['reason']}. "
             f"Champion is v{out['champion'] or 'none'}."]
    out["compressed"] = {}
    held = lib.compressed_source_refusal(evaluation, deployable, cfg.promotion.min_gain_over_baseline)
    for name, m in ((compression or {}).get("systems") or {}).items():
        reg = registered[name]
        if held:
            champ = lib.alias_version(reg["name"], "champion", paths())
            c = {"promoted": False, "reason": held, "challenger": str(reg["version"]),
                 "champion": str(champ.version) if champ else None}
        else:   # compressed students are measured on the judged pools: gated against the judged-pool figures
            c = lib.promote_challenger(reg["name"], reg["version"], m["ndcg@10"], systems["teacher"]["ndcg@10"],
                                       cfg.promotion, paths(), {b: systems[b]["ndcg@10"] for b in baselines})
        out["compressed"][name] = c
        lines.append(f"**{reg['name']}** v{c['challenger']}: {'promoted' if c['promoted'] else 'not promoted'} — "
                     f"{c['reason']}. Champion is v{c['champion'] or 'none'}.")
    artifact("promotion", "\n\n".join(lines))
    return out


@task(name="log-curves", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def log_curves(summary: dict) -> str:
    """The size-versus-NDCG and input-length-versus-NDCG plots, logged to MLflow once per content: ``summary``
    holds only what the plots are drawn from (date, rungs, evaluation, pruning, compression)."""
    return lib.log_curves(summary, paths())
