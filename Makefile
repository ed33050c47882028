# Set-up commands of README.md.  Both create .venv on first use.
VENV ?= .venv
PYTHON ?= python3
BIN = $(VENV)/bin

.PHONY: demo test lint bench-move bench-delta clean

$(BIN)/realize-move: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

# The main job on an embedded default: generated keys, a realized on
# 127.0.0.1, a generated tree moved into it with progress shown.
demo: $(BIN)/realize-move
	$(BIN)/realize-demo

# The whole test suite (trial), two processes.
test: $(BIN)/realize-move
	$(BIN)/python -m twisted.trial --jobs 2 tests

lint: $(BIN)/realize-move
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench-move: $(BIN)/realize-move
	$(BIN)/python bench/move_throughput.py

bench-delta: $(BIN)/realize-move
	$(BIN)/python bench/delta.py

clean:
	rm -rf $(VENV) _trial_temp* .mypy_cache .ruff_cache .hypothesis
