"""Cross-encoder rungs: the contract round-trips, training learns, pruning keeps loadable uniform shapes."""

import numpy as np
import pytest
import torch

from flywheel.metrics import ndcg_at_10
from models.cross_encoder import build_cross_encoder
from models.prune import block_influence, prune_layers
from models.ranker import ScoringContract, count_params, load_ranker, save_ranker, score_pairs
from models.train import TrainConfig, train_ranker


@pytest.fixture(scope="module")
def toy():
    """A toy ranking task from the golden calibration split: learn the human grade."""
    from flywheel.data.golden import load_golden

    p = load_golden().pairs("calibration")
    p = p[p.query_id.isin(sorted(p.query_id.unique())[:30])].reset_index(drop=True)
    p["target"] = p.aggregated_grade / 3.0
    return p


def test_saved_ranker_scores_identically_whatever_the_batch(tmp_path, toy):
    model, tok = build_cross_encoder([0, 5])
    contract = ScoringContract(max_length=64)
    save_ranker(model, tok, contract, tmp_path / "r")
    m2, t2, c2 = load_ranker(tmp_path / "r")
    assert c2 == contract
    args = (toy["query"].tolist()[:20], toy.title.tolist()[:20], toy.text.tolist()[:20])
    a = score_pairs(model, tok, contract, *args, batch_size=20)
    b = score_pairs(m2, t2, c2, *args, batch_size=3)
    assert np.allclose(a, b, atol=1e-5)


def test_training_lowers_the_loss_and_ranks_better_than_its_starting_point(toy):
    """The untrained ranker is already the pretrained cosine scorer, far better than random: training has to beat
    that starting point (on the pairs it was trained on: a fit that cannot even do that is broken)."""
    from scipy.stats import spearmanr

    model, tok = build_cross_encoder([0, 1], seed=0)
    contract = ScoringContract(max_length=64)
    args = (toy["query"].tolist(), toy.title.tolist(), toy.text.tolist())
    start = score_pairs(model, tok, contract, *args)
    losses = train_ranker(model, tok, contract, toy, "target", "labels",
                          TrainConfig(epochs=3, lr=1e-4, batch_size=16)).losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    scores = score_pairs(model, tok, contract, *args)
    print(f"NDCG@10 start {ndcg_at_10(toy, start):.4f} trained {ndcg_at_10(toy, scores):.4f}; Spearman start "
          f"{spearmanr(start, toy.target).statistic:.3f} trained {spearmanr(scores, toy.target).statistic:.3f}")
    assert ndcg_at_10(toy, scores) > ndcg_at_10(toy, start) + 0.01
    assert spearmanr(scores, toy.target).statistic > spearmanr(start, toy.target).statistic + 0.05


def test_distillation_brings_student_scores_towards_the_teacher(toy):
    model, tok = build_cross_encoder([0], seed=1)
    contract = ScoringContract(max_length=64)
    toy = toy.assign(teacher_score=toy.aggregated_grade - 1.5)
    before = score_pairs(model, tok, contract, toy["query"].tolist(), toy.title.tolist(), toy.text.tolist())
    train_ranker(model, tok, contract, toy, "teacher_score", "distill", TrainConfig(epochs=4, lr=3e-4, batch_size=16))
    after = score_pairs(model, tok, contract, toy["query"].tolist(), toy.title.tolist(), toy.text.tolist())
    err = lambda s: np.mean((np.array(s) - toy.teacher_score.to_numpy()) ** 2)  # noqa: E731
    assert err(after) < 0.8 * err(before)
    from scipy.stats import spearmanr
    assert spearmanr(after, toy.teacher_score).statistic > 0.3


def test_pruned_model_saves_and_loads_with_plain_from_pretrained(tmp_path, toy):
    from models.cross_encoder import _ranker_class

    model, tok = build_cross_encoder([0, 1, 2, 3])
    contract = ScoringContract(max_length=64)
    infl = block_influence(model, tok, contract, toy["query"].tolist()[:16], toy.title.tolist()[:16], toy.text.tolist()[:16])
    assert len(infl) == 4 and all(v > 0 for v in infl)
    before = count_params(model)
    keep = prune_layers(model, infl, 2)
    assert len(keep) == 2 and set(keep) <= {0, 1, 2, 3}
    assert count_params(model) == pytest.approx(before / 2, rel=0.01)
    save_ranker(model, tok, contract, tmp_path / "p")
    again = _ranker_class().from_pretrained(tmp_path / "p")
    assert again.config.num_hidden_layers == 2
    with pytest.raises(ValueError):
        prune_layers(model, [0.1, 0.2], 2)


def test_encoder_rung_derives_from_its_parent_by_depth_pruning(tmp_path):
    """checkpoint 'parent': the rung starts from the trained rung above, keeping some of its layers (Minitron)."""
    import torch

    from flywheel.config import RungConfig
    from flywheel.training.ladder import build_rung

    parent, tok = build_cross_encoder([0, 3, 5], seed=1)
    save_ranker(parent, tok, ScoringContract(max_length=48), tmp_path / "mid")
    child, _, contract = build_rung(RungConfig(name="student", checkpoint="parent", layers=[0, 2]), None,
                                    parent={"path": str(tmp_path / "mid")})
    assert child.config.num_hidden_layers == 2 and contract.max_length == 48
    assert torch.equal(child.bert.encoder.layer[1].output.dense.weight, parent.bert.encoder.layer[2].output.dense.weight)
    assert torch.equal(child.score.weight, parent.score.weight)
    with pytest.raises(ValueError, match="needs the rung above"):
        build_rung(RungConfig(name="mid", checkpoint="parent", layers=[0]), None)


def test_frozen_embeddings_stay_put_while_the_layers_learn(tmp_path, toy):
    from flywheel.config import RungConfig
    from flywheel.training.ladder import build_rung

    rung = RungConfig(name="student", layers=[0, 1], freeze_embeddings=True)
    model, tok, contract = build_rung(rung, paths=None)
    emb = model.get_input_embeddings().weight.detach().clone()
    layer = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
    train_ranker(model, tok, contract, toy.head(64), "target", "labels", TrainConfig(epochs=1, lr=1e-3, batch_size=16))
    assert torch.equal(model.get_input_embeddings().weight, emb)
    assert not torch.allclose(model.bert.encoder.layer[0].attention.self.query.weight, layer)
    unfrozen, _, _ = build_rung(rung.model_copy(update={"freeze_embeddings": False}), paths=None)
    assert unfrozen.get_input_embeddings().weight.requires_grad
