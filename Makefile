# The two commands: `make run` (whole demo pipeline) and `make test` (test suite).
# Both create .venv when missing and (re)install when pyproject.toml/constraints.txt change.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: install run test test-slow bench bench-pipeline bench-reward compare screenshots clean lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	# CPU torch first, pinned, so nothing later pulls a CUDA build.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	# The registry's only torchvision for torch 2.13 is a CUDA build: its C ops cannot load on CPU
	# torch; srvau/compat.py registers the op schemas so its pure-torch transforms work (see README).
	$(BIN)/pip install -q --no-deps torchvision==0.28.0
	touch $(STAMP)

install: $(STAMP)

# params.yaml is composed first: the demo defaults, or RECIPE (a name in configs/recipe/, e.g. RECIPE=paper-3b),
# then SET's overrides (e.g. SET="seed=7").
run: install
	$(BIN)/srvau $(if $(RECIPE),--recipe $(RECIPE),) config compose $(SET)
	$(BIN)/python -m flows.pipeline

# The SRVAU-R1 recipe and the VAU-R1 baseline as two DVC experiments, one side-by-side report
# (reports/compare/report.html). Two full demo runs: not part of `make run`.
compare: install
	$(BIN)/python -m flows.compare

# The README's pictures (docs/images/): the evaluation report and the MLflow page of the registered model,
# taken in headless Chromium after `make run`. Needs a `chromium` binary (Debian: apt-get install chromium).
screenshots: install
	$(BIN)/python -m srvau.evaluation.screenshot --out docs/images

test: install
	$(BIN)/python -m pytest -q

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python bench/ingest.py && $(BIN)/python bench/grpo.py && $(BIN)/python bench/eval.py && $(BIN)/python bench/sft.py && $(BIN)/python bench/drills.py && $(BIN)/python bench/trunk_cache.py && $(BIN)/python bench/cpu_kernels.py

# The whole demo flow in a temporary copy, timed: stage compute vs orchestration (~9 min).
bench-pipeline: install
	$(BIN)/python bench/pipeline.py

# After `make run`: the reward of its SFT and GRPO models held still on GRPO's own prompts (~9 min).
bench-reward: install
	$(BIN)/python bench/grpo_reward.py

clean:
	rm -rf data/demo models reports mlruns mlflow.db .prefect
