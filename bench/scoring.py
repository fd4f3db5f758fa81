"""Naive versus optimised scoring of the same decoder ranker, and a standard stack on its export, side by side in
one run.

    python bench/scoring.py [--model gemma3-270m|qwen3-0.6b|qwen3-mini] [--dtype bfloat16] [--queries 4] [--docs 96]

naive:     one pair per forward pass, full-vocabulary logits at every position, then logit(yes) − logit(no) — how
           a newcomer writes it with transformers (under torch.no_grad, same tokens as the contract).
optimised: models.ranker.score_pairs — each query's prefix (instruction + query) run once and its key/value cache
           reused, a query's documents split into length buckets that minimise padded tokens
           (models.decoder.length_buckets), right padding, only the two output rows yes/no, inference mode.
crossencoder: sentence-transformers' CrossEncoder.predict (its default batching: 32 pairs, longest first) on the
           same model exported as a standard *ForSequenceClassification (flywheel.serving.export), in the
           optimised scorer's dtype, fed the formatted (query side, document side) pairs — what a team that
           takes the exported checkpoint gets without the flywheel's scorer. Formatting the pairs (tokenising to
           cut the query and document) is timed apart.

The workload is a second-stage ranker's: a few queries, each with ~100 retrieved candidates (``--docs``); with
fewer candidates per query the prefix is shared by fewer documents and the length buckets are coarser.

Prints items/s of each, the ratios, the largest score differences between them (they must agree), and the
optimised scorer's achieved FLOP/s (useful FLOPs over real tokens: 2 × non-embedding parameters per token plus
attention over the context; padding counts as waste) as a fraction of this CPU's matmul peak in the scorer's dtype,
measured here with torch.mm.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.settings import configure_environment  # noqa: E402


def matmul_peak(seconds: float = 3.0, dtype=None) -> float:
    """Best FLOP/s of square matrix products in ``dtype`` on this machine (all threads torch uses)."""
    import torch

    dtype = dtype or torch.float32
    best = 0.0
    for n in (1024, 2048, 3072):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            torch.mm(a, b)
            reps += 1
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


def random_lm(name: str, tok):
    """A causal LM with random weights for speed measurements: the Qwen3-0.6B shape (``qwen3-0.6b``) or a tiny
    preset of ``models.decoder.TINY_QWEN3``, over ``tok``'s vocabulary (0.6B: Qwen3's own vocabulary size)."""
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from models import decoder as dec

    if name != "qwen3-0.6b":
        return dec.build_tiny_qwen3(tok, name)
    cfg = Qwen3Config(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                      num_attention_heads=16, num_key_value_heads=8, head_dim=128, tie_word_embeddings=True,
                      pad_token_id=tok.pad_token_id, max_position_embeddings=2048)
    torch.manual_seed(0)
    return Qwen3ForCausalLM(cfg).eval()


def build_model(name: str, paths):
    from models import decoder as dec
    from models.decoder import decoder_contract

    if name == "gemma3-270m":
        from models.upr import gemma_checkpoint

        lm, tok = dec.load_causal_lm(gemma_checkpoint(paths.models))
        contract = decoder_contract(tok, max_length=160, bos=True)
    else:
        from flywheel.data.golden import load_golden

        g = load_golden()
        tok = dec.train_bpe_tokenizer((g.documents.title + ". " + g.documents.text).tolist() + g.queries.text.tolist())
        lm = random_lm(name, tok)
        contract = decoder_contract(tok, max_length=160)
    return dec.DecoderRanker(lm, contract.yes_token_id, contract.no_token_id).eval(), tok, contract


def exported_cross_encoder(model, tok, contract, dtype: str, queries, titles, texts):
    """(CrossEncoder on the model exported as a standard checkpoint, in ``dtype``; the formatted pairs; the
    seconds formatting took). The export is written to a temp dir and loaded back, as a user would."""
    import tempfile

    import torch
    from sentence_transformers import CrossEncoder

    from flywheel.serving.export import export_ranker, formatted_pair
    from models.ranker import save_ranker

    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        export_ranker(save_ranker(model, tok, contract, Path(tmp) / "checkpoint"), Path(tmp) / "exported")
        ce = CrossEncoder(str(Path(tmp) / "exported"), device="cpu", model_kwargs={"dtype": getattr(torch, dtype)})
    t0 = time.perf_counter()
    formatted = [formatted_pair(ce.tokenizer, contract, q, t, x) for q, t, x in zip(queries, titles, texts)]
    return ce, formatted, time.perf_counter() - t0


def useful_flops(model, tok, contract, queries, titles, texts) -> float:
    """FLOPs of the optimised path over real tokens: prefix once per query, document + cue per pair."""
    from models.decoder import segments
    from models.ranker import count_params

    cfg = model.config
    n = count_params(model, non_embedding=True)
    attn_width = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    layers = cfg.num_hidden_layers
    total, seen = 0.0, set()
    for q, t, x in zip(queries, titles, texts):
        p, s = segments(tok, contract, q, contract.doc_text(t, x))
        tokens = [] if q in seen else list(range(len(p)))
        seen.add(q)
        tokens += list(range(len(p), len(p) + len(s)))
        for pos in tokens:      # weights: 2 FLOPs per parameter; attention: QK and AV over pos+1 keys
            total += 2 * n + layers * 4 * attn_width * (pos + 1)
        total += 2 * cfg.hidden_size                     # the two-row head
    return total


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m", choices=["gemma3-270m", "qwen3-0.6b", "qwen3-mini", "qwen3-tiny"])
    ap.add_argument("--queries", type=int, default=4)
    ap.add_argument("--docs", type=int, default=96, help="candidate documents per query")
    ap.add_argument("--naive-pairs", type=int, default=48, help="pairs timed the naive way (it is slow)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=2, help="alternating timed rounds; the best of each is kept")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="dtype of the optimised scorer (the naive one stays float32); bfloat16 uses this CPU's "
                         "AVX512-BF16 units, and its peak is measured in bfloat16")
    a = ap.parse_args()
    paths = configure_environment()
    import numpy as np
    import torch
    from rich.console import Console
    from rich.table import Table

    from flywheel.data.golden import load_golden
    from models.ranker import count_params, score_pairs, score_pairs_naive

    console = Console()
    g = load_golden()
    rng = np.random.default_rng(0)
    qs = g.queries.text.sample(a.queries, random_state=0).tolist()
    docs = g.documents.sample(a.queries * a.docs, random_state=1, replace=len(g.documents) < a.queries * a.docs)
    queries = [q for q in qs for _ in range(a.docs)]
    titles, texts = docs.title.tolist(), docs.text.tolist()
    model, tok, contract = build_model(a.model, paths)
    ce, formatted, format_s = exported_cross_encoder(model, tok, contract, a.dtype, queries, titles, texts)
    console.print(f"model {a.model}: {model.config.num_hidden_layers} layers, hidden {model.config.hidden_size}, "
                  f"vocab {model.config.vocab_size}, {count_params(model) / 1e6:.1f}M non-embedding parameters; "
                  f"{len(queries)} pairs ({a.queries} queries × {a.docs} documents); torch threads "
                  f"{torch.get_num_threads()}")

    # naive: one pair per forward, full-vocabulary logits, float32 as loaded; optimised: the scorer in --dtype.
    # Timed alternately for --rounds rounds after a warm-up each, best round of each kept: this VM's speed drifts
    # by ±15% over a minute, and alternating exposes both scorers to the same drift.
    import copy

    sub = rng.choice(len(queries), size=min(a.naive_pairs, len(queries)), replace=False)
    opt_model = copy.deepcopy(model).to(getattr(torch, a.dtype))
    score_pairs_naive(model, tok, contract, queries[:1], titles[:1], texts[:1])                          # warm-up
    score_pairs(opt_model, tok, contract, queries[:a.docs], titles[:a.docs], texts[:a.docs], a.batch)   # warm-up
    ce.predict(formatted[:a.docs])                                                                      # warm-up
    naive_s = opt_s = ce_s = float("inf")
    for _ in range(a.rounds):
        t0 = time.perf_counter()
        naive = score_pairs_naive(model, tok, contract, [queries[i] for i in sub], [titles[i] for i in sub],
                                  [texts[i] for i in sub])
        naive_s = min(naive_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        opt = score_pairs(opt_model, tok, contract, queries, titles, texts, a.batch)
        opt_s = min(opt_s, time.perf_counter() - t0)
        t0 = time.perf_counter()
        ce_scores = ce.predict(formatted)
        ce_s = min(ce_s, time.perf_counter() - t0)
    naive_ips, opt_ips, ce_ips = len(sub) / naive_s, len(queries) / opt_s, len(queries) / ce_s
    dtype, model = getattr(torch, a.dtype), opt_model
    diff = float(np.max(np.abs(np.array(naive) - np.array(opt)[sub])))
    ce_diff = float(np.max(np.abs(np.asarray(ce_scores) - np.array(opt))))
    from scipy.stats import spearmanr

    rho = float(spearmanr(naive, np.array(opt)[sub]).statistic)
    flops = useful_flops(model, tok, contract, queries, titles, texts)
    peak = matmul_peak(dtype=dtype)

    tab = Table(title=f"Scoring {a.model} on this CPU (same model, same pairs)")
    for c in ("scorer", "pairs", "seconds", "items/s", "× naive", "× CrossEncoder"):
        tab.add_column(c, justify="right" if c != "scorer" else "left")
    for name, n, secs, ips in (("naive (per pair, full vocabulary)", len(sub), naive_s, naive_ips),
                               (f"optimised ({a.dtype}, shared prefix, batched, 2-row head)", len(queries), opt_s,
                                opt_ips),
                               (f"CrossEncoder.predict on the export ({a.dtype}, batch 32)", len(queries), ce_s,
                                ce_ips)):
        tab.add_row(name, str(n), f"{secs:.2f}", f"{ips:.1f}", f"{ips / naive_ips:.1f}", f"{ips / ce_ips:.2f}")
    console.print(tab)
    console.print(f"max |naive − optimised| score: {diff:.2e}; Spearman between them {rho:.4f}")
    console.print(f"max |CrossEncoder − optimised| score: {ce_diff:.2e} (both {a.dtype}); formatting its "
                  f"{len(formatted)} pairs took {format_s:.2f} s more (not in its time)")
    console.print(f"optimised scorer: {flops / opt_s / 1e9:.1f} GFLOP/s useful; {a.dtype} matmul peak "
                  f"{peak / 1e9:.1f} GFLOP/s → {flops / opt_s / peak:.0%} of peak")


if __name__ == "__main__":
    main()
