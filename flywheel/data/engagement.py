"""Engagement: impressions, clicks and applies per (day, query, document), and the targets its teacher learns.

The bundled demo has no click logs. ``simulate_day`` generates them with a documented position-based click model
over the human golden grades and marks every row ``simulated = True``; the report and the evaluation say
"simulated" wherever they show engagement. Production writes real logs into the same ``engagement_events`` table
(``simulated = False``) and nothing downstream changes.

Click model (position-based model, PBM; Chuklin, Markov & de Rijke 2015), per session of a query:
    documents are shown in BM25 order (the ranking users saw), at ranks r = 1, 2, ...
    P(examine | r)            = (1 / r) ** eta
    P(click | examined, g)    = eps + (1 − eps) · (2**g − 1) / (2**g_max − 1)      (g = rounded human mean grade)
    P(apply | clicked, g)     = beta · g / g_max                                  (g_max: the policy's top grade)
Sessions per query and day ~ Poisson(sessions_per_query). Only golden *calibration* queries get sessions: test
queries must stay unseen by anything that trains.

Target for the engagement teacher (inverse-propensity corrected): (clicks + applies) / (2 · Σ P(examine | r) over
impressions), clipped to [0, 1] — the mean of the debiased click rate and the debiased apply rate, so position
bias is removed and the teacher learns what users want, not where documents were shown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flywheel.data.lake import sha256_text


def simulate_day(date: str, golden, bm25_scores, eta: float = 1.0, eps: float = 0.05, beta: float = 0.3,
                 sessions_per_query: float = 30.0, seed: int = 0, max_grade: int | None = None) -> pd.DataFrame:
    """Simulated engagement_events rows for ``date``: one row per (query, document shown), with its position.

    golden: a Golden (``pairs('calibration')`` gives query_id, doc_id, query, aggregated_grade);
    bm25_scores(pairs) -> scores used to order each query's documents as users saw them; max_grade: the policy's
    top grade (``policy.max_grade``), else the top grade any rater gave (``golden.labels``, or the rounded means)."""
    pairs = golden.pairs("calibration")
    pairs = pairs.assign(bm25=np.asarray(bm25_scores(pairs), dtype=float))
    if max_grade is None:
        labels = getattr(golden, "labels", None)
        max_grade = int(labels.grade.max() if labels is not None else np.round(pairs.aggregated_grade).max())
    g_max = max(max_grade, 1)
    rows = []
    for qid, grp in pairs.groupby("query_id", sort=True):
        rng = np.random.default_rng([seed, int(sha256_text(date, qid)[:8], 16)])
        shown = grp.sort_values(["bm25", "doc_id"], ascending=[False, True])
        n = int(rng.poisson(sessions_per_query))
        grade = np.clip(np.round(shown.aggregated_grade.to_numpy()), 0, g_max)
        ranks = np.arange(1, len(shown) + 1)
        p_exam = (1.0 / ranks) ** eta
        p_click = eps + (1 - eps) * (2 ** grade - 1) / (2 ** g_max - 1)
        p_apply = beta * grade / g_max
        exam = rng.random((n, len(shown))) < p_exam
        click = exam & (rng.random((n, len(shown))) < p_click)
        apply = click & (rng.random((n, len(shown))) < p_apply)
        for j, did in enumerate(shown.doc_id):
            rows.append({"date": date, "query_id": qid, "doc_id": did, "position": int(ranks[j]),
                         "impressions": n, "clicks": int(click[:, j].sum()), "applies": int(apply[:, j].sum()),
                         "simulated": True})
    out = pd.DataFrame(rows)
    return out.astype({"position": "int16", "impressions": "int32", "clicks": "int32", "applies": "int32"})


def engagement_targets(events: pd.DataFrame, eta: float = 1.0) -> pd.DataFrame:
    """Per (query, document): impressions, clicks, applies summed over days, and the position-debiased target
    ``clip((clicks + applies) / (2 · Σ impressions · (1/position)**eta), 0, 1)``. Pairs never shown are absent."""
    if events.empty:
        return pd.DataFrame(columns=["query_id", "doc_id", "impressions", "clicks", "applies", "engagement"])
    e = events.assign(examined=events.impressions * (1.0 / events.position.astype(float)) ** eta)
    agg = e.groupby(["query_id", "doc_id"], as_index=False).agg(
        impressions=("impressions", "sum"), clicks=("clicks", "sum"), applies=("applies", "sum"),
        examined=("examined", "sum"))
    agg["engagement"] = ((agg.clicks + agg.applies) / (2 * agg.examined.clip(lower=1e-9))).clip(0, 1)
    return agg[agg.impressions > 0].drop(columns="examined").reset_index(drop=True)
