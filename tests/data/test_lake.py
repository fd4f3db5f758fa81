from datetime import datetime, timezone

import pandas as pd
import pytest

from flywheel.data.contracts import ContractError
from flywheel.data.lake import Lake

SCALE = range(4)      # the policy's grades, 0..3


def _labels(n=3, grade=2, version="j1"):
    return pd.DataFrame({
        "date": "2026-01-01", "query_id": [f"q{i}" for i in range(n)], "doc_id": "d", "doc_hash": "h" * 64,
        "grade": pd.array([grade] * n, dtype="Int8"), "score": 1.5, "dimension_scores": "{}", "rationale": "r",
        "parse_status": "ok", "raw_response": None, "policy_hash": "p", "judge_backend": "offline",
        "judge_model": "m", "prompt_hash": "ph", "judge_version": version, "run_id": "r1",
        "created_at": pd.Timestamp(datetime.now(timezone.utc))})


def test_rewrite_of_the_same_rows_is_a_no_op(tmp_path):
    lake = Lake(tmp_path)
    p1 = lake.write("judge_labels", _labels(), date="2026-01-01", grades=SCALE)
    # A retried task relabels the same pairs at a later time: same keys, same file, no duplicate rows.
    p2 = lake.write("judge_labels", _labels().assign(created_at=pd.Timestamp("2030-01-01", tz="UTC")),
                    date="2026-01-01", grades=SCALE)
    assert p1 == p2
    assert len(lake.read("judge_labels")) == 3
    lake.write("judge_labels", _labels(version="j2"), date="2026-01-01", grades=SCALE)
    assert len(lake.read("judge_labels", "2026-01-01")) == 6
    assert lake.dates("judge_labels") == ["2026-01-01"]


def test_contract_violation_writes_nothing_and_says_why(tmp_path):
    lake = Lake(tmp_path)
    with pytest.raises(ContractError, match="policy scale"):
        lake.write("judge_labels", _labels(grade=7), date="2026-01-01", grades=SCALE)
    with pytest.raises(ContractError, match="missing column"):
        lake.write("judge_labels", _labels().drop(columns=["judge_version"]), date="2026-01-01", grades=SCALE)
    assert lake.read("judge_labels").empty
    assert not list(tmp_path.rglob("*.parquet"))


def test_duplicate_pairs_in_one_batch_are_rejected(tmp_path):
    df = pd.concat([_labels(), _labels().head(1)])
    with pytest.raises(ContractError, match="never labelled"):
        Lake(tmp_path).write("judge_labels", df, date="2026-01-01", grades=SCALE)


def test_readers_skip_half_written_files(tmp_path):
    lake = Lake(tmp_path)
    lake.write("judge_labels", _labels(), date="2026-01-01", grades=SCALE)
    part = tmp_path / "judge_labels" / "date=2026-01-01"
    (part / ".tmp-crashed.parquet").write_bytes(b"PAR1 half a file")
    assert len(lake.read("judge_labels")) == 3


def test_daily_tables_need_a_date(tmp_path):
    with pytest.raises(ValueError, match="daily"):
        Lake(tmp_path).write("judge_labels", _labels(), grades=SCALE)
