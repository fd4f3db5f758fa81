"""The bi-encoder's document embeddings, computed once per document version (content hash) and cached under
``models/doc_cache``, whichever stage asks: soft-token compression trains on them, evaluation and the scoring
service feed them to a soft-token ranker for documents sent as text."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel.data.cache import PartCache
from flywheel.data.lake import sha256_text
from flywheel.retrieval.hybrid import doc_text, encode
from flywheel.settings import Paths, get_paths

EMBEDDER = "all-MiniLM-L6-v2"   # the bi-encoder of flywheel.retrieval.hybrid
EMBED_DIM = 384


@functools.lru_cache(maxsize=4)
def _doc_cache(path: Path):
    """One cache object per folder and process: opening it reads every part, which a service must not redo on
    each request. Entries another process adds later are recomputed here, once, if asked for."""
    return PartCache(path)


def doc_embeddings(pairs: pd.DataFrame, paths: Paths) -> np.ndarray:
    """[n, 384] L2-normalised bi-encoder embeddings of ``pairs``' documents (doc_hash, title, text), computed once
    per document version and cached."""
    cache = _doc_cache(paths.models / "doc_cache" / f"{EMBEDDER}-v1")
    todo = pairs.drop_duplicates("doc_hash")
    todo = todo[[cache.get(h) is None for h in todo.doc_hash]]
    if len(todo):
        vecs = encode([doc_text(t, x) for t, x in zip(todo.title, todo.text)])
        cache.put_many({h: v.tolist() for h, v in zip(todo.doc_hash, vecs)})
    return np.asarray([cache.get(h) for h in pairs.doc_hash], dtype="float32").reshape(len(pairs), EMBED_DIM)


def embed_documents(titles: list[str], texts: list[str], paths: Paths | None = None) -> np.ndarray:
    """[n, 384] embeddings of documents given as text (what the scoring service receives), through the cache of
    :func:`doc_embeddings`: the key is the lake's document version, ``sha256(title, text)``, so a document that
    training or evaluation already embedded is read back, not recomputed."""
    pairs = pd.DataFrame({"title": titles, "text": texts})
    pairs["doc_hash"] = [sha256_text(t, x) for t, x in zip(titles, texts)]
    return doc_embeddings(pairs, paths or get_paths())


def document_inputs(contract, titles: list[str], texts: list[str]) -> dict:
    """Extra inputs of ``models.ranker.score_pairs`` for documents sent as text: a soft-token ranker's document
    embeddings (:func:`embed_documents`), nothing for other rankers."""
    if contract.compression != "soft":
        return {}
    if contract.embedder != EMBEDDER:
        raise ValueError(f"this ranker reads {contract.embedder} document embeddings; this project computes "
                         f"{EMBEDDER} ones")
    return {"doc_emb": embed_documents(titles, texts)}
