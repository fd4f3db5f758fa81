"""The Avature job-title set in the BEIR layout: every annotated positive kept, negatives are judged non-positives
ranked high by BM25, queries split without overlap, and the result imports like any BEIR dataset."""

from pathlib import Path

import pandas as pd
import pytest

from flywheel.data.avature import load_avature, to_beir
from flywheel.data.beir import read_beir

SOURCE = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "avature_job_titles"


@pytest.mark.skipif(not SOURCE.exists(), reason="shared/datasets not beside the repository")
def test_export_keeps_positives_adds_hard_judged_negatives_and_imports(tmp_path):
    out = to_beir(SOURCE, tmp_path / "avature", negatives_per_query=10)
    src = load_avature(SOURCE)
    qrels = pd.concat([pd.read_csv(p, sep="\t", dtype={"score": int})
                       for p in sorted((tmp_path / "avature" / "qrels").glob("*.tsv"))])
    pos = set(zip(src["positives"].query_id, src["positives"].doc_id))
    got_pos = set(zip(qrels[qrels.score == 1]["query-id"], qrels[qrels.score == 1]["corpus-id"]))
    assert got_pos == pos and out["positives"] == len(pos) == 2420
    neg = qrels[qrels.score == 0]
    assert not (set(zip(neg["query-id"], neg["corpus-id"])) & pos)
    assert (neg.groupby("query-id").size() == 10).all()
    dev = set(pd.read_csv(tmp_path / "avature" / "qrels" / "dev.tsv", sep="\t")["query-id"])
    test = set(pd.read_csv(tmp_path / "avature" / "qrels" / "test.tsv", sep="\t")["query-id"])
    assert dev and test and not dev & test and len(dev | test) == 105
    tables = read_beir(tmp_path / "avature")
    assert len(tables["documents"]) == 2619 and len(tables["golden_labels"]) == len(qrels)
    assert set(tables["golden_labels"].split) == {"calibration", "test"}
    again = to_beir(SOURCE, tmp_path / "again", negatives_per_query=10)
    assert again["judged_pairs"] == out["judged_pairs"]
    assert (tmp_path / "again" / "qrels" / "test.tsv").read_text() == (tmp_path / "avature" / "qrels" / "test.tsv").read_text()
