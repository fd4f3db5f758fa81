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


def ranknet(student: torch.Tensor, target: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """RankNet (Burges et al. 2005) over pairs (i, j) of the same query with target_i > target_j:
    mean log(1 + exp(−(s_i − s_j))). [N], [N], [N] -> []; 0 when no query has an ordered pair."""
    ordered = (group[:, None] == group[None, :]) & (target[:, None] > target[None, :])
    if not ordered.any():
        return student.sum() * 0.0
    diff = student[:, None] - student[None, :]
    return F.softplus(-diff)[ordered].mean()


def listnet_kl(student: torch.Tensor, target: torch.Tensor, group: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """ListNet / listwise KL (Cao et al. 2007): per query q, KL(softmax(t_q / τ) ‖ softmax(s_q / τ)), averaged over
    queries with at least two items. ``target`` is the teacher's scores (or graded labels). [N], [N], [N] -> []"""
    losses = []
    for g in torch.unique(group):
        m = group == g
        if int(m.sum()) < 2:
            continue
        p = F.softmax(target[m] / temperature, dim=0)
        log_q = F.log_softmax(student[m] / temperature, dim=0)
        losses.append((p * (torch.log(p.clamp_min(1e-12)) - log_q)).sum())
    return torch.stack(losses).mean() if losses else student.sum() * 0.0


def masked_mse(student: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_i m_i (s_i − t_i)² / N: a teacher term that only counts where the teacher had evidence (e.g. engagement
    observed). Averaged over the whole batch, not over the masked items, so a batch with one observed item does not
    give that item the weight of a full batch. [N], [N], [N] (0/1) -> []"""
    m = mask.to(student.dtype)
    return (m * (student - target) ** 2).sum() / max(1, student.numel())
