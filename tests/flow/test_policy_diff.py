"""`flywheel policy diff`: the impact of a policy change on the golden set, before it goes live."""

from pathlib import Path

from flywheel.config import load_config
from flywheel.data.golden import seed_golden
from flywheel.data.lake import open_lake as lake
from flywheel.judge.policy_diff import policy_impact
from flywheel.settings import get_paths

ROOT = Path(__file__).resolve().parents[2]
OLD = ROOT / "policies" / "open_data_search.md"


def _variant(tmp_path, old: str, new: str) -> Path:
    p = tmp_path / "edited.md"
    text = OLD.read_text()
    assert old in text
    p.write_text(text.replace(old, new))
    return p


# A change the judge sees (titles only) previewed through the real `policy-preview` deployment, on the judge
# behind the OpenAI-compatible stub: tests/stack/test_stack.py::test_policy_preview_deployment_shows_a_policy_edits_...


def test_prose_only_change_is_a_new_version_with_the_same_offline_grades(tmp_path):
    paths = get_paths(tmp_path / "home")
    new = _variant(tmp_path, "Judge only from the dataset's name and description.",
                   "Judge only from the dataset's name and its description.")
    cfg = load_config(ROOT / "configs" / "ci.yaml")
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    r = policy_impact(OLD, new, cfg, paths)
    assert r["changes"][1:] == ["guidance: 2 line(s) changed"]
    assert r["judge_versions"]["old"] != r["judge_versions"]["new"] and r["changed_pairs"] == []
