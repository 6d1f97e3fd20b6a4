# rmpm: two commands do everything (see README.md)
#   make book [PROFILE=smoke|default|paper]   set up, execute every notebook, build the HTML book
#   make test                                  set up, run the tests
#   make test-fast                             the tests that need no trained model (~2 min)
#   make lab                                   JupyterLab on notebooks/ (kernel "Python (rmpm)", MyST rendered)
#   make check-browser                         the built book and JupyterLab, checked in chromium
#   make manifest [PROFILE=default|large]      commit-ready manifests/PROFILE.json of the last such build
PROFILE ?= default
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pins: the versions the project is tested with.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup data book test test-fast lab check-browser bench manifest clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install $(TORCH_PINS)
	$(PY) -m pip install -e '.[book,dev]'
	$(PY) -m ipykernel install --sys-prefix --name rmpm --display-name "Python (rmpm)"
	touch $@

setup: $(VENV)/.installed data

# Fashion-MNIST: Debian's dataset-fashion-mnist when it can be installed (offline
# afterwards), else torchvision's download into rmpm's data folder.
data: $(VENV)/.installed
	@if [ ! -f /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz ] && [ "$$(id -u)" = 0 ] \
	   && command -v apt-get >/dev/null; then \
	  apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist) || true; \
	fi
	$(PY) -m rmpm data fashion_mnist

book: setup
	$(PY) -m rmpm book --profile $(PROFILE)

test: setup
	$(PY) -m pytest

# The edit-test loop: every test that needs no trained model and runs no notebook; a test
# that trains without being marked so fails here (tests/conftest.py). make test runs all.
test-fast: setup
	RMPM_TEST_FAST=1 $(PY) -m pytest -q -m "not trains and not notebook and not cluster and not slow and not browser"

# Extra options for JupyterLab, e.g. LAB_ARGS="--ip=0.0.0.0 --port=8888" to reach it
# from outside a container. As root (a container, CI) it needs --allow-root.
LAB_ARGS ?=
lab: setup
	@echo "[rmpm lab] open the http://127.0.0.1:...?token=... address printed below in a browser"
	@echo "[rmpm lab] (from another machine: ssh -L 8888:localhost:8888, or LAB_ARGS=--ip=0.0.0.0);"
	@echo "[rmpm lab] pick the kernel \"Python (rmpm)\". Stop it with Ctrl-C."
	$(VENV)/bin/jupyter lab notebooks/ $$([ "$$(id -u)" = 0 ] && echo --allow-root) $(LAB_ARGS)

# The book as a reader meets it, every chapter as JupyterLab (with jupyterlab-myst)
# shows it, and chapters run there, in Debian's chromium driven by Playwright (no
# browser download): installs chromium (as root, apt-get) and Playwright if missing,
# builds the smoke book if there is none, then runs the tests marked "browser"
# (tests/book/test_browser.py). Screenshots go to _build/screens/.
CHROMIUM ?= /usr/bin/chromium
check-browser: setup
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y chromium || (apt-get update && apt-get install -y chromium); \
	  else echo "make check-browser needs Debian's chromium at $(CHROMIUM): apt-get install chromium (as root)"; exit 1; fi; \
	fi
	$(PY) -c "import playwright.sync_api" 2>/dev/null || $(PY) -m pip install -e '.[browser]'
	test -f _build/html/index.html || $(PY) -m rmpm book --profile smoke
	RMPM_BROWSER_REQUIRED=1 RMPM_CHROMIUM=$(CHROMIUM) RMPM_SCREENSHOTS=_build/screens \
	  $(PY) -m pytest -m browser -v -p no:cacheprovider tests/book/test_browser.py
	RMPM_BOOK_REQUIRED=1 $(PY) -m pytest -v -p no:cacheprovider tests/book/test_book_provenance.py \
	  -k test_the_built_book_carries_provenance_that_matches_its_manifest

# The manifest CI verifies its rebuild of the default book against (.ci/run), and the
# weekly workflow its rebuild of large (make manifest PROFILE=large): after an intended
# change of numbers, rebuild that book and commit the new manifest in the same commit as
# the change.
manifest:
	@test -f book/_generated/manifest.json || { echo "no book built: make book PROFILE=$(PROFILE) first"; exit 1; }
	@$(PY) -c "import json,sys; m=json.load(open('book/_generated/manifest.json')); p=m['environment'].get('profile'); sys.exit(0 if p == '$(PROFILE)' else 'the last build is profile ' + repr(p) + ', not $(PROFILE): make book PROFILE=$(PROFILE) first')"
	mkdir -p manifests && cp book/_generated/manifest.json manifests/$(PROFILE).json
	@echo "manifests/$(PROFILE).json updated: commit it with the change that moved the numbers"

bench: setup
	$(PY) benchmarks/bench_similarity.py
	$(PY) benchmarks/bench_training.py

clean:
	rm -rf _build book/_executed book/_generated
