# The README's commands. Each target creates .venv when missing and installs from local disk.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vitmemad-installed
# The CUDA build on local disk (no download); timm needs the matching torchvision.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-all bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet $(TORCH_PIN)
	$(PY) -m pip install --quiet -e '.[all]'
	touch $@

install: $(STAMP)

demo: install  ## train + test on the built-in demo data, print the three metrics
	$(PY) -m vitmemad.train

test: install  ## the default test suite (slow tests excluded)
	$(PY) -m pytest

test-all: install  ## everything, slow tests included
	$(PY) -m pytest -m ''

bench: install  ## benchmarks -> bench/results.json
	$(PY) experiments/bench.py

clean:
	rm -rf outputs multirun bench .pytest_cache
