"""Flow stage 7: evaluate BM25, the judge and every rung on the golden test split (NDCG@10, size, speed)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from flywheel.config import FlywheelConfig
from flywheel.data.golden import load_golden
from flywheel.data.lake import open_lake
from flywheel.judge import store
from flywheel.judge.policy import load_policy
from flywheel.metrics import mean_of, ndcg_at_10_by_query, paired_bootstrap_ci
from flywheel.retrieval.hybrid import retriever
from flywheel.settings import Paths


def _speed(fn, n: int, repeats: int = 2) -> float:
    """Items/s of ``fn`` (which scores ``n`` items): the best of ``repeats`` timed runs, after the caller's first,
    untimed run has warmed the kernels up (oneDNN builds its primitives per shape on first use)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return n / best


def write_results(run_id: str, systems: dict, paths: Paths) -> None:
    now = pd.Timestamp(datetime.now(timezone.utc))
    rows = [{"run_id": run_id, "system": s, "split": "test", "metric": "ndcg@10", "value": v["ndcg@10"],
             "n_params": v.get("n_params"), "items_per_s": v.get("items_per_s"), "created_at": now}
            for s, v in systems.items()]
    df = pd.DataFrame(rows).astype({"n_params": "Int64", "items_per_s": "Float64"})
    open_lake(paths).write("eval_results", df)


def evaluate_rungs(rungs: dict, test: pd.DataFrame, paths: Paths, per_query: dict | None = None) -> dict:
    """NDCG@10, size, optimised items/s and the mean document / input tokens each rung reads, on ``test``.
    Soft-token rungs read the documents' cached embeddings (looked up before the clock starts, as a service
    would hold them per document version). ``per_query``, when given, is filled with each rung's
    {query: NDCG@10} (under the rung's name), the figures its mean ``ndcg@10`` is."""
    from models.ranker import input_lengths, load_ranker, score_pairs

    systems = {}
    for name, info in rungs.items():
        model, tok, contract = load_ranker(info["path"])
        args = (test["query"].tolist(), test.title.tolist(), test.text.tolist())
        kw = {}
        if contract.compression == "soft":
            from flywheel.retrieval.embeddings import doc_embeddings

            kw["doc_emb"] = doc_embeddings(test, paths)
        doc, total = input_lengths(tok, contract, *args)     # also fills the compressed-document cache
        scores = score_pairs(model, tok, contract, *args, **kw)
        ips = _speed(lambda: score_pairs(model, tok, contract, *args, **kw), len(test))
        by_query = ndcg_at_10_by_query(test, scores)
        if per_query is not None:
            per_query[name] = by_query
        systems[name] = {"ndcg@10": mean_of(by_query), "n_params": info["params_non_embedding"],
                         "n_params_total": info["params_total"], "items_per_s": round(ips, 1),
                         "layers": info["layers"], "model_version": info["model_version"],
                         "doc_tokens": round(float(sum(doc) / len(doc)), 2),
                         "input_tokens": round(float(sum(total) / len(total)), 2)}
    return systems


def naive_items_per_s(rung: dict, test: pd.DataFrame, n: int = 96) -> float:
    """Items/s of ``rung`` scored one pair per forward pass (models.ranker.score_pairs_naive) on ``n`` pairs."""
    from models.ranker import load_ranker, score_pairs_naive

    model, tok, contract = load_ranker(rung["path"])
    sub = test.head(n)
    args = (sub["query"].tolist(), sub.title.tolist(), sub.text.tolist())
    score_pairs_naive(model, tok, contract, *args)                                             # warm-up
    return round(_speed(lambda: score_pairs_naive(model, tok, contract, *args), len(sub)), 1)


