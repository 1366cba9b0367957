#!/usr/bin/env bash
# llama.cpp's teacher-forced top-1 on the committed HF teacher texts, as a
# fixture: tests/fixtures/logits/<model>/llama_cpp_top1.json. The accuracy
# test (tests/model_hf_reference.rs) holds this project's 8-bit activation
# path to at least llama.cpp's agreement with HF on the same positions.
# llama.cpp: the llama-cpp-python 0.3.36 sdist in vendor/llama.cpp, built as
# in docs/PERFORMANCE.md (build-cpu); scripts/llama_teacher_top1.c links it.
set -euo pipefail
cd "$(dirname "$0")/.."
L=vendor/llama.cpp
[ -e $L/build-cpu/bin/libllama.so ] || { echo "build llama.cpp first (see docs/PERFORMANCE.md)" >&2; exit 1; }
mkdir -p target
gcc -O2 -o target/llama_teacher_top1 scripts/llama_teacher_top1.c -I$L/include -I$L/ggml/include -L$L/build-cpu/bin -lllama -Wl,-rpath,$PWD/$L/build-cpu/bin
for k in ${KEYS:-smollm2:SmolLM2-135M-Instruct.Q4_1 qwen2:qwen2.5-coder-0.5b-instruct-q4_k_m gemma3:gemma-3-270m-q4_k_m}; do
  key=${k%%:*}; m=${k#*:}
  fx=tests/fixtures/logits/$key
  python3 -c "import json;print(' '.join(map(str,json.load(open('$fx/teacher.json'))['ids'])))" \
    | target/llama_teacher_top1 models/$m.gguf 2 2>/dev/null > target/llama_top1_$key.txt
  python3 - "$fx" "target/llama_top1_$key.txt" <<'PY'
import json, platform, subprocess, sys
fx, got = sys.argv[1], sys.argv[2]
t = json.load(open(f"{fx}/teacher.json"))
top1 = [int(x) for x in open(got)]
assert len(top1) == len(t["ids"]), (len(top1), len(t["ids"]))
agree = sum(1 for a, b in zip(top1, t["top_ids"]) if a == b[0])
cpu = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
json.dump({"llama_cpp": "llama-cpp-python 0.3.36 sdist, CPU build (GGML_NATIVE, 2 threads, one batch with every position's logits)",
           "cpu": cpu, "agree_with_hf": agree, "top1": top1}, open(f"{fx}/llama_cpp_top1.json", "w"))
print(f"{fx}: llama.cpp agrees with HF at {agree}/{len(top1)}")
PY
done
