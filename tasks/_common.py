"""What every task shares: the flywheel home, content-keyed cache keys, rich progress, artifacts."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from pathlib import Path

from flywheel.settings import REPO_ROOT, configure_environment

_CODE_DIRS = ("flywheel", "models", "tasks")


def paths():
    return configure_environment()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of the library's source: a code change invalidates the caches of the stages it could affect."""
    h = hashlib.sha256()
    for d in _CODE_DIRS:
        for f in sorted((REPO_ROOT / d).rglob("*.py")):
            h.update(f.read_bytes())
    return h.hexdigest()[:12]


def _jsonable(v):
    if hasattr(v, "model_dump"):
        return v.model_dump()
    return v


def content_key(context, parameters: dict) -> str:
    """Cache key: task name + its parameters (content hashes, configs) + code version + where the state lives
    (the home, the lake and the tracking store: the same run against another MLflow or lake is not a cache hit)."""
    payload = json.dumps({k: _jsonable(v) for k, v in sorted(parameters.items())}, sort_keys=True, default=str)
    p = paths()
    raw = "|".join([context.task.name, payload, code_version(), str(p.home), str(p.lake), p.mlflow_uri])
    return hashlib.sha256(raw.encode()).hexdigest()


def file_hash(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


@contextlib.contextmanager
def progress(description: str, total: int | None):
    """A rich progress bar; yields a callback ``advance(n)`` for the library function to call."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), transient=False) as p:
        t = p.add_task(description, total=total)
        yield lambda n=1: p.advance(t, n)


def markdown_table(rows: list[dict]) -> str:
    if not rows:
        return "(empty)"
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[c]:.4f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    return "\n".join(lines)


def artifact(key: str, markdown: str, description: str = "") -> None:
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(key=key, markdown=markdown, description=description)


SECRET_BLOCKS = {"OPENAI_API_KEY": "openai-api-key", "FLYWHEEL_SCORER_TOKEN": "flywheel-scorer-token"}


def resolve_secrets(*names: str) -> dict:
    """Each secret from the process environment, else from the Prefect ``Secret`` block of SECRET_BLOCKS (a team's
    stack keeps them in Prefect, encrypted at rest). The value goes into this process's environment only — never
    into a parameter, a result, a log line or an artifact. Returns where each came from (names, not values)."""
    import os

    from prefect.blocks.system import Secret

    found = {}
    for name in names:
        if os.environ.get(name):
            found[name] = "environment"
            continue
        try:
            os.environ[name] = Secret.load(SECRET_BLOCKS[name]).get()
            found[name] = f"secret block {SECRET_BLOCKS[name]}"
        except ValueError:              # no such block: the library says what is missing when it needs it
            found[name] = "missing"
    return found
