"""Flow stage 3, first half: today's candidates for every non-test query — BM25 ∪ bi-encoder ∪ random documents — graded by a
cheap pre-judge and stratified by that grade, so labels cover the whole scale rather than only the top hits.
With ``retrieval.pseudo_queries``, pseudo-queries made from the documents join the day's queries first."""

from __future__ import annotations

import numpy as np
import pandas as pd

from flywheel.config import FlywheelConfig
from flywheel.data.golden import load_golden
from flywheel.data.lake import open_lake, sha256_text
from flywheel.judge.backends import OfflineJudge
from flywheel.judge.features import FeatureExtractor
from flywheel.judge.policy import load_policy
from flywheel.retrieval.hybrid import retriever
from flywheel.settings import Paths


def retrieve_candidates(date: str, cfg: FlywheelConfig, paths: Paths) -> dict:
    lk = open_lake(paths)
    r = cfg.retrieval
    queries = lk.read("queries")
    queries = queries[queries.split.fillna("") != "test"].drop_duplicates("query_id").sort_values("query_id")
    ret = retriever(paths)
    if r.per_grade:
        pool = ret.candidates(queries, r.pool_depth, r.pool_depth, r.n_random, seed=cfg.seed)
        pool["predicted_grade"] = predict_grades(pool, queries, cfg, paths)
        n_grades = load_policy(cfg.resolve(cfg.policy)).max_grade + 1
        cands = stratify(pool, r.per_grade, n_grades, seed=cfg.seed)
    else:
        cands = ret.candidates(queries, r.k_bm25, r.k_dense, r.n_random, seed=cfg.seed)
        cands["predicted_grade"] = None
    cands["predicted_grade"] = cands.predicted_grade.astype("Int8")
    cands.insert(0, "date", date)
    lk.write("candidates", cands, date=date)
    by = cands.retrieved_by.value_counts().to_dict()
    pg = {int(k): int(v) for k, v in cands.predicted_grade.dropna().value_counts().sort_index().items()}
    return {"date": date, "queries": int(len(queries)), "candidates": int(len(cands)), "retrieved_by": by,
            "predicted_grades": pg, "fingerprint": lk.fingerprint("candidates", date)}


def add_pseudo_queries(n: int, seed: int, lk) -> dict:
    """Write ``n`` pseudo-queries (:func:`flywheel.data.pseudo.pseudo_queries`, never a golden query's text) into
    the lake's queries table (source ``pseudo:title`` / ``pseudo:text``, no split), where the day's candidate
    retrieval and the judge find them; the same ones every day for a corpus and seed (the flow runs it after
    seeding, before retrieval: ``retrieval.pseudo_queries``). Returns what was asked and made, and why fewer."""
    from flywheel.data.pseudo import pseudo_queries, shortfall

    docs, queries = lk.read("documents"), lk.read("queries")
    present = set(queries.query_id)
    made = pseudo_queries(docs, queries[~queries.query_id.str.startswith("pseudo:")], n, seed)
    new = made[~made.query_id.isin(present)]      # a larger n later adds only the new ones (the draw is nested)
    if len(new):
        lk.write("queries", pd.DataFrame({"query_id": new.query_id, "text": new.text, "domain": None,
                                          "source": "pseudo:" + new.method, "split": None}))
    return shortfall(n, made, docs) | {"added": int(len(new))}


def predict_grades(pool: pd.DataFrame, queries: pd.DataFrame, cfg: FlywheelConfig, paths: Paths) -> np.ndarray:
    """A cheap pre-judge for stratification: BM25 + bi-encoder cosine, linear, with cut-points fitted on the golden
    calibration split (no LM, so grading a deep pool costs milliseconds a pair). Only steers sampling: every
    candidate is still labelled by the calibrated judge."""
    policy = load_policy(cfg.resolve(cfg.policy))
    calib = load_golden(cfg.resolve(cfg.golden)).pairs("calibration")
    ext = FeatureExtractor(retriever(paths), ("bm25", "cosine"))
    pre = OfflineJudge(policy, ext).fit(calib, calib.aggregated_grade.to_numpy(dtype=float))
    pairs = pool.merge(queries[["query_id", "text"]].rename(columns={"text": "query"}), on="query_id", how="left")
    return pre.judge(pairs).grade.to_numpy()


def stratify(pool: pd.DataFrame, per_grade: int, n_grades: int, seed: int = 0) -> pd.DataFrame:
    """Per query: up to ``per_grade`` pairs from each predicted grade (a seeded draw within the stratum), so even
    the grades top-k retrieval rarely reaches get their floor. Slots a short stratum leaves free go to the highest
    grades first (the rare, valuable ones), so every query keeps ``per_grade × n_grades`` pairs where its pool
    allows. Deterministic for a given pool and seed."""
    keep = []
    target = per_grade * n_grades
    for qid, g in pool.groupby("query_id", sort=True):
        rng = np.random.default_rng([seed, int(sha256_text(qid)[:8], 16)])
        strata = {k: rng.permutation(g.index[g.predicted_grade == k].to_numpy().copy()).tolist() for k in range(n_grades)}
        chosen = []
        for k in range(n_grades):
            chosen += strata[k][:per_grade]
            strata[k] = strata[k][per_grade:]
        for k in reversed(range(n_grades)):
            take = max(0, target - len(chosen))
            chosen += strata[k][:take]
        keep += sorted(chosen)
    return pool.loc[keep].reset_index(drop=True)
