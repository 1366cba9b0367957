// Tests for rocmforge.hpp, run by ctest. Needs ROCMFORGE_MODEL (SmolLM2 GGUF)
// and ROCMFORGE_C_IDS (a file holding the C example's "ids: ..." line for
// the same prompt).
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <limits>
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

/// The status and message of the Error `f` throws (FORGE_OK, "" if none).
template <class F>
static std::pair<forge_status, std::string> error_of(F &&f) {
    try {
        f();
    } catch (const rocmforge::Error &e) {
        return {e.status(), e.what()};
    }
    return {FORGE_OK, ""};
}
static bool has(const std::string &s, const char *word) { return s.find(word) != std::string::npos; }

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

/// The first index of the largest logit (the library's greedy choice).
static int32_t argmax(const std::vector<float> &l) {
    size_t best = 0;
    for (size_t i = 1; i < l.size(); i++)
        if (l[i] > l[best]) best = i;
    return static_cast<int32_t>(best);
}
/// Rows appending `tokens` to `seq` from position `pos`; the last asks for logits.
static std::vector<rocmforge::BatchRow> prefill_rows(int32_t seq, size_t pos, const std::vector<int32_t> &tokens) {
    std::vector<rocmforge::BatchRow> rows;
    for (size_t i = 0; i < tokens.size(); i++)
        rows.push_back({seq, tokens[i], static_cast<int32_t>(pos + i), i + 1 == tokens.size()});
    return rows;
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
    // embeddings: a decoder's (SmolLM2, mean of its final hidden states),
    // and the encoder nomic-embed-text (beside the test model in models/)
    {
        int d = ctx.info().n_embd;
        auto e = ctx.embed("The capital of France is");
        CHECK(static_cast<int>(e.size()) == d);
        double norm = 0;
        for (float x : e) norm += double(x) * x;
        CHECK(std::abs(std::sqrt(norm) - 1.0) < 1e-4);
        CHECK(ctx.embed(ctx.tokenize("The capital of France is")) == e);
        auto toks = ctx.tokenize("Hi there");
        CHECK(ctx.embed(toks, rocmforge::Pooling::None, false).size() == toks.size() * d);
        CHECK(!ctx.is_encoder() && ctx.pooling() == rocmforge::Pooling::Mean);
        CHECK(status_of([&] { (void)ctx.embed(std::vector<int32_t>{-1}); }) == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(status_of([&] { (void)ctx.embed(std::vector<int32_t>{}); }) == FORGE_ERR_INVALID_ARGUMENT);

        auto nomic_path = std::filesystem::path(model).parent_path() / "nomic-embed-text-v1.5.f16.gguf";
        CHECK(std::filesystem::exists(nomic_path));
        auto nomic = rocmforge::Context::load(nomic_path.string());
        CHECK(nomic.is_encoder() && nomic.pooling() == rocmforge::Pooling::Mean);
        auto dot = [](const std::vector<float> &a, const std::vector<float> &b) {
            double s = 0;
            for (size_t i = 0; i < a.size(); i++) s += double(a[i]) * b[i];
            return s;
        };
        auto q = nomic.embed("search_query: What is the tallest mountain on Earth?");
        auto right = nomic.embed("search_document: Mount Everest, in the Himalayas, rises 8,849 metres above sea level.");
        auto wrong = nomic.embed("search_document: Sourdough bread rises thanks to wild yeast.");
        CHECK(q.size() == 768);
        CHECK(dot(q, right) > dot(q, wrong) + 0.1);
        CHECK(status_of([&] { (void)nomic.eval({101, 102}); }) == FORGE_ERR_UNSUPPORTED);
        CHECK(status_of([&] { (void)nomic.embed(std::vector<int32_t>(2049, 1996)); }) == FORGE_ERR_INVALID_ARGUMENT);
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
    // 7. values the C ABI rejects are INVALID_ARGUMENT, never a crash: a
    //    backend that is not a forge_backend (the binding passes it on as
    //    int32_t; 42 fits an int, the enum's underlying type with GCC and
    //    Clang), threads above FORGE_MAX_THREADS, a context above FORGE_MAX_CTX
    {
        const auto bad = static_cast<forge_backend>(42);
        CHECK(!rocmforge::backend_compiled(bad));
        int n = -7;
        auto [dst, dmsg] = error_of([&] { n = rocmforge::device_count(bad); });
        CHECK(dst == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(has(dmsg, "forge_device_count") && has(dmsg, "not a forge_backend"));
        CHECK(n == -7);
        rocmforge::LoadOptions bl;
        bl.n_ctx = 64;
        bl.backend = bad;
        auto [lst, lmsg] = error_of([&] { (void)rocmforge::Context::load(model, bl); });
        CHECK(lst == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(has(lmsg, "backend 42"));
        rocmforge::LoadOptions tl;
        tl.n_ctx = 64;
        tl.n_threads = FORGE_MAX_THREADS + 1;
        auto [tst, tmsg] = error_of([&] { (void)rocmforge::Context::load(model, tl); });
        CHECK(tst == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(has(tmsg, "FORGE_MAX_THREADS"));
        rocmforge::LoadOptions cl;
        cl.n_ctx = FORGE_MAX_CTX + 1u;
        CHECK(status_of([&] { (void)rocmforge::Context::load(model, cl); }) == FORGE_ERR_INVALID_ARGUMENT);
        // NaN / +inf / all -inf logits are refused by the sampler
        rocmforge::Sampler s(rocmforge::SamplerOptions::greedy());
        const float inf = std::numeric_limits<float>::infinity();
        std::vector<float> nan_l{0.f, std::nanf(""), 1.f}, inf_l{0.f, inf}, ninf_l{-inf, -inf};
        CHECK(status_of([&] { (void)s.sample(nan_l); }) == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(status_of([&] { (void)s.sample(inf_l); }) == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(status_of([&] { (void)s.sample(ninf_l); }) == FORGE_ERR_INVALID_ARGUMENT);
        std::vector<float> ok_l{0.f, 2.f, 1.f};
        CHECK(s.sample(ok_l) == 1);
    }
    // 8. a file that is not a whole GGUF model is INVALID_MODEL; a directory
    //    is IO and says so
    {
        namespace fs = std::filesystem;
        const fs::path dir = fs::temp_directory_path() / ("rocmforge_cpp_test_" + std::to_string(getpid()));
        fs::create_directories(dir);
        std::ifstream in(model, std::ios::binary);
        std::string head(4096, '\0');
        in.read(head.data(), static_cast<std::streamsize>(head.size()));
        CHECK(in.gcount() == 4096);
        const std::string garbage = std::string("GGUF") + std::string("\x03\0\0\0garbage garbage garbage \xff\xff\xff\xff\xff\xff\xff\xff", 36);
        const std::vector<std::pair<std::string, std::string>> files{
            {"garbage.gguf", garbage}, {"truncated.gguf", head}, {"empty.gguf", ""}};
        for (const auto &[name, bytes] : files) {
            const fs::path f = dir / name;
            std::ofstream(f, std::ios::binary) << bytes;
            auto [st, msg] = error_of([&] { (void)rocmforge::Context::load(f.string()); });
            CHECK(st == FORGE_ERR_INVALID_MODEL);
            CHECK(has(msg, "corrupt GGUF"));
            if (st != FORGE_ERR_INVALID_MODEL) std::cerr << "  " << name << ": " << st << " " << msg << "\n";
        }
        auto [dst, dmsg] = error_of([&] { (void)rocmforge::Context::load(dir.string()); });
        CHECK(dst == FORGE_ERR_IO);
        CHECK(has(dmsg, "directory"));
        fs::remove_all(dir);
    }
    // 9. a moved-from or closed handle throws NULL_POINTER from every call
    {
        auto a = ctx.clone_session();
        auto b = std::move(a);
        rocmforge::Sampler s1(rocmforge::SamplerOptions::greedy());
        rocmforge::Sampler s2 = std::move(s1);
        const std::vector<int32_t> ids = b.tokenize("Hello");
        auto is_null = [](forge_status st) { return st == FORGE_ERR_NULL_POINTER; };
        CHECK(is_null(status_of([&] { (void)a.tokenize("hi"); })));
        CHECK(is_null(status_of([&] { (void)a.detokenize(ids); })));
        CHECK(is_null(status_of([&] { (void)a.eval(ids); })));
        CHECK(is_null(status_of([&] { a.kv_reset(); })));
        CHECK(is_null(status_of([&] { (void)a.n_vocab(); })));
        CHECK(is_null(status_of([&] { (void)a.info(); })));
        CHECK(is_null(status_of([&] { (void)a.backend(); })));
        CHECK(is_null(status_of([&] { (void)a.clone_session(); })));
        CHECK(is_null(status_of([&] { (void)a.generate(s2, ids, 4, [](int32_t, std::string_view) { return true; }); })));
        // a live context with a moved-from sampler: nothing is evaluated
        CHECK(is_null(status_of([&] { (void)b.generate(s1, ids, 4, [](int32_t, std::string_view) { return true; }); })));
        CHECK(b.n_past() == 0);
        CHECK(is_null(status_of([&] { s1.reset(); })));
        a.close();  // closing a moved-from handle is a no-op
        b.close();
        b.close();
        CHECK(is_null(status_of([&] { (void)b.n_past(); })));
        std::vector<float> l{0.f, 1.f};
        CHECK(s2.sample(l) == 1);  // the moved-to sampler works
    }
    // 10. BUSY: a generate() callback calling eval/kv_reset on its own
    //     Context, or using the Sampler it runs with, gets FORGE_ERR_BUSY
    //     (rethrown from generate); model-only calls still work there
    {
        auto c = ctx.clone_session();
        rocmforge::Sampler greedy(rocmforge::SamplerOptions::greedy());
        const auto prompt = c.tokenize("Once upon a time");
        std::vector<std::pair<forge_status, std::string>> inner;
        std::string piece_text;
        size_t past_inside = 0;
        auto r = c.generate(greedy, prompt, 2, [&](int32_t tok, std::string_view) {
            if (tok < 0) return true;  // the final flush of held-back text
            inner.push_back(error_of([&] { (void)c.eval({tok}); }));
            inner.push_back(error_of([&] { c.kv_reset(); }));
            inner.push_back(error_of([&] { greedy.reset(); }));
            piece_text += c.detokenize({tok});  // model-only: allowed
            past_inside = c.n_past();           // never busy: the position before this generate
            return true;
        });
        CHECK(r.tokens.size() == 2);
        CHECK(inner.size() == 6);
        for (auto &[st, msg] : inner) {
            CHECK(st == FORGE_ERR_BUSY);
            CHECK(has(msg, "in use by another call"));
        }
        CHECK(piece_text == c.detokenize(r.tokens));
        CHECK(past_inside == 0);
        // the refused calls did nothing: the same tokens and KV cache length
        // as the same generation without them
        auto clean = ctx.clone_session();
        rocmforge::Sampler greedy2(rocmforge::SamplerOptions::greedy());
        auto r2 = clean.generate(greedy2, prompt, 2, [](int32_t, std::string_view) { return true; });
        CHECK(r.tokens == r2.tokens);
        CHECK(c.n_past() == clean.n_past());
        CHECK(c.n_past() >= prompt.size() + 1);
        // a BUSY thrown out of the callback stops generate and is rethrown
        c.kv_reset();
        auto [st, msg] = error_of([&] {
            (void)c.generate(greedy, prompt, 8, [&](int32_t, std::string_view) {
                c.kv_reset();
                return true;
            });
        });
        CHECK(st == FORGE_ERR_BUSY);
        CHECK(has(msg, "forge_kv_reset"));
        // and the context is usable afterwards
        c.kv_reset();
        CHECK(c.eval(prompt).size() == static_cast<size_t>(c.n_vocab()));
    }
    // 11. the engine: two sequences interleaved in one batch per step each
    //     get exactly their solo greedy tokens
    {
        const std::vector<std::string> prompts{"The capital of France is", "Once upon a time"};
        const size_t steps = 8;
        std::vector<std::vector<int32_t>> ptoks, solo;
        for (auto &p : prompts) {
            auto c = ctx.clone_session();
            rocmforge::Sampler greedy(rocmforge::SamplerOptions::greedy());
            ptoks.push_back(c.tokenize(p));
            solo.push_back(c.generate(greedy, ptoks.back(), steps, [](int32_t, std::string_view) { return true; }).tokens);
            CHECK(solo.back().size() == steps);
        }
        CHECK(solo[0] != solo[1]);
        rocmforge::Engine eng(ctx);
        CHECK(eng.n_vocab() == ctx.n_vocab());
        std::vector<int32_t> seqs{eng.seq_new(), eng.seq_new()};
        CHECK(seqs[0] != seqs[1]);
        // both prompts in ONE decode; the logits rows are each prompt's last
        std::vector<rocmforge::BatchRow> rows;
        std::vector<size_t> logit_row;
        for (size_t i = 0; i < 2; i++) {
            auto r = prefill_rows(seqs[i], 0, ptoks[i]);
            rows.insert(rows.end(), r.begin(), r.end());
            logit_row.push_back(rows.size() - 1);
        }
        eng.decode(rows);
        std::vector<std::vector<int32_t>> got(2);
        std::vector<float> l;
        for (size_t i = 0; i < 2; i++) {
            eng.logits(logit_row[i], l);
            got[i].push_back(argmax(l));
        }
        // rows that did not ask for logits have none
        CHECK(status_of([&] { (void)eng.logits(0); }) == FORGE_ERR_INVALID_ARGUMENT);
        while (got[0].size() < steps) {
            std::vector<rocmforge::BatchRow> step;
            for (size_t i = 0; i < 2; i++)
                step.push_back({seqs[i], got[i].back(), static_cast<int32_t>(eng.seq_len(seqs[i])), true});
            eng.decode(step);
            for (size_t i = 0; i < 2; i++) got[i].push_back(argmax(eng.logits(i)));
        }
        CHECK(got[0] == solo[0]);
        CHECK(got[1] == solo[1]);
        CHECK(eng.seq_len(seqs[0]) == ptoks[0].size() + steps - 1);
        if (got[0] != solo[0] || got[1] != solo[1]) {
            for (size_t i = 0; i < 2; i++) {
                std::cerr << "  seq " << i << " engine:";
                for (auto t : got[i]) std::cerr << ' ' << t;
                std::cerr << "\n  seq " << i << " solo:  ";
                for (auto t : solo[i]) std::cerr << ' ' << t;
                std::cerr << "\n";
            }
        }

        // fork: the same next token as its source
        const int32_t src = seqs[0];
        const int32_t f = eng.seq_fork(src);
        CHECK(eng.seq_len(f) == eng.seq_len(src));
        const int32_t pos = static_cast<int32_t>(eng.seq_len(src));
        eng.decode({{src, got[0].back(), pos, true}, {f, got[0].back(), pos, true}});
        const int32_t next_src = argmax(eng.logits(0)), next_fork = argmax(eng.logits(1));
        CHECK(next_src == next_fork);
        // keep truncates; the stats see every sequence, then none
        eng.seq_keep(f, 3);
        CHECK(eng.seq_len(f) == 3);
        auto st = eng.stats();
        CHECK(st.n_seqs == 3);
        CHECK(st.blocks_used > 0);
        CHECK(st.block_size == 16);
        CHECK(st.blocks_used + st.blocks_free == st.blocks_total);

        // invalid sequence ids are INVALID_ARGUMENT, and change nothing
        for (int32_t bad : {-1, 999}) {
            auto [s1, m1] = error_of([&] { (void)eng.seq_len(bad); });
            CHECK(s1 == FORGE_ERR_INVALID_ARGUMENT);
            CHECK(status_of([&] { eng.seq_free(bad); }) == FORGE_ERR_INVALID_ARGUMENT);
            CHECK(status_of([&] { (void)eng.seq_fork(bad); }) == FORGE_ERR_INVALID_ARGUMENT);
            CHECK(status_of([&] { eng.seq_keep(bad, 0); }) == FORGE_ERR_INVALID_ARGUMENT);
            CHECK(status_of([&] { eng.decode({{bad, 1, 0, true}}); }) == FORGE_ERR_INVALID_ARGUMENT);
        }
        CHECK(status_of([&] { eng.decode({}); }) == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(status_of([&] { eng.seq_keep(src, eng.seq_len(src) + 1); }) == FORGE_ERR_INVALID_ARGUMENT);
        // a wrong position is refused whole: the other row did not move either
        const size_t before = eng.seq_len(src);
        CHECK(status_of([&] { eng.decode({{src, 1, static_cast<int32_t>(before), false}, {seqs[1], 1, 0, false}}); }) ==
              FORGE_ERR_INVALID_ARGUMENT);
        CHECK(eng.seq_len(src) == before);
        CHECK(eng.stats().n_seqs == 3);

        // the prefix cache: a freed sequence's full blocks serve the next
        // one with the same prompt, with the same next token
        std::vector<int32_t> longp = ctx.tokenize(
            "The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again and again.");
        CHECK(longp.size() > 17);
        const int32_t a = eng.seq_new();
        eng.decode(prefill_rows(a, 0, longp));
        const int32_t want_next = argmax(eng.logits(longp.size() - 1));
        eng.seq_free(a);
        const int32_t b = eng.seq_new();
        const size_t reused = eng.seq_reuse_prefix(b, longp);
        CHECK(reused == (longp.size() - 1) / 16 * 16);
        CHECK(eng.seq_len(b) == reused);
        eng.decode(prefill_rows(b, reused, std::vector<int32_t>(longp.begin() + static_cast<long>(reused), longp.end())));
        CHECK(argmax(eng.logits(longp.size() - reused - 1)) == want_next);
        CHECK(eng.stats().prefix_hits >= 1);
        CHECK(status_of([&] { (void)eng.seq_reuse_prefix(b, longp); }) == FORGE_ERR_INVALID_ARGUMENT);  // not empty

        // freeing every sequence gives every block back
        for (int32_t s : {seqs[0], seqs[1], f, b}) eng.seq_free(s);
        st = eng.stats();
        CHECK(st.blocks_used == 0);
        CHECK(st.n_seqs == 0);
        CHECK(st.blocks_free == st.blocks_total);
        CHECK(status_of([&] { eng.seq_free(b); }) == FORGE_ERR_INVALID_ARGUMENT);  // already freed

        // move and close: NULL_POINTER, never a double free
        rocmforge::Engine moved = std::move(eng);
        CHECK(status_of([&] { (void)eng.seq_new(); }) == FORGE_ERR_NULL_POINTER);
        CHECK(status_of([&] { (void)eng.stats(); }) == FORGE_ERR_NULL_POINTER);
        eng.close();
        CHECK(moved.stats().n_seqs == 0);
        moved.close();
        moved.close();
        CHECK(status_of([&] { (void)moved.logits(0); }) == FORGE_ERR_NULL_POINTER);
    }
    // 12. KV exhaustion: a 1-byte budget is the smallest pool (one
    //     sequence's n_ctx plus a block); a second sequence that needs more
    //     blocks than are left gets KV_EXHAUSTED, and the engine stays usable
    {
        rocmforge::EngineOptions o;
        o.n_ctx = 64;
        o.kv_budget = 1;
        rocmforge::Engine eng(ctx, o);
        auto st = eng.stats();
        CHECK(st.blocks_total == 64 / 16 + 1);
        std::vector<int32_t> toks(48);
        for (size_t i = 0; i < toks.size(); i++) toks[i] = static_cast<int32_t>(100 + i);
        const int32_t a = eng.seq_new(), b = eng.seq_new();
        eng.decode(prefill_rows(a, 0, toks));  // 3 blocks of 5
        auto [s1, m1] = error_of([&] { eng.decode(prefill_rows(b, 0, toks)); });
        CHECK(s1 == FORGE_ERR_KV_EXHAUSTED);
        CHECK(has(m1, "forge_engine_decode") && has(m1, "blocks"));
        CHECK(eng.seq_len(b) == 0);  // nothing moved
        CHECK(eng.seq_len(a) == toks.size());
        // one more row each still fits (5 blocks in all); 32 more for b do not
        CHECK(status_of([&] { eng.decode({{a, 1, 48, false}, {b, 1, 0, false}}); }) == FORGE_OK);
        CHECK(status_of([&] { eng.decode(prefill_rows(b, 1, std::vector<int32_t>(32, 7))); }) == FORGE_ERR_KV_EXHAUSTED);
        CHECK(eng.seq_len(b) == 1);
        // usable afterwards: free the first, then the second fits
        eng.seq_free(a);
        eng.decode(prefill_rows(b, 1, std::vector<int32_t>(toks.begin(), toks.end() - 1)));
        CHECK(eng.seq_len(b) == toks.size());
        CHECK(eng.logits(toks.size() - 2).size() == static_cast<size_t>(ctx.n_vocab()));
        eng.seq_free(b);
        CHECK(eng.stats().blocks_used == 0);
        // an engine outlives the Context it was made from (it keeps the weights)
        auto c2 = ctx.clone_session();
        rocmforge::Engine e2(c2, o);
        c2.close();
        const int32_t s = e2.seq_new();
        e2.decode(prefill_rows(s, 0, ctx.tokenize("Hello")));
        CHECK(e2.seq_len(s) == ctx.tokenize("Hello").size());
        // a closed Context cannot make one
        CHECK(status_of([&] { rocmforge::Engine e3(c2); }) == FORGE_ERR_NULL_POINTER);
        // n_ctx above FORGE_MAX_CTX
        rocmforge::EngineOptions big;
        big.n_ctx = FORGE_MAX_CTX + 1u;
        CHECK(status_of([&] { rocmforge::Engine e4(ctx, big); }) == FORGE_ERR_INVALID_ARGUMENT);
    }
    // 13. preemption: a pool of exactly 6 blocks (SmolLM2-135M keeps
    //     (kv_dim + v_dim) * 2 bytes * n_layer = (192 + 192) * 2 * 30 bytes
    //     per position, 16 positions a block). a and b hold 20 positions (2
    //     blocks each), the newer c 1 (1 block); 20 more rows each need a, b
    //     at 3 blocks and c at 2: 8 > 6. Without preemption that batch is
    //     KV_EXHAUSTED; with it c is preempted (a and b then fill the 6
    //     blocks), its rows get no logits and it holds nothing. The option
    //     and set_preempt do the same.
    {
        rocmforge::EngineOptions o;
        o.n_ctx = 48;
        o.kv_budget = 6ull * 16 * (192 + 192) * 2 * 30;
        std::vector<int32_t> toks(20);
        for (size_t i = 0; i < toks.size(); i++) toks[i] = static_cast<int32_t>(100 + i);
        for (bool preempt : {false, true}) {
            o.preempt = preempt;
            rocmforge::Engine eng(ctx, o);
            CHECK(eng.stats().blocks_total == 6);
            const int32_t a = eng.seq_new(), b = eng.seq_new();
            auto rows = prefill_rows(a, 0, toks);
            for (auto &r : prefill_rows(b, 0, toks)) rows.push_back(r);
            eng.decode(rows);
            CHECK(eng.preempted().empty());
            const int32_t c = eng.seq_new();
            eng.decode({{c, 1, 0, false}});
            CHECK(eng.stats().blocks_used == 5);
            rows = prefill_rows(a, 20, toks);  // a's last row: 19
            for (auto &r : prefill_rows(b, 20, toks)) rows.push_back(r);  // b's: 39
            for (auto &r : prefill_rows(c, 1, toks)) rows.push_back(r);   // c's: 59
            if (!preempt) {
                auto [st, msg] = error_of([&] { eng.decode(rows); });
                CHECK(st == FORGE_ERR_KV_EXHAUSTED);
                CHECK(has(msg, "blocks"));
                CHECK(eng.preempted().empty());
                CHECK(eng.seq_len(a) == 20 && eng.seq_len(b) == 20 && eng.seq_len(c) == 1);
                eng.set_preempt(true);  // the same batch now runs
            }
            CHECK(status_of([&] { eng.decode(rows); }) == FORGE_OK);
            CHECK(eng.preempted() == std::vector<int32_t>{c});
            CHECK(eng.seq_len(c) == 0);
            CHECK(eng.seq_len(a) == 40 && eng.seq_len(b) == 40);
            CHECK(eng.stats().blocks_used == 6);
            CHECK(eng.logits(19).size() == static_cast<size_t>(ctx.n_vocab()));
            CHECK(eng.logits(39).size() == static_cast<size_t>(ctx.n_vocab()));
            CHECK(status_of([&] { (void)eng.logits(59); }) == FORGE_ERR_INVALID_ARGUMENT);
            // the next decode that needs no preemption names none
            eng.decode({{a, 1, 40, true}});
            CHECK(eng.preempted().empty());
            CHECK(eng.logits(0).size() == static_cast<size_t>(ctx.n_vocab()));
            // turned off again, a batch that does not fit is refused
            eng.set_preempt(false);
            CHECK(status_of([&] { eng.decode(prefill_rows(c, 0, toks)); }) == FORGE_ERR_KV_EXHAUSTED);
            CHECK(eng.seq_len(b) == 40 && eng.seq_len(c) == 0);
            eng.close();
            CHECK(status_of([&] { (void)eng.preempted(); }) == FORGE_ERR_NULL_POINTER);
            CHECK(status_of([&] { eng.set_preempt(true); }) == FORGE_ERR_NULL_POINTER);
        }
    }
    // 14. top-k candidates: the same two prompts in one batch, once with
    //     full logits and once under set_top_k(5) in a fresh engine: the
    //     5 ids are the full row's 5 largest (ties: the lower id) in
    //     descending order with the same values, and lse is the row's
    //     log-sum-exp; k above FORGE_TOP_MAX is refused and changes nothing;
    //     each mode refuses the other's read; set_top_k(0) gives full logits
    {
        const std::vector<std::vector<int32_t>> ptoks{ctx.tokenize("The capital of France is"),
                                                      ctx.tokenize("Once upon a time")};
        // both prompts in one batch; returns the logits row of each
        auto prefill_both = [&](rocmforge::Engine &eng, const std::vector<int32_t> &seqs) {
            std::vector<rocmforge::BatchRow> rows;
            std::vector<size_t> logit_row;
            for (size_t i = 0; i < 2; i++) {
                auto r = prefill_rows(seqs[i], 0, ptoks[i]);
                rows.insert(rows.end(), r.begin(), r.end());
                logit_row.push_back(rows.size() - 1);
            }
            eng.decode(rows);
            return logit_row;
        };
        rocmforge::Engine full(ctx);
        std::vector<int32_t> fseqs{full.seq_new(), full.seq_new()};
        const auto lrow = prefill_both(full, fseqs);
        std::vector<std::vector<float>> want{full.logits(lrow[0]), full.logits(lrow[1])};
        auto [fst, fmsg] = error_of([&] { (void)full.top(lrow[0]); });  // full mode: no candidates
        CHECK(fst == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(has(fmsg, "forge_engine_top") && has(fmsg, "set_top_k"));

        rocmforge::Engine eng(ctx);
        auto [kst, kmsg] = error_of([&] { eng.set_top_k(FORGE_TOP_MAX + 1); });
        CHECK(kst == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(has(kmsg, "forge_engine_set_top_k") && has(kmsg, "256"));
        eng.set_top_k(5);
        std::vector<int32_t> seqs{eng.seq_new(), eng.seq_new()};
        CHECK(prefill_both(eng, seqs) == lrow);
        auto close_to = [](float got, float w) { return std::abs(got - w) <= 1e-5f * std::max(1.0f, std::abs(w)); };
        rocmforge::TopK t;
        std::vector<std::vector<int32_t>> top5;
        for (size_t i = 0; i < 2; i++) {
            const auto &l = want[i];
            std::vector<int32_t> order(l.size());
            for (size_t j = 0; j < l.size(); j++) order[j] = static_cast<int32_t>(j);
            std::partial_sort(order.begin(), order.begin() + 5, order.end(),
                              [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); });
            order.resize(5);
            eng.top(lrow[i], t);
            CHECK(t.ids == order);
            CHECK(t.logits.size() == 5);
            for (size_t j = 0; j < t.logits.size() && j < t.ids.size(); j++) {
                CHECK(close_to(t.logits[j], l[static_cast<size_t>(t.ids[j])]));
                if (j > 0) CHECK(t.logits[j - 1] >= t.logits[j]);
            }
            double mx = l[static_cast<size_t>(order[0])], sum = 0;
            for (float x : l) sum += std::exp(double(x) - mx);
            const double lse = mx + std::log(sum);
            CHECK(std::abs(t.lse - lse) < 1e-3);
            if (t.ids != order || std::abs(t.lse - lse) >= 1e-3) {
                std::cerr << "  row " << i << " top:";
                for (size_t j = 0; j < t.ids.size(); j++) std::cerr << ' ' << t.ids[j] << '=' << t.logits[j];
                std::cerr << " lse " << t.lse << "\n  want:";
                for (auto id : order) std::cerr << ' ' << id << '=' << l[static_cast<size_t>(id)];
                std::cerr << " lse " << lse << "\n";
            }
            CHECK(eng.top(lrow[i]).ids == t.ids);  // the returning overload: the same
            top5.push_back(t.ids);
        }
        // top-k mode: the full logits are not there, and a row that did not
        // ask has no candidates either
        auto [lst, lmsg] = error_of([&] { (void)eng.logits(lrow[0]); });
        CHECK(lst == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(has(lmsg, "forge_engine_logits") && has(lmsg, "forge_engine_top"));
        std::vector<float> buf;
        CHECK(status_of([&] { eng.logits(lrow[1], buf); }) == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(status_of([&] { (void)eng.top(0); }) == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(status_of([&] { (void)eng.top(lrow[1] + 1); }) == FORGE_ERR_INVALID_ARGUMENT);  // no such row
        CHECK(status_of([&] { eng.top(0, t); }) == FORGE_ERR_INVALID_ARGUMENT && t.ids.empty() && t.logits.empty());
        // a refused k changes nothing: still top-5, the results still there
        CHECK(status_of([&] { eng.set_top_k(FORGE_TOP_MAX + 1); }) == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(status_of([&] { eng.set_top_k(std::numeric_limits<uint32_t>::max()); }) == FORGE_ERR_INVALID_ARGUMENT);
        CHECK(eng.top(lrow[1]).ids.size() == 5);
        // the largest k: FORGE_TOP_MAX candidates, the first five as before
        eng.set_top_k(FORGE_TOP_MAX);
        CHECK(status_of([&] { (void)eng.top(lrow[0]); }) == FORGE_ERR_INVALID_ARGUMENT);  // the last results were dropped
        for (int32_t s : seqs) eng.seq_keep(s, 0);
        prefill_both(eng, seqs);
        auto big = eng.top(lrow[0]);
        CHECK(big.ids.size() == FORGE_TOP_MAX);
        CHECK(std::vector<int32_t>(big.ids.begin(), big.ids.begin() + 5) == top5[0]);
        CHECK(std::is_sorted(big.logits.rbegin(), big.logits.rend()));
        // back to full logits: the same as the first engine's
        eng.set_top_k(0);
        for (int32_t s : seqs) eng.seq_keep(s, 0);
        prefill_both(eng, seqs);
        for (size_t i = 0; i < 2; i++) {
            auto l = eng.logits(lrow[i]);
            CHECK(l.size() == want[i].size());
            bool same = l.size() == want[i].size();
            for (size_t j = 0; same && j < l.size(); j++) same = close_to(l[j], want[i][j]);
            CHECK(same);
        }
        CHECK(status_of([&] { (void)eng.top(lrow[0]); }) == FORGE_ERR_INVALID_ARGUMENT);
        // a closed engine
        eng.close();
        CHECK(status_of([&] { eng.set_top_k(5); }) == FORGE_ERR_NULL_POINTER);
        CHECK(status_of([&] { (void)eng.top(0); }) == FORGE_ERR_NULL_POINTER);
    }
    std::cout << passed << " passed, " << failed << " failed\n";
    return failed ? 1 : 0;
}
