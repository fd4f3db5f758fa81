"""Structured depth pruning: drop whole encoder layers ranked by block influence (ShortGPT, Men et al. 2024).

BI(ℓ) = 1 − E_tokens[cos(h_in^ℓ, h_out^ℓ)]: a layer that barely turns its input is the cheapest to remove.
The pruned model keeps uniform shapes, saves with an updated config and loads with plain ``from_pretrained``.
"""

from __future__ import annotations

import torch

from models.cross_encoder import encode_pairs, keep_layers


@torch.inference_mode()
def block_influence(model, tokenizer, contract, queries, titles, texts, batch_size: int = 32) -> list[float]:
    model.eval()
    n_layers = len(model.bert.encoder.layer)
    sums, count = torch.zeros(n_layers), 0.0
    for s in range(0, len(queries), batch_size):
        enc = encode_pairs(tokenizer, contract, queries[s:s + batch_size], titles[s:s + batch_size],
                           texts[s:s + batch_size])
        hs = model.bert(**enc, output_hidden_states=True).hidden_states     # L+1 × [B, T, H]
        mask = enc["attention_mask"].bool()                                  # [B, T]
        for layer in range(n_layers):
            cos = torch.nn.functional.cosine_similarity(hs[layer], hs[layer + 1], dim=-1)  # [B, T]
            sums[layer] += (1 - cos)[mask].sum()
        count += float(mask.sum())
    return (sums / count).tolist()


def prune_layers(model, influence: list[float], drop: int) -> list[int]:
    """Remove the ``drop`` least influential layers in place; returns the kept layer indices."""
    if not 0 < drop < len(influence):
        raise ValueError(f"can drop 1..{len(influence) - 1} of {len(influence)} layers, not {drop}")
    order = sorted(range(len(influence)), key=lambda i: influence[i])
    keep = sorted(set(range(len(influence))) - set(order[:drop]))
    keep_layers(model, keep)
    return keep