def evaluate_compression(compressed: dict, student_name: str, student: dict, teacher: dict, evaluation: dict,
                         cfg: FlywheelConfig, paths: Paths) -> dict:
    """The compressed students on the golden test split, the input-length curve (with the uncompressed student
    read zero-shot at ``compression.curve_budgets``), and the combined figure: the fastest compressed student
    holding 95% of the teacher's NDCG@10 against the teacher scored naively, one pair per forward pass.
    ``evaluation``: :func:`evaluate_all`'s result, which already holds the student and the teacher."""
    from flywheel.training.compression import length_curve

    test = load_golden(cfg.resolve(cfg.golden)).pairs("test")
    systems = evaluate_rungs(compressed, test, paths)
    base = evaluation["systems"][student_name]
    teacher_ndcg = evaluation["systems"]["teacher"]["ndcg@10"]
    curve = length_curve(student, base, test, cfg.compression.curve_budgets)
    for name, v in systems.items():
        v["doc_tokens_ratio"] = round(base["doc_tokens"] / max(v["doc_tokens"], 1e-9), 2)
        v["ndcg_ratio_to_uncompressed"] = round(v["ndcg@10"] / max(base["ndcg@10"], 1e-9), 4)
        curve.append({"system": name, "form": compressed[name]["compression"]["form"],
                      "budget": compressed[name]["compression"]["size"], "doc_tokens": v["doc_tokens"],
                      "input_tokens": v["input_tokens"], "ndcg@10": v["ndcg@10"]})
    naive = naive_items_per_s(teacher, test)
    held = {k: v for k, v in systems.items() if v["ndcg@10"] >= 0.95 * teacher_ndcg}
    best = max(held, key=lambda k: held[k]["items_per_s"]) if held else None
    combined = {"teacher_naive_items_per_s": naive, "teacher_ndcg@10": teacher_ndcg, "system": best,
                "items_per_s": held[best]["items_per_s"] if best else None,
                "speedup": round(held[best]["items_per_s"] / naive, 1) if best else None,
                "ndcg_ratio_to_teacher": round(held[best]["ndcg@10"] / teacher_ndcg, 4) if best else None}
    write_results("compression-" + "-".join(v["model_version"][:8] for v in compressed.values()), systems, paths)
    return {"student": student_name, "uncompressed": base, "systems": systems, "length_curve": curve,
            "combined": combined}


