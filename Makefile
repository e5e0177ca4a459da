# cpDistiller: two commands do all set-up on a fresh machine.
#   make demo   creates .venv, installs, starts the dashboard on the built-in demo screen
#   make test   same venv plus test tools, runs the test suite
#   make serve  serve the dashboard to other machines: refuses to start without authentication
#               (CPDISTILLER_PASSWORD, or .streamlit/secrets.toml); see docs/deployment.md
# Both are idempotent: a second run only re-installs when a requirements file changed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# Extra pip arguments, e.g. PIP_EXTRA="--index-url https://download.pytorch.org/whl/cu124" (see README).
PIP_EXTRA ?=
PORT   ?= 8501
# `make demo` listens on this machine only; `make serve` on ADDRESS (every interface by default).
ADDRESS ?= 0.0.0.0

.PHONY: demo serve test lint bench install dev clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: requirements.txt pyproject.toml | $(PY)
	$(PIP) install -q $(PIP_EXTRA) -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt
	$(PIP) install -q $(PIP_EXTRA) -r requirements-dev.txt
	touch $@

install: $(VENV)/.runtime

dev: $(VENV)/.dev

demo: $(VENV)/.runtime
	$(VENV)/bin/streamlit run app.py --server.address 127.0.0.1 --server.port $(PORT) --server.headless true --browser.gatherUsageStats false -- --demo

serve: $(VENV)/.runtime
	$(PY) -m cpdistiller_core.access --address $(ADDRESS) --port $(PORT)

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

bench: $(VENV)/.runtime
	$(PY) benchmarks/bench_correct.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
