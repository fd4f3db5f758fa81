from flywheel.serving.registry import promotion_decision

KW = dict(min_ndcg=0.5, min_ratio_to_teacher=0.95, tolerance=0.005)


def test_first_model_is_promoted_when_good_enough():
    d = promotion_decision(0.80, 0.82, None, **KW)
    assert d.promote and "no champion" in d.reason


def test_blocks_below_absolute_floor_teacher_ratio_or_champion():
    assert not promotion_decision(0.40, 0.41, None, **KW).promote
    r = promotion_decision(0.70, 0.80, None, **KW)
    assert not r.promote and "teacher" in r.reason
    c = promotion_decision(0.80, 0.80, 0.82, **KW)
    assert not c.promote and "champion" in c.reason


def test_tolerance_lets_an_equal_model_through():
    assert promotion_decision(0.818, 0.82, 0.82, **KW).promote


def test_refuses_a_model_below_the_best_baseline_and_names_it():
    base = {"zero_shot_start": 0.70, "bi-encoder": 0.74, "bm25": 0.47}
    d = promotion_decision(0.72, 0.73, None, **KW, baselines=base)
    assert not d.promote and "bi-encoder" in d.reason and "0.7400" in d.reason
    assert promotion_decision(0.75, 0.76, None, **KW, baselines=base).promote
    need = promotion_decision(0.75, 0.76, None, **KW, baselines=base, min_gain_over_baseline=0.02)
    assert not need.promote and "bi-encoder" in need.reason
    assert promotion_decision(0.77, 0.78, None, **KW, baselines=base, min_gain_over_baseline=0.02).promote
