"""Assumed negatives for positive-only qrels.

Most BEIR sets list only relevant pairs; every unjudged document counts as 0. A golden set built from them
has pools in which every pair is relevant: a judge calibrated on it sits at chance and NDCG over such pools
is meaningless. ``add_assumed_negatives`` adds, per golden query, documents from its unjudged first-stage
candidates as grade 0.

Marking: an assumed negative is a golden_labels row with ``rater_id == ASSUMED_RATER`` ("assumed:unjudged"),
grade 0, aggregated_grade 0, n_raters 1, rater_trust null and the query's split. No schema change: select
human judgments with ``labels.rater_id != ASSUMED_RATER``.

Detection (``mode="auto"``): a query "has judged negatives" when any of its human judgments is grade 0. The
qrels are positive-only when fewer than ``POSITIVE_ONLY_MAX_SHARE`` (10%) of the golden queries have one;
only then are negatives added. ``mode="always"`` / ``"never"`` force the decision.

Sampling, per query: BM25 top-``depth`` ∪ dense top-``depth`` (``HybridRetriever.candidates``), judged
documents dropped, ordered by best rank in either retriever (then the other rank, then doc_id).
``round(hard_share * per_query)`` hard negatives are the first of that order; the rest are drawn uniformly
without replacement from the remaining candidates, with a generator seeded by ``seed`` and the query id (so
a query's sample does not depend on the other queries). A query with fewer candidates gets all of them.

Why ``hard_share`` is 0.2 by default: the top-ranked unjudged documents look exactly like the relevant ones to
BM25 and the bi-encoder. On Cranfield's calibration split (10 negatives a query), with half of them the
top-ranked, BM25 and cosine lose all signal in the pools (Spearman with the grade −0.05 / 0.08) and the offline
judge calibrated there agreed with the experts at QWK 0.17 (gate blocked); with 3 of 10, 0.03 / 0.17; drawn
uniformly from the top-100, 0.20 / 0.36. Two of ten hard keeps hard negatives among them without drowning the
signal the judge is calibrated on.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import numpy as np
import pandas as pd

ASSUMED_RATER = "assumed:unjudged"
POSITIVE_ONLY_MAX_SHARE = 0.10
Mode = Literal["auto", "always", "never"]


def judged_zero_share(labels: pd.DataFrame) -> float:
    """Share of golden queries with at least one human judgment of grade 0 (assumed rows ignored)."""
    human = labels[labels.rater_id != ASSUMED_RATER]
    if human.empty:
        return 0.0
    return float((human.grade == 0).groupby(human.query_id).any().mean())


def is_positive_only(labels: pd.DataFrame) -> bool:
    """True when fewer than ``POSITIVE_ONLY_MAX_SHARE`` of the golden queries have a judged grade 0."""
    return judged_zero_share(labels) < POSITIVE_ONLY_MAX_SHARE


def _query_rng(seed: int, query_id: str) -> np.random.Generator:
    return np.random.default_rng([seed, int.from_bytes(hashlib.sha256(query_id.encode()).digest()[:8], "little")])


def _sample(cands: pd.DataFrame, judged: set, n_hard: int, n_rest: int, rng: np.random.Generator
            ) -> tuple[list[str], list[str]]:
    """(hard, uniform) doc_ids from one query's candidates: the best-ranked unjudged, then a uniform draw."""
    far = np.iinfo(np.int32).max
    b = cands.bm25_rank.astype("float64").fillna(far).to_numpy()
    d = cands.dense_rank.astype("float64").fillna(far).to_numpy()
    order = pd.DataFrame({"doc_id": cands.doc_id.to_numpy(), "best": np.minimum(b, d), "other": np.maximum(b, d)})
    order = order[~order.doc_id.isin(judged)].drop_duplicates("doc_id")
    ids = order.sort_values(["best", "other", "doc_id"], kind="stable").doc_id.tolist()
    hard, rest = ids[:n_hard], ids[n_hard:]
    if len(rest) > n_rest:
        rest = [rest[i] for i in sorted(rng.choice(len(rest), size=n_rest, replace=False))]
    return hard, rest


