"""Bring your own data: read a dataset in the BEIR layout into the lake's tables.

``corpus.jsonl`` (``_id``, ``title``, ``text``) → documents; ``queries.jsonl`` (``_id``, ``text``) → queries;
``qrels/<split>.tsv`` (header ``query-id corpus-id score``) → golden_labels, one judgment per line, with the
split ``test`` kept as the held-out test split and every other split used for calibration. Grades are kept as
given (the policy defines the scale), except negative ones ("judged non-relevant" in some sets), which become 0.
Malformed input raises :class:`BeirFormatError` naming the file, line and field, and nothing is written.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd

from flywheel.data.lake import Lake, sha256_text


class BeirFormatError(ValueError):
    pass


def _read_jsonl(path: Path, required: dict[str, type]) -> list[dict]:
    if not path.exists():
        raise BeirFormatError(f"{path}: file not found (a BEIR directory has corpus.jsonl, queries.jsonl, qrels/)")
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BeirFormatError(f"{path}:{n}: not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict):
                raise BeirFormatError(f"{path}:{n}: expected a JSON object per line")
            for field, typ in required.items():
                if field not in obj:
                    raise BeirFormatError(f"{path}:{n}: missing field '{field}'")
                if not isinstance(obj[field], typ):
                    raise BeirFormatError(f"{path}:{n}: field '{field}' must be {typ.__name__}, "
                                          f"got {type(obj[field]).__name__}")
            obj["_id"] = str(obj["_id"])
            rows.append(obj)
    return rows


def _read_qrels(path: Path, queries: set, docs: set) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t")
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:3]] != ["query-id", "corpus-id", "score"]:
            raise BeirFormatError(f"{path}:1: header must be 'query-id<TAB>corpus-id<TAB>score', got {header}")
        for n, rec in enumerate(reader, 2):
            if not rec:
                continue
            if len(rec) < 3:
                raise BeirFormatError(f"{path}:{n}: expected 3 tab-separated fields, got {len(rec)}")
            q, d, s = rec[0].strip(), rec[1].strip(), rec[2].strip()
            try:
                score = int(float(s))
            except ValueError:
                raise BeirFormatError(f"{path}:{n}: field 'score' must be an integer grade, got {s!r}") from None
            if score > 127:
                raise BeirFormatError(f"{path}:{n}: field 'score' {score} is too large for a grade (at most 127)")
            if q not in queries:
                raise BeirFormatError(f"{path}:{n}: field 'query-id' {q!r} is not in queries.jsonl")
            if d not in docs:
                raise BeirFormatError(f"{path}:{n}: field 'corpus-id' {d!r} is not in corpus.jsonl")
            rows.append({"query_id": q, "doc_id": d, "grade": score})
    return rows


def read_beir(directory: str | Path, name: str | None = None) -> dict[str, pd.DataFrame]:
    d = Path(directory)
    name = name or d.name
    corpus = _read_jsonl(d / "corpus.jsonl", {"_id": (str, int), "text": str})
    queries = _read_jsonl(d / "queries.jsonl", {"_id": (str, int), "text": str})
    qrel_files = sorted((d / "qrels").glob("*.tsv"))
    if not qrel_files:
        raise BeirFormatError(f"{d / 'qrels'}: no <split>.tsv files")
    prefix = f"{name}:"
    docs = pd.DataFrame({"doc_id": [prefix + c["_id"] for c in corpus],
                         "title": [str(c.get("title") or "") for c in corpus],
                         "text": [c["text"] for c in corpus], "domain": None, "source": f"beir:{name}"})
    docs["content_hash"] = [sha256_text(t, x) for t, x in zip(docs.title, docs.text)]
    qids, dids = {q["_id"] for q in queries}, {c["_id"] for c in corpus}
    labels = []
    for f in qrel_files:
        split = "test" if f.stem == "test" else "calibration"
        labels += [r | {"split": split, "rater_id": f"qrels:{f.stem}"} for r in _read_qrels(f, qids, dids)]
    lab = pd.DataFrame(labels)
    if lab.empty:
        raise BeirFormatError(f"{d / 'qrels'}: no judgments")
    lab["query_id"] = prefix + lab.query_id
    lab["doc_id"] = prefix + lab.doc_id
    lab["grade"] = lab.grade.clip(lower=0).astype("int8")
    lab = lab.drop_duplicates(["query_id", "doc_id", "rater_id"], keep="last")
    agg = lab.groupby(["query_id", "doc_id"]).grade.agg(["mean", "size"]).rename(
        columns={"mean": "aggregated_grade", "size": "n_raters"}).reset_index()
    lab = lab.merge(agg, on=["query_id", "doc_id"]).assign(rater_trust=None)
    split_of = lab.groupby("query_id").split.agg(lambda s: "test" if (s == "test").any() else "calibration")
    lab["split"] = lab.query_id.map(split_of)
    qdf = pd.DataFrame({"query_id": [prefix + q["_id"] for q in queries], "text": [q["text"] for q in queries],
                        "domain": None, "source": f"beir:{name}"})
    qdf["split"] = qdf.query_id.map(split_of)   # queries without qrels are not golden: split stays empty
    return {"queries": qdf, "documents": docs, "golden_labels": lab.astype({"n_raters": "int16"})}


def import_beir(directory: str | Path, lake: Lake, name: str | None = None,
                tables: dict[str, pd.DataFrame] | None = None) -> dict:
    """Validate everything first, then write: a bad file leaves the lake untouched. ``tables``: what
    :func:`read_beir` returned for ``directory`` (possibly with assumed negatives added), to read it only once."""
    tables = read_beir(directory, name) if tables is None else tables
    for t in ("queries", "documents", "golden_labels"):
        lake.write(t, tables[t])
    return {t: int(len(df)) for t, df in tables.items()}
