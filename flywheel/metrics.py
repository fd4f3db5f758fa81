"""Ranking quality with ranx: NDCG@10 of any scorer over the golden test split's judged pools.

qrels are the human aggregated grades (rounded to integers, on whatever scale the policy defines); each system
reranks every test query's judged documents. Speed is items scored per second, measured on the same pairs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def qrels_from(pairs: pd.DataFrame, grade_col: str = "aggregated_grade") -> dict:
    """{query: {doc: grade}} with each grade rounded; no upper bound (gain = grade), negatives count as 0."""
    q: dict = {}
    for qid, did, g in zip(pairs.query_id, pairs.doc_id, pairs[grade_col]):
        q.setdefault(qid, {})[did] = int(max(np.round(g), 0))
    return q


def run_from(pairs: pd.DataFrame, scores) -> dict:
    r: dict = {}
    for qid, did, s in zip(pairs.query_id, pairs.doc_id, scores):
        r.setdefault(qid, {})[did] = float(s)
    return r


def ndcg_at_10_by_query(pairs: pd.DataFrame, scores, grade_col: str = "aggregated_grade") -> dict:
    """{query: NDCG@10} (ranx, gain = grade) over the queries with a relevant judgment, the ones
    :func:`ndcg_at_10` averages."""
    qrels = qrels_from(pairs, grade_col)
    # Queries whose judged documents are all irrelevant have no ideal ranking; ranx scores them 0. Keep them out.
    keep = {q for q, d in qrels.items() if max(d.values()) > 0}
    if not keep:      # nothing relevant anywhere (e.g. a validation fold whose parent scores are all equal)
        return {}
    sub = pairs[pairs.query_id.isin(keep)]
    return ranx_by_query(qrels_from(sub, grade_col), run_from(sub, np.asarray(scores)[pairs.query_id.isin(keep).to_numpy()]))


def ranx_by_query(qrels: dict, run: dict, metric: str = "ndcg@10") -> dict:
    """{query: ``metric``} of ``run`` against ``qrels`` (both {query: {doc: value}}), as ranx keys them."""
    from ranx import Qrels, Run, evaluate

    scored = Run(run)
    evaluate(Qrels(qrels), scored, metric)
    return {q: float(v) for q, v in scored.scores[metric].items()}


def ndcg_at_10(pairs: pd.DataFrame, scores, grade_col: str = "aggregated_grade") -> float:
    """Mean NDCG@10 over queries (ranx, exponential gain off: gain = grade); 0 when no query has a relevant
    judgment."""
    return mean_of(ndcg_at_10_by_query(pairs, scores, grade_col))


def mean_of(by_query: dict) -> float:
    """The mean of per-query figures ({query: value}; 0 when empty), summed in ranx's order."""
    return float(np.mean(list(by_query.values()))) if by_query else 0.0


def paired_bootstrap_ci(a: dict, b: dict, op: str = "ratio", level: float = 0.95, n_resamples: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) / mean(b) (``op="ratio"``) or mean(a) − mean(b) (``"diff"``), with
    queries resampled in pairs (scipy.stats.bootstrap, ``paired=True``). ``a`` and ``b`` are per-query figures
    ({query: NDCG@10}); only the queries both hold count. Says how far a ratio or gain measured on a few dozen
    test queries can be trusted: an interval that straddles a target cannot tell met from missed."""
    from scipy.stats import bootstrap

    qs = sorted(set(a) & set(b))
    if len(qs) < 2:
        raise ValueError(f"a paired bootstrap needs 2 or more queries in common; got {len(qs)}")
    x, y = np.array([a[q] for q in qs]), np.array([b[q] for q in qs])
    if op == "ratio":
        stat = lambda u, v, axis: u.mean(axis=axis) / np.maximum(v.mean(axis=axis), 1e-12)   # noqa: E731
    elif op == "diff":
        stat = lambda u, v, axis: u.mean(axis=axis) - v.mean(axis=axis)                      # noqa: E731
    else:
        raise ValueError(f"op must be 'ratio' or 'diff'; got {op!r}")
    res = bootstrap((x, y), stat, paired=True, vectorized=True, n_resamples=n_resamples, confidence_level=level,
                    method="percentile", rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)
