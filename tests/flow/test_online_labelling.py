"""Online labelling through the openai backend against a local OpenAI-compatible server with injected faults:
nothing lost, nothing duplicated, a completed day costs 0 requests, and a budget stops cleanly and resumes."""

import asyncio

import pytest

from flywheel.config import load_config
from flywheel.data.golden import seed_golden
from flywheel.data.lake import open_lake as lake
from flywheel.judge.backends import OpenAIJudge
from flywheel.judge.online import OnlineLabeller, OnlineSettings
from flywheel.judge.policy import load_policy
from flywheel.labeling import daily as labeling
from flywheel.labeling.candidates import retrieve_candidates
from flywheel.settings import get_paths
from tests.openai_stub import StubServer

DATE = "2026-04-01"


@pytest.fixture()
def pairs(golden):
    return golden.pairs("calibration").head(120).reset_index(drop=True)


def test_thirty_percent_transient_failures_lose_and_duplicate_nothing(pairs):
    policy = load_policy("policies/open_data_search.md")
    committed = []
    settings = OnlineSettings(max_in_flight=16, timeout_s=0.5, max_retries=10, backoff_base_s=0.05,
                              backoff_cap_s=0.3, commit_every=8)
    with StubServer(fail_rate=0.3, stall_s=2.0) as server:
        out = asyncio.run(OnlineLabeller(policy, "stub", server.base_url, "k", settings).run(
            pairs, lambda batch: committed.extend(batch)))
        faults = dict(server.stats["faults"])
    idx = [i for i, _ in committed]
    assert sorted(idx) == list(pairs.index)                       # 0 lost, 0 duplicated
    assert all(j["parse_status"] == "ok" for _, j in committed)
    assert out["failed"] == 0 and out["retries"] > 10
    assert set(faults) == {"429", "500", "stall"}


def test_completed_day_costs_zero_requests_and_budget_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    paths = get_paths(tmp_path / "home")
    base = load_config("configs/ci.yaml")
    seed_golden(base.resolve(base.golden), lake(paths))
    with StubServer() as server:
        judge_cfg = base.judge.model_copy(update={"backend": "openai", "openai_base_url": server.base_url,
                                                  "openai_model": "stub", "daily_budget_usd": 0.002})
        cfg = base.model_copy(update={"judge": judge_cfg, "retrieval": base.retrieval.model_copy(
            update={"k_bm25": 2, "k_dense": 2, "n_random": 0})})
        version = OpenAIJudge(load_policy(cfg.resolve(cfg.policy)), "stub", server.base_url,
                              settings=OnlineSettings.from_config(cfg.judge)).version
        cal = {"judge_version": version, "gate": {"passed": True, "reason": "test"}}
        cands = retrieve_candidates(DATE, cfg, paths)
        first = labeling.label_candidates(DATE, cal, cfg, paths, batch_size=8)
        assert first["online"]["stopped"] and "budget" in first["online"]["stopped"]
        assert 0 < first["labelled"] < first["pending"]
        assert first["online"]["cost_usd"] >= 0.002
        # next day's run (bigger budget) continues where the budget stopped it
        cfg2 = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"daily_budget_usd": None})})
        second = labeling.label_candidates(DATE, cal, cfg2, paths, batch_size=8)
        assert second["pending"] == first["pending"] - first["labelled"]
        calls = server.stats["calls"]
        third = labeling.label_candidates(DATE, cal, cfg2, paths, batch_size=8)
        assert third["pending"] == 0 and server.stats["calls"] == calls     # a completed day: 0 requests
        assert max(server.stats["per_pair"].values()) == 1                  # no pair was ever asked twice
    labels = lake(paths).read("judge_labels", DATE)
    cand = lake(paths).read("candidates", DATE).drop_duplicates(["query_id", "doc_hash"])
    assert len(labels) == len(cand) <= cands["candidates"]     # identical documents under two ids: labelled once
    assert not labels.duplicated(["query_id", "doc_hash", "judge_version"]).any()
    assert (labels.judge_backend == "openai").all() and (labels.judge_version == version).all()
