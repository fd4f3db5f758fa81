"""The relevance judge: one method, ``judge(pairs) -> judgments``, with two backends.

- ``OpenAIJudge``: an instruction-tuned LLM behind any OpenAI-compatible endpoint, prompted with the policy.
- ``OfflineJudge``: no network, no generation. A linear model over real relevance evidence (Gemma 3 270M query
  likelihood, BM25, MiniLM cosine) whose output is mapped onto the policy's grade scale with cut-points fitted
  on the golden calibration split. It is a calibrated scorer standing in for an LLM judge, and says so in every
  rationale.

Both return one row per pair with: grade (None unless parse_status == "ok"), score, dimension_scores (JSON),
rationale, parse_status, raw_response. ``judge_version`` hashes everything that can change a label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from flywheel.data.lake import sha256_text
from flywheel.judge.agreement import apply_cutpoints, fit_cutpoints
from flywheel.judge.policy import Policy
from flywheel.judge.prompt import JUDGMENT_COLUMNS, judgment_row, output_schema, system_prompt, user_prompt

# ---------------------------------------------------------------- offline backend

@dataclass
class OfflineJudge:
    policy: Policy
    extractor: object                      # flywheel.judge.features.FeatureExtractor
    mean: np.ndarray = field(default=None)
    std: np.ndarray = field(default=None)
    weights: np.ndarray = field(default=None)
    bias: float = 0.0
    cuts: np.ndarray = field(default=None)
    backend: str = "offline"

    @property
    def model(self) -> str:
        lm = f"+lm:{self.extractor.tag}" if "upr" in self.extractor.features else ""
        return "linear(" + ",".join(self.extractor.features) + ")" + lm

    @property
    def prompt_hash(self) -> str:
        from models import upr
        return sha256_text(*upr.PROMPTS[getattr(self.extractor, "lm_prompt", "portal")])[:16]

    @property
    def version(self) -> str:
        if self.weights is None:
            raise RuntimeError("the offline judge is not fitted: call fit() on calibration pairs first")
        params = json.dumps([self.mean.tolist(), self.std.tolist(), self.weights.tolist(), self.bias,
                             self.cuts.tolist()])
        return sha256_text(self.policy.version, self.backend, self.model, self.prompt_hash, params)[:16]

    def _score(self, feats: pd.DataFrame) -> np.ndarray:
        return ((feats.to_numpy() - self.mean) / self.std) @ self.weights + self.bias

    def fit(self, pairs: pd.DataFrame, human_mean: np.ndarray, feats: pd.DataFrame | None = None) -> "OfflineJudge":
        from sklearn.linear_model import Ridge

        feats = self.extractor.transform(pairs) if feats is None else feats
        x = feats.to_numpy()
        self.mean, self.std = x.mean(0), x.std(0) + 1e-9
        reg = Ridge(alpha=1.0).fit((x - self.mean) / self.std, human_mean)
        self.weights, self.bias = reg.coef_.astype(float), float(reg.intercept_)
        self.cuts = fit_cutpoints(self._score(feats), human_mean, n_grades=self.policy.max_grade + 1)
        return self

    def judge(self, pairs: pd.DataFrame, feats: pd.DataFrame | None = None) -> pd.DataFrame:
        feats = self.extractor.transform(pairs) if feats is None else feats
        score = self._score(feats)
        grade = apply_cutpoints(score, self.cuts)
        z = (feats.to_numpy() - self.mean) / self.std
        top = self.policy.max_grade
        out = []
        for i in range(len(pairs)):
            contrib = {f: round(float(z[i, j] * self.weights[j]), 3) for j, f in enumerate(feats.columns)}
            dims = {d.name: int(grade[i]) for d in self.policy.dimensions}
            if "cosine" in feats.columns:      # semantic closeness speaks to topic: mid-scale ± half the scale per sd
                zc = z[i, list(feats.columns).index("cosine")]
                dims[self.policy.dimensions[0].name] = int(np.clip(np.round(top / 2 + top / 2 * zc), 0, top))
            rationale = (f"offline judge (not an LLM): expected grade {score[i]:.2f} from evidence "
                         + ", ".join(f"{k} {v:+.2f}" for k, v in contrib.items()))
            out.append({"grade": int(grade[i]), "score": float(score[i]), "dimension_scores": json.dumps(dims),
                        "rationale": rationale, "parse_status": "ok", "raw_response": None})
        return pd.DataFrame(out, index=pairs.index, columns=JUDGMENT_COLUMNS)


# ---------------------------------------------------------------- OpenAI-compatible backend

@dataclass
class OpenAIJudge:
    """An LLM behind any OpenAI-compatible endpoint. ``judge`` runs the online engine (flywheel.judge.online):
    concurrent requests, retries, repair; a pair that still fails is returned with parse_status "error"."""
    policy: Policy
    model: str
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    max_repairs: int = 1
    temperature: float = 0.0
    settings: object = None            # flywheel.judge.online.OnlineSettings
    backend: str = "openai"
    progress: object = None            # called with 1 per judged pair (not part of the version)

    def __post_init__(self):
        import os

        from flywheel.judge.online import OnlineSettings

        self.api_key = os.environ.get(self.api_key_env)
        if not self.api_key:
            raise RuntimeError(f"the openai judge backend needs an API key in ${self.api_key_env}")
        self.settings = self.settings or OnlineSettings()
        self.settings.max_repairs = self.max_repairs
        self.last_run: dict = {}

    @property
    def prompt_hash(self) -> str:
        return sha256_text(system_prompt(self.policy), user_prompt("{q}", "{t}", "{x}", self.policy.document_fields),
                           json.dumps(output_schema(self.policy)))[:16]

    @property
    def version(self) -> str:
        return sha256_text(self.policy.version, self.backend, self.model, self.prompt_hash,
                           str(self.temperature), str(self.settings.max_tokens), self.settings.response_format,
                           str(self.settings.logprobs))[:16]

    def labeller(self):
        from flywheel.judge.online import OnlineLabeller

        return OnlineLabeller(self.policy, self.model, self.base_url, self.api_key, self.settings, self.temperature)

    def judge(self, pairs: pd.DataFrame) -> pd.DataFrame:
        import asyncio

        got: dict = {}
        pairs = pairs.assign(query_id=pairs.get("query_id", pd.Series(range(len(pairs)), index=pairs.index)).astype(str),
                             doc_hash=pairs.get("doc_hash", pd.Series("", index=pairs.index)).astype(str))
        self.last_run = asyncio.run(self.labeller().run(pairs, lambda batch: got.update(batch), self.progress))
        rows = []
        for i, r in pairs.iterrows():
            if i in got:
                rows.append(got[i])
            else:
                reason = next((v for k, v in self.last_run["failures"].items()
                               if k == f"{r['query_id']}/{r['doc_hash'][:12]}"), "not judged")
                rows.append(judgment_row("error", None, reason))
        return pd.DataFrame(rows, index=pairs.index, columns=JUDGMENT_COLUMNS)
