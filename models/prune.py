"""Structured depth pruning: drop whole layers ranked by block influence (ShortGPT, Men et al. 2024), for either
ranker family.

BI(ℓ) = 1 − E_tokens[cos(h_in^ℓ, h_out^ℓ)]: a layer that barely turns its input is the cheapest to remove.
The pruned model keeps uniform shapes, saves with an updated config and loads with plain ``from_pretrained``.
"""

from __future__ import annotations

import torch
from torch import nn

from models.decoder import DecoderRanker
from models.ranker import encode_pairs


def _blocks(model) -> nn.ModuleList:
    return model.blocks()


def _hidden_states(model, enc):
    if isinstance(model, DecoderRanker):
        return model.lm.get_decoder()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                      output_hidden_states=True).hidden_states
    return model.bert(**enc, output_hidden_states=True).hidden_states


@torch.inference_mode()
def block_influence(model, tokenizer, contract, queries, titles, texts, batch_size: int = 32) -> list[float]:
    model.eval()
    n_layers = len(_blocks(model))
    sums, count = torch.zeros(n_layers), 0.0
    for s in range(0, len(queries), batch_size):
        enc = encode_pairs(tokenizer, contract, queries[s:s + batch_size], titles[s:s + batch_size],
                           texts[s:s + batch_size])
        hs = _hidden_states(model, enc)                                      # L+1 × [B, T, H]
        mask = enc["attention_mask"].bool()                                  # [B, T]
        for layer in range(n_layers):
            cos = torch.nn.functional.cosine_similarity(hs[layer], hs[layer + 1], dim=-1)  # [B, T]
            sums[layer] += (1 - cos)[mask].sum()
        count += float(mask.sum())
    return (sums / count).tolist()


def keep_layers(model, layers: list[int]) -> None:
    """Keep only the given layers, in order (whole-layer structured pruning); the config stays loadable. Each
    family knows how (``keep_layers`` of :class:`~models.decoder.DecoderRanker` / the cross-encoder)."""
    model.keep_layers(layers)


def prune_layers(model, influence: list[float], drop: int) -> list[int]:
    """Remove the ``drop`` least influential layers in place; returns the kept layer indices."""
    if not 0 < drop < len(influence):
        raise ValueError(f"can drop 1..{len(influence) - 1} of {len(influence)} layers, not {drop}")
    order = sorted(range(len(influence)), key=lambda i: influence[i])
    keep = sorted(set(range(len(influence))) - set(order[:drop]))
    keep_layers(model, keep)
    return keep


# ---------------------------------------------------------------- width: MLP neurons and attention heads

def _mlp(block, decoder: bool):
    """(up-side linears whose rows are neurons, down-side linear whose columns are neurons)."""
    if decoder:
        return [block.mlp.gate_proj, block.mlp.up_proj], block.mlp.down_proj
    return [block.intermediate.dense], block.output.dense


