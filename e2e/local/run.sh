#!/usr/bin/env bash
# e2e/local: the operator's rendered output served by real broker processes (see ../README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV="${PYTHON_VENV:-$HOME/.cache/fleetmq-venv}"
cargo build -q -p fleetmq-broker --bin fleetmq-broker -p fleetmq-operator --bin fleetmq-operator
exec "$VENV/bin/python" -m pytest -q tests/python/test_operator_e2e.py "$@"
