# Two commands: `make demo` and `make test`. Both set up .venv on first use.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check --quiet
STAMP := $(VENV)/.installed

.PHONY: setup browser demo app test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@echo "[make] installing torch (CPU build) first, then hyrax-mlops and its dependencies"
	$(PIP) install torch==2.13.0 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PY) -c "import torch"
	$(PIP) install -e '.[dev]' 2>&1 | { grep -v "is ignored: it is neither" || true; }
	$(PY) -c "import hyrax_mlops, mlflow, chromadb, umap, sep, skimage"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(VENV)/bin/hyrax-mlops pipeline $(if $(CONFIG),-c $(CONFIG))
	@echo "(the commands above run inside the venv: . $(VENV)/bin/activate)"

# Debian's Chromium for the browser tests (Playwright drives it; no browser download).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "[make] installing Debian's chromium for the browser tests"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	  || echo "[make] could not install chromium: the browser tests will be skipped"; }

app: setup
	$(VENV)/bin/hyrax-mlops app

# The example third-party plugins (tests/plugins) are installed for the tests only.
PLUGINS := $(VENV)/.plugins
$(PLUGINS): $(STAMP) tests/plugins/pyproject.toml
	$(PIP) install --no-deps -e tests/plugins 2>&1 | { grep -v "is ignored: it is neither" || true; }
	touch $(PLUGINS)

test: setup browser $(PLUGINS)
	$(PY) -m pytest -q $(PYTEST_ARGS)

# Every benchmark, each beside its plain reference; SIZE=large for the survey-scale rows,
# SIZE=huge for the 10M rows (never in CI).
SIZE ?= small
BENCHES := data train infer index reduce pipeline ray_train app_map download discovery catalog
BENCHES_huge := index reduce app_map catalog  # 10M rows, on request: about 1.5 hours on 2 cores
bench: setup
	@for b in $(or $(BENCHES_$(SIZE)),$(BENCHES)); do echo "[make] benchmark $$b ($(SIZE))"; \
	  $(PY) benchmarks/bench_$$b.py --size $(SIZE) || exit 1; done

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf .hyrax mlruns mlflow.db
