"""Where the flywheel keeps its state, and the process environment every entry point sets first.

All state lives under one home directory, ``FLYWHEEL_HOME`` (default ``.flywheel/`` in the repository):
Prefect's home and result storage, MLflow's SQLite store and artifacts, the Parquet lake and model caches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def lake(self) -> Path:
        return self.home / "lake"

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
        return f"sqlite:///{self.mlflow_db}"


def get_paths(home: str | os.PathLike | None = None) -> Paths:
    """Resolve the flywheel home: explicit argument, then ``$FLYWHEEL_HOME``, then ``<repo>/.flywheel``."""
    raw = home or os.environ.get("FLYWHEEL_HOME") or (REPO_ROOT / ".flywheel")
    return Paths(Path(raw).resolve())


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
    }
    for key, value in env.items():
        if force and key in {"FLYWHEEL_HOME", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH",
                             "MLFLOW_TRACKING_URI", "HF_HOME", "MPLCONFIGDIR", "IR_DATASETS_HOME"}:
            os.environ[key] = value
        else:
            os.environ.setdefault(key, value)
    return paths
