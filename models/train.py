"""An explicit training loop for rankers: supervised on judge labels, or distilled from a teacher's scores.

Batches hold whole queries (their candidates together), so the pairwise MarginMSE term sees real margins.
With a ``validate`` callback (NDCG@10 on queries held out from training), the loop measures the starting point
first, then every ``eval_every`` steps and at the end of each epoch, keeps the best state (early stopping after
``patience`` evaluations without gain) and ends on it: if nothing beat the starting point, the model ends as it
started, and :class:`TrainResult` says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

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
    eval_every: int = 0            # with validate: also evaluate every this many steps (0 = once per epoch)
    patience: int = 0              # with validate: stop after this many evaluations without gain (0 = never stop)
    min_delta: float = 1e-4        # a validation gain smaller than this is no gain


@dataclass
class TrainResult:
    """What a training run did. ``history``: (step, validation figure), step 0 = the starting point;
    ``kept``: "best" (the best validated state, ``best_step``), "start" (nothing beat the starting point),
    or "last" (no validation)."""
    losses: list[float]
    history: list[tuple[int, float]] = field(default_factory=list)
    best_step: int | None = None
    kept: str = "last"
    stopped_early: bool = False

    @property
    def start_score(self) -> float | None:
        return self.history[0][1] if self.history else None

    @property
    def best_score(self) -> float | None:
        return dict(self.history).get(self.best_step) if self.history else None

    def summary(self) -> dict:
        """JSON-ready figures for the run summary and the report."""
        if not self.history:
            return {"kept": self.kept}
        return {"kept": self.kept, "best_step": self.best_step, "steps": len(self.losses),
                "validation_start": round(self.start_score, 4), "validation_best": round(self.best_score, 4),
                "stopped_early": self.stopped_early,
                "validation_curve": [[s, round(v, 4)] for s, v in self.history]}


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
                 aux_mask: str | None = None, validate: Callable[[torch.nn.Module], float] | None = None
                 ) -> TrainResult:
    """Train in place. pairs: query_id, query, title, text and the ``target`` column (and ``doc_emb`` for
    soft-token rankers).

    mode "labels": pointwise soft BCE on ``target`` (grade / max grade, in [0, 1]) + ``ranknet_weight`` × RankNet;
    mode "distill": MSE to the teacher scores in ``target`` + ``margin_weight`` × MarginMSE
    + ``listwise_weight`` × ListNet KL + ``aux_weight`` × MSE to a second teacher's scores in ``aux_target``,
    counted only where ``aux_mask`` is 1 (multi-teacher: e.g. engagement, masked where nothing was observed).
    ``validate(model)`` (model in eval mode) returns a figure to maximise on data the loop never trains on: the
    model ends on its best validated state, the starting point included (see the module docstring).
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
    res = TrainResult(losses=[])
    best_state, since_best = None, 0

    def check() -> bool:
        """Validate the current state; True when patience has run out."""
        nonlocal best_state, since_best
        model.eval()
        with torch.no_grad():
            v = float(validate(model))
        model.train()
        res.history.append((step, v))
        if res.best_step is None or v > res.best_score + cfg.min_delta:
            res.best_step, since_best = step, 0
            best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        else:
            since_best += 1
        return bool(cfg.patience) and since_best >= cfg.patience

    losses, step = res.losses, 0
    if validate is not None:
        check()
    model.train()
    stop = False
    for _ in range(cfg.epochs):
        if stop:
            break
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
            if validate is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                if stop := check():
                    break
        if validate is not None and not stop and (not res.history or res.history[-1][0] != step):
            stop = check()
    res.stopped_early = stop and step < total
    if validate is not None:
        model.load_state_dict(best_state)
        res.kept = "start" if res.best_step == 0 else "best"
    model.eval()
    return res
