// rocmforge.hpp: header-only C++17 wrapper over the C ABI in rocmforge.h.
//
// RAII, move-only handles (Context, Sampler); errors are rocmforge::Error
// exceptions carrying the forge_status and forge_last_error() text; strings
// in as std::string_view, out as std::string; streaming through any callable.
// A Context is one sequence on a loaded model: use it from one thread at a
// time; clone_session() gives another sequence on the same weights. The
// library detects a Context or Sampler used by two calls at once (another
// thread, or a generate() callback calling eval/generate/kv_reset on the
// Context or Sampler it runs on) and throws Error(FORGE_ERR_BUSY) for the
// second call, which did nothing; model-only calls (tokenize, detokenize,
// info, backend, n_past, n_vocab, clone_session) are never busy.
//
// An Engine is many sequences over one loaded model (a paged KV block pool,
// one batch of rows per decode): made from a Context, it shares the weights
// and keeps them loaded on its own, so it may outlive the Context. Its calls
// take it exclusively: a second call meanwhile (another thread) throws
// Error(FORGE_ERR_BUSY) and did nothing.
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "rocmforge.h"

namespace rocmforge {

/// A failed call: the C status and the library's message. status() is e.g.
/// FORGE_ERR_INVALID_ARGUMENT (also a backend value that is not a
/// forge_backend, n_threads above FORGE_MAX_THREADS; an unknown sequence id),
/// FORGE_ERR_INVALID_MODEL (a corrupt or truncated file), FORGE_ERR_BUSY (the
/// handle is in use by another call: retry once it has returned),
/// FORGE_ERR_KV_EXHAUSTED (an Engine's KV pool cannot hold a batch),
/// FORGE_ERR_NULL_POINTER (a handle used after close() or a move).
class Error : public std::runtime_error {
  public:
    Error(forge_status status, const std::string &what) : std::runtime_error(what), status_(status) {}
    [[nodiscard]] forge_status status() const noexcept { return status_; }

