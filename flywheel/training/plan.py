"""Will a rung fit? Parameters, memory per device and time per epoch of every rung, before any GPU time is spent.

Shapes come from a table of known checkpoints (no download), a local checkpoint's ``config.json``, or the local HF
cache; ``layers`` keeps that many layers and ``parent`` takes the rung above's shape. With h = hidden, a = heads,
k = key/value heads, d = head_dim, i = intermediate, V = vocabulary, L = layers, s = max_length, b = micro-batch:

- parameters: a decoder layer is ``h·ad + 2·h·kd + ad·h`` (+ the q/k/v biases) + ``3·h·i`` (SwiGLU) + its norms;
  embeddings ``V·h``, twice when untied. A BERT layer is ``4(h²+h) + 2(h·i) + i + h + 4h``. Compute parameters N
  leave out the embedding tables: the ranker reads two rows of the output projection, never the whole vocabulary.
- trainable: all parameters (less the token embeddings with ``freeze_embeddings``); with LoRA only the adapters,
  ``r·(in + out)`` per target module per layer.
- bytes per parameter, as ``models.runtime`` trains today: every weight is fp32 (4; ``models.decoder`` loads fp32,
  autocast keeps master weights fp32, ``models.lora`` leaves the frozen base as loaded) and so are the LoRA adapters.
  Under bf16/fp16, autocast's 16-bit copies of the weights (2) add: all of them for the forward when they are
  trainable leaves outside FSDP (autocast caches those casts until it exits); otherwise (frozen weights, FSDP's
  gathered views) a cast lives as long as backward needs it: every layer's, or one layer's with checkpointing.
  Gradients are fp32 (4) and AdamW keeps two fp32 moments (8), trainable parameters only; DDP (default
  ``gradient_as_bucket_view=False``) keeps a second copy of the gradients in its all-reduce buckets. Under ``fsdp``
  (FSDP2, no mixed-precision policy) weights, gradients and optimizer state are divided by the world size W, and
  two layers are gathered whole in fp32 (the one computing and the one prefetched); ``single`` and ``ddp`` hold
  everything on every device.
- activations, 16-bit, per token per layer, counted tensor by tensor as Korthikanti et al. 2022 ("Reducing
  Activation Recomputation in Large Transformer Models", §4.1) count theirs, for a pre-norm GQA/SwiGLU block with
  flash/SDPA attention (no ``a·s²`` term) and no dropout: ``f = 2·(4h + 2ad + 2kd + 4i)`` bytes (both norms' inputs
  and outputs, Q, K, V, the attention output, gate, up, SiLU(gate) and their product). BERT: their ``34h`` (4h GELU
  MLP with dropout; flash/SDPA drops ``5as``). Twice that under fp32. Without gradient checkpointing a micro-batch
  keeps ``L·b·s·f``; with it ``L·b·s·h·2`` (each layer's input) + ``b·s·f`` (the layer being recomputed).
  Eager code's fp32 norm temporaries and LoRA's dropout copies are left to the margin below.
- total = (weights + gradients + optimizer + activations) × 1.10 (allocator fragmentation) + 1.5 GiB (CUDA context,
  cuBLAS/NCCL workspaces). Device memory ``--gpu-memory-gb`` is read as GiB.
- time: 6·N FLOPs a token for full fine-tuning (Kaplan et al. 2020: forward 2N, backward 4N), 4·N with LoRA (the
  frozen weights need no weight gradients), +2·N when checkpointing recomputes the forward; the attention score term
  (12·L·s·h a token, under 2% here) is left out. Tokens per epoch = pairs × max_length (every pair padded to the
  limit: an upper bound); seconds = FLOPs / (W × peak FLOP/s × MFU).

Rungs on ``device: cpu`` are planned in host RAM and never refused; ``auto`` is planned as a GPU.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from flywheel.config import FlywheelConfig, LoraSettings, RungConfig

GIB = 2 ** 30
FRAGMENTATION, OVERHEAD_GIB = 0.10, 1.5
TFLOPS, MFU, PAIRS = 989.0, 0.4, 100_000      # H100 SXM bf16 dense peak; a usual MFU for HF-style training


class UnknownShape(ValueError):
    """No shape is known for a checkpoint (not in the table, no local config.json, not in the HF cache)."""


@dataclass(frozen=True)
class Shape:
    kind: str                     # "decoder" (pre-norm GQA + SwiGLU) or "bert"
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = True             # output projection shares the token embeddings
    qkv_bias: bool = False        # Qwen2 / Qwen2.5
    qk_norm: bool = False         # Qwen3, Gemma 3: an RMSNorm of head_dim on queries and keys
    norms: int = 2                # norms per layer (Gemma 3 has 4)
    positions: int = 0            # learned position embeddings (BERT)


# From each checkpoint's config.json. The tiny presets mirror models.decoder.TINY_QWEN3 (kept in step by a test)
# with the lake BPE tokenizer's 2048 tokens; minilm is all-MiniLM-L6-v2.
KNOWN = {
    "Qwen/Qwen2.5-7B-Instruct": Shape("decoder", 28, 3584, 28, 4, 128, 18944, 152064, tied=False, qkv_bias=True),
    "Qwen/Qwen3-1.7B": Shape("decoder", 28, 2048, 16, 8, 128, 6144, 151936, qk_norm=True),
    "Qwen/Qwen3-0.6B": Shape("decoder", 28, 1024, 16, 8, 128, 3072, 151936, qk_norm=True),
    "qwen3-tiny": Shape("decoder", 4, 64, 4, 2, 16, 192, 2048, qk_norm=True),
    "qwen3-mini": Shape("decoder", 6, 128, 4, 2, 32, 384, 2048, qk_norm=True),
    "gemma3-270m": Shape("decoder", 18, 640, 4, 1, 256, 2048, 262144, qk_norm=True, norms=4),
    "minilm": Shape("bert", 6, 384, 12, 12, 32, 1536, 30522, positions=512),
}


def shape_from_config(path: Path) -> Shape:
    """The shape in an HF ``config.json`` (a decoder unless ``model_type`` is bert)."""
    c = json.loads(path.read_text())
    c = c.get("text_config", c)            # multimodal wrappers keep the language model's shape here
    h, a = c["hidden_size"], c["num_attention_heads"]
    kind = "bert" if c.get("model_type") == "bert" else "decoder"
    mt = c.get("model_type", "")
    return Shape(kind, c["num_hidden_layers"], h, a, c.get("num_key_value_heads", a), c.get("head_dim") or h // a,
                 c["intermediate_size"], c["vocab_size"], tied=c.get("tie_word_embeddings", False),
                 qkv_bias=c.get("attention_bias", mt == "qwen2"), qk_norm=mt.startswith(("qwen3", "gemma3")),
                 norms=4 if mt.startswith("gemma") else 2,
                 positions=c.get("max_position_embeddings", 0) if kind == "bert" else 0)


def shape_of(checkpoint: str) -> Shape:
    """A local checkpoint's config.json, then the table of known checkpoints, then the local HF cache."""
    local = Path(checkpoint)
    if (local / "config.json").is_file():
        return shape_from_config(local / "config.json")
    if checkpoint in KNOWN:
        return KNOWN[checkpoint]
    try:                                   # never the network: only a config already in the HF cache
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(checkpoint, "config.json")
    except (ImportError, ValueError):      # not a repo id at all (a path that does not exist, ...)
        cached = None
    if isinstance(cached, str):
        return shape_from_config(Path(cached))
    raise UnknownShape(f"unknown checkpoint {checkpoint!r}: give a local path holding its config.json, or add its "
                     f"shape to KNOWN in flywheel/training/plan.py (known: {', '.join(KNOWN)})")


