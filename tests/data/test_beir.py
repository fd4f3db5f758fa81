import json

import pytest

from flywheel.data.beir import BeirFormatError, import_beir, read_beir
from flywheel.data.lake import Lake


def _write(d, corpus=None, queries=None, qrels=None):
    (d / "qrels").mkdir(parents=True, exist_ok=True)
    corpus = corpus or [{"_id": "d1", "title": "Crime", "text": "Crime by area"}, {"_id": "d2", "title": "Budget", "text": "City budget"}]
    queries = queries or [{"_id": "q1", "text": "crime"}, {"_id": "q2", "text": "budget"}]
    (d / "corpus.jsonl").write_text("\n".join(c if isinstance(c, str) else json.dumps(c) for c in corpus))
    (d / "queries.jsonl").write_text("\n".join(json.dumps(q) for q in queries))
    (d / "qrels" / "test.tsv").write_text(qrels or "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td2\t1\n")
    return d


def test_import_fills_the_tables(tmp_path):
    lake = Lake(tmp_path / "lake")
    counts = import_beir(_write(tmp_path / "toy"), lake)
    assert counts == {"queries": 2, "documents": 2, "golden_labels": 3}
    lab = lake.read("golden_labels")
    assert set(lab.split) == {"test"}
    grades = {(q, d): g for q, d, g in zip(lab.query_id, lab.doc_id, lab.grade)}
    assert grades == {("toy:q1", "toy:d1"): 2, ("toy:q1", "toy:d2"): 0, ("toy:q2", "toy:d2"): 1}
    assert set(lake.read("documents").doc_id) == {"toy:d1", "toy:d2"}
    import_beir(tmp_path / "toy", lake)                    # idempotent
    assert len(lake.read("golden_labels")) == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"corpus": [{"_id": "d1", "title": "x", "text": "y"}, "{not json"]}, r"corpus.jsonl:2: not valid JSON"),
    ({"corpus": [{"_id": "d1", "title": "x"}]}, r"corpus.jsonl:1: missing field 'text'"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td9\t1\n"}, r"test.tsv:2: field 'corpus-id' 'd9'"),
    ({"qrels": "query-id\tcorpus-id\tscore\nq1\td1\thigh\n"}, r"test.tsv:2: field 'score'"),
    ({"qrels": "q\td\ts\n"}, r"test.tsv:1: header"),
])
def test_malformed_input_names_file_line_and_field(tmp_path, kwargs, message):
    lake = Lake(tmp_path / "lake")
    with pytest.raises(BeirFormatError, match=message):
        import_beir(_write(tmp_path / "bad", **kwargs), lake)
    assert not list((tmp_path / "lake").rglob("*.parquet"))   # nothing written


def test_cli_reports_the_error(tmp_path):
    from typer.testing import CliRunner

    from flywheel.cli import app

    _write(tmp_path / "bad", qrels="query-id\tcorpus-id\tscore\nq1\td1\tx\n")
    r = CliRunner().invoke(app, ["import", "beir", str(tmp_path / "bad")])
    assert r.exit_code == 2 and "test.tsv:2" in r.output


def test_read_beir_keeps_queries_without_judgments_out_of_the_golden_split(tmp_path):
    t = read_beir(_write(tmp_path / "x", queries=[{"_id": "q1", "text": "crime"}, {"_id": "q2", "text": "b"},
                                                  {"_id": "q3", "text": "new"}]))
    assert t["queries"].set_index("query_id").split.isna()["x:q3"]
