"""The flywheel's stages as compositions of tasks, shared by the flows: ``daily`` runs them all once,
``labelling`` and ``retraining`` run each half on its own schedule (prefect.yaml). Plain functions that call
tasks: they run inside whichever flow calls them."""

from __future__ import annotations

import time

from prefect import unmapped

from flywheel.config import FlywheelConfig
from tasks import calibrate, deploy, evaluate, label, policy, register, train
from tasks._common import file_hash, paths, resolve_secrets


class Clock:
    """Wall time and headline figures of each stage, for the run's summary table."""

    def __init__(self):
        self.stages = []

    def record(self, stage: str, t0: float, figures: str):
        self.stages.append({"stage": stage, "seconds": time.perf_counter() - t0, "figures": figures})


def prerequisites(cfg: FlywheelConfig, clock: Clock) -> dict:
    """Policy → golden set → calibrated judge and its gate (content-keyed tasks: cache hits when nothing changed)."""
    if cfg.judge.backend == "openai":      # before any task: a cached calibration must not skip it (evaluate needs it)
        resolve_secrets("OPENAI_API_KEY")
    t = time.perf_counter()
    pol = policy.ingest_policy(str(cfg.resolve(cfg.policy)), file_hash(cfg.resolve(cfg.policy)))
    golden_dir = cfg.resolve(cfg.golden)
    seed = policy.seed_golden(str(golden_dir), "".join(file_hash(p) for p in sorted(golden_dir.glob("*.parquet"))))
    clock.record("1 policy", t, f"policy {pol['name']} v{pol['version']}; golden {seed['judgments']} judgments")

    t = time.perf_counter()
    cal = calibrate.calibrate_judge(cfg, pol["version"], seed["golden_hash"], seed["documents_fp"])
    figs = f"judge {cal['judge_version']}: QWK {cal['calibration']['qwk']:.3f} (cv)"
    if cal.get("test"):
        figs += f", test {cal['test']['qwk']:.3f}"
    if cal.get("bm25_baseline_test"):     # absent when the judge has no BM25 feature to compare with
        figs += f" vs BM25 {cal['bm25_baseline_test']['qwk']:.3f}"
    clock.record("2 calibrate", t, figs + f"; gate {'passed' if cal['gate']['passed'] else 'BLOCKED'}")

    return {"policy": pol, "seed": seed, "calibration": cal}


def labelling_stages(cfg: FlywheelConfig, date: str, clock: Clock) -> dict:
    """Policy → calibration gate → candidates → labels → the labels' contract, for ``date``."""
    pre = prerequisites(cfg, clock)
    pol, seed, cal = pre["policy"], pre["seed"], pre["calibration"]
    t = time.perf_counter()
    queries_fp, ps = seed["queries_fp"], None
    if cfg.retrieval.pseudo_queries:     # queries made from documents, labelled by the judge like the rest
        ps = label.add_pseudo_queries(cfg.retrieval.pseudo_queries, cfg.seed, queries_fp, seed["documents_fp"])
        queries_fp = ps["queries_fp"]
    cands = label.retrieve_candidates(date, cfg, queries_fp, seed["documents_fp"])
    labels = label_day(date, cal, cfg, cands["fingerprint"])
    strata = f" (pre-judge grades {cands['predicted_grades']})" if cands.get("predicted_grades") else ""
    if ps:
        strata += (f"; {ps['made']} of {ps['requested']} pseudo-queries {ps['by_method']}"
                   + (f" — {ps['why_fewer']}" if ps.get("why_fewer") else ""))
    clock.record("3 retrieve + label", t, f"{cands['candidates']} candidates for {cands['queries']} queries"
                                          f"{strata}; {labels['labelled']} new labels")
    t = time.perf_counter()
    checked = label.validate_labels(date, labels["fingerprint"])
    clock.record("4 validate labels", t, f"{checked['rows']} rows pass the judge_labels contract")

    return {"policy": pol, "seed": seed, "calibration": cal, "candidates": cands, "pseudo_queries": ps,
            "labels": labels, "checked": checked}


