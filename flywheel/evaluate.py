"""Stage 7: evaluate BM25, the judge and every rung on the golden test split (NDCG@10, size, speed)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pandas as pd

from flywheel import context
from flywheel.config import FlywheelConfig
from flywheel.evaluation import ndcg_at_10
from flywheel.golden import load_golden
from flywheel.policy import load_policy
from flywheel.settings import Paths


def _speed(fn, n: int) -> float:
    t = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t)


def evaluate_all(rungs: dict, judge_version: str, run_id: str, cfg: FlywheelConfig, paths: Paths) -> dict:
    from models.ranker import load_ranker, score_pairs

    test = load_golden(cfg.resolve(cfg.golden)).pairs("test")
    systems: dict[str, dict] = {}
    ret = context.retriever(paths)
    bm = ret.pair_features(test)
    systems["bm25"] = {"ndcg@10": ndcg_at_10(test, bm.bm25), "n_params": None}
    from flywheel.retrieval import load_encoder
    enc = load_encoder()[0].auto_model
    enc_params = sum(p.numel() for p in enc.parameters()) - sum(p.numel() for p in enc.embeddings.parameters())
    systems["bi-encoder"] = {"ndcg@10": ndcg_at_10(test, bm.cosine), "n_params": int(enc_params)}
    policy = load_policy(cfg.resolve(cfg.policy))
    judge = context.load_judge(judge_version, policy, cfg, paths)
    j = judge.judge(test)
    ok = j.parse_status == "ok"
    # Rank by grade; the judge's continuous score only breaks ties inside a grade.
    systems["judge"] = {"ndcg@10": ndcg_at_10(test[ok], j.grade[ok].astype(float) + 1e-3 * j.score[ok].fillna(0)),
                        "n_params": None}
    for name, info in rungs.items():
        model, tok, contract = load_ranker(info["path"])
        args = (test["query"].tolist(), test.title.tolist(), test.text.tolist())
        scores: list[float] = []
        ips = _speed(lambda: scores.extend(score_pairs(model, tok, contract, *args)), len(test))
        systems[name] = {"ndcg@10": ndcg_at_10(test, scores), "n_params": info["params_non_embedding"],
                         "n_params_total": info["params_total"], "items_per_s": round(ips, 1),
                         "layers": info["layers"], "model_version": info["model_version"]}
    now = pd.Timestamp(datetime.now(timezone.utc))
    rows = [{"run_id": run_id, "system": s, "split": "test", "metric": "ndcg@10", "value": v["ndcg@10"],
             "n_params": v.get("n_params"), "items_per_s": v.get("items_per_s"), "created_at": now}
            for s, v in systems.items()]
    df = pd.DataFrame(rows).astype({"n_params": "Int64", "items_per_s": "Float64"})
    context.lake(paths).write("eval_results", df)
    return {"run_id": run_id, "test_queries": int(test.query_id.nunique()), "test_pairs": int(len(test)),
            "systems": systems}
