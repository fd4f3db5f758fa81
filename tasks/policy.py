"""Task: ingest the grading policy and seed the lake with the golden set."""

from prefect import task

from flywheel import context, ingest
from tasks._common import artifact, content_key, paths


@task(name="ingest-policy", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def ingest_policy(policy_path: str, policy_file_hash: str) -> dict:
    rec = ingest.ingest_policy(policy_path, paths())
    artifact("policy", f"**Policy** `{rec['name']}` version `{rec['version']}` — {rec['grades']} grades, "
                       f"dimensions {', '.join(rec['dimensions'])}")
    return rec


@task(name="seed-golden", retries=2, retry_delay_seconds=1, cache_key_fn=content_key, persist_result=True)
def seed_golden(golden_dir: str, golden_files_hash: str) -> dict:
    out = ingest.seed_golden(golden_dir, context.lake(paths()))
    lk = context.lake(paths())
    out.update(queries_fp=lk.fingerprint("queries"), documents_fp=lk.fingerprint("documents"))
    return out
