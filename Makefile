# The two commands of the README: `make demo` and `make test`; `make docs` builds the
# documentation site, `make wheel-check` the release check that CI runs after the tests.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint typecheck docs wheel-check bench install clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# torch is pinned and installed first: it resolves to the CPU wheel instead of
# pulling several GB of CUDA packages.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/rlprune demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools .ci

# mypy's settings (files, strictness) are in pyproject.toml
typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks tools .ci
	$(BIN)/mypy
	$(BIN)/pytest -q

test-slow: $(STAMP)
	$(BIN)/pytest -q -m slow

# The site (user guide, methods, results, API reference, changelog) in site/; offline,
# and --strict fails it on a broken link or cross-reference.
docs: $(STAMP)
	$(BIN)/mkdocs build --strict

# Build the sdist and wheel, install the wheel into a fresh venv outside the repository
# and run `rlprune demo --quiet` and the import checks there (.ci/wheel-check).
wheel-check: $(STAMP)
	PY=$(PY) BUILD_PY=$(BIN)/python .ci/wheel-check

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run $(NAME)

clean:
	rm -rf $(VENV) build dist site src/*.egg-info .pytest_cache .ruff_cache .mypy_cache
