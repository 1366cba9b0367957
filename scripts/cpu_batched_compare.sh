#!/usr/bin/env bash
# Side by side on this machine, one run: this project's examples/batched_bench
# and llama.cpp's llama-batched-bench (built from the llama-cpp-python 0.3.36
# sdist in vendor/llama.cpp, cmake Release, GGML_NATIVE=ON, AMX off) on the
# three real models, 2 threads, -npp 128 -ntg 64 -npl 1,4,8.
#
# usage: scripts/cpu_batched_compare.sh [LOG]   (default target/cpu-batched-compare.log)
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-target/cpu-batched-compare.log}
LL=vendor/llama.cpp/build-cpu/bin/llama-batched-bench
[ -x "$LL" ] || { echo "build llama.cpp first (see docs/PERFORMANCE.md, 'Batched decoding on the CPU')" >&2; exit 1; }
cargo build --release --example batched_bench >/dev/null
{
  echo "date $(date -u +%F) commit $(git rev-parse --short HEAD)"
  grep -m1 "model name" /proc/cpuinfo
  grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni)$' | tr '\n' ' '; echo
  for m in SmolLM2-135M-Instruct.Q4_1 qwen2.5-coder-0.5b-instruct-q4_k_m gemma-3-270m-q4_k_m; do
    echo "== $m: rocmforge"
    target/release/examples/batched_bench -m models/$m.gguf -npp 128 -ntg 64 -npl 1,4,8 -t 2
    echo "== $m: llama.cpp"
    "$LL" -m models/$m.gguf -npp 128 -ntg 64 -npl 1,4,8 -t 2 -c 2048 2>/dev/null | grep -E '^\|'
  done
} 2>&1 | tee "$LOG"
