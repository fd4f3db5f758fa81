"""Registration, metric-gated promotion and rollback against a real MLflow SQLite registry."""

import pytest

from flywheel.config import PromotionConfig
from flywheel.registry import alias_version, log_ranker, promote_challenger, rollback
from flywheel.settings import get_paths


@pytest.fixture(scope="module")
def rung(tmp_path_factory):
    from models.cross_encoder import build_cross_encoder
    from models.ranker import ScoringContract, count_params, save_ranker

    model, tok = build_cross_encoder([0])
    path = save_ranker(model, tok, ScoringContract(max_length=32), tmp_path_factory.mktemp("r") / "ranker")
    return {"rung": "student_pruned", "path": str(path), "model_version": "abc", "layers": 1,
            "params_non_embedding": count_params(model)}


def test_promote_gate_and_rollback(rung):
    paths = get_paths()
    name = "test-registry-ranker"
    cfg = PromotionConfig(min_ndcg=0.5, min_ratio_to_teacher=0.9, tolerance_vs_champion=0.0)
    v1 = log_ranker(rung, {"ndcg@10": 0.80}, {"judge_version": "j"}, paths, name)["version"]
    assert promote_challenger(name, v1, 0.80, 0.82, cfg, paths)["champion"] == v1
    v2 = log_ranker(rung, {"ndcg@10": 0.70}, {"judge_version": "j"}, paths, name)["version"]
    out = promote_challenger(name, v2, 0.70, 0.72, cfg, paths)
    assert not out["promoted"] and out["champion"] == v1 and "champion" in out["reason"]
    v3 = log_ranker(rung, {"ndcg@10": 0.85}, {"judge_version": "j"}, paths, name)["version"]
    assert promote_challenger(name, v3, 0.85, 0.86, cfg, paths)["champion"] == v3
    again = promote_challenger(name, v3, 0.85, 0.86, cfg, paths)                      # idempotent
    assert again["champion"] == v3 and not again["promoted"] and "already" in again["reason"]
    assert alias_version(name, "champion", paths).tags["previous_champion"] == v1
    assert rollback(name, paths) == v1
    assert str(alias_version(name, "champion", paths).version) == v1


def test_registered_model_scores_like_the_checkpoint(rung):
    import mlflow.pyfunc
    import pandas as pd

    from models.ranker import load_ranker, score_pairs

    paths = get_paths()
    info = log_ranker(rung, {"ndcg@10": 0.8}, {}, paths, "test-registry-roundtrip")
    loaded = mlflow.pyfunc.load_model(f"models:/test-registry-roundtrip/{info['version']}")
    df = pd.DataFrame({"query": ["crime", "crime", "budget"], "title": ["Crime", "Parks", "City budget"],
                       "text": ["incidents by area", "park list", "spending"]})
    m, t, c = load_ranker(rung["path"])
    assert list(loaded.predict(df)) == pytest.approx(score_pairs(m, t, c, df["query"].tolist(), df.title.tolist(),
                                                                 df.text.tolist()), abs=1e-5)
