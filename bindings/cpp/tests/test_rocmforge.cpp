// Tests for rocmforge.hpp, run by ctest. Needs ROCMFORGE_MODEL (SmolLM2 GGUF)
// and ROCMFORGE_C_IDS (a file holding the C example's "ids: ..." line for
// the same prompt).
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "rocmforge.hpp"

static int passed = 0, failed = 0;
#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (cond) {                                                                    \
            passed++;                                                                  \
        } else {                                                                       \
            failed++;                                                                  \
            std::cerr << __FILE__ << ":" << __LINE__ << ": FAILED: " #cond << "\n";      \
        }                                                                              \
    } while (0)

template <class F>
static forge_status status_of(F &&f) {
    try {
        f();
    } catch (const rocmforge::Error &e) {
        return e.status();
    }
    return FORGE_OK;
}

static std::vector<int32_t> c_example_ids(const char *file) {
    std::ifstream in(file);
    std::string line;
    std::vector<int32_t> ids;
    while (std::getline(in, line))
        if (line.rfind("ids:", 0) == 0) {
            std::istringstream s(line.substr(4));
            int32_t v;
            while (s >> v) ids.push_back(v);
        }
    return ids;
}

int main() {
    const char *model = std::getenv("ROCMFORGE_MODEL");
    const char *cids = std::getenv("ROCMFORGE_C_IDS");
    if (!model || !cids) {
        std::cerr << "set ROCMFORGE_MODEL and ROCMFORGE_C_IDS\n";
        return 2;
    }
    rocmforge::LoadOptions lo;
    lo.n_ctx = 512;
    auto ctx = rocmforge::Context::load(model, lo);

    // 1. the same greedy ids as the C example, for the same prompt
    {
        rocmforge::Sampler greedy(rocmforge::SamplerOptions::greedy());
        auto r = ctx.generate(greedy, ctx.tokenize("The capital of France is"), 32, [](int32_t, std::string_view) { return true; });
        auto want = c_example_ids(cids);
        CHECK(!want.empty());
        CHECK(r.tokens == want);
        CHECK(r.text.find("Paris") != std::string::npos);
    }
    // 2. a bad model path is a clear error
    {
        std::string msg;
        forge_status st = FORGE_OK;
        try {
            rocmforge::Context::load("/nonexistent/model.gguf");
        } catch (const rocmforge::Error &e) {
            st = e.status();
            msg = e.what();
        }
        CHECK(st == FORGE_ERR_IO);
        CHECK(msg.find("/nonexistent/model.gguf") != std::string::npos);
    }
    // 3. use after close (or move) fails cleanly
    {
        auto other = ctx.clone_session();
        other.close();
        CHECK(status_of([&] { (void)other.tokenize("hi"); }) == FORGE_ERR_NULL_POINTER);
        auto moved = ctx.clone_session();
        auto to = std::move(moved);
        CHECK(status_of([&] { (void)moved.n_past(); }) == FORGE_ERR_NULL_POINTER);
        CHECK(to.n_past() == 0);
        rocmforge::Sampler s;
        s.close();
        std::vector<float> l(4, 0.f);
        CHECK(status_of([&] { (void)s.sample(l); }) == FORGE_ERR_NULL_POINTER);
    }
    // 4. streaming stops when the consumer stops; exceptions propagate
    {
        auto c2 = ctx.clone_session();
        rocmforge::Sampler greedy(rocmforge::SamplerOptions::greedy());
        int seen = 0;
        auto r = c2.generate(greedy, c2.tokenize("Once upon a time"), 32, [&](int32_t, std::string_view) { return ++seen < 3; });
        CHECK(seen == 3);
        CHECK(r.tokens.size() == 3);
        CHECK(r.reason == FORGE_STOP_CALLBACK);
        auto c3 = ctx.clone_session();
        bool threw = false;
        try {
            c3.generate(greedy, c3.tokenize("Hi"), 8, [](int32_t, std::string_view) -> bool { throw std::runtime_error("stop!"); });
        } catch (const std::runtime_error &e) {
            threw = std::string(e.what()) == "stop!";
        }
        CHECK(threw);
    }
    // 5. errors carry the status: out-of-vocab id, full context
    {
        auto c4 = ctx.clone_session();
        CHECK(status_of([&] { c4.eval({c4.n_vocab()}); }) == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(c4.detokenize(c4.tokenize("round trip ✓", false)) == "round trip ✓");
        CHECK(std::string(c4.info().arch) == "llama");
    }
    // 6. backend choice: AUTO without a usable GPU runs on the CPU; a GPU
    //    backend that is not compiled in or has no device is a status
    {
        CHECK(ctx.backend().rfind("cpu (", 0) == 0);
        CHECK(rocmforge::backend_compiled(FORGE_BACKEND_CPU));
        CHECK(rocmforge::device_count(FORGE_BACKEND_CPU) == 1);
        for (forge_backend b : {FORGE_BACKEND_CUDA, FORGE_BACKEND_HIP}) {
            int n = 0;
            forge_status st = status_of([&] { n = rocmforge::device_count(b); });
            rocmforge::LoadOptions gl;
            gl.n_ctx = 64;
            gl.backend = b;
            std::string where;
            forge_status lst = status_of([&] { where = rocmforge::Context::load(model, gl).backend(); });
            if (!rocmforge::backend_compiled(b) || st != FORGE_OK) {
                CHECK(st == FORGE_ERR_BACKEND_UNAVAILABLE);
                CHECK(lst == FORGE_ERR_BACKEND_UNAVAILABLE);
            } else {
                CHECK(n > 0);
                CHECK(lst == FORGE_OK && where.rfind(b == FORGE_BACKEND_CUDA ? "cuda:" : "hip:", 0) == 0);
            }
        }
        rocmforge::LoadOptions cl;
        cl.n_ctx = 64;
        cl.backend = FORGE_BACKEND_CPU;
        cl.n_threads = 1;
        CHECK(rocmforge::Context::load(model, cl).backend() == "cpu (1 threads)");
    }
    std::cout << passed << " passed, " << failed << " failed\n";
    return failed ? 1 : 0;
}
