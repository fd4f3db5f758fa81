"""The run report: one HTML page (and its Markdown twin for the Prefect artifact) per daily run."""

from __future__ import annotations

import base64
import html
import io
import os
import uuid
from pathlib import Path

from flywheel.settings import Paths


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def _gain(v: dict) -> str | None:
    """A rung's gain over the best baseline, with its bootstrap interval where the evaluation measured one."""
    g, ci = v.get("gain_over_best_baseline"), v.get("gain_over_best_baseline_ci95")
    if g is None:
        return None
    return f"{g:+.4f}" + (f" ({ci[0]:+.3f} to {ci[1]:+.3f})" if ci else "")


def tables(summary: dict) -> list[tuple[str, list[str], list[list]]]:
    out = [("Stages", ["stage", "seconds", "key figures"],
            [[s["stage"], f"{s['seconds']:.1f}", s["figures"]] for s in summary["stages"]])]
    cal = summary.get("calibration") or {}
    rows = []
    for label, key in (("judge, calibration split (cross-validated)", "calibration"), ("judge, test split", "test"),
                       ("BM25 with fitted cut-points, test split", "bm25_baseline_test")):
        m = cal.get(key)
        if m:
            rows.append([label, m["qwk"], f"{m['qwk_ci95'][0]:.3f}–{m['qwk_ci95'][1]:.3f}", m["spearman"],
                         m["exact"], m["within_one"], m["n"]])
    for split, h in (cal.get("human_ceiling") or {}).items():
        rows.append([f"one human vs the other raters, {split}", h["loo_qwk"], "", None, h["loo_exact"],
                     h["loo_within_one"], h["n_rater_pairs"]])
    if rows:
        out.append(("Judge agreement with human labels", ["who", "QWK", "QWK 95% CI", "Spearman", "exact",
                                                          "within one", "n"], rows))
    test = cal.get("test") or {}
    ka = test.get("krippendorff_alpha")
    if ka:
        out.append(("Krippendorff's alpha (ordinal), test split", ["raters", "alpha"],
                    [["humans only", ka["humans"]], ["humans + the judge as one more rater", ka["humans_plus_judge"]]]))
    if test.get("slices"):
        out.append(("Judge agreement by slice, test split", ["slice", "value", "n", "QWK", "exact", "within one",
                                                              "mean judge grade"],
                    [[dim, k, v["n"], v["qwk"], v["exact"], v["within_one"], v["mean_judge_grade"]]
                     for dim, vals in test["slices"].items() for k, v in vals.items()]))
    sel = cal.get("selection")
    if sel:
        h = sel["heldout"]
        out.append((f"Judge {sel['kind'].replace('_', ' ')} chosen on a development fold ({sel['dev_queries']} "
                     f"queries), measured on a held-out fold ({sel['heldout_queries']} queries): {sel['reason']}",
                    ["candidate", "dev QWK", "chosen", "held-out QWK", "held-out 95% CI"],
                    [[r["variant"], r["dev_qwk"], "yes" if r["chosen"] else "",
                      h["qwk"] if r["chosen"] else None,
                      f"{h['qwk_ci95'][0]:.3f}–{h['qwk_ci95'][1]:.3f}" if r["chosen"] and h.get("qwk_ci95") else ""]
                     for r in sel["candidates"]]))
    probes = cal.get("bias_probes")
    if probes:
        out.append(("Bias probes: share of labels that change", ["probe", "pairs", "flip rate", "up rate",
                                                                  "mean shift"],
                    [[k, v["n"], v["flip_rate"], v["up_rate"], v["mean_shift"]] for k, v in probes.items()]))
    evaluation = summary.get("evaluation") or {}
    ev = evaluation.get("systems") or {}
    if ev:
        rr = evaluation.get("rerank") or {}
        base = evaluation.get("baselines") or []
        title = "Golden test split: NDCG@10 on judged pools" + (
            f" and in the rerank protocol (first-stage top-{rr['depth']}, unjudged = not relevant, "
            f"{rr['judged_share']:.0%} of its pairs judged)" if rr else "") + (
            f"; baselines: {', '.join(base)}; the gate reads {evaluation.get('gate_metric')}" if base else "")
        out.append((title, ["system", "NDCG@10 (judged pools)", "NDCG@10 (rerank top-k)",
                            "judged@10 (rerank)", "condensed NDCG@10 (rerank, unjudged removed)",
                            "vs best baseline (95% CI over test queries)",
                            "non-embedding params", "items/s (CPU)"],
                    [[k + (" (baseline)" if k in base else ""), v["ndcg@10"], v.get("rerank_ndcg@10"),
                      v.get("rerank_judged@10"), v.get("rerank_condensed_ndcg@10"),
                      _gain(v), v.get("n_params"), v.get("items_per_s")]
                     for k, v in ev.items()]))
    rungs = summary.get("rungs") or {}
    val = [[k, v.get("by", "judge"), v.get("queries"), v.get("validation_start"), v.get("validation_best"),
            v.get("best_step"), r.get("train_pairs"), v["kept"],
            f"{v['judge_start']:.4f} → {v['judge_kept']:.4f}" if "judge_kept" in v else "", v.get("note", "")]
           for k, r in rungs.items() if isinstance(r, dict) and (v := r.get("validation"))]
    if val:
        out.append(("Do no harm: each rung's NDCG@10 on its validation fold (queries it never trained on), at its "
                    "starting point and at the state it kept — against the judge's labels (teacher) or its "
                    "parent's ranking (distilled rungs; their judge figure beside it)",
                    ["rung", "against", "validation queries", "start", "kept", "kept at step", "train pairs",
                     "kept state", "judge: start → kept", "note"], val))
    comp = summary.get("compression") or {}
    acc = summary.get("pruning") or {}
    size = size_curve(summary)
    if size:
        stu = (ev.get("student") or {})
        out.append(("Pruning: size versus NDCG@10 (non-embedding parameters) — " + (acc.get("reason") or ""),
                    ["system", "MLP kept", "layers", "non-embedding params", "NDCG@10", "vs student", "items/s",
                     "speed-up vs student"],
                    [[r["system"], r.get("mlp_keep"), r["layers"], r["n_params"], r["ndcg@10"],
                      r["ndcg@10"] / stu["ndcg@10"] if stu else None, r["items_per_s"],
                      (r["items_per_s"] or 0) / stu["items_per_s"] if stu.get("items_per_s") else None]
                     for r in size]))
    if comp.get("length_curve"):
        base = comp["uncompressed"]
        out.append((f"Context compression of {comp['student']}: input length versus NDCG@10 (zero-shot = the "
                    "uncompressed student reading cut documents; compressed_* = distilled)",
                    ["system", "form", "budget", "document tokens", "input tokens", "NDCG@10",
                     "vs uncompressed", "document tokens shorter"],
                    [[r["system"], r["form"], r["budget"], r["doc_tokens"], r["input_tokens"], r["ndcg@10"],
                      r["ndcg@10"] / base["ndcg@10"], base["doc_tokens"] / max(r["doc_tokens"], 1e-9)]
                     for r in comp["length_curve"]]))
        c = comp.get("combined") or {}
        if c.get("system"):
            out.append(("Combined: pruned + compressed + optimised student versus the teacher scored naively "
                        "(one pair per forward pass)", ["system", "items/s", "teacher naive items/s", "speed-up",
                                                        "NDCG@10 vs teacher"],
                        [[c["system"], c["items_per_s"], c["teacher_naive_items_per_s"], c["speedup"],
                          c["ndcg_ratio_to_teacher"]]]))
    return out


