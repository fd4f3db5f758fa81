"""Context compression: field-aware budgets follow the policy's field order; soft-token rankers score the same
alone, batched and after a save → load round trip, for both families; the pruned-model acceptance rule."""

import dataclasses

import numpy as np
import pytest

from flywheel.training.ladder import accept_pruned
from models.compress import SoftTokenRanker
from models.fields import compress_fields
from models.ranker import ScoringContract, input_lengths, load_ranker, save_ranker, score_pairs


@pytest.fixture(scope="module")
def minilm():
    from models.cross_encoder import build_cross_encoder

    return build_cross_encoder([0, 5])


def test_field_compression_keeps_fields_in_policy_order_within_budget(minilm):
    _, tok = minilm
    title, text = "Building Permits", "All of the building permits that were issued by the city since 2010"
    out = compress_fields(tok, [title, text], 8)
    assert out.startswith("building permits.")                          # the first field comes first
    assert len(tok(out, add_special_tokens=False)["input_ids"]) <= 8
    assert "the" not in out.split() and out.count("permits") == 1      # stop words and repeats dropped
    assert compress_fields(tok, [text, title], 3).startswith("building permits issued")   # order is the policy's
    full = compress_fields(tok, [title, text], 100)
    assert {"issued", "city", "2010"} <= set(full.replace(".", " ").split())


def test_contract_budget_sets_the_document_length_the_ranker_reads(minilm):
    model, tok = minilm
    c = ScoringContract(max_length=64)
    q, t, x = ["permits"] * 2, ["Building Permits", "Crime"], ["issued permits by year and type " * 5, "incidents"]
    doc_full, _ = input_lengths(tok, c, q, t, x)
    doc_cut, total = input_lengths(tok, dataclasses.replace(c, compression="fields", doc_budget=4), q, t, x)
    assert doc_full[0] > 30 and doc_cut[0] == 4 and doc_cut[1] <= 4 and total[0] == 1 + 1 + 1 + 4 + 1


def _soft_roundtrip(model, tok, contract, tmp_path):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(4, 384)).astype("float32")
    emb[3] = emb[0]                                  # pair 3 repeats pair 0: same query, same document
    q = ["crime data", "a much longer query about building permits " * 6, "x", "crime data"]
    t, x = ["ignored"] * 4, ["the text is not read"] * 4
    soft = SoftTokenRanker(model, 384, contract.soft_tokens)
    together = score_pairs(soft, tok, contract, q, t, x, doc_emb=emb)
    alone = [score_pairs(soft, tok, contract, [q[i]], [t[i]], [x[i]], doc_emb=emb[i:i + 1])[0] for i in range(4)]
    np.testing.assert_allclose(together, alone, atol=1e-4)
    # the document text is not read: only its embedding matters
    other_text = score_pairs(soft, tok, contract, q, ["other"] * 4, ["words"] * 4, doc_emb=emb)
    np.testing.assert_allclose(together, other_text, atol=1e-5)
    assert abs(together[0] - together[3]) < 1e-5
    assert abs(score_pairs(soft, tok, contract, q[:1], t[:1], x[:1], doc_emb=emb[1:2])[0] - together[0]) > 1e-4
    save_ranker(soft, tok, contract, tmp_path / "soft")
    m2, t2, c2 = load_ranker(tmp_path / "soft")
    assert c2 == contract
    np.testing.assert_allclose(score_pairs(m2, t2, c2, q, t, x, doc_emb=emb), together, atol=1e-5)
    with pytest.raises(ValueError, match="pass doc_emb"):
        score_pairs(m2, t2, c2, q, t, x)


def test_soft_tokens_encoder(minilm, tmp_path):
    model, tok = minilm
    c = ScoringContract(max_length=32, compression="soft", soft_tokens=2, embedder="minilm", embed_dim=384)
    _soft_roundtrip(model, tok, c, tmp_path)