def rung_shapes(cfg: FlywheelConfig) -> list[Shape]:
    """Each rung's shape, ``layers`` applied; ``parent`` is the rung above's (already cut) shape."""
    shapes: list[Shape] = []
    for rung in cfg.ladder.rungs:
        if rung.checkpoint == "parent":
            if not shapes:
                raise ValueError(f"rung {rung.name!r}: checkpoint 'parent' needs the rung above")
            shape = shapes[-1]
        else:
            shape = shape_of(rung.checkpoint)
        if rung.layers is not None:
            if not rung.layers or max(rung.layers) >= shape.layers:
                raise ValueError(f"rung {rung.name!r}: layers {rung.layers} index past its {shape.layers} layers")
            shape = replace(shape, layers=len(rung.layers))
        shapes.append(shape)
    return shapes


def layer_params(s: Shape) -> int:
    h, i, q, kv = s.hidden, s.intermediate, s.heads * s.head_dim, s.kv_heads * s.head_dim
    if s.kind == "bert":
        return 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * 2 * h       # q k v o, MLP, two LayerNorms
    return (h * q + 2 * h * kv + q * h + (q + 2 * kv) * s.qkv_bias + 2 * s.head_dim * s.qk_norm
            + 3 * h * i + s.norms * h)


def param_counts(s: Shape) -> tuple[int, int]:
    """(total, compute N): N leaves out the embedding tables (input, untied output, BERT positions/types)."""
    body = s.layers * layer_params(s)
    if s.kind == "bert":                    # + embedding LayerNorm; the ranker's head (h + 1) and sim_scale
        return body + (s.vocab + s.positions + 2) * s.hidden + 2 * s.hidden + s.hidden + 2, body + s.hidden + 2
    return body + s.hidden + s.vocab * s.hidden * (1 if s.tied else 2), body + s.hidden


