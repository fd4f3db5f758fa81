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
from tests.helpers import FakeClock, use_fake_clock
from tests.openai_stub import StubServer

DATE = "2026-04-01"


@pytest.fixture()
def pairs(golden):
    # distinct (query, document) contents: the stub tells pairs apart by the prompt
    p = golden.pairs("calibration").drop_duplicates(["query", "title", "text"])
    return p.head(120).reset_index(drop=True)


def test_thirty_percent_transient_failures_lose_and_duplicate_nothing(pairs):
    policy = load_policy("policies/open_data_search.md")
    committed = []
    # a stalled request is held until the client's 2 s timeout gives up on it (no server-side timer to race);
    # a healthy one is answered in milliseconds
    settings = OnlineSettings(max_in_flight=16, timeout_s=2.0, max_retries=10, backoff_base_s=0.05,
                              backoff_cap_s=0.3, commit_every=8)
    with StubServer(fail_rate=0.3, stall_s=None) as server:
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


@pytest.fixture()
def clock(monkeypatch):
    return use_fake_clock(monkeypatch, FakeClock())


def test_retry_after_is_honoured_and_jittered_backoff_stays_under_its_cap(pairs, clock):
    policy = load_policy("policies/open_data_search.md")
    seen = set()

    def first_ask_is_rate_limited(n, body):
        key = body["messages"][1]["content"]
        if key in seen:
            return None
        seen.add(key)
        return "429"

    settings = OnlineSettings(max_in_flight=1, max_retries=3, backoff_base_s=0.5, backoff_cap_s=4.0)
    with StubServer(fault_for=first_ask_is_rate_limited, retry_after="7.5") as server:
        out = asyncio.run(OnlineLabeller(policy, "stub", server.base_url, "k", settings).run(pairs.head(5),
                                                                                           lambda b: None))
        faults = dict(server.stats["faults"])
    assert out["failed"] == 0 and out["retries"] == 5 and faults == {"429": 5}
    assert clock.sleeps == [7.5] * 5                   # each pair waited exactly what the server asked
    clock.sleeps.clear()
    with StubServer(fault_for=lambda n, body: "500" if n % 2 else None) as server:   # a 500 has no retry-after
        out = asyncio.run(OnlineLabeller(policy, "stub", server.base_url, "k", settings).run(pairs.head(6),
                                                                                           lambda b: None))
    assert out["failed"] == 0 and out["retries"] == 6 and len(clock.sleeps) == 6
    assert all(0 <= s <= 0.5 for s in clock.sleeps)    # a first retry: uniform(0, min(cap, base · 2^0))


def test_request_and_token_per_minute_limits_are_honoured(pairs, clock):
    policy = load_policy("policies/open_data_search.md")
    with StubServer() as server:
        rpm = OnlineSettings(max_in_flight=1, requests_per_minute=6)
        out = asyncio.run(OnlineLabeller(policy, "stub", server.base_url, "k", rpm).run(pairs.head(20), lambda b: None))
        assert out["requests"] == 20
        assert clock.now - 1000.0 == pytest.approx(14 * 10.0)   # a burst of 6, then one every 10 s
        labeller = OnlineLabeller(policy, "stub", server.base_url, "k",
                                  OnlineSettings(max_in_flight=1, tokens_per_minute=6000, max_tokens=300))
        est = [sum(len(m["content"]) for m in labeller.messages(r)) / 4 + 300 for _, r in pairs.head(30).iterrows()]
        start = clock.now
        out = asyncio.run(labeller.run(pairs.head(30), lambda b: None))
    assert out["requests"] == 30 and sum(est) > 6000
    # tokens beyond the first minute's burst are paid at 100 a second
    assert clock.now - start == pytest.approx((sum(est) - 6000) / 100.0, rel=1e-6)
