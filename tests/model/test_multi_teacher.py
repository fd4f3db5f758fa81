"""Multi-teacher distillation: a student distilled from the relevance teacher and the engagement teacher (trained
on simulated, position-biased click logs) follows the engagement teacher more, the larger its weight, and only
where engagement was observed."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from flywheel.data.lake import open_lake as lake
from flywheel.training import ladder
from tests.helpers import labelled_day

DATE = "2026-06-01"


@pytest.mark.slow
def test_engagement_weight_pulls_the_student_towards_the_engagement_teacher():
    from models.ranker import load_ranker, score_pairs

    paths, cfg, cal = labelled_day("configs/ci.yaml", DATE)
    jv = cal["judge_version"]
    teacher = ladder.train_teacher(jv, "fp-mt", cfg, paths)

    events = ladder.simulate_engagement(DATE, cfg, paths)
    assert events["simulated"] and events["clicks"] > 0
    ctr = events["ctr_by_position"]
    assert ctr[1] > ctr[2] > ctr[3]                        # the logs carry position bias
    eng = ladder.train_engagement_teacher(events["fingerprint"], cfg, paths)
    assert eng["rung"] == "engagement" and eng["simulated"]

    def student(weight):
        c = cfg.model_copy(update={"engagement": cfg.engagement.model_copy(update={"weight": weight})})
        return ladder.distil("student", teacher, jv, c, paths, engagement=eng if weight else None)

    plain, multi = student(0.0), student(3.0)
    assert "engagement_teacher" not in plain and multi["engagement_teacher"] == eng["model_version"]
    assert 0 < multi["engagement_observed_share"] < 1

    # what the engagement term optimises: distance to the engagement teacher's scores (mapped onto the relevance
    # teacher's scale) on pairs with observed engagement; elsewhere the student keeps following the relevance teacher
    rel = ladder.teacher_scores(teacher, jv, paths)
    e = ladder.teacher_scores(eng, jv, paths).teacher_score.to_numpy(dtype=float)
    r = rel.teacher_score.to_numpy(dtype=float)
    target = (e - e.mean()) / e.std() * r.std() + r.mean()
    from flywheel.data.engagement import engagement_targets

    seen = engagement_targets(lake(paths).read("engagement_events"))
    keys = set(zip(seen.query_id, seen.doc_id))
    observed = np.array([(q, d) in keys for q, d in zip(rel.query_id, rel.doc_id)])

    def scores(rung):
        m, t, c = load_ranker(rung["path"])
        return np.array(score_pairs(m, t, c, rel["query"].tolist(), rel.title.tolist(), rel.text.tolist()))

    s_plain, s_multi = scores(plain), scores(multi)
    mse = lambda s, t, m: float(((s - t)[m] ** 2).mean())  # noqa: E731
    eng_plain, eng_multi = mse(s_plain, target, observed), mse(s_multi, target, observed)
    rel_plain, rel_multi = mse(s_plain, r, ~observed), mse(s_multi, r, ~observed)
    print(f"observed share {observed.mean():.2f}; MSE to the engagement teacher on observed pairs: plain "
          f"{eng_plain:.3f}, multi {eng_multi:.3f}; MSE to the relevance teacher elsewhere: plain {rel_plain:.3f}, "
          f"multi {rel_multi:.3f}; Spearman(student, engagement) plain "
          f"{spearmanr(s_plain[observed], e[observed]).statistic:.3f}, multi "
          f"{spearmanr(s_multi[observed], e[observed]).statistic:.3f}")
    # measured: observed share 0.18; MSE to the engagement teacher 0.376 → 0.284, Spearman 0.746 → 0.817;
    # MSE to the relevance teacher on the other pairs 0.150 → 0.191 (1.27x): the engagement term may cost some
    # relevance fidelity where engagement was not observed, not much more than that
    assert eng_multi < 0.85 * eng_plain
    assert spearmanr(s_multi[observed], e[observed]).statistic > spearmanr(s_plain[observed], e[observed]).statistic + 0.03
    assert rel_multi < 1.4 * rel_plain

    # with the retrieval pool on, the student also learns from unlabelled candidates: the parents score them, the
    # engagement term stays masked there (nothing was observed), and every loss stays finite
    c = cfg.model_copy(update={"engagement": cfg.engagement.model_copy(update={"weight": 3.0}),
                               "ladder": cfg.ladder.model_copy(update={"pool_per_query": 8})})
    pooled = ladder.distil("student", teacher, jv, c, paths, engagement=eng)
    labelled = ladder.teacher_scores(teacher, jv, paths)
    assert pooled["train_pairs"] > multi["train_pairs"]
    assert multi["pairs"] == len(labelled) > multi["train_pairs"]           # the validation fold trains nothing
    assert 0 < pooled["engagement_observed_share"] < multi["engagement_observed_share"]
    assert np.isfinite(pooled["loss_last"]) and pooled["model_version"] != multi["model_version"]
    stored = lake(paths).read("teacher_scores")
    assert len(stored[stored.model_version == teacher["model_version"]]) == pooled["pairs"]

    # pseudo-queries: documents' titles join the training queries, each with its own pool scored by the teacher;
    # none is the text of a golden query (the held-out test queries included)
    c2 = c.model_copy(update={"ladder": c.ladder.model_copy(update={"pseudo_queries": 20})})
    pairs = ladder.distillation_pairs(teacher, jv, 8, c2, paths)
    pseudo = pairs[pairs.query_id.str.startswith("pseudo:")]
    assert pseudo.query_id.nunique() == 20 and pseudo.grade.isna().all() and pseudo.teacher_score.notna().all()
    assert not set(pseudo["query"].str.lower()) & set(lake(paths).read("queries").text.str.lower())
    assert len(pairs) - len(pseudo) == pooled["pairs"]


def test_pseudo_queries_never_repeat_a_golden_query_and_are_reproducible():
    import pandas as pd

    docs = pd.DataFrame({"doc_id": [f"d{i}" for i in range(8)],
                         "title": ["Data Scientist", "data scientist ", "Nurse", "", "Welder", "Chef", "Pilot",
                                   "Crime by area"]})
    queries = pd.DataFrame({"text": ["NURSE", "crime by area"]})         # e.g. a held-out test query, any case
    got = ladder.pseudo_queries(docs, queries, 10, seed=0)
    assert sorted(got.text) == ["Chef", "Data Scientist", "Pilot", "Welder"]   # no duplicate, empty or golden title
    assert got.query_id.str.startswith("pseudo:").all()
    few = ladder.pseudo_queries(docs, queries, 2, seed=3)
    assert len(few) == 2 and few.equals(ladder.pseudo_queries(docs, queries, 2, seed=3))


def test_pseudo_queries_need_a_pool():
    from flywheel.config import load_config

    cfg = load_config("configs/ci.yaml")
    with pytest.raises(ValueError, match="pool_per_query"):
        cfg.ladder.model_validate({**cfg.ladder.model_dump(), "pool_per_query": 0, "pseudo_queries": 5})