def lora_params(s: Shape, lora: LoraSettings) -> int:
    """r·(in + out) summed over the target modules of every layer."""
    h, i, q, kv = s.hidden, s.intermediate, s.heads * s.head_dim, s.kv_heads * s.head_dim
    modules = ({"query": [(h, h)], "key": [(h, h)], "value": [(h, h)], "dense": [(h, h), (h, i), (i, h)]}
               if s.kind == "bert" else
               {"q_proj": [(h, q)], "k_proj": [(h, kv)], "v_proj": [(h, kv)], "o_proj": [(q, h)],
                "gate_proj": [(h, i)], "up_proj": [(h, i)], "down_proj": [(i, h)]})
    unknown = sorted(set(lora.target_modules) - set(modules))
    if unknown:
        raise ValueError(f"lora.target_modules {unknown} are not modules of a {s.kind}; choose from {list(modules)}")
    return s.layers * sum(lora.r * (a + b) for m in lora.target_modules for a, b in modules[m])


def activation_bytes(s: Shape) -> int:
    """f: bytes a token keeps per layer for backward, 16-bit (see the module docstring)."""
    if s.kind == "bert":
        return 34 * s.hidden
    return 2 * (4 * s.hidden + 2 * s.heads * s.head_dim + 2 * s.kv_heads * s.head_dim + 4 * s.intermediate)


@dataclass
class RungPlan:
    rung: str
    checkpoint: str
    device: str                   # "gpu" or "cpu" (host RAM, never refused)
    params: int
    compute_params: int
    trainable: int
    strategy: str
    precision: str
    lora_r: int | None
    gradient_checkpointing: bool
    world: int                    # devices the rung trains on
    micro_batch: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    total_gib: float              # per device, with fragmentation and overhead
    limit_gib: float | None
    tokens_per_step: int
    seconds_per_epoch: float | None
    fits: bool = True
    advice: str = ""


