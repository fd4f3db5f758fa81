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