def test_soft_tokens_decoder(tmp_path):
    from models import decoder as dec
    from models.decoder import decoder_contract

    tok = dec.train_bpe_tokenizer(["crime data building permits city budget"] * 20)
    lm = dec.build_tiny_qwen3(tok)
    c = dataclasses.replace(decoder_contract(tok, max_length=48), compression="soft", soft_tokens=3,
                            embedder="minilm", embed_dim=384)
    _soft_roundtrip(dec.DecoderRanker(lm, c.yes_token_id, c.no_token_id), tok, c, tmp_path)


def test_pruned_model_is_accepted_only_if_ndcg_holds_and_it_is_faster():
    student = {"ndcg@10": 0.90, "items_per_s": 100.0}
    assert accept_pruned(student, {"ndcg@10": 0.89, "items_per_s": 180.0})["deployable"] == "student_pruned"
    slower = accept_pruned(student, {"ndcg@10": 0.91, "items_per_s": 95.0})
    assert slower["deployable"] == "student" and "0.95x" in slower["reason"]
    worse = accept_pruned(student, {"ndcg@10": 0.87, "items_per_s": 300.0})
    assert worse["deployable"] == "student" and not worse["accepted"]


def test_int8_scoring_dtype_quantizes_the_blocks_only_and_keeps_the_ranking(minilm, golden, tmp_path):
    """``dtype: int8`` quantizes the transformer blocks' linear layers at load (the head stays float32); the
    scores stay close to float32 on real pairs and the parameter count does not change."""
    import torch

    from models.ranker import count_params

    model, tok = minilm
    torch.manual_seed(0)
    model.score.weight.data.normal_(0, 0.5)    # a head that spreads the scores, as a trained one does
    save_ranker(model, tok, ScoringContract(max_length=48, dtype="int8"), tmp_path / "q")
    save_ranker(model, tok, ScoringContract(max_length=48), tmp_path / "f")
    mq, tq, cq = load_ranker(tmp_path / "q")
    mf, tf, cf = load_ranker(tmp_path / "f")
    blocks = [m for n, m in mq.named_modules() if ".layer." in n and n.endswith(("query", "key", "value", "dense"))]
    assert len(blocks) == 2 * 6 and all(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in blocks)
    assert type(mq.score) is torch.nn.Linear and mq.score.weight.dtype == torch.float32
    assert count_params(mq) == count_params(mf)
    p = golden.pairs("test").head(120)
    args = (p["query"].tolist(), p.title.tolist(), p.text.tolist())
    a, b = np.array(score_pairs(mf, tf, cf, *args)), np.array(score_pairs(mq, tq, cq, *args))
    assert np.corrcoef(a, b)[0, 1] > 0.98
    assert not np.allclose(a, b, atol=1e-6)          # it really ran in int8
    save_ranker(model, tok, ScoringContract(max_length=48, dtype="int4"), tmp_path / "bad")   # saving is allowed
    with pytest.raises(ValueError, match="float32, bfloat16 or int8"):
        load_ranker(tmp_path / "bad")


def test_short_bfloat16_batches_switch_to_matmul_attention_with_the_same_scores(minilm, golden, monkeypatch):
    import copy

    import torch

    from models import ranker

    model, tok = minilm
    model = copy.deepcopy(model).to(torch.bfloat16)
    c = ScoringContract(max_length=48, compression="fields", doc_budget=4)
    p = golden.pairs("test")
    p = p[p["query"].str.split().str.len() <= 4].head(60)
    args = (p["query"].tolist(), p.title.tolist(), p.text.tolist())
    short = np.array(score_pairs(model, tok, c, *args))
    assert model.config._attn_implementation == "eager"          # every batch padded to <= 16 tokens
    monkeypatch.setattr(ranker, "SHORT_INPUT_TOKENS", 0)
    fused = np.array(score_pairs(model, tok, c, *args))
    assert model.config._attn_implementation == "sdpa"
    np.testing.assert_allclose(short, fused, atol=0.1)            # bfloat16 rounding only
    assert np.corrcoef(short, fused)[0, 1] > 0.999