def rerank_pool(test: pd.DataFrame, depth: int, paths: Paths) -> pd.DataFrame:
    """The rerank protocol's pairs: each test query's first-stage top-``depth`` (BM25 top-depth/2 ∪ dense
    top-depth/2) with query and document text, ``aggregated_grade`` the human grade where judged and 0 where not,
    and ``judged``."""
    docs = open_lake(paths).read("documents")[["doc_id", "title", "text"]]
    queries = test[["query_id", "query"]].drop_duplicates("query_id").rename(columns={"query": "text"})
    half = max(1, depth // 2)
    pool = retriever(paths).candidates(queries, k_bm25=half, k_dense=half, n_random=0)[["query_id", "doc_id", "doc_hash"]]
    pool = pool.merge(queries.rename(columns={"text": "query"}), on="query_id").merge(docs, on="doc_id")
    grades = test[["query_id", "doc_id", "aggregated_grade"]]
    pool = pool.merge(grades, on=["query_id", "doc_id"], how="left")
    pool["judged"] = pool.aggregated_grade.notna()
    pool["aggregated_grade"] = pool.aggregated_grade.fillna(0.0)
    return pool.sort_values(["query_id", "doc_id"]).reset_index(drop=True)


def rerank_ndcg(test: pd.DataFrame, pool: pd.DataFrame, scores) -> float:
    """NDCG@10 of ``scores`` over ``pool`` against every judgment of ``test`` (relevant documents the first stage
    missed still count in the ideal ranking, as in TREC); queries with no relevant judgment are left out."""
    return mean_of(rerank_ndcg_by_query(test, pool, scores))


def rerank_ndcg_by_query(test: pd.DataFrame, pool: pd.DataFrame, scores) -> dict:
    """{query: NDCG@10} of :func:`rerank_ndcg`."""
    from flywheel.metrics import qrels_from, ranx_by_query, run_from

    qrels = {q: d for q, d in qrels_from(test).items() if max(d.values()) > 0}
    if not qrels:
        return {}
    run = {q: d for q, d in run_from(pool, scores).items() if q in qrels}
    for q in qrels:                       # a query whose pool came back empty ranks nothing: NDCG 0
        run.setdefault(q, {"__none__": 0.0})
    return ranx_by_query(qrels, run)


def incompleteness(test: pd.DataFrame, pool: pd.DataFrame, scores, k: int = 10) -> dict:
    """How much the rerank protocol's figure for ``scores`` rests on unjudged documents: ``judged@10``, the share of
    each query's top-``k`` that a human judged (averaged over queries with a relevant judgment, as NDCG is), and
    ``condensed_ndcg@10``, NDCG@10 of the same ranking with the unjudged documents removed (Sakai's condensed
    lists, 2007). A system that surfaces relevant documents nobody judged is counted wrong by the protocol; a
    low judged@10 beside a high condensed figure says that is what happened, not that it ranks worse."""
    from flywheel.metrics import qrels_from

    keys = set(zip(test.query_id, test.doc_id))
    judged = np.array([(q, d) in keys for q, d in zip(pool.query_id, pool.doc_id)], dtype=bool)
    relevant = {q for q, d in qrels_from(test).items() if max(d.values()) > 0}   # the queries NDCG averages over
    scores = np.asarray(scores, dtype=float)
    ranked = pool.assign(_s=scores, _j=judged)
    ranked = ranked[ranked.query_id.isin(relevant)].sort_values(["query_id", "_s"], ascending=[True, False])
    top = ranked.groupby("query_id").head(k)
    share = float(top.groupby("query_id")._j.mean().reindex(sorted(relevant), fill_value=0.0).mean()) if relevant else 0.0
    by_query = rerank_ndcg_by_query(test, pool[judged], scores[judged])
    return {"judged@10": round(share, 4), "condensed_ndcg@10": mean_of(by_query), "condensed_by_query": by_query}


def judge_ranking(j: pd.DataFrame) -> np.ndarray:
    """How evaluation ranks the judge's replies ``j``: by grade, its continuous score only breaking ties inside a
    grade; a reply that failed to parse ranks last (−1)."""
    ok = (j.parse_status == "ok").to_numpy()
    return np.where(ok, j.grade.astype(float).fillna(0).to_numpy() + 1e-3 * j.score.fillna(0).to_numpy(), -1.0)


def rerank_protocol(rungs: dict, judge, test: pd.DataFrame, depth: int, paths: Paths) -> dict:
    """NDCG@10 of BM25, the bi-encoder, the judge and every rung in the rerank protocol (:func:`rerank_pool`),
    with each one's judged@10 and condensed NDCG@10 (:func:`incompleteness`) under ``judged@10`` / ``condensed``,
    and every figure by query under ``per_query`` ({metric: {system: {query: NDCG@10}}})."""
    from models.ranker import load_ranker, score_pairs

    pool = rerank_pool(test, depth, paths)
    feats = retriever(paths).pair_features(pool)
    scores = {"bm25": feats.bm25, "bi-encoder": feats.cosine, "judge": judge_ranking(judge.judge(pool))}
    for name, info in rungs.items():
        model, tok, contract = load_ranker(info["path"])
        if contract.compression == "soft":
            continue
        scores[name] = score_pairs(model, tok, contract, pool["query"].tolist(), pool.title.tolist(),
                                   pool.text.tolist())
    holes = {k: incompleteness(test, pool, s) for k, s in scores.items()}
    by_query = {k: rerank_ndcg_by_query(test, pool, s) for k, s in scores.items()}
    return {"depth": depth, "pairs": int(len(pool)), "queries": int(pool.query_id.nunique()),
            "judged_share": round(float(pool.judged.mean()), 4),
            "systems": {k: round(mean_of(q), 4) for k, q in by_query.items()},
            "judged@10": {k: h["judged@10"] for k, h in holes.items()},
            "condensed": {k: round(h["condensed_ndcg@10"], 4) for k, h in holes.items()},
            "per_query": {"rerank_ndcg@10": by_query,
                          "rerank_condensed_ndcg@10": {k: h["condensed_by_query"] for k, h in holes.items()}}}


BASELINES = ("zero_shot_start", "bi-encoder", "bm25")   # what every rung must beat: its start and first-stage retrieval


def evaluate_all(rungs: dict, judge_version: str, run_id: str, cfg: FlywheelConfig, paths: Paths) -> dict:
    """BM25, the bi-encoder, the judge and every rung of ``rungs`` (the ladder's untrained start under
    ``zero_shot_start``) on the golden test split: judged pools (``ndcg@10``) and, with
    ``evaluation.rerank_depth``, the rerank protocol (``rerank_ndcg@10``); each trained rung with its gain over the
    best baseline in the protocol the gate reads (``gate_metric``), with its 95% paired-bootstrap interval over the
    test queries (``gain_over_best_baseline_ci95``). ``per_query`` holds every figure by query
    ({metric: {system: {query: NDCG@10}}}), for confidence intervals over the test queries."""
    test = load_golden(cfg.resolve(cfg.golden)).pairs("test")
    systems: dict[str, dict] = {}
    ret = retriever(paths)
    bm = ret.pair_features(test)
    pools_by_query: dict[str, dict] = {"bm25": ndcg_at_10_by_query(test, bm.bm25),
                                       "bi-encoder": ndcg_at_10_by_query(test, bm.cosine)}
    systems["bm25"] = {"ndcg@10": mean_of(pools_by_query["bm25"]), "n_params": None}
    from flywheel.retrieval.hybrid import load_encoder
    enc = load_encoder()[0].auto_model
    enc_params = sum(p.numel() for p in enc.parameters()) - sum(p.numel() for p in enc.embeddings.parameters())
    systems["bi-encoder"] = {"ndcg@10": mean_of(pools_by_query["bi-encoder"]), "n_params": int(enc_params)}
    policy = load_policy(cfg.resolve(cfg.policy))
    judge = store.load_judge(judge_version, policy, cfg, paths)
    j = judge.judge(test)
    ok = (j.parse_status == "ok").to_numpy()
    pools_by_query["judge"] = ndcg_at_10_by_query(test[ok], judge_ranking(j)[ok])
    systems["judge"] = {"ndcg@10": mean_of(pools_by_query["judge"]), "n_params": None}
    systems |= evaluate_rungs(rungs, test, paths, per_query=pools_by_query)
    ec = cfg.evaluation
    rerank = rerank_protocol(rungs, judge, test, ec.rerank_depth, paths) if ec.rerank_depth else None
    judged_per_query = len(test) / max(1, test.query_id.nunique())
    protocol = ec.gate_protocol if ec.gate_protocol != "auto" else (
        "rerank" if rerank and judged_per_query < ec.small_pool else "judged")
    if protocol == "rerank" and not rerank:
        raise ValueError("evaluation.gate_protocol is 'rerank' but evaluation.rerank_depth is 0: set a depth")
    for name, v in (rerank or {}).get("systems", {}).items():
        systems[name]["rerank_ndcg@10"] = v
        systems[name]["rerank_condensed_ndcg@10"] = rerank["condensed"][name]
        systems[name]["rerank_judged@10"] = rerank["judged@10"][name]
    metric = "rerank_ndcg@10" if protocol == "rerank" else "ndcg@10"
    baselines = [b for b in BASELINES if b in systems]
    best = max(baselines, key=lambda b: systems[b][metric])
    per_query = {"ndcg@10": pools_by_query} | (rerank.pop("per_query") if rerank else {})
    by_query = per_query.get(metric, {})
    for name in rungs:
        if name not in BASELINES and metric in systems[name]:
            systems[name]["gain_over_best_baseline"] = round(systems[name][metric] - systems[best][metric], 4)
            if name in by_query and best in by_query:     # both scored on every test query in this protocol
                lo, hi = paired_bootstrap_ci(by_query[name], by_query[best], "diff")
                systems[name]["gain_over_best_baseline_ci95"] = [round(lo, 4), round(hi, 4)]
    write_results(run_id, systems, paths)
    return {"run_id": run_id, "test_queries": int(test.query_id.nunique()), "test_pairs": int(len(test)),
            "systems": systems, "baselines": baselines, "best_baseline": best, "gate_metric": metric,
            "gate_protocol": protocol, "judged_per_query": round(judged_per_query, 1), "rerank": rerank,
            "per_query": per_query}
