"""Candidate stratification by predicted grade: coverage of the scale, fill-up, determinism."""

import numpy as np
import pandas as pd

from flywheel.labeling.candidates import stratify


def _pool(grades_by_query: dict[str, list[int]]) -> pd.DataFrame:
    rows = []
    for q, grades in grades_by_query.items():
        for r, g in enumerate(grades):
            rows.append({"query_id": q, "doc_id": f"{q}-d{r}", "bm25_rank": r + 1, "dense_rank": None,
                         "predicted_grade": g})
    df = pd.DataFrame(rows)
    return df.astype({"bm25_rank": "Int32", "dense_rank": "Int32"})


def test_draws_up_to_per_grade_from_each_predicted_grade():
    # a pool dominated by top grades (as top-k retrieval is): 20 threes, 10 twos, 3 ones, 1 zero
    pool = _pool({"q1": [3] * 20 + [2] * 10 + [1] * 3 + [0]})
    out = stratify(pool, per_grade=3, n_grades=4)
    counts = out.predicted_grade.value_counts().to_dict()
    # the scarce strata are taken whole; the 2 free slots go to the highest grade that still has pairs
    assert counts == {0: 1, 1: 3, 2: 3, 3: 5}
    leftovers = out[~out.doc_id.isin(stratify(pool, 3, 4).doc_id)]
    assert leftovers.empty          # deterministic: same pool and seed, same draw


def test_balanced_pool_gives_exactly_per_grade_each_and_seed_changes_the_draw():
    pool = _pool({"q1": [0, 1, 2, 3] * 10, "q2": [3, 2, 1, 0] * 10})
    a = stratify(pool, per_grade=2, n_grades=4, seed=0)
    assert (a.groupby(["query_id", "predicted_grade"]).size() == 2).all()
    b = stratify(pool, per_grade=2, n_grades=4, seed=1)
    assert set(a.doc_id) != set(b.doc_id)
    assert not a.duplicated(["query_id", "doc_id"]).any()


def test_small_pool_keeps_everything():
    pool = _pool({"q1": [3, 3, 1]})
    out = stratify(pool, per_grade=3, n_grades=4)
    assert sorted(out.doc_id) == sorted(pool.doc_id)
    assert np.array_equal(out.predicted_grade.sort_values().to_numpy(), [1, 3, 3])
