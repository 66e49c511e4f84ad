# minigen — every command the README names; nothing hidden elsewhere.
#
#   make test        quick mode: execute each notebook once (papermill, build/executed/),
#                    unit tests, nbval re-execution of the executed copies (determinism),
#                    ruff
#   make book        full mode: execute each notebook once at full defaults, record
#                    results/full/, results/RESULTS.md and the README tables, build the site
#   make book-quick  build the site from the notebooks already in build/executed/ (CI)
#   make lab         JupyterLab: a double-click opens a chapter, quick mode (QUICK=0: full)
#   make serve       serve the built site on http://127.0.0.1:8000 (search excerpts need it)
#   make site-test   browser test of the built book (chromium, offline)
#   make lab-test    browser test of JupyterLab as make lab starts it
#   make test-gpu    the GPU smoke test (every loss and sampler on CUDA; skipped without one)
#   make check       judge the full-mode targets on results/full/ (a table; no execution)
#   make tables      rewrite results/RESULTS.md and the README tables from results/full/
#
# Variables: PYTHON (interpreter for the venv, default python3), JOBS (default 2),
# PIN (pip constraints, default -c constraints.txt; PIN= installs unpinned), QUICK (make lab),
# ALLOW_DIRTY=1 (make book from a tree with uncommitted source changes: commit marked -dirty).

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
JOBS ?= 2
PIN ?= -c constraints.txt
QUICK ?= 1
ALLOW_DIRTY ?=
PORT ?= 8000
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.minigen-installed

CHAPTERS := $(sort $(wildcard notebooks/[0-9][0-9]_*.py))
EXECUTED := $(patsubst notebooks/%.py,build/executed/%.ipynb,$(CHAPTERS))

# One BLAS/torch thread per notebook, as in `reproduce`: same seed, same threads, same numbers.
NB_ENV := MINIGEN_QUICK=1 TQDM_DISABLE=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
	OPENBLAS_NUM_THREADS=1 PYDEVD_DISABLE_FILE_VALIDATION=1 \
	MINIGEN_RESULTS_DIR=$(CURDIR)/build/nbval-results
NBVAL_FLAGS := --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
	-n $(JOBS) --dist loadfile

BOOK_BUILD := TQDM_DISABLE=1 $(VENV)/bin/jupyter-book build --all -W -n --keep-going book/
MATHJAX_VERSION := 3.2.2
MATHJAX := book/_vendor/mathjax/tex-mml-chtml.js
NPM_PREFIX := build/npm

.PHONY: help venv classifier test unit nbval lint book book-quick book-html site-test \
	check tables mathjax clean test-gpu lab lab-test serve

help:
	@sed -n '3,20p' Makefile | sed 's/^# \{0,1\}//'

# ------------------------------------------------------------------ environment
# Reinstalls when pyproject.toml or constraints.txt change (the lock: every dependency pinned).
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIN) -e ".[dev]"
	$(PY) -m ipykernel install --sys-prefix --name minigen --display-name "Python (minigen)"
	touch $@

venv: $(STAMP)

# ------------------------------------------------------------------ tests
test: venv classifier
	$(PY) -m minigen.workbook.reproduce --quick --jobs $(JOBS)
	$(MAKE) --no-print-directory unit nbval lint

unit: venv
	$(PY) -m pytest tests

# Every loss and sampler for a few steps on CUDA (skips, and says so, without a CUDA device).
test-gpu: venv
	$(PY) -m pytest -m gpu tests/test_gpu.py -rs

# Determinism: re-execute the executed quick notebooks and compare their text outputs.
nbval: venv
	@test -n "$(EXECUTED)" || { echo "no chapters under notebooks/"; exit 1; }
	$(NB_ENV) $(PY) -m pytest $(EXECUTED) $(NBVAL_FLAGS)

lint: venv
	$(PY) -m ruff check .

# The image chapters' FD classifier is trained once (about 20 s) and cached in build/cache/
# before the notebooks run, so parallel notebooks share it instead of each training it.
classifier: venv
	OMP_NUM_THREADS=1 $(PY) -c "from minigen.eval.fd import load_classifier; load_classifier()"

# ------------------------------------------------------------------ book
book: venv mathjax classifier
	$(PY) -m minigen.workbook.reproduce --full --record --jobs $(JOBS) $(if $(ALLOW_DIRTY),--allow-dirty)
	$(MAKE) --no-print-directory book-html

book-quick: venv mathjax
	@test -n "$$(ls build/executed/*.ipynb 2>/dev/null)" || \
		{ echo "build/executed/ is empty: run 'make test' first"; exit 1; }
	$(MAKE) --no-print-directory book-html

# Renders build/executed/ (book/notebooks is a symlink to it) without executing; any
# warning fails, including book/_ext/offline_site.py's "loads ... from the network".
book-html: mathjax
	$(BOOK_BUILD)

# MathJax 3 served from the site: the npm package's es5 build, copied into book/_static/.
mathjax: $(MATHJAX)

$(MATHJAX):
	npm install --prefix $(NPM_PREFIX) --no-save --no-package-lock --no-audit --no-fund \
		mathjax@$(MATHJAX_VERSION)
	rm -rf book/_vendor/mathjax && mkdir -p book/_vendor/mathjax
	cd $(NPM_PREFIX)/node_modules/mathjax && cp LICENSE $(CURDIR)/book/_vendor/mathjax/ && \
		cd es5 && cp -r tex-mml-chtml.js input output a11y ui adaptors sre \
		$(CURDIR)/book/_vendor/mathjax/

site-test: venv
	$(PY) -m pytest -m site tests/site

# Sphinx's search fetches page excerpts with XHR, which browsers refuse over file://.
serve:
	@test -f book/_build/html/index.html || { echo "no site: run 'make book' or 'make book-quick'"; exit 1; }
	$(PY) -m http.server $(PORT) --bind 127.0.0.1 --directory book/_build/html

# ------------------------------------------------------------------ JupyterLab
lab: venv
	$(PY) -m minigen.workbook.lab $(if $(filter 0,$(QUICK)),--full)

lab-test: venv
	$(PY) -m pytest -m lab tests/lab

# ------------------------------------------------------------------ results
check: venv
	$(PY) -m minigen.workbook.reproduce --full --check --no-run

tables: venv
	$(PY) -m minigen.workbook.reproduce --full --record --no-run

clean:
	rm -rf build book/_build .pytest_cache
