"""Where a training step runs: device, precision, the process group and the wrapper around the model.

The training loop (:mod:`models.train`) is the same on a laptop and on a cluster; this module applies what the
rung's config says around it, as torchtune and nanochat do:

- ``device``: ``auto`` is ``cuda:<LOCAL_RANK>`` when CUDA is present, else the CPU.
- ``precision``: ``bf16`` / ``fp16`` run the forward pass under ``torch.autocast`` (master weights, gradients and
  optimizer state stay float32); ``fp16`` also scales the loss (``torch.amp.GradScaler``) so small gradients do
  not underflow. ``fp32`` runs as before.
- ``strategy``: ``single`` (one process), ``ddp`` (``DistributedDataParallel``: every rank a full copy, gradients
  all-reduced) or ``fsdp`` (FSDP2 ``fully_shard`` per transformer block and at the root: parameters, gradients and
  optimizer state sharded across ranks). Multi-process runs are started by ``torchrun`` (``WORLD_SIZE``,
  ``RANK``, ``LOCAL_RANK`` in the environment); the backend is NCCL on GPUs, gloo on CPUs.

State dicts always leave and enter through :func:`full_state` / :func:`load_full_state`, the whole model on the
CPU (on rank 0 only under FSDP), so checkpoints look the same whatever the strategy.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Runtime:
    device: torch.device
    precision: str = "fp32"      # fp32 | bf16 | fp16
    strategy: str = "single"     # single | ddp | fsdp
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A loss scaler, enabled only for fp16 (pass-through otherwise)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def broadcast_value(v: float, rt: Runtime) -> float:
    """Rank 0's ``v`` on every rank: decisions taken on it (keep this state? stop?) are then the same everywhere,
    whatever the ranks computed (a rank that decided otherwise would enter or skip a collective and hang the job)."""
    if not rt.distributed:
        return v
    t = torch.tensor([v], dtype=torch.float64, device=rt.device if rt.device.type == "cuda" else "cpu")
    dist.broadcast(t, 0)
    return float(t.item())


def resolve_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but torch sees no CUDA device; use device: auto or cpu")
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_runtime(device: str = "auto", precision: str = "fp32", strategy: str = "single") -> Runtime:
    """The runtime of this process: joins the process group torchrun set up (``WORLD_SIZE`` > 1), once."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and strategy == "single":
        raise RuntimeError(f"{world} processes were launched for a rung with strategy 'single': set ddp or fsdp")
    if strategy != "single" and world == 1:
        strategy = "single"      # ddp / fsdp over one process is one process: no wrapper, same numbers
    dev = resolve_device(device, local)
    if dev.type == "cpu" and precision == "fp16":
        raise RuntimeError("precision fp16 needs a GPU (CPU autocast has no fp16 matmuls worth having): use bf16")
    if strategy == "fsdp" and precision == "fp16":
        raise RuntimeError("precision fp16 with strategy fsdp would need a sharded loss scaler: use bf16")
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        # rank 0 alone writes checkpoints and the rung (a 7B model to network storage takes minutes) while the
        # others wait in a collective: the default 10-minute watchdog would kill the job
        minutes = float(os.environ.get("FLYWHEEL_DIST_TIMEOUT_MIN", "120"))
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=minutes))
    return Runtime(dev, precision, strategy, rank, world, local)


def enable_gradient_checkpointing(model) -> None:
    """Recompute each block's activations in the backward pass (HF's implementation) instead of keeping them."""
    inner = getattr(model, "lm", None) or getattr(model, "bert", None) or model
    if hasattr(inner, "activation_checkpointing_enable"):       # transformers 5.2x (the old name is deprecated)
        inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def wrap(model: torch.nn.Module, rt: Runtime) -> torch.nn.Module:
    """The model as the strategy trains it. DDP returns a wrapper (the model is ``.module``); FSDP2 shards the
    model in place (each block, then the root) and returns it."""
    if rt.strategy == "fsdp":       # shard on the host first, then move: each device receives only its shards
        from torch.distributed.fsdp import fully_shard

        for block in model.blocks():
            fully_shard(block)
        fully_shard(model)
        return model.to(rt.device)
    model.to(rt.device)
    if rt.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def is_sharded(model: torch.nn.Module) -> bool:
    p = next(unwrap(model).parameters(), None)
    return p is not None and type(p).__name__ == "DTensor"


def full_state(model: torch.nn.Module, rt: Runtime) -> dict:
    """The whole model's state on the CPU (a collective under FSDP: every rank calls it; rank 0 gets the state,
    the others an empty dict)."""
    m = unwrap(model)
    if is_sharded(m):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(m, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k: t.detach().to("cpu", copy=True) for k, t in m.state_dict().items()}


def load_full_state(model: torch.nn.Module, state: dict, rt: Runtime) -> None:
    """Load a :func:`full_state` (under FSDP rank 0's copy is broadcast and resharded)."""
    m = unwrap(model)
    if is_sharded(m):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(m, state, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        m.load_state_dict(state)


def optimizer_state(model, opt, rt: Runtime) -> dict:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(unwrap(model), opt,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return opt.state_dict()


def load_optimizer_state(model, opt, state: dict, rt: Runtime) -> None:
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(unwrap(model), opt, state,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    else:
        opt.load_state_dict(state)
