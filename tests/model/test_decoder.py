"""Decoder rankers (tiny Qwen3 built from a config): the yes/no two-row score equals the full-vocabulary logits,
does not depend on batch composition or on the shared-prefix path, survives save → load and depth pruning, and
trains on a toy task to rank far better than chance."""

import numpy as np
import pandas as pd
import pytest

from models.decoder import (
    DecoderRanker,
    build_tiny_qwen3,
    decoder_contract,
    encode_pairs,
    length_buckets,
    train_bpe_tokenizer,
)
from models.prune import block_influence, prune_layers
from models.ranker import load_ranker, save_ranker, score_pairs
from tests.dist_jobs import WORDS, toy_pairs

def _toy(n_queries: int, seed: int) -> pd.DataFrame:
    return toy_pairs(n_queries, seed, docs=6)


@pytest.fixture(scope="module")
def tiny():
    from flywheel.data.golden import load_golden

    g = load_golden()
    texts = (g.documents.title + " " + g.documents.text).tolist()[:400] + g.queries.text.tolist() + WORDS * 20
    tok = train_bpe_tokenizer(texts, vocab_size=1024)
    lm = build_tiny_qwen3(tok, "qwen3-tiny", seed=0)
    contract = decoder_contract(tok, max_length=48)
    return DecoderRanker(lm, contract.yes_token_id, contract.no_token_id), tok, contract


