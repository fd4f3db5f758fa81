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


def ndcg_at_10(pairs: pd.DataFrame, scores, grade_col: str = "aggregated_grade") -> float:
    """Mean NDCG@10 over queries (ranx, exponential gain off: gain = grade)."""
    from ranx import Qrels, Run, evaluate

    qrels = qrels_from(pairs, grade_col)
    # Queries whose judged documents are all irrelevant have no ideal ranking; ranx scores them 0. Keep them out.
    keep = {q for q, d in qrels.items() if max(d.values()) > 0}
    if not keep:      # nothing relevant anywhere (e.g. a validation fold whose parent scores are all equal)
        return 0.0
    sub = pairs[pairs.query_id.isin(keep)]
    return float(evaluate(Qrels(qrels_from(sub, grade_col)), Run(run_from(sub, np.asarray(scores)[pairs.query_id.isin(keep).to_numpy()])),
                          "ndcg@10"))
