"""Fitted judges stored by version under ``FLYWHEEL_HOME/judges`` (offline: the linear model and cut-points;
openai: the chosen few-shot exemplars) and rebuilt from there by labelling, evaluation and policy previews; the
offline judge's feature extractor as the configuration asks for it."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np

from flywheel.config import FlywheelConfig
from flywheel.judge.backends import OfflineJudge, OpenAIJudge
from flywheel.judge.features import FeatureExtractor
from flywheel.judge.online import OnlineSettings
from flywheel.judge.policy import Policy
from flywheel.retrieval.hybrid import retriever
from flywheel.settings import Paths


def lm_path(cfg: FlywheelConfig, paths: Paths) -> Path | None:
    if "upr" not in cfg.judge.features:
        return None
    from models.upr import gemma_checkpoint
    return gemma_checkpoint(paths.models)


def extractor(cfg: FlywheelConfig, paths: Paths, progress=None, lm_prompt: str | None = None) -> FeatureExtractor:
    from flywheel.judge.policy import load_policy

    fields = tuple(load_policy(cfg.resolve(cfg.policy)).document_fields)
    return FeatureExtractor(retriever(paths), cfg.judge.features, lm_path(cfg, paths),
                            cache_dir=paths.home / "cache", max_doc_tokens=cfg.judge.max_doc_tokens,
                            progress=progress, fields=fields, lm_prompt=lm_prompt or cfg.judge.lm_prompts[0])


def save_judge(judge: OfflineJudge, paths: Paths) -> Path:
    d = paths.home / "judges"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{judge.version}.json"
    state = {"policy_version": judge.policy.version, "features": list(judge.extractor.features),
             "mean": judge.mean.tolist(), "std": judge.std.tolist(), "weights": judge.weights.tolist(),
             "bias": judge.bias, "cuts": judge.cuts.tolist(), "model": judge.model,
             "lm_prompt": judge.extractor.lm_prompt}
    tmp = d / f".tmp-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(state, indent=2))
    os.replace(tmp, path)
    return path


def save_judge_spec(judge: OpenAIJudge, paths: Paths) -> Path:
    """The openai judge's derived spec (its few-shot exemplars) by version, for labelling runs to rebuild it."""
    d = paths.home / "judges"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{judge.version}.json"
    tmp = d / f".tmp-{uuid.uuid4().hex}"
    tmp.write_text(json.dumps({"backend": "openai", "policy_version": judge.policy.version,
                               "examples": [e.model_dump() for e in judge.policy.examples]}, indent=2))
    os.replace(tmp, path)
    return path


def load_judge(version: str, policy: Policy, cfg: FlywheelConfig, paths: Paths, progress=None):
    path = paths.home / "judges" / f"{version}.json"
    if cfg.judge.backend == "openai":
        # a judge whose exemplars calibration chose from the golden set keeps them in its spec file
        if path.exists():
            # exemplars saved before examples had to show exactly the document fields still load
            policy = type(policy).model_validate({**policy.model_dump(), "examples": json.loads(path.read_text())["examples"]},
                                                 context={"defer_consistency": True})
        j = OpenAIJudge(policy, cfg.judge.openai_model, cfg.judge.openai_base_url, settings=OnlineSettings.from_config(cfg.judge))
    else:
        if not path.exists():
            raise FileNotFoundError(f"no fitted judge {version} under {path.parent}: run calibration first")
        s = json.loads(path.read_text())
        j = OfflineJudge(policy, extractor(cfg, paths, progress, s.get("lm_prompt")), np.array(s["mean"]),
                         np.array(s["std"]), np.array(s["weights"]), s["bias"], np.array(s["cuts"]))
    if j.version != version:
        raise RuntimeError(f"judge version mismatch: asked for {version}, rebuilt {j.version} "
                           f"(the policy or judge configuration changed since calibration)")
    return j
