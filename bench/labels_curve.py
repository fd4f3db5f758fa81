"""Labels vs. minutes: what more judge labels buy the teacher, on a home ``bench/quality.py`` has filled.

    python bench/labels_curve.py --home /tmp/qa1 --policy policies/job_title_search.md [--points 8:0,8:120,32:300]

The home's lake holds the day's judge labels of its training queries, real and pseudo. Each point ``K:P`` keeps
every real training query and ``P`` of the labelled pseudo-queries — the first ``P`` in the lake's order (by
document id, not by draw: a seeded subset of the seeded draw, not necessarily the set the flow would label with
``retrieval.pseudo_queries: P``; smaller sets nest in larger ones) — with up to ``K`` labels a query, drawn as
``retrieval.per_grade = K // grades`` draws them (stratified by grade, seeded per query:
:func:`flywheel.labeling.candidates.stratify`, the judge's grade in place of the pre-judge's; ``K`` is rounded
down to a multiple of the number of grades). It trains the teacher as the flow does (:func:`flywheel.training.ladder.fit_teacher`:
same rung, validation fold and early stopping) and measures it on the held-out test split in both protocols,
beside the judge and the baselines, with its validation figure (NDCG@10 against the judge on the fold's held-out
real queries, which keep all their labels at every point: what a choice between points may read; the test split
is only reported). Minutes: the judge's seconds a pair, timed here in one process on the home's pairs
with its LM cache off, × labels (the flow labels in shards, two at a time on 2 cores, so its own rate is faster: compare
the labelling stage's minutes that ``bench/quality.py`` prints); and the teacher's training wall time. ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def parse_points(text: str, n_grades: int = 1) -> list[tuple[int, int]]:
    try:
        pts = [tuple(int(x) for x in p.split(":")) for p in text.split(",") if p.strip()]
    except ValueError:
        pts = []
    if not pts or any(len(p) != 2 or p[0] < 1 or p[1] < 0 for p in pts):
        raise SystemExit(f"--points {text!r}: give K:P pairs (labels a query >= 1, pseudo-queries >= 0), "
                         "comma-separated, e.g. 8:0,8:120,32:300")
    if short := [k for k, _ in pts if k < n_grades]:
        raise SystemExit(f"--points: K {short} is below the policy's {n_grades} grades; K labels a query are drawn "
                         f"K // {n_grades} from each grade, so give K >= {n_grades}")
    return pts


def subset(pairs, per_query: int, n_pseudo: int, n_grades: int, order: list[str], seed: int, held: set[str]):
    """The labels a point keeps (see the module docstring); the validation fold's queries (``held``) keep all of
    theirs, so every point is validated on the same labels."""
    import pandas as pd

    from flywheel.labeling.candidates import stratify

    keep_pseudo = set(order[:n_pseudo])
    sel = pairs[(~pairs.query_id.str.startswith("pseudo:") | pairs.query_id.isin(keep_pseudo))
                & ~pairs.query_id.isin(held)]
    sel = sel.assign(predicted_grade=sel.grade.astype(int)).reset_index(drop=True)
    out = stratify(sel, per_query // n_grades, n_grades, seed).drop(columns="predicted_grade")
    return pd.concat([out, pairs[pairs.query_id.isin(held)]]).sort_values(["query_id", "doc_id"]).reset_index(drop=True)


def judge_seconds_per_pair(judge, pairs, n: int = 200) -> float:
    """The judge's wall time a pair on ``n`` of ``pairs``, its LM feature computed afresh (cache off)."""
    ext = getattr(judge, "extractor", None)
    cache = getattr(ext, "cache", None)
    if ext is not None:
        ext.cache = None
    try:
        sub = pairs.sample(min(n, len(pairs)), random_state=0)
        judge.judge(sub.head(8))                    # load the LM before the clock starts
        t = time.perf_counter()
        judge.judge(sub)
        return (time.perf_counter() - t) / len(sub)
    finally:
        if ext is not None:
            ext.cache = cache


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, required=True, help="a home bench/quality.py has run in")
    ap.add_argument("--policy", type=Path, required=True, help="the policy that run used")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "quality.yaml", help="the config that run used")
    ap.add_argument("--points", default="8:0,8:120,16:120,32:120,32:300",
                    help="K:P,... — up to K labels a query, the first P pseudo-queries")
    ap.add_argument("--judge-version", default=None,
                    help="the judge whose labels to use (default: the one with the most labels in the lake)")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if not (a.home / "golden" / "golden_labels.parquet").exists():
        raise SystemExit(f"{a.home} holds no bench golden set: run bench/quality.py --home {a.home} first")
    os.environ["FLYWHEEL_HOME"] = str(a.home.resolve())

    from rich.console import Console
    from rich.table import Table

    from flywheel.config import load_config
    from flywheel.data.golden import load_golden
    from flywheel.data.lake import open_lake
    from flywheel.evaluation.evaluate import judge_ranking, rerank_ndcg, rerank_pool
    from flywheel.judge import store
    from flywheel.judge.policy import load_policy
    from flywheel.labeling.daily import training_pairs
    from flywheel.metrics import ndcg_at_10
    from flywheel.retrieval.hybrid import retriever
    from flywheel.settings import get_paths
    from flywheel.training.ladder import (build_rung, fit_teacher, rung_runtime, split_validation, teacher_targets,
                                          with_lora)
    from models.lora import merge_lora
    from models.ranker import score_pairs

    cfg = load_config(a.config)
    cfg = cfg.model_copy(update={"golden": str((a.home / "golden").resolve()), "policy": str(a.policy.resolve())})
    paths, policy = get_paths(), load_policy(a.policy)
    points = parse_points(a.points, policy.max_grade + 1)
    lk = open_lake(paths)
    labels = lk.read("judge_labels")
    if labels.empty:
        raise SystemExit(f"{a.home}: no judge labels: the bench run did not get to labelling")
    judge_version = a.judge_version or labels.judge_version.value_counts().idxmax()
    if judge_version not in set(labels.judge_version):
        raise SystemExit(f"--judge-version {judge_version}: no labels of that judge in {a.home} "
                         f"(it holds {sorted(set(labels.judge_version))})")
    pairs = training_pairs(judge_version, paths)
    pairs["target"] = teacher_targets(pairs, policy.max_grade, cfg.ladder.teacher_target)
    queries = lk.read("queries")
    order = queries[queries.query_id.str.startswith("pseudo:")].query_id.tolist()
    held = set(split_validation(pairs, cfg)[1].query_id)
    judge = store.load_judge(judge_version, policy, cfg, paths)
    rate = judge_seconds_per_pair(judge, pairs)

    test = load_golden(cfg.resolve(cfg.golden)).pairs("test")
    pool = rerank_pool(test, cfg.evaluation.rerank_depth or 30, paths)
    ret = retriever(paths)
    ft, fp = ret.pair_features(test), ret.pair_features(pool)
    jt, jp = judge.judge(test), judge.judge(pool)
    ok = (jt.parse_status == "ok").to_numpy()
    base = {"bm25": (ndcg_at_10(test, ft.bm25), rerank_ndcg(test, pool, fp.bm25)),
            "bi-encoder": (ndcg_at_10(test, ft.cosine), rerank_ndcg(test, pool, fp.cosine)),
            "judge": (ndcg_at_10(test[ok], judge_ranking(jt)[ok]), rerank_ndcg(test, pool, judge_ranking(jp)))}

    def measure(model, tok, contract):
        return (ndcg_at_10(test, score_pairs(model, tok, contract, test["query"].tolist(), test.title.tolist(),
                                             test.text.tolist())),
                rerank_ndcg(test, pool, score_pairs(model, tok, contract, pool["query"].tolist(),
                                                     pool.title.tolist(), pool.text.tolist())))

    base["zero_shot_start"] = measure(*build_rung(cfg.ladder.rungs[0], paths, cfg.seed))
    console = Console(stderr=True)
    rows = []
    for k, p in points:
        sub = subset(pairs, k, p, policy.max_grade + 1, order, cfg.seed, held)
        rung = cfg.ladder.rungs[0]
        model, tok, contract = build_rung(rung, paths, cfg.seed)
        model = with_lora(model, rung, cfg.seed)                 # as train_teacher: adapters, device, precision
        t = time.perf_counter()
        train, losses, val = fit_teacher(model, tok, contract, sub, cfg, paths, runtime=rung_runtime(rung))
        model = merge_lora(model).to("cpu").eval()
        minutes = (time.perf_counter() - t) / 60
        judged, rerank = measure(model, tok, contract)
        rows.append({"labels_per_query": k, "pseudo_queries": int(min(p, len(order))), "labels": int(len(sub)),
                     "validation_queries": int(len(held)),
                     "queries": int(sub.query_id.nunique()), "train_pairs": int(len(train)),
                     "judge_minutes": round(rate * len(sub) / 60, 2), "teacher_minutes": round(minutes, 2),
                     "kept": val.get("kept"), "validation_start": val.get("validation_start"),
                     "validation_best": val.get("validation_best"), "ndcg@10": round(judged, 4), "rerank_ndcg@10": round(rerank, 4),
                     "ratio_to_judge": round(judged / base["judge"][0], 4)})
        console.print(f"[bold]{k}:{p}[/] {rows[-1]}")

    table = Table(title=f"Teacher vs. judge labels — {a.home.name}, {test.query_id.nunique()} test queries; "
                        f"judge {rate:.3f} s a pair")
    for c in ("labels a query ≤", "pseudo-queries", "labels", "judge min (1 process)", "teacher min", "kept",
              "validation", "NDCG@10 judged", "/ judge", "NDCG@10 rerank"):
        table.add_column(c, justify="right")
    for name, (j, r) in base.items():
        table.add_row(name, "", "", "", "", "", "", f"{j:.4f}", "", f"{r:.4f}")
    for r in rows:
        table.add_row(str(r["labels_per_query"]), str(r["pseudo_queries"]), f"{r['labels']:,}",
                      f"{r['judge_minutes']:.1f}", f"{r['teacher_minutes']:.1f}", str(r["kept"]),
                      f"{r['validation_start']} → {r['validation_best']}",
                      f"{r['ndcg@10']:.4f}", f"{r['ratio_to_judge']:.3f}", f"{r['rerank_ndcg@10']:.4f}")
    Console(width=max(Console().width, 150)).print(table)
    out = {"home": str(a.home), "judge_version": judge_version, "judge_seconds_per_pair": round(rate, 4),
           "baselines": {k: {"ndcg@10": round(v[0], 4), "rerank_ndcg@10": round(v[1], 4)} for k, v in base.items()},
           "points": rows, "test_queries": int(test.query_id.nunique()), "all_labels": int(len(pairs)), "seed": cfg.seed}
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
