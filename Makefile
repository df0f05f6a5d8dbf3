# Two front doors: `make demo` runs laneway, `make test` runs the whole suite.
# Both build the virtual environment from pyproject.toml first, so a fresh machine needs nothing else.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo serve test system-deps lint typecheck check bench bench-publish agents clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# `make demo PORT=9090` when 8080 is taken.
demo: $(STAMP)
	$(BIN)/laneway demo$(if $(PORT), --port $(PORT))

# Debian packages the suite runs as real programs (haproxy), installed when missing.
system-deps:
	./scripts/system-deps.sh

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check laneway tests bench
	$(BIN)/ruff format --check laneway tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

# The coding-agent CLIs tests/agents runs (Claude Code, Codex; pinned in tests/agents/package*.json),
# installed with `npm ci` into $(LANEWAY_AGENT_CACHE) or ~/.cache/laneway/agents. Needs Node.js and npm.
agents: $(STAMP)
	$(BIN)/python -m tests.agents.install

# The gateway's overhead against a direct call, then what cluster mode costs against the embedded
# default (bench.cluster: needs this machine's PostgreSQL and Redis, as the tests do).
bench: $(STAMP)
	$(BIN)/python -m bench.overhead $(ARGS)
	$(BIN)/python -m bench.cluster $(ARGS)

bench-publish: $(STAMP)
	$(BIN)/python -m bench.publish $(ARGS)

clean:
	rm -rf $(VENV)
