"""Tasks: deploy the champion to the local scoring service and smoke-test it; write the run report."""

from prefect import task

from flywheel.config import FlywheelConfig
from flywheel.data.golden import load_golden
from flywheel.evaluation import report as report_lib
from flywheel.serving import deploy as lib
from tasks._common import artifact, paths, resolve_secrets


@task(name="deploy-scoring-service", retries=1, retry_delay_seconds=2)
def deploy(promotion: dict, rungs: dict, registered: dict, cfg: FlywheelConfig, keep_running: bool = False,
           deployable: str = "student_pruned") -> dict:
    resolve_secrets("FLYWHEEL_SCORER_TOKEN")     # the smoke test's service asks for it when the team set one
    test = load_golden(cfg.resolve(cfg.golden)).pairs("test")
    sample = test[test.query_id.isin(sorted(test.query_id.unique())[:8])]
    return lib.deploy_champion(cfg.registered_model, promotion["champion"], registered[deployable]["version"],
                               rungs[deployable]["path"], sample, cfg.serve_port, paths(), keep_running,
                               cfg.serving)


@task(name="write-report", retries=1, retry_delay_seconds=1)
def write_report(summary: dict) -> str:
    path = report_lib.write_report(summary, paths())
    artifact("flywheel-report", report_lib.markdown(summary))
    return str(path)
