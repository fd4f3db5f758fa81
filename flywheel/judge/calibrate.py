"""Flow stage 2: calibrate the judge on the golden calibration split, and measure it on the held-out test split.

For the offline judge, agreement on the calibration split is cross-validated by query (fit on k−1 folds,
grade the held-out fold), so the gate sees out-of-sample figures; the judge then used for labelling is fitted
on the whole calibration split. A BM25-only judge fitted the same way is the baseline the judge must beat.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from flywheel.config import FlywheelConfig
from flywheel.data.golden import human_agreement, load_golden
from flywheel.judge import store
from flywheel.judge.agreement import agreement, bootstrap_ci, calibration_gate, krippendorff_alpha, sliced_agreement
from flywheel.judge.backends import OfflineJudge
from flywheel.judge.features import FeatureExtractor
from flywheel.judge.policy import load_policy
from flywheel.judge.selection import draw_exemplars, query_folds, select
from flywheel.settings import Paths


def _folds(query_ids: pd.Series, k: int) -> np.ndarray:
    uniq = np.array(sorted(query_ids.unique()))
    fold_of = {q: i % k for i, q in enumerate(uniq)}
    return query_ids.map(fold_of).to_numpy()


def _cv_grades(policy, ext, pairs, feats, y, k) -> np.ndarray:
    folds = _folds(pairs.query_id, k)
    out = np.zeros(len(pairs), dtype=int)
    for f in range(k):
        tr, te = folds != f, folds == f
        j = OfflineJudge(policy, ext).fit(pairs[tr], y[tr], feats[tr])
        out[te] = j.judge(pairs[te], feats[te]).grade.to_numpy()
    return out


def _grades(pairs: pd.DataFrame, judged: pd.DataFrame) -> list[dict]:
    """Per-pair judge grades on the golden set (for policy impact previews)."""
    rationale = judged["rationale"] if "rationale" in judged else [None] * len(judged)
    return [{"query_id": q, "doc_id": d, "query": qt, "title": t, "text": str(tx)[:300], "split": s, "human": float(h),
             "grade": None if pd.isna(g) else int(g), "status": st, "rationale": None if pd.isna(r) else str(r)}
            for q, d, qt, t, tx, s, h, g, st, r in zip(
                pairs.query_id, pairs.doc_id, pairs["query"], pairs.title, pairs.text, pairs.split,
                pairs.aggregated_grade, judged.grade, judged.parse_status, rationale)]


def _with_ci(judge_grades, human_mean, n_grades: int) -> dict:
    m = agreement(judge_grades, human_mean, n_grades)
    m["qwk_ci95"] = bootstrap_ci(judge_grades, human_mean, "qwk", n_grades=n_grades)
    m["spearman_ci95"] = bootstrap_ci(judge_grades, human_mean, "spearman", n_grades=n_grades)
    return m


def check_scale(labels: pd.DataFrame, n_grades: int, policy_name: str) -> None:
    """ValueError when a golden grade lies outside the policy's scale 0..n_grades − 1 (wrong policy for the set)."""
    off = labels[(labels.grade < 0) | (labels.grade > n_grades - 1)]
    if len(off):
        raise ValueError(f"the golden set has grades {sorted(set(off.grade.astype(int)))} outside policy "
                         f"{policy_name!r}'s scale 0..{n_grades - 1}: use a policy with as many grades as the "
                         f"golden labels, or relabel the golden set")


