"""Ranking losses as small pure functions. Shapes: scores and targets are [N] (pointwise) or grouped by query.

References: sentence-transformers' MarginMSE (Hofstätter et al. 2020) and ListNet (Cao et al. 2007).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pointwise_soft_bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i BCE(σ(s_i), y_i) with soft targets y_i ∈ [0, 1] (e.g. grade / max_grade). [N], [N] -> []"""
    return F.binary_cross_entropy_with_logits(logits, target)


def score_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Score-level distillation: mean_i (s_i − t_i)². Works across tokenizers and vocabularies. [N], [N] -> []"""
    return F.mse_loss(student, teacher)


def margin_mse(student: torch.Tensor, teacher: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """MarginMSE over all pairs (i, j) of the same query: mean ((s_i − s_j) − (t_i − t_j))².

    student, teacher: [N]; group: [N] query index. Returns 0 when no query has two items.
    """
    same = group[:, None] == group[None, :]
    same.fill_diagonal_(False)
    if not same.any():
        return student.sum() * 0.0
    ds = student[:, None] - student[None, :]
    dt = teacher[:, None] - teacher[None, :]
    return ((ds - dt) ** 2)[same].mean()
