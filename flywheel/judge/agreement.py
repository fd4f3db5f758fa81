"""Agreement between a judge and the human golden labels, and the gate that blocks bulk labelling.

Metrics come from scikit-learn and scipy; ``fit_cutpoints`` maps a continuous score onto the policy's grade
scale by maximising quadratic-weighted kappa on calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import cohen_kappa_score, confusion_matrix


def on_scale(grades, n_grades: int, what: str) -> np.ndarray:
    """``grades`` as ints, or ValueError when one lies outside the policy's scale 0..n_grades − 1."""
    if n_grades < 2:
        raise ValueError(f"a grade scale has at least 2 grades, got n_grades={n_grades}")
    g = np.asarray(grades)
    off = g[~((g >= 0) & (g <= n_grades - 1))]      # NaN is off the scale too
    if off.size:
        hint = ": the golden set and the policy disagree on the number of grades" if what == "human" else ""
        raise ValueError(f"{what} grade {off.flat[0]} is outside the policy's scale 0..{n_grades - 1}{hint}")
    return g.astype(int)


def human_grades(human_mean, n_grades: int) -> np.ndarray:
    """The human aggregated grades rounded to the scale (a mean of on-scale grades stays on it)."""
    return on_scale(np.round(np.asarray(human_mean, dtype=float)), n_grades, "human")


def agreement(judge: np.ndarray, human_mean: np.ndarray, n_grades: int) -> dict:
    """Judge grades vs the human aggregated grade (rounded for the categorical figures), on the policy's scale of
    ``n_grades`` grades (0..n_grades − 1; a grade off the scale raises ValueError).

    qwk: quadratic-weighted Cohen's kappa; spearman: rank correlation with the unrounded human mean;
    exact / within_one: share of pairs whose grade equals / is within one of the rounded human grade;
    confusion: n_grades × n_grades counts, rows human, columns judge.
    """
    judge = on_scale(judge, n_grades, "judge")
    human = human_grades(human_mean, n_grades)
    labels = list(range(n_grades))
    rho = spearmanr(judge, human_mean).statistic if len(set(judge)) > 1 else 0.0
    return {
        "qwk": float(cohen_kappa_score(human, judge, weights="quadratic", labels=labels)),
        "spearman": float(np.nan_to_num(rho)),
        "exact": float((judge == human).mean()),
        "within_one": float((np.abs(judge - human) <= 1).mean()),
        "n": int(len(judge)),
        "confusion": confusion_matrix(human, judge, labels=labels).tolist(),  # rows: human, cols: judge
    }


def quadratic_kappa(human: np.ndarray, judge: np.ndarray, n_grades: int) -> float:
    """Quadratic-weighted Cohen's kappa of two integer gradings on 0..n_grades − 1, in numpy:
    1 − Σ W∘O / Σ W∘E with W_ij = (i − j)², O the confusion counts and E the outer product of its margins / n;
    nan when E carries no weight (one grade only). Equal to ``sklearn.metrics.cohen_kappa_score(human, judge,
    weights="quadratic", labels=range(n_grades))`` (tested against it) without its per-call validation, which
    dominated the bootstrap and the cut-point search."""
    human, judge = np.asarray(human, dtype=int), np.asarray(judge, dtype=int)
    observed = np.bincount(human * n_grades + judge, minlength=n_grades * n_grades).reshape(n_grades, n_grades)
    grades = np.arange(n_grades)
    weights = (grades[:, None] - grades[None, :]) ** 2
    expected = np.outer(observed.sum(1), observed.sum(0)) / max(observed.sum(), 1)
    denominator = float((weights * expected).sum())
    return 1.0 - float((weights * observed).sum()) / denominator if denominator else float("nan")


