"""The model a scoring service holds: one registered version of a ranker, loaded once on the configured device
and dtype, warmed up, scoring through the same optimised scorer as evaluation (``models.ranker.score_pairs``:
length buckets, each query's prefix run once for decoders, the two-row yes/no head).

:class:`ServedModel` is immutable once built; the service swaps one for another in a single reference
assignment, so a batch is always scored by one whole model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

from models.contract import SCORE_TOLERANCE, ScoringContract

log = logging.getLogger("flywheel.serving")


def resolve_serving_device(name: str) -> torch.device:
    """``auto`` → the (first visible) GPU when torch sees one, else the CPU; ``cuda[:N]`` insists on a GPU."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"serving.device is {name} but torch sees no CUDA device: use auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(setting: str, contract: ScoringContract, device: torch.device) -> str:
    """The dtype a model serves in: ``auto`` is bfloat16 on a GPU and the checkpoint's own scoring dtype on a CPU."""
    if contract.dtype == "int8" and device.type != "cpu":
        raise RuntimeError("this checkpoint scores in int8 (CPU dynamic quantization); serve it on device: cpu, or "
                           "register its float32 parent for a GPU")
    if setting == "auto":
        return "bfloat16" if device.type == "cuda" else contract.dtype
    if contract.dtype == "int8":
        raise RuntimeError(f"serving.dtype {setting}: this checkpoint scores in int8; use serving.dtype: auto")
    return setting


@dataclass(frozen=True)
class ServedModel:
    name: str
    version: str
    model_version: str | None        # the content key of the checkpoint (the rung's model_version tag)
    model: object
    tokenizer: object
    contract: ScoringContract
    device: str
    dtype: str
    forward_batch: int = 64
    warm_rate: float = 0.0           # pairs/s measured by the warm-up: the batcher's rate before real traffic

    @property
    def tolerance(self) -> float:
        """How far a pair's score may move with what it is batched with (models.contract.SCORE_TOLERANCE)."""
        return SCORE_TOLERANCE[self.dtype]

    def score(self, queries: list[str], titles: list[str], texts: list[str]) -> list[float]:
        from flywheel.retrieval.embeddings import document_inputs
        from models.ranker import score_pairs

        return score_pairs(self.model, self.tokenizer, self.contract, queries, titles, texts, self.forward_batch,
                           **document_inputs(self.contract, titles, texts))

    def describe(self) -> dict:
        return {"model": self.name, "version": self.version, "model_version": self.model_version,
                "family": self.contract.family, "device": self.device, "dtype": self.dtype}


def warm_up(served: ServedModel) -> float:
    """Score one batch per length bucket (documents of 8, 16, 32, … tokens up to the contract's maximum), so the
    first real requests meet no first-call cost (allocator growth, kernel selection on a GPU), then the longest
    bucket again, timed. Returns its pairs/s: the rate the batcher assumes until real batches have been timed."""
    width = 8
    while True:
        doc = " ".join(["relevance"] * width)
        n = served.forward_batch
        served.score(["warm up query"] * n, ["warm up"] * n, [doc] * n)
        if width >= served.contract.max_length:
            break
        width *= 2
    t0 = time.perf_counter()
    served.score(["warm up query"] * n, ["warm up"] * n, [doc] * n)
    if served.device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def alias_target(name: str, alias: str) -> tuple[str, str | None]:
    """(version, model_version tag) that ``name@alias`` points at now, from the tracking server."""
    from mlflow import MlflowClient

    mv = MlflowClient().get_model_version_by_alias(name, alias)
    return str(mv.version), mv.tags.get("model_version")


def load_served(name: str, version: str, settings, model_version: str | None = None) -> ServedModel:
    """Load ``models:/<name>/<version>`` (the pyfunc's checkpoint and scoring contract) onto the serving device in
    the serving dtype, and warm it up. ``settings`` is a :class:`flywheel.config.ServingConfig`."""
    import mlflow.pyfunc

    t0 = time.perf_counter()
    wrapper = mlflow.pyfunc.load_model(f"models:/{name}/{version}").unwrap_python_model()
    model, tok, contract = wrapper.model, wrapper.tok, wrapper.contract
    device = resolve_serving_device(settings.device)
    dtype = resolve_dtype(settings.dtype, contract, device)
    if dtype != contract.dtype:
        model = model.to(getattr(torch, dtype))
    model = model.to(device).eval()
    served = ServedModel(name, str(version), model_version, model, tok, contract, str(device), dtype,
                         settings.forward_batch)
    import dataclasses

    served = dataclasses.replace(served, warm_rate=warm_up(served))
    log.info("loaded and warmed %s v%s on %s in %s in %.1fs (%.0f pairs/s at full length)", name, version, device,
             dtype, time.perf_counter() - t0, served.warm_rate)
    return served
