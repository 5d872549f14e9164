# Two set-up-free entry points: `make run` (the main job) and `make test` (the quick tier:
# unit tests and small reference comparisons, under 5 minutes on 2 cores). `make test-slow`
# runs the rest (real-data integration, torchrun, AOT kernel compiles, subprocess CLI runs,
# long compiles), `make test-all` both. The first use creates .venv with the pinned torch for
# this machine and installs fastdm, building its native kernels with CMake against that torch
# (--no-build-isolation: the build must see the installed torch). `make wheel` builds
# dist/fastdm-*.whl the same way.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
OUT ?= runs/digits

.PHONY: run test test-slow test-all venv wheel pins clean

# cmake from pip only where the machine has none
$(VENV)/.installed: pyproject.toml CMakeLists.txt $(wildcard kernels/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq $(TORCH_PINS) scikit-build-core $$(command -v cmake >/dev/null 2>&1 || echo cmake)
	$(PY) -m pip install -qq --no-build-isolation -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Condense the embedded digits dataset, then evaluate it against random real subsets.
run: $(VENV)/.installed
	$(VENV)/bin/fastdm condense --dataset digits --out $(OUT) --overwrite
	$(VENV)/bin/fastdm evaluate $(OUT)/synset.pt --compare-random

test: $(VENV)/.installed
	$(PY) -m pytest -q -m "not slow"

test-slow: $(VENV)/.installed
	$(PY) -m pytest -q -m slow

test-all: $(VENV)/.installed
	$(PY) -m pytest -q

wheel: $(VENV)/.installed
	$(PY) -m pip wheel -q --no-build-isolation --no-deps -w dist .

pins:
	@echo $(TORCH_PINS)

clean:
	rm -rf $(VENV) runs build dist .pytest_cache
