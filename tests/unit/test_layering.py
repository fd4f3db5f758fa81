"""flywheel/ and models/ never import prefect: logic stays testable and runnable without the orchestrator."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_library_and_models_do_not_import_prefect():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for pkg in ("flywheel", "models") for p in (ROOT / pkg).glob("*.py"))
    code = ("import importlib, sys\n"
            f"for m in {modules!r}:\n    importlib.import_module(m)\n"
            "bad = sorted(k for k in sys.modules if k == 'prefect' or k.startswith('prefect.'))\n"
            "print(len(bad)); assert not bad, bad[:5]")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(modules) > 15


def test_tasks_only_wrap_library_functions():
    # A task file must stay a thin shell: no model or dataframe logic of its own.
    for f in (ROOT / "tasks").glob("*.py"):
        text = f.read_text()
        assert "import torch" not in text and "train_ranker" not in text, f
        assert len(text.splitlines()) < 120, f"{f.name} grew past a thin wrapper"
