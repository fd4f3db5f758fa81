"""Task: calibrate the judge on the golden set; log to MLflow and a Prefect artifact."""

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.judge import calibrate as lib
from flywheel.serving import registry
from tasks._common import artifact, content_key, markdown_table, paths, progress, resolve_secrets


@task(name="calibrate-judge", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def calibrate_judge(cfg: FlywheelConfig, policy_version: str, golden_hash: str, documents_fp: str) -> dict:
    if cfg.judge.backend == "openai":
        resolve_secrets("OPENAI_API_KEY")
    with progress("judge features (golden set)", None) as advance:
        summary = lib.calibrate(cfg, paths(), progress=advance)
    summary["mlflow_run_id"] = registry.log_calibration(summary, paths())
    rows = []
    for name, key in (("judge (cross-validated, calibration)", "calibration"), ("judge (held-out test)", "test"),
                      ("BM25 baseline (test)", "bm25_baseline_test")):
        m = summary.get(key)
        if m:
            rows.append({"who": name, "QWK": m["qwk"], "QWK 95% CI": f"{m['qwk_ci95'][0]:.3f}–{m['qwk_ci95'][1]:.3f}",
                         "Spearman": m["spearman"], "exact": m["exact"], "within one": m["within_one"]})
    for split, h in summary["human_ceiling"].items():
        rows.append({"who": f"human vs other raters ({split})", "QWK": h["loo_qwk"], "QWK 95% CI": "",
                     "Spearman": float("nan"), "exact": h["loo_exact"], "within one": h["loo_within_one"]})
    gate = summary["gate"]
    artifact("judge-calibration", f"## Judge `{summary['judge_version']}` calibration\n\n{markdown_table(rows)}\n\n"
             f"**Gate ({'PASSED' if gate['passed'] else 'BLOCKED'})**: {gate['reason']}")
    return summary
