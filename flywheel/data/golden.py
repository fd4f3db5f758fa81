"""The golden set: human judgments of query–document pairs, split by query into calibration and test.

``build_socrata_golden`` derives ``golden_data/socrata/`` from the Socrata ARCS crowd judgments (MIT);
``load_golden`` reads it back. Human–human agreement (the ceiling a judge is compared against) is computed
here from the per-rater rows.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from flywheel.data.lake import Lake, sha256_text
from flywheel.settings import REPO_ROOT

GOLDEN_DIR = REPO_ROOT / "golden_data" / "socrata"


@dataclass
class GoldenSet:
    queries: pd.DataFrame     # schemas.QUERIES
    documents: pd.DataFrame   # schemas.DOCUMENTS
    labels: pd.DataFrame      # schemas.GOLDEN_LABELS (one row per rater judgment)

    def pairs(self, split: str | None = None) -> pd.DataFrame:
        """One row per judged pair with its aggregated grade, joined with query and document text."""
        lab = self.labels if split is None else self.labels[self.labels.split == split]
        p = lab.groupby(["query_id", "doc_id"], as_index=False).agg(
            aggregated_grade=("aggregated_grade", "first"), n_raters=("n_raters", "first"), split=("split", "first"))
        p = p.merge(self.queries[["query_id", "text"]].rename(columns={"text": "query"}), on="query_id")
        p = p.merge(self.documents[["doc_id", "title", "text", "content_hash"]], on="doc_id")
        return p.rename(columns={"content_hash": "doc_hash"}).sort_values(["query_id", "doc_id"]).reset_index(drop=True)

    @property
    def content_hash(self) -> str:
        parts = [pd.util.hash_pandas_object(t, index=False).values.tobytes().hex()
                 for t in (self.queries, self.documents, self.labels)]
        return sha256_text(*parts)[:20]


def load_golden(directory: str | Path = GOLDEN_DIR) -> GoldenSet:
    d = Path(directory)
    missing = [n for n in ("queries", "documents", "golden_labels") if not (d / f"{n}.parquet").exists()]
    if missing:
        raise FileNotFoundError(f"golden set at {d} lacks {missing}.parquet; rebuild it with "
                                f"`flywheel golden build ../shared/datasets/socrata_arcs`")
    return GoldenSet(pd.read_parquet(d / "queries.parquet"), pd.read_parquet(d / "documents.parquet"),
                     pd.read_parquet(d / "golden_labels.parquet"))


def _split_of(query_id: str) -> str:
    # Stable, content-derived split: half the queries calibrate the judge, half are held out for testing.
    return "calibration" if int(hashlib.sha256(query_id.encode()).hexdigest(), 16) % 2 == 0 else "test"


def build_socrata_golden(source: str | Path, out: str | Path = GOLDEN_DIR) -> dict:
    """Derive queries, documents and per-rater labels from ``judgments_individual.csv``.

    Judgments of -1 ("something went wrong / not enough information") are not grades and are dropped.
    """
    src = pd.read_csv(Path(source) / "judgments_individual.csv", dtype=str, keep_default_na=False)
    src["grade"] = src["relevance"].astype(int)
    dropped = int((src.grade < 0).sum())
    src = src[src.grade >= 0].copy()
    src["query_id"] = "socrata-q-" + src.apply(lambda r: sha256_text(r.query.strip(), r.domain)[:10], axis=1)
    # The dataset link ends in the portal's 4x4 id: domain + id is the dataset's stable identity.
    src["doc_id"] = src.domain + "/" + src.link.str.rstrip("/").str.split("/").str[-1]
    queries = (src.groupby("query_id", as_index=False).agg(text=("query", "first"), domain=("domain", "first"))
               .assign(source="golden:socrata"))
    queries["text"] = queries.text.str.strip()
    queries["split"] = queries.query_id.map(_split_of)
    docs = src.groupby("doc_id", as_index=False).agg(title=("name", "first"), text=("description", "first"),
                                                      domain=("domain", "first")).assign(source="golden:socrata")
    docs["content_hash"] = [sha256_text(t, x) for t, x in zip(docs.title, docs.text)]
    # A rater may have judged the same pair twice (CrowdFlower gold units): keep their last judgment.
    lab = src.sort_values("_created_at").drop_duplicates(["query_id", "doc_id", "_worker_id"], keep="last")
    agg = lab.groupby(["query_id", "doc_id"]).grade.agg(["mean", "size"]).rename(
        columns={"mean": "aggregated_grade", "size": "n_raters"}).reset_index()
    labels = lab[["query_id", "doc_id", "_worker_id", "grade", "_trust"]].rename(
        columns={"_worker_id": "rater_id", "_trust": "rater_trust"}).merge(agg, on=["query_id", "doc_id"])
    labels["rater_trust"] = labels.rater_trust.astype("float32")
    labels["split"] = labels.query_id.map(dict(zip(queries.query_id, queries.split)))
    labels = labels.astype({"grade": "int8", "aggregated_grade": "float32", "n_raters": "int16"})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    queries.sort_values("query_id").to_parquet(out / "queries.parquet", index=False)
    docs.sort_values("doc_id").to_parquet(out / "documents.parquet", index=False)
    labels.sort_values(["query_id", "doc_id", "rater_id"]).to_parquet(out / "golden_labels.parquet", index=False)
    stats = describe(load_golden(out))
    stats["dropped_cannot_judge"] = dropped
    (out / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    return stats


def human_agreement(labels: pd.DataFrame, n_grades: int) -> dict | None:
    """Agreement between human raters of the same pair, the ceiling for any judge, on a scale of ``n_grades``
    grades (0..n_grades − 1; a grade off it raises ValueError).

    - pairwise: every two raters of a pair (exact, within-one, quadratic-weighted kappa over those pairs);
    - leave-one-out: each rater against the rounded mean of the pair's other raters, the figure comparable to a
      judge scored against the aggregated grade.
    """
    from sklearn.metrics import cohen_kappa_score

    off = labels.grade[(labels.grade < 0) | (labels.grade > n_grades - 1)]
    if len(off):
        raise ValueError(f"golden grade {int(off.iloc[0])} is outside the scale 0..{n_grades - 1}")
    scale = list(range(n_grades))
    a, b, single, rest = [], [], [], []
    for _, g in labels.groupby(["query_id", "doc_id"]):
        grades = g.grade.to_numpy()
        for i, j in itertools.combinations(range(len(grades)), 2):
            a.append(grades[i]); b.append(grades[j])
        if len(grades) >= 2:
            for i in range(len(grades)):
                single.append(grades[i])
                rest.append(int(np.round(np.delete(grades, i).mean())))
    a, b, single, rest = map(np.asarray, (a, b, single, rest))
    if len(a) == 0:
        return None          # one rater per pair (e.g. BEIR qrels): there is no human ceiling to measure
    return {
        "pairwise_exact": float((a == b).mean()),
        "pairwise_within_one": float((np.abs(a - b) <= 1).mean()),
        "pairwise_qwk": float(cohen_kappa_score(a, b, weights="quadratic", labels=scale)),
        "loo_qwk": float(cohen_kappa_score(single, rest, weights="quadratic", labels=scale)),
        "loo_exact": float((single == rest).mean()),
        "loo_within_one": float((np.abs(single - rest) <= 1).mean()),
        "n_rater_pairs": int(len(a)),
    }


def describe(g: GoldenSet, n_grades: int | None = None) -> dict:
    """Counts, grade distributions and the human ceiling; ``n_grades`` defaults to the labels' top grade + 1."""
    pairs = g.pairs()
    out = {"queries": int(len(g.queries)), "documents": int(len(g.documents)), "pairs": int(len(pairs)),
           "judgments": int(len(g.labels)), "raters": int(g.labels.rater_id.nunique())}
    for split in ("calibration", "test"):
        p = pairs[pairs.split == split]
        out[split] = {"queries": int(p.query_id.nunique()), "pairs": int(len(p))}
    out["grade_distribution"] = {int(k): int(v) for k, v in g.labels.grade.value_counts().sort_index().items()}
    out["rounded_aggregated_distribution"] = {
        int(k): int(v) for k, v in pairs.aggregated_grade.round().astype(int).value_counts().sort_index().items()}
    if n_grades is None:     # no policy at hand: the scale reaches the top grade any rater gave
        n_grades = max(int(g.labels.grade.max()) + 1 if len(g.labels) else 0, 2)
    out["human_agreement"] = human_agreement(g.labels, n_grades)
    return out


def seed_golden(golden_dir: str | Path, lake: Lake) -> dict:
    """Write the golden set's queries, documents and per-rater labels into the lake (idempotent)."""
    g = load_golden(golden_dir)
    lake.write("queries", g.queries)
    lake.write("documents", g.documents)
    lake.write("golden_labels", g.labels)
    return {"golden_hash": g.content_hash, "queries": len(g.queries), "documents": len(g.documents),
            "judgments": len(g.labels)}
