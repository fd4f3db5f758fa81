"""GPU scoring throughput of a Qwen3-0.6B-shaped decoder ranker (random weights: speed only), in bfloat16,
documents compressed to at most 32 tokens (field-aware, models.fields), each query's prefix run once.

    bash bench/scoring_gpu.sh [--latency-ms 50] [--queries 16]     # needs one CUDA GPU; runs in about 2 minutes

For batch sizes 64 … 4096 documents of one query it times the model work (prefix + documents + two-row head,
inputs tokenised beforehand as a service caches them per document version), and prints p50 batch latency and
items/s; the headline is items/s per GPU at the largest batch whose p50 latency stays within --latency-ms.
Beside it, on the same GPU: the same pairs scored without the shared prefix (whole prompts, batched), and the
naive way (one pair per forward, full-vocabulary logits, float32) — ratios measured side by side — and the
achieved FLOP/s as a share of this GPU's measured bf16 matmul peak.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


DEVICE = "cuda"


def sync():
    import torch

    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps: int) -> list[float]:
    fn()
    sync()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t)
    return out


def bf16_peak() -> float:
    import torch

    n = 8192 if DEVICE == "cuda" else 1024
    a = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=DEVICE, dtype=torch.bfloat16)
    ts = timed(lambda: a @ b, 10)
    return 2 * n ** 3 / statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--latency-ms", type=float, default=50.0, help="the batch latency budget (p50)")
    ap.add_argument("--queries", type=int, default=8, help="queries timed per batch size")
    ap.add_argument("--doc-tokens", type=int, default=32)
    ap.add_argument("--smoke-cpu", action="store_true",
                    help="check the script itself on a CPU with a tiny Qwen3 (figures mean nothing)")
    a = ap.parse_args()
    global DEVICE
    DEVICE = "cpu" if a.smoke_cpu else "cuda"

    import pandas as pd
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if DEVICE == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run this on a machine with one (see README, 'GPU scoring')")
    from models import decoder as dec
    from models.decoder import decoder_contract
    from models.ranker import count_params, input_lengths

    gold = ROOT / "golden_data" / "socrata"
    docs = pd.read_parquet(gold / "documents.parquet")
    queries = pd.read_parquet(gold / "queries.parquet").text.drop_duplicates().tolist()
    tok = dec.train_bpe_tokenizer((docs.title + ". " + docs.text).tolist() + queries)
    shape = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128)
    if a.smoke_cpu:
        shape = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    cfg = Qwen3Config(**shape, tie_word_embeddings=True, pad_token_id=tok.pad_token_id, max_position_embeddings=4096)
    torch.manual_seed(0)
    with torch.device(DEVICE):
        lm = Qwen3ForCausalLM(cfg).to(torch.bfloat16).eval()
    contract = replace(decoder_contract(tok, max_length=160), compression="fields", doc_budget=a.doc_tokens)
    model = dec.DecoderRanker(lm, contract.yes_token_id, contract.no_token_id).eval()
    n_params = count_params(model)
    gpu = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU (smoke run)"
    print(f"{gpu}; {'tiny Qwen3' if a.smoke_cpu else 'Qwen3-0.6B shape'}: {n_params / 1e6:.0f}M non-embedding parameters, bfloat16, "
          f"{torch.__version__}", flush=True)
    peak = bf16_peak()
    print(f"bf16 matmul peak (8192^3, measured): {peak / 1e12:.0f} TFLOP/s", flush=True)

    sizes = [64, 256, 1024, 2048, 4096] if DEVICE == "cuda" else [64, 256]
    pool = docs.sample(max(sizes), replace=True, random_state=0)
    titles, texts = pool.title.tolist(), pool.text.tolist()
    doc_len, _ = input_lengths(tok, contract, [queries[0]] * 256, titles[:256], texts[:256])
    print(f"documents: {sum(doc_len) / len(doc_len):.1f} tokens on average after compression "
          f"(max {max(doc_len)}), budget {a.doc_tokens}", flush=True)
    prepared = []                                        # (prefix, document suffixes) of each query
    for q in queries[:a.queries]:
        prefixes, pairs = dec.prepare_shared_prefix(tok, contract, [q] * len(titles), titles, texts)
        prepared.append((prefixes[0], [s for _, s in pairs]))

    def flops(prefix, suffixes):
        h, L = cfg.num_attention_heads * cfg.head_dim, cfg.num_hidden_layers
        P, f = len(prefix), 0.0
        f += sum(2 * n_params + L * 4 * h * (p + 1) for p in range(P))
        for s in suffixes:
            f += sum(2 * n_params + L * 4 * h * (P + j + 1) for j in range(len(s)))
        return f

    rows, best = [], None
    for b in sizes:
        lat, fl = [], 0.0
        for prefix, suf in prepared:
            lat += timed(lambda: dec.score_prepared(model, [prefix], [(0, x) for x in suf[:b]], contract.pad_token_id,
                                                    b), 2)
            fl += flops(prefix, suf[:b])
        p50 = statistics.median(lat)
        ips = b / p50
        util = fl / len(prepared) / p50 / peak
        rows.append((b, p50 * 1e3, ips, util))
        print(f"batch {b:5d}: p50 latency {p50 * 1e3:8.1f} ms  {ips:10.0f} items/s  {util:6.1%} of bf16 peak",
              flush=True)
        if p50 * 1e3 <= a.latency_ms:
            best = rows[-1]
        if DEVICE == "cuda":
            torch.cuda.empty_cache()

    # Side by side at 256 documents: whole prompts batched (no shared prefix), and the naive way.
    from models.ranker import encode_pairs

    q, n = queries[0], 256

    enc = encode_pairs(tok, contract, [q] * n, titles[:n], texts[:n])   # tokenised beforehand, like the others

    def whole():
        with torch.inference_mode():
            model(**{k: v.to(DEVICE) for k, v in enc.items()})

    t_whole = statistics.median(timed(whole, 3))
    lm32 = None
    k = 32

    singles = [encode_pairs(tok, contract, [q], [titles[i]], [texts[i]]) for i in range(k)]

    naive_scores: list[float] = []

    def naive():
        naive_scores.clear()
        with torch.no_grad():
            for e in singles:
                logits = lm32(input_ids=e["input_ids"].to(DEVICE), attention_mask=e["attention_mask"].to(DEVICE)).logits
                naive_scores.append(float(logits[0, -1, contract.yes_token_id] - logits[0, -1, contract.no_token_id]))

    lm32 = lm.float()
    t_naive = statistics.median(timed(naive, 2)) / k
    lm.to(torch.bfloat16)
    # The optimised scorer must score what the naive one does (bf16 against float32: ranks, not digits).
    from scipy.stats import spearmanr

    prefixes, pairs = dec.prepare_shared_prefix(tok, contract, [q] * k, titles[:k], texts[:k])
    with torch.inference_mode():
        opt_scores = dec.score_prepared(model, prefixes, pairs, contract.pad_token_id, k)
    diff = max(abs(x - y) for x, y in zip(opt_scores, naive_scores))
    spread = max(naive_scores) - min(naive_scores)
    print(f"agreement on {k} pairs: Spearman {spearmanr(opt_scores, naive_scores).statistic:.4f}, "
          f"max |optimised - naive| {diff:.4f} (naive scores span {spread:.4f})", flush=True)
    t_opt = next(r for r in rows if r[0] == 256)[1] / 1e3 / 256
    print(f"\n256 documents of one query: shared prefix {1 / t_opt:,.0f} items/s, whole prompts batched "
          f"{n / t_whole:,.0f} items/s, naive (one pair per forward, full vocabulary, float32) {1 / t_naive:,.0f} "
          f"items/s -> optimised / naive = {t_naive / t_opt:,.0f}x")
    if best:
        print(f"\nHEADLINE: {best[2]:,.0f} items/s per GPU ({gpu}) at batch {best[0]} with p50 latency "
              f"{best[1]:.1f} ms <= {a.latency_ms:.0f} ms; {best[3]:.1%} of the measured bf16 peak")
    else:
        print(f"\nno batch size met p50 <= {a.latency_ms:.0f} ms")


if __name__ == "__main__":
    main()