  private:
    forge_status status_;
};

namespace detail {
inline void check(forge_status st, const char *what) {
    if (st != FORGE_OK) throw Error(st, std::string(what) + ": " + forge_last_error());
}
/// Text the C API writes into a caller's buffer: a first call with `guess`
/// bytes and, on BUFFER_TOO_SMALL, one more with the size that call reported.
template <class F>
std::string read_string(size_t guess, const char *what, F &&call) {
    std::string s(guess, '\0');
    size_t n = 0;
    forge_status st = call(s.data(), s.size(), &n);
    if (st == FORGE_ERR_BUFFER_TOO_SMALL) {
        s.resize(n);
        st = call(s.data(), s.size(), &n);
    }
    check(st, what);
    s.resize(n);
    return s;
}
/// The ABI this header was written for must be the one the library has.
inline void check_abi() {
    if (forge_abi_version() != FORGE_ABI_VERSION)
        throw Error(FORGE_ERR_UNSUPPORTED, "librocmforge ABI version " + std::to_string(forge_abi_version()) +
                                               " does not match rocmforge.hpp (" + std::to_string(FORGE_ABI_VERSION) +
                                               ")");
}
struct CtxDeleter {
    void operator()(forge_ctx *c) const noexcept { forge_free(c); }
};
struct SamplerDeleter {
    void operator()(forge_sampler *s) const noexcept { forge_sampler_free(s); }
};
struct EngineDeleter {
    void operator()(forge_engine *e) const noexcept { forge_engine_free(e); }
};
}  // namespace detail

struct LoadOptions {
    uint32_t n_threads = 0;  ///< 0..FORGE_MAX_THREADS; 0 = one per core
    uint32_t n_ctx = 0;      ///< 0..FORGE_MAX_CTX; 0 = min(n_ctx_train, 4096)
    /// AUTO: the first GPU of a compiled-in backend, else the CPU. Passed to
    /// the C ABI as int32_t; a value that is not a forge_backend fails the
    /// load with FORGE_ERR_INVALID_ARGUMENT.
    forge_backend backend = FORGE_BACKEND_AUTO;
    int32_t gpu_index = 0;
    uint64_t gpu_mem_budget = 0;  ///< bytes of device memory; 0 = free memory less 5%
    std::function<bool(float)> progress;  ///< return false to cancel
};

/// Whether a backend is compiled into the library (CPU and AUTO always are);
/// false for a value that is not a forge_backend.
[[nodiscard]] inline bool backend_compiled(forge_backend b) {
    return forge_backend_compiled(static_cast<int32_t>(b));
}

/// Devices of a GPU backend this process can use (CPU and AUTO: 1). Throws
/// Error(FORGE_ERR_BACKEND_UNAVAILABLE) when the backend is not compiled in
/// or its driver reports no usable device (the message has the driver's words),
/// Error(FORGE_ERR_INVALID_ARGUMENT) for a value that is not a forge_backend.
[[nodiscard]] inline int device_count(forge_backend b) {
    int32_t n = 0;
    detail::check(forge_device_count(static_cast<int32_t>(b), &n), "forge_device_count");
    return n;
}

struct SamplerOptions {
    float temperature = 0.8f;  ///< <= 0: greedy
    uint32_t top_k = 40;
    float top_p = 0.95f;
    float min_p = 0.05f;
    float repeat_penalty = 1.0f;
    float frequency_penalty = 0.0f;
    float presence_penalty = 0.0f;
    uint32_t penalty_last_n = 64;
    uint64_t seed = 0x5EED;
    static SamplerOptions greedy() {
        SamplerOptions o;
        o.temperature = 0.0f;
        return o;
    }
};

/// How embed() pools per-token hidden states (forge_pooling).
enum class Pooling : int32_t {
    Default = FORGE_POOLING_DEFAULT,  ///< the model's own (pooling_type; mean when unset)
    None = FORGE_POOLING_NONE,        ///< one row per token
    Mean = FORGE_POOLING_MEAN,
    Cls = FORGE_POOLING_CLS,
    Last = FORGE_POOLING_LAST,
};

class Sampler {
  public:
    explicit Sampler(const SamplerOptions &o = {}) {
        detail::check_abi();
        forge_sampler_params p = forge_sampler_default_params();
        p.temperature = o.temperature;
        p.top_k = o.top_k;
        p.top_p = o.top_p;
        p.min_p = o.min_p;
        p.repeat_penalty = o.repeat_penalty;
        p.frequency_penalty = o.frequency_penalty;
        p.presence_penalty = o.presence_penalty;
        p.penalty_last_n = o.penalty_last_n;
        p.seed = o.seed;
        forge_sampler *s = nullptr;
        detail::check(forge_sampler_new(&p, &s), "forge_sampler_new");
        h_.reset(s);
    }
    /// Pick a token (logits are modified by penalties) and record it. Throws
    /// FORGE_ERR_INVALID_ARGUMENT for a NaN or +inf logit or all -inf, and
    /// FORGE_ERR_BUSY while a generate() runs with this sampler.
    [[nodiscard]] int32_t sample(std::vector<float> &logits) {
        int32_t t = -1;
        detail::check(forge_sampler_sample(get(), logits.data(), logits.size(), &t), "forge_sampler_sample");
        return t;
    }
    void reset() { detail::check(forge_sampler_reset(get()), "forge_sampler_reset"); }
    /// Throws Error(FORGE_ERR_NULL_POINTER) after a move or close().
    [[nodiscard]] forge_sampler *get() const {
        if (!h_) throw Error(FORGE_ERR_NULL_POINTER, "rocmforge::Sampler used after close or move");
        return h_.get();
    }
    void close() noexcept { h_.reset(); }

  private:
    std::unique_ptr<forge_sampler, detail::SamplerDeleter> h_;
};

struct GenerateResult {
    std::vector<int32_t> tokens;
    std::string text;
    forge_stop_reason reason = FORGE_STOP_MAX_TOKENS;
};

class Context {
  public:
    /// Load a GGUF model. Throws Error (IO, also for a directory; INVALID_MODEL
    /// for a corrupt or truncated file; INVALID_ARGUMENT for options out of
    /// range; UNSUPPORTED, BACKEND_UNAVAILABLE, ...).
    static Context load(std::string_view path, const LoadOptions &o = {}) {
        detail::check_abi();
        forge_load_params p = forge_load_default_params();
        p.n_threads = o.n_threads;
        p.n_ctx = o.n_ctx;
        p.backend = static_cast<int32_t>(o.backend);
        p.gpu_index = o.gpu_index;
        p.gpu_mem_budget = o.gpu_mem_budget;
        struct Progress {
            const std::function<bool(float)> *f;
            std::exception_ptr error;
        } prog{&o.progress, nullptr};
        if (o.progress) {
            p.progress = [](float x, void *u) -> bool {
                auto *pr = static_cast<Progress *>(u);
                try {
                    return (*pr->f)(x);
                } catch (...) {  // never let a C++ exception cross the C ABI
                    pr->error = std::current_exception();
                    return false;
                }
            };
            p.progress_user_data = &prog;
        }
        forge_ctx *c = nullptr;
        std::string spath(path);
        forge_status st = forge_load(spath.c_str(), &p, &c);
        if (prog.error) std::rethrow_exception(prog.error);
        detail::check(st, "forge_load");
        return Context(c);
    }

