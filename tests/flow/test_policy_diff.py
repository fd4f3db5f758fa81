"""`flywheel policy diff`: the impact of a policy change on the golden set, before it goes live."""

from pathlib import Path

from flywheel.config import load_config
from flywheel.data.golden import seed_golden
from flywheel.data.lake import open_lake as lake
from flywheel.judge.policy_diff import policy_impact
from flywheel.settings import get_paths
from tests.openai_stub import StubServer

ROOT = Path(__file__).resolve().parents[2]
OLD = ROOT / "policies" / "open_data_search.md"


def _variant(tmp_path, old: str, new: str) -> Path:
    p = tmp_path / "edited.md"
    text = OLD.read_text()
    assert old in text
    p.write_text(text.replace(old, new))
    return p


def test_title_only_policy_changes_llm_grades(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "k")
    paths = get_paths(tmp_path / "home")
    new = _variant(tmp_path, "document_fields: [title, text]", "document_fields: [title]")
    with StubServer() as server:     # grades by query words found in what the judge is shown
        cfg = load_config(ROOT / "configs" / "production.yaml")
        cfg = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={"openai_base_url": server.base_url})})
        seed_golden(cfg.resolve(cfg.golden), lake(paths))
        r = policy_impact(OLD, new, cfg, paths)
    assert any("document_fields" in c for c in r["changes"])
    assert r["judge_versions"]["old"] != r["judge_versions"]["new"]
    assert r["changed_pairs"] and all(c["new"] <= c["old"] for c in r["changed_pairs"])   # less text, fewer hits
    assert set(r["agreement"]) == {"old/calibration", "old/test", "new/calibration", "new/test"}


def test_prose_only_change_is_a_new_version_with_the_same_offline_grades(tmp_path):
    paths = get_paths(tmp_path / "home")
    new = _variant(tmp_path, "Judge only from the dataset's name and description.",
                   "Judge only from the dataset's name and its description.")
    cfg = load_config(ROOT / "configs" / "ci.yaml")
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    r = policy_impact(OLD, new, cfg, paths)
    assert r["changes"][1:] == ["guidance: 2 line(s) changed"]
    assert r["judge_versions"]["old"] != r["judge_versions"]["new"] and r["changed_pairs"] == []
