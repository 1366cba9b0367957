#!/usr/bin/env bash
# Perplexity side by side on this machine: this project's examples/perplexity
# and llama.cpp's llama-perplexity (same text, same window c, same method:
# the second half of each window scored), on the three real models, 2
# threads. llama.cpp is built as in scripts/cpu_compare.sh.
#
# usage: scripts/cpu_perplexity_compare.sh [LOG] [C] [TEXT]
set -euo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-target/cpu-perplexity-compare.log}
C=${2:-256}
TEXT=${3:-tests/fixtures/text/english.txt}
LL=vendor/llama.cpp/build-cpu/bin/llama-perplexity
[ -x "$LL" ] || { echo "build llama.cpp first (see docs/PERFORMANCE.md)" >&2; exit 1; }
cargo build --release --example perplexity >/dev/null
{
  echo "date $(date -u +%F) commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo '+dirty') c=$C text=$TEXT"
  grep -m1 "model name" /proc/cpuinfo
  for m in SmolLM2-135M-Instruct.Q4_1 qwen2.5-coder-0.5b-instruct-q4_k_m gemma-3-270m-q4_k_m; do
    ours=$(target/release/examples/perplexity -c "$C" -f "$TEXT" models/$m.gguf | sed -n 's/.*PPL = \([0-9.]*\).*/\1/p')
    theirs=$("$LL" -m models/$m.gguf -f "$TEXT" -c "$C" -t 2 2>&1 | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p')
    echo "$m rocmforge $ours llama.cpp $theirs ratio $(python3 -c "print(f'{$ours/$theirs:.4f}')")"
  done
} 2>&1 | tee "$LOG"
