"""LoRA rungs and the sharded teacher scorer, on a tiny Qwen3 ranker.

- LoRA: only the adapters train; merged at save, the checkpoint is a plain HF one — ``from_pretrained`` with no
  peft — whose scores equal the in-memory adapter model's (1e-5: merging sums W + (α/r)·BA once instead of per
  call), and registered in MLflow then served over HTTP it gives those scores again.
- Sharded scoring: the parts of 2 ranks merge to the single-process scores; a job that crashed after one rank
  committed its part rescoring only the other shard.
"""

import pytest

from models.lora import apply_lora, has_lora, merge_lora, trainable_params
from models.ranker import load_ranker, save_ranker, score_pairs
from models.train import TrainConfig, train_ranker
from tests.dist_jobs import save_tiny_base, toy_pairs
from tests.helpers import wait_ready


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("lora") / "base")


def _score(model, tok, c, pairs):
    return score_pairs(model, tok, c, pairs["query"].tolist(), pairs.title.tolist(), pairs.text.tolist())


def test_lora_rung_trains_adapters_only_merges_into_a_plain_checkpoint_that_scores_and_serves_the_same(base, tmp_path):
    from fastapi.testclient import TestClient
    from transformers import AutoModelForCausalLM

    from flywheel.serving.registry import log_ranker, set_alias
    from flywheel.serving.service import create_app
    from flywheel.settings import get_paths
    from models.decoder import DecoderRanker

    model, tok, c = load_ranker(base)
    pairs = toy_pairs(n_queries=6, seed=1)
    before = _score(model, tok, c, pairs)
    frozen = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, 4, 8.0, 0.0, ["q_proj", "v_proj"])
    trainable, total = trainable_params(model)
    assert 0 < trainable < 0.05 * total
    assert _score(model, tok, c, pairs) == pytest.approx(before, abs=1e-6)     # B = 0: a fresh adapter is a no-op
    train_ranker(model, tok, c, toy_pairs(), "target", "labels", TrainConfig(epochs=3, batch_size=8, lr=5e-3))
    adapted = _score(model, tok, c, pairs)
    assert max(abs(a - b) for a, b in zip(adapted, before)) > 1e-3              # the adapters learned something
    with pytest.raises(ValueError, match="match no linear layer.*q_proj"):
        apply_lora(load_ranker(base)[0], 4, 8.0, 0.0, ["query"])            # a BERT name on a Qwen3: says what there is

    merge_lora(model)
    assert not has_lora(model)
    out = save_ranker(model, tok, c, tmp_path / "merged")
    lm = AutoModelForCausalLM.from_pretrained(out)                            # plain transformers, no peft
    assert not any("lora" in k for k in lm.state_dict())
    assert lm.state_dict()["model.embed_tokens.weight"].equal(frozen["lm.model.embed_tokens.weight"])
    plain = DecoderRanker(lm, c.yes_token_id, c.no_token_id).eval()
    assert _score(plain, tok, c, pairs) == pytest.approx(adapted, abs=1e-5)

    paths = get_paths()
    name = "test-lora-ranker"
    v = log_ranker({"rung": "student", "path": str(out), "model_version": "lora", "layers": 4,
                    "params_non_embedding": 1}, {"ndcg@10": 0.9}, {}, paths, name)["version"]
    set_alias(name, "champion", v, paths)
    with TestClient(create_app(name)) as client:
        wait_ready(client)
        for q, g in pairs.groupby("query", sort=False):
            r = client.post("/score", json={"query": q, "documents": g[["title", "text"]].to_dict("records")})
            want = [adapted[i] for i in g.index]
            assert r.json()["scores"] == pytest.approx(want, abs=1e-5)


def test_sharded_teacher_scores_equal_one_process_and_a_rerun_scores_only_the_missing_shard(base, monkeypatch):
    from flywheel.settings import get_paths
    from flywheel.training import scoring

    paths = get_paths()
    pairs = toy_pairs(n_queries=8, seed=2).assign(doc_hash=lambda d: d.doc_id + "-h")
    parent = {"rung": "teacher", "path": str(base), "model_version": "tiny-v1"}
    one = scoring.score_missing(parent, pairs, paths)                         # one process
    scoring.remove_parts(parent, paths)

    scored = []                    # the shards a rank actually scored (not those whose part was already there)
    real = scoring.score_shard

    def spy(p, rows, pa, device=None):
        path, did = real(p, rows, pa, device)
        if did:
            scored.append(sorted(rows.query_id.unique()))
        return path, did

    monkeypatch.setattr(scoring, "score_shard", spy)

    def crash():
        raise RuntimeError("rank 1 died before the barrier")

    with pytest.raises(RuntimeError, match="died"):                           # rank 0 commits its part, then dies
        scoring.score_missing(parent, pairs, paths, rank=0, world=2, barrier=crash)
    first = list(scored)
    two = [scoring.score_missing(parent, pairs, paths, rank=r, world=2) for r in (1, 0)]   # the rerun, both ranks
    shards = scoring.shards(pairs.query_id, 2)
    assert first == [shards[0]]
    assert scored[1:] == [shards[1]]           # the rerun scored rank 1's shard; rank 0's part was already there
    key = ["query_id", "doc_hash"]
    for got in two:
        m = one.merge(got, on=key, suffixes=("_one", "_two"))
        assert len(m) == len(pairs) == len(got)
        assert m.score_one.to_numpy() == pytest.approx(m.score_two.to_numpy(), abs=1e-5)
    scoring.remove_parts(parent, paths)                  # as stored_scores does once the lake has the scores
