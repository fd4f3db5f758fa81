# Two commands do all the set-up: `make demo` and `make test`. Both create .venv from requirements.lock when it
# is missing or older than the lock / pyproject.toml, and are no-ops for the environment otherwise.
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed
PY := $(VENV)/bin/python
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: demo test test-fast lock serve ui-prefect ui-mlflow clean-home help judge-gate-llm system-deps

help:
	@echo "make demo   - run the whole daily flywheel offline on the bundled data (about 14 min cold, under a minute warm)"
	@echo "make test   - run the whole test suite (installs Debian's postgresql, chromium, chromium-driver first when missing)"
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

test: $(STAMP) system-deps
	$(PY) -m pytest --durations=25

# Debian packages the tests need, installed only when missing: postgresql (tests/stack: a real PostgreSQL server),
# chromium + chromium-driver (the policy workbench's browser tests; selenium is given /usr/bin/chromedriver so
# Selenium Manager never tries to download a driver). One apt-get update, one apt-get install of what is missing.
# The postgresql package would create and start a cluster of its own on port 5432: the test makes throwaway ones instead.
system-deps:
	@missing=""; \
	if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then missing="postgresql"; fi; \
	if [ ! -x /usr/bin/chromium ]; then missing="$$missing chromium"; fi; \
	if [ ! -x /usr/bin/chromedriver ]; then missing="$$missing chromium-driver"; fi; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's$$missing (postgresql: tests/stack; chromium, chromium-driver: workbench browser tests)"; \
	    case " $$missing " in *" postgresql "*) \
	      mkdir -p /etc/postgresql-common && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf;; \
	    esac; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (postgresql: tests/stack; chromium, chromium-driver: workbench browser tests); install them as root"; \
	  fi; \
	fi

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
