"""A content-keyed key → value cache on disk, shared by processes: the judge's LM feature values and the
bi-encoder's document embeddings live in one each."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from flywheel.data.lake import sha256_text


@dataclass
class PartCache:
    """A folder of Parquet parts, one per commit, named by the hash of their keys: writers in several processes
    (labelling shards) never overwrite each other's entries, and a reader sees every committed part."""
    path: Path
    _mem: dict = field(default_factory=dict)

    def __post_init__(self):
        self.path = Path(self.path)
        if self.path.is_dir():
            for part in sorted(self.path.glob("part-*.parquet")):
                df = pd.read_parquet(part)
                self._mem.update(zip(df.key, df.value))

    def get(self, key):
        return self._mem.get(key)

    def put_many(self, items: dict) -> None:
        if not items:
            return
        self._mem.update(items)
        self.path.mkdir(parents=True, exist_ok=True)
        keys = sorted(items)
        tmp = self.path / f".tmp-{uuid.uuid4().hex}"
        pd.DataFrame({"key": keys, "value": [items[k] for k in keys]}).to_parquet(tmp, index=False)
        os.replace(tmp, self.path / f"part-{sha256_text(*keys)[:16]}.parquet")