def calibrate(cfg: FlywheelConfig, paths: Paths, progress=None) -> dict:
    policy = load_policy(cfg.resolve(cfg.policy))
    golden = load_golden(cfg.resolve(cfg.golden))
    n_grades = policy.max_grade + 1
    check_scale(golden.labels, n_grades, policy.name)
    calib, test = golden.pairs("calibration"), golden.pairs("test")
    ceiling = {s: h for s in ("calibration", "test")
               if (h := human_agreement(golden.labels[golden.labels.split == s], n_grades)) is not None}
    if cfg.judge.backend == "openai":
        return _calibrate_openai(cfg, paths, policy, golden, calib, test, ceiling, progress)

    yc = calib.aggregated_grade.to_numpy(dtype=float)
    selection = None
    prompts = cfg.judge.lm_prompts if "upr" in cfg.judge.features else cfg.judge.lm_prompts[:1]
    if len(prompts) > 1:
        selection = _select_lm_prompt(cfg, paths, policy, calib, yc, prompts, progress)
    ext = store.extractor(cfg, paths, progress, selection["chosen"] if selection else None)
    both = pd.concat([calib, test], ignore_index=True)
    feats_all = ext.transform(both)
    fc, ft = feats_all.iloc[:len(calib)].reset_index(drop=True), feats_all.iloc[len(calib):].reset_index(drop=True)
    cv = _cv_grades(policy, ext, calib, fc, yc, cfg.judge.cv_folds)
    metrics = _with_ci(cv, yc, n_grades)
    metrics["unparsed_rate"] = 0.0
    judge = OfflineJudge(policy, ext).fit(calib, yc, fc)
    store.save_judge(judge, paths)
    test_grades = judge.judge(test, ft)
    test_metrics = _with_ci(test_grades.grade.to_numpy(), test.aggregated_grade.to_numpy(), n_grades)
    # Baseline: BM25 alone, with cut-points fitted on the same calibration split.
    bm25_ext = FeatureExtractor(ext.retriever, ("bm25",))
    bm25_judge = OfflineJudge(policy, bm25_ext).fit(calib, yc, fc[["bm25"]])
    bm25_test = bm25_judge.judge(test, ft[["bm25"]]).grade.to_numpy()
    baseline = _with_ci(bm25_test, test.aggregated_grade.to_numpy(), n_grades)
    gate = calibration_gate(metrics, cfg.judge.min_qwk)
    test_labels = golden.labels[golden.labels.split == "test"]
    judged = dict(zip(zip(test.query_id, test.doc_id), test_grades.grade.to_numpy()))
    test_metrics["krippendorff_alpha"] = {
        "humans": krippendorff_alpha(test_labels, n_grades=n_grades),
        "humans_plus_judge": krippendorff_alpha(test_labels, judged, n_grades=n_grades)}
    test_metrics["slices"] = sliced_agreement(test_grades.grade.to_numpy(), test, n_grades)
    from flywheel.judge.probes import probe_offline

    sample = test.sample(min(cfg.judge.probe_pairs, len(test)), random_state=cfg.seed)
    probes = probe_offline(judge, sample, golden.documents, cfg.seed)
    disagreements = test.assign(judge_grade=test_grades.grade.to_numpy(), rationale=test_grades.rationale.to_numpy())
    disagreements["gap"] = (disagreements.judge_grade - disagreements.aggregated_grade).abs()
    worst = disagreements.sort_values("gap", ascending=False).head(15)[
        ["query", "title", "aggregated_grade", "judge_grade", "rationale"]]
    return {
        "judge_version": judge.version, "backend": "offline", "model": judge.model,
        "policy_version": policy.version, "features": list(ext.features),
        "weights": dict(zip(ext.features, judge.weights.round(4).tolist())), "cuts": judge.cuts.round(4).tolist(),
        "calibration": metrics, "test": test_metrics, "bm25_baseline_test": baseline, "human_ceiling": ceiling,
        "gate": {"passed": gate.passed, "reason": gate.reason}, "threshold": cfg.judge.min_qwk,
        "bias_probes": probes, "selection": selection,
        "worst_disagreements": worst.to_dict("records"),
        "golden_grades": _grades(calib, pd.DataFrame({"grade": cv, "parse_status": "ok"}, index=calib.index))
        + _grades(test, test_grades),
        "golden_hash": golden.content_hash,
    }


def _select_lm_prompt(cfg, paths, policy, calib, yc, prompts, progress) -> dict:
    """Pick the LM feature's prompt variant on a development fold (2-fold CV inside it), then fit the winner on the
    whole development fold and grade the held-out fold once."""
    fold = query_folds(calib, {"dev": 1, "heldout": 1}, cfg.seed).to_numpy()
    dev, held = fold == "dev", fold == "heldout"
    cal_dev = calib[dev].reset_index(drop=True)
    exts, n_grades = {}, policy.max_grade + 1

    def ext_for(v):
        return exts.setdefault(v, store.extractor(cfg, paths, progress, v))

    def dev_qwk(v):
        e = ext_for(v)
        f = e.transform(cal_dev)
        return _with_ci(_cv_grades(policy, e, cal_dev, f, yc[dev], 2), yc[dev], n_grades)

    def heldout(v):
        e = ext_for(v)
        f = e.transform(calib)
        j = OfflineJudge(policy, e).fit(calib[dev], yc[dev], f[dev])
        return _with_ci(j.judge(calib[held], f[held]).grade.to_numpy(), yc[held], n_grades)

    out = select(list(prompts), dev_qwk, heldout, cfg.judge.selection_min_gain)
    return {"kind": "lm_prompt", **out, "dev_queries": int(calib[dev].query_id.nunique()),
            "heldout_queries": int(calib[held].query_id.nunique())}


