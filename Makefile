# rmpm: two commands do everything (see README.md)
#   make book [PROFILE=smoke|default|paper]   set up, execute every notebook, build the HTML book
#   make test                                  set up, run the tests
PROFILE ?= default
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision pins: the versions the project is tested with.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: setup data book test lab bench clean

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

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(PY) benchmarks/bench_similarity.py
	$(PY) benchmarks/bench_training.py

clean:
	rm -rf _build book/_executed book/_generated
