"""Registration, metric-gated promotion and rollback against a real MLflow SQLite registry."""

import pytest

from flywheel.config import PromotionConfig, ServingConfig
from flywheel.serving.registry import alias_version, log_ranker, promote_challenger, rollback
from flywheel.settings import get_paths
from tests.helpers import wait_ready


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


def test_the_promote_task_never_ships_a_model_below_the_best_baseline(rung):
    """The flow's promote task, fed an evaluation where the deployable student is below the bi-encoder: no
    champion, and the reason names the baseline; once it beats every baseline it is promoted."""
    from flywheel.config import FlywheelConfig
    from tasks.register import promote

    paths = get_paths()
    cfg = FlywheelConfig(registered_model="test-baseline-gate", promotion=PromotionConfig(min_ndcg=0.3))
    v1 = log_ranker(rung, {"ndcg@10": 0.50}, {"judge_version": "j"}, paths, cfg.registered_model)["version"]
    ev = {"systems": {"teacher": {"ndcg@10": 0.51}, "student": {"ndcg@10": 0.50}, "bm25": {"ndcg@10": 0.33},
                      "bi-encoder": {"ndcg@10": 0.50}, "zero_shot_start": {"ndcg@10": 0.52}},
          "baselines": ["zero_shot_start", "bi-encoder", "bm25"]}
    out = promote.fn({"student": {"version": v1}}, ev, cfg, "student")
    assert not out["promoted"] and out["champion"] is None and "zero_shot_start" in out["reason"]
    assert alias_version(cfg.registered_model, "champion", paths) is None
    ev["systems"]["student"]["ndcg@10"] = 0.53
    assert promote.fn({"student": {"version": v1}}, ev, cfg, "student")["champion"] == v1


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


def test_registered_soft_token_ranker_embeds_served_documents_like_training(tmp_path):
    """A soft-token student gets only text over HTTP: the registered model embeds each document with the
    bi-encoder, through the per-version cache training filled, and scores as training did."""
    import mlflow.pyfunc
    import numpy as np
    import pandas as pd
    import torch

    from flywheel.data.lake import sha256_text
    from flywheel.retrieval.embeddings import EMBED_DIM, EMBEDDER, doc_embeddings
    from models.compress import SoftTokenRanker
    from models.cross_encoder import build_cross_encoder
    from models.ranker import ScoringContract, count_params, load_ranker, save_ranker, score_pairs

    torch.manual_seed(0)
    base, tok = build_cross_encoder([0])
    model = SoftTokenRanker(base, EMBED_DIM, 2)
    torch.nn.init.normal_(model.proj.weight, std=0.05)       # documents must matter to the scores
    contract = ScoringContract(max_length=32, compression="soft", soft_tokens=2, embedder=EMBEDDER, embed_dim=EMBED_DIM)
    path = save_ranker(model, tok, contract, tmp_path / "soft")
    rung = {"rung": "compressed_soft2", "path": str(path), "model_version": "soft", "layers": 1,
            "params_non_embedding": count_params(model)}
    paths = get_paths()
    info = log_ranker(rung, {"ndcg@10": 0.8}, {}, paths, "test-registry-soft")
    df = pd.DataFrame({"query": ["crime"] * 3 + ["budget"], "title": ["Crime", "Parks", "Crime map", "City budget"],
                       "text": ["incidents by area", "park list", "", "spending by department"]})
    # what training and evaluation read: embeddings cached by document version
    pairs = df.assign(doc_hash=[sha256_text(t, x) for t, x in zip(df.title, df.text)])
    m, t, c = load_ranker(path)
    offline = score_pairs(m, t, c, df["query"].tolist(), df.title.tolist(), df.text.tolist(),
                          doc_emb=doc_embeddings(pairs, paths))
    assert np.ptp(offline[:3]) > 1e-3                           # the documents change the scores
    served = mlflow.pyfunc.load_model(f"models:/test-registry-soft/{info['version']}").predict(df)
    assert list(served) == pytest.approx(offline, abs=1e-5)
    # a document never seen before is embedded on request and scored the same alone as in a batch
    new = pd.DataFrame({"query": ["crime"], "title": ["Arrests 2026"], "text": ["new document"]})
    loaded = mlflow.pyfunc.load_model(f"models:/test-registry-soft/{info['version']}")
    both = loaded.predict(pd.concat([df, new], ignore_index=True))
    assert list(loaded.predict(new)) == pytest.approx([both[-1]], abs=1e-5)