def apply_cutpoints(score: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """grade = number of cut-points the score reaches (cuts ascending, len = n_grades − 1)."""
    return np.searchsorted(np.asarray(cuts), np.asarray(score), side="right").astype(int)


def fit_cutpoints(score: np.ndarray, human_mean: np.ndarray, n_grades: int, rounds: int = 3) -> np.ndarray:
    """n_grades − 1 cut-points maximising QWK: start from quantiles matching the human grade distribution, then
    coordinate search over the observed scores. Deterministic."""
    score = np.asarray(score, dtype=float)
    human = human_grades(human_mean, n_grades)
    share = np.cumsum(np.bincount(human, minlength=n_grades))[:-1] / len(human)
    cuts = np.quantile(score, share)
    grid = np.unique(np.quantile(score, np.linspace(0, 1, 101)))

    def qwk(c):
        return quadratic_kappa(human, apply_cutpoints(score, c), n_grades)

    best = qwk(cuts)
    for _ in range(rounds):
        for k in range(n_grades - 1):
            lo = cuts[k - 1] if k else -np.inf
            hi = cuts[k + 1] if k < n_grades - 2 else np.inf
            for v in grid[(grid > lo) & (grid < hi)]:
                trial = cuts.copy(); trial[k] = v
                s = qwk(trial)
                if s > best + 1e-12:
                    best, cuts = s, trial
    return np.sort(cuts)


def bootstrap_ci(judge: np.ndarray, human_mean: np.ndarray, metric: str = "qwk", n: int = 500,
                 seed: int = 0, *, n_grades: int) -> tuple[float, float]:
    """95% percentile interval of a metric over pairs resampled with replacement (scale of ``n_grades``)."""
    rng = np.random.default_rng(seed)
    judge, human_mean = on_scale(np.asarray(judge), n_grades, "judge"), np.asarray(human_mean, dtype=float)
    human = human_grades(human_mean, n_grades)
    if metric == "qwk":
        value = lambda i: quadratic_kappa(human[i], judge[i], n_grades)  # noqa: E731
    elif metric == "spearman":
        value = lambda i: (float(np.nan_to_num(spearmanr(judge[i], human_mean[i]).statistic))  # noqa: E731
                           if len(set(judge[i])) > 1 else 0.0)
    else:
        value = lambda i: agreement(judge[i], human_mean[i], n_grades)[metric]  # noqa: E731
    vals = [value(rng.integers(0, len(judge), len(judge))) for _ in range(n)]
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    reason: str


def calibration_gate(metrics: dict, min_qwk: float, max_unparsed_rate: float = 0.05) -> GateDecision:
    """Pure decision: may this judge version label in bulk?"""
    qwk = metrics.get("qwk")
    if qwk is None or not np.isfinite(qwk):
        return GateDecision(False, "no agreement figure: calibration did not produce a kappa")
    unparsed = metrics.get("unparsed_rate", 0.0)
    if unparsed > max_unparsed_rate:
        return GateDecision(False, f"{unparsed:.1%} of calibration replies did not parse (limit {max_unparsed_rate:.0%})")
    if qwk < min_qwk:
        return GateDecision(False, f"judge agrees with humans at QWK {qwk:.3f}, below the threshold {min_qwk:.3f}: "
                                   f"bulk labelling is blocked until the judge or policy is improved")
    return GateDecision(True, f"QWK {qwk:.3f} ≥ threshold {min_qwk:.3f}")


def krippendorff_alpha(labels, judge_grades=None, *, n_grades: int) -> float | None:
    """Ordinal Krippendorff's alpha over the golden pairs' raters (krippendorff package), on a scale of
    ``n_grades`` grades.

    labels: one row per rater judgment (query_id, doc_id, grade). judge_grades: optional mapping
    (query_id, doc_id) -> grade, added as one more rater on every pair it graded. Comparing alpha with and
    without the judge says whether the judge behaves like one more human.
    """
    import krippendorff

    on_scale(labels.grade.to_numpy(), n_grades, "human")
    counts = labels.pivot_table(index=["query_id", "doc_id"], columns="grade", values="rater_id", aggfunc="count",
                                fill_value=0).reindex(columns=range(n_grades), fill_value=0)
    if judge_grades is not None:
        for key, g in judge_grades.items():
            if key in counts.index and g is not None and g == g:
                counts.loc[key, int(on_scale([g], n_grades, "judge")[0])] += 1
    if not (counts.sum(axis=1) >= 2).any():
        return None      # no pair has two ratings (single-rater qrels): alpha is undefined
    return float(krippendorff.alpha(value_counts=counts.to_numpy(), level_of_measurement="ordinal"))


def sliced_agreement(judge: np.ndarray, pairs, n_grades: int) -> dict:
    """Agreement per slice of the pairs: query length (words), document length (tertiles of characters) and
    the human grade (rounded mean, on the scale of ``n_grades``). Each slice: n, exact, within_one, and QWK where
    the slice has several human grades."""
    import pandas as pd

    judge = np.asarray(judge, dtype=int)
    human = np.asarray(pairs.aggregated_grade, dtype=float)
    qlen = pairs["query"].str.split().str.len().clip(upper=3).map({1: "1 word", 2: "2 words", 3: "3+ words"})
    dlen = pairs.title.str.len() + pairs.text.str.len()
    dcut = pd.qcut(dlen.rank(method="first"), 3, labels=["short", "medium", "long"])
    grade = pd.Series(human_grades(human, n_grades), index=pairs.index).map(lambda g: f"human {g}")
    out: dict = {}
    for dim, key in (("query_length", qlen), ("document_length", dcut), ("grade", grade)):
        out[dim] = {}
        for value in sorted(pd.unique(key.astype(str))):
            m = (key.astype(str) == value).to_numpy()
            a = agreement(judge[m], human[m], n_grades)
            out[dim][value] = {"n": int(m.sum()), "exact": a["exact"], "within_one": a["within_one"],
                               "qwk": a["qwk"] if len(set(np.round(human[m]))) > 1 else None,
                               "mean_judge_grade": float(judge[m].mean())}
    return out
