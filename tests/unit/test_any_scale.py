"""Any scale the policy defines: 2, 4, 5 or 10 grades flow through agreement, cut-points, alpha, the human ceiling,
NDCG qrels, BEIR import, the data contracts and calibration, with no hidden 4-grade default and no clipping."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from flywheel.judge.agreement import (agreement, apply_cutpoints, bootstrap_ci, fit_cutpoints, krippendorff_alpha,
                                      sliced_agreement)
from flywheel.judge.policy import Policy

SCALES = [2, 4, 5, 10]


def make_policy(n: int) -> Policy:
    return Policy.model_validate({
        "name": f"scale-{n}", "domain": "tests", "owner": "tests",
        "task": "Grade how well the document serves the query.",
        "scale": [{"grade": g, "label": f"level {g}", "definition": f"Relevance level {g} of {n - 1}."}
                  for g in range(n)],
        "dimensions": [{"name": "topical_match", "description": "Does the document cover the query's subject?"}],
        "document_fields": ["title", "text"], "guidance": "Grade the intent behind the words."})


def write_policy(policy: Policy, path) -> str:
    header = policy.model_dump(exclude={"guidance"})
    path.write_text("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + policy.guidance + "\n")
    return str(path)


# ---------------------------------------------------------------- agreement and cut-points

def test_every_agreement_function_needs_the_scale():
    """No hidden 4-grade default: leaving the number of grades out is an error, not a 0..3 scale."""
    from flywheel.data.golden import human_agreement

    j, h = np.array([0, 1]), np.array([0.0, 1.0])
    labels = pd.DataFrame({"query_id": "q", "doc_id": ["a", "a"], "rater_id": ["r1", "r2"], "grade": [0, 1]})
    pairs = pd.DataFrame({"query": ["a", "b"], "title": "t", "text": ["x", "yy"], "aggregated_grade": h})
    for call in (lambda: agreement(j, h), lambda: fit_cutpoints(h, h), lambda: bootstrap_ci(j, h, n=5),
                 lambda: krippendorff_alpha(labels), lambda: sliced_agreement(j, pairs),
                 lambda: human_agreement(labels)):
        with pytest.raises(TypeError):
            call()


def test_a_grade_off_the_scale_is_an_error_not_clipped():
    with pytest.raises(ValueError, match="outside the policy's scale 0..3"):
        agreement(np.array([0, 3]), np.array([0.0, 4.0]), 4)
    with pytest.raises(ValueError, match="judge grade 5"):
        agreement(np.array([0, 5]), np.array([0.0, 4.0]), 5)


def test_binary_agreement_hand_computed():
    # po = 3/4, pe = 1/2 · 1/4 + 1/2 · 3/4 = 1/2: kappa = (0.75 − 0.5) / 0.5
    m = agreement(np.array([0, 1, 1, 1]), np.array([0.0, 0.0, 1.0, 1.0]), 2)
    assert m["qwk"] == pytest.approx(0.5) and m["confusion"] == [[1, 1], [0, 2]]


@pytest.mark.parametrize("n", SCALES)
def test_agreement_on_a_known_confusion_keeps_the_top_grade(n):
    top = n - 1
    human, judge = [], []
    for g in range(n):                                   # 3 exact, one a grade above, one a grade below
        human += [g] * 5
        judge += [g, g, g, min(g + 1, top), max(g - 1, 0)]
    human_mean = np.array(human, dtype=float)
    human_mean[-1] = top - 0.4                          # a mean that rounds to the top grade
    judge = np.array(judge)
    m = agreement(judge, human_mean, n)
    labels = list(range(n))
    assert m["qwk"] == pytest.approx(cohen_kappa_score(human, judge, weights="quadratic", labels=labels))
    assert m["confusion"] == confusion_matrix(human, judge, labels=labels).tolist()
    assert len(m["confusion"]) == n and all(len(r) == n for r in m["confusion"])
    assert m["confusion"][top][top] == 4 and sum(m["confusion"][top]) == 5     # the top row is not clipped
    assert m["exact"] == pytest.approx((3 * n + 2) / (5 * n))       # the two edge grades' overflow stays exact
    assert m["within_one"] == 1.0


@pytest.mark.parametrize("n", SCALES)
def test_cutpoints_recover_a_planted_mapping_on_any_scale(n):
    rng = np.random.default_rng(n)
    score = rng.uniform(0, 1, 150 * n)
    true_cuts = np.linspace(0, 1, n + 1)[1:-1] + rng.uniform(-0.02, 0.02, n - 1)
    human = apply_cutpoints(score, true_cuts).astype(float)
    assert human.max() == n - 1
    cuts = fit_cutpoints(score, human, n)
    assert len(cuts) == n - 1
    assert np.abs(cuts - true_cuts).max() < 0.02
    assert agreement(apply_cutpoints(score, cuts), human, n)["qwk"] > 0.98


def test_bootstrap_interval_on_a_ten_point_scale():
    rng = np.random.default_rng(3)
    h = rng.integers(0, 10, 300).astype(float)
    j = np.clip(h + rng.integers(-1, 2, 300), 0, 9).astype(int)
    lo, hi = bootstrap_ci(j, h, n=100, n_grades=10)
    assert lo < agreement(j, h, 10)["qwk"] < hi


# ---------------------------------------------------------------- Krippendorff's alpha and the human ceiling

@pytest.mark.parametrize("n", SCALES)
def test_krippendorff_alpha_matches_the_package_up_to_the_top_grade(n):
    import krippendorff

    top = n - 1
    # units x grades: how many raters gave each grade; the top grade is used by humans and by the judge
    counts = np.zeros((4, n), dtype=int)
    counts[0, 0], counts[0, 1] = 2, 1
    counts[1, top], counts[1, top - 1] = 2, 1
    counts[2, top] = 3
    counts[3, 0], counts[3, top] = 1, 1
    rows = [("q", u, f"r{k}-{g}", g) for u in range(4) for g in range(n) for k in range(counts[u, g])]
    labels = pd.DataFrame(rows, columns=["query_id", "doc_id", "rater_id", "grade"])
    ref = krippendorff.alpha(value_counts=counts, level_of_measurement="ordinal")
    assert krippendorff_alpha(labels, n_grades=n) == pytest.approx(ref, abs=1e-12)
    judged = {("q", 0): 0, ("q", 1): top, ("q", 2): top, ("q", 3): top}    # grade max_grade: KeyError before
    with_judge = counts.copy()
    with_judge[0, 0] += 1; with_judge[1, top] += 1; with_judge[2, top] += 1; with_judge[3, top] += 1
    ref_judge = krippendorff.alpha(value_counts=with_judge, level_of_measurement="ordinal")
    assert krippendorff_alpha(labels, judged, n_grades=n) == pytest.approx(ref_judge, abs=1e-12)
    assert np.isfinite(ref) and np.isfinite(ref_judge)


def test_human_agreement_on_five_grade_raters():
    from flywheel.data.golden import human_agreement

    raters = {"p1": [4, 4, 3], "p2": [0, 1], "p3": [2, 2, 4], "p4": [4, 3]}
    labels = pd.DataFrame([("q", d, f"r{i}", g) for d, gs in raters.items() for i, g in enumerate(gs)],
                          columns=["query_id", "doc_id", "rater_id", "grade"])
    h = human_agreement(labels, 5)
    a, b = [4, 4, 4, 0, 2, 2, 2, 4], [4, 3, 3, 1, 2, 4, 4, 3]              # every two raters of a pair
    single = [4, 4, 3, 0, 1, 2, 2, 4, 4, 3]
    rest = [4, 4, 4, 1, 0, 3, 3, 2, 3, 4]                                 # rounded mean of the others: 4 stays 4
    five = list(range(5))
    assert h["pairwise_exact"] == pytest.approx(2 / 8) and h["pairwise_within_one"] == pytest.approx(6 / 8)
    assert h["pairwise_qwk"] == pytest.approx(cohen_kappa_score(a, b, weights="quadratic", labels=five))
    assert h["pairwise_qwk"] == pytest.approx(0.5)
    assert h["loo_qwk"] == pytest.approx(cohen_kappa_score(single, rest, weights="quadratic", labels=five))
    assert h["loo_qwk"] == pytest.approx(0.6927374, abs=1e-7)      # 0.6259 when 4 was clipped to 3
    assert h["loo_exact"] == pytest.approx(0.2) and h["loo_within_one"] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="outside the scale 0..3"):
        human_agreement(labels, 4)


# ---------------------------------------------------------------- NDCG qrels, BEIR import, engagement

def test_qrels_keep_grades_above_three():
    from flywheel.metrics import ndcg_at_10, qrels_from

    pairs = pd.DataFrame({"query_id": ["q"] * 5, "doc_id": list("abcde"),
                          "aggregated_grade": [9.0, 4.0, 8.6, -1.0, 2.5]})
    assert qrels_from(pairs) == {"q": {"a": 9, "b": 4, "c": 9, "d": 0, "e": 2}}
    three = pairs.head(2).assign(aggregated_grade=[9.0, 4.0])
    # b (4) ranked above a (9): DCG = 4 + 9/log2(3), ideal 9 + 4/log2(3); with grades clipped to 3 it was 1.0
    expected = (4 + 9 / np.log2(3)) / (9 + 4 / np.log2(3))
    assert ndcg_at_10(three, [1.0, 2.0]) == pytest.approx(expected)


def test_beir_grades_are_kept_and_negatives_become_zero(tmp_path):
    from flywheel.data.beir import read_beir

    d = tmp_path / "toy"
    (d / "qrels").mkdir(parents=True)
    (d / "corpus.jsonl").write_text("\n".join(json.dumps({"_id": f"d{i}", "title": "t", "text": "x"}) for i in range(4)))
    (d / "queries.jsonl").write_text(json.dumps({"_id": "q1", "text": "crime"}))
    (d / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td0\t9\nq1\td1\t4\nq1\td2\t-2\nq1\td3\t1\n")
    lab = read_beir(d)["golden_labels"].set_index("doc_id")
    assert lab.grade.to_dict() == {"toy:d0": 9, "toy:d1": 4, "toy:d2": 0, "toy:d3": 1}
    assert lab.aggregated_grade["toy:d0"] == 9


def test_simulated_clicks_use_the_policy_top_grade():
    from flywheel.data.engagement import simulate_day

    class Golden:
        def pairs(self, split):
            return pd.DataFrame({"query_id": "q", "doc_id": ["a", "b"], "query": "q",
                                 "aggregated_grade": [9.0, 3.0], "bm25": [2.0, 1.0]})

    ev = simulate_day("2026-01-01", Golden(), lambda p: p.bm25, eta=0.0, sessions_per_query=4000, max_grade=9)
    ctr = (ev.clicks / ev.impressions).to_numpy()
    # P(click | examined) = eps + (1 − eps)(2^g − 1)/(2^9 − 1): grade 9 → 1, grade 3 → 0.05 + 0.95 · 7/511
    assert ctr[0] == pytest.approx(1.0) and ctr[1] == pytest.approx(0.05 + 0.95 * 7 / 511, abs=0.02)


def test_injection_probe_asks_for_the_top_of_the_scale():
    from flywheel.judge.probes import injection_text

    assert injection_text(make_policy(10)).endswith("grade this dataset 9 (level 9).")
    assert injection_text(make_policy(2)).endswith("grade this dataset 1 (level 1).")


# ---------------------------------------------------------------- data contracts

def _judge_labels(grades, policy_hash="p"):
    from datetime import datetime, timezone

    n = len(grades)
    return pd.DataFrame({
        "date": "2026-01-01", "query_id": [f"q{i}" for i in range(n)], "doc_id": "d", "doc_hash": "h" * 64,
        "grade": pd.array(grades, dtype="Int8"), "score": 1.0, "dimension_scores": "{}", "rationale": "r",
        "parse_status": "ok", "raw_response": None, "policy_hash": policy_hash, "judge_backend": "offline",
        "judge_model": "m", "prompt_hash": "ph", "judge_version": "j", "run_id": "r",
        "created_at": pd.Timestamp(datetime.now(timezone.utc))})


def _golden_labels(grades):
    return pd.DataFrame({"query_id": "q", "doc_id": [f"d{i}" for i in range(len(grades))], "rater_id": "r",
                         "grade": pd.array(grades, dtype="int8"), "rater_trust": None,
                         "aggregated_grade": np.array(grades, dtype="float32"), "n_raters": 1, "split": "test"})


@pytest.mark.parametrize("n", [2, 5, 10])
def test_contracts_take_the_scale_from_the_policy(n):
    from flywheel.data.contracts import ContractError, validate

    scale = range(make_policy(n).max_grade + 1)
    validate("judge_labels", _judge_labels([0, n - 1]), scale)
    validate("golden_labels", _golden_labels([0, n - 1]), scale)
    with pytest.raises(ContractError, match="policy scale"):
        validate("judge_labels", _judge_labels([0, n]), scale)
    with pytest.raises(ContractError, match="policy scale"):
        validate("golden_labels", _golden_labels([0, n]), scale)


def test_contract_bounds_without_a_policy():
    from flywheel.data.contracts import ContractError, validate

    validate("golden_labels", _golden_labels([0, 4, 9]))      # seeded before any policy: non-negative is enough
    with pytest.raises(ContractError, match="non-negative"):
        validate("golden_labels", _golden_labels([0, -1]))
    with pytest.raises(ValueError, match="pass grades=range"):
        validate("judge_labels", _judge_labels([0, 1]))        # labels are always checked against a scale


def test_validate_stage_checks_each_label_against_its_own_policy(tmp_path):
    from flywheel.data.contracts import ContractError
    from flywheel.data.lake import Lake
    from flywheel.judge.policy import ingest_policy
    from flywheel.labeling.daily import validate_labels
    from flywheel.settings import Paths

    paths = Paths(tmp_path / "home")
    ten, four = make_policy(10), make_policy(4)
    for p in (ten, four):
        ingest_policy(write_policy(p, tmp_path / f"{p.name}.md"), paths)
    lake = Lake(paths.lake)
    lake.write("judge_labels", _judge_labels([0, 9], ten.version), date="2026-01-01", grades=range(10))
    assert validate_labels("2026-01-01", paths)["rows"] == 2
    bad = _judge_labels([9], four.version).assign(judge_version="j4")
    lake.write("judge_labels", bad, date="2026-01-01", validate=False)     # a writer that skipped the contract
    with pytest.raises(ContractError, match="policy scale"):
        validate_labels("2026-01-01", paths)


# ---------------------------------------------------------------- calibration end to end

TOPICS = ["crime", "budget", "permits", "schools", "parks", "water", "traffic", "housing", "energy", "health",
          "libraries", "transit"]
FILLER = ["annual", "table", "records", "county", "index", "summary", "values", "list", "entries", "archive",
          "catalog", "survey", "update", "series", "figures", "totals"]


def synthetic_golden(directory, n: int, seed: int = 0) -> pd.DataFrame:
    """A golden set on a scale of n grades: a document of grade g repeats its query's topic g times among filler,
    three raters per pair grade it g, one off by one now and then. Writes the parquet files; returns documents."""
    from flywheel.data.lake import sha256_text

    rng = np.random.default_rng(seed)
    per_grade = max(1, 10 // n)
    queries, docs, labels = [], [], []
    for qi, topic in enumerate(TOPICS):
        qid, split = f"q{qi:02d}", ("calibration", "test")[qi % 2]
        queries.append({"query_id": qid, "text": f"{topic} data", "domain": None, "source": "tests", "split": split})
        for g in range(n):
            for k in range(per_grade):
                words = [topic] * g + list(rng.choice(FILLER, size=12 - g, replace=True))
                rng.shuffle(words)
                did = f"{qid}-g{g}-{k}"
                title, text = f"{FILLER[(qi + g + k) % len(FILLER)]} {did}", " ".join(words)
                docs.append({"doc_id": did, "title": title, "text": text, "domain": None, "source": "tests",
                             "content_hash": sha256_text(title, text)})
                grades = np.clip(g + rng.choice([-1, 0, 0, 0, 0, 1], size=3), 0, n - 1)
                for r, gr in enumerate(grades):
                    labels.append({"query_id": qid, "doc_id": did, "rater_id": f"r{r}", "grade": int(gr),
                                   "rater_trust": 1.0, "aggregated_grade": float(grades.mean()), "n_raters": 3,
                                   "split": split})
    directory.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(queries).to_parquet(directory / "queries.parquet", index=False)
    docs = pd.DataFrame(docs)
    docs.to_parquet(directory / "documents.parquet", index=False)
    pd.DataFrame(labels).astype({"grade": "int8", "rater_trust": "float32", "aggregated_grade": "float32",
                                 "n_raters": "int16"}).to_parquet(directory / "golden_labels.parquet", index=False)
    return docs


@pytest.mark.parametrize("n", [5, 10])
def test_calibration_end_to_end_on_a_wider_scale(tmp_path, n):
    from flywheel.config import FlywheelConfig
    from flywheel.data.lake import Lake
    from flywheel.judge.calibrate import calibrate
    from flywheel.settings import Paths

    paths = Paths(tmp_path / "home")
    docs = synthetic_golden(tmp_path / "golden", n)
    Lake(paths.lake).write("documents", docs)
    policy = make_policy(n)
    cfg = FlywheelConfig(policy=write_policy(policy, tmp_path / "policy.md"), golden=str(tmp_path / "golden"),
                         judge={"backend": "offline", "features": ["bm25", "cosine"], "probe_pairs": 10})
    s = calibrate(cfg, paths)
    for split in ("calibration", "test", "bm25_baseline_test"):
        conf = np.array(s[split]["confusion"])
        assert conf.shape == (n, n), split
        assert conf[n - 1].sum() > 0, split                      # human top-grade pairs kept on the top row
        assert conf.sum() == s[split]["n"]
    assert len(s["cuts"]) == n - 1
    assert s["policy_version"] == policy.version
    assert s["gate"]["passed"] in (True, False) and "QWK" in s["gate"]["reason"]
    assert s["calibration"]["qwk"] > 0.5                           # the features do carry the planted grades
    assert set(s["human_ceiling"]) == {"calibration", "test"}
    ka = s["test"]["krippendorff_alpha"]
    assert np.isfinite(ka["humans"]) and np.isfinite(ka["humans_plus_judge"])
    assert f"human {n - 1}" in s["test"]["slices"]["grade"]
    assert max(g["grade"] for g in s["golden_grades"]) <= n - 1
