"""Structured depth pruning: drop whole layers ranked by block influence (ShortGPT, Men et al. 2024), for either
ranker family.

BI(ℓ) = 1 − E_tokens[cos(h_in^ℓ, h_out^ℓ)]: a layer that barely turns its input is the cheapest to remove.
The pruned model keeps uniform shapes, saves with an updated config and loads with plain ``from_pretrained``.
"""

from __future__ import annotations

import torch
from torch import nn

from models.ranker import encode_pairs


def _blocks(model) -> nn.ModuleList:
    from models.decoder import DecoderRanker

    return model.lm.get_decoder().layers if isinstance(model, DecoderRanker) else model.bert.encoder.layer


def _hidden_states(model, enc):
    from models.decoder import DecoderRanker

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
    """Keep only the given layers, in order (whole-layer structured pruning); the config stays loadable. For
    decoders the per-layer attention types are cut to match and each attention's cache slot is renumbered."""
    from models.decoder import DecoderRanker

    blocks = _blocks(model)
    if not layers or max(layers) >= len(blocks) or min(layers) < 0:
        raise ValueError(f"layers {layers} out of range for a {len(blocks)}-layer model")
    kept = nn.ModuleList([blocks[i] for i in layers])
    if isinstance(model, DecoderRanker):
        model.lm.get_decoder().layers = kept
        cfg = model.lm.config
        if getattr(cfg, "layer_types", None):
            cfg.layer_types = [cfg.layer_types[i] for i in layers]
        for new_idx, block in enumerate(kept):
            if hasattr(block, "self_attn"):
                block.self_attn.layer_idx = new_idx
        cfg.num_hidden_layers = len(layers)
    else:
        model.bert.encoder.layer = kept
        model.config.num_hidden_layers = len(layers)


def prune_layers(model, influence: list[float], drop: int) -> list[int]:
    """Remove the ``drop`` least influential layers in place; returns the kept layer indices."""
    if not 0 < drop < len(influence):
        raise ValueError(f"can drop 1..{len(influence) - 1} of {len(influence)} layers, not {drop}")
    order = sorted(range(len(influence)), key=lambda i: influence[i])
    keep = sorted(set(range(len(influence))) - set(order[:drop]))
    keep_layers(model, keep)
    return keep
