"""Training data fed to the device (models.data): the cached tokenisation gives, batch for batch, the tensors
encode_pairs gives; it is computed once per (tokenizer, contract, pairs) and read back after; DataLoader workers
deliver the same micro-batches as the loop's own process."""

import numpy as np
import pytest
import torch

from models import data
from models.contract import ScoringContract
from models.ranker import encode_pairs
from tests.dist_jobs import toy_pairs


@pytest.fixture(scope="module")
def encoder():
    from models.cross_encoder import build_cross_encoder

    _, tok = build_cross_encoder([0])
    return tok


@pytest.mark.parametrize("compression", ["none", "soft"])
def test_cached_rows_collate_to_what_encode_pairs_gives_the_same_batch(encoder, tmp_path, monkeypatch, compression):
    c = ScoringContract(max_length=24) if compression == "none" else \
        ScoringContract(max_length=24, compression="soft", soft_tokens=2, embed_dim=8)
    pairs = toy_pairs(n_queries=12, seed=3)
    first = data.tokenised(encoder, c, pairs, tmp_path)
    assert len(list(tmp_path.glob("tokens-*.arrow"))) == 1
    monkeypatch.setattr(data, "_tokenise", lambda *a, **k: pytest.fail("tokenised twice"))
    again = data.tokenised(encoder, c, pairs, tmp_path)                   # read back, memory-mapped
    assert again.equals(first)
    for idx in (np.array([0, 5, 17, 30]), np.arange(len(pairs)), np.array([9])):
        sub = pairs.iloc[idx]
        want = encode_pairs(encoder, c, sub["query"].tolist(), sub.title.tolist(), sub.text.tolist())
        got = data.collate(first, idx, encoder.pad_token_id)
        assert set(got) == set(want)
        for k in want:
            assert torch.equal(got[k], want[k]), k
    other = data.cache_key(encoder, ScoringContract(max_length=16), pairs)
    assert other != data.cache_key(encoder, c, pairs)                    # another contract, another cache entry


def test_loader_workers_deliver_the_loops_micro_batches(encoder):
    c = ScoringContract(max_length=24)
    pairs = toy_pairs(n_queries=6)
    tokens = data.tokenised(encoder, c, pairs)
    batches = [np.arange(i, min(i + 8, len(pairs))) for i in range(0, len(pairs), 8)]
    ds = data.MicroBatches(batches, tokens, pairs, np.arange(len(pairs)) // 4, "target", 0, world=2, accum=2, rank=1)
    here = list(data.loader(ds, 1, workers=0, pin=False))
    there = list(data.loader(ds, 1, workers=1, pin=False))
    assert len(here) == len(batches) - 1 == len(there)                   # resuming at batch 1
    for a, b in zip(here, there):
        assert [x["weight"] for x in a] == [x["weight"] for x in b]
        for x, y in zip(a, b):
            assert all(torch.equal(x["enc"][k], y["enc"][k]) for k in x["enc"]) and torch.equal(x["target"], y["target"])
    # batch 1 is 2 queries of 4 pairs, cut between queries into 4 parts: rank 1 gets one whole query and an
    # empty part (run as a zero-weight stand-in, so both ranks take as many backward passes)
    assert [len(x["target"]) for x in here[0]] == [4, 1] and [x["weight"] for x in here[0]] == [1.0, 0.0]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_gradient_checkpointing_and_bf16_autocast_train_the_same_model(precision, tmp_path):
    """Recomputing each block in the backward pass changes no gradient (tiny Qwen3, no dropout): the same weights
    within float rounding; under bf16 autocast on the CPU the loop runs and ends within bf16 rounding of fp32."""
    from models.decoder import DecoderRanker, build_tiny_qwen3, decoder_contract, train_bpe_tokenizer
    from models.runtime import Runtime
    from models.train import TrainConfig, train_ranker
    from tests.dist_jobs import WORDS

    pairs = toy_pairs()
    tok = train_bpe_tokenizer((pairs.title + " " + pairs.text).tolist() + WORDS * 10, vocab_size=600)
    c = decoder_contract(tok, max_length=32)
    out = {}
    for ckpt in (False, True):
        model = DecoderRanker(build_tiny_qwen3(tok, "qwen3-tiny", seed=0), c.yes_token_id, c.no_token_id)
        res = train_ranker(model, tok, c, pairs, "target", "labels",
                           TrainConfig(epochs=1, batch_size=8, lr=1e-3, gradient_checkpointing=ckpt),
                           runtime=Runtime(torch.device("cpu"), precision))
        assert model.lm.model.gradient_checkpointing is ckpt            # HF's flag: blocks recomputed in backward
        out[ckpt] = (res.losses, {k: v.clone() for k, v in model.state_dict().items()})
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert out[True][0] == pytest.approx(out[False][0], abs=tol)
    assert max((out[True][1][k] - out[False][1][k]).abs().max().item() for k in out[True][1]) <= tol
    assert out[True][1]["lm.model.layers.0.self_attn.q_proj.weight"].dtype == torch.float32   # fp32 master weights


def test_length_buckets_pad_fewer_tokens_and_keep_every_pair_of_the_step(encoder):
    c = ScoringContract(max_length=64)
    pairs = toy_pairs(n_queries=8, seed=4)
    pairs["text"] = [" ".join([t] * (1 + i % 7)) for i, t in enumerate(pairs.text)]    # lengths that vary
    tokens = data.tokenised(encoder, c, pairs)
    batches = [np.arange(len(pairs))]
    padded, seen = {}, {}
    for bucket in (False, True):
        ds = data.MicroBatches(batches, tokens, pairs, np.arange(len(pairs)) // 4, "target", 0, world=1, accum=4,
                               rank=0, bucket=bucket)
        items = ds[0]
        padded[bucket] = sum(x["enc"]["input_ids"].numel() for x in items)
        seen[bucket] = sorted(x["enc"]["input_ids"][i][x["enc"]["attention_mask"][i].bool()].tolist().__repr__()
                              for x in items for i in range(len(x["target"])))
    assert seen[True] == seen[False]                     # the same pairs train in the step
    assert padded[True] < padded[False]
