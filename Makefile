# Two entry points for people: `make run` (the app) and `make test` (the suite).
# Both create/refresh .venv from requirements.txt (a lock with exact pins) first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 7860
export PIP_DISABLE_PIP_VERSION_CHECK = 1

.PHONY: run test test-fast bench venv browser-deps serve clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip >/dev/null
	$(BIN)/python -m pip install -r requirements.txt
	$(BIN)/python -m pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: venv
	$(BIN)/python app.py --host $(HOST) --port $(PORT)

serve: venv
	$(BIN)/cellsparse serve --host $(HOST) --port 8000

test: venv browser-deps
	$(BIN)/python -m pytest -q

test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow and not browser"

bench: venv
	$(BIN)/python -m bench

# Debian's Chromium + playwright-core from npm for the real browser test (no browser download).
browser-deps:
	@bash tests/browser/setup.sh

clean:
	rm -rf $(VENV) node_modules tests/browser/node_modules .pytest_cache
