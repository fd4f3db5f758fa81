"""Task: ingest the grading policy and seed the lake with the golden set."""

from prefect import task

from flywheel.data.golden import seed_golden as seed
from flywheel.data.lake import open_lake
from flywheel.judge.policy import ingest_policy as ingest
from flywheel.config import FlywheelConfig
from tasks._common import artifact, content_key, markdown_table, paths, resolve_secrets


@task(name="ingest-policy", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def ingest_policy(policy_path: str, policy_file_hash: str) -> dict:
    rec = ingest(policy_path, paths())
    artifact("policy", f"**Policy** `{rec['name']}` version `{rec['version']}` — {rec['grades']} grades, "
                       f"dimensions {', '.join(rec['dimensions'])}")
    return rec


@task(name="seed-golden", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def seed_golden(golden_dir: str, golden_files_hash: str) -> dict:
    lk = open_lake(paths())
    out = seed(golden_dir, lk)
    out.update(queries_fp=lk.fingerprint("queries"), documents_fp=lk.fingerprint("documents"))
    return out


@task(name="preview-policy", retries=1, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def preview_policy(old_path: str, new_path: str, old_hash: str, new_hash: str, cfg: FlywheelConfig) -> dict:
    """The impact of a policy edit on the golden set, as artifacts: which golden grades change, agreement before
    and after, the gate under each (keyed by both files' content and the judge's config)."""
    from flywheel.judge.policy_diff import policy_impact

    if cfg.judge.backend == "openai":
        resolve_secrets("OPENAI_API_KEY")
    r = policy_impact(old_path, new_path, cfg, paths())
    rows = [{"agreement": k, "QWK": m["qwk"], "exact": m["exact"], "within one": m["within_one"], "n": m["n"]}
            for k, m in r["agreement"].items()]
    gate = {k: "passes" if g["passed"] else f"BLOCKS ({g.get('reason', '')})" for k, g in r["gate"].items()}
    artifact("policy-preview", "\n\n".join([
        "## What changed\n" + "\n".join(f"- {c}" for c in r["changes"]),
        f"Judge `{r['judge_versions']['old']}` → `{r['judge_versions']['new']}`; gate: old {gate['old']}, "
        f"new {gate['new']}.",
        "## Agreement with the golden set\n" + markdown_table(rows),
        f"## {len(r['changed_pairs'])} golden pair(s) change grade\n" + markdown_table(
            [{"split": c["split"], "query": c["query"], "document": c["title"][:60], "old": c["old"], "new": c["new"],
              "humans": c["human"]} for c in r["changed_pairs"][:100]])]), "impact preview of a policy edit")
    return r
