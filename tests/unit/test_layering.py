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


def test_nothing_is_written_to_the_home_directory(tmp_path):
    """Every library that likes ~ (prefect, mlflow, HF, matplotlib, ir_datasets via ranx) is pointed at the home."""
    fake_home = tmp_path / "user"
    fake_home.mkdir()
    code = ("from flywheel.settings import configure_environment; configure_environment();"
            "import ranx, mlflow, matplotlib.pyplot, transformers, flywheel.evaluation as e, pandas as pd;"
            "e.ndcg_at_10(pd.DataFrame({'query_id':['q','q'],'doc_id':['a','b'],'aggregated_grade':[1,0]}), [1,0])")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PREFECT", "MLFLOW", "HF_", "IR_", "MPL"))}
    env.update(HOME=str(fake_home), FLYWHEEL_HOME=str(tmp_path / "fw"))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(fake_home.iterdir()), list(fake_home.iterdir())
