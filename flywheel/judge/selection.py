"""Choosing the judge's prompt variant or few-shot exemplars on golden data, without fooling ourselves.

The calibration split is divided by query into folds: candidates are compared on a *development* fold, the winner
is then measured once on a *held-out* fold that played no part in the choice (the figure to believe), and
exemplars, when they come from the golden set, are drawn from a third *exemplar pool* fold so a pair is never
graded with itself in the prompt.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd

from flywheel.data.lake import sha256_text


def query_folds(pairs: pd.DataFrame, shares: dict[str, float], seed: int = 0) -> pd.Series:
    """Assign each pair a fold name by its query (seeded shuffle of the queries, then cut by ``shares``)."""
    queries = np.array(sorted(pairs.query_id.unique()))
    order = sorted(queries, key=lambda q: sha256_text(str(seed), q))
    names, cuts = list(shares), np.cumsum(list(shares.values())) / sum(shares.values())
    fold_of = {}
    for i, q in enumerate(order):
        fold_of[q] = names[int(np.searchsorted(cuts, (i + 0.5) / len(order)))]
    return pairs.query_id.map(fold_of)


def draw_exemplars(pool: pd.DataFrame, n_grades: int, rng: np.random.Generator, max_chars: int = 240,
                   fields=("title", "text")) -> list[dict]:
    """One golden pair per grade (aggregated grade rounded), preferring pairs several raters judged; each shows
    the document by ``fields`` only (the policy's ``document_fields``), and pairs empty in one of them are skipped."""
    out = []
    for g in range(n_grades):
        cand = pool[pool.aggregated_grade.round().astype(int) == g]
        for f in fields:
            cand = cand[cand[f].fillna("").astype(str).str.strip() != ""]
        if cand.empty:
            continue
        best = cand[cand.n_raters >= cand.n_raters.max()] if "n_raters" in cand else cand
        row = best.iloc[int(rng.integers(len(best)))]
        out.append({"query": str(row["query"]), **{f: str(row[f])[:max_chars] for f in fields}, "grade": g,
                    "why": f"Human raters' mean grade {row.aggregated_grade:.2f} (golden calibration pair)."})
    return out


def select(candidates: list[str], dev_qwk: Callable[[str], dict], heldout: Callable[[str], dict],
           min_gain: float = 0.0) -> dict:
    """Score every candidate on the development fold and measure the chosen one once on the held-out fold.

    The first candidate is the incumbent (the policy's own examples, the default prompt): another replaces it only
    when its development QWK is higher by at least ``min_gain`` — on a few dozen queries, smaller differences are
    noise, and chasing them picks a worse judge as often as a better one. ``dev_qwk``/``heldout`` return agreement
    dicts (with at least ``qwk``)."""
    rows = []
    for name in candidates:
        m = dev_qwk(name)
        rows.append({"variant": name, "dev_qwk": float(m["qwk"]), "dev_n": int(m.get("n", 0)),
                     "dev_qwk_ci95": m.get("qwk_ci95")})
    best = max(rows, key=lambda r: (np.nan_to_num(r["dev_qwk"], nan=-2.0), -rows.index(r)))
    first = rows[0]
    gain = np.nan_to_num(best["dev_qwk"], nan=-2.0) - np.nan_to_num(first["dev_qwk"], nan=-2.0)
    if best is not first and gain < min_gain:
        reason = (f"kept {first['variant']}: the best candidate ({best['variant']}) gains {gain:.3f} QWK on the "
                  f"development fold, less than the {min_gain:.3f} required")
        best = first
    else:
        reason = (f"{best['variant']} is the incumbent and the best" if best is first else
                  f"{best['variant']} beats {first['variant']} by {gain:.3f} QWK on the development fold")
    for r in rows:
        r["chosen"] = r is best
    return {"chosen": best["variant"], "reason": reason, "min_gain": min_gain, "candidates": rows,
            "heldout": heldout(best["variant"])}
