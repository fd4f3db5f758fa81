"""Where the flywheel keeps its state, and the process environment every entry point sets first.

Embedded (``make demo``, tests), all state lives under one home directory, ``FLYWHEEL_HOME`` (default
``.flywheel/`` in the repository): Prefect's home and result storage, MLflow's SQLite store and artifacts, the
Parquet lake and model caches. Against the shared stack (docker-compose.yml) the same code reads where each piece
lives from the environment, and only what is unset falls back to the home:

- ``MLFLOW_TRACKING_URI`` — the tracking server (``http://mlflow:5000``); artifacts then go through the server.
- ``PREFECT_API_URL`` — the Prefect server (read by Prefect itself; unset: a temporary local server).
- ``FLYWHEEL_LAKE`` — the Parquet lake (a volume every worker mounts).
- ``PREFECT_LOCAL_STORAGE_PATH`` or ``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK`` — task results, the resume cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    home: Path
    lake_dir: Path | None = None          # FLYWHEEL_LAKE; None: <home>/lake
    tracking_uri: str | None = None       # MLFLOW_TRACKING_URI; None: SQLite under the home

    @property
    def lake(self) -> Path:
        return self.lake_dir or self.home / "lake"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def results(self) -> Path:
        return self.home / "prefect" / "results"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def models(self) -> Path:
        return self.home / "models"

    @property
    def reports(self) -> Path:
        return self.home / "reports"

    @property
    def mlflow_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{self.mlflow_db}"

    @property
    def remote_tracking(self) -> bool:
        """A tracking server (http[s]://): it decides where artifacts go and the client uploads through it."""
        return self.mlflow_uri.startswith(("http://", "https://"))


def get_paths(home: str | os.PathLike | None = None) -> Paths:
    """Resolve the flywheel home: explicit argument, then ``$FLYWHEEL_HOME``, then ``<repo>/.flywheel``.

    An explicit ``home`` owns everything (tests, benches: nothing leaks in from the environment); otherwise the
    lake and the tracking URI come from ``FLYWHEEL_LAKE`` / ``MLFLOW_TRACKING_URI`` when they are set."""
    raw = home or os.environ.get("FLYWHEEL_HOME") or (REPO_ROOT / ".flywheel")
    if home is not None:
        return Paths(Path(raw).resolve())
    lake = os.environ.get("FLYWHEEL_LAKE")
    return Paths(Path(raw).resolve(), Path(lake).resolve() if lake else None, _user_tracking_uri())


_DERIVED = "FLYWHEEL_DERIVED_TRACKING_URI"    # the MLFLOW_TRACKING_URI this module derived from a home, not the user's


def _user_tracking_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` when the user set it; None when it is unset or is the one derived from a home (a
    child process started with another ``FLYWHEEL_HOME`` inherits its parent's derived URI and must not use it)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    return uri if uri and uri != os.environ.get(_DERIVED) else None


def configure_environment(home: str | os.PathLike | None = None) -> Paths:
    """Point every library at the flywheel home and switch off network and telemetry.

    Must run before prefect, mlflow or transformers are imported: they read these variables at import.
    Values already set by the user win (``setdefault``), except the home-derived paths when ``home`` is given.
    """
    paths = get_paths(home)
    for p in (paths.lake, paths.prefect_home, paths.results, paths.mlflow_db.parent,
              paths.mlflow_artifacts, paths.models, paths.reports):
        p.mkdir(parents=True, exist_ok=True)
    force = home is not None
    if force:
        os.environ.pop("FLYWHEEL_LAKE", None)     # an explicit home owns its lake
    env = {
        "FLYWHEEL_HOME": str(paths.home),
        "PREFECT_HOME": str(paths.prefect_home),
        "PREFECT_LOCAL_STORAGE_PATH": str(paths.results),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
        "PREFECT_LOGGING_LEVEL": "INFO",              # task states (Completed / Cached) stay visible
        "PREFECT_LOGGING_ROOT_LEVEL": "WARNING",      # ...but not every library's INFO/DEBUG chatter
        "MLFLOW_LOGGING_LEVEL": "WARNING",
        "TRANSFORMERS_VERBOSITY": "error",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "MLFLOW_TRACKING_URI": paths.mlflow_uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(paths.home / "hf"),
        "TOKENIZERS_PARALLELISM": "false",
        "MPLCONFIGDIR": str(paths.home / "matplotlib"),
        "GX_ANALYTICS_ENABLED": "false",
        "IR_DATASETS_HOME": str(paths.home / "ir_datasets"),   # ranx imports ir_datasets, which writes to ~
        "FLYWHEEL_CACHE": str(paths.home / "cache"),          # content-keyed caches (document embeddings)
    }
    if force or _user_tracking_uri() is None:
        os.environ["MLFLOW_TRACKING_URI"] = os.environ[_DERIVED] = paths.mlflow_uri
    for key, value in env.items():
        if force and key in {"FLYWHEEL_HOME", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH",
                             "MLFLOW_TRACKING_URI", "HF_HOME", "MPLCONFIGDIR", "IR_DATASETS_HOME"}:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    return paths
