"""Wall time of the daily flywheel, cold (fresh FLYWHEEL_HOME) then warm (same home, nothing changed).

    python bench/demo_wall_time.py [--config configs/demo.yaml] [--home /tmp/fw-bench]

Prints one line per run and the per-stage seconds of each. The environment set-up (`make` creating .venv) is
not included: time `make demo` on a fresh clone for that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(config: str, home: str, date: str) -> tuple[float, list]:
    env = os.environ | {"FLYWHEEL_HOME": home}
    code = (f"import json; from flows.daily import daily_flywheel; from flywheel.config import load_config; "
            f"s = daily_flywheel(load_config({config!r}), {date!r}); print('STAGES=' + json.dumps(s['stages']))")
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(out.stderr[-3000:])
    stages = json.loads(next(l for l in out.stdout.splitlines() if l.startswith("STAGES="))[7:])
    return wall, stages


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--home", default="/tmp/flywheel-bench-home")
    ap.add_argument("--date", default="2026-01-01")
    ap.add_argument("--keep-models", action="store_true",
                    help="keep the converted Gemma checkpoint between cold runs (it is otherwise rebuilt)")
    a = ap.parse_args()
    gemma = Path(a.home) / "models" / "gemma3-270m-hf"
    if a.keep_models and gemma.exists():
        shutil.move(gemma, "/tmp/.gemma-keep")
    shutil.rmtree(a.home, ignore_errors=True)
    if a.keep_models and Path("/tmp/.gemma-keep").exists():
        (Path(a.home) / "models").mkdir(parents=True)
        shutil.move("/tmp/.gemma-keep", gemma)
    for label in ("cold", "warm"):
        wall, stages = run(a.config, a.home, a.date)
        print(f"{label}: {wall:.1f} s  (" + ", ".join(f"{s['stage']} {s['seconds']:.1f}" for s in stages) + ")")


if __name__ == "__main__":
    main()
