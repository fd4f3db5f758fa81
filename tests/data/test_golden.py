"""The bundled golden set: counts, a query-disjoint split, and the human agreement the data card states."""

import json
from pathlib import Path

import pytest

from flywheel.data.contracts import validate
from flywheel.data.golden import GOLDEN_DIR, describe

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "socrata_arcs"


def test_golden_set_matches_its_data_card(golden):
    stats = json.loads((GOLDEN_DIR / "stats.json").read_text())
    fresh = json.loads(json.dumps(describe(golden)))   # same JSON round trip as stats.json
    for key in ("queries", "documents", "pairs", "judgments", "grade_distribution"):
        assert fresh[key] == stats[key]
    card = (GOLDEN_DIR.parent / "README.md").read_text()
    assert f"{stats['pairs']}" in card and "MIT" in card


def test_split_is_by_query_and_balanced(golden):
    q = golden.queries
    cal, test = set(q[q.split == "calibration"].query_id), set(q[q.split == "test"].query_id)
    assert not cal & test and len(cal | test) == len(q)
    assert 0.35 < len(test) / len(q) < 0.65
    lab = golden.labels
    assert (lab.split == lab.query_id.map(dict(zip(q.query_id, q.split)))).all()


def test_human_agreement_is_the_published_ceiling(golden):
    h = describe(golden)["human_agreement"]
    # shared/datasets/README.md: 50% exact, 88.5% within one, between two raters of the same pair
    assert h["pairwise_exact"] == pytest.approx(0.50, abs=0.01)
    assert h["pairwise_within_one"] == pytest.approx(0.885, abs=0.01)


def test_tables_pass_their_contracts(golden):
    validate("queries", golden.queries)
    validate("documents", golden.documents)
    validate("golden_labels", golden.labels)


@pytest.mark.skipif(not SOURCE.exists(), reason="shared/datasets not beside the repository")
def test_rebuild_from_source_is_identical(tmp_path, golden):
    from flywheel.data.golden import build_socrata_golden, load_golden

    build_socrata_golden(SOURCE, tmp_path)
    again = load_golden(tmp_path)
    assert again.content_hash == golden.content_hash
