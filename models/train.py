"""An explicit training loop for rankers: supervised on judge labels, or distilled from a teacher's scores.

Batches hold whole queries (their candidates together), so the pairwise MarginMSE term sees real margins.
One loop whatever runs it (:mod:`models.runtime`): each global batch of ``batch_size`` pairs is cut into
``processes × grad_accum_steps`` contiguous micro-batches, rank ``r`` runs micro-batches ``r·k … r·k + k − 1``
and each micro-batch's loss is weighted by its share of the batch, so one process with ``k`` accumulation steps
and ``k`` processes with one step each take the same optimizer step (up to float summation order).
With ``checkpoint_every``, the loop writes a step checkpoint (weights, optimizer, scheduler, loss scaler, every
rank's RNG, the data order's position, the validation state) atomically to ``checkpoint_dir`` and, started again
on the same directory, resumes from the newest: a run killed mid-epoch ends with the weights of one never stopped.
With a ``validate`` callback (NDCG@10 on queries held out from training), the loop measures the starting point
first, then every ``eval_every`` steps and at the end of each epoch, keeps the best state (early stopping after
``patience`` evaluations without gain) and ends on it: if nothing beat the starting point, the model ends as it
started, and :class:`TrainResult` says so.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from models import runtime as rtm
from models.data import MicroBatches, loader, tokenised
from models.losses import listnet_kl, margin_mse, masked_mse, pointwise_soft_bce, ranknet, score_mse

log = logging.getLogger("flywheel.train")


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
    micro_batch_size: int | None = None   # pairs per forward pass per process (None: from grad_accum_steps)
    grad_accum_steps: int | None = None   # micro-batches per optimizer step per process (None: from micro_batch_size)
    gradient_checkpointing: bool = False
    checkpoint_every: int = 0      # with checkpoint_dir: a step checkpoint every this many optimizer steps
    loader_workers: int = 0        # DataLoader processes collating the next micro-batches (0: in the loop)
    length_buckets: bool = False   # order each global batch by length before cutting it into micro-batches


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


def accumulation_steps(batch_size: int, world: int, micro: int | None, accum: int | None) -> int:
    """Micro-batches per optimizer step per process, so that batch_size = micro × accum × world (the global
    batch stays the configured one whatever the number of processes)."""
    if accum is None and micro is None:
        return 1
    if accum is None:
        accum = batch_size // (micro * world)
    if micro is None:
        micro = batch_size // (accum * world)
    if micro < 1 or micro * accum * world != batch_size:
        raise ValueError(f"ladder.batch_size {batch_size} must equal micro_batch_size x grad_accum_steps x "
                         f"processes ({micro} x {accum} x {world}): set micro_batch_size to a divisor of "
                         f"{batch_size // world if batch_size % world == 0 else batch_size}, or leave "
                         "grad_accum_steps unset")
    return accum


def _loss(net, item: dict, mode: str, cfg: TrainConfig, rt: rtm.Runtime) -> torch.Tensor:
    """One micro-batch's loss (:class:`models.data.MicroBatches` item), unweighted."""
    with rt.autocast():
        logits = net(**{k: v.to(rt.device, non_blocking=True) for k, v in item["enc"].items()}).logits[:, 0].float()  # [B]
    y = item["target"].to(rt.device)                                                  # [B]
    group = item["group"].to(rt.device)                                               # [B]
    if mode == "labels":
        loss = pointwise_soft_bce(logits, y)
        if cfg.ranknet_weight:
            loss = loss + cfg.ranknet_weight * ranknet(logits, y, group)
        return loss
    loss = score_mse(logits, y) + cfg.margin_weight * margin_mse(logits, y, group)
    if cfg.listwise_weight:
        loss = loss + cfg.listwise_weight * listnet_kl(logits, y, group)
    if cfg.aux_weight and "aux" in item:
        loss = loss + cfg.aux_weight * masked_mse(logits, item["aux"].to(rt.device), item["aux_mask"].to(rt.device))
    return loss


def latest_checkpoint(directory: Path | None) -> Path | None:
    if directory is None or not Path(directory).is_dir():
        return None
    done = sorted(Path(directory).glob("step-*.pt"))
    return done[-1] if done else None


def _rng_states(rt: rtm.Runtime) -> list:
    """Every rank's torch RNG state (dropout draws differ by rank), gathered on all ranks."""
    mine = {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(rt.device) if rt.device.type == "cuda" else None}
    if not rt.distributed:
        return [mine]
    out = [None] * rt.world
    torch.distributed.all_gather_object(out, mine)
    return out


def _set_rng(states: list, rt: rtm.Runtime) -> None:
    if len(states) != rt.world:      # resumed on another number of processes: the data order still resumes exactly
        log.warning("step checkpoint written by %d processes, resumed on %d: dropout draws differ from an "
                    "uninterrupted run", len(states), rt.world)
    mine = states[min(rt.rank, len(states) - 1)]
    torch.set_rng_state(mine["cpu"])
    if mine["cuda"] is not None and rt.device.type == "cuda":
        torch.cuda.set_rng_state(mine["cuda"], rt.device)


