"""The production stack of docker-compose.yml, natively: PostgreSQL, `prefect server` and `mlflow server` on it
(artifacts proxied by the server), process workers, the scoring service — and the deployments of prefect.yaml run
through them, never in-process.

The tests run in order on one stack (module fixture): labelling through the worker, the retraining its event
triggers, a worker SIGKILLed in the middle of that retraining and the rerun on a new worker, what lives in which
Postgres, the scorer pointed at the MLflow server by URI only, Postgres restarted in the middle of a paid
labelling run, and the judge's API key searched for in every output the stack produced.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from tests.openai_stub import free_port
from tests.stack.services import BIN, ROOT, Postgres, Service, clean_env, wait_http

pytestmark = [pytest.mark.stack, pytest.mark.slow]

D1, D2 = "2026-03-01", "2026-03-02"
KEY = "sk-stackFAKE" + secrets.token_hex(16)       # the judge's "API key": must appear in no output
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


class Prefect:
    """The Prefect server's REST API (control only; what is stored is read from Postgres directly)."""

    def __init__(self, url: str):
        self.url, self.http = url, httpx.Client(base_url=url, timeout=30)

    def call(self, method: str, path: str, body: dict | None = None):
        for attempt in range(30):            # the server may be briefly unavailable (Postgres restarting)
            try:
                r = self.http.request(method, path, json=body)
                if r.status_code < 500:
                    r.raise_for_status()
                    return r.json() if r.content else None
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise RuntimeError(f"{method} {path}: the Prefect server kept failing")

    def deployment(self, flow: str, name: str) -> str:
        return self.call("GET", f"/deployments/name/{flow}/{name}")["id"]

    def run(self, flow: str, name: str, **parameters) -> str:
        return self.call("POST", f"/deployments/{self.deployment(flow, name)}/create_flow_run",
                         {"parameters": parameters})["id"]

    def state(self, run_id: str) -> str:
        return self.call("GET", f"/flow_runs/{run_id}")["state"]["type"]

    def wait(self, run_id: str, timeout: float, logs: Path) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (s := self.state(run_id)) in TERMINAL:
                return s
            time.sleep(1)
        raise TimeoutError(f"flow run {run_id} not finished after {timeout:.0f} s (state {self.state(run_id)});"
                           f" worker logs in {logs}")

    def task_runs(self, run_id: str) -> list[tuple[str, str]]:
        """(task name without its run suffix, state name) of a flow run's task runs, e.g. ("train-teacher", "Cached")."""
        rows = self.call("POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}, "limit": 200})
        return [(r["name"].rsplit("-", 1)[0], r["state"]["name"]) for r in rows if r.get("state")]

    def count(self, run_id: str, state: str) -> Counter:
        return Counter(name for name, st in self.task_runs(run_id) if st == state)

    def runs_of(self, flow: str, name: str) -> list[dict]:
        return self.call("POST", "/flow_runs/filter", {"deployments": {"id": {"any_": [self.deployment(flow, name)]}},
                                                       "sort": "EXPECTED_START_TIME_ASC"})


def kill_flow_run(api: Prefect, run_id: str) -> int | None:
    """SIGKILL a flow run's process group: Prefect's process worker starts each run in a session of its own, so
    killing the worker's group leaves it running. ``infrastructure_pid`` is "host:pid" (or the pid)."""
    raw = (api.call("GET", f"/flow_runs/{run_id}") or {}).get("infrastructure_pid")
    if not raw:
        return None
    pid = int(str(raw).rsplit(":", 1)[-1])
    for kill in (os.killpg, os.kill):          # its group, and the process itself should it lead none
        try:
            kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pid


def alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie waiting for a parent to reap it (its parent was killed too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _cli(args: list[str], env: dict, timeout: float = 300) -> str:
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, args))} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    base = tmp_path_factory.mktemp("stack")
    logs = base / "logs"
    logs.mkdir()
    shared = base / "shared"        # the compose file's flywheel-data volume, mounted by every worker
    s = SimpleNamespace(base=base, logs=logs, shared=shared, services=[], pg=None)
    try:
        s.pg = pg = Postgres()          # assigned before start: a failed start is still cleaned up
        pg.start()
        _cli(["bash", "docker/postgres/init-databases.sh"], os.environ | pg.env | {"PREFECT_DB": "prefect",
                                                                                   "MLFLOW_DB": "mlflow"})
        pport, mport, sport = free_port(), free_port(), free_port()
        s.prefect_url, s.mlflow_url = f"http://127.0.0.1:{pport}/api", f"http://127.0.0.1:{mport}"
        s.stub_url = f"http://127.0.0.1:{sport}/v1"
        s.artifacts = base / "mlflow-artifacts"        # the mlflow service's volume: only the server writes here
        server_env = clean_env(PREFECT_HOME=str(base / "prefect-server"),
                               PREFECT_API_DATABASE_CONNECTION_URL=pg.url("prefect", "asyncpg"),
                               PREFECT_UI_ENABLED="false",
                               # the schedules are declared and checked, but no scheduled run may start mid-test
                               PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED="false",
                               # a killed run's deployment concurrency slot comes back after 30 s, not 5 minutes
                               PREFECT_SERVER_CONCURRENCY_INITIAL_DEPLOYMENT_LEASE_DURATION="30")
        s.services.append(Service("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                                                     "--port", str(pport)], server_env, logs))
        s.services.append(Service("mlflow", [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port",
                                             str(mport), "--backend-store-uri", pg.url("mlflow", "psycopg"),
                                             "--serve-artifacts", "--artifacts-destination", str(s.artifacts),
                                             "--workers", "1"], clean_env(), logs))
        s.services.append(Service("openai-stub", [sys.executable, "tests/openai_stub.py", "--port", str(sport),
                                                  "--latency", "0.05"], clean_env(), logs))
        wait_http(f"{s.prefect_url}/health", s.services[0].proc, 240, s.services[0].log)
        wait_http(f"{s.mlflow_url}/health", s.services[1].proc, 240, s.services[1].log)
        wait_http(s.stub_url.removesuffix("/v1") + "/stats", s.services[2].proc, 60, s.services[2].log)
        s.api = Prefect(s.prefect_url)
        s.cli_env = clean_env(PREFECT_API_URL=s.prefect_url, PREFECT_HOME=str(base / "cli"))
        s.worker_env = clean_env(PREFECT_API_URL=s.prefect_url, MLFLOW_TRACKING_URI=s.mlflow_url,
                                 PREFECT_HOME=str(base / "worker-prefect"), FLYWHEEL_HOME=str(shared / "home"),
                                 FLYWHEEL_LAKE=str(shared / "lake"), PREFECT_LOCAL_STORAGE_PATH=str(shared / "results"),
                                 PREFECT_RESULTS_PERSIST_BY_DEFAULT="true", FLYWHEEL_REPO=str(ROOT),
                                 OPENAI_API_KEY=KEY, PREFECT_FLOWS_HEARTBEAT_FREQUENCY="30")
        _cli([str(BIN / "prefect"), "work-pool", "create", "flywheel", "--type", "process", "--overwrite"], s.cli_env)
        _cli([str(BIN / "prefect"), "--no-prompt", "deploy", "--all"], s.cli_env)
        _cli([str(BIN / "prefect"), "automation", "create", "--from-file", "docker/prefect/automations.yaml"],
             s.cli_env)
        s.worker = Service("worker-1", [str(BIN / "prefect"), "worker", "start", "--pool", "flywheel"],
                           s.worker_env, logs)
        s.services.append(s.worker)
        s.config = base / "stack.yaml"          # the test's small configuration, by path as a deployment takes it
        s.config.write_text(f"extends: {ROOT / 'configs' / 'stack_test.yaml'}\nserve_port: {free_port()}\n")
        yield s
    finally:
        if hasattr(s, "api"):               # flow runs still going have their own process groups: stop them first
            try:
                for r in s.api.call("POST", "/flow_runs/filter", {"flow_runs": {"state": {"type": {
                        "any_": ["RUNNING", "PENDING"]}}}}) or []:
                    kill_flow_run(s.api, r["id"])
            except RuntimeError:
                pass
        for svc in reversed(s.services):
            svc.stop()
        if s.pg is not None:
            s.pg.stop()


def _labels(s, date: str):
    from flywheel.data.lake import Lake

    return Lake(s.shared / "lake").read("judge_labels", date)


def test_labelling_runs_on_the_worker_and_its_event_triggers_retraining(stack):
    s = stack
    run = s.api.run("daily-labelling", "daily-labelling", config=str(s.config), date=D1)
    assert s.api.wait(run, 600, s.logs) == "COMPLETED", (s.logs / "worker-1.log").read_text()[-5000:]
    flow_run = s.api.call("GET", f"/flow_runs/{run}")
    assert flow_run["work_queue_name"] == "default" and flow_run["infrastructure_pid"]   # a worker's subprocess
    assert run in (s.logs / "worker-1.log").read_text()
    labels = _labels(s, D1)
    assert len(labels) > 10 and not labels.duplicated(["query_id", "doc_hash", "judge_version"]).any()
    s.d1_labels = len(labels)
    deadline = time.monotonic() + 120         # the trigger (prefect.yaml) answers the labelling run's event
    while not (triggered := [r for r in s.api.runs_of("retraining", "retraining") if not r["auto_scheduled"]]) \
            and time.monotonic() < deadline:
        time.sleep(1)
    assert len(triggered) == 1, "the labelling run's flywheel.retraining.due event started no retraining run"
    assert triggered[0]["parameters"]["config"] == str(s.config)       # templated from the event's payload
    s.triggered, s.triggered_params = triggered[0]["id"], triggered[0]["parameters"]


def test_worker_killed_mid_retraining_then_a_new_worker_resumes_from_the_shared_cache(stack):
    s = stack
    deadline = time.monotonic() + 600
    while not s.api.count(s.triggered, "Completed")["train-teacher"]:
        assert time.monotonic() < deadline, "the triggered retraining run never finished its teacher"
        assert s.api.state(s.triggered) not in TERMINAL, s.api.task_runs(s.triggered)
        time.sleep(0.3)
    s.worker.kill()                                   # the worker's machine is gone, its flow run with it
    pid = kill_flow_run(s.api, s.triggered)
    assert pid is not None, "the triggered run has no infrastructure pid: it did not run on the worker"
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive(pid), f"the killed run's process {pid} is still running"
    done_before = s.api.count(s.triggered, "Completed")
    assert s.pg.query("mlflow", "SELECT count(*) FROM model_versions")[0][0] == 0, \
        "the kill came after registration: the test must kill mid-run"

    env2 = {k: v for k, v in s.worker_env.items() if k != "OPENAI_API_KEY"}   # worker 2: the key from a block
    s.worker = Service("worker-2", [str(BIN / "prefect"), "worker", "start", "--pool", "flywheel"], env2, s.logs)
    s.services.append(s.worker)
    rerun = s.api.run("retraining", "retraining", **s.triggered_params)      # the same run again
    # the killed run still holds the deployment's one concurrency slot until its lease expires (30 s here)
    assert s.api.wait(rerun, 900, s.logs) == "COMPLETED", (s.logs / "worker-2.log").read_text()[-5000:]
    cached = s.api.count(rerun, "Cached")
    assert cached["train-teacher"] == 1, s.api.task_runs(rerun)
    for name in ("plan-ladder", "labels-snapshot"):         # the two uncached tasks before training: they read now
        done_before.pop(name, None)
    assert all(cached[t] >= n for t, n in done_before.items()), (done_before, s.api.task_runs(rerun))
    # the killed run's heartbeats stopped: the zombie automation (docker/prefect/automations.yaml) marks it Crashed
    deadline = time.monotonic() + 180
    while (state := s.api.state(s.triggered)) != "CRASHED" and time.monotonic() < deadline:
        time.sleep(2)
    assert state == "CRASHED", f"the killed run is still {state}"
    counts = dict(s.pg.query("mlflow", "SELECT name, count(*) FROM model_versions GROUP BY name"))
    assert counts and set(counts.values()) == {1}, f"registered twice: {counts}"
    assert len(_labels(s, D1)) == s.d1_labels                           # nothing labelled again
    s.rerun = rerun


def test_runs_tasks_and_artifacts_live_in_prefects_postgres_models_in_mlflows(stack):
    s = stack
    runs = dict(s.pg.query("prefect", "SELECT fr.id::text, fr.state_type::text FROM flow_run fr"))
    assert runs[s.rerun] == "COMPLETED"
    tasks = s.pg.query("prefect", "SELECT tr.name, tr.state_name FROM task_run tr WHERE tr.flow_run_id = %s",
                       (s.rerun,))
    assert {n.rsplit("-", 1)[0] for n, st in tasks if st == "Cached"} >= {"train-teacher", "calibrate-judge"}
    keys = {k for (k,) in s.pg.query("prefect", "SELECT key FROM artifact WHERE key IS NOT NULL")}
    schedules = dict(s.pg.query("prefect", "SELECT d.name, ds.schedule->>'cron' FROM deployment_schedule ds "
                                           "JOIN deployment d ON d.id = ds.deployment_id"))
    assert schedules == {"daily-labelling": "0 2 * * *", "retraining": "0 4 * * 0"}, schedules
    assert {"labelling-run", "retraining-run", "judge-calibration", "promotion", "retraining-due"} <= keys

    champion = s.pg.query("mlflow", "SELECT version FROM registered_model_aliases "
                                    "WHERE name = 'flywheel-ranker' AND alias = 'champion'")
    assert champion, "no champion alias in MLflow's Postgres"
    s.champion = str(champion[0][0])
    tags = {k for (k,) in s.pg.query("mlflow", "SELECT key FROM tags")}
    assert {"lineage.policy_version", "lineage.judge_version", "lineage.labels", "lineage.code_version"} <= tags
    locations = [loc for (loc,) in s.pg.query("mlflow", "SELECT artifact_location FROM experiments "
                                                        "WHERE name = 'flywheel'")]
    assert locations and locations[0].startswith("mlflow-artifacts:"), locations   # proxied by the server
    uploaded = list(s.artifacts.rglob("model.safetensors"))
    assert len(uploaded) >= 4, "the rungs' weights were not uploaded through the MLflow server"
    assert not list(s.shared.rglob("MLmodel")), "a worker wrote MLflow artifacts to its own disk"


def test_scorer_by_uri_only_serves_the_champion_and_reproduces_offline_scores(stack):
    s = stack
    port = free_port()
    env = clean_env(MLFLOW_TRACKING_URI=s.mlflow_url, FLYWHEEL_HOME=str(s.base / "scorer-home"))
    scorer = Service("scorer", [str(BIN / "flywheel"), "serve", "--port", str(port), "--model", "flywheel-ranker",
                                "--alias", "champion", "--device", "cpu"], env, s.logs)
    s.services.append(scorer)
    wait_http(f"http://127.0.0.1:{port}/ready", scorer.proc, 300, scorer.log)
    body = {"query": "city budget spending", "documents": [
        {"title": "Budget 2024", "text": "Annual city budget by department and fund."},
        {"title": "Street trees", "text": "Inventory of street trees and their species."},
        {"title": "Payroll", "text": "Employee salaries and overtime paid by the city."}]}
    served = httpx.post(f"http://127.0.0.1:{port}/score", json=body, timeout=60).json()
    assert served["version"] == s.champion
    offline = subprocess.run([sys.executable, "-c", textwrap.dedent("""
        import json, sys
        import mlflow.pyfunc, pandas as pd
        body = json.loads(sys.argv[1])
        df = pd.DataFrame([{"query": body["query"], **d} for d in body["documents"]])
        m = mlflow.pyfunc.load_model("models:/flywheel-ranker@champion")
        print(json.dumps([float(x) for x in m.predict(df)]))
        """), json.dumps(body)], cwd=s.base, env=env, capture_output=True, text=True, timeout=300)
    assert offline.returncode == 0, offline.stderr[-3000:]
    expected = json.loads(offline.stdout.strip().splitlines()[-1])
    assert max(abs(a - b) for a, b in zip(served["scores"], expected)) <= 1e-4, (served["scores"], expected)
    scorer.stop()


def test_postgres_restart_mid_labelling_loses_and_duplicates_no_label(stack):
    s = stack
    # the judge's key for worker 2 lives in a Prefect Secret block (encrypted in Postgres), not its environment
    _cli([sys.executable, "-c", "import os; from prefect.blocks.system import Secret; "
                                "Secret(value=os.environ['KEY']).save('openai-api-key', overwrite=True)"],
         s.cli_env | {"KEY": KEY})
    paid = s.base / "stack_openai.yaml"
    paid.write_text(f"extends: {s.config}\nretrain_after_labels: 1000000\n"
                    f"judge: {{backend: openai, openai_base_url: '{s.stub_url}', openai_model: stub, "
                    f"max_in_flight: 2, min_qwk: 0.0, probe_pairs: 0}}\n")
    run = s.api.run("daily-labelling", "daily-labelling", config=str(paid), date=D2)
    stats_url = s.stub_url.removesuffix("/v1") + "/stats"
    deadline = time.monotonic() + 600
    while len(_labels(s, D2)) == 0:                   # labels are being committed: restart Postgres now
        assert time.monotonic() < deadline and s.api.state(run) not in TERMINAL, s.api.task_runs(run)
        time.sleep(0.2)
    calls_before, committed_before = httpx.get(stats_url, timeout=10).json()["calls"], len(_labels(s, D2))
    s.pg.pg_ctl("restart")
    committed_at_restart = len(_labels(s, D2))
    first = s.api.wait(run, 900, s.logs)
    if first != "COMPLETED":                         # failed cleanly: the rerun finishes the day
        assert s.api.wait(s.api.run("daily-labelling", "daily-labelling", config=str(paid), date=D2), 900,
                          s.logs) == "COMPLETED"
    labels = _labels(s, D2)
    from flywheel.data.lake import Lake

    cands = Lake(s.shared / "lake").read("candidates", D2).drop_duplicates(["query_id", "doc_hash"])
    assert committed_at_restart < len(labels), "Postgres restarted after the labelling had finished"
    assert (labels.judge_backend == "openai").all()                   # the key from the block was used
    assert not labels.duplicated(["query_id", "doc_hash", "judge_version"]).any()
    assert len(labels) == len(cands)                                   # none lost
    # paid once: one request per label still to come, bar those in flight (2) when the count was taken and at the
    # restart (answered but not yet committed: asked again)
    calls_after = httpx.get(stats_url, timeout=10).json()["calls"] - calls_before
    assert calls_after <= len(labels) - committed_before + 2 * 2, (calls_after, len(labels), committed_before)


def test_workbench_previews_a_policy_edit_through_the_policy_preview_deployment(stack):
    """The compose file's workbench service: a product manager's draft is previewed by the policy-preview
    deployment on a worker (not in the workbench), and the result comes back to the page."""
    import hashlib

    s = stack
    faster = s.base / "stack_preview.yaml"          # the same judge, more requests in flight
    faster.write_text(f"extends: {s.base / 'stack_openai.yaml'}\njudge: {{max_in_flight: 8}}\n")
    token, port = secrets.token_hex(8), free_port()
    access = s.base / "workbench-access.yaml"
    access.write_text(json.dumps({"identity": "token", "users": [
        {"name": "pia", "role": "publisher", "token_sha256": hashlib.sha256(token.encode()).hexdigest()}]}))
    env = clean_env(PREFECT_API_URL=s.prefect_url, MLFLOW_TRACKING_URI=s.mlflow_url,
                    PREFECT_HOME=str(s.base / "workbench-prefect"), FLYWHEEL_HOME=str(s.shared / "home"),
                    FLYWHEEL_LAKE=str(s.shared / "lake"))      # no judge key: the workbench never calls the judge
    wb = Service("workbench", [str(BIN / "flywheel"), "workbench", "--config", str(faster), "--port", str(port),
                               "--access", str(access), "--preview-deployment", "policy-preview/policy-preview"],
                 env, s.logs)
    s.services.append(wb)
    url, h = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {token}"}
    wait_http(f"{url}/health", wb.proc, 120, wb.log)
    draft = httpx.post(f"{url}/api/drafts", json={}, headers=h, timeout=30).json()
    assert "document_fields: [title, text]" in draft["text"]
    titles_only = draft["text"].replace("document_fields: [title, text]", "document_fields: [title]")
    titles_only = "\n".join(l for l in titles_only.splitlines() if not l.startswith("    text: "))  # titles only
    assert httpx.put(f"{url}/api/drafts/{draft['id']}", json={"text": titles_only}, headers=h,
                     timeout=30).json()["valid"]
    r = httpx.post(f"{url}/api/drafts/{draft['id']}/preview", json={"confirm_cost": True}, headers=h, timeout=60)
    assert r.status_code == 200 and r.json()["runner"] == "prefect", r.text
    key, t0 = r.json()["key"], time.time()
    while (st := httpx.get(f"{url}/api/previews/{key}", headers=h, timeout=30).json())["state"] not in ("done", "failed"):
        assert time.time() - t0 < 600, st
        time.sleep(2)
    assert st["state"] == "done", (st, (s.logs / "workbench.log").read_text()[-3000:])
    run, result = st["flow_run_id"], st["result"]
    assert s.api.call("GET", f"/flow_runs/{run}")["deployment_id"]          # run by the deployment, on a worker
    changed = result["changed_pairs"]
    # the stub judge grades by query words found in what it is shown: titles only, fewer hits, never a higher grade
    assert changed and all(c["new"] <= c["old"] for c in changed)
    (data,) = s.pg.query("prefect", "SELECT data #>> '{}' FROM artifact WHERE key = 'policy-preview' "
                                    "AND flow_run_id = %s", (run,))[0]
    assert "document_fields" in data                                        # what changed
    for k in ("old/calibration", "old/test", "new/calibration", "new/test"):  # agreement before and after
        assert f"| {k} |" in data, k
    assert int(re.search(r"## (\d+) golden pair\(s\) change grade", data).group(1)) == len(changed)


def test_the_api_key_appears_in_no_output_of_the_stack(stack):
    s = stack
    started = (s.base / "stack.yaml").stat().st_mtime
    written_in_repo = [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts
                       and p.is_file() and p.stat().st_mtime >= started]     # the flow runs' working directory
    files = [p for d in (s.base, s.pg.dir) for p in d.rglob("*") if p.is_file()] + written_in_repo
    hits = [str(p) for p in files if KEY.encode() in p.read_bytes()]
    for db in ("prefect", "mlflow"):
        if KEY in s.pg.dump(db):
            hits.append(f"postgres database {db}")
    assert not hits, f"the API key leaked into: {hits}"
    planted = s.base / "logs" / "planted.txt"          # the scan itself finds a key where there is one
    planted.write_text(f"Authorization: Bearer {KEY}")
    assert [p for p in s.base.rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()] == [planted]
    planted.unlink()