@torch.inference_mode()
def width_importance(model, tokenizer, contract, queries, titles, texts, batch_size: int = 32) -> list[dict]:
    """Activation importance per layer (Minitron, Muralidharan et al. 2024), over the real tokens of calibration
    pairs: each MLP neuron's mean |activation| (the input of the down projection) and, for decoders, each
    key/value group's mean L2 norm of its query heads' attention outputs (the input of the output projection)."""
    decoder = isinstance(model, DecoderRanker)
    blocks = _blocks(model)
    sums = [{"neurons": None, "groups": None} for _ in blocks]
    current = {}
    hooks = []

    def neuron_hook(i):
        def f(_mod, inp):
            a = inp[0].abs()                                                   # [B, T, I]
            s = (a * current["mask"][..., None]).sum((0, 1))
            sums[i]["neurons"] = s if sums[i]["neurons"] is None else sums[i]["neurons"] + s
        return f

    def head_hook(i, n_heads, n_kv, head_dim):
        def f(_mod, inp):
            x = inp[0]                                                         # [B, T, n_heads*head_dim]
            norms = x.reshape(*x.shape[:2], n_heads, head_dim).norm(dim=-1)    # [B, T, n_heads]
            per_head = (norms * current["mask"][..., None]).sum((0, 1))        # [n_heads]
            s = per_head.reshape(n_kv, n_heads // n_kv).sum(-1)                # [n_kv]
            sums[i]["groups"] = s if sums[i]["groups"] is None else sums[i]["groups"] + s
        return f

    cfg = model.config
    for i, b in enumerate(blocks):
        hooks.append(_mlp(b, decoder)[1].register_forward_pre_hook(neuron_hook(i)))
        if decoder:
            hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
            hooks.append(b.self_attn.o_proj.register_forward_pre_hook(
                head_hook(i, cfg.num_attention_heads, cfg.num_key_value_heads, hd)))
    n_tokens = 0.0
    try:
        model.eval()
        for s in range(0, len(queries), batch_size):
            enc = encode_pairs(tokenizer, contract, queries[s:s + batch_size], titles[s:s + batch_size],
                               texts[s:s + batch_size])
            current["mask"] = enc["attention_mask"].float()
            model(**enc)
            n_tokens += float(enc["attention_mask"].sum())
    finally:
        for h in hooks:
            h.remove()
    return [{k: (v / n_tokens if v is not None else None) for k, v in d.items()} for d in sums]


def _rows(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(linear.in_features, len(idx), bias=linear.bias is not None)
    new.weight.data = linear.weight.data[idx].clone()
    if linear.bias is not None:
        new.bias.data = linear.bias.data[idx].clone()
    return new


def _cols(linear: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), linear.out_features, bias=linear.bias is not None)
    new.weight.data = linear.weight.data[:, idx].clone()
    if linear.bias is not None:
        new.bias.data = linear.bias.data.clone()
    return new


def prune_width(model, importance: list[dict], mlp_keep: float = 1.0, kv_groups_keep: float = 1.0) -> dict:
    """Keep the most important ``mlp_keep`` share of every layer's MLP neurons and, for decoders, the most
    important ``kv_groups_keep`` share of its key/value groups (with all their query heads, so grouped-query
    attention stays consistent). Every layer keeps the same counts, so the config describes the model and it
    loads with plain ``from_pretrained``."""
    decoder = isinstance(model, DecoderRanker)
    cfg = model.config
    blocks = _blocks(model)
    n_neurons = cfg.intermediate_size
    keep_n = max(1, int(round(n_neurons * mlp_keep)))
    out = {"intermediate_size": [n_neurons, keep_n]}
    for b, imp in zip(blocks, importance):
        idx = torch.topk(imp["neurons"], keep_n).indices.sort().values
        ups, down = _mlp(b, decoder)
        if decoder:
            b.mlp.gate_proj, b.mlp.up_proj = _rows(ups[0], idx), _rows(ups[1], idx)
            b.mlp.down_proj = _cols(down, idx)
        else:
            b.intermediate.dense = _rows(ups[0], idx)
            b.output.dense = _cols(down, idx)
    cfg.intermediate_size = keep_n
    if decoder and kv_groups_keep < 1.0:
        n_kv, n_heads = cfg.num_key_value_heads, cfg.num_attention_heads
        per = n_heads // n_kv
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
        keep_g = max(1, int(round(n_kv * kv_groups_keep)))
        for b, imp in zip(blocks, importance):
            groups = torch.topk(imp["groups"], keep_g).indices.sort().values
            kv_idx = torch.cat([torch.arange(g * hd, (g + 1) * hd) for g in groups.tolist()])
            q_heads = [g * per + j for g in groups.tolist() for j in range(per)]
            q_idx = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in q_heads])
            at = b.self_attn
            at.q_proj, at.k_proj, at.v_proj = _rows(at.q_proj, q_idx), _rows(at.k_proj, kv_idx), _rows(at.v_proj, kv_idx)
            at.o_proj = _cols(at.o_proj, q_idx)
        cfg.num_attention_heads, cfg.num_key_value_heads = keep_g * per, keep_g
        if hasattr(cfg, "head_dim"):
            cfg.head_dim = hd
        out["kv_groups"] = [n_kv, keep_g]
    return out
