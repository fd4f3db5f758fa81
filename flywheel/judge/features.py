"""Relevance evidence for the offline judge: LM query likelihood (UPR), BM25 and bi-encoder cosine.

The LM feature is the expensive one (about 0.15 s a pair on 2 cores); its values are cached on disk keyed by
(model, prompt, query text, document content hash), so a pair is never scored twice.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flywheel.data.cache import PartCache
from flywheel.data.lake import sha256_text
from flywheel.retrieval.hybrid import HybridRetriever, doc_text

FEATURES_ALL = ("upr", "bm25", "cosine")


class FeatureExtractor:
    """Computes the judge's features for pairs (columns: query, doc_id, doc_hash, title, text)."""

    def __init__(self, retriever: HybridRetriever, features=FEATURES_ALL, lm_path: str | Path | None = None,
                 cache_dir: str | Path | None = None, max_doc_tokens: int = 96, progress=None,
                 fields: tuple[str, ...] = ("title", "text"), lm_prompt: str = "portal"):
        unknown = set(features) - set(FEATURES_ALL)
        if unknown:
            raise ValueError(f"unknown judge feature(s) {sorted(unknown)}; choose from {FEATURES_ALL}")
        if "upr" in features and lm_path is None:
            raise ValueError("feature 'upr' needs lm_path (a causal LM checkpoint)")
        self.retriever, self.features = retriever, tuple(features)
        self.lm_path, self.max_doc_tokens, self.progress = lm_path, max_doc_tokens, progress
        self.fields = tuple(fields)   # the policy's document_fields: what the LM reads of each document
        self.lm_prompt = lm_prompt    # a name in models.upr.PROMPTS
        self.tag = sha256_text(str(Path(lm_path).name) if lm_path else "", str(max_doc_tokens), "upr-v1",
                               *([] if self.fields == ("title", "text") else self.fields),
                               *([] if lm_prompt == "portal" else [lm_prompt]))[:12]
        self.cache = PartCache(Path(cache_dir) / f"upr-{self.tag}") if (cache_dir and lm_path) else None
        self._scorer = None

    def _upr(self, pairs: pd.DataFrame) -> list[float]:
        keys = [sha256_text(self.tag, q, h) for q, h in zip(pairs["query"], pairs.doc_hash)]
        cached = {k: self.cache.get(k) for k in keys} if self.cache else {}
        todo = [i for i, k in enumerate(keys) if cached.get(k) is None]
        if todo:
            if self._scorer is None:
                from models.upr import QueryLikelihoodScorer
                self._scorer = QueryLikelihoodScorer(self.lm_path, max_doc_tokens=self.max_doc_tokens,
                                                     prompt=self.lm_prompt)
            sub = pairs.iloc[todo]
            # Score in slices and commit each, so a crash loses at most one slice of LM work.
            new = {}
            for s in range(0, len(todo), 128):
                part = sub.iloc[s:s + 128]
                vals = self._scorer.score(part["query"].tolist(),
                                          [doc_text(t, x if "text" in self.fields else "")
                                           for t, x in zip(part.title, part.text)],
                                          progress=self.progress)
                batch = {keys[todo[s + j]]: v for j, v in enumerate(vals)}
                new.update(batch)
                if self.cache:
                    self.cache.put_many(batch)
            cached.update(new)
        return [float(cached[k]) for k in keys]

    def transform(self, pairs: pd.DataFrame) -> pd.DataFrame:
        base = self.retriever.pair_features(pairs)
        out = pd.DataFrame(index=pairs.index)
        for f in self.features:
            out[f] = self._upr(pairs) if f == "upr" else base[f]
        return out
