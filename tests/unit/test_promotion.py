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


def test_compressed_students_are_held_to_their_sources_result_in_the_gates_protocol():
    """The demo's case: the gate reads the rerank protocol (small judged pools) and refuses the pruned student there
    (0.483 vs BM25 0.540); its compressed students, measured on judged pools only, must not be promoted on those
    (0.892 vs the bi-encoder's 0.890). Where the gate reads judged pools, they stand on their own figures."""
    from flywheel.serving.registry import compressed_source_refusal

    systems = {"bm25": {"ndcg@10": 0.874, "rerank_ndcg@10": 0.540},
               "bi-encoder": {"ndcg@10": 0.890, "rerank_ndcg@10": 0.515},
               "zero_shot_start": {"ndcg@10": 0.872, "rerank_ndcg@10": 0.413},
               "student_pruned": {"ndcg@10": 0.876, "rerank_ndcg@10": 0.483}}
    ev = {"systems": systems, "baselines": ["zero_shot_start", "bi-encoder", "bm25"], "gate_metric": "rerank_ndcg@10"}
    why = compressed_source_refusal(ev, "student_pruned")
    assert why and "bm25 (0.5400)" in why and "0.4830" in why
    systems["student_pruned"]["rerank_ndcg@10"] = 0.541                     # clears the best baseline there
    assert compressed_source_refusal(ev, "student_pruned") is None
    assert "bm25" in compressed_source_refusal(ev, "student_pruned", min_gain=0.01)   # not by the required gain
    assert compressed_source_refusal(ev | {"gate_metric": "ndcg@10"}, "student_pruned") is None
