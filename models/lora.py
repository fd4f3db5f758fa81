"""LoRA rungs through ``peft``: low-rank adapters on a ranker's projections train; the base weights stay frozen.

``W' = W + (alpha / r) · B A`` with ``A`` [r, in] and ``B`` [out, r] (Hu et al. 2021), ``B`` starting at zero so a
fresh adapter leaves the ranker's scores unchanged. :func:`merge_lora` folds ``B A`` into ``W`` and drops the
adapters, so what is saved, registered and served is a plain HF checkpoint with its scoring contract, like every
other rung (loaded by ``from_pretrained``, no ``peft`` needed to serve it).

The adapters go on the ranker's transformer (decoders: ``model.lm``; encoders: ``model.bert``), so the ranker's
own head — a decoder's yes/no rows, an encoder's score layer — stays what it is and trains only if listed.
"""

from __future__ import annotations

import torch


def _inner_name(model) -> str:
    for name in ("lm", "bert"):
        if hasattr(model, name):
            return name
    raise ValueError(f"LoRA: {type(model).__name__} has no transformer to adapt (expected .lm or .bert)")


def apply_lora(model, r: int, alpha: float, dropout: float, target_modules: list[str]):
    """Wrap the ranker's transformer in LoRA adapters, in place; returns ``model``. Only adapter weights keep
    ``requires_grad``. A target that matches no module is an error naming the modules there are."""
    from peft import LoraConfig, get_peft_model

    name = _inner_name(model)
    inner = getattr(model, name)
    linear = sorted({n.rsplit(".", 1)[-1] for n, m in inner.named_modules() if isinstance(m, torch.nn.Linear)})
    missing = [t for t in target_modules if t not in linear]
    if missing:
        raise ValueError(f"lora.target_modules {missing} match no linear layer of this {inner.config.model_type} "
                         f"model; its linear layers are {linear}")
    for p in model.parameters():
        p.requires_grad_(False)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(target_modules), bias="none")
    setattr(model, name, get_peft_model(inner, cfg))
    return model


def has_lora(model) -> bool:
    from peft import PeftModel

    return any(isinstance(getattr(model, n, None), PeftModel) for n in ("lm", "bert"))


def merge_lora(model):
    """Fold the adapters into the base weights and drop them (in place; returns ``model``): the ranker is then
    the plain architecture, every parameter trainable again, with the adapted weights."""
    if not has_lora(model):
        return model
    name = _inner_name(model)
    setattr(model, name, getattr(model, name).merge_and_unload())
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def trainable_params(model) -> tuple[int, int]:
    """(trainable, total) parameters."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
