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
    from flywheel.config import load_config
    from flywheel.data.golden import seed_golden
    from flywheel.data.lake import open_lake as lake
    from flywheel.judge.calibrate import calibrate

    cfg = load_config(a.config)
    seed_golden(cfg.resolve(cfg.golden), lake(paths))
    s = calibrate(cfg, paths)
    from flywheel.evaluation.report import calibration_text

    print(calibration_text(s))


if __name__ == "__main__":
    main()