def add_assumed_negatives(tables: dict[str, pd.DataFrame], per_query: int = 20, depth: int = 100,
                          hard_share: float = 0.2, mode: Mode = "auto", seed: int = 0, retriever=None
                          ) -> tuple[dict[str, pd.DataFrame], dict]:
    """Golden tables (queries, documents, golden_labels) with assumed negatives appended, and the stats.

    ``retriever``: a ``HybridRetriever`` over ``tables["documents"]`` to reuse (built here when None, and only
    when negatives are added). Assumed rows already present are replaced, so a second call gives the same
    tables. The input tables are not modified.
    """
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"mode must be 'auto', 'always' or 'never', got {mode!r}")
    if per_query < 1 or depth < 1:
        raise ValueError(f"per_query and depth must be >= 1, got per_query={per_query}, depth={depth}")
    if not 0.0 <= hard_share <= 1.0:
        raise ValueError(f"hard_share must be in [0, 1], got {hard_share}")
    missing = {"queries", "documents", "golden_labels"} - set(tables)
    if missing:
        raise KeyError(f"tables lack {sorted(missing)}")
    labels = tables["golden_labels"]
    human = labels[labels.rater_id != ASSUMED_RATER]
    share = judged_zero_share(human)
    positive_only = share < POSITIVE_ONLY_MAX_SHARE
    applied = mode == "always" or (mode == "auto" and positive_only)
    splits = sorted(human.split.unique())
    stats = {"mode": mode, "positive_only": positive_only, "judged_zero_query_share": round(share, 4),
             "applied": applied, "queries": int(human.query_id.nunique()), "assumed_negatives": 0, "hard": 0,
             "short_queries": 0, "per_split": {s: {"queries": int(human[human.split == s].query_id.nunique()),
                                                   "assumed_negatives": 0, "hard": 0} for s in splits}}
    out = dict(tables)
    if not applied:
        out["golden_labels"] = human.reset_index(drop=True)
        return out, stats

    split_of = human.groupby("query_id").split.first()
    queries = tables["queries"].drop_duplicates("query_id").set_index("query_id")
    unknown = set(split_of.index) - set(queries.index)
    if unknown:
        raise KeyError(f"{len(unknown)} golden query id(s) not in the queries table, e.g. {sorted(unknown)[:3]}")
    golden_q = queries.loc[split_of.index].reset_index()[["query_id", "text"]]
    if retriever is None:
        from flywheel.retrieval.hybrid import HybridRetriever

        retriever = HybridRetriever(tables["documents"])
    cands = retriever.candidates(golden_q, k_bm25=depth, k_dense=depth, n_random=0, seed=seed)
    judged = human.groupby("query_id").doc_id.agg(set)
    n_hard = int(round(hard_share * per_query))
    rows = []
    for qid, c in cands.groupby("query_id", sort=True):
        hard, rest = _sample(c, judged[qid], n_hard, per_query - n_hard, _query_rng(seed, qid))
        s = stats["per_split"][split_of[qid]]
        s["assumed_negatives"] += len(hard) + len(rest)
        s["hard"] += len(hard)
        stats["short_queries"] += len(hard) + len(rest) < per_query
        rows += [{"query_id": qid, "doc_id": d, "split": split_of[qid]} for d in hard + rest]
    stats["short_queries"] = int(stats["short_queries"]) + int(len(set(split_of.index) - set(cands.query_id)))
    stats["assumed_negatives"] = sum(s["assumed_negatives"] for s in stats["per_split"].values())
    stats["hard"] = sum(s["hard"] for s in stats["per_split"].values())
    neg = pd.DataFrame(rows, columns=["query_id", "doc_id", "split"]).assign(
        rater_id=ASSUMED_RATER, grade=0, rater_trust=None, aggregated_grade=0.0, n_raters=1)
    neg = neg.astype({"grade": human.grade.dtype, "aggregated_grade": human.aggregated_grade.dtype,
                      "n_raters": human.n_raters.dtype})
    out["golden_labels"] = pd.concat([human, neg.reindex(columns=human.columns)], ignore_index=True)
    return out, stats
