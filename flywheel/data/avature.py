"""The Avature job-title similarity set (Zbib et al. 2022, Apache-2.0) exported in the BEIR layout.

Source (``../shared/datasets/avature_job_titles``): ``queries.tsv`` and ``corpus_documents.tsv`` (id, title) and
``annotations.tsv`` (query id, 0, corpus id, 1) listing the positives; every other query–title pair was judged
negative by the same two annotators. The export keeps the positives (score 1) and, per query, the
``negatives_per_query`` highest-BM25 titles that are not positives (score 0) — real judged negatives, and the hard
ones a reranker must get right. Queries are split by a hash of their id: ``test`` (held out) and ``dev``
(calibration), so ``flywheel import beir`` and ``bench/quality.py`` read it like any BEIR dataset.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel.data.lake import sha256_text


def _tsv(path: Path, names: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing (expected the Avature job-title dataset's {path.name})")
    return pd.read_csv(path, sep="\t", header=None, names=names, dtype=str, quoting=csv.QUOTE_NONE,
                       keep_default_na=False)


def load_avature(source: str | Path) -> dict[str, pd.DataFrame]:
    src = Path(source)
    queries = _tsv(src / "queries.tsv", ["_id", "text"])
    corpus = _tsv(src / "corpus_documents.tsv", ["_id", "title"])
    pos = _tsv(src / "annotations.tsv", ["query_id", "zero", "doc_id", "label"])
    unknown = set(pos.query_id) - set(queries._id) | set(pos.doc_id) - set(corpus._id)
    if unknown:
        raise ValueError(f"annotations.tsv names ids that are in neither queries.tsv nor corpus_documents.tsv, "
                         f"e.g. {sorted(unknown)[:3]}")
    return {"queries": queries, "corpus": corpus, "positives": pos[["query_id", "doc_id"]].drop_duplicates()}


def to_beir(source: str | Path, out: str | Path, negatives_per_query: int = 20, test_share: float = 0.5,
            seed: int = 0) -> dict:
    """Write ``out/corpus.jsonl``, ``out/queries.jsonl``, ``out/qrels/{dev,test}.tsv``; returns counts."""
    import bm25s

    data = load_avature(source)
    queries, corpus, pos = data["queries"], data["corpus"], data["positives"]
    positives = pos.groupby("query_id").doc_id.apply(set).to_dict()
    tok = bm25s.tokenize(corpus.title.tolist(), stopwords=None, show_progress=False)
    index = bm25s.BM25()
    index.index(tok, show_progress=False)
    rows = []
    for qid, text in zip(queries._id, queries.text):
        p = positives.get(qid, set())
        rows += [(qid, d, 1) for d in sorted(p)]
        qt = bm25s.tokenize([text], stopwords=None, show_progress=False)
        docs, _ = index.retrieve(qt, k=min(len(corpus), negatives_per_query + len(p) + 5), show_progress=False)
        negs = [corpus._id.iloc[i] for i in docs[0] if corpus._id.iloc[i] not in p][:negatives_per_query]
        rows += [(qid, d, 0) for d in negs]
    qrels = pd.DataFrame(rows, columns=["query-id", "corpus-id", "score"])
    split = {q: ("test" if int(sha256_text(str(seed), q)[:8], 16) / 0xFFFFFFFF < test_share else "dev")
             for q in queries._id}
    out = Path(out)
    tmp = out.with_name(f".tmp-{out.name}-{uuid.uuid4().hex[:8]}")
    (tmp / "qrels").mkdir(parents=True)
    with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i, t in zip(corpus._id, corpus.title):
            f.write(json.dumps({"_id": i, "title": t, "text": ""}) + "\n")
    with open(tmp / "queries.jsonl", "w", encoding="utf-8") as f:
        for i, t in zip(queries._id, queries.text):
            f.write(json.dumps({"_id": i, "text": t}) + "\n")
    for s in ("dev", "test"):
        part = qrels[qrels["query-id"].map(split) == s]
        part.to_csv(tmp / "qrels" / f"{s}.tsv", sep="\t", index=False)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    os.replace(tmp, out)
    per_q = qrels.groupby("query-id").score.agg(["sum", "size"])
    return {"queries": int(len(queries)), "documents": int(len(corpus)), "judged_pairs": int(len(qrels)),
            "positives": int(qrels.score.sum()), "test_queries": int(sum(v == "test" for v in split.values())),
            "positives_per_query": float(np.round(per_q["sum"].mean(), 2)), "path": str(out)}
