#!/usr/bin/env bash
# llama-cpp-python 0.3.36 (pure Python, from the sdist) on two libllama.so:
# ROCmForge's (target/release, `make llama`) and llama.cpp's own, built from
# the same sdist (vendor/llama.cpp/build-cpu: cmake Release, GGML_NATIVE,
# AMX off: see scripts/cpu_compare.sh). Side by side in one run, alternated,
# on the three real models; 2 threads. Needs `make test-llama`'s venv.
# ROCMFORGE_LLAMA_TIMING=1 makes ROCmForge's library print, per context,
# the time spent in the engine and in the compatibility layer around it.
set -euo pipefail
cd "$(dirname "$0")/.."
OURS=$PWD/target/release
THEIRS=$PWD/vendor/llama.cpp/build-cpu/bin
PY=$PWD/.venv-llama/bin/python
MODELS=(models/SmolLM2-135M-Instruct.Q4_1.gguf models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf models/gemma-3-270m-q4_k_m.gguf)
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(date -u +%F), commit $(git rev-parse --short HEAD)"
for round in 1 2; do
  for which in rocmforge llama.cpp; do
    dir=$OURS; [ $which = llama.cpp ] && dir=$THEIRS
    echo "== round $round: $which ($dir)"
    ROCMFORGE_LLAMA_TIMING=1 LD_LIBRARY_PATH=$dir LLAMA_CPP_LIB_PATH=$dir PYTHONPATH=$PWD/vendor/llama-cpp-python-0.3.36 "$PY" llama/bench/frontend_speed.py "${MODELS[@]}"
  done
done