def train_ranker(model, tokenizer, contract, pairs: pd.DataFrame, target: str, mode: str,
                 cfg: TrainConfig = TrainConfig(), progress=None, aux_target: str | None = None,
                 aux_mask: str | None = None, validate: Callable[[torch.nn.Module], float] | None = None,
                 runtime: rtm.Runtime | None = None, checkpoint_dir: str | Path | None = None,
                 token_cache: str | Path | None = None) -> TrainResult:
    """Train in place. pairs: query_id, query, title, text and the ``target`` column (and ``doc_emb`` for
    soft-token rankers).

    mode "labels": pointwise soft BCE on ``target`` (grade / max grade, in [0, 1]) + ``ranknet_weight`` × RankNet;
    mode "distill": MSE to the teacher scores in ``target`` + ``margin_weight`` × MarginMSE
    + ``listwise_weight`` × ListNet KL + ``aux_weight`` × MSE to a second teacher's scores in ``aux_target``,
    counted only where ``aux_mask`` is 1 (multi-teacher: e.g. engagement, masked where nothing was observed).
    ``validate(model)`` (model in eval mode) returns a figure to maximise on data the loop never trains on: the
    model ends on its best validated state, the starting point included (see the module docstring); under a
    multi-process runtime every rank validates (FSDP needs them all for a forward pass).
    ``runtime``: device, precision, strategy and rank (:mod:`models.runtime`; default: this process, CPU, fp32).
    ``checkpoint_dir``: where step checkpoints go and are resumed from (``cfg.checkpoint_every``).
    ``token_cache``: where the pairs' tokenisation is cached (:mod:`models.data`; None: kept in memory).
    """
    if mode not in {"labels", "distill"}:
        raise ValueError(f"mode must be 'labels' or 'distill', not {mode!r}")
    rt = runtime or rtm.Runtime(torch.device("cpu"))
    accum = accumulation_steps(cfg.batch_size, rt.world, cfg.micro_batch_size, cfg.grad_accum_steps)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    pairs = pairs.reset_index(drop=True)
    qidx = pd.factorize(pairs.query_id)[0]
    per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total = per_epoch * cfg.epochs if cfg.max_steps is None else min(cfg.max_steps, per_epoch * cfg.epochs)
    if cfg.gradient_checkpointing:
        rtm.enable_gradient_checkpointing(model)
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir and cfg.checkpoint_every else None
    resume = latest_checkpoint(ckpt_dir)
    state = torch.load(resume, map_location="cpu", weights_only=False, mmap=True) if resume else None
    if state is not None and rt.strategy != "fsdp":
        model.load_state_dict(state["model"])
    # FSDP shards a copy: the caller's model stays a plain module and gets the trained weights back at the end
    # (on rank 0, which saves); the other strategies train the caller's model in place.
    net = rtm.wrap(copy.deepcopy(model) if rt.strategy == "fsdp" else model, rt)
    if state is not None and rt.strategy == "fsdp":
        rtm.load_full_state(net, state["model"], rt)
    inner = rtm.unwrap(net)
    groups = (inner.param_groups(cfg.lr, cfg.new_params_lr) if hasattr(inner, "param_groups")
              else [{"params": list(inner.parameters())}])
    groups = [g | {"params": [p for p in g["params"] if p.requires_grad]} for g in groups]
    trainable = [p for g in groups for p in g["params"]]
    opt = torch.optim.AdamW([g for g in groups if g["params"]], lr=cfg.lr, weight_decay=cfg.weight_decay,
                            fused=rt.device.type == "cuda" or None)      # one kernel for every parameter on GPUs
    warm = max(1, int(cfg.warmup_frac * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * max(0.0, (total - s) / max(1, total - warm)) if s >= warm else (s + 1) / warm)
    scaler = rt.grad_scaler()
    res = TrainResult(losses=[])
    best_state, since_best = None, 0
    step, start_epoch, skip = 0, 0, 0
    if state is not None:
        rtm.load_optimizer_state(net, opt, state["optimizer"], rt)
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng(state["rng"], rt)
        rng.bit_generator.state = state["epoch_rng"]
        step, start_epoch, skip = state["step"], state["epoch"], state["batch"]
        res.losses[:], res.history[:] = state["losses"], [tuple(h) for h in state["history"]]
        res.best_step, best_state, since_best = state["best_step"], state["best_state"], state["since_best"]
        if progress:
            progress(step)
    log.info("rank %d/%d on %s (%s, %s, %d micro-batch(es) a step): %s at step %d of %d", rt.rank, rt.world,
             rt.device, rt.strategy, rt.precision, accum, f"resumed from {resume.name}" if resume else "starting",
             step, total)

    def check() -> bool:
        """Validate the current state; True when patience has run out."""
        nonlocal best_state, since_best
        net.eval()
        with torch.no_grad():
            v = rtm.broadcast_value(float(validate(inner)), rt)
        net.train()
        res.history.append((step, v))
        if res.best_step is None or v > res.best_score + cfg.min_delta:
            res.best_step, since_best = step, 0
            best_state = rtm.full_state(net, rt)
        else:
            since_best += 1
        return bool(cfg.patience) and since_best >= cfg.patience

    def save_checkpoint(epoch: int, batch: int, epoch_rng: dict) -> None:
        """Every rank takes part (FSDP gathers); rank 0 writes step-<n>.pt atomically and keeps the last two."""
        ck = {"model": rtm.full_state(net, rt), "optimizer": rtm.optimizer_state(net, opt, rt),
              "scheduler": sched.state_dict(), "scaler": scaler.state_dict(), "rng": _rng_states(rt),
              "epoch_rng": epoch_rng, "step": step, "epoch": epoch, "batch": batch, "losses": list(res.losses),
              "history": list(res.history), "best_step": res.best_step, "best_state": best_state,
              "since_best": since_best}
        if rt.is_main:
            ckpt_dir.mkdir(parents=True, exist_ok=True)
            out = ckpt_dir / f"step-{step:08d}.pt"
            tmp = ckpt_dir / f".tmp-{out.name}-{os.getpid()}"
            torch.save(ck, tmp)
            os.replace(tmp, out)
            for old in sorted(ckpt_dir.glob("step-*.pt"))[:-2]:
                old.unlink()
        rt.barrier()
        _hold_for_tests(step, rt, ckpt_dir)

    losses = res.losses
    if validate is not None and state is None:
        check()
    net.train()
    stop = False
    tokens = tokenised(tokenizer, contract, pairs, token_cache)        # once per (tokenizer, contract, pairs)
    pad_id = contract.pad_token_id if contract.family == "decoder" else (tokenizer.pad_token_id or 0)
    for epoch in range(start_epoch, cfg.epochs):
        if stop:
            break
        epoch_rng = rng.bit_generator.state
        data = MicroBatches(_batches(pairs, cfg.batch_size, rng), tokens, pairs, qidx, target, pad_id, rt.world,
                            accum, rt.rank, aux_target if cfg.aux_weight else None, aux_mask, cfg.length_buckets)
        first = skip if epoch == start_epoch else 0
        for bi, mine in enumerate(loader(data, first, cfg.loader_workers, rt.device.type == "cuda"), start=first):
            if step >= total:
                break
            step_loss = torch.zeros((), device=rt.device)
            for k, item in enumerate(mine):
                sync = k == len(mine) - 1
                ctx = net.no_sync() if rt.strategy == "ddp" and not sync else contextlib.nullcontext()
                if rt.strategy == "fsdp":
                    net.set_requires_gradient_sync(sync)
                with ctx:
                    # weighted by the micro-batch's share of the global batch, × world (DDP/FSDP average ranks)
                    loss = _loss(net, item, mode, cfg, rt) * item["weight"]
                    scaler.scale(loss).backward()
                step_loss += loss.detach() / rt.world
            if rt.distributed:
                torch.distributed.all_reduce(step_loss)
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(opt); scaler.update(); sched.step()
            opt.zero_grad()
            losses.append(step_loss.item()); step += 1
            if progress:
                progress(1)
            if validate is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < total:
                if stop := check():
                    break
            if ckpt_dir is not None and step % cfg.checkpoint_every == 0:
                save_checkpoint(epoch, bi + 1, epoch_rng)
        if validate is not None and not stop and (not res.history or res.history[-1][0] != step):
            stop = check()
    res.stopped_early = stop and step < total
    if validate is not None:
        rtm.load_full_state(net, best_state, rt)
        res.kept = "start" if res.best_step == 0 else "best"
    if rt.strategy == "fsdp":
        final = rtm.full_state(net, rt)
        if rt.is_main:
            model.load_state_dict(final)
    model.eval()
    return res


def _hold_for_tests(step: int, rt: rtm.Runtime, ckpt_dir: Path) -> None:
    """Fault injection for the resume tests: with ``FLYWHEEL_TEST_HOLD_AT_STEP=n`` in the environment, the last rank
    stops right after step n's checkpoint, says so in ``<checkpoint_dir>/held`` (its pid), and waits to be killed;
    once per checkpoint directory, so the rerun goes through."""
    if os.environ.get("FLYWHEEL_TEST_HOLD_AT_STEP") != str(step) or rt.rank != rt.world - 1:
        return
    marker = ckpt_dir / "held"
    if marker.exists():
        return
    import threading

    marker.write_text(str(os.getpid()))
    print(f"HELD rank {rt.rank} pid {os.getpid()} after step {step}", flush=True)
    threading.Event().wait()

