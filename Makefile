# All set-up on a fresh Debian machine (root): apt data package, .venv, pinned install.
SHELL := /bin/bash
PY := .venv/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
STAMP := .venv/.installed

.PHONY: setup demo test lock
setup: $(FMNIST) $(STAMP)

$(FMNIST):
	apt-get update && apt-get install -y dataset-fashion-mnist

$(STAMP): requirements.lock
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	touch $@

demo: setup
	$(PY) -m supervised.train --config configs/supervised/fashion_mnist.py --workdir runs/demo

test: setup
	$(PY) -m pytest -q tests

# Re-resolve the pins after editing requirements.txt.
lock:
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip freeze | sed 's/^torch==\(.*\)+cpu/torch==\1/' > requirements.lock
