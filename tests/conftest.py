"""Every test session gets its own FLYWHEEL_HOME, set before any project module reads it."""

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
_HOME = tempfile.mkdtemp(prefix="flywheel-test-")
os.environ["FLYWHEEL_HOME"] = _HOME
# one cache of content-keyed results (document embeddings) for the whole session, whatever home a test uses
os.environ["FLYWHEEL_CACHE"] = os.path.join(_HOME, "cache")
# A run leaves about 3 GB of checkpoints and MLflow artifacts behind: gone at exit, unless asked to keep them to debug.
if not os.environ.get("FLYWHEEL_KEEP_TEST_HOME"):
    atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
for key in ("PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "MLFLOW_TRACKING_URI", "HF_HOME", "MPLCONFIGDIR", "IR_DATASETS_HOME"):
    os.environ.pop(key, None)

from flywheel.settings import configure_environment  # noqa: E402

configure_environment(_HOME)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def home() -> Path:
    return Path(_HOME)


@pytest.fixture(scope="session")
def golden():
    from flywheel.data.golden import load_golden

    return load_golden()


def pytest_collection_modifyitems(items):
    # Mark by folder: tests/unit -> unit, tests/data -> data, ...
    for item in items:
        for marker in ("unit", "data", "model", "flow", "workbench"):
            if f"{os.sep}{marker}{os.sep}" in str(item.fspath):
                item.add_marker(getattr(pytest.mark, marker))