    /// Another sequence on the same loaded weights, with an empty KV cache.
    [[nodiscard]] Context clone_session() const {
        forge_ctx *c = nullptr;
        detail::check(forge_ctx_clone_session(get(), &c), "forge_ctx_clone_session");
        return Context(c);
    }

    [[nodiscard]] std::vector<int32_t> tokenize(std::string_view text, bool add_special = true,
                                                bool parse_special = false) const {
        std::vector<int32_t> out(text.size() + 8);
        size_t n = 0;
        forge_status st = forge_tokenize(get(), text.data(), text.size(), add_special, parse_special, out.data(),
                                         out.size(), &n);
        if (st == FORGE_ERR_BUFFER_TOO_SMALL) {
            out.resize(n);
            st = forge_tokenize(get(), text.data(), text.size(), add_special, parse_special, out.data(), out.size(), &n);
        }
        detail::check(st, "forge_tokenize");
        out.resize(n);
        return out;
    }

    [[nodiscard]] std::string detokenize(const std::vector<int32_t> &tokens, bool special = false) const {
        return detail::read_string(tokens.size() * 8 + 16, "forge_detokenize", [&](char *b, size_t cap, size_t *n) {
            return forge_detokenize(get(), tokens.data(), tokens.size(), special, b, cap, n);
        });
    }

    /// Append tokens; returns the last position's logits (n_vocab floats).
    /// FORGE_ERR_BUSY (nothing appended) while another eval/generate/kv_reset
    /// runs on this Context, e.g. from inside a generate() callback.
    std::vector<float> eval(const std::vector<int32_t> &tokens) {
        std::vector<float> logits(static_cast<size_t>(n_vocab()));
        detail::check(forge_eval(get(), tokens.data(), tokens.size(), logits.data(), logits.size()), "forge_eval");
        return logits;
    }

    void kv_reset(size_t n_keep = 0) { detail::check(forge_kv_reset(get(), n_keep), "forge_kv_reset"); }

    /// The embedding of one input's token ids (tokenize with add_special, as
    /// the text overload does): n_embd floats, or n_tokens * n_embd with
    /// Pooling::None; L2-normalised when `normalize`. Reads only the model
    /// (any thread, never BUSY). An encoder (nomic-bert, is_encoder())
    /// runs its bidirectional pass; a decoder its final hidden states.
    [[nodiscard]] std::vector<float> embed(const std::vector<int32_t> &tokens, Pooling pooling = Pooling::Default,
                                           bool normalize = true) const {
        size_t n = 0;
        auto p = static_cast<int32_t>(pooling);
        forge_status st = forge_embed(get(), tokens.data(), tokens.size(), p, normalize, nullptr, 0, &n);
        if (st != FORGE_ERR_BUFFER_TOO_SMALL) detail::check(st, "forge_embed");
        std::vector<float> out(n);
        detail::check(forge_embed(get(), tokens.data(), tokens.size(), p, normalize, out.data(), out.size(), &n),
                      "forge_embed");
        out.resize(n);
        return out;
    }
    /// embed(tokenize(text)) with the model's special tokens ([CLS] ... [SEP]
    /// for BERT-like models, BOS for most decoders).
    [[nodiscard]] std::vector<float> embed(std::string_view text, Pooling pooling = Pooling::Default,
                                           bool normalize = true) const {
        return embed(tokenize(text, true), pooling, normalize);
    }
    /// An embedding-only encoder: eval, generate and kv_reset throw
    /// FORGE_ERR_UNSUPPORTED; embed works.
    [[nodiscard]] bool is_encoder() const { return forge_is_encoder(get()); }
    /// The pooling Pooling::Default stands for: the model's own.
    [[nodiscard]] Pooling pooling() const { return static_cast<Pooling>(forge_pooling_type(get())); }
    [[nodiscard]] size_t n_past() const { return forge_n_past(get()); }
    [[nodiscard]] int32_t n_vocab() const { return forge_n_vocab(get()); }
    /// Where this context runs: "cpu (N threads)" or e.g. "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)".
    [[nodiscard]] std::string backend() const {
        return detail::read_string(64, "forge_ctx_backend",
                                   [&](char *b, size_t cap, size_t *n) { return forge_ctx_backend(get(), b, cap, n); });
    }
    [[nodiscard]] forge_model_info info() const {
        forge_model_info i{};
        detail::check(forge_get_model_info(get(), &i), "forge_get_model_info");
        return i;
    }

