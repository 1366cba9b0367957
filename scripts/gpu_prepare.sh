#!/usr/bin/env bash
# Build what scripts/gpu_check.sh runs on the GPU machine, on this (CPU)
# machine: release binaries with the cuda feature (stripped) and header-only
# images of the real models, into .carry/ (git-ignored; carry it with the
# device call). Needs `make models`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .carry/bin
cargo build --release --features cuda --examples
cargo build --release --features cuda -p rocmforge-cli -p rocmforge-server
json=$(cargo test --release --features cuda --no-run --message-format=json 2>/dev/null)
for t in device_ops gpu_model arch_twins gpu_collective rocmforge; do
  exe=$(printf '%s\n' "$json" | grep -o "\"executable\":\"[^\"]*/deps/$t-[0-9a-f]*\"" | tail -n1 | cut -d'"' -f4)
  # the library's unit tests are rocmforge-unit here (rocmforge is the CLI)
  install -m755 "$exe" .carry/bin/$([ $t = rocmforge ] && echo rocmforge-unit || echo $t)
done
for e in bench batched_bench make_twin; do install -m755 target/release/examples/$e .carry/bin/$e; done
for b in rocmforge rocmforge-server; do install -m755 target/release/$b .carry/bin/$b; done
strip .carry/bin/*
# the vocabularies the architecture twins are made from (tests/arch_twins.rs)
tar -C vendor/llama.cpp/models -cJf .carry/vocab.tar.xz ggml-vocab-qwen2.gguf ggml-vocab-llama-bpe.gguf ggml-vocab-phi-3.gguf ggml-vocab-llama-spm.gguf
for m in SmolLM2-135M-Instruct.Q4_1 qwen2.5-coder-0.5b-instruct-q4_k_m gemma-3-270m-q4_k_m; do
  ./target/release/examples/make_twin --header-only --from models/$m.gguf --out .carry/$m.head
done
# the models-extra 1.5B, when it is here (make models-extra)
m=qwen2.5-coder-1.5b-instruct-q4_k_m
[ -f models/$m.gguf ] && ./target/release/examples/make_twin --header-only --from models/$m.gguf --out .carry/$m.head
# llama.cpp's source for a side-by-side build there (`gpu_check.sh llama-build
# llama-side`): the sdist without the other backends, docs, tests and models
if [ -d vendor/llama.cpp/ggml/src/ggml-cuda ]; then
  ex=(); for b in vulkan sycl metal opencl cann musa hexagon webgpu openvino virtgpu et zdnn blas rpc kompute; do ex+=(--exclude="ggml/src/ggml-$b"); done
  tar -C vendor/llama.cpp "${ex[@]}" --exclude=tools/server --exclude=tools/ui --exclude=tools/cli \
    -cJf .carry/llama.cpp.tar.xz CMakeLists.txt cmake common ggml include src tools vendor licenses LICENSE
  ls -la .carry/llama.cpp.tar.xz
fi
# the load generator's HTTP client for the `server` step (pure Python, from .venv-server: make test-server)
SP=$(ls -d .venv-server/lib/python3*/site-packages 2>/dev/null | head -n1 || true)
if [ -n "$SP" ]; then
  rm -rf .carry/pylib && mkdir -p .carry/pylib
  for p in httpx httpcore h11 anyio sniffio idna certifi typing_extensions.py; do [ -e "$SP/$p" ] && cp -r "$SP/$p" .carry/pylib/; done
fi
du -sh .carry
