"""Flow stage 8: context compression of the deployable student (models.fields, models.compress), and the curves that report it.

- Field-aware students read each document as its policy fields (``document_fields``, in order) cut to a token
  budget; soft-token students read ``k`` vectors projected from the MiniLM bi-encoder's document embedding.
  Both are distilled from the uncompressed student's scores (stored in ``teacher_scores``) on the labelled
  training pairs plus an unlabelled retrieval pool of the same queries — a distillation target needs no label.
- Document embeddings come from :mod:`flywheel.retrieval.embeddings`, cached per document version, so a
  document is embedded once, whichever student or day asks.
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np
import pandas as pd

from flywheel.config import FlywheelConfig
from flywheel.data.lake import open_lake, sha256_text
from flywheel.retrieval.embeddings import EMBED_DIM, EMBEDDER, doc_embeddings
from flywheel.settings import Paths


def compress_student(parent: dict, form: str, size: int, judge_version: str, cfg: FlywheelConfig, paths: Paths,
                     progress=None) -> dict:
    """Distil a ``form`` ("fields" with a ``size``-token budget, or "soft" with ``size`` soft tokens) version of
    ``parent`` from ``parent``'s scores on uncompressed documents.

    A validation fold of the distillation queries (``compression.val_share``) measures NDCG@10 against the
    judge's labels of its labelled pairs before training and after every epoch; a later state replaces the kept
    one only when it gains more than ``compression.min_val_gain``: distillation on a few dozen queries can overfit them,
    and then the starting point (for soft tokens, the fitted projection) is the better student."""

    import torch

    from flywheel.judge.policy import load_policy
    from flywheel.training.ladder import _save_atomic, _summary, distillation_pairs, judge_ndcg, validation_queries
    from models.ranker import load_ranker
    from models.train import TrainConfig, train_ranker

    if form not in {"fields", "soft"}:
        raise ValueError(f"compression form must be 'fields' or 'soft', not {form!r}")
    cc = cfg.compression
    fields = tuple(load_policy(cfg.resolve(cfg.policy)).document_fields)
    name = f"compressed_{form}{size}"
    key = sha256_text(parent["model_version"], form, str(size), cc.model_dump_json(), ",".join(fields),
                      str(cfg.ladder.batch_size))[:12]
    out = paths.models / "ladder" / f"{name}-{key}"
    t = time.time()
    pairs = distillation_pairs(parent, judge_version, cfg.compression.pool_per_query, cfg, paths)
    model, tok, contract = load_ranker(parent["path"])
    fit_r2 = None
    if form == "fields":
        contract = replace(contract, compression="fields", doc_budget=int(size), doc_fields=fields)
    else:
        from models.compress import SoftTokenRanker, soft_targets

        contract = replace(contract, compression="soft", soft_tokens=int(size), embedder=EMBEDDER,
                           embed_dim=EMBED_DIM)
        model = SoftTokenRanker(model, EMBED_DIM, int(size))
        # Start the projection where the ranker already works: each document's embedding mapped onto the mean
        # word embeddings of its fields (ridge regression over the whole corpus: no labels, no queries).
        docs = open_lake(paths).read("documents").rename(columns={"content_hash": "doc_hash"})
        targets = soft_targets(model.base, tok, [[{"title": t, "text": x}[f] for f in fields]
                                                 for t, x in zip(docs.title, docs.text)], int(size))
        emb = doc_embeddings(docs, paths)
        fit_r2 = model.fit_projection(torch.as_tensor(emb), targets)
        row = dict(zip(docs.doc_hash, emb))             # every distillation document is in the corpus
        pairs["doc_emb"] = [row[h] for h in pairs.doc_hash]
    val_q = validation_queries(pairs.query_id, cc.val_share, cfg.seed)
    train, val = pairs[~pairs.query_id.isin(val_q)], pairs[pairs.query_id.isin(val_q)]
    # The ladder's loop with early stopping: validated before training and after every epoch; a later state
    # replaces the kept one only when it gains more than compression.min_val_gain, else the starting state is returned.
    res = train_ranker(model, tok, contract, train, "teacher_score", "distill",
                       TrainConfig(epochs=cc.epochs, lr=cc.lr, batch_size=cfg.ladder.batch_size, seed=cfg.seed,
                                   new_params_lr=cc.projection_lr, min_delta=cc.min_val_gain),
                       progress, validate=(lambda m: judge_ndcg(m, tok, contract, val)) if val.grade.notna().any() else None)
    losses, history = res.losses, [v for _, v in res.history]
    _save_atomic(model, tok, replace(contract, dtype=cc.dtype), out)
    return _summary(out, losses, time.time() - t, rung=name, parent=parent["model_version"],
                    train_pairs=int(len(train)), val_queries=len(val_q), compression={"form": form, "size": int(size)},
                    val_ndcg_by_epoch=[round(v, 4) for v in history], kept=res.kept, kept_step=res.best_step,
                    **({"projection_fit_r2": round(fit_r2, 4)} if fit_r2 is not None else {}))


def length_curve(student: dict, uncompressed: dict, test: pd.DataFrame, budgets: list[int]) -> list[dict]:
    """The uncompressed student (``uncompressed``: its evaluation row) and the same student read zero-shot (no
    retraining) with its documents cut to each field budget: NDCG@10 against the document tokens it reads."""
    from flywheel.metrics import ndcg_at_10
    from models.ranker import input_lengths, load_ranker, score_pairs

    rows = [{"system": "student, uncompressed", "form": "none", "budget": None,
             "doc_tokens": uncompressed["doc_tokens"], "input_tokens": uncompressed["input_tokens"],
             "ndcg@10": uncompressed["ndcg@10"]}]
    model, tok, contract = load_ranker(student["path"])
    args = (test["query"].tolist(), test.title.tolist(), test.text.tolist())
    for b in sorted(budgets):
        c = replace(contract, compression="fields", doc_budget=int(b))
        doc, total = input_lengths(tok, c, *args)
        rows.append({"system": "student, zero-shot", "form": "fields", "budget": b, "doc_tokens": float(np.mean(doc)),
                     "input_tokens": float(np.mean(total)), "ndcg@10": ndcg_at_10(test, score_pairs(model, tok, c, *args))})
    return rows