    /// Evaluate `prompt`, then generate up to `max_tokens`, calling
    /// `on_token(int32_t id, std::string_view piece) -> bool` for each token
    /// (return false to stop). An exception thrown by the callback stops
    /// generation and is rethrown here. The callback may use this Context's
    /// model-only calls (tokenize, detokenize, ...); eval, generate and
    /// kv_reset on it, or a call on `sampler`, throw Error(FORGE_ERR_BUSY).
    template <class F>
    GenerateResult generate(Sampler &sampler, const std::vector<int32_t> &prompt, uint32_t max_tokens, F &&on_token,
                            const std::vector<std::string> &stop = {}) {
        struct State {
            F *f;
            GenerateResult *r;
            std::exception_ptr error;
        };
        GenerateResult res;
        State state{&on_token, &res, nullptr};
        std::vector<const char *> stops;
        for (auto &s : stop) stops.push_back(s.c_str());
        forge_generate_params gp = forge_generate_default_params();
        gp.max_tokens = max_tokens;
        gp.stop = stops.empty() ? nullptr : stops.data();
        gp.n_stop = stops.size();
        gp.user_data = &state;
        gp.on_token = [](int32_t tok, const char *piece, size_t len, void *u) -> bool {
            auto *st = static_cast<State *>(u);
            try {
                st->r->text.append(piece, len);
                return static_cast<bool>((*st->f)(tok, std::string_view(piece, len)));
            } catch (...) {
                st->error = std::current_exception();
                return false;
            }
        };
        std::vector<int32_t> out(max_tokens);
        size_t n = 0;
        forge_stop_reason why = FORGE_STOP_MAX_TOKENS;
        forge_status s = forge_generate(get(), sampler.get(), prompt.data(), prompt.size(), &gp, out.data(), out.size(),
                                        &n, &why);
        if (state.error) std::rethrow_exception(state.error);
        detail::check(s, "forge_generate");
        out.resize(n);
        res.tokens = std::move(out);
        res.reason = why;
        return res;
    }

    /// Throws Error(FORGE_ERR_NULL_POINTER) after a move or close().
    [[nodiscard]] forge_ctx *get() const {
        if (!h_) throw Error(FORGE_ERR_NULL_POINTER, "rocmforge::Context used after close or move");
        return h_.get();
    }
    void close() noexcept { h_.reset(); }

  private:
    explicit Context(forge_ctx *c) : h_(c) {}
    std::unique_ptr<forge_ctx, detail::CtxDeleter> h_;
};

/// Sizes of an Engine (forge_engine_params) and what it does when full.
struct EngineOptions {
    uint32_t n_ctx = 0;      ///< most positions one sequence may hold, 0..FORGE_MAX_CTX; 0 = the Context's n_ctx
    uint64_t kv_budget = 0;  ///< bytes of KV cache for all sequences (whole blocks of 16 positions, at least one
                             ///< full sequence); 0 = four full sequences
    /// A batch the pool cannot hold: false throws FORGE_ERR_KV_EXHAUSTED;
    /// true preempts the newest sequences until it fits (Engine::set_preempt).
    bool preempt = false;
};

/// One row of a batch: `token` appended to sequence `seq` at position `pos`
/// (the sequence's length, plus one for each earlier row of the same
/// sequence in the batch); `logits` asks for this row's logits.
struct BatchRow {
    int32_t seq = 0;
    int32_t token = 0;
    int32_t pos = 0;
    bool logits = false;
};

/// The candidates of one row under Engine::set_top_k(k): the k largest
/// logits, largest first (ties: the lower id first), their token ids, and
/// the row's log-sum-exp over the whole vocabulary (a candidate's
/// log-probability is its logit minus `lse`).
struct TopK {
    std::vector<int32_t> ids;
    std::vector<float> logits;
    float lse = 0.0f;
};

/// Many sequences over one loaded model. Sequences are int32_t ids (not
/// reused while the engine lives); a stale or unknown id throws
/// Error(FORGE_ERR_INVALID_ARGUMENT). Move-only RAII: the destructor frees
/// the engine and all its sequences.
class Engine {
  public:
    /// An engine over `ctx`'s loaded model (weights shared, not copied). The
    /// engine keeps the weights loaded: `ctx` may be closed first. Throws
    /// FORGE_ERR_INVALID_ARGUMENT (n_ctx above FORGE_MAX_CTX),
    /// FORGE_ERR_OUT_OF_MEMORY (a pool the host cannot allocate).
    explicit Engine(const Context &ctx, const EngineOptions &o = {}) : n_vocab_(ctx.n_vocab()) {
        detail::check_abi();
        forge_engine_params p = forge_engine_default_params();
        p.n_ctx = o.n_ctx;
        p.kv_budget = o.kv_budget;
        forge_engine *e = nullptr;
        detail::check(forge_engine_new(ctx.get(), &p, &e), "forge_engine_new");
        h_.reset(e);  // owned from here: if set_preempt throws, h_'s destructor frees it
        if (o.preempt) set_preempt(true);
    }

