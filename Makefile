# FleetMQ developer entry points. `make run` and `make test` are the two commands a newcomer
# needs; CI runs `.ci/run`, which installs the test dependencies and then `make test`.

CARGO        ?= cargo
PYTHON_VENV  ?= $(HOME)/.cache/fleetmq-venv
PYTHON       ?= $(PYTHON_VENV)/bin/python
TARGET_DIR   := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' 2>/dev/null || echo target)
BROKER_BIN   := $(TARGET_DIR)/debug/fleetmq-broker
OPERATOR_BIN := $(TARGET_DIR)/debug/fleetmq-operator

.PHONY: e2e-local e2e-kind images run build test test-rust test-python lint fmt check-python-deps clean crds bench bench-store bench-compare bench-cluster bench-deps

## run: build and start the broker on 127.0.0.1:1883 (anonymous, state under ./data)
run:
	$(CARGO) run -p fleetmq-broker --bin fleetmq-broker -- --data-dir ./data

## build: build every crate
build:
	$(CARGO) build --workspace --all-targets

## test: every test (Rust unit + integration, Python paho/mosquitto suites)
test: lint test-rust test-python

## lint: formatting and clippy with warnings as errors
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test-rust:
	$(CARGO) build --workspace --all-targets
	$(CARGO) test --workspace

test-python: check-python-deps
	$(CARGO) build -p fleetmq-broker --bin fleetmq-broker -p fleetmq-operator --bin fleetmq-operator
	FLEETMQ_BROKER=$(BROKER_BIN) FLEETMQ_OPERATOR=$(OPERATOR_BIN) $(PYTHON) -m pytest -q tests/python

## bench: every benchmark (release build, pinned CPUs; results in bench/results/ and BENCHMARKS.md)
bench: bench-compare bench-store bench-cluster

## bench-compare: FleetMQ and Mosquitto side by side (throughput per CPU, latency, idle memory)
bench-compare: bench-deps
	python3 bench/compare.py

bench-deps:
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || { \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get install -y --no-install-recommends mosquitto || { $$SUDO apt-get update && $$SUDO apt-get install -y --no-install-recommends mosquitto; }; }
	@command -v taskset >/dev/null || echo "warning: taskset (util-linux) missing: broker and load generator will share CPUs"

## bench-cluster: a 3-node cluster on loopback against 1 node (deliveries/s, latency, CPU per delivery)
bench-cluster:
	python3 bench/cluster_bench.py

## bench-store: durable-store throughput (fsync always/interval vs memory) and recovery time
bench-store:
	python3 bench/store_bench.py

## crds: regenerate crds/ (one file per kind) from the operator's types; a test fails on drift
crds:
	$(CARGO) build -q -p fleetmq-operator --bin fleetmq-operator
	rm -f crds/*.yaml charts/fleetmq-operator/crds/*.yaml
	$(OPERATOR_BIN) crd --out-dir crds
	cp crds/*.yaml charts/fleetmq-operator/crds/

check-python-deps:
	@command -v mosquitto_pub >/dev/null || { echo "mosquitto_pub missing: run .ci/run or 'apt-get install mosquitto-clients'"; exit 1; }
	@test -d tests/js/node_modules/mqtt || { echo "MQTT.js missing: run .ci/run (or 'npm ci --prefix tests/js')"; exit 1; }
	@test -d tests/js/node_modules/playwright-core || { echo "playwright-core missing (console browser test): run .ci/run (or 'npm ci --prefix tests/js')"; exit 1; }
	@test -x /usr/bin/chromium || { echo "chromium missing (console browser test): run .ci/run (or 'apt-get install chromium')"; exit 1; }
	@$(PYTHON) -c 'import paho.mqtt, pytest, yaml, jsonschema, kubernetes_validate, helm_python' 2>/dev/null || { echo "Python test deps missing in $(PYTHON_VENV): run .ci/run (or python3 -m venv $(PYTHON_VENV) && $(PYTHON_VENV)/bin/pip install -r tests/requirements.txt)"; exit 1; }

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean

## images: build the broker and operator images (needs Docker; `make test` lints the Dockerfiles)
images:
	docker build -f broker/Dockerfile -t fleetmq-broker:dev .
	docker build -f operator/Dockerfile -t fleetmq-operator:dev .

## e2e-local: rendered operator output served by real brokers (also part of `make test`)
e2e-local:
	e2e/local/run.sh

## e2e-kind: the same on a kind cluster (needs docker, kind, kubectl, helm; not run in CI)
e2e-kind:
	e2e/kind/run.sh
