"""GPU training throughput of the decoder ladder's big rungs: Qwen3-0.6B- and Qwen3-1.7B-shaped rankers (random
weights built from their configs, no download) trained for a fixed number of steps by the project's own loop
(models.train.train_ranker: fp32 master weights, bf16 autocast, AdamW, the distillation loss MSE + MarginMSE), at
sequence length 512 and with the documents compressed to 32 tokens (field-aware, models.fields); then teacher
scoring of 50k pairs with the 0.6B shape through the sharded scorer (flywheel.training.scoring.score_missing, one
process), the checkpoint saved and loaded by path as the ladder does.

    bash bench/train_gpu.sh [--steps 10] [--micro-batch 16 8] [--peak-tflops 989]   # one CUDA GPU, < 5 minutes
    python bench/train_gpu.py --smoke-cpu            # the same code on tiny Qwen3 shapes, on the CPU (seconds)

Per rung and input, two rows over the same kind of batches:
- ``train_ranker``: the step as training runs it, end to end: the pairs are tokenised once before the first step
  (models.data, field compression included; not in the timed steps), then each step collates and pads its
  micro-batches, copies them to the device, runs forward, loss, backward, gradient clipping, AdamW, scheduler and
  the per-step loss read-back;
- ``model step``: the same micro-batches tokenised beforehand, then the same forward, loss, backward, clipping and
  AdamW (no LR schedule): what the device work alone allows. The gap between the two rows is the loop's CPU share.

Figures over the timed steps (after --warmup-steps): samples/s, tokens/s (real tokens: padding is not counted),
peak memory (torch.cuda.max_memory_allocated; on the CPU the process's max RSS) and MFU = model FLOP/s / the
GPU's bf16 dense peak, model FLOPs = sum over samples of 6·N·s + 12·L·d·s² (N non-embedding parameters, s the
sample's tokens, L layers, d = heads × head_dim: PaLM's formula, attention counted without the causal half);
"MFU 6N" leaves the attention term out. The yes/no head is two rows of the output projection and the embedding a
lookup, so neither counts. Peak: a table of datasheet bf16 dense (no sparsity) figures by GPU name,
--peak-tflops overrides; a GPU not in the table is measured against its own bf16 matmul (8192³), which is printed
in every case.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {   # the Qwen3-0.6B and Qwen3-1.7B config.json values (both tie the embeddings)
    "qwen3-0.6b": dict(num_hidden_layers=28, hidden_size=1024, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, intermediate_size=3072, vocab_size=151936),
    "qwen3-1.7b": dict(num_hidden_layers=28, hidden_size=2048, num_attention_heads=16, num_key_value_heads=8,
                       head_dim=128, intermediate_size=6144, vocab_size=151936),
}
SMOKE = {"qwen3-0.6b": "qwen3-tiny", "qwen3-1.7b": "qwen3-mini"}   # CPU stand-ins (models.decoder.TINY_QWEN3)
SCORER = "qwen3-0.6b"

# bf16 dense tensor-core peaks from the datasheets (TFLOP/s, without sparsity); the first name the device name
# contains wins, so the more specific names come first.
BF16_PEAK_TFLOPS = [("GH200", 989), ("H200 NVL", 836), ("H200", 989), ("H100 PCIe", 756), ("H100 NVL", 835),
                    ("H100", 989), ("H800", 989), ("H20", 148), ("B200", 2250), ("A100", 312), ("A800", 312),
                    ("L40S", 362), ("L40", 181), ("L4", 121)]
DOCS_PER_QUERY = 8   # training batches hold whole queries (MarginMSE needs their margins)

DEVICE = "cuda"


def sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def datasheet_peak(gpu: str) -> float | None:
    for name, tflops in BF16_PEAK_TFLOPS:
        if name.lower() in gpu.lower():
            return tflops * 1e12
    return None


def measured_peak(dtype) -> float:
    """FLOP/s of one big square matmul in ``dtype`` on this device (median of 10)."""
    import torch

    n = 8192 if DEVICE == "cuda" else 512
    a, b = (torch.randn(n, n, device=DEVICE, dtype=dtype) for _ in range(2))
    a @ b
    ts = []
    for _ in range(10):
        sync()
        t = time.perf_counter()
        a @ b
        sync()
        ts.append(time.perf_counter() - t)
    return 2 * n ** 3 / sorted(ts)[len(ts) // 2]


# ---------------------------------------------------------------- synthetic data (the speed does not care what it says)

def pseudo_words(rng, n: int = 4000) -> list[str]:
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    return sorted({"".join(rng.choice(syllables, int(rng.integers(2, 4)))) for _ in range(n)})


def documents(rng, words, n: int, length: int) -> tuple[list[str], list[str]]:
    """n (title, text) pairs; the text has ``length`` words, so at least ``length`` tokens."""
    w = rng.choice(words, size=(n, length + 4))
    return [" ".join(r[:4]) for r in w], [" ".join(r[4:]) for r in w]


def make_pairs(rng, words, titles, texts, n_queries: int, per_query: int, unique_docs: bool):
    """query_id, query, title, text, doc_hash, target (a random teacher score); ``per_query`` candidates a query,
    each document used once (training) or drawn from the pool, distinct within a query (scoring)."""
    import numpy as np
    import pandas as pd

    rows, n = [], len(titles)
    for q in range(n_queries):
        query = " ".join(rng.choice(words, int(rng.integers(3, 7))))
        docs = (np.arange(q * per_query, (q + 1) * per_query) if unique_docs
                else rng.choice(n, per_query, replace=False))
        for d in docs:
            rows.append((f"q{q}", query, titles[d], texts[d]))
    df = pd.DataFrame(rows, columns=["query_id", "query", "title", "text"])
    df["doc_hash"] = [hashlib.sha256(f"{t}\n{x}".encode()).hexdigest()[:16] for t, x in zip(df.title, df.text)]
    df["target"] = rng.normal(size=len(df)).astype("float32")
    return df


# ---------------------------------------------------------------- rungs and measurements

def build_rung(name: str, tok, smoke: bool):
    """A DecoderRanker of the rung's shape, random weights, float32 on the device (training keeps fp32 master
    weights and autocasts the forward pass)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from models.decoder import TINY_QWEN3, DecoderRanker, yes_no_ids

    if smoke:
        layers, hidden, heads, kv, inter = TINY_QWEN3[SMOKE[name]]
        shape = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                     num_key_value_heads=kv, head_dim=hidden // heads, intermediate_size=inter, vocab_size=len(tok))
    else:
        shape = SHAPES[name]
    cfg = Qwen3Config(**shape, tie_word_embeddings=True, max_position_embeddings=4096,
                      pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        lm = Qwen3ForCausalLM(cfg)
    return DecoderRanker(lm, *yes_no_ids(tok)).eval()


class TokenCounter:
    """The tokens the ranker reads, counted by a forward pre-hook: Σs and Σs² over samples (s = a sample's real
    tokens). Kept on the device, so counting adds no synchronisation to the loop it watches."""

    def __init__(self, model):
        self.s = self.s2 = 0
        self.handle = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        n = kwargs["attention_mask"].sum(1)                         # [B]
        self.s = self.s + n.sum()
        self.s2 = self.s2 + (n * n).sum()

    def read(self) -> tuple[int, int]:
        return int(self.s), int(self.s2)

    def close(self):
        self.handle.remove()


@dataclass
class Measure:
    seconds: float
    steps: int
    samples: int
    tokens: int
    tokens_sq: int
    peak_bytes: int


def peak_memory() -> int:
    import resource

    import torch

    if DEVICE == "cuda":
        return torch.cuda.max_memory_allocated()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024      # Linux: KiB


def reset_memory():
    import torch

    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def window(marks: list, warmup: int, batch_size: int, peak: int) -> Measure:
    """The steps after the first ``warmup`` ones, from (time, (Σs, Σs²)) marks taken at the end of every step."""
    (t0, (s0, q0)), (t1, (s1, q1)) = marks[warmup - 1], marks[-1]
    steps = len(marks) - warmup
    return Measure(t1 - t0, steps, steps * batch_size, s1 - s0, q1 - q0, peak)


def time_train_ranker(model, tok, contract, pairs, rt, tc, warmup: int) -> Measure:
    """models.train.train_ranker as the ladder calls it (mode distill), timed at the end of each step: the loop
    reads the step's loss back (``.item()``), so a step's mark comes after its device work."""
    from models.train import train_ranker

    counter, marks = TokenCounter(model), []

    def progress(n):
        marks.append((time.perf_counter(), counter.read()))

    reset_memory()
    try:
        train_ranker(model, tok, contract, pairs, "target", "distill", tc, progress=progress, runtime=rt)
    finally:
        counter.close()
    return window(marks, warmup, tc.batch_size, peak_memory())


def time_model_steps(model, tok, contract, pairs, rt, tc, warmup: int) -> Measure:
    """The same optimizer steps with every micro-batch tokenised beforehand: forward under autocast, score MSE +
    MarginMSE weighted by the micro-batch's share, backward, clipping, AdamW, loss read-back."""
    import numpy as np
    import pandas as pd
    import torch

    from models.losses import margin_mse, score_mse
    from models.ranker import encode_pairs
    from models.data import micro_batches
    from models.train import accumulation_steps

    accum = accumulation_steps(tc.batch_size, rt.world, tc.micro_batch_size, tc.grad_accum_steps)
    qidx = pd.factorize(pairs.query_id)[0]
    steps = []
    for start in range(0, len(pairs), tc.batch_size):           # pairs come grouped by query: whole queries a batch
        b = np.arange(start, min(start + tc.batch_size, len(pairs)))
        step = []
        for mb in micro_batches(b, rt.world, accum, rt.rank, qidx[b]):      # cut between queries, as the loop
            if not len(mb):
                continue
            sub = pairs.iloc[mb]
            enc = encode_pairs(tok, contract, sub["query"].tolist(), sub.title.tolist(), sub.text.tolist())
            step.append((enc, torch.tensor(sub.target.to_numpy(), dtype=torch.float32),
                         torch.as_tensor(qidx[mb]), len(mb) / len(b)))
        steps.append(step)
    counter, marks = TokenCounter(model), []
    reset_memory()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=tc.lr,
                            weight_decay=tc.weight_decay, fused=rt.device.type == "cuda" or None)
    scaler = rt.grad_scaler()
    model.train()
    try:
        for step in steps:
            step_loss = torch.zeros((), device=rt.device)
            for enc, y, group, weight in step:
                with rt.autocast():
                    logits = model(**{k: v.to(rt.device) for k, v in enc.items()}).logits[:, 0].float()   # [B]
                y, group = y.to(rt.device), group.to(rt.device)
                loss = (score_mse(logits, y) + tc.margin_weight * margin_mse(logits, y, group)) * weight
                scaler.scale(loss).backward()
                step_loss += loss.detach()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
            step_loss.item()
            marks.append((time.perf_counter(), counter.read()))
    finally:
        counter.close()
        model.eval()
        model.zero_grad(set_to_none=True)
    return window(marks, warmup, tc.batch_size, peak_memory())


