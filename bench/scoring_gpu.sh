#!/usr/bin/env bash
# GPU scoring check: a Qwen3-0.6B-shaped decoder ranker (random weights) in bfloat16 scoring documents compressed
# to <= 32 tokens; prints items/s per GPU at a fixed p50 batch latency. Self-contained: needs python3 with torch,
# transformers, pandas and pyarrow (the lent GPU image has them) and this repository; no network, no model hub.
# Usage: bash bench/scoring_gpu.sh [--latency-ms 50] [--queries 8]. Stops itself after 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout 300 "${PYTHON:-python3}" bench/scoring_gpu.py "$@"
