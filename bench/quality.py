"""The whole flywheel on any dataset in the BEIR layout: NDCG@10 of every system it builds.

    python bench/quality.py --data DIR --policy FILE [--family encoder|decoder] [--config configs/quality.yaml]
    python bench/quality.py --avature --policy policies/job_title_search.md     # the Avature job-title set

DIR holds ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (``test`` is held out; every other split
calibrates the judge). Qrels that list only relevant pairs (most BEIR sets) get assumed negatives: grade-0
pairs sampled from each query's unjudged BM25/dense candidates, a fifth of them hard (``--negatives``, ``--hard-share``,
``--negatives-per-query``; flywheel/retrieval/negatives.py). The dataset becomes a golden set under the bench
home, the flywheel runs on it with ``--config`` (its golden set and policy replaced; ``--family decoder`` takes
the ladder of configs/decoder.yaml) in a home of its own (``--home``, default ``.flywheel/bench/<dataset>``; a
rerun reuses every finished stage), and the script prints NDCG@10 on the held-out test queries for BM25, the bi-encoder, the judge, every rung,
the pruned variants and the compressed students, with non-embedding parameters, items/s, and the issue's ratios
(student / teacher, pruned / student, compressed / uncompressed, combined speed-up). ``--json`` writes them all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def golden_from_beir(data: Path, out: Path, negatives: str = "auto", per_query: int = 20,
                     hard_share: float = 0.2) -> dict:
    """The BEIR directory as a golden set (queries, documents, golden_labels parquet); nothing written on error.

    Positive-only qrels (``negatives="auto"``: under 10% of queries with a judged 0; ``"always"``/``"never"``
    force it) get ``per_query`` assumed negatives per query from its unjudged first-stage candidates, a fifth of
    them hard by default (``hard_share``) (flywheel.retrieval.negatives; rater_id "assumed:unjudged", grade 0). ``judged_pairs`` counts the
    human judgments only; ``assumed_negatives`` the rows added.
    """
    from flywheel.data.beir import read_beir
    from flywheel.retrieval.negatives import ASSUMED_RATER, add_assumed_negatives

    tables, neg = add_assumed_negatives(read_beir(data), per_query=per_query, mode=negatives, hard_share=hard_share)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in tables.items():
        tmp = out / f".tmp-{name}.parquet"
        df.to_parquet(tmp, index=False)
        os.replace(tmp, out / f"{name}.parquet")
    lab = tables["golden_labels"]
    return {"queries": int(lab.query_id.nunique()), "test_queries": int(lab[lab.split == "test"].query_id.nunique()),
            "documents": int(len(tables["documents"])), "judged_pairs": int((lab.rater_id != ASSUMED_RATER).sum()),
            "positive_only_qrels": neg["positive_only"], "assumed_negatives": neg["assumed_negatives"],
            "assumed_hard_negatives": neg["hard"],
            "assumed_negatives_per_split": {k: v["assumed_negatives"] for k, v in neg["per_split"].items()}}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--data", type=Path, help="a dataset in the BEIR layout")
    src.add_argument("--avature", action="store_true",
                     help="export ../shared/datasets/avature_job_titles to the BEIR layout first, then use it")
    ap.add_argument("--policy", type=Path, required=True, help="the grading policy the judge follows")
    ap.add_argument("--family", choices=["encoder", "decoder"], default="encoder",
                    help="decoder: the ladder of configs/decoder.yaml (Qwen3 built from configs) in place of --config's; "
                         "the printed family is that of the ladder that ran")
    ap.add_argument("--config", type=Path, default=ROOT / "configs" / "quality.yaml")
    ap.add_argument("--home", type=Path, default=None, help="flywheel home (default .flywheel/bench/<dataset>)")
    ap.add_argument("--date", default="2026-01-01", help="the run date (labels and clicks are keyed by it)")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this file")
    ap.add_argument("--negatives", choices=["auto", "always", "never"], default="auto",
                    help="assumed negatives from unjudged candidates: auto adds them only to positive-only qrels")
    ap.add_argument("--hard-share", type=float, default=0.2,
                    help="share of the assumed negatives taken from the very top of the first stage (hard ones)")
    ap.add_argument("--negatives-per-query", type=int, default=10,
                    help="assumed negatives per golden query (each costs the judge's LM feature ~0.1 s)")
    a = ap.parse_args(argv)

    if a.avature:
        from flywheel.data.avature import to_beir

        a.data = ROOT / ".flywheel" / "bench" / "beir" / "avature_job_titles"
        if not (a.data / "corpus.jsonl").exists():
            to_beir(ROOT.parent / "shared" / "datasets" / "avature_job_titles", a.data)
    name = a.data.resolve().name
    from flywheel.config import load_config
    from flywheel.judge.policy import load_policy

    load_policy(a.policy)            # a bad policy fails here, before any work
    cfg = load_config(a.config)
    ladder = load_config(ROOT / "configs" / "decoder.yaml").ladder if a.family == "decoder" else cfg.ladder
    family = ladder.rungs[0].family  # what the ladder is made of: --family, or the rungs of --config
    home = (a.home or ROOT / ".flywheel" / "bench" / f"{name}-{family}").resolve()
    os.environ["FLYWHEEL_HOME"] = str(home)

    golden = home / "golden"
    counts = golden_from_beir(a.data, golden, a.negatives, a.negatives_per_query, a.hard_share)
    cfg = cfg.model_copy(update={"golden": str(golden), "policy": str(a.policy.resolve()), "name": f"quality-{name}",
                                 "ladder": ladder})

    from flows.daily import with_runner

    summary = with_runner(cfg)(cfg, a.date)
    out = figures(summary, counts, name, f"{family}, teacher {ladder.rungs[0].checkpoint}")
    print_figures(out)
    if a.json:
        a.json.write_text(json.dumps(out, indent=2, default=str))
    return out


def figures(summary: dict, counts: dict, name: str, family: str) -> dict:
    ev = summary["evaluation"]["systems"]
    comp = summary.get("compression") or {}
    systems = dict(ev) | (comp.get("systems") or {})
    t, s = ev["teacher"]["ndcg@10"], ev["student"]["ndcg@10"]
    p = ev["student_pruned"]
    ratios = {"student / teacher NDCG@10": s / t,
              "pruned / student NDCG@10": p["ndcg@10"] / s,
              "pruned non-embedding params fewer than student": 1 - p["n_params"] / ev["student"]["n_params"],
              "pruned / student items/s": p["items_per_s"] / ev["student"]["items_per_s"]}
    for k, v in (comp.get("systems") or {}).items():
        ratios[f"{k}: documents shorter (x)"] = v["doc_tokens_ratio"]
        ratios[f"{k}: NDCG@10 / uncompressed"] = v["ndcg_ratio_to_uncompressed"]
    c = comp.get("combined") or {}
    if c.get("system"):
        ratios[f"combined ({c['system']}) items/s / teacher naive"] = c["speedup"]
        ratios[f"combined ({c['system']}) NDCG@10 / teacher"] = c["ndcg_ratio_to_teacher"]
    evaluation = summary["evaluation"]
    rungs = summary.get("rungs") or {}
    return {"dataset": name, "family": family, "counts": counts, "test_pairs": evaluation["test_pairs"],
            "judge": {k: summary["calibration"].get(k, {}).get("qwk") for k in ("calibration", "test")},
            "gate": summary["calibration"].get("gate"),
            "systems": systems, "ratios": ratios, "pruning": summary.get("pruning"),
            "baselines": evaluation.get("baselines"), "gate_metric": evaluation.get("gate_metric"),
            "rerank": {k: v for k, v in (evaluation.get("rerank") or {}).items()
                       if k not in ("systems", "judged@10", "condensed")},
            "targets": targets(systems, evaluation, (summary.get("pruning") or {}).get("deployable")),
            "per_query": evaluation.get("per_query"),
            "validation": {k: r["validation"] for k, r in rungs.items() if isinstance(r, dict) and r.get("validation")},
            "pseudo_queries": {k: r["pseudo_queries"] for k, r in rungs.items()
                               if isinstance(r, dict) and r.get("pseudo_queries")}
            | ({"labelled (retrieval)": ps} if (ps := (summary.get("candidates") or {}).get("pseudo_queries")) else {}),
            "promotion": {k: (summary.get("promotion") or {}).get(k) for k in ("promoted", "reason", "champion")},
            "length_curve": comp.get("length_curve"), "report": summary.get("report"),
            "stages": [{"stage": st["stage"], "seconds": round(st["seconds"], 1)} for st in summary.get("stages") or []]}


def targets(systems: dict, evaluation: dict, deployable: str | None = None) -> dict:
    """The quality issue's rules in each protocol (judged pools ``ndcg@10``, and ``rerank_ndcg@10`` where it ran,
    with its condensed form ``rerank_condensed_ndcg@10``: the same rankings with unjudged documents removed, which
    shows whether a miss is ranking or unjudged documents), each with the figures it compares: True where met.
    ``gate_metric`` names the one the promotion gate reads; ``deployable`` adds its rule against the best baseline.
    Where the evaluation kept per-query figures, ``ci95`` gives each rule a 95% paired-bootstrap interval over the
    test queries ([low, high] of the ratio, or of the gain), which says whether that many queries can tell a miss
    from noise; for a pair not scored on the same queries (judge replies that failed to parse), over the ones both
    were, with how many under ``ci95_queries``."""
    from flywheel.metrics import paired_bootstrap_ci

    out = {"gate_metric": evaluation.get("gate_metric", "ndcg@10")}
    for m in ("ndcg@10", "rerank_ndcg@10", "rerank_condensed_ndcg@10"):
        v = {k: s.get(m) for k, s in systems.items() if s.get(m) is not None}
        if not {"teacher", "judge", "student"} <= set(v):
            continue
        pq = (evaluation.get("per_query") or {}).get(m) or {}
        base = max((b for b in evaluation.get("baselines", []) if b in v), key=v.get)
        t, j, b = v["teacher"], v["judge"], v[base]
        rules = {"best_baseline": f"{base} {b:.4f}",
                 "teacher >= best baseline": [t >= b, round(t, 4), round(b, 4)],
                 "teacher >= 0.95 x judge": [t >= 0.95 * j, round(t / j, 4)]}
        pairs = {"teacher >= best baseline": ("teacher", base, "diff"),
                 "teacher >= 0.95 x judge": ("teacher", "judge", "ratio")}
        if j - b > 0.04:
            rules["judge leads by > 0.04: teacher >= best baseline + 0.02"] = [t >= b + 0.02, round(t - b, 4)]
            pairs["judge leads by > 0.04: teacher >= best baseline + 0.02"] = ("teacher", base, "diff")
        rules["student >= 0.97 x teacher"] = [v["student"] >= 0.97 * t, round(v["student"] / t, 4)]
        pairs["student >= 0.97 x teacher"] = ("student", "teacher", "ratio")
        if deployable in v:
            rules[f"deployable ({deployable}) >= best baseline"] = [v[deployable] >= b, round(v[deployable] - b, 4)]
            pairs[f"deployable ({deployable}) >= best baseline"] = (deployable, base, "diff")
        cis, counts, done = {}, {}, {}
        for rule, (x, y, op) in pairs.items():
            if x in pq and y in pq:
                if (x, y, op) not in done:
                    done[(x, y, op)] = [round(c, 4) for c in paired_bootstrap_ci(pq[x], pq[y], op)]
                cis[rule] = done[(x, y, op)]
                if set(pq[x]) != set(pq[y]):
                    counts[rule] = len(set(pq[x]) & set(pq[y]))
        if cis:
            rules["ci95"] = cis
        if counts:
            rules["ci95_queries"] = counts
        out[m] = rules
    return out


def print_figures(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    tab = Table(title=f"{out['dataset']} ({out['family']} ladder): NDCG@10 on {out['counts']['test_queries']} "
                      f"held-out queries, {out['test_pairs']} judged pairs")
    for col in ("system", "NDCG@10 judged pools", "NDCG@10 rerank top-k", "judged@10 (rerank)",
                "condensed (rerank, judged only)", "vs best baseline (95% CI)", "non-embedding params", "items/s",
                "document tokens"):
        tab.add_column(col)
    for k, v in out["systems"].items():
        rr, gain, gci = v.get("rerank_ndcg@10"), v.get("gain_over_best_baseline"), v.get("gain_over_best_baseline_ci95")
        cj, cn = v.get("rerank_judged@10"), v.get("rerank_condensed_ndcg@10")
        tab.add_row(k + (" (baseline)" if k in (out.get("baselines") or []) else ""), f"{v['ndcg@10']:.4f}",
                    f"{rr:.4f}" if rr is not None else "", f"{cj:.2f}" if cj is not None else "",
                    f"{cn:.4f}" if cn is not None else "",
                    (f"{gain:+.4f}" + (f" ({gci[0]:+.3f} to {gci[1]:+.3f})" if gci else "")) if gain is not None else "",
                    f"{v['n_params']:,}" if v.get("n_params") else "",
                    f"{v['items_per_s']:.0f}" if v.get("items_per_s") else "",
                    f"{v['doc_tokens']:.1f}" if v.get("doc_tokens") is not None else "")
    con.print(tab)
    rt = Table(title="Ratios (measured side by side in this run)")
    rt.add_column("figure")
    rt.add_column("value")
    for k, v in out["ratios"].items():
        rt.add_row(k, f"{v:.3f}")
    con.print(rt)
    if out.get("pruning"):
        con.print(f"pruned student {out['pruning']['reason']}")
    vt = Table(title="Do no harm: validation NDCG@10 on queries no rung trained on, against the judge's labels "
                     "(teacher) or the parent's ranking (distilled rungs)")
    for col in ("rung", "against", "start", "kept", "kept state", "judge: start → kept"):
        vt.add_column(col)
    for k, v in out["validation"].items():
        judge = f"{v['judge_start']:.4f} → {v['judge_kept']:.4f}" if "judge_kept" in v else ""
        vt.add_row(k, v.get("by", "judge"), f"{v.get('validation_start', float('nan')):.4f}",
                   f"{v.get('validation_best', float('nan')):.4f}",
                   "start (nothing trained beat it)" if v["kept"] == "start" else v["kept"], judge)
    con.print(vt)
    for m, rules in out["targets"].items():
        if not isinstance(rules, dict):
            continue
        gate = " — the promotion gate's protocol" if m == out["targets"]["gate_metric"] else ""
        tt = Table(title=f"Targets ({m}; best baseline {rules['best_baseline']}){gate}")
        tt.add_column("rule")
        tt.add_column("met")
        tt.add_column("figures")
        tt.add_column("95% CI over test queries")
        for k, v in rules.items():
            if isinstance(v, list):
                ci, n = rules.get("ci95", {}).get(k), rules.get("ci95_queries", {}).get(k)
                tt.add_row(k, "yes" if v[0] else "NO", " ".join(str(x) for x in v[1:]),
                           (f"{ci[0]:.4f} to {ci[1]:.4f}" + (f" (on {n} queries both scored)" if n else "")) if ci else "")
        con.print(tt)
    for k, p in out["pseudo_queries"].items():
        con.print(f"{k}: {p['made']} of {p['requested']} pseudo-queries {p['by_method']}"
                  + (f" — {p['why_fewer']}" if p.get("why_fewer") else ""))
    con.print(f"promotion: {'promoted' if out['promotion']['promoted'] else 'NOT promoted'} — {out['promotion']['reason']}")
    if out.get("stages"):
        con.print("stage minutes: " + ", ".join(f"{st['stage']} {st['seconds'] / 60:.1f}" for st in out["stages"])
                  + f"; flow total {sum(st['seconds'] for st in out['stages']) / 60:.1f}")


if __name__ == "__main__":
    main()