def model_flops(m: Measure, n_params: int, cfg) -> tuple[float, float]:
    """(6N + attention, 6N) model FLOPs of the measured samples, forward and backward."""
    six_n = 6 * n_params * m.tokens
    attn = 12 * cfg.num_hidden_layers * cfg.num_attention_heads * cfg.head_dim * m.tokens_sq
    return six_n + attn, six_n


def time_teacher_scoring(ckpt: Path, pairs, paths) -> tuple[float, float, int]:
    """(seconds of score_missing, seconds of loading the checkpoint onto the device alone, peak memory): the
    scorer loads the ranker by path, scores its shard (world 1: all of it), commits the part and reads it back."""
    from flywheel.training.scoring import score_missing
    from models.ranker import load_ranker
    from models.runtime import resolve_device

    reset_memory()
    t = time.perf_counter()
    m, _, _ = load_ranker(ckpt)
    m.to(resolve_device("auto"))
    sync()
    load_s = time.perf_counter() - t
    del m
    reset_memory()
    parent = {"rung": "bench-scorer", "model_version": f"random-{ckpt.name}", "path": str(ckpt)}
    t = time.perf_counter()
    got = score_missing(parent, pairs, paths, rank=0, world=1)
    sync()
    total = time.perf_counter() - t
    if len(got) != len(pairs) or got.score.isna().any():
        raise RuntimeError(f"score_missing returned {len(got)} scores for {len(pairs)} pairs")
    return total, load_s, peak_memory()


