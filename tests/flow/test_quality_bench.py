"""bench/quality.py on a dataset the project has never seen: a BEIR directory generated here (city × topic
datasets, graded: same topic and city 3, same topic elsewhere 1, same city other topic 0), run end to end in a
home of its own with the CI config. Every system is measured on the held-out queries, and the easy data is
ranked well by all of them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
TOPICS = ["crime incidents", "city budget", "building permits", "school test scores", "restaurant inspections",
          "traffic collisions", "park facilities", "affordable housing"]
CITIES = ["Austin", "Boston", "Chicago", "Denver", "Seattle", "Miami"]


def _beir(d: Path) -> None:
    (d / "qrels").mkdir(parents=True)
    docs, queries, qrels = [], [], {"dev": [], "test": []}
    for ti, t in enumerate(TOPICS):
        for ci, c in enumerate(CITIES):
            docs.append({"_id": f"d{ti}-{ci}", "title": f"{c} {t.title()}",
                         "text": f"Records of {t} in {c}, published by the city of {c} and updated every month."})
    for ti, t in enumerate(TOPICS):
        for ci, c in enumerate(CITIES):
            qid = f"q{ti}-{ci}"
            queries.append({"_id": qid, "text": f"{t} {c}"})
            split = "test" if (ti + ci) % 2 else "dev"
            qrels[split].append((qid, f"d{ti}-{ci}", 3))
            qrels[split] += [(qid, f"d{ti}-{(ci + k) % len(CITIES)}", 1) for k in (1, 2, 3)]
            qrels[split] += [(qid, f"d{(ti + k) % len(TOPICS)}-{ci}", 0) for k in (1, 2, 3)]
    for name, rows in (("corpus", docs), ("queries", queries)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for split, rows in qrels.items():
        (d / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n"
                                                  + "".join(f"{q}\t{c}\t{s}\n" for q, c, s in rows))


def test_quality_bench_runs_the_whole_flywheel_on_unseen_beir_data(tmp_path):
    data = tmp_path / "citydata"
    _beir(data)
    out = tmp_path / "figures.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--data", str(data), "--policy",
                           str(ROOT / "policies" / "open_data_search.md"), "--config", str(ROOT / "configs" / "ci.yaml"),
                           "--home", str(tmp_path / "home"), "--json", str(out)],
                          capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    fig = json.loads(out.read_text())
    assert fig["family"] == "encoder, teacher minilm"    # what ran: the ladder of --config
    counts = fig["counts"]
    assert {k: counts[k] for k in ("queries", "test_queries", "documents", "judged_pairs")} == {
        "queries": 48, "test_queries": 24, "documents": 48, "judged_pairs": 336}
    assert not counts["positive_only_qrels"] and counts["assumed_negatives"] == 0   # judged zeros: none assumed
    systems = fig["systems"]
    assert set(systems) >= {"bm25", "bi-encoder", "judge", "teacher", "mid", "student", "student_pruned",
                            "compressed_fields8", "compressed_soft2"}
    assert systems["bm25"]["ndcg@10"] > 0.9            # the easy data: the words say it all
    for name in ("teacher", "student", "student_pruned", "compressed_fields8"):
        assert systems[name]["ndcg@10"] > 0.8, (name, systems[name])
    assert systems["student_pruned"]["n_params"] < systems["student"]["n_params"]
    assert fig["ratios"]["student / teacher NDCG@10"] > 0.85
    assert "NDCG@10" in proc.stdout and "Ratios" in proc.stdout
    # the per-query figures behind the intervals average to each system's figure, in each protocol
    for metric, by_system in fig["per_query"].items():
        for name, by_query in by_system.items():
            assert sum(by_query.values()) / len(by_query) == pytest.approx(systems[name][metric], abs=1e-4), (metric, name)
    rules = fig["targets"]["ndcg@10"]
    lo, hi = rules["ci95"]["student >= 0.97 x teacher"]
    assert lo - 1e-4 <= rules["student >= 0.97 x teacher"][1] <= hi + 1e-4
    deployable, gated = fig["pruning"]["deployable"], fig["targets"][fig["gate_metric"]]
    assert gated["ci95"][f"deployable ({deployable}) >= best baseline"] == \
        systems[deployable]["gain_over_best_baseline_ci95"]        # the bench and the gate's protocol agree
