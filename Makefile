# The README's commands. Each target creates .venv when missing and installs from local disk.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vitmemad-installed
# The CUDA build on local disk (no download); timm needs the matching torchvision.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-all bench real-ablation real-results clean

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
	$(PY) -m vitmemad.bench

# The ablation table on a real category: experiment=cpu_real, Base / +M / +CA / +M+CA and the CAE, 3 seeds each,
# then report.py; docs/results.md. Many hours of CPU (15 runs of up to 30 min each). Re-runnable: the same command
# skips finished jobs and resumes interrupted ones (ckpt_path=auto), so stop it and start it again at will.
MVTEC_ROOT ?= ../shared/data/mvtec
CATEGORY ?= bottle
REAL_OUT ?= outputs/real/$(CATEGORY)
REAL_ARGS = experiment=cpu_real data=mvtec data.root=$(MVTEC_ROOT) data.category=$(CATEGORY) seed=0,1,2 ckpt_path=auto
real-ablation: install
	$(PY) -m vitmemad.train -m $(REAL_ARGS) ablation=base,m,ca,m_ca hydra.sweep.dir=$(REAL_OUT)/vitmemad
	$(PY) -m vitmemad.train -m $(REAL_ARGS) model=cae hydra.sweep.dir=$(REAL_OUT)/cae
	$(PY) -m vitmemad.train -m $(REAL_ARGS) model=mean_image hydra.sweep.dir=$(REAL_OUT)/mean_image
	$(PY) experiments/report.py $(REAL_OUT)

# Keep what the ablation measured: every finished run's metrics.json under $(REAL_OUT), copied into the repository's
# results/real/$(CATEGORY) with the same folder names (checkpoints stay behind); then the report of those files.
real-results: install
	cd $(REAL_OUT) && find . -name metrics.json -exec install -D -m 644 {} $(CURDIR)/results/real/$(CATEGORY)/{} \;
	$(PY) experiments/report.py results/real/$(CATEGORY) --out $(REAL_OUT)/report

clean:
	rm -rf outputs multirun bench .pytest_cache