    /// A new, empty sequence.
    [[nodiscard]] int32_t seq_new() {
        int32_t s = -1;
        detail::check(forge_seq_new(get(), &s), "forge_seq_new");
        return s;
    }
    /// Remove a sequence and give its KV blocks back (full ones stay in the
    /// prefix cache until the pool needs them).
    void seq_free(int32_t seq) { detail::check(forge_seq_free(get(), seq), "forge_seq_free"); }
    /// A new sequence with the same positions as `src`, sharing its full KV
    /// blocks copy-on-write (n > 1 completions of one prompt).
    [[nodiscard]] int32_t seq_fork(int32_t src) {
        int32_t s = -1;
        detail::check(forge_seq_fork(get(), src, &s), "forge_seq_fork");
        return s;
    }
    /// Keep the first `n_keep` positions of a sequence (0 clears it).
    void seq_keep(int32_t seq, size_t n_keep) { detail::check(forge_seq_keep(get(), seq, n_keep), "forge_seq_keep"); }
    /// Positions a sequence holds (its next position).
    [[nodiscard]] size_t seq_len(int32_t seq) const {
        size_t n = 0;
        detail::check(forge_seq_len(get(), seq, &n), "forge_seq_len");
        return n;
    }
    /// The prefix cache: give an empty sequence the cached KV blocks its
    /// prompt `tokens` starts with. Returns the positions reused (whole
    /// blocks, never the last token): decode `tokens[n..]` from position n.
    [[nodiscard]] size_t seq_reuse_prefix(int32_t seq, const std::vector<int32_t> &tokens) {
        size_t n = 0;
        detail::check(forge_seq_reuse_prefix(get(), seq, tokens.data(), tokens.size(), &n), "forge_seq_reuse_prefix");
        return n;
    }

    /// Run one batch (decode rows and prefill chunks of any sequences
    /// together). All or nothing: on error no sequence has moved. Throws
    /// FORGE_ERR_INVALID_ARGUMENT (no rows, a bad sequence, token or
    /// position), FORGE_ERR_CONTEXT_FULL (a sequence past n_ctx),
    /// FORGE_ERR_KV_EXHAUSTED (the pool cannot hold the batch: free or
    /// truncate a sequence; the engine stays usable). With preemption on
    /// (EngineOptions::preempt, set_preempt) such a batch runs instead, less
    /// the sequences preempted() names.
    void decode(const BatchRow *rows, size_t n_rows) {
        std::vector<forge_batch_row> c(n_rows);
        for (size_t i = 0; i < n_rows; i++) c[i] = {rows[i].seq, rows[i].token, rows[i].pos, rows[i].logits ? 1 : 0};
        detail::check(forge_engine_decode(get(), c.data(), c.size()), "forge_engine_decode");
    }
    void decode(const std::vector<BatchRow> &rows) { decode(rows.data(), rows.size()); }

