"""An explicit training loop for rankers: supervised on judge labels, or distilled from a teacher's scores.

Batches hold whole queries (their candidates together), so the pairwise MarginMSE term sees real margins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from models.losses import listnet_kl, margin_mse, masked_mse, pointwise_soft_bce, ranknet, score_mse
from models.ranker import encode_pairs


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_frac: float = 0.1
    margin_weight: float = 1.0     # weight of MarginMSE in distillation
    listwise_weight: float = 0.0   # weight of the listwise KL (ListNet) over each query's items, in distillation
    ranknet_weight: float = 0.0    # weight of RankNet over each query's ordered pairs, on labels
    aux_weight: float = 0.0        # weight of a second teacher's masked MSE term (multi-teacher distillation)
    seed: int = 0
    max_steps: int | None = None
    new_params_lr: float | None = None   # learning rate of parameters new to a pretrained model (param_groups)


def _batches(pairs: pd.DataFrame, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    groups = [g.index.to_numpy() for _, g in pairs.groupby("query_id", sort=True)]
    rng.shuffle(groups)
    out, cur = [], []
    for g in groups:
        for i in g:
            cur.append(i)
            if len(cur) == batch_size:
                out.append(np.array(cur)); cur = []
    if cur:
        out.append(np.array(cur))
    return out


def train_ranker(model, tokenizer, contract, pairs: pd.DataFrame, target: str, mode: str,
                 cfg: TrainConfig = TrainConfig(), progress=None, aux_target: str | None = None,
                 aux_mask: str | None = None) -> list[float]:
    """Train in place. pairs: query_id, query, title, text and the ``target`` column (and ``doc_emb`` for
    soft-token rankers).

    mode "labels": pointwise soft BCE on ``target`` (grade / max grade, in [0, 1]) + ``ranknet_weight`` × RankNet;
    mode "distill": MSE to the teacher scores in ``target`` + ``margin_weight`` × MarginMSE
    + ``listwise_weight`` × ListNet KL + ``aux_weight`` × MSE to a second teacher's scores in ``aux_target``,
    counted only where ``aux_mask`` is 1 (multi-teacher: e.g. engagement, masked where nothing was observed).
    Returns the loss of every step.
    """
    if mode not in {"labels", "distill"}:
        raise ValueError(f"mode must be 'labels' or 'distill', not {mode!r}")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pairs = pairs.reset_index(drop=True)
    qidx = pd.factorize(pairs.query_id)[0]
    per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total = per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, per_epoch * cfg.epochs)
    groups = (model.param_groups(cfg.lr, cfg.new_params_lr) if hasattr(model, "param_groups")
              else [{"params": list(model.parameters())}])
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    warm = max(1, int(cfg.warmup_frac * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / max(1, total - warm)) if s >= warm else (s + 1) / warm)
    model.train()
    losses, step = [], 0
    for _ in range(cfg.epochs):
        for b in _batches(pairs, cfg.batch_size, rng):
            if step >= total:
                break
            sub = pairs.iloc[b]
            enc = encode_pairs(tokenizer, contract, sub["query"].tolist(), sub.title.tolist(), sub.text.tolist())
            if contract.compression == "soft":   # soft-token documents: their embeddings, column doc_emb
                enc["doc_emb"] = torch.tensor(np.stack(sub.doc_emb.to_numpy()), dtype=torch.float32)
            logits = model(**enc).logits[:, 0]                                  # [B]
            y = torch.tensor(sub[target].to_numpy(), dtype=torch.float32)       # [B]
            group = torch.tensor(qidx[b])
            if mode == "labels":
                loss = pointwise_soft_bce(logits, y)
                if cfg.ranknet_weight:
                    loss = loss + cfg.ranknet_weight * ranknet(logits, y, group)
            else:
                loss = score_mse(logits, y) + cfg.margin_weight * margin_mse(logits, y, group)
                if cfg.listwise_weight:
                    loss = loss + cfg.listwise_weight * listnet_kl(logits, y, group)
                if cfg.aux_weight and aux_target:
                    aux = torch.tensor(sub[aux_target].fillna(0.0).to_numpy(), dtype=torch.float32)
                    m = torch.tensor(sub[aux_mask].to_numpy(), dtype=torch.float32)
                    loss = loss + cfg.aux_weight * masked_mse(logits, aux, m)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(); sched.step()
            losses.append(loss.item()); step += 1
            if progress:
                progress(1)
    model.eval()
    return losses
