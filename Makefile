# Set-up and everyday commands. `make run` and `make test` work from a clean clone with
# only Python >= 3.10 and make installed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_DIR := .run

.PHONY: run test lint bench fuzz docs clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# One stamp per install flavour, redone when pyproject.toml changes.
$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed

# The main job on the bundled sample weights: quantize the sample checkpoint (error report on
# stderr), restore it, and compare schemes side by side.
run: $(VENV)/.installed
	mkdir -p $(RUN_DIR)
	$(BIN)/quant compress sample_weights/transformer.safetensors \
		-o $(RUN_DIR)/transformer.absmax-int8.safetensors --force
	$(BIN)/quant decompress $(RUN_DIR)/transformer.absmax-int8.safetensors \
		-o $(RUN_DIR)/transformer.restored.safetensors --force
	$(BIN)/quant report sample_weights/seed_outlier.npy \
		--scheme absmax --scheme zeropoint --bits 8 --granularity tensor \
		--calibration minmax --calibration percentile

test: $(VENV)/.installed-dev
	$(BIN)/ruff check quantcli tests benchmarks sample_weights
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check quantcli tests benchmarks sample_weights
	$(BIN)/ruff format --check quantcli tests benchmarks sample_weights

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/bench.py

fuzz: $(VENV)/.installed-dev
	QUANT_FUZZ_EXAMPLES=20000 $(BIN)/python -m pytest tests/test_fuzz_readers.py -q

# Regenerate the CLI reference in docs/CLI.md from --help (a test checks it is current).
docs: $(VENV)/.installed-dev
	$(BIN)/python -m quantcli.cli.docs > docs/CLI.md

clean:
	rm -rf $(VENV) $(RUN_DIR) build dist *.egg-info .pytest_cache .ruff_cache .hypothesis
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
