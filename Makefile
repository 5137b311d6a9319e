# The two commands a new user needs: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint typecheck pytest demo bench build clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

test: lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	# devices run old distributions: the component must work on Python 3.9
	$(BIN)/vermin --target=3.9- --no-tips --eval-annotations --violations -q src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/pytest -q

demo: $(STAMP)
	$(BIN)/python -m ddcustom.demo

bench: $(STAMP)
	$(BIN)/python bench/collect_cost.py
	$(BIN)/python bench/detect_latency.py
	$(BIN)/python bench/gpu_scenarios.py --quick
	$(BIN)/python bench/evasion.py

build: $(STAMP)
	$(BIN)/python -m ddcustom.build

clean:
	rm -rf greengrass-build zip-build .pytest_cache .mypy_cache .ruff_cache
