"""Field-aware context compression, text in and text out: a document's fields in the policy's order, stop words
and repeated words dropped, cut to a token budget of the ranker's own tokenizer. Any ranker reads the result
as plain text; the scoring contract pins the budget and the fields (``compression: fields``)."""

from __future__ import annotations

import functools
import re

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'&./-]*")


# scikit-learn's English stop-word list keeps words that carry meaning in search ("fire", "bill", "system",
# numbers, ...): those stay in the documents.
_CONTENT_WORDS = frozenset(
    "fire bill system computer amount call part interest show top bottom front back side full detail describe name "
    "find found first last one two three four five six eight nine ten eleven twelve fifteen twenty forty fifty sixty "
    "hundred move put see mill de con inc ltd co thick thin cry sincere serious empty well fill mine".split())


@functools.lru_cache(maxsize=1)
def _stopwords() -> frozenset:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS) - _CONTENT_WORDS


_COMPRESSED: dict = {}    # (tokenizer, budget, fields) → text: each document version is compressed once


def compress_fields(tokenizer, fields: list[str], budget: int) -> str:
    """``fields`` in priority order → at most ``budget`` tokens of ``tokenizer``: content words of each field in
    turn (stop words and repeats dropped), fields joined by ". " so the title stays recognisable. Cached in
    memory by content, so a document version is compressed once per process."""
    key = (getattr(tokenizer, "name_or_path", ""), len(tokenizer), int(budget), *fields)
    hit = _COMPRESSED.get(key)
    if hit is None:
        if len(_COMPRESSED) > 500_000:
            _COMPRESSED.clear()
        hit = _COMPRESSED[key] = _compress(tokenizer, fields, budget)
    return hit


def _compress(tokenizer, fields: list[str], budget: int) -> str:
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
