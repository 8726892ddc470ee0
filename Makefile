# imaging-lake: every target creates or reuses the virtual environment .venv/ first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench clean-demo

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "imaging-lake needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## demo: build a local lake (.demo/lake) from sample DICOM and run a cohort query
demo: $(STAMP)
	$(BIN)/lake demo --lake .demo/lake --vault .demo/vault

## test: the whole test suite
test: $(STAMP)
	$(BIN)/python -m pytest

## lint: ruff and mypy (strict) on the library and the CLI
lint: $(STAMP)
	$(BIN)/ruff check lake pipelines tests tools benchmarks
	$(BIN)/mypy

## bench: every benchmark, each printing ratios against a baseline measured in the same run
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-demo:
	rm -rf .demo
