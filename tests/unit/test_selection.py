"""Prompt-variant / exemplar selection: folds by query, choice on the development fold only, one held-out
measurement, and the chosen exemplars carried into the judge that labels."""

import hashlib
import json
import random

import numpy as np
import pandas as pd

from flywheel.judge.selection import draw_exemplars, query_folds, select
from tests.openai_stub import StubServer, overlap_reply


def test_query_folds_are_disjoint_by_query_and_follow_the_shares():
    pairs = pd.DataFrame({"query_id": [f"q{i // 3}" for i in range(300)]})
    fold = query_folds(pairs, {"pool": 2, "dev": 3, "heldout": 3}, seed=0)
    per_query = pairs.assign(fold=fold).groupby("query_id").fold.nunique()
    assert (per_query == 1).all()
    counts = pairs.assign(fold=fold).drop_duplicates("query_id").fold.value_counts()
    assert counts.to_dict() == {"dev": 38, "heldout": 37, "pool": 25}
    assert not fold.equals(query_folds(pairs, {"pool": 2, "dev": 3, "heldout": 3}, seed=1))


def test_select_takes_the_best_development_score_and_measures_only_it_on_held_out():
    dev = {"a": 0.41, "b": 0.63, "c": 0.55}
    seen = []
    out = select(["a", "b", "c"], lambda v: {"qwk": dev[v], "n": 10},
                 lambda v: seen.append(v) or {"qwk": 0.5})
    assert out["chosen"] == "b" and seen == ["b"]
    assert [r["chosen"] for r in out["candidates"]] == [False, True, False]
    # a gain smaller than min_gain keeps the incumbent (the first candidate), and says so
    out = select(["a", "b", "c"], lambda v: {"qwk": dev[v] if v != "a" else 0.62}, lambda v: {"qwk": 0.5}, 0.02)
    assert out["chosen"] == "a" and "less than the 0.020 required" in out["reason"]
    out = select(["a", "b"], lambda v: {"qwk": {"a": 0.60, "b": 0.63}[v]}, lambda v: {"qwk": 0.5}, 0.02)
    assert out["chosen"] == "b"
    # a candidate that cannot be scored (nan) never wins
    out = select(["x", "y"], lambda v: {"qwk": float("nan") if v == "x" else -0.1}, lambda v: {"qwk": 0})
    assert out["chosen"] == "y"


def test_draw_exemplars_one_per_grade_from_the_pool():
    pool = pd.DataFrame({"query": list("abcdefgh"), "title": ["t"] * 8, "text": ["x" * 500] * 8,
                         "aggregated_grade": [0, 0.4, 1.2, 1.0, 2.0, 2.4, 3.0, 2.6], "n_raters": [1, 3, 2, 2, 1, 1, 3, 3]})
    ex = draw_exemplars(pool, 4, np.random.default_rng(0))
    assert [e["grade"] for e in ex] == [0, 1, 2, 3]
    assert ex[0]["query"] == "b"                     # the grade-0 pair with the most raters
    assert all(len(e["text"]) <= 240 for e in ex)
    # a title-less policy's exemplars show only the text, and skip pairs whose text is empty
    pool.loc[1, "text"] = ""
    ex = draw_exemplars(pool, 4, np.random.default_rng(0), fields=["text"])
    assert all(set(e) == {"query", "text", "grade", "why"} for e in ex) and ex[0]["query"] == "a"


def _noisy_by_exemplars(body, n):
    """A stub 'LLM' whose accuracy depends on the exemplars in its system prompt: with a probability fixed by
    the prompt's hash it answers at random, otherwise by query-word overlap."""
    system = body["messages"][0]["content"]
    p = int(hashlib.sha256(system.encode()).hexdigest()[:4], 16) / 0xFFFF
    user = body["messages"][1]["content"]
    rng = random.Random(hashlib.sha256(user.encode()).hexdigest())
    if rng.random() < p:
        g = rng.randint(0, 3)
        return json.dumps({"grade": g, "dimensions": {}, "rationale": "guess"}), "stop", None
    return overlap_reply(body, n)


def test_openai_calibration_chooses_exemplars_on_dev_and_labels_with_them(monkeypatch):
    from flywheel.config import load_config
    from flywheel.data.golden import load_golden
    from flywheel.judge.calibrate import calibrate
    from flywheel.judge.policy import load_policy
    from flywheel.judge.store import load_judge
    from flywheel.settings import get_paths

    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with StubServer(_noisy_by_exemplars) as server:
        cfg = load_config("configs/production.yaml")
        cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={
            "openai_base_url": server.base_url, "exemplar_sets": 3, "judge_test_split": False, "probe_pairs": 8,
            "min_qwk": 0.0, "selection_min_gain": 0.0})})
        paths = get_paths()
        out = calibrate(cfg, paths)
        sel = out["selection"]
        rows = {r["variant"]: r for r in sel["candidates"]}
        assert set(rows) == {"policy", "golden-1", "golden-2", "golden-3"}
        best = max(rows.values(), key=lambda r: r["dev_qwk"])
        assert sel["chosen"] == best["variant"] and best["chosen"]
        # the candidates really differ (different prompts, different noise) and the gate reads the held-out fold
        assert len({round(r["dev_qwk"], 6) for r in rows.values()}) > 1
        assert out["calibration"]["qwk"] == sel["heldout"]["qwk"]
        # exemplars come from the pool fold: never a development or held-out query
        calib = load_golden(cfg.resolve(cfg.golden)).pairs("calibration")
        fold = dict(zip(calib["query"], query_folds(calib, {"pool": 2, "dev": 3, "heldout": 3}, cfg.seed)))
        if sel["chosen"] != "policy":
            assert {fold[e["query"]] for e in sel["exemplars"]} == {"pool"}
        # a labelling run rebuilds the very judge that was calibrated (same version, same exemplars in its prompt)
        policy = load_policy(cfg.resolve(cfg.policy))
        judge = load_judge(out["judge_version"], policy, cfg, paths)
        assert [e.model_dump() for e in judge.policy.examples] == sel["exemplars"]
        assert policy.version == out["policy_version"]          # the PM's policy itself is unchanged
