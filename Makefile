# All set-up on a fresh Debian machine (root): apt data package, .venv, pinned install.
SHELL := /bin/bash
PY := .venv/bin/python
FMNIST := /usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz
STAMP := .venv/.installed
COMPILED := .venv/.compiled
# Another apt-get (a second checkout's set-up, unattended upgrades) holds dpkg's lock: wait for it.
# `apt-get update` takes the package lists' lock, which that option does not wait for, so two
# checkouts' set-ups also take turns on a lock of their own (two fresh `make test` side by side
# failed there).
APT := -o DPkg::Lock::Timeout=600
APT_TURN := flock --wait 1200 /tmp/vit-jax-apt.lock sh -c

.PHONY: setup demo test lock bazel-setup bazel-test bench
setup: $(FMNIST) $(STAMP) $(COMPILED)

$(FMNIST):
	$(APT_TURN) 'apt-get $(APT) update && apt-get $(APT) install -y dataset-fashion-mnist'

# Byte-compiled once here, in parallel: pip compiles one file at a time (a fresh clone's `make
# setup` took 127 s with it, 60 s with --no-compile), and Python cannot be counted on to keep what
# it compiles on import: with PYTHONDONTWRITEBYTECODE set (as on these machines and in many
# containers) no .pyc is ever written, and every process compiled jax, flax, orbax and grain
# again: `python -m mpp.train --help` took 4.0 CPU-s without them, 1.7 with (the test suite starts
# hundreds of such processes). compileall -j 0 uses every core (67 CPU-s, 55 s on 2 loaded cores).
# Its status is not checked: a .pyc is only a cache, and one package file written for a later
# Python (torch/testing/_internal/py312_intrinsics.py) does not compile; Python names such a
# module's error if it is ever imported. A stamp of its own, so that a venv set up before this
# step gets it at its next `make`.
SITE_PACKAGES = $$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
$(STAMP): requirements.lock
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -r requirements.lock
	touch $@

$(COMPILED): $(STAMP)
	$(PY) -m compileall -qq -j 0 $(SITE_PACKAGES) || true
	touch $@

demo: setup
	$(PY) -m study.run --config configs/study/demo.py --workdir runs/demo

# timm (--no-deps, see `bench`) is a peer the tests compare our timm reader and writer with.
# pytest-xdist runs the test files in two processes, a file's tests in one of them (its module
# fixtures, such as a trained run many tests read, are made once); each process has its own XLA
# cache (tests/conftest.py). Each process peaks at about 3.6 GB (measured at 63fe46c): on a
# machine with under 8 GB, `make test TEST_PROCESSES=1` runs one (slower).
TEST_PROCESSES ?= 2
test: setup bazel-setup
	$(PY) -m pip install -q --no-deps -r requirements-bench.txt
	$(PY) -m ruff check .
	$(PY) -m pytest -q --durations=20 -n $(TEST_PROCESSES) --dist loadfile tests
	$(MAKE) --no-print-directory bazel-test

# Re-resolve the pins after editing requirements.txt.
lock:
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip freeze | sed 's/^torch==\(.*\)+cpu/torch==\1/' | grep -v '^timm==' > requirements.lock

# Bazel 4.2.3 from Debian, offline (docs/guides/bazel.md). Installs the packages only when missing;
# the --override_repository paths must be absolute, so they are written here for this checkout.
BAZEL_DEBS := bazel-bootstrap bazel-platforms bazel-skylib bazel-rules-java
bazel-setup:
	dpkg -s $(BAZEL_DEBS) >/dev/null 2>&1 || \
	  $(APT_TURN) 'apt-get $(APT) update && apt-get $(APT) install -y --no-install-recommends $(BAZEL_DEBS)'
	@for c in build query fetch; do \
	  echo "$$c --override_repository=platforms=/usr/share/bazel/tools/platforms"; \
	  echo "$$c --override_repository=rules_java=/usr/share/bazel/rules/java"; \
	  echo "$$c --override_repository=bazel_skylib=/usr/share/bazel/tools/skylib"; \
	  echo "$$c --override_repository=rules_cc=$(CURDIR)/third_party/bazel/rules_cc"; \
	  echo "$$c --override_repository=remote_coverage_tools=$(CURDIR)/third_party/bazel/remote_coverage_tools"; \
	done > .bazelrc.local

# Builds every target, runs one test file and two MPP steps through Bazel, then stops the
# Bazel server so it does not hold memory on a small machine. The file is the checkpoint layouts'
# (14 s through Bazel in a fresh clone): it reads testdata/ through Bazel's runfiles and runs the
# model, so it checks what the BUILD files must declare; pytest has already run every file (the
# model tests' 101 s were spent twice).
BAZEL_TESTS := //tests:test_formats_vit_jax
bazel-test: setup bazel-setup
	status=0; workdir=$$(mktemp -d); \
	bazel build //... && bazel test $(BAZEL_TESTS) && \
	  JAX_PLATFORMS=cpu bazel run //mpp:train -- --config=configs/mpp/fashion_mnist.py \
	    --workdir=$$workdir --config.total_steps=2 --config.batch_size=16 \
	    --config.log_every=1 --config.mpp.eval_examples=16 || status=$$?; \
	bazel shutdown; rm -rf $$workdir; exit $$status

# Our train step vs timm and transformers (docs/guides/performance.md, docs/performance.md).
# timm stays out of requirements.lock (see `lock`): installed with deps it pulls a CUDA torch.
BENCH_ARGS ?=
bench: setup
	$(PY) -m pip install -q --no-deps -r requirements-bench.txt
	$(PY) -m benchmarks.train_step --json runs/bench/train_step.json $(BENCH_ARGS)
