"""The judge's agreement with the human golden labels, beside the human ceiling and a BM25 baseline.

    python bench/judge_agreement.py [--config configs/demo.yaml]

Uses (and fills) the feature cache under FLYWHEEL_HOME, so a second run takes seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from flywheel.settings import configure_environment  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    a = ap.parse_args()
    paths = configure_environment()
    from flywheel.calibrate import calibrate
    from flywheel.config import load_config
    from flywheel.context import lake
    from flywheel.ingest import seed_golden

    cfg = load_config(a.config)
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    s = calibrate(cfg, paths)
    print(f"judge {s['judge_version']} ({s['model']}), policy {s['policy_version']}")
    print(f"{'who':48s} {'QWK':>6s} {'95% CI':>13s} {'Spearman':>8s} {'exact':>6s} {'±1':>6s} {'n':>5s}")
    for label, key in (("judge, calibration split (2-fold CV by query)", "calibration"),
                       ("judge, test split", "test"), ("BM25 + fitted cut-points, test split", "bm25_baseline_test")):
        m = s[key]
        print(f"{label:48s} {m['qwk']:6.3f} {m['qwk_ci95'][0]:6.3f}–{m['qwk_ci95'][1]:5.3f} {m['spearman']:8.3f} "
              f"{m['exact']:6.3f} {m['within_one']:6.3f} {m['n']:5d}")
    for split, h in s["human_ceiling"].items():
        print(f"{'one human vs the other raters, ' + split:48s} {h['loo_qwk']:6.3f} {'':13s} {'':8s} "
              f"{h['loo_exact']:6.3f} {h['loo_within_one']:6.3f} {h['n_rater_pairs']:5d}")
    ka = s["test"]["krippendorff_alpha"]
    print(f"Krippendorff's alpha (ordinal, test split): humans {ka['humans']:.3f}, "
          f"humans + judge {ka['humans_plus_judge']:.3f}")
    for dim, vals in s["test"]["slices"].items():
        print(f"  {dim}: " + "; ".join(f"{k} n={v['n']} exact={v['exact']:.2f} ±1={v['within_one']:.2f}"
                                        + (f" qwk={v['qwk']:.2f}" if v["qwk"] is not None else "")
                                        for k, v in vals.items()))
    print(f"gate (min QWK {s['threshold']}): {s['gate']['reason']}")


if __name__ == "__main__":
    main()
