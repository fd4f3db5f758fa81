"""Do no harm: a rung validated on held-out queries ends on its best state, and on its starting point when
training only makes it worse; the validation fold is seeded, by query, and the same for every rung."""

import numpy as np
import pandas as pd
import pytest
import torch

from flywheel.metrics import ndcg_at_10
from models.cross_encoder import build_cross_encoder
from models.ranker import ScoringContract, score_pairs
from models.train import TrainConfig, train_ranker


@pytest.fixture(scope="module")
def toy():
    from flywheel.data.golden import load_golden

    p = load_golden().pairs("calibration")
    qs = sorted(p.query_id.unique())
    p = p[p.query_id.isin(qs[:24])].reset_index(drop=True)
    p["target"] = p.aggregated_grade / 3.0
    p["grade"] = p.aggregated_grade.round()
    return p


def _split(p):
    qs = sorted(p.query_id.unique())
    return p[p.query_id.isin(qs[:16])], p[p.query_id.isin(qs[16:])]


def _ndcg(model, tok, contract, pairs):
    s = score_pairs(model, tok, contract, pairs["query"].tolist(), pairs.title.tolist(), pairs.text.tolist())
    return ndcg_at_10(pairs, s, grade_col="grade")


def test_training_on_inverted_labels_returns_the_starting_point_exactly(toy):
    """Targets that reward the wrong documents: every trained state ranks the held-out queries worse than the
    pretrained start, so the loop must hand back the start — weights bit for bit — and say so."""
    train, val = _split(toy)
    model, tok = build_cross_encoder([0, 1], seed=0)
    contract = ScoringContract(max_length=64)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    start_ndcg = _ndcg(model, tok, contract, val)
    bad = train.assign(target=1.0 - train.target)
    res = train_ranker(model, tok, contract, bad, "target", "labels",
                       TrainConfig(epochs=3, lr=3e-3, batch_size=16, eval_every=4, warmup_frac=0.0),
                       validate=lambda m: _ndcg(m, tok, contract, val))
    trained = [v for s, v in res.history[1:]]
    print(f"start {start_ndcg:.4f}, trained states {[round(v, 4) for v in trained]}")
    assert res.history[0] == (0, pytest.approx(start_ndcg))
    assert max(trained) < start_ndcg                    # training really did harm
    assert res.kept == "start" and res.best_step == 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in start.items())
    assert _ndcg(model, tok, contract, val) == pytest.approx(start_ndcg)
    assert res.summary()["kept"] == "start" and len(res.summary()["validation_curve"]) == len(res.history)


def test_the_best_validated_state_is_kept_and_patience_stops_early(toy):
    train, val = _split(toy)
    model, tok = build_cross_encoder([0, 1], seed=0)
    contract = ScoringContract(max_length=64)
    seen = []

    def validate(m):
        v = _ndcg(m, tok, contract, val)
        seen.append({k: t.clone() for k, t in m.state_dict().items()})
        return v

    res = train_ranker(model, tok, contract, train, "target", "labels",
                       TrainConfig(epochs=4, lr=1e-4, batch_size=16, eval_every=3, patience=2), validate=validate)
    best = max(v for _, v in res.history)
    assert res.best_score == best and res.kept in {"best", "start"}
    i = [s for s, _ in res.history].index(res.best_step)
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in seen[i].items())   # ends on that very state
    after_best = [v for s, v in res.history if s > res.best_step]
    if res.stopped_early:
        assert len(after_best) == 2 and all(v <= best + 1e-4 for v in after_best)
    steps_per_epoch = int(np.ceil(len(train) / 16))
    assert res.stopped_early == (len(res.losses) < 4 * steps_per_epoch)


def test_without_validation_the_last_state_is_kept(toy):
    model, tok = build_cross_encoder([0], seed=0)
    res = train_ranker(model, tok, ScoringContract(max_length=64), toy.head(32), "target", "labels",
                       TrainConfig(epochs=1, lr=1e-4, batch_size=16))
    assert res.kept == "last" and res.history == [] and len(res.losses) == 2


