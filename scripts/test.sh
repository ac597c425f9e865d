#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite: lint, unit tests on tiny random models,
# and integration tests on real SmolLM2-135M and Gemma-3-270M (fetched into the cache once).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test,ray  # ray: the fleet's tests (tests/ray) run Ray Serve
.venv/bin/ruff check spinserve research tests benchmarks
.venv/bin/ruff format --check spinserve research tests benchmarks
.venv/bin/python benchmarks/report.py --check  # docs/benchmarks.md and README's table
.venv/bin/python -m pytest "$@"
