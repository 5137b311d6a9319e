# The two commands a new user needs: `make demo` and `make test`. Both create the virtual environment
# when missing. Another interpreter gets its own: `make test PYTHON=python3.9` uses .venv-python3.9.
PYTHON ?= python3
VENV ?= $(if $(filter python3,$(PYTHON)),.venv,.venv-$(notdir $(PYTHON)))
BIN := $(VENV)/bin
# What `make test` needs (the package, its dev and bench extras), what `make demo` needs (the package
# alone) and what `make build` needs (the package and its build extra, jsonschema): separate stamps, so
# a demo or a build first does not make `make test` skip the dev tools, nor a demo make `make build`
# skip jsonschema.
DEV_STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo
BUILD_STAMP := $(VENV)/.installed-build

.PHONY: test lint typecheck pytest demo docs bench build clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(DEV_STAMP) $(DEMO_STAMP) $(BUILD_STAMP)

$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $(DEMO_STAMP)

$(BUILD_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[build]'
	touch $(BUILD_STAMP) $(DEMO_STAMP)

test: lint typecheck pytest

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	# devices run old distributions: the component must work on Python 3.9
	$(BIN)/vermin --target=3.9- --no-tips --eval-annotations --violations -q src tests bench tools
	# the layers of pyproject.toml's [tool.importlinter]: no import from a lower layer to a higher one
	$(BIN)/lint-imports --no-cache

typecheck: $(DEV_STAMP)
	$(BIN)/mypy --cache-dir $(VENV)/.mypy_cache

pytest: $(DEV_STAMP)
	$(BIN)/pytest -q

demo: $(DEMO_STAMP)
	$(BIN)/python -m ddcustom.tooling.demo

# README.md's metric and configuration tables, from metrics.py and config.py; docs/cli.md from the parser
docs: $(DEMO_STAMP)
	$(BIN)/python tools/docs_tables.py
	$(BIN)/python tools/docs_cli.py

bench: $(DEV_STAMP)
	$(BIN)/python bench/collect_cost.py
	$(BIN)/python bench/detect_latency.py
	$(BIN)/python bench/level_follow.py
	$(BIN)/python bench/gpu_scenarios.py --quick
	$(BIN)/python bench/evasion.py

# the artifact and recipe as `gdk component build` lays them out; needs the package and jsonschema only
build: $(BUILD_STAMP)
	$(BIN)/python -m ddcustom.tooling.build

clean:
	rm -rf greengrass-build zip-build .pytest_cache .mypy_cache .ruff_cache
