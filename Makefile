# Quick start:  make baseline  (set up and run the baseline)   |   make test  (set up and run the tests)
VENV := .venv
STAMP := $(VENV)/.installed
SEED ?= 0

.PHONY: setup baseline test lint

$(STAMP): pyproject.toml scripts/setup.sh scripts/solara_assets.py
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

baseline: $(STAMP)
	$(VENV)/bin/abm run configs/baseline.yaml --seed $(SEED)

lint: $(STAMP)
	$(VENV)/bin/ruff check abm tests

test: lint
	$(VENV)/bin/python -m pytest -q
