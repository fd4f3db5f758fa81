#!/usr/bin/env bash
# The scoring service on one GPU: a Qwen3-0.6B-shaped decoder ranker (random weights) served in bfloat16, documents
# compressed to <= 32 tokens, driven over loopback by concurrent clients; prints items/s per GPU at p99 <= 100 ms
# per request of 50 documents. Needs this repository's environment (make .venv/.installed, or PYTHON=...).
# Usage: bash bench/serve_gpu.sh [--p99-ms 100] [--seconds 15] | --smoke-cpu. Stops itself after 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
exec timeout --kill-after=10 300 "$PY" bench/serve_gpu.py "$@"
