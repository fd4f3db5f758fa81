"""A workbench over a copy of the shipped open-data policy, with the BM25 judge of configs/stack_test.yaml.

Each test gets its own workbench state, policy file and MLflow store; the lake (the golden set, its retrieval
index) is the session's, so the golden set is seeded and indexed once."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from flywheel.config import load_config
from flywheel.settings import Paths

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/stack_test.yaml"
XHR = {"X-Requested-With": "workbench"}
TOKENS = {"vera": ("viewer", "tok-vera-123"), "eddie": ("editor", "tok-eddie-456"),
          "pia": ("publisher", "tok-pia-789"), "paul": ("publisher", "tok-paul-000")}


def bearer(name: str) -> dict:
    return {"Authorization": f"Bearer {TOKENS[name][1]}"}


def token_access():
    from flywheel.workbench.access import Access

    return Access.model_validate({"identity": "token", "users": [
        {"name": n, "role": r, "token_sha256": hashlib.sha256(t.encode()).hexdigest()} for n, (r, t) in TOKENS.items()]})


@pytest.fixture
def wb_env(tmp_path, home):
    """(config, paths, policy file) for one workbench."""
    policy = tmp_path / "policies" / "open_data_search.md"
    policy.parent.mkdir()
    shutil.copy(ROOT / "policies" / "open_data_search.md", policy)
    cfg = load_config(CONFIG)
    cfg = cfg.model_copy(update={"policy": str(policy)})
    paths = Paths(home=tmp_path / "home", lake_dir=Path(home) / "lake")
    return cfg, paths, policy


@pytest.fixture
def client_for(wb_env):
    """client_for(access) -> a TestClient of a workbench app (lifespan run: golden set seeded)."""
    from fastapi.testclient import TestClient

    from flywheel.workbench.access import local_access
    from flywheel.workbench.app import create_app

    clients = []

    def make(access=None, deployment=None):
        cfg, paths, _ = wb_env
        # loopback: a workbench without an access file answers to 127.0.0.1 / localhost only
        c = TestClient(create_app(CONFIG, paths, access or local_access(), deployment, cfg=cfg),
                       base_url="http://127.0.0.1")
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def stub_judge(wb_env, monkeypatch):
    """wb_env with an LLM judge: the OpenAI-compatible stub (grades by the query words the document shows),
    at gpt-4o-mini's list prices; yields (config, paths, policy file, server)."""
    from tests.openai_stub import StubServer

    cfg, paths, policy = wb_env
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with StubServer() as server:
        judge = cfg.judge.model_copy(update={"backend": "openai", "openai_model": "stub", "exemplar_sets": 0,
                                             "openai_base_url": server.base_url, "probe_pairs": 8})
        yield cfg.model_copy(update={"judge": judge}), paths, policy, server