def _openai_metrics(judged: pd.DataFrame, pairs: pd.DataFrame, n_grades: int) -> dict:
    ok = (judged.parse_status == "ok").to_numpy()
    m = (_with_ci(judged.grade[ok].astype(int).to_numpy(), pairs.aggregated_grade[ok].to_numpy(), n_grades) if ok.any()
         else {"qwk": float("nan"), "n": 0})
    m["unparsed_rate"] = float(1 - ok.mean()) if len(ok) else 0.0
    m["status"] = judged.parse_status.value_counts().to_dict()
    return m


def _calibrate_openai(cfg, paths, policy, golden, calib, test, ceiling, progress=None) -> dict:
    from flywheel.judge.backends import OpenAIJudge
    from flywheel.judge.online import OnlineSettings
    from flywheel.judge.policy import Policy
    from flywheel.judge.probes import probe_judge

    def make(examples=None):
        pol = policy if examples is None else Policy.model_validate({**policy.model_dump(), "examples": examples})
        return OpenAIJudge(pol, cfg.judge.openai_model, cfg.judge.openai_base_url,
                           settings=OnlineSettings.from_config(cfg.judge), progress=progress)

    selection, gate_pairs, n_grades = None, calib, policy.max_grade + 1
    if cfg.judge.exemplar_sets:
        # exemplar pool | development | held-out, by query: no pair is ever graded with itself in the prompt
        fold = query_folds(calib, {"pool": 2, "dev": 3, "heldout": 3}, cfg.seed).to_numpy()
        pool, dev, held = (calib[fold == f].reset_index(drop=True) for f in ("pool", "dev", "heldout"))
        rng = np.random.default_rng(cfg.seed)
        sets = {"policy": [e.model_dump() for e in policy.examples]}
        for i in range(cfg.judge.exemplar_sets):
            sets[f"golden-{i + 1}"] = draw_exemplars(pool, n_grades, rng, fields=policy.document_fields)
        held_run = {}

        def heldout(v):
            held_run["judge"] = make(sets[v])
            held_run["judged"] = held_run["judge"].judge(held)
            return _openai_metrics(held_run["judged"], held, n_grades)

        out = select(list(sets), lambda v: _openai_metrics(make(sets[v]).judge(dev), dev, n_grades), heldout,
                     cfg.judge.selection_min_gain)
        selection = {"kind": "exemplars", **out, "exemplars": sets[out["chosen"]],
                     "pool_queries": int(pool.query_id.nunique()), "dev_queries": int(dev.query_id.nunique()),
                     "heldout_queries": int(held.query_id.nunique())}
        judge, cj = held_run["judge"], held_run["judged"]
        gate_pairs, metrics = held, dict(out["heldout"])     # the gate reads the fold no choice was made on
    else:
        judge = make()
        cj = judge.judge(calib)
        metrics = _openai_metrics(cj, calib, n_grades)
    metrics["usage"] = {k: v for k, v in judge.last_run.items() if k != "failures"}
    gate = calibration_gate(metrics, cfg.judge.min_qwk)
    store.save_judge_spec(judge, paths)
    out = {"judge_version": judge.version, "backend": "openai", "model": judge.model,
           "policy_version": policy.version, "calibration": metrics, "human_ceiling": ceiling,
           "gate": {"passed": gate.passed, "reason": gate.reason}, "threshold": cfg.judge.min_qwk,
           "golden_grades": _grades(gate_pairs, cj), "selection": selection}
    sample = gate_pairs.sample(min(cfg.judge.probe_pairs, len(gate_pairs)), random_state=cfg.seed)
    out["bias_probes"] = probe_judge(judge, sample, golden.documents, cfg.seed)
    if cfg.judge.judge_test_split:
        tj = judge.judge(test)
        tok = (tj.parse_status == "ok").to_numpy()
        if tok.any():
            out["test"] = _with_ci(tj.grade[tok].astype(int).to_numpy(), test.aggregated_grade[tok].to_numpy(),
                                   n_grades)
        out["golden_grades"] += _grades(test, tj)
    return out
