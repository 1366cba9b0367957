// Load a model, tokenize a prompt, generate 32 tokens greedily, print the
// text and the ids (same output format as examples/simple.c).
#include <cstdio>
#include <iostream>

#include "rocmforge.hpp"

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    std::string prompt = argc > 2 ? argv[2] : "The capital of France is";
    try {
        rocmforge::LoadOptions lo;
        lo.n_ctx = 512;
        auto ctx = rocmforge::Context::load(path, lo);
        rocmforge::Sampler greedy(rocmforge::SamplerOptions::greedy());
        std::cout << prompt << std::flush;
        auto r = ctx.generate(greedy, ctx.tokenize(prompt), 32, [](int32_t, std::string_view piece) {
            std::cout << piece << std::flush;
            return true;
        });
        std::cout << "\nids:";
        for (int32_t t : r.tokens) std::cout << ' ' << t;
        std::cout << '\n';
    } catch (const rocmforge::Error &e) {
        std::cerr << "error (status " << e.status() << "): " << e.what() << '\n';
        return 1;
    }
    return 0;
}
