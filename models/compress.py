"""Context compression: shorter document inputs for the same ranker, pinned by its scoring contract.

Two forms (``ScoringContract.compression``):

- ``fields`` — field-aware compression to a token budget: the document's fields in the policy's order
  (``document_fields``: the first field matters most), stop words dropped, words already kept not repeated,
  then cut to ``doc_budget`` tokens of the ranker's own tokenizer. Plain text: any ranker reads it.
- ``soft`` — embedding-token compression (the reference system's "single-token" documents): the bi-encoder's
  document embedding ``e`` [E] is projected into ``k`` soft tokens ``P(e)`` [k, H] that take the place of the
  document text in the ranker's input embeddings; the query stays text. ``P`` is trained by distillation from
  the uncompressed ranker. Document embeddings are computed once per document version and cached by the caller.

:class:`SoftTokenRanker` wraps a ranker of either family and adds ``P``; it saves as the base checkpoint plus
``soft_projection.safetensors``.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

PROJECTION_FILE = "soft_projection.safetensors"
_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'&./-]*")


# scikit-learn's English stop-word list keeps words that carry meaning in search ("fire", "bill", "system",
# numbers, ...): those stay in the documents.
_CONTENT_WORDS = frozenset(
    "fire bill system computer amount call part interest show top bottom front back side full detail describe name "
    "find found first last one two three four five six eight nine ten eleven twelve fifteen twenty forty fifty sixty "
    "hundred move put see mill de con inc ltd co thick thin cry sincere serious empty well fill mine".split())


def _stopwords() -> frozenset:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) - _CONTENT_WORDS


def compress_fields(tokenizer, fields: list[str], budget: int) -> str:
    """``fields`` in priority order → at most ``budget`` tokens of ``tokenizer``: content words of each field in
    turn (stop words and repeats dropped), fields joined by ". " so the title stays recognisable."""
    stop, seen, parts = _stopwords(), set(), []
    for text in fields:
        words = []
        for w in _WORD.findall(text or ""):
            key = w.lower().strip(".-/")
            if key and key not in stop and key not in seen:
                seen.add(key)
                words.append(w)
        if words:
            parts.append(" ".join(words))
    ids = tokenizer(". ".join(parts), add_special_tokens=False)["input_ids"][:budget]
    return tokenizer.decode(ids).strip()


def placeholder_id(tokenizer, family: str) -> int:
    """The token id that marks a soft-token slot in the text input (replaced before the model sees it)."""
    if family == "encoder" and tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)


class SoftTokenRanker(nn.Module):
    """``base`` (a BertMeanPoolRanker or DecoderRanker) reading ``k`` soft tokens projected from a document
    embedding where the document text would be. ``soft_mask`` [B, T] marks the k slots of each row, in order."""

    def __init__(self, base: nn.Module, embed_dim: int, k: int):
        super().__init__()
        self.base, self.k = base, int(k)
        hidden = self.base.config.hidden_size
        word = self._word_embeddings().weight
        self.proj = nn.Sequential(nn.Linear(embed_dim, hidden), nn.GELU(), nn.Linear(hidden, hidden * self.k))
        with torch.no_grad():   # start on the scale of real word embeddings
            self.proj[2].weight.mul_(word.std().item() / max(self.proj[2].weight.std().item(), 1e-6) * 0.5)
            self.proj[2].bias.copy_(word.mean(0).repeat(self.k))

    @property
    def config(self):
        return self.base.config

    def _word_embeddings(self) -> nn.Embedding:
        if hasattr(self.base, "lm"):
            return self.base.lm.get_input_embeddings()
        return self.base.bert.embeddings.word_embeddings

    def soft_tokens(self, doc_emb: torch.Tensor) -> torch.Tensor:
        """[B, E] → [B, k, H]"""
        return self.proj(doc_emb.to(self._word_embeddings().weight.dtype)).view(doc_emb.shape[0], self.k, -1)

    def forward(self, input_ids=None, attention_mask=None, soft_mask=None, doc_emb=None, **kw):
        x = self._word_embeddings()(input_ids)                                     # [B, T, H]
        soft = self.soft_tokens(doc_emb)                                           # [B, k, H]
        x = x.masked_scatter(soft_mask[..., None], soft.reshape(-1, soft.shape[-1]))   # slots in row order
        out = self.base(inputs_embeds=x, attention_mask=attention_mask, **kw)
        return SequenceClassifierOutput(logits=out.logits)

    def param_groups(self, lr: float, new_lr: float | None = None) -> list[dict]:
        """The pretrained ranker at ``lr``; the new projection at ``new_lr`` (default 10 × ``lr``)."""
        return [{"params": list(self.base.parameters()), "lr": lr},
                {"params": list(self.proj.parameters()), "lr": new_lr or 10 * lr}]

    def save_pretrained(self, path, **kw):
        from safetensors.torch import save_file

        self.base.save_pretrained(path, **kw)
        save_file({k: v.contiguous() for k, v in self.proj.state_dict().items()}, str(Path(path) / PROJECTION_FILE))

    def load_projection(self, path) -> "SoftTokenRanker":
        from safetensors.torch import load_file

        self.proj.load_state_dict(load_file(str(Path(path) / PROJECTION_FILE)))
        return self


def input_lengths(tokenizer, contract, queries: list[str], titles: list[str], texts: list[str]
                  ) -> tuple[list[int], list[int]]:
    """(document positions, whole-input positions) of each pair as the ranker reads it under ``contract``."""
    from models.ranker import doc_strings, encode_pairs

    if contract.family == "decoder":
        from models.decoder import CUE, segments

        cue = len(tokenizer(CUE, add_special_tokens=False)["input_ids"])
        doc, total = [], []
        for q, d in zip(queries, doc_strings(tokenizer, contract, titles, texts)):
            p, s = segments(tokenizer, contract, q, d)
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
