# cpDistiller: two commands do all set-up on a fresh machine.
#   make demo   creates .venv, installs, starts the dashboard on the built-in demo screen
#   make test   same venv plus test tools, runs the test suite
# Both are idempotent: a second run only re-installs when a requirements file changed.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# Extra pip arguments, e.g. PIP_EXTRA="--index-url https://download.pytorch.org/whl/cu124" (see README).
PIP_EXTRA ?=
PORT   ?= 8501

.PHONY: demo test lint bench install dev clean

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
	$(VENV)/bin/streamlit run app.py --server.port $(PORT) --server.headless true --browser.gatherUsageStats false -- --demo

test: $(VENV)/.dev
	$(PY) -m pytest -q

lint: $(VENV)/.dev
	$(VENV)/bin/ruff check .

bench: $(VENV)/.runtime
	$(PY) benchmarks/bench_correct.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