def test_two_row_score_equals_full_vocabulary_logit_difference(tiny):
    model, tok, contract = tiny
    enc = encode_pairs(tok, contract, ["crime by neighbourhood"], ["Crime incidents"], ["Reported crimes by area"])
    ours = model(**enc).logits[0, 0]
    full = model.lm(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[0, -1]   # [V]
    assert ours.item() == pytest.approx((full[contract.yes_token_id] - full[contract.no_token_id]).item(), abs=1e-4)


def test_score_does_not_depend_on_batch_composition_or_prefix_sharing(tiny):
    model, tok, contract = tiny
    q = ["school test scores"] * 3 + ["budget 2014"] * 2
    t = ["School results", "Enrollment", "Parks", "City budget", "Budget by department and fund, all years"]
    x = ["Scores by school and year", "", "Park locations and opening hours " * 6, "Spending", "Adopted budget"]
    alone = [score_pairs(model, tok, contract, [a], [b], [c], shared_prefix=False)[0] for a, b, c in zip(q, t, x)]
    batched = score_pairs(model, tok, contract, q, t, x, shared_prefix=False)
    shuffled = score_pairs(model, tok, contract, q[::-1], t[::-1], x[::-1], shared_prefix=False)[::-1]
    shared = score_pairs(model, tok, contract, q, t, x, shared_prefix=True)
    np.testing.assert_allclose(batched, alone, atol=1e-4)
    np.testing.assert_allclose(shuffled, alone, atol=1e-4)
    np.testing.assert_allclose(shared, alone, atol=1e-4)
    assert len({round(v, 4) for v in alone}) == 5                     # different pairs, different scores


def _padded_cost(batches, length, overhead):
    return sum(len(b) * max(length[i] for i in b) + overhead for b in batches)


def _all_splits(items):
    if not items:
        yield []
        return
    for k in range(1, len(items) + 1):
        for rest in _all_splits(items[k:]):
            yield [items[:k]] + rest


@pytest.mark.parametrize("seed", range(5))
def test_length_buckets_find_the_cheapest_split_and_respect_the_batch_cap(seed):
    rng = np.random.default_rng(seed)
    lengths = sorted(int(v) for v in rng.integers(3, 120, size=9))
    order = list(range(100, 109))                                   # item ids, already sorted by length
    length = dict(zip(order, lengths))
    for cap, overhead in ((9, 0), (4, 0), (9, 30), (3, 500)):
        got = length_buckets(order, lengths, cap, overhead)
        assert [i for b in got for i in b] == order and all(len(b) <= cap for b in got)
        best = min(_padded_cost(s, length, overhead) for s in _all_splits(order) if all(len(b) <= cap for b in s))
        assert _padded_cost(got, length, overhead) == best
    assert length_buckets(order, lengths, 9, 10 ** 9) == [order]      # a huge batch cost: one batch
    with pytest.raises(ValueError, match="sorted"):
        length_buckets([0, 1], [5, 2], 4)


def test_shared_prefix_scores_the_same_when_a_query_splits_into_length_buckets(tiny, monkeypatch):
    import models.decoder as dec

    model, tok, contract = tiny
    t = [f"Title {i}" for i in range(10)]
    x = ["budget " * (1 + 3 * i) for i in range(10)]                  # lengths from 1 to 28 words
    q = ["city budget"] * 10
    calls = []
    real = dec.length_buckets
    monkeypatch.setattr(dec, "length_buckets", lambda *a: calls.append(real(*a, overhead_tokens=0)) or calls[-1])
    shared = score_pairs(model, tok, contract, q, t, x, batch_size=4, shared_prefix=True)
    assert len(calls[0]) >= 3                                          # several buckets for one query
    alone = [score_pairs(model, tok, contract, [a], [b], [c], shared_prefix=False)[0] for a, b, c in zip(q, t, x)]
    np.testing.assert_allclose(shared, alone, atol=1e-4)


def test_many_queries_in_one_batch_score_as_each_query_alone_with_the_same_tokens(tiny, golden, monkeypatch):
    """The shared-prefix scorer batches documents of different queries together (the service's dynamic batches):
    each row reads its own query's prefix cache with the other prefixes' padding masked. Tokens equal the
    contract's layout (``segments``) pair by pair, documents cut to fit included; scores equal each query scored
    alone and whole prompts scored without any cache."""
    import models.decoder as dec
    from models.contract import doc_strings

    model, tok, contract = tiny
    p = golden.pairs("test")
    q, t, x = p["query"].tolist(), p.title.tolist(), p.text.tolist()
    prefixes, rows = dec.prepare_shared_prefix(tok, contract, q, t, x)
    assert len(prefixes) == p["query"].nunique() and len({len(a) for a in prefixes}) > 1    # prefixes differ in length
    cut = 0
    for i, d in enumerate(doc_strings(tok, contract, t, x)):
        a, b = dec.segments(tok, contract, q[i], d)
        assert (prefixes[rows[i][0]], rows[i][1]) == (a, b)
        cut += len(a) + len(b) == contract.max_length
    assert cut > 10                                                    # truncated documents are covered
    together = score_pairs(model, tok, contract, q, t, x, batch_size=32)
    alone = np.zeros(len(q))
    for _, g in p.reset_index(drop=True).groupby("query_id"):
        alone[g.index] = score_pairs(model, tok, contract, g["query"].tolist(), g.title.tolist(), g.text.tolist())
    whole = score_pairs(model, tok, contract, q, t, x, shared_prefix=False)
    np.testing.assert_allclose(together, alone, atol=1e-4)
    np.testing.assert_allclose(together, whole, atol=1e-4)
    monkeypatch.setattr(dec, "MAX_PREFIXES", 7)                      # an offline call too big for one cache
    np.testing.assert_allclose(score_pairs(model, tok, contract, q, t, x, batch_size=32), together, atol=1e-4)


def test_saved_ranker_loads_by_contract_and_scores_the_same(tmp_path, tiny):
    model, tok, contract = tiny
    path = save_ranker(model, tok, contract, tmp_path / "dec")
    m2, tok2, c2 = load_ranker(path)
    assert c2 == contract and isinstance(m2, DecoderRanker)
    args = (["water quality"] * 2, ["Water samples", "Fire stations"], ["Lab results by site", "Station list"])
    np.testing.assert_allclose(score_pairs(m2, tok2, c2, *args), score_pairs(model, tok, contract, *args), atol=1e-5)


def test_rankers_loaded_in_many_threads_at_once_load_whole_and_leave_later_loads_whole(tmp_path, tiny):
    """The scoring service loads a promoted model in its poller thread while others load too. transformers 5 swaps
    process-wide functions during from_pretrained; unserialised, six threads loading at once left
    PreTrainedModel.tie_weights a no-op for the rest of the process, and every later load of a tied decoder kept
    its output layer on the meta device ("Cannot copy out of meta tensor"). models.loading serialises the loads."""
    import threading

    import torch
    from transformers.modeling_utils import PreTrainedModel

    model, tok, contract = tiny
    path = save_ranker(model, tok, contract, tmp_path / "dec")
    before = (PreTrainedModel.init_weights, PreTrainedModel.tie_weights, torch.nn.init.normal_)
    loaded, errors = [], []

    def load():
        try:
            for _ in range(5):
                loaded.append(load_ranker(path)[0])
        except Exception as exc:          # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(6)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and len(loaded) == 30
    assert (PreTrainedModel.init_weights, PreTrainedModel.tie_weights, torch.nn.init.normal_) == before
    args = (["water quality"], ["Water samples"], ["Lab results by site"])
    want = score_pairs(model, tok, contract, *args)
    for m in loaded[::7] + [load_ranker(path)[0]]:
        assert not any(p.is_meta for p in m.parameters())
        np.testing.assert_allclose(score_pairs(m, tok, contract, *args), want, atol=1e-5)


def test_depth_pruned_decoder_loads_with_plain_from_pretrained_and_caches_consistently(tmp_path, tiny):
    from transformers import AutoModelForCausalLM

    from models.decoder import build_tiny_qwen3 as build

    _, tok, contract = tiny
    model = DecoderRanker(build(tok, "qwen3-tiny", seed=1), contract.yes_token_id, contract.no_token_id)
    toy = _toy(4, 0)
    infl = block_influence(model, tok, contract, toy["query"].tolist(), toy.title.tolist(), toy.text.tolist())
    keep = prune_layers(model, infl, 2)
    assert len(keep) == 2 and model.config.num_hidden_layers == 2
    save_ranker(model, tok, contract, tmp_path / "pruned")
    lm = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")
    assert lm.config.num_hidden_layers == 2 and len(lm.model.layers) == 2
    m2, tok2, c2 = load_ranker(tmp_path / "pruned")
    args = (toy["query"].tolist()[:6], toy.title.tolist()[:6], toy.text.tolist()[:6])
    np.testing.assert_allclose(score_pairs(m2, tok2, c2, *args, shared_prefix=True),
                               score_pairs(m2, tok2, c2, *args, shared_prefix=False), atol=1e-4)


def test_tiny_decoder_learns_to_rank_a_toy_task(tiny):
    from flywheel.metrics import ndcg_at_10
    from models.decoder import build_tiny_qwen3 as build
    from models.train import TrainConfig, train_ranker

    _, tok, contract = tiny
    model = DecoderRanker(build(tok, "qwen3-tiny", seed=2), contract.yes_token_id, contract.no_token_id)
    train, test = _toy(60, 1), _toy(20, 2)

    def ndcg(m):
        s = score_pairs(m, tok, contract, test["query"].tolist(), test.title.tolist(), test.text.tolist())
        return ndcg_at_10(test, s, "target")

    before = ndcg(model)
    losses = train_ranker(model, tok, contract, train, "target", "labels",
                          TrainConfig(epochs=6, lr=3e-3, batch_size=24, seed=0, ranknet_weight=1.0)).losses
    after = ndcg(model)
    rng = np.random.default_rng(0)
    chance = np.mean([ndcg_at_10(test, rng.random(len(test)), "target") for _ in range(20)])
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert after > chance + 0.15 and after > before + 0.1, (before, after, chance)


def test_gpu_scoring_bench_scores_like_the_naive_way_on_a_cpu_smoke_run():
    """bench/scoring_gpu.sh is meant for a lent GPU; its CPU smoke mode runs the same code on a tiny Qwen3 so a
    broken script is caught here, and its optimised (bf16, shared prefix, two-row head) scores must rank the
    documents as the naive float32 full-vocabulary forward does."""
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["bash", "bench/scoring_gpu.sh", "--smoke-cpu", "--queries", "2"], cwd=root,
                          capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    m = re.search(r"agreement on (\d+) pairs: Spearman ([\d.]+), max \|optimised - naive\| ([\d.]+) "
                  r"\(naive scores span ([\d.]+)\)", proc.stdout)
    assert m, proc.stdout
    n, rho, diff, span = int(m[1]), float(m[2]), float(m[3]), float(m[4])
    assert n == 32 and span > 0 and rho > 0.99 and diff < 0.05 * span
    assert re.search(r"batch +256: p50 latency +[\d.]+ ms +\d+ items/s", proc.stdout)
    assert re.search(r"optimised / naive = \d+x", proc.stdout)
