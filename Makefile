# Quick start:  make baseline  (set up and run the baseline)   |   make test  (set up and run the tests)
VENV := .venv
STAMP := $(VENV)/.installed
SEED ?= 0

.PHONY: setup baseline test lint bench

$(STAMP): pyproject.toml scripts/setup.sh scripts/solara_assets.py
	bash scripts/setup.sh
	touch $(STAMP)

setup: $(STAMP)

baseline: $(STAMP)
	$(VENV)/bin/abm run configs/baseline.yaml --seed $(SEED)

lint: $(STAMP)
	$(VENV)/bin/ruff check abm tests benchmarks

bench: $(STAMP)  # performance suite (issue 4): tables, targets, benchmarks/results/latest.json
	$(VENV)/bin/python -m benchmarks

test: lint
	$(VENV)/bin/python -m pytest -q