# ---------------------------------------------------------------- the run

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke-cpu", action="store_true",
                    help="check the script itself on the CPU with tiny Qwen3 shapes (figures mean nothing)")
    ap.add_argument("--rungs", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--steps", type=int, help="timed optimizer steps per row (default 10; smoke 2)")
    ap.add_argument("--warmup-steps", type=int, help="untimed steps first, at least 1 (default 3; smoke 1)")
    ap.add_argument("--seq-len", type=int, help="max_length; the documents fill it (default 512; smoke 128)")
    ap.add_argument("--doc-tokens", type=int, default=32, help="the compressed case's document budget")
    ap.add_argument("--batch-size", type=int, help="pairs an optimizer step at --seq-len (default 64; smoke 16)")
    ap.add_argument("--batch-size-compressed", type=int, help="pairs a step, compressed (default 256; smoke 32)")
    ap.add_argument("--micro-batch", type=int, nargs=2, metavar=("N_0.6B", "N_1.7B"),
                    help="pairs a forward pass at --seq-len, per rung (default 16 8; smoke 8 8)")
    ap.add_argument("--micro-batch-compressed", type=int, nargs=2, metavar=("N_0.6B", "N_1.7B"),
                    help="pairs a forward pass, compressed (default 128 64; smoke 16 16)")
    ap.add_argument("--gradient-checkpointing", nargs="*", choices=list(SHAPES), default=[],
                    help="rungs that recompute activations in backward (default: none)")
    ap.add_argument("--precision", choices=["bf16", "fp16", "fp32"], default="bf16")
    ap.add_argument("--score-pairs", type=int, help="pairs the teacher scores (default 50000; smoke 200); 0 skips")
    ap.add_argument("--score-docs-per-query", type=int, help="candidates a query (default 50; smoke 10)")
    ap.add_argument("--score-dtype", choices=["bfloat16", "float32"], default="bfloat16",
                    help="the saved teacher's scoring dtype (its contract's dtype; the ladder saves float32 today)")
    ap.add_argument("--peak-tflops", type=float, help="the GPU's bf16 dense peak, if the table is wrong or lacks it")
    a = ap.parse_args(argv)
    gpu = dict(seq_len=512, steps=10, warmup_steps=3, batch_size=64, batch_size_compressed=256, micro_batch=[16, 8],
               micro_batch_compressed=[128, 64], score_pairs=50_000, score_docs_per_query=50)
    cpu = dict(seq_len=128, steps=2, warmup_steps=1, batch_size=16, batch_size_compressed=32, micro_batch=[8, 8],
               micro_batch_compressed=[16, 16], score_pairs=200, score_docs_per_query=10)
    for k, v in (cpu if a.smoke_cpu else gpu).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.warmup_steps < 1 or a.steps < 1:
        ap.error("--steps and --warmup-steps must be at least 1 (the first step's end starts the clock)")
    for flag, b in (("--batch-size", a.batch_size), ("--batch-size-compressed", a.batch_size_compressed)):
        if b % DOCS_PER_QUERY:
            ap.error(f"{flag} {b} must be a multiple of {DOCS_PER_QUERY} (batches hold whole queries)")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    global DEVICE
    DEVICE = "cpu" if a.smoke_cpu else "cuda"
    home = Path(tempfile.mkdtemp(prefix="flywheel-train-bench-"))
    try:
        return run(a, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def contract_for(tok, seq_len: int, doc_tokens: int, **kw):
    """The decoder contract at ``seq_len``; with ``doc_tokens`` the documents are field-compressed to that budget."""
    from models.decoder import decoder_contract

    c = decoder_contract(tok, max_length=seq_len)
    return replace(c, compression="fields", doc_budget=doc_tokens, **kw) if doc_tokens else replace(c, **kw)


def print_preamble(a, gpu: str) -> float:
    """Prints the device, the peak MFU is measured against and the table's header; returns that peak (FLOP/s)."""
    import torch
    import transformers

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[a.precision]
    measured = measured_peak(dtype)
    sheet = a.peak_tflops * 1e12 if a.peak_tflops else datasheet_peak(gpu) if DEVICE == "cuda" else None
    if sheet:
        print(f"device: {gpu}; MFU against {sheet / 1e12:.0f} TFLOP/s, the bf16 dense peak "
              f"({'--peak-tflops' if a.peak_tflops else 'datasheet'})")
    else:
        print(f"device: {gpu}; MFU against {measured / 1e12:.1f} TFLOP/s, the measured matmul below "
              f"(no datasheet figure for this device)")
    n = 8192 if DEVICE == "cuda" else 512
    print(f"measured {a.precision} matmul ({n}^3): {measured / 1e12:.1f} TFLOP/s"
          + (f" = {measured / sheet:.0%} of the peak" if sheet else ""))
    print(f"torch {torch.__version__}, transformers {transformers.__version__}; training: float32 master weights, "
          f"{a.precision} autocast, AdamW, distillation loss (MSE + MarginMSE), {DOCS_PER_QUERY} documents a query")
    head = (f"{'rung':<11} {'input':<12} {'measured':<12} {'micro x acc':>11} {'ckpt':>4} {'tok/sample':>10} "
            f"{'samples/s':>10} {'tokens/s':>11} {memory_label():>11} {'MFU':>6} {'MFU 6N':>7}")
    print("\n" + head + "\n" + "-" * len(head), flush=True)
    return sheet or measured


def memory_label() -> str:
    return "peak GiB" if DEVICE == "cuda" else "max RSS GiB"


def bench_rung(model, rung: str, a, tok, words, rng, rt, peak: float) -> list[str]:
    """Prints the rung's rows (each input, end to end and model step only); returns what ran out of memory."""
    import torch

    from models.ranker import count_params
    from models.train import TrainConfig

    n_params, cfg = count_params(model), model.config
    label = SMOKE[rung] if a.smoke_cpu else rung
    gc_on = rung in a.gradient_checkpointing
    cases = [(f"seq {a.seq_len}", 0, a.batch_size, a.micro_batch)]
    if a.doc_tokens:
        cases.append((f"docs {a.doc_tokens} tok", a.doc_tokens, a.batch_size_compressed, a.micro_batch_compressed))
    failed = []
    for input_name, doc_tokens, batch, micro_pair in cases:
        micro = micro_pair[list(SHAPES).index(rung)]
        contract = contract_for(tok, a.seq_len, doc_tokens)
        # documents never seen before (field compression caches per document: a first epoch is cold)
        titles, texts = documents(rng, words, batch * (a.warmup_steps + a.steps), a.seq_len)
        pairs = make_pairs(rng, words, titles, texts, len(titles) // DOCS_PER_QUERY, DOCS_PER_QUERY, unique_docs=True)
        tc = TrainConfig(epochs=1, batch_size=batch, max_steps=a.warmup_steps + a.steps, micro_batch_size=micro,
                         gradient_checkpointing=gc_on, seed=0)
        for what, fn in (("train_ranker", time_train_ranker), ("model step", time_model_steps)):
            row = (f"{label:<11} {input_name:<12} {what:<12} {f'{micro}x{batch // micro}':>11} "
                   f"{'on' if gc_on else 'off':>4}")
            try:
                m = fn(model, tok, contract, pairs, rt, tc, a.warmup_steps)
            except torch.cuda.OutOfMemoryError:
                m = None
            if m is None:                       # out of the except block: its traceback no longer holds tensors
                model.zero_grad(set_to_none=True)
                reset_memory()
                failed.append(f"{label} {input_name} {what}")
                print(f"{row}  out of memory: lower --micro-batch or add --gradient-checkpointing {rung}", flush=True)
                continue
            full, six_n = model_flops(m, n_params, cfg)
            print(f"{row} {m.tokens / m.samples:10.1f} {m.samples / m.seconds:10.1f} {m.tokens / m.seconds:11,.0f} "
                  f"{m.peak_bytes / 2 ** 30:11.2f} {full / m.seconds / peak:6.1%} {six_n / m.seconds / peak:7.1%}",
                  flush=True)
    print(f"{'':<11} ({label}: {n_params / 1e6:,.1f}M non-embedding parameters, {cfg.num_hidden_layers} layers, "
          f"hidden {cfg.hidden_size}, vocab {cfg.vocab_size})", flush=True)
    return failed


def save_teacher(model, a, tok, paths) -> tuple[Path, float]:
    """``model`` saved as the ladder saves a rung (the scorer loads it by path): (its path, seconds)."""
    import torch

    from models.ranker import save_ranker

    t = time.perf_counter()
    if a.score_dtype == "bfloat16":             # the scorer casts to the contract's dtype at load: half the file
        model.to(torch.bfloat16)
    ckpt = save_ranker(model, tok, contract_for(tok, a.seq_len, a.doc_tokens, dtype=a.score_dtype),
                       paths.models / "teacher")
    return ckpt, time.perf_counter() - t


def bench_scoring(ckpt: Path, save_s: float, a, words, rng, paths) -> None:
    """Prints score_missing's items/s on ``a.score_pairs`` pairs (``a.score_docs_per_query`` a query)."""
    label = SMOKE[SCORER] if a.smoke_cpu else SCORER
    per_q = a.score_docs_per_query
    n_q = a.score_pairs // per_q
    # a pool where each document is a candidate of about five queries (compression is cached per document)
    titles, texts = documents(rng, words, max(per_q, n_q * per_q // 5), 256)
    pairs = make_pairs(rng, words, titles, texts, n_q, per_q, unique_docs=False)
    secs, load_s, peak_b = time_teacher_scoring(ckpt, pairs, paths)
    doc = f"documents compressed to {a.doc_tokens} tokens" if a.doc_tokens else f"max_length {a.seq_len}"
    print(f"\nteacher scoring (flywheel.training.scoring.score_missing, world 1, {a.score_dtype}, {doc}): {label}, "
          f"{len(pairs)} items ({n_q} queries x {per_q}) in {secs:.1f} s: {len(pairs) / secs:,.0f} items/s end to "
          f"end; {len(pairs) / max(secs - load_s, 1e-9):,.0f} items/s less the checkpoint load ({load_s:.1f} s, "
          f"timed apart); {memory_label()} {peak_b / 2 ** 30:.2f}; checkpoint saved in {save_s:.1f} s", flush=True)


def run(a, home: Path) -> int:
    from flywheel.settings import configure_environment

    paths = configure_environment(home)             # before transformers reads its environment: offline, temp home

    import numpy as np
    import torch

    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run this on a machine with one, or pass --smoke-cpu")
    from models.decoder import train_bpe_tokenizer
    from models.runtime import init_runtime

    t_start = time.perf_counter()
    rt = init_runtime(DEVICE, a.precision, "single")
    rng = np.random.default_rng(0)
    words = pseudo_words(rng)
    tok = train_bpe_tokenizer(documents(rng, words, 300, a.seq_len)[1] + [" ".join(words)])
    peak = print_preamble(a, torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu smoke")
    failed, teacher = [], None
    for rung in a.rungs:
        reset_memory()
        model = build_rung(rung, tok, a.smoke_cpu)
        failed += bench_rung(model, rung, a, tok, words, rng, rt, peak)
        if rung == SCORER and a.score_pairs:
            teacher = save_teacher(model, a, tok, paths)
        del model
    reset_memory()
    if teacher:
        bench_scoring(*teacher, a, words, rng, paths)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s", flush=True)
    if failed:
        print(f"FAILED (out of memory): {', '.join(failed)}", flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