def plan_rung(rung: RungConfig, s: Shape, batch_size: int, gpus: int | None = None, gpu_memory_gb: float = 80,
              tflops: float = TFLOPS, mfu: float = MFU, pairs: int = PAIRS) -> RungPlan:
    """One rung's plan on ``gpus`` devices (None: its launch world size; ``single`` always trains on one)."""
    w = 1 if rung.strategy == "single" else (gpus or rung.launch.world_size)
    strategy = rung.strategy if w > 1 else "single"   # models.runtime: ddp / fsdp over one process run as single
    micro = rung.micro_batch_size or math.ceil(batch_size / (w * (rung.grad_accum_steps or 1)))
    total, n = param_counts(s)
    half = rung.precision != "fp32"
    if rung.lora:
        trainable = lora_params(s, rung.lora)
    else:
        trainable = total - (s.vocab * s.hidden if rung.freeze_embeddings else 0)
    cached = not rung.lora and strategy != "fsdp"       # autocast keeps these casts for the whole forward
    copies = 2 * half * (total if cached or not rung.gradient_checkpointing else layer_params(s))
    weights = (total + (trainable if rung.lora else 0)) * 4     # fp32; LoRA's adapters sit beside the base
    grads, optim = trainable * 4 * (2 if strategy == "ddp" else 1), trainable * 8
    if strategy == "fsdp":
        # with several micro-batches a step, gradients stay unsharded until the last one syncs (models.train)
        accum = max(1, batch_size // (micro * w))
        weights, grads, optim = weights / w + 2 * layer_params(s) * 4, grads / (1 if accum > 1 else w), optim / w
    weights += copies
    f = activation_bytes(s) * (1 if half else 2)
    tokens = micro * rung.max_length
    acts = (s.layers * tokens * s.hidden * (2 if half else 4) + tokens * f) if rung.gradient_checkpointing \
        else s.layers * tokens * f
    need = (weights + grads + optim + acts) * (1 + FRAGMENTATION) / GIB + OVERHEAD_GIB
    on_gpu = rung.device != "cpu"
    flops_per_token = (4 if rung.lora else 6) + 2 * rung.gradient_checkpointing     # x N
    seconds = flops_per_token * n * pairs * rung.max_length / (w * tflops * 1e12 * mfu) if on_gpu else None
    return RungPlan(rung.name, rung.checkpoint, "gpu" if on_gpu else "cpu", total, n, trainable, rung.strategy,
                    rung.precision, rung.lora.r if rung.lora else None, rung.gradient_checkpointing, w, micro,
                    weights / GIB, grads / GIB, optim / GIB, acts / GIB, need, gpu_memory_gb if on_gpu else None,
                    batch_size * rung.max_length, seconds, fits=not on_gpu or need <= gpu_memory_gb)


def advise(rung: RungConfig, s: Shape, plan: RungPlan, batch_size: int, gpu_memory_gb: float) -> str:
    """What to change so ``rung`` fits: only settings that cut its need by 5% or more, each with the need after."""
    def need(**update) -> float:
        return plan_rung(rung.model_copy(update=update), s, batch_size, plan.world, gpu_memory_gb).total_gib

    tips = []                             # (need after, setting, why)
    if rung.lora is None and s.kind == "decoder":
        lora = LoraSettings()
        tips.append((need(lora=lora), f"set lora: {{r: {lora.r}}}",
                     f"trainable {format_count(lora_params(s, lora))} instead of {format_count(plan.trainable)}"))
    fsdp = rung.model_copy(update={"strategy": "fsdp"})
    more = next((w for w in range(max(plan.world, 2), 1025)
                 if plan_rung(fsdp, s, batch_size, w, gpu_memory_gb).fits), None)
    if more and (rung.strategy != "fsdp" or more > plan.world):
        tips.append((plan_rung(fsdp, s, batch_size, more).total_gib, f"strategy: fsdp over at least {more} GPUs",
                     "launch.nproc_per_node x nnodes"))
    if not rung.gradient_checkpointing:
        tips.append((need(gradient_checkpointing=True), "gradient_checkpointing: true", ""))
    if rung.precision == "fp32":
        tips.append((need(precision="bf16"), "precision: bf16", ""))
    if rung.lora is None and not rung.freeze_embeddings and s.kind == "decoder":
        tips.append((need(freeze_embeddings=True), "freeze_embeddings: true", ""))
    if plan.micro_batch > 1:
        tips.append((need(micro_batch_size=1), "a smaller micro_batch_size", "1, with grad_accum_steps to match"))
    useful = [f"{setting} ({why + '; ' if why else ''}-> {after:.1f} GiB)"
              for after, setting, why in tips if after <= 0.95 * plan.total_gib]
    head = f"rung {rung.name!r} needs {plan.total_gib:.1f} GiB per GPU on {plan.world} x {gpu_memory_gb:g} GB"
    if not useful:
        return head + ": no single setting brings it down; take a smaller checkpoint or larger GPUs"
    return head + ": " + (", ".join(useful[:-1]) + ", or " if len(useful) > 1 else "") + useful[-1]


def plan_ladder(cfg: FlywheelConfig, gpus: int | None = None, gpu_memory_gb: float = 80, tflops: float = TFLOPS,
                mfu: float = MFU, pairs: int = PAIRS) -> list[RungPlan]:
    """Every rung's plan; a rung that does not fit carries its advice."""
    if (gpus is not None and gpus < 1) or gpu_memory_gb <= 0 or tflops <= 0 or not 0 < mfu <= 1 or pairs < 1:
        raise ValueError(f"plan needs gpus >= 1, gpu_memory_gb > 0, tflops > 0, 0 < mfu <= 1 and pairs >= 1; got "
                         f"gpus={gpus}, gpu_memory_gb={gpu_memory_gb}, tflops={tflops}, mfu={mfu}, pairs={pairs}")
    plans = []
    for rung, s in zip(cfg.ladder.rungs, rung_shapes(cfg)):
        p = plan_rung(rung, s, cfg.ladder.batch_size, gpus, gpu_memory_gb, tflops, mfu, pairs)
        if not p.fits:
            p.advice = advise(rung, s, p, cfg.ladder.batch_size, gpu_memory_gb)
        plans.append(p)
    return plans


def check_fits(cfg: FlywheelConfig, gpus: int | None, gpu_memory_gb: float) -> list[RungPlan]:
    """The plans, or ValueError naming every GPU rung that does not fit and what to change: called before any
    training. ``gpus``: the devices each ddp/fsdp rung trains on (None: its launch.nproc_per_node x nnodes);
    ``gpu_memory_gb``: one device's memory in GiB. An unknown checkpoint raises ValueError too (see shape_of)."""
    plans = plan_ladder(cfg, gpus, gpu_memory_gb)
    refused = [p.advice for p in plans if not p.fits]
    if refused:
        raise ValueError("the ladder does not fit:\n" + "\n".join(refused))
    return plans


def check_this_machine(cfg: FlywheelConfig) -> dict:
    """:func:`check_fits` against this machine's first CUDA device (the flow's first step); nothing to check
    when there is no CUDA device or every rung is on ``device: cpu``."""
    import torch

    if not torch.cuda.is_available() or all(r.device == "cpu" for r in cfg.ladder.rungs):
        return {"checked": False, "why": "no CUDA device: every rung trains on the CPU"}
    memory = torch.cuda.get_device_properties(0).total_memory / GIB
    try:
        plans = check_fits(cfg, None, memory)
    except UnknownShape as exc:        # the rung will load its checkpoint; only the estimate is missing
        return {"checked": False, "why": f"cannot plan: {exc}"}
    return {"checked": True, "gpu_memory_gib": round(memory, 2), "rungs": {p.rung: round(p.total_gib, 2) for p in plans}}


def format_count(n: float) -> str:
    return next(f"{n / d:.{p}f}{u}" for d, u, p in ((1e9, "B", 2), (1e6, "M", 1), (1e3, "k", 1), (1, "", 0))
                if n >= d or d == 1)