def test_a_model_registered_before_the_stage_packages_still_loads_and_serves(tmp_path):
    """tests/fixtures/legacy_pyfunc is the MLflow model directory ``mlflow.pyfunc`` wrote with the code before
    flywheel/ was grouped by stage (its pickle names ``flywheel.registry.RankerModel``), less its 53 MB
    checkpoint, which is rebuilt here. It must load and score exactly as the checkpoint does."""
    import shutil
    from pathlib import Path

    import mlflow.pyfunc
    import pandas as pd

    from models.cross_encoder import build_cross_encoder
    from models.ranker import ScoringContract, load_ranker, save_ranker, score_pairs

    legacy = Path(__file__).resolve().parents[1] / "fixtures" / "legacy_pyfunc"
    assert b"flywheel.registry" in (legacy / "python_model.pkl").read_bytes()
    model_dir = tmp_path / "model"
    shutil.copytree(legacy, model_dir)
    model, tok = build_cross_encoder([0])
    save_ranker(model, tok, ScoringContract(max_length=32), model_dir / "artifacts" / "ck")
    served = mlflow.pyfunc.load_model(str(model_dir))
    df = pd.DataFrame({"query": ["crime", "budget"], "title": ["Crime", "City budget"], "text": ["by area", "spending"]})
    m, t, c = load_ranker(model_dir / "artifacts" / "ck")
    assert list(served.predict(df)) == pytest.approx(score_pairs(m, t, c, df["query"].tolist(), df.title.tolist(),
                                                                 df.text.tolist()), abs=1e-5)


def test_service_hot_reloads_the_alias_and_the_rollback_command_moves_it_back(rung, tmp_path):
    """POST /reload picks up a moved alias without a restart (the daily deploy relies on it); `flywheel rollback`
    points champion back at the previous champion, and the next reload serves it again."""
    from fastapi.testclient import TestClient
    from typer.testing import CliRunner

    from flywheel.cli import app as cli
    from flywheel.serving.service import create_app
    from models.cross_encoder import build_cross_encoder
    from models.ranker import ScoringContract, save_ranker

    paths = get_paths()
    name = "test-hot-reload"
    cfg = PromotionConfig(min_ndcg=0.5, min_ratio_to_teacher=0.9, tolerance_vs_champion=0.0)
    other, tok = build_cross_encoder([0, 1])
    other_rung = rung | {"path": str(save_ranker(other, tok, ScoringContract(max_length=32), tmp_path / "two")),
                         "model_version": "def", "layers": 2}
    v1 = log_ranker(rung, {"ndcg@10": 0.80}, {}, paths, name)["version"]
    promote_challenger(name, v1, 0.80, 0.80, cfg, paths)
    body = {"query": "crime", "documents": [{"title": "Crime incidents", "text": "by area"}, {"title": "Parks"}]}
    with TestClient(create_app(name, settings=ServingConfig(poll_s=0))) as client:
        wait_ready(client)
        first = client.post("/score", json=body).json()
        version = lambda r: str(r["version"])  # noqa: E731 (the registry's versions are numbers in JSON)
        assert version(first) == v1 and version(client.get("/health").json()) == v1
        v2 = log_ranker(other_rung, {"ndcg@10": 0.85}, {}, paths, name)["version"]
        promote_challenger(name, v2, 0.85, 0.85, cfg, paths)
        assert version(client.post("/score", json=body).json()) == v1           # still the loaded model
        assert version(client.post("/reload").json()) == v2
        second = client.post("/score", json=body).json()
        assert version(second) == v2 and second["scores"] != pytest.approx(first["scores"], abs=1e-4)
        out = CliRunner().invoke(cli, ["rollback", "--model", name])
        assert out.exit_code == 0 and f"{name}@champion -> v{v1}" in out.output
        assert version(client.post("/reload").json()) == v1
        assert client.post("/score", json=body).json()["scores"] == pytest.approx(first["scores"], abs=1e-6)
