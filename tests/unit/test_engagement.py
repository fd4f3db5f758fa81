"""The simulated click model matches its formulas, and the engagement target removes the position bias."""

import numpy as np
import pandas as pd

from flywheel.data.engagement import engagement_targets, simulate_day


class _Golden:
    def __init__(self, pairs):
        self._p = pairs

    def pairs(self, split):
        assert split == "calibration"          # test queries never get sessions
        return self._p


def _golden(grades=(3, 0, 3)):
    # two queries, each with docs of these grades in BM25 order (scores 3, 2, 1)
    rows = []
    for q in ("qa", "qb"):
        for i, g in enumerate(grades):
            rows.append({"query_id": q, "doc_id": f"{q}-{i}", "query": q, "aggregated_grade": float(g), "bm25": 3 - i})
    return _Golden(pd.DataFrame(rows))


def test_click_rates_follow_the_position_based_model():
    ev = simulate_day("2026-01-01", _golden(), lambda p: p.bm25, eta=1.0, eps=0.05, beta=0.3,
                      sessions_per_query=4000, seed=0, max_grade=3)
    assert ev.simulated.all() and set(ev.position) == {1, 2, 3}
    by = ev.groupby("position")[["impressions", "clicks", "applies"]].sum()
    ctr = by.clicks / by.impressions
    # P(click at r) = (1/r) · (eps + (1 − eps) · (2^g − 1)/7): rank 1 grade 3 → 1.0, rank 2 grade 0 → 0.025,
    # rank 3 grade 3 → 1/3
    for r, p in {1: 1.0, 2: 0.025, 3: 1 / 3}.items():
        n = by.impressions[r]
        assert abs(ctr[r] - p) <= 4 * np.sqrt(max(p * (1 - p), 1e-4) / n) + 1e-9, (r, ctr[r], p)
    # applies: P(apply | click, g=3) = beta
    assert abs(by.applies[1] / by.clicks[1] - 0.3) < 0.03


def test_debiased_target_is_the_same_for_the_same_grade_at_any_position():
    ev = simulate_day("2026-01-01", _golden((2, 0, 2)), lambda p: p.bm25, sessions_per_query=4000, seed=1,
                      max_grade=3)
    t = engagement_targets(ev).set_index("doc_id")
    raw = (t.clicks / t.impressions)
    assert raw["qa-0"] > 2.5 * raw["qa-2"]                          # raw CTR: top position wins
    # debiased: grade 2 at rank 1 and at rank 3 both ≈ (0.457 + 0.457 · 0.2) / 2 = 0.274 (nothing saturates)
    assert abs(t.engagement["qa-0"] - 0.274) < 0.03 and abs(t.engagement["qa-2"] - 0.274) < 0.03
    assert t.engagement["qa-1"] < 0.05                              # the irrelevant document stays low


def test_same_day_and_seed_reproduce_the_logs():
    a = simulate_day("2026-01-02", _golden(), lambda p: p.bm25, seed=3)
    b = simulate_day("2026-01-02", _golden(), lambda p: p.bm25, seed=3)
    c = simulate_day("2026-01-03", _golden(), lambda p: p.bm25, seed=3)
    assert a.equals(b) and not a.equals(c)
