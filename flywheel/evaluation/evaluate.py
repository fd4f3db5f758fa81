"""Flow stage 7: evaluate BM25, the judge and every rung on the golden test split (NDCG@10, size, speed)."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pandas as pd

from flywheel.config import FlywheelConfig
from flywheel.data.golden import load_golden
from flywheel.data.lake import open_lake
from flywheel.judge import store
from flywheel.judge.policy import load_policy
from flywheel.metrics import ndcg_at_10
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


def evaluate_rungs(rungs: dict, test: pd.DataFrame, paths: Paths) -> dict:
    """NDCG@10, size, optimised items/s and the mean document / input tokens each rung reads, on ``test``.
    Soft-token rungs read the documents' cached embeddings (looked up before the clock starts, as a service
    would hold them per document version)."""
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
        systems[name] = {"ndcg@10": ndcg_at_10(test, scores), "n_params": info["params_non_embedding"],
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


BASELINES = ("zero_shot_start", "bi-encoder", "bm25")   # what every rung must beat: its start and first-stage retrieval


def evaluate_all(rungs: dict, judge_version: str, run_id: str, cfg: FlywheelConfig, paths: Paths) -> dict:
    """BM25, the bi-encoder, the judge and every rung of ``rungs`` (the ladder's untrained start under
    ``zero_shot_start``) on the golden test split; each trained rung with its gain over the best baseline."""
    test = load_golden(cfg.resolve(cfg.golden)).pairs("test")
    systems: dict[str, dict] = {}
    ret = retriever(paths)
    bm = ret.pair_features(test)
    systems["bm25"] = {"ndcg@10": ndcg_at_10(test, bm.bm25), "n_params": None}
    from flywheel.retrieval.hybrid import load_encoder
    enc = load_encoder()[0].auto_model
    enc_params = sum(p.numel() for p in enc.parameters()) - sum(p.numel() for p in enc.embeddings.parameters())
    systems["bi-encoder"] = {"ndcg@10": ndcg_at_10(test, bm.cosine), "n_params": int(enc_params)}
    policy = load_policy(cfg.resolve(cfg.policy))
    judge = store.load_judge(judge_version, policy, cfg, paths)
    j = judge.judge(test)
    ok = j.parse_status == "ok"
    # Rank by grade; the judge's continuous score only breaks ties inside a grade.
    systems["judge"] = {"ndcg@10": ndcg_at_10(test[ok], j.grade[ok].astype(float) + 1e-3 * j.score[ok].fillna(0)),
                        "n_params": None}
    systems |= evaluate_rungs(rungs, test, paths)
    baselines = [b for b in BASELINES if b in systems]
    best = max(baselines, key=lambda b: systems[b]["ndcg@10"])
    for name in rungs:
        if name not in BASELINES:
            systems[name]["gain_over_best_baseline"] = round(systems[name]["ndcg@10"] - systems[best]["ndcg@10"], 4)
    write_results(run_id, systems, paths)
    return {"run_id": run_id, "test_queries": int(test.query_id.nunique()), "test_pairs": int(len(test)),
            "systems": systems, "baselines": baselines, "best_baseline": best}
