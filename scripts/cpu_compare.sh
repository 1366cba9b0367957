#!/usr/bin/env bash
# Side by side on this machine, one run: this project's examples/bench
# (pp128, tg64, 2 threads) and llama.cpp's llama-bench -p 128 -n 64 -t 2
# (built from the llama-cpp-python 0.3.36 sdist in vendor/llama.cpp, cmake
# Release, GGML_NATIVE=ON, AMX off; see docs/PERFORMANCE.md) on the three
# real models. Names the CPU, its flags and the dot kernels that ran.
#
# usage: scripts/cpu_compare.sh [LOG] [REPS]   (default target/cpu-compare.log, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-target/cpu-compare.log}
REPS=${2:-5}
LL=vendor/llama.cpp/build-cpu/bin/llama-bench
[ -x "$LL" ] || { echo "build llama.cpp first (see docs/PERFORMANCE.md, 'Batched decoding on the CPU')" >&2; exit 1; }
cargo build --release --example bench >/dev/null
{
  echo "date $(date -u +%F) commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+dirty')"
  grep -m1 "model name" /proc/cpuinfo
  grep -m1 flags /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|f16c|avx512f|avx512bw|avx512vl|avx512_vnni|avx_vnni)$' | tr '\n' ' '; echo
  for m in SmolLM2-135M-Instruct.Q4_1 qwen2.5-coder-0.5b-instruct-q4_k_m gemma-3-270m-q4_k_m; do
    echo "== $m: rocmforge"
    target/release/examples/bench --threads 2 --pp 128 --tg 64 --reps "$REPS" models/$m.gguf
    echo "== $m: llama.cpp"
    "$LL" -m models/$m.gguf -p 128 -n 64 -t 2 -r "$REPS" 2>/dev/null | grep -E '^\|'
  done
} 2>&1 | tee "$LOG"
