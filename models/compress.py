"""Context compression: shorter document inputs for the same ranker, pinned by its scoring contract.

Two forms (``ScoringContract.compression``):

- ``fields`` — field-aware compression to a token budget (:mod:`models.fields`): the document's fields in the
  policy's order, stop words and repeats dropped, cut to ``doc_budget`` tokens. Plain text: any ranker reads it.
- ``soft`` — embedding-token compression (the reference system's "single-token" documents): the bi-encoder's
  document embedding ``e`` [E] is projected into ``k`` soft tokens ``P(e)`` [k, H] that take the place of the
  document text in the ranker's input embeddings; the query stays text. ``P`` is trained by distillation from
  the uncompressed ranker. Document embeddings are computed once per document version and cached by the caller.

:class:`SoftTokenRanker` wraps a ranker of either family and adds ``P``; it saves as the base checkpoint plus
``soft_projection.safetensors``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

from models.fields import compress_fields

PROJECTION_FILE = "soft_projection.safetensors"
def word_embeddings(ranker) -> nn.Embedding:
    """The input token-embedding table of a ranker of either family."""
    return ranker.lm.get_input_embeddings() if hasattr(ranker, "lm") else ranker.bert.embeddings.word_embeddings


@torch.no_grad()
def soft_targets(ranker, tokenizer, fields: list[list[str]], k: int, max_tokens: int = 32) -> torch.Tensor:
    """[n, k, H]: what each document's k soft tokens should start as — mean input embeddings of its words. With
    as many soft tokens as fields, one per field in the policy's order (stop words and repeats dropped, up to
    ``max_tokens`` tokens each); otherwise the fields' compressed tokens cut into k consecutive chunks. An
    uncompressed ranker reading these means in place of the text already ranks close to reading the text."""
    w = word_embeddings(ranker).weight
    fallback = w.mean(0)
    out = torch.empty(len(fields), k, w.shape[1], dtype=w.dtype)
    for i, doc in enumerate(fields):
        if k == len(doc):
            chunks = [tokenizer(compress_fields(tokenizer, [f], max_tokens), add_special_tokens=False)["input_ids"]
                      for f in doc]
        else:
            ids = tokenizer(compress_fields(tokenizer, doc, max_tokens * k), add_special_tokens=False)["input_ids"]
            step = max(1, -(-len(ids) // k))
            chunks = [ids[j * step:(j + 1) * step] for j in range(k)]
        for j, c in enumerate(chunks):
            out[i, j] = w[c].mean(0) if c else fallback
    return out


class SoftTokenRanker(nn.Module):
    """``base`` (a BertMeanPoolRanker or DecoderRanker) reading ``k`` soft tokens projected from a document
    embedding where the document text would be. ``soft_mask`` [B, T] marks the k slots of each row, in order."""

    def __init__(self, base: nn.Module, embed_dim: int, k: int):
        super().__init__()
        self.base, self.k = base, int(k)
        hidden = self.base.config.hidden_size
        self.proj = nn.Linear(embed_dim, hidden * self.k)     # fitted by fit_projection, then distilled

    @property
    def config(self):
        return self.base.config

    def _word_embeddings(self) -> nn.Embedding:
        return word_embeddings(self.base)

    def soft_tokens(self, doc_emb: torch.Tensor) -> torch.Tensor:
        """[B, E] → [B, k, H]"""
        return self.proj(doc_emb.to(self._word_embeddings().weight.dtype)).view(doc_emb.shape[0], self.k, -1)

    def forward(self, input_ids=None, attention_mask=None, soft_mask=None, doc_emb=None, **kw):
        x = self._word_embeddings()(input_ids)                                     # [B, T, H]
        soft = self.soft_tokens(doc_emb)                                           # [B, k, H]
        x = x.masked_scatter(soft_mask[..., None], soft.reshape(-1, soft.shape[-1]))   # slots in row order
        out = self.base(inputs_embeds=x, attention_mask=attention_mask, **kw)
        return SequenceClassifierOutput(logits=out.logits)

    @torch.no_grad()
    def fit_projection(self, doc_emb: torch.Tensor, targets: torch.Tensor, ridge: float = 1.0) -> float:
        """Initialise the projection by ridge regression from document embeddings [n, E] to the soft tokens the
        ranker already reads well, ``targets`` [n, k, H] (see :func:`soft_targets`); returns the fit's R²."""
        x = doc_emb.double()
        y = targets.reshape(len(targets), -1).double()
        xm, ym = x.mean(0), y.mean(0)
        xc, yc = x - xm, y - ym
        w = torch.linalg.solve(xc.T @ xc + ridge * torch.eye(x.shape[1], dtype=x.dtype), xc.T @ yc)   # [E, kH]
        self.proj.weight.copy_(w.T.to(self.proj.weight.dtype))
        self.proj.bias.copy_((ym - xm @ w).to(self.proj.bias.dtype))
        resid = yc - xc @ w
        return float(1 - resid.pow(2).sum() / yc.pow(2).sum())

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
