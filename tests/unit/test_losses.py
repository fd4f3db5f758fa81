import math

import torch

from models.losses import margin_mse, pointwise_soft_bce, score_mse


def test_pointwise_soft_bce_matches_formula():
    s, y = torch.tensor([0.0, 2.0]), torch.tensor([0.5, 1.0])
    expected = (-(0.5 * math.log(0.5) + 0.5 * math.log(0.5)) - math.log(1 / (1 + math.exp(-2)))) / 2
    assert abs(pointwise_soft_bce(s, y).item() - expected) < 1e-6


def test_score_mse():
    assert abs(score_mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).item() - 2.5) < 1e-6


def test_margin_mse_only_compares_within_a_query():
    s = torch.tensor([1.0, 0.0, 5.0])
    t = torch.tensor([3.0, 0.0, -9.0])
    g = torch.tensor([0, 0, 1])
    # one query with two items: ordered pairs (0,1) and (1,0): ((1-0)-(3-0))^2 = 4 both ways
    assert abs(margin_mse(s, t, g).item() - 4.0) < 1e-6
    assert margin_mse(s, t, torch.tensor([0, 1, 2])).item() == 0.0


def test_ranknet_matches_hand_computed_value():
    from models.losses import ranknet

    s = torch.tensor([2.0, 0.5, 1.0, 7.0])
    y = torch.tensor([3.0, 1.0, 1.0, 0.0])
    g = torch.tensor([0, 0, 0, 1])
    # ordered pairs in query 0: (0,1) and (0,2) (1 and 2 tie): log(1+e^-(2-0.5)), log(1+e^-(2-1))
    expected = (math.log1p(math.exp(-1.5)) + math.log1p(math.exp(-1.0))) / 2
    assert abs(ranknet(s, y, g).item() - expected) < 1e-6
    assert ranknet(s, y, torch.tensor([0, 1, 2, 3])).item() == 0.0


def test_listnet_kl_matches_hand_computed_value_and_vanishes_at_the_teacher():
    from models.losses import listnet_kl

    s = torch.tensor([1.0, 0.0, 4.0])
    t = torch.tensor([0.0, 0.0, 9.0])
    g = torch.tensor([0, 0, 1])                      # query 1 has one item: left out
    p = [0.5, 0.5]
    q = [math.exp(1) / (math.exp(1) + 1), 1 / (math.exp(1) + 1)]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    assert abs(listnet_kl(s, t, g).item() - expected) < 1e-6
    assert abs(listnet_kl(t + 3.0, t, g).item()) < 1e-7          # shift-invariant: a shifted teacher is perfect


def test_masked_mse_counts_only_observed_items():
    from models.losses import masked_mse

    s, t = torch.tensor([1.0, 2.0, 10.0]), torch.tensor([0.0, 0.0, 0.0])
    assert abs(masked_mse(s, t, torch.tensor([1, 1, 0])).item() - 5 / 3) < 1e-6   # (1 + 4) / 3; 100 ignored
    assert masked_mse(s, t, torch.tensor([0, 0, 0])).item() == 0.0
