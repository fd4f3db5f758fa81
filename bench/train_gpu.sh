#!/usr/bin/env bash
# GPU training check: Qwen3-0.6B- and Qwen3-1.7B-shaped decoder rankers (random weights from their configs) trained
# by the project's loop (fp32 master weights, bf16 autocast) at sequence length 512 and with documents compressed to
# 32 tokens; prints tokens/s, samples/s, peak memory and MFU against the GPU's bf16 dense peak, then items/s of the
# sharded teacher scorer on 50k pairs with the 0.6B shape. Self-contained: needs python3 with torch, transformers,
# pandas and pyarrow (the lent GPU image has them) and this repository; no network, no model hub.
# Usage: bash bench/train_gpu.sh [--steps 10] [--micro-batch 16 8] [--peak-tflops 989] [--smoke-cpu]
# Stops itself after 5 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
exec timeout 300 "${PYTHON:-python3}" bench/train_gpu.py "$@"
