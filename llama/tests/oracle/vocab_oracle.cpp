// Makes the expected ids of llama/tests/vocab_extra/: llama.cpp's own
// llama_tokenize (add_special = false, parse_special = false, as
// test-tokenizer-0) over inputs split by "\n__ggml_vocab_test__\n", one line
// of ids per input. Not part of the crate and not built by make: it needs
// the pinned sdist's llama.cpp built as static libraries, e.g.
//
//   L=vendor/llama-cpp-python-0.3.36/vendor/llama.cpp
//   cmake -S $L -B /tmp/llbuild -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
//         -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
//         -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF
//   cmake --build /tmp/llbuild --target llama -j
//   g++ -std=c++17 -O1 -I$L/include -I$L/ggml/include llama/tests/oracle/vocab_oracle.cpp \
//       /tmp/llbuild/src/libllama.a /tmp/llbuild/ggml/src/libggml.a \
//       /tmp/llbuild/ggml/src/libggml-cpu.a /tmp/llbuild/ggml/src/libggml-base.a \
//       -lpthread -ldl -lm -o /tmp/vocab_oracle
//   /tmp/vocab_oracle $L/models/ggml-vocab-bert-bge.gguf llama/tests/vocab_extra/inputs.txt \
//       > llama/tests/vocab_extra/bert-bge.out
#include "llama.h"
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char ** argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s VOCAB.gguf INPUTS\n", argv[0]);
        return 2;
    }
    llama_backend_init();
    llama_log_set([](ggml_log_level, const char *, void *) {}, nullptr);
    auto mp = llama_model_default_params();
    mp.vocab_only = true;
    llama_model * m = llama_model_load_from_file(argv[1], mp);
    if (!m) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    const llama_vocab * v = llama_model_get_vocab(m);
    std::ifstream f(argv[2], std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    const std::string all = ss.str();
    const std::string sep = "\n__ggml_vocab_test__\n";
    for (size_t pos = 0;;) {
        size_t e = all.find(sep, pos);
        if (e == std::string::npos) e = all.size();
        const std::string t = all.substr(pos, e - pos);
        std::vector<llama_token> ids(t.size() * 4 + 16);
        const int n = llama_tokenize(v, t.data(), (int) t.size(), ids.data(), (int) ids.size(), false, false);
        for (int i = 0; i < n; i++) printf("%s%d", i ? " " : "", ids[i]);
        printf("\n");
        if (e == all.size()) break;
        pos = e + sep.size();
    }
    llama_model_free(m);
    return 0;
}
