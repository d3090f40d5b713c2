# tlcli developer commands. `make help` lists them.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# The demo: embedded digits, offline ImageNet EfficientNet-Lite0, a couple of minutes on 2 CPU cores.
DEMO_ARGS ?= experiment=demo

.DEFAULT_GOAL := help
.PHONY: help install demo test test-all lint format bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install tlcli (editable) with its test tools

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	# torch is capped at the release these machines serve locally (CPU/CUDA wheels of 2.14.1)
	$(BIN)/python -m pip install -e '.[dev]' 'torch<=2.14.1' 'torchvision<=0.29.1'
	touch $(STAMP)

demo: install ## fine-tune the offline Lite0 on the embedded digits, print the test report
	$(BIN)/tlcli fit $(DEMO_ARGS)

test: install ## fast offline test suite (slow tests excluded)
	$(BIN)/python -m pytest -q

test-all: install ## every test, slow ones included
	$(BIN)/python -m pytest -q -m "slow or not slow"

lint: install ## ruff check
	$(BIN)/ruff check tlcli tests

format: install ## ruff format
	$(BIN)/ruff format tlcli tests

bench: install ## performance harness: overhead, memory, scaling, input pipeline -> bench/results/ (about 20 min)
	$(BIN)/python -m bench.overhead
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.scaling
	$(BIN)/python -m bench.pipeline

clean: ## remove caches (keeps .venv and outputs/)
	rm -rf .pytest_cache .ruff_cache **/__pycache__
