#!/usr/bin/env bash
# spinserve beside llama.cpp's OpenAI server on the same GGUF, measured the same way.
#
#   bash benchmarks/peers.sh                      # everything (HumanEval: all 164 problems)
#   NUM_PROMPTS=24 NUM_HUMANEVAL=40 bash benchmarks/peers.sh
#
# Installs llama-cpp-python's server (the `llamacpp` extra: a source build, 10-15 minutes on
# 2 cores) and the `bench` extra, fetches spinserve's default target, then serves it three ways:
#   spinserve       on :8000  (the default target and drafters)
#   llama.cpp       on :8001  (plain)
#   llama.cpp       on :8002  (its prompt lookup, 3 draft tokens)
# and runs `spinserve bench serve --compare` over four configurations -- llama.cpp plain (the
# baseline of the ratios), llama.cpp with prompt lookup, spinserve's target alone
# (drafter=none) and spinserve's default -- at 1 and 4 concurrent requests, interleaved per
# round so no two servers run at once; then `spinserve bench quality` (HumanEval pass@1) of
# spinserve's default and of llama.cpp plain. JSON (and a PNG) land in benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PY:-.venv/bin/python}
THREADS=${THREADS:-2}
NUM_PROMPTS=${NUM_PROMPTS:-24}
NUM_HUMANEVAL=${NUM_HUMANEVAL:-164}
MAX_TOKENS=${MAX_TOKENS:-256}
OUT=benchmarks/results
TARGET=qwen2.5-coder-1.5b-instruct
mkdir -p "$OUT"

if ! "$PY" -c "import llama_cpp.server, openai" 2>/dev/null; then
    CMAKE_ARGS=${CMAKE_ARGS:-"-DGGML_NATIVE=ON"} "$PY" -m pip install -e ".[bench,llamacpp]"
fi
"$PY" -m spinserve.cli.main models fetch "$TARGET"
GGUF=$("$PY" -c "from spinserve.loading import zoo; print(zoo.gguf_path('$TARGET', zoo.resolve_cache_dir()))")

PIDS=()
cleanup() { for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done; wait || true; }
trap cleanup EXIT

wait_ready() {  # $1: base URL; the servers take a while to load the model
    for _ in $(seq 600); do
        "$PY" -c "import urllib.request as u; u.urlopen('$1/models', timeout=2)" 2>/dev/null && return
        sleep 1
    done
    echo "error: $1 did not come up in 10 minutes" >&2
    exit 1
}

llama_server() {  # $1: port, then extra flags
    local port=$1
    shift
    "$PY" -m llama_cpp.server --model "$GGUF" --model_alias "$TARGET" --host 127.0.0.1 \
        --port "$port" --n_threads "$THREADS" --n_threads_batch "$THREADS" --n_ctx 4096 "$@" \
        >"$OUT/llamacpp_$port.log" 2>&1 &
    PIDS+=($!)
}

# Without prefix caching: spinserve's two configurations share this server, and the second
# would find each prompt cached by the first (prefix_cache.json measures caching on its own).
"$PY" -m spinserve.cli.main serve --model "$TARGET" --port 8000 --no-prefix-caching \
    >"$OUT/spinserve.log" 2>&1 &
PIDS+=($!)
llama_server 8001
llama_server 8002 --draft_model prompt-lookup-decoding --draft_model_num_pred_tokens 3
for port in 8000 8001 8002; do wait_ready "http://127.0.0.1:$port/v1"; done

BENCH=("$PY" -m spinserve.cli.main bench)
"${BENCH[@]}" serve --dataset spec-bench --num-prompts "$NUM_PROMPTS" --max-tokens "$MAX_TOKENS" \
    --concurrency 1,4 --seed 0 \
    --compare llamacpp=http://127.0.0.1:8001/v1 \
              llamacpp-lookup=http://127.0.0.1:8002/v1 \
              spinserve-target=http://127.0.0.1:8000/v1,drafter=none \
              spinserve=http://127.0.0.1:8000/v1 \
    --out "$OUT/peers_serve.json" --plot "$OUT/peers_serve.png"

"${BENCH[@]}" quality --base-url http://127.0.0.1:8000/v1 --num-prompts "$NUM_HUMANEVAL" \
    --out "$OUT/peers_humaneval_spinserve.json"
"${BENCH[@]}" quality --base-url http://127.0.0.1:8001/v1 --num-prompts "$NUM_HUMANEVAL" \
    --out "$OUT/peers_humaneval_llamacpp.json"
"$PY" benchmarks/peers_manifest.py "$OUT" "NUM_PROMPTS=$NUM_PROMPTS MAX_TOKENS=$MAX_TOKENS \
NUM_HUMANEVAL=$NUM_HUMANEVAL THREADS=$THREADS bash benchmarks/peers.sh"
rm -f "$OUT/peers_serve.json" "$OUT"/peers_humaneval_*.json
echo "results: $OUT/peers.json (for benchmarks/report.py), $OUT/peers_serve.png, $OUT/*.log"