    /// Row `row`'s logits (n_vocab floats) of the last successful decode.
    /// Throws FORGE_ERR_INVALID_ARGUMENT for no such row or a row that did
    /// not ask for logits.
    [[nodiscard]] std::vector<float> logits(size_t row) const {
        std::vector<float> out(static_cast<size_t>(n_vocab_));
        logits(row, out);
        return out;
    }
    /// The same into `out`, resized to n_vocab (no allocation once it is).
    void logits(size_t row, std::vector<float> &out) const {
        out.resize(static_cast<size_t>(n_vocab_));
        detail::check(forge_engine_logits(get(), row, out.data(), out.size()), "forge_engine_logits");
    }

    /// What decode keeps for the rows that ask for logits: k = 0 (the
    /// default) every logit (logits()); 1 <= k <= min(FORGE_TOP_MAX, n_vocab)
    /// only the k largest with their ids and the row's log-sum-exp (top()),
    /// selected on the device by a GPU backend, so k * 8 + 4 bytes a row come
    /// back instead of n_vocab floats. In top-k mode logits() throws
    /// FORGE_ERR_INVALID_ARGUMENT, and top() does in full mode. The last
    /// decode's results are dropped. Throws FORGE_ERR_INVALID_ARGUMENT for k
    /// too large (nothing changed).
    void set_top_k(uint32_t k) { detail::check(forge_engine_set_top_k(get(), k), "forge_engine_set_top_k"); }

    /// Row `row`'s candidates of the last successful decode under
    /// set_top_k(k), k >= 1: k ids and logits, largest first (ties: the lower
    /// id first), and the row's log-sum-exp. Throws
    /// FORGE_ERR_INVALID_ARGUMENT in full mode (no set_top_k), for no such
    /// row or a row that did not ask for logits.
    [[nodiscard]] TopK top(size_t row) const {
        TopK t;
        top(row, t);
        return t;
    }
    /// The same into `out` (no allocation once its vectors have grown); on
    /// error `out` is left empty.
    void top(size_t row, TopK &out) const {
        forge_engine *e = get();
        out.ids.resize(FORGE_TOP_MAX);  // k is at most FORGE_TOP_MAX
        out.logits.resize(FORGE_TOP_MAX);
        size_t n = 0;
        forge_status st = forge_engine_top(e, row, out.ids.data(), out.logits.data(), FORGE_TOP_MAX, &n, &out.lse);
        if (st != FORGE_OK) n = 0;
        out.ids.resize(n);
        out.logits.resize(n);
        detail::check(st, "forge_engine_top");
    }

    /// What decode does with a batch the pool cannot hold: false (the
    /// default) throws FORGE_ERR_KV_EXHAUSTED; true preempts the newest
    /// sequences (by creation; forks are new) one by one until the rest fits.
    /// A preempted sequence keeps its id but holds no positions afterwards
    /// (seq_len 0: decode its tokens again later) and its rows in that batch
    /// get no logits (logits() throws FORGE_ERR_INVALID_ARGUMENT). The oldest
    /// sequence with rows in the batch is never preempted.
    void set_preempt(bool on) { detail::check(forge_engine_set_preempt(get(), on ? 1 : 0), "forge_engine_set_preempt"); }
    /// The sequences the last decode preempted, in order (empty if none).
    [[nodiscard]] std::vector<int32_t> preempted() const {
        std::vector<int32_t> ids;
        size_t n = 0;
        forge_status st = forge_engine_preempted(get(), nullptr, 0, &n);
        if (st == FORGE_ERR_BUFFER_TOO_SMALL) {
            ids.resize(n);
            st = forge_engine_preempted(get(), ids.data(), ids.size(), &n);
        }
        detail::check(st, "forge_engine_preempted");
        ids.resize(n);
        return ids;
    }

    /// KV pool statistics.
    [[nodiscard]] forge_kv_stats stats() const {
        forge_kv_stats s{};
        detail::check(forge_engine_stats(get(), &s), "forge_engine_stats");
        return s;
    }
    [[nodiscard]] int32_t n_vocab() const noexcept { return n_vocab_; }

    /// Throws Error(FORGE_ERR_NULL_POINTER) after a move or close().
    [[nodiscard]] forge_engine *get() const {
        if (!h_) throw Error(FORGE_ERR_NULL_POINTER, "rocmforge::Engine used after close or move");
        return h_.get();
    }
    /// Free the engine and its sequences now (the destructor does it too).
    void close() noexcept { h_.reset(); }

  private:
    int32_t n_vocab_;
    std::unique_ptr<forge_engine, detail::EngineDeleter> h_;
};

}  // namespace rocmforge
