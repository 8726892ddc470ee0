# imaging-lake: every target creates or reuses the virtual environment .venv/ first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test lint bench tools clean-demo

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

## tools: the BIDS validator (npm bids-validator 1.15) and axe-core (the portal's accessibility
## test) in .tools/
BIDS_VALIDATOR := .tools/bids-validator/node_modules/.bin/bids-validator
AXE := .tools/axe/node_modules/axe-core/axe.min.js
tools: $(BIDS_VALIDATOR) $(AXE)

$(AXE):
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: accessibility checks will skip"; exit 0; }; \
	npm install --prefix .tools/axe --no-audit --no-fund --loglevel=error axe-core@4.10.3 \
	    || echo "npm install axe-core failed: accessibility checks will skip"

$(BIDS_VALIDATOR):
	@command -v npm >/dev/null 2>&1 || { echo "npm not found: BIDS tests will skip"; exit 0; }; \
	npm install --prefix .tools/bids-validator --no-audit --no-fund --loglevel=error \
	    bids-validator@1.15.0 || echo "npm install bids-validator failed: BIDS tests will skip"

## lint: ruff and mypy (strict) on the library and the CLI
lint: $(STAMP)
	$(BIN)/ruff check lake pipelines tests tools benchmarks
	$(BIN)/mypy

## bench: every benchmark, each printing ratios against a baseline measured in the same run
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean-demo:
	rm -rf .demo