def test_validation_fold_is_seeded_by_query_and_never_trains():
    from flywheel.config import FlywheelConfig
    from flywheel.training.ladder import split_validation, validation_queries

    qs = [f"q{i}" for i in range(60)] + [f"pseudo:d{i}" for i in range(40)]
    pairs = pd.DataFrame({"query_id": np.repeat(qs, 3), "grade": 1.0})
    pairs.loc[pairs.query_id.str.startswith("pseudo:d3"), "grade"] = np.nan      # some unlabelled pool rows
    cfg = FlywheelConfig()
    train, val = split_validation(pairs, cfg)
    assert not set(train.query_id) & set(val.query_id)
    assert val.grade.notna().all() and not val.query_id.str.startswith("pseudo:").any()   # real queries validate
    assert 0.1 < val.query_id.nunique() / 60 < 0.3                                       # share 0.2
    assert len(train) + len(val) == len(pairs)
    again, _ = split_validation(pairs.sample(frac=1, random_state=3), cfg)
    assert set(again.query_id) == set(train.query_id)                                    # order does not matter
    other = validation_queries(pd.Series(qs[:60]), 0.2, seed=1)
    assert other != set(val.query_id)                                                    # the seed does
    off = cfg.model_copy(update={"ladder": cfg.ladder.model_copy(update={"validation_share": 0.0})})
    t2, v2 = split_validation(pairs, off)
    assert len(v2) == 0 and len(t2) == len(pairs)


def test_teacher_targets_follow_the_judge_score_not_only_its_grade():
    from flywheel.training.ladder import teacher_targets

    p = pd.DataFrame({"grade": [0, 1, 1, 3, 2], "score": [-0.4, 0.6, 1.4, 3.3, np.nan]})
    np.testing.assert_allclose(teacher_targets(p, 3, "score"), [0.0, 0.2, 1.4 / 3, 1.0, 2 / 3])
    np.testing.assert_allclose(teacher_targets(p, 3, "grade"), [0, 1 / 3, 1 / 3, 1, 2 / 3])
    np.testing.assert_allclose(teacher_targets(p, 4, "score")[3], 3.3 / 4)


def test_distilled_rungs_validate_on_whole_pools_and_pseudo_queries_by_the_parents_ranking(toy):
    """ladder.distil_validation "parent": the fold holds every row of its queries (labelled or pool) and the same
    share of pseudo-queries, none of them trains; the metric is NDCG@10 against the parent's scores binned on the
    scale, so a rung that ranks exactly like its parent scores 1 and one that ranks backwards scores less."""
    from flywheel.config import FlywheelConfig
    from flywheel.training.ladder import parent_ndcg, split_validation

    qs = [f"q{i}" for i in range(60)] + [f"pseudo:d{i}" for i in range(60)]
    pairs = pd.DataFrame({"query_id": np.repeat(qs, 4), "grade": 1.0})
    pairs.loc[pairs.index % 4 == 3, "grade"] = np.nan                           # a pool row per query
    pairs.loc[pairs.query_id.str.startswith("pseudo:"), "grade"] = np.nan
    cfg = FlywheelConfig()
    train, val = split_validation(pairs, cfg, by="parent")
    judged_train, judged_val = split_validation(pairs, cfg)
    assert not set(train.query_id) & set(val.query_id) and len(train) + len(val) == len(pairs)
    assert set(judged_val.query_id) < set(val.query_id)                          # the judge's fold, and more
    assert val.grade.isna().any() and (val.groupby("query_id").size() == 4).all()  # whole pools
    assert 0.1 < val.query_id.str.startswith("pseudo:").sum() / 4 / 60 < 0.3     # a share of the pseudo-queries

    model, tok = build_cross_encoder([0, 1], seed=0)
    contract = ScoringContract(max_length=64)
    p = toy.copy()
    p["teacher_score"] = score_pairs(model, tok, contract, p["query"].tolist(), p.title.tolist(), p.text.tolist())
    assert parent_ndcg(model, tok, contract, p, 4) == pytest.approx(1.0)
    backwards = parent_ndcg(model, tok, contract, p.assign(teacher_score=-p.teacher_score), 4)
    assert backwards < 0.9


