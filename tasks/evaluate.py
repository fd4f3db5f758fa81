"""Task: evaluate every system on the golden test split; artifact with the table."""

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.evaluation import evaluate as lib
from tasks._common import artifact, content_key, markdown_table, paths


@task(name="evaluate", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def evaluate(rungs: dict, judge_version: str, cfg: FlywheelConfig) -> dict:
    run_id = "eval-" + "-".join(r["model_version"][:8] for r in rungs.values())
    out = lib.evaluate_all(rungs, judge_version, run_id, cfg, paths())
    rows = [{"system": k, "NDCG@10": v["ndcg@10"], "non-embedding params": v.get("n_params") or "",
             "items/s": v.get("items_per_s") or ""} for k, v in out["systems"].items()]
    artifact("evaluation", f"## Golden test split ({out['test_queries']} queries, {out['test_pairs']} pairs)\n\n"
             + markdown_table(rows))
    return out


@task(name="accept-pruned", retries=1, retry_delay_seconds=1)
def accept_pruned(evaluation: dict, cfg: FlywheelConfig) -> dict:
    """The deployable student: the pruned one only if its NDCG@10 holds and its measured speed improves."""
    from flywheel.training.ladder import accept_pruned as decide

    s = evaluation["systems"]
    out = decide(s["student"], s["student_pruned"], cfg.ladder.prune_min_ndcg_ratio)
    artifact("pruning", f"**Pruned student {out['reason']}** — deploying `{out['deployable']}`.")
    return out


@task(name="evaluate-compression", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def evaluate_compression(compressed: dict, student_name: str, student: dict, teacher: dict, evaluation: dict,
                         cfg: FlywheelConfig) -> dict:
    out = lib.evaluate_compression(compressed, student_name, student, teacher, evaluation, cfg, paths())
    base = out["uncompressed"]
    rows = [{"system": r["system"], "document tokens": round(r["doc_tokens"], 1), "NDCG@10": r["ndcg@10"],
             "vs uncompressed": round(r["ndcg@10"] / base["ndcg@10"], 4)} for r in out["length_curve"]]
    c = out["combined"]
    artifact("compression", "## Input length versus NDCG@10 (golden test split)\n\n" + markdown_table(rows)
             + (f"\n\nCombined: **{c['system']}** {c['items_per_s']} items/s vs the teacher scored naively "
                f"{c['teacher_naive_items_per_s']} items/s = **{c['speedup']}x** at {c['ndcg_ratio_to_teacher']:.1%} "
                "of the teacher's NDCG@10" if c.get("system") else ""))
    return out
