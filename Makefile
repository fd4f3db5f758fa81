# Two commands do all the set-up: `make demo` and `make test`. Both create .venv from requirements.lock when it
# is missing or older than the lock / pyproject.toml, and are no-ops for the environment otherwise.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast lock serve ui-prefect ui-mlflow clean-home help judge-gate-llm

help:
	@echo "make demo   - run the whole daily flywheel offline on the bundled data (about 14 min cold, under a minute warm)"
	@echo "make test   - run the whole test suite"
	@echo "make serve  - serve models:/flywheel-ranker@champion on 127.0.0.1:8765"
	@echo "make judge-gate-llm - calibrate SmolLM2-135M behind llama.cpp's OpenAI server; the gate blocks it"
	@echo "make ui-mlflow / ui-prefect - open the MLflow / Prefect UIs on the flywheel home"

$(STAMP): requirements.lock pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m flows.daily --config configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest

test-fast: $(STAMP)
	$(PY) -m pytest -m "not slow"

# The calibration gate refusing a real small LLM served by llama.cpp (builds llama-cpp-python: ~6 min once).
judge-gate-llm: $(STAMP)
	mkdir -p .flywheel && bash bench/judge_gate_llm.sh

serve: $(STAMP)
	$(VENV)/bin/flywheel serve

ui-mlflow: $(STAMP)
	$(VENV)/bin/flywheel ui mlflow

ui-prefect: $(STAMP)
	$(VENV)/bin/flywheel ui prefect

# Re-resolve the pins of pyproject.toml into a fresh lock (needs the package index).
lock:
	rm -rf /tmp/flywheel-lock && $(PYTHON) -m venv /tmp/flywheel-lock
	/tmp/flywheel-lock/bin/pip install -q -e '.[test]'
	( echo "# Full lock of the environment (pip freeze of a resolve of pyproject.toml on CPython 3.11, x86_64)."; \
	  echo "# Regenerate: make lock"; \
	  /tmp/flywheel-lock/bin/pip freeze --exclude-editable | sed 's/+cpu$$//' ) > requirements.lock

clean-home:
	rm -rf .flywheel
