#!/usr/bin/env bash
# Create .venv at the repository root and install spinserve with pinned dependencies.
# Idempotent: a re-run with unchanged pyproject.toml does nothing but check a stamp.
#   bash scripts/setup.sh          # runtime dependencies
#   bash scripts/setup.sh test     # plus the test tools
#   bash scripts/setup.sh test,ray # extras as pip spells them: plus Ray Serve
set -euo pipefail
cd "$(dirname "$0")/.."

extras="${1:-}"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null || python=python3

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($python --version)"
    "$python" -m venv .venv
fi

stamp=".venv/.spinserve-setup-${extras:-runtime}"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

echo "setup: installing spinserve${extras:+[$extras]} (torch 2.13.0 CPU wheel)"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
# torch first and alone, pinned: a range that admits a newer release pulls a CUDA build.
.venv/bin/python -m pip install --quiet --disable-pip-version-check "torch==2.13.0"
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras:+[$extras]}"
echo "$want" > "$stamp"
echo "setup: done ($(.venv/bin/spinserve --version))"
