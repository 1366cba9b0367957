#!/usr/bin/env bash
# One GPU session's work, run on the GPU machine (no Rust there): make the
# shape twins from header-only files, run the GPU op tests and end-to-end
# tests, time the benchmarks, and run compute-sanitizer. Binaries are built
# on the CPU machine (scripts/gpu_prepare.sh) and carried with the tree.
#
# usage: scripts/gpu_check.sh [steps...]   steps: info twins ops model arch profile ktime bench batched bprofile server bench-cpu sanitize real ncu compile regs collective llama-build llama-side
# env:   BIN (binaries, default .carry/bin), HEADS (.head files, default .carry),
#        OUT (logs; default ./gpu-out), TWINS (default /tmp/twins)
set -uo pipefail
BIN=${BIN:-.carry/bin}
HEADS=${HEADS:-.carry}
OUT=${OUT:-./gpu-out}
TWINS=${TWINS:-/tmp/twins}
mkdir -p "$OUT" "$TWINS"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
export FORGE_KERNEL_CACHE=${FORGE_KERNEL_CACHE:-/tmp/forge-kernel-cache}
export FORGE_TWIN_DIR=$TWINS
# The GPU tests compare with the CPU engine as well as the reference pass;
# they run the CPU in its 16-bit activation mode (FORGE_ACT16), the width
# their bounds were set for (the GPU's activations are 15-bit).
steps=${*:-info twins ops model bench}
SMOL=$HEADS/SmolLM2-135M-Instruct.Q4_1.head
QWEN=$HEADS/qwen2.5-coder-0.5b-instruct-q4_k_m.head
GEMMA=$HEADS/gemma-3-270m-q4_k_m.head
QWEN15=$HEADS/qwen2.5-coder-1.5b-instruct-q4_k_m.head

run() { # name, command...
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "=== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n 25 "$OUT/$name.log"
  return $rc
}

