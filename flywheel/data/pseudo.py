"""Pseudo-queries for corpora with few labelled queries: short texts people would search with, one per document.

A document's title when it has one; otherwise (title-less corpora: passages, most BEIR sets) the leading sentence
of its text, cut to ``max_words`` words — for abstracts and passages the first sentence states the topic. Never a
text equal (case-insensitively) to a known query, so golden test queries stay unseen by every rung.
"""

from __future__ import annotations

import re

import pandas as pd

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def leading_sentence(text: str, max_words: int = 12) -> str:
    """The first sentence of ``text`` without its final punctuation, at most ``max_words`` words ("" if none)."""
    first = _SENTENCE_END.split(str(text).strip(), maxsplit=1)[0]
    words = first.rstrip(" .!?;:").split()
    return " ".join(words[:max_words])


def pseudo_queries(documents: pd.DataFrame, queries: pd.DataFrame, n: int, seed: int = 0,
                   min_words: int = 2) -> pd.DataFrame:
    """Up to ``n`` pseudo-queries: query_id ``pseudo:<doc_id>``, text, method ("title" or "text"), a seeded draw
    among the documents whose title (any non-empty one: job titles are one word) or, without a title, leading
    sentence of ``min_words`` words or more is not a query of ``queries``. Fewer than ``n`` only when fewer documents qualify:
    :func:`shortfall` says why."""
    known = set(queries.text.astype(str).str.strip().str.lower())
    title = documents.title.fillna("").astype(str).str.strip()
    body = documents["text"] if "text" in documents else pd.Series("", index=documents.index)
    lead = body.fillna("").astype(str).map(leading_sentence)
    text = title.where(title.str.len() > 0, lead)
    method = pd.Series("title", index=documents.index).where(title.str.len() > 0, "text")
    ok = documents.assign(_t=text, _k=text.str.lower(), _m=method)
    words = ok._t.str.split().str.len()
    enough = (ok._m == "title") & (words > 0) | (ok._m == "text") & (words >= min_words)
    ok = ok[enough & ~ok._k.isin(known)].drop_duplicates("_k")
    pick = ok.sample(min(n, len(ok)), random_state=seed).sort_values("doc_id")
    return pd.DataFrame({"query_id": "pseudo:" + pick.doc_id.astype(str), "text": pick._t,
                         "method": pick._m}).reset_index(drop=True)


def shortfall(requested: int, made: pd.DataFrame, documents: pd.DataFrame) -> dict:
    """What was asked and made, by method, and — when fewer — why, for the run summary."""
    out = {"requested": int(requested), "made": int(len(made)),
           "by_method": {k: int(v) for k, v in made.method.value_counts().items()} if len(made) else {}}
    if len(made) < requested:
        out["why_fewer"] = (f"only {len(made)} of {len(documents)} documents have a title, or a leading sentence "
                            "of two words or more, that is not already a query (duplicates counted once)")
    return out
