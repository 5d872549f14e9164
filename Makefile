# Two set-up-free entry points: `make run` (the main job) and `make test` (the quick tier:
# unit tests and small reference comparisons, under 5 minutes on 2 cores). `make test-slow`
# runs the rest (real-data integration, torchrun, AOT kernel compiles, subprocess CLI runs,
# long compiles), `make test-all` both. The first use creates .venv with the pinned torch for
# this machine and installs fastdm.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
OUT ?= runs/digits

.PHONY: run test test-slow test-all venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip
	$(PY) -m pip install -qq $(TORCH_PINS)
	$(PY) -m pip install -qq -e '.[dev]'
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

clean:
	rm -rf $(VENV) runs .pytest_cache
