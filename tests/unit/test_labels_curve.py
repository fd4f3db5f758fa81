"""bench/labels_curve.py's points: smaller budgets nest in larger ones, each query keeps at most K labels drawn
across grades, the first P pseudo-queries join in the order they were made, and the validation fold keeps every
label at every point (so points are validated on the same labels)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def curve(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import labels_curve

    return labels_curve


def _labels(seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for q in [f"q{i}" for i in range(6)] + [f"pseudo:{i}" for i in range(10)]:
        for d in range(40):
            rows.append({"query_id": q, "doc_id": f"d{d}", "grade": int(rng.random() < 0.3)})
    return pd.DataFrame(rows)


def test_points_nest_cap_labels_per_query_and_keep_the_validation_fold_whole(curve):
    pairs = _labels()
    order = [f"pseudo:{i}" for i in range(10)]
    held = {"q0", "q3"}
    small = curve.subset(pairs, 8, 4, 2, order, 0, held)
    big = curve.subset(pairs, 16, 7, 2, order, 0, held)
    key = lambda df: set(zip(df.query_id, df.doc_id))      # noqa: E731
    assert key(small) <= key(big)                                    # nested: more budget only adds labels
    n = small.groupby("query_id").size()
    assert set(n.index) == {f"q{i}" for i in range(6)} | set(order[:4])
    assert (n.drop(list(held)) == 8).all() and (n[list(held)] == 40).all()
    for q, g in small[~small.query_id.isin(held)].groupby("query_id"):   # both grades drawn, 4 each where possible
        have = pairs[pairs.query_id == q].grade.value_counts()
        assert g.grade.value_counts().get(1, 0) == min(4 + max(0, 4 - have.get(0, 0)), have.get(1, 0))
    assert set(big.query_id[big.query_id.str.startswith("pseudo:")]) == set(order[:7])


def test_points_are_parsed_or_refused_with_the_form_to_use(curve):
    assert curve.parse_points("8:0, 32:300") == [(8, 0), (32, 300)]
    for bad in ("8", "8:x", "0:5", ""):
        with pytest.raises(SystemExit, match="K:P"):
            curve.parse_points(bad)
    with pytest.raises(SystemExit, match="below the policy's 4 grades"):     # K // grades from each grade: 0
        curve.parse_points("3:10,8:0", n_grades=4)
