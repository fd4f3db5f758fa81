"""The Parquet lake under ``FLYWHEEL_HOME/lake/<table>/[date=YYYY-MM-DD/]part-<key>.parquet``.

Writes are atomic (a hidden temporary file, then ``os.replace``) and keyed by the rows' primary keys: writing
the same rows twice, as a retried task does, lands on the same file name and adds nothing. Readers never see a
half-written file because temporary names start with a dot and are skipped.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.data import contracts
from flywheel.data.schemas import DAILY, SCHEMAS

PRIMARY_KEYS: dict[str, list[str]] = {
    "queries": ["query_id"],
    "documents": ["doc_id", "content_hash"],
    "candidates": ["date", "query_id", "doc_id"],
    "golden_labels": ["query_id", "doc_id", "rater_id"],
    "judge_labels": ["query_id", "doc_hash", "judge_version"],
    "engagement_events": ["date", "query_id", "doc_id"],
    "teacher_scores": ["query_id", "doc_hash", "teacher", "model_version"],
    "eval_results": ["run_id", "system", "split", "metric"],
}


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8"))
        h.update(b"\x1f")
    return h.hexdigest()


def to_arrow(table: str, df: pd.DataFrame) -> pa.Table:
    """Cast ``df`` to the table's Arrow schema; a missing column or a bad type names the column to fix."""
    schema = SCHEMAS[table]
    missing = [f.name for f in schema if f.name not in df.columns]
    if missing:
        raise contracts.ContractError(f"table {table!r}: missing column(s) {missing}; expected {schema.names}")
    try:
        return pa.Table.from_pandas(df[schema.names], schema=schema, preserve_index=False)
    except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError) as exc:
        raise contracts.ContractError(f"table {table!r}: cannot cast to its schema: {exc}") from exc


def rows_key(table: str, df: pd.DataFrame) -> str:
    """Content key of a batch: hash of its sorted primary keys (the same rows give the same key)."""
    keys = df[PRIMARY_KEYS[table]].astype(str).agg("\x1e".join, axis=1).sort_values()
    return sha256_text(*keys.tolist())[:20]


class Lake:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def table_dir(self, table: str, date: str | None = None) -> Path:
        if table not in SCHEMAS:
            raise KeyError(f"unknown table {table!r}; known: {sorted(SCHEMAS)}")
        d = self.root / table
        if table in DAILY:
            if not date:
                raise ValueError(f"table {table!r} is daily: pass date=YYYY-MM-DD")
            d = d / f"date={date}"
        return d

    def write(self, table: str, df: pd.DataFrame, date: str | None = None, validate: bool = True,
              grades: Iterable[int] | None = None) -> Path | None:
        """Validate and write ``df`` atomically; returns the file, or None when ``df`` is empty.

        ``grades``: the policy's scale the grade column is checked against (``contracts.validate``); required
        for ``judge_labels``. If a file with the same content key exists, nothing is written (idempotent retry).
        """
        if df.empty:
            return None
        arrow = to_arrow(table, df)
        if validate:
            contracts.validate(table, arrow.to_pandas(), grades)
        out_dir = self.table_dir(table, date)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"part-{rows_key(table, df)}.parquet"
        if path.exists():
            return path
        tmp = out_dir / f".tmp-{uuid.uuid4().hex}.parquet"
        pq.write_table(arrow, tmp)
        os.replace(tmp, path)
        return path

    def files(self, table: str, date: str | None = None) -> list[Path]:
        base = self.table_dir(table, date) if (date or table not in DAILY) else self.root / table
        if not base.exists():
            return []
        return sorted(p for p in base.rglob("part-*.parquet") if not p.name.startswith("."))

    def read(self, table: str, date: str | None = None) -> pd.DataFrame:
        files = self.files(table, date)
        schema = SCHEMAS[table]
        if not files:
            return schema.empty_table().to_pandas()
        return pa.concat_tables([pq.read_table(f, schema=schema) for f in files]).to_pandas()

    def fingerprint(self, table: str, date: str | None = None) -> str:
        """Hash of the file names (which are content keys) of a table or partition: a cache key for readers."""
        return sha256_text(table, date or "", *[str(p.relative_to(self.root)) for p in self.files(table, date)])[:20]

    def dates(self, table: str) -> list[str]:
        d = self.root / table
        return sorted(p.name.split("=", 1)[1] for p in d.glob("date=*")) if d.exists() else []


def open_lake(paths) -> Lake:
    """The lake of a flywheel home (``paths``: :class:`flywheel.settings.Paths`)."""
    return Lake(paths.lake)
