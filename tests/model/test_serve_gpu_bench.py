"""bench/serve_gpu.sh is meant for a lent GPU; its CPU smoke mode runs the same code end to end (a registered
decoder with compressed documents, the service as a real process, concurrent clients) so a broken script is
caught here — and it proves that concurrent requests are scored in shared batches."""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path


def test_serve_gpu_bench_smoke_run_serves_every_request_in_shared_batches():
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(["bash", "bench/serve_gpu.sh", "--smoke-cpu", "--seconds", "2"], cwd=root,
                          capture_output=True, text=True, timeout=600, env=os.environ | {"PYTHON": sys.executable})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    levels = re.findall(r"(\d+) clients:\s+([\d,]+) items/s .* mean batch\s+(\d+)\s+answers (\{.*\})", proc.stdout)
    assert [int(c) for c, *_ in levels] == [2, 4], proc.stdout
    for clients, ips, batch, answers in levels:
        assert set(ast.literal_eval(answers)) == {200} and float(ips.replace(",", "")) > 0       # every answer a 200
    assert int(levels[-1][2]) > 50              # 4 clients × 50 documents: requests were scored together
    assert "HEADLINE CPU (smoke run)" in proc.stdout
