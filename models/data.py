"""Training data as the device wants it: pairs tokenised once, cached as Arrow, micro-batches padded per batch.

:func:`tokenised` turns the pairs into one row of token ids per pair (unpadded, exactly what
:func:`models.ranker.encode_pairs` gives that pair in any batch), keyed by the scoring contract, the tokenizer and
the pairs' text, and kept as an Arrow IPC file under ``cache_dir``: a rung trained again on the same data (a retry,
a resumed job, every rank of a torchrun job) reads it memory-mapped instead of tokenising again.
:class:`MicroBatches` gives the training loop each optimizer step's micro-batches for one rank, right-padded to the
longest pair of each micro-batch (not of the global batch), with targets as tensors; a
``torch.utils.data.DataLoader`` over it (``workers``, pinned memory on CUDA) collates the next step while the
device runs this one.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

PAD_FREE = ("attention_mask", "token_type_ids", "soft_mask")     # padded with 0 / False; input_ids with the pad id


_ENCODING_CODE = ("contract.py", "fields.py", "decoder.py", "cross_encoder.py", "data.py")


def cache_key(tokenizer, contract, pairs: pd.DataFrame) -> str:
    """Everything the token ids depend on: the contract, the tokenizer, the pairs' text, and the code that turns
    them into prompts (a changed instruction or template is a new entry, never stale tokens)."""
    h = hashlib.sha256(json.dumps(asdict(contract), sort_keys=True).encode())
    for name in _ENCODING_CODE:
        h.update((Path(__file__).parent / name).read_bytes())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:      # its vocabulary and rules, less the padding/truncation state a call leaves behind
        spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    h.update(pd.util.hash_pandas_object(pairs[["query", "title", "text"]], index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _tokenise(tokenizer, contract, pairs: pd.DataFrame, chunk: int = 256) -> pa.Table:
    from models.ranker import encode_pairs

    cols: dict[str, list] = {}
    for s in range(0, len(pairs), chunk):
        sub = pairs.iloc[s:s + chunk]
        enc = encode_pairs(tokenizer, contract, sub["query"].tolist(), sub.title.tolist(), sub.text.tolist())
        lengths = enc["attention_mask"].sum(1).tolist()            # right-padded: a row's tokens come first
        for k, v in enc.items():
            if v.dim() == 1:                                        # last_index: one value per row
                cols.setdefault(k, []).extend(v.tolist())
            else:
                cols.setdefault(k, []).extend(row[:n].to(torch.int32).tolist() for row, n in zip(v, lengths))
    return pa.table({k: pa.array(v, type=pa.list_(pa.int32()) if isinstance(v[0], list) else pa.int32())
                     for k, v in cols.items()})


def tokenised(tokenizer, contract, pairs: pd.DataFrame, cache_dir: str | Path | None = None) -> pa.Table:
    """One row of token ids per pair (in ``pairs``' order); from ``cache_dir`` when this exact tokenisation is
    there, else computed and written there atomically."""
    if cache_dir is None:
        return _tokenise(tokenizer, contract, pairs)
    path = Path(cache_dir) / f"tokens-{cache_key(tokenizer, contract, pairs)}.arrow"
    if path.exists():
        return pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    table = _tokenise(tokenizer, contract, pairs)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{socket.gethostname()}-{os.getpid()}")   # ranks on shared storage
    with pa.OSFile(str(tmp), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    os.replace(tmp, path)
    return table


def collate(tokens: pa.Table, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    """The rows ``idx`` as a right-padded batch: the tensors encode_pairs gives for the same pairs."""
    out = {}
    for name in tokens.column_names:
        col = tokens.column(name).take(pa.array(idx)).to_pylist()
        if not isinstance(col[0], list):
            out[name] = torch.tensor(col, dtype=torch.long)
            continue
        width = max(map(len, col))
        dtype = torch.bool if name == "soft_mask" else torch.long
        t = torch.full((len(col), width), 0 if name in PAD_FREE else pad_id, dtype=dtype)
        for i, row in enumerate(col):
            t[i, :len(row)] = torch.tensor(row, dtype=dtype)
        out[name] = t
    return out


def micro_batches(batch: np.ndarray, world: int, accum: int, rank: int, groups: np.ndarray | None = None,
                  lengths: np.ndarray | None = None) -> list[np.ndarray]:
    """Rank ``rank``'s ``accum`` micro-batches of a global ``batch``: the batch cut into ``world × accum`` parts of
    near-equal size, in order, part j going to rank j mod world (an empty part when there are fewer units than
    parts). With ``groups`` (the query of
    each item) the cuts fall between queries, so pairwise and listwise terms keep every pair of a query; with
    ``lengths`` too, the queries are first ordered by their mean length (length buckets: a micro-batch's pairs
    pad to similar lengths)."""
    parts = world * accum
    if groups is None:
        split = np.array_split(batch, parts)
    else:
        starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])         # each query's run in the batch
        units = np.split(batch, starts[1:])
        if lengths is not None:
            units = sorted(units, key=lambda u: float(lengths[u].mean()))       # stable: ties keep their order
        sizes, n = np.cumsum([len(u) for u in units]), len(units)
        cuts = [0]
        for k in range(1, parts):
            # after the unit whose running total is nearest k/parts of the batch, leaving no part empty that a
            # unit could fill
            c = int(np.argmin(np.abs(sizes - len(batch) * k / parts))) + 1
            lo = min(cuts[-1] + 1, n)
            hi = max(n - (parts - k), lo)
            cuts.append(min(max(c, lo), hi))
        cuts.append(n)
        split = [np.concatenate(units[a:b]) if b > a else batch[:0] for a, b in zip(cuts[:-1], cuts[1:])]
    return split[rank::world]        # part j to rank j mod world: the empty parts of a short batch spread out


class MicroBatches(torch.utils.data.Dataset):
    """Item ``i``: this rank's micro-batches of global batch ``batches[i]``, each a dict of tensors — the padded
    inputs (``enc``), ``target``, ``group`` (query index), optional ``aux`` / ``aux_mask``, ``doc_emb`` for
    soft-token rankers — and ``weight``, its share of the global batch × world (0 for the stand-in of an empty
    part, so every rank runs the same number of backward passes)."""

    def __init__(self, batches: list[np.ndarray], tokens: pa.Table, pairs: pd.DataFrame, qidx: np.ndarray,
                 target: str, pad_id: int, world: int, accum: int, rank: int, aux_target: str | None = None,
                 aux_mask: str | None = None, bucket: bool = False):
        self.batches, self.tokens, self.qidx, self.pad_id = batches, tokens, qidx, pad_id
        # length buckets: each global batch's queries ordered by length before it is cut into micro-batches, so a
        # micro-batch pads to a length close to its pairs' own
        self.lengths = pc.list_value_length(tokens.column("input_ids")).to_numpy() if bucket else None
        self.world, self.accum, self.rank = world, accum, rank
        self.y = pairs[target].to_numpy(dtype=np.float32)
        self.aux = pairs[aux_target].fillna(0.0).to_numpy(dtype=np.float32) if aux_target else None
        self.mask = pairs[aux_mask].to_numpy(dtype=np.float32) if aux_target else None
        self.emb = np.stack(pairs.doc_emb.to_numpy()).astype(np.float32) if "doc_emb" in pairs else None

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> list[dict]:
        b = self.batches[i]
        out = []
        for mb in micro_batches(b, self.world, self.accum, self.rank, self.qidx[b], self.lengths):
            weight = len(mb) * self.world / len(b)
            if not len(mb):
                mb, weight = b[:1], 0.0
            item = {"enc": collate(self.tokens, mb, self.pad_id), "target": torch.from_numpy(self.y[mb]),
                    "group": torch.from_numpy(self.qidx[mb]), "weight": weight}
            if self.emb is not None:
                item["enc"]["doc_emb"] = torch.from_numpy(self.emb[mb])
            if self.aux is not None:
                item["aux"], item["aux_mask"] = torch.from_numpy(self.aux[mb]), torch.from_numpy(self.mask[mb])
            out.append(item)
        return out


def loader(dataset: MicroBatches, start: int, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """Global batches ``start``… in order (the epoch's order is the dataset's; resuming skips the done ones)."""
    sub = torch.utils.data.Subset(dataset, range(start, len(dataset)))
    # its own generator: a DataLoader draws a seed for its workers from the global RNG otherwise, which would
    # shift every dropout draw of the training step (and make a resumed run differ from an uninterrupted one)
    return torch.utils.data.DataLoader(sub, batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin,
                                       generator=torch.Generator().manual_seed(0))