def test_distil_validation_is_part_of_the_checkpoint_key_and_a_fold_with_nothing_relevant_scores_zero():
    """Switching ladder.distil_validation retrains the distilled rungs (their cache key changes; "judge" keeps the
    key checkpoints had before the option existed); a fold where no pair is relevant scores 0 instead of crashing."""
    from flywheel.config import FlywheelConfig
    from flywheel.training.ladder import _distillation_key, distil_validation

    lc = FlywheelConfig().ladder.model_copy(update={"pool_per_query": 8})
    parent, judge = (_distillation_key(lc.model_copy(update={"distil_validation": v})) for v in ("parent", "judge"))
    assert parent != judge and parent[:-1] == judge
    off = lc.model_copy(update={"validation_share": 0.0})
    assert _distillation_key(off) == _distillation_key(off.model_copy(update={"distil_validation": "judge"}))
    no_pools = lc.model_copy(update={"pool_per_query": 0})              # nothing but labelled pairs to rank:
    assert distil_validation(no_pools) == "judge"                        # the judge's labels are the target
    assert _distillation_key(no_pools) == _distillation_key(no_pools.model_copy(update={"distil_validation": "judge"}))
    # ladder.parent_validation_grades: part of the key only where the parent's ranking is what validates
    grades = lambda c: _distillation_key(c.model_copy(update={"parent_validation_grades": 10}))   # noqa: E731
    assert grades(lc) != _distillation_key(lc)
    assert grades(no_pools) == _distillation_key(no_pools) and grades(off) == _distillation_key(off)
    with pytest.raises(ValueError, match="parent_validation_grades"):
        lc.model_validate(lc.model_dump() | {"parent_validation_grades": 1})
    flat = pd.DataFrame({"query_id": ["a", "a", "b"], "doc_id": ["x", "y", "z"], "grade": [0.0, 0.0, 0.0]})
    assert ndcg_at_10(flat, [0.3, 0.1, 0.2], grade_col="grade") == 0.0


def test_a_distilled_rung_validated_by_its_parent_reports_the_judge_beside_it(toy):
    """train_validated(by="parent"): early stopping on agreement with the parent over the whole fold, the judge's
    NDCG@10 on the fold's labelled pairs measured at the start and at the kept state, which is the start here
    because the rung *is* its parent (nothing can rank more like it)."""
    from flywheel.config import FlywheelConfig
    from flywheel.training.ladder import train_validated

    train, val = _split(toy)
    model, tok = build_cross_encoder([0, 1], seed=0)
    contract = ScoringContract(max_length=64)
    score = lambda p: score_pairs(model, tok, contract, p["query"].tolist(), p.title.tolist(), p.text.tolist())  # noqa: E731
    val = val.assign(teacher_score=score(val))
    train = train.assign(teacher_score=1.0 - train.target)               # pulls it away from its own ranking
    start_judge = _ndcg(model, tok, contract, val)
    _, v = train_validated(model, tok, contract, train, val, "teacher_score", "distill",
                           TrainConfig(epochs=2, lr=3e-3, batch_size=16, warmup_frac=0.0), FlywheelConfig(),
                           by="parent")
    assert v["by"] == "parent" and v["validation_start"] == pytest.approx(1.0)
    assert v["kept"] == "start" and v["judge_start"] == v["judge_kept"] == pytest.approx(start_judge, abs=1e-4)


