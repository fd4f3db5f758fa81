"""bench/train_gpu.sh is meant for a lent GPU; its CPU smoke mode runs the same code (train_ranker, the model-step
loop, the MFU arithmetic, saving the teacher and scoring through score_missing) on tiny Qwen3 shapes, so a broken
script is caught here rather than on the GPU's clock."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ROW = re.compile(r"^(qwen3-\w+) +(seq (\d+)|docs (\d+) tok) +(train_ranker|model step) +(\d+)x(\d+) +(on|off) +"
                 r"([\d.]+) +([\d.]+) +([\d,]+) +([\d.]+) +([\d.]+)% +([\d.]+)%$", re.M)


def test_train_bench_smoke_prints_consistent_positive_figures_and_scores_every_pair():
    proc = subprocess.run([sys.executable, "bench/train_gpu.py", "--smoke-cpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert out.startswith("device: cpu smoke; MFU against"), out
    rows = ROW.findall(out)
    # two rungs x (full length, compressed documents) x (end to end, model step only)
    assert [(r[0], r[1], r[4]) for r in rows] == [
        (rung, inp, what) for rung in ("qwen3-tiny", "qwen3-mini") for inp in ("seq 128", "docs 32 tok")
        for what in ("train_ranker", "model step")], out
    for (_, _, seq, doc, _, micro, acc, _, per_sample, sps, tps, mem, mfu, mfu_6n) in rows:
        per_sample, sps, tps = float(per_sample), float(sps), float(tps.replace(",", ""))
        assert int(micro) * int(acc) in (16, 32)
        assert min(per_sample, sps, tps, float(mem), float(mfu)) > 0
        assert float(mfu) >= float(mfu_6n) > 0          # the attention term only adds
        if seq:
            assert per_sample == float(seq)                 # the documents fill max_length
        else:
            assert int(doc) < per_sample < 128              # prefix + at most 32 document tokens + cue
        # tokens/s = samples/s x tokens a sample, up to the printed rounding
        assert (sps - 0.05) * (per_sample - 0.05) - 0.5 <= tps <= (sps + 0.05) * (per_sample + 0.05) + 0.5
    m = re.search(r"teacher scoring \(flywheel\.training\.scoring\.score_missing, world 1, bfloat16, documents "
                  r"compressed to 32 tokens\): qwen3-tiny, (\d+) items \(20 queries x 10\) in [\d.]+ s: ([\d,]+) "
                  r"items/s end to end", out)
    assert m, out
    assert int(m[1]) == 200 and float(m[2].replace(",", "")) > 0


def test_train_bench_script_shows_its_flags():
    proc = subprocess.run(["bash", "bench/train_gpu.sh", "--help"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env=os.environ | {"PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stderr
    for flag in ("--smoke-cpu", "--micro-batch", "--gradient-checkpointing", "--peak-tflops", "--score-pairs"):
        assert flag in proc.stdout