for step in $steps; do
  case $step in
    info)
      nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv
      ls /usr/local/cuda/lib64 | grep -E "nvrtc|cublas" | head ;;
    twins)
      run twins bash -c "set -e
        '$BIN/make_twin' --from '$SMOL' --out '$TWINS/smollm2-twin.gguf'
        '$BIN/make_twin' --from '$QWEN' --out '$TWINS/qwen2-twin.gguf'
        '$BIN/make_twin' --from '$GEMMA' --out '$TWINS/gemma3-twin.gguf'
        '$BIN/make_twin' --from '$QWEN' --type F16 --out '$TWINS/qwen2-f16-twin.gguf'
        '$BIN/make_twin' --from '$QWEN' --type Q4_0 --out '$TWINS/qwen2-q4_0-twin.gguf'
        '$BIN/make_twin' --llama7b --from '$SMOL' --type Q4_0 --out '$TWINS/llama7b-q4_0-twin.gguf'
        '$BIN/make_twin' --llama-small --from '$SMOL' --type Q4_0 --out '$TWINS/llama-small-q4_0-twin.gguf'
        if [ -f '$QWEN15' ]; then '$BIN/make_twin' --from '$QWEN15' --out '$TWINS/qwen2-1.5b-twin.gguf'; fi" ;;
    ops)
      "$BIN/rocmforge-unit" backend::gpu
      run ops env FORGE_ACT16=1 "$BIN/device_ops" --test-threads 1 --nocapture ;;
    model)
      run model env FORGE_ACT16=1 "$BIN/gpu_model" --skip real_smollm2 --nocapture ;;
    arch)
      # the qwen3 / llama3 / phi3 / mistral twins against HF's fixtures, on the GPU
      mkdir -p vendor/llama.cpp/models && tar -C vendor/llama.cpp/models -xJf "$HEADS/vocab.tar.xz"
      run arch env FORGE_ARCH_BACKEND=cuda FORGE_ROOT="$PWD" "$BIN/arch_twins" --nocapture
      # the same with the BLAS products' activations in two f16 halves: the raw bound
      run arch-split env FORGE_F16_SPLIT=1 FORGE_ARCH_BACKEND=cuda FORGE_ROOT="$PWD" "$BIN/arch_twins" --nocapture ;;
    profile)
      run profile env FORGE_PROFILE=1 "$BIN/bench" --backend cuda --pp 512 --tg 16 --reps 1 "$TWINS/qwen2-twin.gguf" "$TWINS/llama7b-q4_0-twin.gguf" ;;
    ktime)
      # device time of every kernel of one decode step (graph replay, each
      # node timed alone by ncu, caches and clocks left as they are)
      for tw in ${KTIME_TWINS:-qwen2-twin llama7b-q4_0-twin}; do
        run ktime-$tw ncu --metrics gpu__time_duration.sum --cache-control none --clock-control none --csv \
          "$BIN/bench" --backend cuda --pp 8 --tg 3 --reps 1 "$TWINS/$tw.gguf"
        python3 scripts/ncu_step.py "$OUT/ktime-$tw.log" > "$OUT/ktime-$tw.txt"; cat "$OUT/ktime-$tw.txt"
        rm -f "$OUT/ktime-$tw.log"
      done ;;
    ncu)
      # hardware counters of the decode products and attention (graphs off so each launch is visible)
      run ncu env FORGE_NO_GRAPH=1 ncu --kernel-name regex:'mmvq_q4_0|quant_act|attn_d' --launch-skip 40 --launch-count 6 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
        "$BIN/bench" --backend cuda --pp 16 --tg 8 --reps 1 "$TWINS/llama7b-q4_0-twin.gguf" ;;
    compile)
      # kernel compile time with an empty cache (each unit's time), then the cached load
      rm -rf /tmp/fresh-cache
      for c in cold warm; do /usr/bin/time -f "$c load: %e s" env FORGE_KERNEL_CACHE=/tmp/fresh-cache FORGE_COMPILE_TIMES=1 "$BIN/rocmforge" run "$TWINS/smollm2-twin.gguf" "Once upon a time" --backend cuda -n 4 --temp 0 2>&1 | grep -E "load|layers|kernel unit"; done ;;
    regs)
      # register cap vs occupancy of the kernels (NVRTC --maxrregcount)
      for r in ${REGS:-none 96 80 64}; do
        o=""; [ "$r" != none ] && o="--maxrregcount=$r"
        echo "maxrregcount $r"; FORGE_NVRTC_OPTS="$o" "$BIN/bench" --backend cuda --pp 512 --tg 128 --reps 3 \
          "$TWINS/qwen2-twin.gguf" "$TWINS/qwen2-f16-twin.gguf" "$TWINS/llama7b-q4_0-twin.gguf" | tail -n 3
      done ;;
    bench)
      # tg128 from an empty context (llama-bench's tg128), then at depth 512
      extra=""; [ -f "$TWINS/qwen2-1.5b-twin.gguf" ] && extra="$TWINS/qwen2-1.5b-twin.gguf"
      for d in 0 512; do
        run bench-d$d "$BIN/bench" --backend cuda --pp 512 --tg 128 --depth $d --reps 3 \
          "$TWINS/qwen2-twin.gguf" "$TWINS/qwen2-f16-twin.gguf" "$TWINS/llama7b-q4_0-twin.gguf" $extra
      done ;;
    batched)
      # aggregate batched decode (llama-batched-bench's semantics and table)
      for tw in ${BATCHED_TWINS:-qwen2-twin llama7b-q4_0-twin}; do
        run batched-$tw "$BIN/batched_bench" --backend cuda -m "$TWINS/$tw.gguf" -npp 128 -ntg 128 -npl ${NPL:-1,8,32,64,128,256}
      done ;;
    bprofile)
      # where a batched decode step's time goes (kernels timed one by one)
      for tw in ${BATCHED_TWINS:-qwen2-twin llama7b-q4_0-twin}; do
        run bprofile-$tw env FORGE_PROFILE=1 "$BIN/batched_bench" --backend cuda -m "$TWINS/$tw.gguf" -npp 128 -ntg 16 -npl ${NPL:-8,64} --detail
      done ;;
    server)
      # rocmforge-server with 64 streaming clients (issue 15's GPU workload;
      # scripts/loadgen.py with the httpx copy gpu_prepare.sh puts in .carry/pylib)
      "$BIN/rocmforge-server" --model "$TWINS/qwen2-twin.gguf" --backend cuda --parallel 64 --ctx-size 1024 --batch-tokens 2048 --port 18080 --max-queue 512 > "$OUT/server.log" 2>&1 &
      spid=$!
      for _ in $(seq 1 900); do curl -sf http://127.0.0.1:18080/health >/dev/null && break; sleep 0.2; done
      run server-load env PYTHONPATH="$HEADS/pylib" python3 scripts/loadgen.py --url http://127.0.0.1:18080 --prompt-tokens 128 --max-tokens 128 --ignore-eos --num-prompts 512 --concurrency 64
      # embeddings on the GPU (the final hidden states, mean-pooled)
      run server-embed bash -c "curl -sf http://127.0.0.1:18080/v1/embeddings -H 'Content-Type: application/json' -d '{\"input\": [\"a red apple\", \"the GPU\"]}' | python3 -c 'import json,sys; d=json.load(sys.stdin)[\"data\"]; v=d[0][\"embedding\"]; print(len(d), \"vectors of\", len(v), \"norm\", round(sum(x*x for x in v), 4))'"
      kill -TERM $spid; wait $spid ;;
    bench-cpu)
      run bench-cpu "$BIN/bench" --backend cpu,cuda --threads 16 --pp 128 --tg 32 --reps 1 \
        "$TWINS/smollm2-twin.gguf" "$TWINS/qwen2-twin.gguf" "$TWINS/gemma3-twin.gguf" ;;
    sanitize)
      run sanitize-ops env FORGE_ACT16=1 compute-sanitizer --tool memcheck --report-api-errors no --leak-check full --error-exitcode 1 "$BIN/device_ops" --test-threads 1 \
        attention rope_qkv rmsnorm gated_ffn embedding_rows matmul_all_types pair_products mmq_products mmf_products attention_mixed topk_candidates
      run sanitize-model env FORGE_ACT16=1 compute-sanitizer --tool memcheck --report-api-errors no --leak-check full --error-exitcode 1 "$BIN/gpu_model" smollm2_twin batched_smollm2_twin long_decode_smollm2_twin_paged ;;
    llama-build)
      # llama.cpp's llama-bench and llama-batched-bench from $HEADS/llama.cpp.tar.xz
      # (gpu_prepare.sh), the CUDA configuration; about 5 minutes
      rm -rf /tmp/llama.cpp && mkdir -p /tmp/llama.cpp && tar -C /tmp/llama.cpp -xJf "$HEADS/llama.cpp.tar.xz"
      run llama-build bash -c "cmake -S /tmp/llama.cpp -B /tmp/llama-build -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON \
        -DCMAKE_CUDA_ARCHITECTURES=90 -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_HTML=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF && cmake --build /tmp/llama-build --target llama-bench llama-batched-bench -j 16" ;;
    llama-side)
      # the figures side by side in one run: llama.cpp (flash attention
      # on, every layer on the GPU), then ours, on the same twins
      L=/tmp/llama-build/bin
      for tw in ${SIDE_TWINS:-qwen2-twin llama7b-q4_0-twin}; do
        run side-llama-bench-$tw "$L/llama-bench" -m "$TWINS/$tw.gguf" -ngl 99 -fa 1 -p 512 -n 128 -r 3
        run side-ours-bench-$tw "$BIN/bench" --backend cuda --pp 512 --tg 128 --reps 3 "$TWINS/$tw.gguf"
        run side-llama-batched-$tw "$L/llama-batched-bench" -m "$TWINS/$tw.gguf" -ngl 99 -fa 1 -c 70000 -npp 128 -ntg 128 -npl ${NPL:-1,8,32,64,128,256}
        run side-ours-batched-$tw "$BIN/batched_bench" --backend cuda -m "$TWINS/$tw.gguf" -npp 128 -ntg 128 -npl ${NPL:-1,8,32,64,128,256}
      done
      # long contexts on the Qwen twin: pp16384 and tg128 at depth 16384
      run side-llama-long "$L/llama-bench" -m "$TWINS/qwen2-twin.gguf" -ngl 99 -fa 1 -p 16384 -n 0 -r 1
      run side-llama-long-tg "$L/llama-bench" -m "$TWINS/qwen2-twin.gguf" -ngl 99 -fa 1 -p 0 -n 128 -d 16384 -r 1
      # three repetitions (the median): the first pays first-use costs that
      # llama-bench hides behind its own warm-up run
      run side-ours-long "$BIN/bench" --backend cuda --pp 16384 --tg 128 --depth 16384 --reps 3 "$TWINS/qwen2-twin.gguf" ;;
    collective)
      # issue 19's communicator: NCCL at run time, one rank per visible GPU
      lib=$(python3 -c "import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], 'lib', 'libnccl.so.2'))" 2>/dev/null)
      [ -f "$lib" ] || lib=$(find / -xdev -name 'libnccl.so.2' 2>/dev/null | head -n1)
      run collective env FORGE_NCCL_LIB="$lib" "$BIN/gpu_collective" --nocapture ;;
    real)
      run real env FORGE_ACT16=1 FORGE_REAL_SMOLLM2="${REAL_SMOLLM2:?}" "$BIN/gpu_model" real_smollm2 --nocapture ;;
    *) echo "unknown step $step"; exit 2 ;;
  esac
done
