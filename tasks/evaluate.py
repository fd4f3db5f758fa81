"""Task: evaluate every system on the golden test split; artifact with the table."""

from prefect import task

from flywheel import evaluate as lib
from flywheel.config import FlywheelConfig
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
