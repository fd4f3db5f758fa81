"""Task: ingest the grading policy and seed the lake with the golden set."""

from prefect import task

from flywheel.data.golden import seed_golden as seed
from flywheel.data.lake import open_lake
from flywheel.judge.policy import ingest_policy as ingest
from tasks._common import artifact, content_key, paths


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
