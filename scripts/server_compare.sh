#!/usr/bin/env bash
# rocmforge-server against llama.cpp's llama-server on the CPU, side by side
# in one run, alternated: SmolLM2, prompts of 128 token ids, 64 output tokens
# with ignore_eos, 4 parallel sequences, 32 requests at concurrency 4 and 8
# (issue 15's workload). llama-server from the llama-cpp-python 0.3.36 sdist
# (vendor/llama.cpp/build-cpu, cmake target llama-server, AMX off).
# usage: scripts/server_compare.sh [rounds]   (needs make server, .venv-server)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-2}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
LLAMA_SERVER=${LLAMA_SERVER:-vendor/llama.cpp/build-cpu/bin/llama-server}
PY=.venv-server/bin/python
PORT=18181
echo "# $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)"
echo "# CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); flags: $(grep -o -w -m1 -E 'avx512_vnni|avx2' /proc/cpuinfo | sort -u | xargs)"
run_one() { # name, command...
  local name=$1; shift
  "$@" > /tmp/server_compare_srv.log 2>&1 &
  local pid=$!
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
  for c in 4 8; do
    echo "## $name concurrency $c"
    $PY scripts/loadgen.py --url "http://127.0.0.1:$PORT" --num-prompts 32 --concurrency $c --prompt-tokens 128 \
      --max-tokens 64 --ignore-eos --seed $c | grep -E "Output token throughput|Total Token|P50 TTFT|Mean TTFT|P50 TPOT|P50 ITL|P99 ITL|Benchmark duration|Failed"
  done
  kill -TERM $pid; wait $pid || true
}
for r in $(seq 1 "$ROUNDS"); do
  echo "# round $r"
  run_one llama-server "$LLAMA_SERVER" -m "$MODEL" -np 4 -cb -t 2 -tb 2 -c 4096 --port $PORT --host 127.0.0.1
  run_one rocmforge-server target/release/rocmforge-server --model "$MODEL" --backend cpu --parallel 4 --ctx-size 1024 --threads 2 --port $PORT
done
