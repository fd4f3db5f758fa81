"""The services of docker-compose.yml as processes on this machine, for the stack test: a throwaway PostgreSQL
cluster (initdb/pg_ctl on a free port), `prefect server` and `mlflow server` on it, process workers.

Every process is started in its own session and stopped by process group id; every directory is a fresh temp
directory. Nothing here is a mock: the same binaries the compose file runs, with the same settings.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tests.openai_stub import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PASSWORD = "stack-test-pw"          # the throwaway cluster's password (it listens on loopback only)


def pg_bindir() -> Path | None:
    """Debian's PostgreSQL server binaries (initdb and pg_ctl are not on PATH there), newest version first."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True):
        if (Path(d) / "initdb").exists():
            return Path(d)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode} before {url} answered:\n{tail}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def stop_group(proc: subprocess.Popen, sig=signal.SIGTERM, grace: float = 20.0) -> None:
    """Stop a process started with ``start_new_session`` and everything it started (its process group)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)       # whatever the group left behind (flow-run children included)
    except (ProcessLookupError, PermissionError):
        pass
    if proc.poll() is None:
        proc.wait(10)


class Postgres:
    """A PostgreSQL cluster in a temp directory, as the `postgres` user when running as root (initdb refuses root)."""

    def __init__(self, user: str = "flywheel"):
        self.bindir = pg_bindir()
        if self.bindir is None:
            raise RuntimeError("PostgreSQL server binaries not found: `make test` installs Debian's postgresql "
                               "package when missing (apt-get install postgresql)")
        self.user, self.port = user, free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="flywheel-pg-"))   # not under pytest's 0700 tmp: postgres reads it
        self.data, self.sock, self.log = self.dir / "data", self.dir / "sock", self.dir / "postgres.log"
        self.sock.mkdir()
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
            shutil.chown(self.sock, "postgres", "postgres")

    def _run(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, cwd=self.dir)

    def start(self) -> "Postgres":
        pw = self.dir / "pw"
        pw.write_text(PASSWORD)
        if self.as_postgres:
            shutil.chown(pw, "postgres", "postgres")
        self._run("initdb", "-D", str(self.data), "-U", self.user, "--pwfile", str(pw), "--auth=scram-sha-256",
                  "-E", "UTF8", "--locale=C")
        self.pg_ctl("start")
        return self

    def pg_ctl(self, action: str, mode: str = "fast") -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1"
        args = ["pg_ctl", "-D", str(self.data), "-w", "-t", "60"]
        if action in ("start", "restart"):
            args += ["-o", opts, "-l", str(self.log)]
        if action in ("stop", "restart"):
            args += ["-m", mode]
        self._run(*args, action)

    @property
    def env(self) -> dict:
        """libpq's variables for psql and the init script, as the postgres image sets them."""
        return {"PGHOST": "127.0.0.1", "PGPORT": str(self.port), "PGUSER": self.user, "PGPASSWORD": PASSWORD,
                "POSTGRES_USER": self.user, "POSTGRES_PASSWORD": PASSWORD, "POSTGRES_DB": "postgres"}

    def url(self, db: str, driver: str) -> str:
        return f"postgresql+{driver}://{self.user}:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def query(self, db: str, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, password=PASSWORD, dbname=db,
                             connect_timeout=10) as conn:
            return conn.execute(sql, params).fetchall()

    def dump(self, db: str) -> str:
        """The whole database as SQL text (for the secret scan)."""
        pg_dump = self.bindir / "pg_dump"
        out = subprocess.run([str(pg_dump), "--no-owner", "-d", db], capture_output=True, text=True, check=True,
                             env=os.environ | self.env, timeout=120)
        return out.stdout

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        finally:
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():                # pg_ctl failed: stop the postmaster by its process id
                try:
                    os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            shutil.rmtree(self.dir, ignore_errors=True)


class Service:
    """One long-running process of the stack, its output in a log file, stopped by process group."""

    def __init__(self, name: str, cmd: list[str], env: dict, logdir: Path, cwd: Path = ROOT):
        self.name, self.log = name, logdir / f"{name}.log"
        self._out = open(self.log, "ab")
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=self._out, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def kill(self) -> None:
        """SIGKILL to the whole group: the machine it ran on is gone, flow-run children included."""
        stop_group(self.proc, signal.SIGKILL, grace=0)
        self._out.close()

    def stop(self) -> None:
        stop_group(self.proc)
        self._out.close()


def clean_env(**extra: str) -> dict:
    """The environment of a stack process: this session's flywheel/Prefect/MLflow settings removed, so each
    process sees only what the compose file would give it."""
    drop = ("FLYWHEEL_", "PREFECT_", "MLFLOW_", "OPENAI_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env
