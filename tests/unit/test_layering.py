"""The layering: flywheel/ and models/ never import prefect; inside flywheel/ a stage package imports only the
stages below it (or the shared blocks); no module of flywheel/ or models/ takes part in an import circle.

Every ``import`` statement counts, including the ones inside functions: a lazy import that goes back up is
still a dependency going the wrong way."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The pipeline, bottom to top. A stage package may import packages of a lower rank and the shared blocks.
STAGES = ["data", "retrieval", "judge", "labeling", "training", "evaluation", "serving", "workbench"]
SHARED = {"flywheel", "flywheel.settings", "flywheel.config", "flywheel.metrics"}   # import no stage
ENTRY_POINTS = {"flywheel.cli"}                                                       # may import anything


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every project import in a file: ``from a.b import c`` gives ``a.b.c`` when that is a
    module, else ``a.b``."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                out.append((node.lineno, sub if is_module(sub) else node.module))
    return [(n, m) for n, m in out if m.split(".")[0] in ("flywheel", "models")]


def is_module(name: str) -> bool:
    base = ROOT.joinpath(*name.split("."))
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def graph(packages=("flywheel", "models")) -> dict[str, list[tuple[int, str]]]:
    return {module_name(p): imports_of(p) for pkg in packages for p in sorted((ROOT / pkg).rglob("*.py"))}


def stage_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "flywheel" and len(parts) > 1 and parts[1] in STAGES else None


def layering_violations(g: dict) -> list[str]:
    bad = [f"{mod} imports {target} (line {line}): models/ stays below the library (torch and transformers only)"
           for mod, edges in g.items() if mod.split(".")[0] == "models"
           for line, target in edges if target.split(".")[0] == "flywheel"]
    for mod, edges in g.items():
        if mod in ENTRY_POINTS or not mod.startswith("flywheel"):
            continue
        src = stage_of(mod)
        for line, target in edges:
            if not target.startswith("flywheel.") or target in SHARED:
                continue
            dst = stage_of(target)
            if mod in SHARED:
                bad.append(f"{mod} (a shared block) imports {target} (line {line}): shared blocks import no stage")
            elif dst is None:
                bad.append(f"{mod} imports {target} (line {line}): not a stage package nor a shared block")
            elif src is not None and STAGES.index(dst) > STAGES.index(src):
                bad.append(f"{mod} (stage {src}) imports {target} (line {line}), stage {dst} above it: "
                           f"move what both need down to {src} or below")
    return bad


def circles(g: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each a list of module names."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for _, w in g.get(v, []):
            if w not in g:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def circle_message(g: dict, comp: list[str]) -> str:
    edges = [f"{m} imports {t} (line {n})" for m in comp for n, t in g[m] if t in comp]
    return "import circle: " + "; ".join(edges)


def top_level_names(module: str) -> set[str]:
    base = ROOT.joinpath(*module.split("."))
    path = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names |= {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def test_every_project_import_names_something_that_exists():
    """A lazy import inside a function runs only when that function does: a moved module or function must not
    leave one pointing at its old place."""
    missing = []
    for pkg in ("flywheel", "models", "tasks", "flows", "bench", "tests"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    missing += [f"{path.relative_to(ROOT)}:{node.lineno} import {a.name}" for a in node.names
                                if a.name.split(".")[0] in ("flywheel", "models") and not is_module(a.name)]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                        and node.module.split(".")[0] in ("flywheel", "models"):
                    if not is_module(node.module):
                        missing.append(f"{path.relative_to(ROOT)}:{node.lineno} from {node.module}")
                        continue
                    names = top_level_names(node.module)
                    missing += [f"{path.relative_to(ROOT)}:{node.lineno} from {node.module} import {a.name}"
                                for a in node.names if a.name not in names and not is_module(f"{node.module}.{a.name}")]
    assert not missing, "\n".join(missing)


def test_stage_packages_import_only_stages_below_them():
    bad = layering_violations(graph())
    assert not bad, "\n".join(bad)
    stages = {stage_of(m) for m in graph()} - {None}
    assert stages == set(STAGES), f"stage packages {sorted(stages)} do not match STAGES {STAGES}"


def test_no_import_circle_in_flywheel_or_models():
    g = graph()
    found = circles(g)
    assert not found, "\n".join(circle_message(g, c) for c in found)


def test_the_checks_fail_on_an_import_back_up_and_on_a_circle(tmp_path):
    """The two checks above are only worth something if they can fail: feed them a graph with one of each."""
    g = graph()
    g["flywheel.data.lake"] = g["flywheel.data.lake"] + [(99, "flywheel.training.ladder")]
    assert any("flywheel.data.lake (stage data) imports flywheel.training.ladder (line 99)" in b
               for b in layering_violations(g))
    g = graph()
    g["models.contract"] = g["models.contract"] + [(7, "models.ranker")]
    found = circles(g)
    assert found and "models.contract imports models.ranker (line 7)" in circle_message(g, found[0])
    g = graph()
    g["flywheel.data"] = g["flywheel.data"] + [(3, "flywheel.judge.policy")]            # a package's __init__
    assert any("flywheel.data (stage data) imports flywheel.judge.policy (line 3)" in b for b in layering_violations(g))
    g = graph()
    g["models.ranker"] = g["models.ranker"] + [(5, "flywheel.settings")]
    assert any("models.ranker imports flywheel.settings (line 5)" in b for b in layering_violations(g))
    g = graph()
    g["flywheel.config"] = g["flywheel.config"] + [(21, "flywheel.judge.online")]
    assert any("shared block" in b and "flywheel.judge.online (line 21)" in b for b in layering_violations(g))


def test_library_and_models_do_not_import_prefect():
    modules = sorted(
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for pkg in ("flywheel", "models") for p in (ROOT / pkg).rglob("*.py") if p.name != "__init__.py")
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
            "import ranx, mlflow, matplotlib.pyplot, transformers, flywheel.metrics as e, pandas as pd;"
            "e.ndcg_at_10(pd.DataFrame({'query_id':['q','q'],'doc_id':['a','b'],'aggregated_grade':[1,0]}), [1,0])")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("PREFECT", "MLFLOW", "HF_", "IR_", "MPL"))}
    env.update(HOME=str(fake_home), FLYWHEEL_HOME=str(tmp_path / "fw"))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert not list(fake_home.iterdir()), list(fake_home.iterdir())
