"""The scoring contract: what a saved ranker promises about its input and output, saved as
``scoring_contract.json`` beside the HF checkpoint and read by every consumer. The bottom of ``models/``: the
family modules, compression, pruning and the ranker API all import it, and it imports none of them.

Also here, because the contract defines them: the document as the ranker reads it (:func:`doc_strings`: the
template, the field-compressed text, or soft-token slots) and the token that marks a soft-token slot.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

from models.fields import compress_fields

CONTRACT_FILE = "scoring_contract.json"


@dataclass(frozen=True)
class ScoringContract:
    family: str = "encoder"               # "encoder" | "decoder"
    template: str = "{title}. {text}"     # the document as the model reads it
    max_length: int = 128                 # tokens of the whole input; the document's tail is cut first
    score: str = "logit"                  # encoder: the single logit; decoder: "logit_yes_minus_no"
    # decoder family only
    instruction: str = ""
    max_query_tokens: int = 32
    yes_token_id: int | None = None
    no_token_id: int | None = None
    bos_token_id: int | None = None
    pad_token_id: int = 0
    # context compression (models.fields, models.compress): "none", "fields" (the policy's fields, in order, cut to doc_budget
    # tokens) or "soft" (soft_tokens vectors projected from the embedder's document embedding replace the text)
    compression: str = "none"
    doc_fields: tuple = ("title", "text")
    doc_budget: int = 0
    soft_tokens: int = 0
    embedder: str = ""
    embed_dim: int = 0
    dtype: str = "float32"                # the dtype the model scores in: bfloat16 (half the memory traffic) or
                                          # int8 (CPU: linear layers dynamically quantized at load)

    def doc_text(self, title: str, text: str) -> str:
        return self.template.format(title=title, text=text)

    @classmethod
    def from_json(cls, text: str) -> "ScoringContract":
        data = json.loads(text)
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"scoring contract has unknown field(s) {sorted(unknown)}: written by a newer version?")
        if "doc_fields" in data:
            data["doc_fields"] = tuple(data["doc_fields"])
        return cls(**data)


# How far one pair's score may move with what it is batched with (padding width, length buckets, the order of
# float reductions in a wider matrix product), by scoring dtype: the service's promise that a request scores the
# same alone and inside a busy batch, and the deploy smoke test's tolerance for served versus offline scores.
SCORE_TOLERANCE = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 1e-1, "int8": 1e-1}   # int8: activations quantized per batch


def check_layers(layers: list[int], n_layers: int) -> None:
    """Layer indices a ``layers`` setting may name: a non-empty subset of ``0 .. n_layers - 1``."""
    if not layers or max(layers) >= n_layers or min(layers) < 0:
        raise ValueError(f"layers {layers} out of range for a {n_layers}-layer model")


def load_contract(path: str | Path) -> ScoringContract:
    path = Path(path)
    if not (path / CONTRACT_FILE).exists():
        raise FileNotFoundError(f"{path} has no {CONTRACT_FILE}: a ranker must ship its scoring contract")
    return ScoringContract.from_json((path / CONTRACT_FILE).read_text())


def doc_strings(tokenizer, contract: ScoringContract, titles: list[str], texts: list[str]) -> list[str]:
    """The documents as the ranker reads them: the template, or their compressed form (``fields``); with
    ``soft`` compression the text is not read at all (empty strings; the encoders put the slots in)."""
    if contract.compression == "soft":
        slot = tokenizer.convert_ids_to_tokens(placeholder_id(tokenizer, contract.family))
        return [" ".join([slot] * contract.soft_tokens)] * len(titles)
    if contract.compression == "fields":
        return [compress_fields(tokenizer, [{"title": t, "text": x}[f] for f in contract.doc_fields],
                                contract.doc_budget) for t, x in zip(titles, texts)]
    if contract.compression != "none":
        raise ValueError(f"unknown compression {contract.compression!r} in the scoring contract (none, fields, soft)")
    return [contract.doc_text(t, x) for t, x in zip(titles, texts)]


def placeholder_id(tokenizer, family: str) -> int:
    """The token id that marks a soft-token slot in the text input (replaced before the model sees it)."""
    if family == "encoder" and tokenizer.mask_token_id is not None:
        return int(tokenizer.mask_token_id)
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