def size_curve(summary: dict) -> list[dict]:
    """The ladder's text rungs and every pruned variant: size, NDCG@10 and speed, largest first."""
    ev = (summary.get("evaluation") or {}).get("systems") or {}
    rungs = summary.get("rungs") or {}
    rows = [{"system": k, "mlp_keep": (rungs.get(k) or {}).get("mlp_keep"), **v} for k, v in ev.items()
            if v.get("layers") is not None and k != "engagement_teacher"]
    return sorted(rows, key=lambda r: -r["n_params"])


def curve_figures(summary: dict) -> dict:
    """Matplotlib figures: size versus NDCG@10 across pruning ratios, input length versus NDCG@10."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    size = size_curve(summary)
    if size:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot([r["n_params"] / 1e6 for r in size], [r["ndcg@10"] for r in size], "o-")
        for r in size:
            ax.annotate(r["system"], (r["n_params"] / 1e6, r["ndcg@10"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        ax.set(xlabel="non-embedding parameters (M)", ylabel="NDCG@10 (golden test split)",
               title="Size versus NDCG@10")
        ax.grid(alpha=0.3)
        figs["size_vs_ndcg"] = fig
    curve = (summary.get("compression") or {}).get("length_curve") or []
    if curve:
        fig, ax = plt.subplots(figsize=(6, 4))
        for form, marker in (("none", "s"), ("fields", "o"), ("soft", "^")):
            pts = [r for r in curve if r["form"] == form]
            zs = [r for r in pts if "zero-shot" in r["system"]]
            tr = [r for r in pts if r not in zs]
            if zs:
                ax.plot([r["doc_tokens"] for r in zs], [r["ndcg@10"] for r in zs], marker + "--", alpha=0.6,
                        label=f"{form}, zero-shot")
            if tr:
                ax.plot([r["doc_tokens"] for r in tr], [r["ndcg@10"] for r in tr], marker, ms=9,
                        label=form if form == "none" else f"{form}, distilled")
        ax.set_xscale("log")
        ax.set(xlabel="document tokens read (mean)", ylabel="NDCG@10 (golden test split)",
               title="Input length versus NDCG@10")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        figs["length_vs_ndcg"] = fig
    return figs


def markdown(summary: dict) -> str:
    parts = [f"# Flywheel run {summary['date']}\n"]
    for title, cols, rows in tables(summary):
        parts.append(f"## {title}\n\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
        parts += ["| " + " | ".join(_fmt(c) for c in r) + " |" for r in rows]
        parts.append("")
    if summary.get("notes"):
        parts.append("\n".join(f"- {n}" for n in summary["notes"]))
    return "\n".join(parts)


def write_report(summary: dict, paths: Paths) -> Path:
    body = []
    for title, cols, rows in tables(summary):
        body.append(f"<h2>{html.escape(title)}</h2><table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols)
                    + "</tr>" + "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>"
                                        for r in rows) + "</table>")
    worst = (summary.get("calibration") or {}).get("worst_disagreements") or []
    if worst:
        body.append("<h2>Largest judge–human disagreements (test split)</h2><table><tr><th>query</th><th>dataset</th>"
                    "<th>human</th><th>judge</th><th>rationale</th></tr>" + "".join(
                        f"<tr><td>{html.escape(w['query'])}</td><td>{html.escape(w['title'])}</td>"
                        f"<td>{w['aggregated_grade']:.2f}</td><td>{w['judge_grade']}</td>"
                        f"<td>{html.escape(w['rationale'] or '')}</td></tr>" for w in worst) + "</table>")
    for name, fig in curve_figures(summary).items():
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        body.append(f"<h2>{html.escape(name.replace('_', ' '))}</h2><img alt='{name}' src='data:image/png;base64,"
                    f"{base64.b64encode(buf.getvalue()).decode()}'>")
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in summary.get("notes", []))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Flywheel {summary['date']}</title><style>"
            "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;margin-bottom:1em}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}th{background:#f3f3f3}</style></head>"
            f"<body><h1>Relevance flywheel — daily run {summary['date']}</h1><ul>{notes}</ul>{''.join(body)}</body></html>")
    paths.reports.mkdir(parents=True, exist_ok=True)
    out = paths.reports / f"flywheel-{summary['date']}.html"
    for target in (out, paths.reports / "latest.html"):
        tmp = target.with_name(f".tmp-{uuid.uuid4().hex}")
        tmp.write_text(page)
        os.replace(tmp, target)
    return out


def calibration_text(s: dict) -> str:
    """A plain-text table of a calibration summary, for terminals and benchmarks."""
    lines = [f"judge {s['judge_version']} ({s['backend']}: {s['model']}), policy {s['policy_version']}",
             f"{'who':48s} {'QWK':>6s} {'95% CI':>13s} {'Spearman':>8s} {'exact':>6s} {'±1':>6s} {'n':>5s}"]
    for label, key in (("judge, calibration split" + (" (2-fold CV by query)" if s["backend"] == "offline" else ""),
                        "calibration"), ("judge, test split", "test"),
                       ("BM25 + fitted cut-points, test split", "bm25_baseline_test")):
        m = s.get(key)
        if m:
            lines.append(f"{label:48s} {m['qwk']:6.3f} {m['qwk_ci95'][0]:6.3f}–{m['qwk_ci95'][1]:5.3f} "
                         f"{m['spearman']:8.3f} {m['exact']:6.3f} {m['within_one']:6.3f} {m['n']:5d}")
    for split, h in s["human_ceiling"].items():
        lines.append(f"{'one human vs the other raters, ' + split:48s} {h['loo_qwk']:6.3f} {'':13s} {'':8s} "
                     f"{h['loo_exact']:6.3f} {h['loo_within_one']:6.3f} {h['n_rater_pairs']:5d}")
    cal = s.get("calibration") or {}
    if "unparsed_rate" in cal:
        lines.append(f"replies that did not parse or failed: {cal['unparsed_rate']:.1%}")
    ka = (s.get("test") or {}).get("krippendorff_alpha")
    if ka:
        lines.append(f"Krippendorff's alpha (ordinal, test split): humans {_fmt(ka['humans'])}, "
                     f"humans + judge {_fmt(ka['humans_plus_judge'])}")
    for dim, vals in ((s.get("test") or {}).get("slices") or {}).items():
        lines.append(f"  {dim}: " + "; ".join(
            f"{k} n={v['n']} exact={v['exact']:.2f} ±1={v['within_one']:.2f}"
            + (f" qwk={v['qwk']:.2f}" if v["qwk"] is not None else "") for k, v in vals.items()))
    sel = s.get("selection")
    if sel:
        lines.append(f"{sel['kind'].replace('_', ' ')} chosen on a development fold ({sel['dev_queries']} queries): "
                     + ", ".join(f"{r['variant']} {r['dev_qwk']:.3f}" + (" *" if r["chosen"] else "")
                                 for r in sel["candidates"])
                     + f"; held-out fold ({sel['heldout_queries']} queries): {sel['chosen']} QWK "
                       f"{sel['heldout']['qwk']:.3f} ({sel['reason']})")
    for k, v in (s.get("bias_probes") or {}).items():
        if v["flip_rate"] is not None:
            lines.append(f"bias probe {k}: {v['flip_rate']:.1%} of {v['n']} labels change ({v['up_rate']:.1%} up)")
    lines.append(f"gate (min QWK {s['threshold']}): {'PASSED' if s['gate']['passed'] else 'BLOCKED'} — "
                 f"{s['gate']['reason']}")
    return "\n".join(lines)
