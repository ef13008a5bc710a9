# agentgov: `make demo` runs the pipeline on the embedded broker and chdb; `make test` runs the suite.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The benchmark peer (quixstreams) pins confluent-kafka below the current release: it gets its own venv so
# the product is tested on the current client library.
PEER ?= .venv-peer
PEER_STAMP := $(PEER)/.installed
# make test runs the suite in this many worker processes (pytest-xdist): each module, and the Kafka tier as a
# whole, is one unit of work on one worker (tests/conftest.py).
TEST_WORKERS ?= 2

.PHONY: demo run test test-unit lint typecheck check bench bench-smoke clean kafka-jars peer-venv

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[embedded,dev,bench]'
	touch $(STAMP)

venv: $(STAMP)

$(PEER_STAMP): pyproject.toml
	$(PY) -m venv $(PEER)
	$(PEER)/bin/pip install -q --upgrade pip
	$(PEER)/bin/pip install -q -e '.[embedded,peer]'
	touch $(PEER_STAMP)

peer-venv: $(PEER_STAMP)

demo: $(STAMP)
	$(BIN)/agentgov demo

run: $(STAMP)
	$(BIN)/agentgov run

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

kafka-jars: $(STAMP)
	PY=$(BIN)/python bash ci/kafka/resolve.sh

test: $(STAMP) $(PEER_STAMP)
	bash ci/system-deps.sh
	PY=$(BIN)/python bash ci/kafka/resolve.sh
	$(BIN)/ruff check .
	$(BIN)/mypy
	bash ci/checks.sh
	$(BIN)/pytest -q -ra --durations=40 -n $(TEST_WORKERS) --dist loadgroup

test-unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

bench: $(STAMP) $(PEER_STAMP)
	$(BIN)/python -m bench
	$(BIN)/python -m bench.recert

bench-smoke: $(STAMP) $(PEER_STAMP)
	$(BIN)/python -m bench --smoke

clean:
	rm -rf $(VENV) $(PEER) .agentgov .cache