def training_stages(cfg: FlywheelConfig, date: str, clock: Clock, lab: dict, labels_fp: str,
                    keep_serving: bool = False) -> dict:
    """Teacher → mid → student → pruned → evaluation → compressed students → registry → deployment, on every
    label the judge ``lab["calibration"]`` gave (``labels_fp``: the labels' fingerprint, the teacher's cache key)."""
    pol, seed, cal, labels = lab["policy"], lab["seed"], lab["calibration"], lab["labels"]
    cands, ps = lab.get("candidates"), lab.get("pseudo_queries")
    t = time.perf_counter()
    teacher = train.train_teacher(cal["judge_version"], labels_fp + ":" + cal["judge_version"], cfg)
    mid = train.distil("mid", teacher, cal["judge_version"], cfg, teacher=teacher)
    eng, events = None, None
    if cfg.engagement.enabled:
        events = train.engagement_events(date, cfg, seed["golden_hash"])
        eng = train.train_engagement_teacher(events["fingerprint"], cfg)
    student = train.distil("student", mid, cal["judge_version"], cfg, eng, teacher)
    clock.record("5 teacher → mid → student", t, " → ".join(
        f"{r['layers']}L/{r['params_non_embedding'] / 1e6:.1f}M" for r in (teacher, mid, student))
        + "; validation NDCG@10 start → kept: " + ", ".join(
            f"{r['rung']} {v['validation_start']:.3f} → {v['validation_best']:.3f} (vs {v.get('by', 'judge')})"
            + (" (STARTING POINT KEPT)" if v["kept"] == "start" else "")
            for r in (teacher, mid, student) if "validation_start" in (v := r.get("validation") or {}))
        + (f"; student also distilled from the engagement teacher ({'SIMULATED' if events['simulated'] else 'real'}"
           f" clicks, weight {cfg.engagement.weight}, observed on {student.get('engagement_observed_share', 0):.0%}"
           " of pairs)" if eng else ""))
    t = time.perf_counter()
    pruned = train.prune_student(student, cal["judge_version"], cfg)
    curve = {f"pruned_mlp{round(r * 100)}": train.prune_student(student, cal["judge_version"], cfg, r,
                                                                 f"pruned_mlp{round(r * 100)}")
             for r in cfg.ladder.prune_curve if r != cfg.ladder.prune_mlp_keep}
    width = pruned.get("width") or {}
    clock.record("6 prune student", t, f"kept layers {pruned['kept_layers']} of {student['layers']}"
                 + (f"; MLP {width['intermediate_size'][0]} → {width['intermediate_size'][1]} neurons" if width else "")
                 + f"; {pruned['params_non_embedding'] / 1e6:.1f}M non-embedding parameters"
                 + (f"; {len(curve)} more pruning ratios for the size curve" if curve else ""))

    t = time.perf_counter()
    rungs = {"teacher": teacher, "mid": mid, "student": student, "student_pruned": pruned}
    ev = evaluate.evaluate(rungs | curve | ({"engagement_teacher": eng} if eng else {})
                           | {"zero_shot_start": teacher["start"]}, cal["judge_version"], cfg)
    acc = evaluate.accept_pruned(ev, cfg)
    deployable = acc["deployable"]
    gm = ev.get("gate_metric", "ndcg@10")
    clock.record("7 evaluate", t, ", ".join(f"{k} {v[gm]:.3f}" for k, v in ev["systems"].items() if gm in v)
                 + f" ({gm}; best baseline {ev['best_baseline']}); pruned student {acc['reason']}")

    comp, comp_rungs = None, None
    if cfg.compression.enabled:
        t = time.perf_counter()
        cc = cfg.compression
        compressed = {}
        for form, sizes in (("fields", cc.field_budgets), ("soft", cc.soft_tokens)):
            for n in sizes:
                r = train.compress_student(rungs[deployable], form, n, cal["judge_version"], cfg)
                compressed[r["rung"]] = r
        comp_rungs = compressed
        comp = evaluate.evaluate_compression(compressed, deployable, rungs[deployable], teacher, ev, cfg)
        c = comp["combined"]
        clock.record("8 compress", t, ", ".join(
            f"{k} {v['ndcg@10']:.3f} ({v['doc_tokens_ratio']:.0f}x shorter documents)"
            for k, v in comp["systems"].items())
            + (f"; {c['system']} {c['speedup']:.0f}x the teacher's naive items/s at "
               f"{c['ndcg_ratio_to_teacher']:.1%} of its NDCG@10" if c.get("system") else ""))

    t = time.perf_counter()
    lineage = {"policy_version": pol["version"], "judge_version": cal["judge_version"],
               "labels": labels["fingerprint"], "date": date, "golden": seed["golden_hash"]}
    reg = register.register_models(rungs, ev, lineage, cfg, deployable, comp_rungs, comp)
    promo = register.promote(reg, ev, cfg, deployable, comp)
    clock.record("9 register", t, f"{deployable} registered as {cfg.registered_model}; "
                 + f"{'promoted' if promo['promoted'] else 'kept'} champion v{promo['champion']}"
                 + "".join(f"; {reg[k]['name']} champion v{v['champion']}" for k, v in promo["compressed"].items()))

    t = time.perf_counter()
    dep = deploy.deploy(promo, rungs, reg, cfg, keep_serving, deployable)
    clock.record("10 deploy", t, f"skipped: {dep['skipped']} (see stage 9)" if "skipped" in dep else
                 f"service {dep.get('action')}; max |served − offline| = "
                 f"{dep.get('max_abs_diff', float('nan')):.1e} over {dep.get('pairs_checked', 0)} pairs")
    summary = {"date": date, "config": cfg.name, "stages": clock.stages, "calibration": cal, "labels": labels,
               "candidates": (cands or {}) | ({"pseudo_queries": ps} if ps else {}),
               "rungs": rungs | curve | (comp_rungs or {}), "engagement": events, "evaluation": ev, "pruning": acc,
               "compression": comp, "registered": reg, "promotion": promo, "deploy": dep,
               "notes": ["The offline judge is a calibrated linear scorer over Gemma 3 270M query likelihood, BM25 "
                         "and MiniLM cosine — not a prompted LLM.",
                         "Parameter counts exclude embedding tables (they cost no compute per token).",
                         *(["Engagement logs are SIMULATED by a position-based click model over the human grades "
                            "(flywheel/data/engagement.py); the engagement_teacher row is trained on them."]
                           if events and events.get("simulated") else []),
                         *[f"{r['rung']}: {r['validation']['note']}" for r in (teacher, mid, student, pruned)
                           if (r.get("validation") or {}).get("kept") == "start"],
                         f"Home: {paths().home}"]}
    summary["curves_run"] = register.log_curves({k: summary[k] for k in ("date", "rungs", "evaluation", "pruning",
                                                                         "compression")})
    summary["report"] = deploy.write_report(summary)
    return summary




def label_day(date: str, cal: dict, cfg: FlywheelConfig, candidates_fp: str) -> dict:
    """The labelling stage: one task, or ``cfg.fanout.shards`` mapped shard tasks on the flow's task runner."""
    n = cfg.fanout.shards
    if n == 1 or not cal["gate"]["passed"] or (cfg.judge.backend == "openai" and cfg.judge.mode == "batch"):
        return label.label_candidates(date, cal, cfg, candidates_fp)
    futures = label.label_shard.map(date, unmapped(cal), unmapped(cfg), candidates_fp, shard=list(range(n)),
                                    n_shards=n)
    return label.merge_label_shards(date, cal, [f.result() for f in futures])