def test_parent_validation_on_a_binary_scale_sees_swaps_only_with_finer_grades(toy):
    """ladder.parent_validation_grades: binned onto a binary policy's two grades, the parent's ranking cannot tell
    a rung that swaps its parent's two best documents from the parent itself (both score 1.0, so early stopping
    reads noise); binned onto ten grades, the swap costs."""
    from flywheel.training.ladder import parent_ndcg

    model, tok = build_cross_encoder([0, 1], seed=0)
    contract = ScoringContract(max_length=64)
    p = toy.copy()
    own = score_pairs(model, tok, contract, p["query"].tolist(), p.title.tolist(), p.text.tolist())
    distinct = pd.Series(own).groupby(p.query_id.to_numpy()).transform("nunique").to_numpy() == \
        p.groupby("query_id").query_id.transform("size").to_numpy()     # a document listed twice ties with itself
    p, own = p[distinct].reset_index(drop=True), np.asarray(own)[distinct]
    rank = pd.Series(own).groupby(p.query_id.to_numpy()).rank().to_numpy()   # 1 = its worst
    n = p.groupby("query_id").query_id.transform("size").to_numpy()
    swapped = np.where(rank == n, n - 1, np.where(rank == n - 1, n, rank)).astype(float)  # parent: top two swapped
    p["teacher_score"] = swapped
    assert (p.groupby("query_id").size() >= 4).all()
    assert parent_ndcg(model, tok, contract, p, 2) == pytest.approx(1.0)
    assert parent_ndcg(model, tok, contract, p, 10) < 0.99
    p["teacher_score"] = rank
    assert parent_ndcg(model, tok, contract, p, 10) == pytest.approx(1.0)


def test_a_rung_set_to_distil_from_the_teacher_learns_the_teachers_scores_and_needs_it(monkeypatch):
    """``distil_from: teacher``: the student's weights start from mid, its targets are the teacher's scores (the
    pairs are scored by the teacher), and without a trained teacher it refuses with what to pass; the default
    learns from its parent, as before, with the same checkpoint key."""
    from flywheel.config import FlywheelConfig, RungConfig
    from flywheel.training import ladder

    asked = []

    def pairs_of(scorer, *a, **k):
        asked.append(scorer["rung"])
        raise RuntimeError("stop here")

    monkeypatch.setattr(ladder, "distillation_pairs", pairs_of)
    cfg = FlywheelConfig()
    rungs = [r.model_copy() for r in cfg.ladder.rungs]
    rungs[2] = rungs[2].model_copy(update={"distil_from": "teacher"})
    to_teacher = cfg.model_copy(update={"ladder": cfg.ladder.model_copy(update={"rungs": rungs})})
    teacher, mid = {"rung": "teacher", "model_version": "t"}, {"rung": "mid", "model_version": "m"}
    for c, want in ((cfg, "mid"), (to_teacher, "teacher")):
        with pytest.raises(RuntimeError, match="stop here"):
            ladder.distil("student", mid, "jv", c, None, teacher=teacher)
        assert asked.pop() == want
    with pytest.raises(ValueError, match="distil_from: teacher"):
        ladder.distil("student", mid, "jv", to_teacher, None)
    # the rung right below the teacher may say it too: its parent is the teacher
    mid_rungs = [r.model_copy() for r in cfg.ladder.rungs]
    mid_rungs[1] = mid_rungs[1].model_copy(update={"distil_from": "teacher"})
    mid_to_teacher = cfg.model_copy(update={"ladder": cfg.ladder.model_copy(update={"rungs": mid_rungs})})
    with pytest.raises(RuntimeError, match="stop here"):
        ladder.distil("mid", teacher, "jv", mid_to_teacher, None, teacher=teacher)
    assert asked.pop() == "teacher"
    assert RungConfig(name="s").key_json() == RungConfig(name="s", distil_from="parent").key_json()
    assert RungConfig(name="s").key_json() != RungConfig(name="s", distil_from="teacher").key_json()
