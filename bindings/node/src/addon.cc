// N-API addon over the C ABI (rocmforge.h). Loading, generation and engine
// decodes run on libuv worker threads (Napi::AsyncWorker); streamed tokens
// reach JS through a ThreadSafeFunction, so the event loop never blocks on
// inference (Engine.decodeSync is the one call that evaluates on the JS
// thread, by request).
#include <napi.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "rocmforge.h"

namespace {

const char *status_name(forge_status s) {
    switch (s) {
        case FORGE_OK: return "FORGE_OK";
        case FORGE_ERR_INVALID_ARGUMENT: return "FORGE_ERR_INVALID_ARGUMENT";
        case FORGE_ERR_NULL_POINTER: return "FORGE_ERR_NULL_POINTER";
        case FORGE_ERR_BUFFER_TOO_SMALL: return "FORGE_ERR_BUFFER_TOO_SMALL";
        case FORGE_ERR_INVALID_UTF8: return "FORGE_ERR_INVALID_UTF8";
        case FORGE_ERR_IO: return "FORGE_ERR_IO";
        case FORGE_ERR_INVALID_MODEL: return "FORGE_ERR_INVALID_MODEL";
        case FORGE_ERR_UNSUPPORTED: return "FORGE_ERR_UNSUPPORTED";
        case FORGE_ERR_CONTEXT_FULL: return "FORGE_ERR_CONTEXT_FULL";
        case FORGE_ERR_OUT_OF_MEMORY: return "FORGE_ERR_OUT_OF_MEMORY";
        case FORGE_ERR_KV_EXHAUSTED: return "FORGE_ERR_KV_EXHAUSTED";
        case FORGE_ERR_BACKEND_UNAVAILABLE: return "FORGE_ERR_BACKEND_UNAVAILABLE";
        case FORGE_ERR_CANCELLED: return "FORGE_ERR_CANCELLED";
        case FORGE_ERR_BUSY: return "FORGE_ERR_BUSY";
        case FORGE_ERR_INTERNAL: return "FORGE_ERR_INTERNAL";
    }
    return "FORGE_ERR_UNKNOWN";
}

Napi::Error make_error(Napi::Env env, const std::string &code, const std::string &msg, int status) {
    Napi::Error e = Napi::Error::New(env, msg);
    e.Set("code", Napi::String::New(env, code));
    e.Set("status", Napi::Number::New(env, status));
    return e;
}

Napi::Error status_error(Napi::Env env, forge_status st, const std::string &msg) {
    return make_error(env, status_name(st), msg, static_cast<int>(st));
}

Napi::Error invalid_argument(Napi::Env env, const std::string &msg) {
    return status_error(env, FORGE_ERR_INVALID_ARGUMENT, "rocmforge: " + msg);
}

// An integer option in [lo, hi] (both exactly representable as doubles).
// Anything else (a string, a fraction, NaN, a value the C type cannot hold
// and would wrap) is INVALID_ARGUMENT; the library checks the narrower
// ranges (n_threads <= FORGE_MAX_THREADS, ...) itself.
double int_option(Napi::Env env, const Napi::Value &v, const char *key, double lo, double hi) {
    const double d = v.IsNumber() ? v.As<Napi::Number>().DoubleValue() : NAN;
    if (!(d >= lo && d <= hi) || d != std::trunc(d))
        throw invalid_argument(env, std::string(key) + " must be an integer in " + std::to_string(static_cast<int64_t>(lo)) +
                                        ".." + std::to_string(static_cast<int64_t>(hi)) + ", not " +
                                        v.ToString().Utf8Value());
    return d;
}
constexpr double kMaxSafeInteger = 9007199254740991.0;  // Number.MAX_SAFE_INTEGER

// A float option. The library checks its range (NaN, a negative
// temperature... are INVALID_ARGUMENT); a double beyond float's range
// becomes +-inf rather than an undefined conversion.
float float_option(Napi::Env env, const Napi::Value &v, const char *key) {
    if (!v.IsNumber()) throw invalid_argument(env, std::string(key) + " must be a number, not " + v.ToString().Utf8Value());
    const double d = v.As<Napi::Number>().DoubleValue();
    if (std::isfinite(d) && std::fabs(d) > FLT_MAX) return d > 0 ? INFINITY : -INFINITY;
    return static_cast<float>(d);
}

// The value of `key` in `o`, or undefined when absent.
Napi::Value option(const Napi::Object &o, const char *key) { return o.Has(key) ? o.Get(key) : o.Env().Undefined(); }

// Text the C API writes into a caller's buffer: a first call with `guess`
// bytes and, on BUFFER_TOO_SMALL, one more with the size that call reported.
template <class F>
std::string read_string(Napi::Env env, size_t guess, F &&call) {
    std::string s(guess, '\0');
    size_t n = 0;
    forge_status st = call(s.data(), s.size(), &n);
    if (st == FORGE_ERR_BUFFER_TOO_SMALL) {
        s.resize(n);
        st = call(s.data(), s.size(), &n);
    }
    if (st != FORGE_OK) throw status_error(env, st, forge_last_error());
    s.resize(n);
    return s;
}

// A context shared between the JS object and any running worker, so a
// close() during generation frees it only when the worker is done.
struct Handle {
    forge_ctx *ctx = nullptr;
    std::atomic<bool> busy{false};
    ~Handle() { forge_free(ctx); }
};

class Model : public Napi::ObjectWrap<Model> {
  public:
    static Napi::FunctionReference ctor;
    static void Init(Napi::Env env, Napi::Object exports) {
        Napi::Function f = DefineClass(env, "NativeModel",
                                       {InstanceMethod("tokenize", &Model::Tokenize),
                                        InstanceMethod("detokenize", &Model::Detokenize),
                                        InstanceMethod("generate", &Model::Generate),
                                        InstanceMethod("newSession", &Model::NewSession),
                                        InstanceMethod("info", &Model::Info),
                                        InstanceMethod("backend", &Model::Backend),
                                        InstanceMethod("reset", &Model::Reset),
                                        InstanceMethod("newEngine", &Model::NewEngine),
                                        InstanceMethod("embed", &Model::Embed),
                                        InstanceMethod("isEncoder", &Model::IsEncoder),
                                        InstanceMethod("close", &Model::Close)});
        ctor = Napi::Persistent(f);
        exports.Set("NativeModel", f);
    }
    explicit Model(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Model>(info) {}
    std::shared_ptr<Handle> h;

    // For model-only calls (tokenize, detokenize, info, backend, newSession),
    // which the C ABI allows while a generation runs on the context.
    forge_ctx *ctx(Napi::Env env) {
        if (!h || !h->ctx) throw make_error(env, "ERR_CLOSED", "rocmforge: model is closed", -1);
        return h->ctx;
    }
    // For calls that use the sequence (generate, reset): FORGE_ERR_BUSY while
    // a generation runs, as the library itself answers a second such call.
    // Checked here on the JS thread so the answer does not depend on whether
    // the running generation's worker has started yet.
    forge_ctx *exclusive(Napi::Env env) {
        forge_ctx *c = ctx(env);
        if (h->busy)
            throw status_error(env, FORGE_ERR_BUSY,
                               "rocmforge: a generation is running on this model; wait for it, or use newSession() for "
                               "parallel work");
        return c;
    }

    Napi::Value Tokenize(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        std::string text = info[0].As<Napi::String>();
        bool add_special = info.Length() > 1 && info[1].ToBoolean();
        bool parse_special = info.Length() > 2 && info[2].ToBoolean();
        std::vector<int32_t> out(text.size() + 8);
        size_t n = 0;
        forge_ctx *c = ctx(env);
        forge_status st = forge_tokenize(c, text.data(), text.size(), add_special, parse_special, out.data(), out.size(), &n);
        if (st == FORGE_ERR_BUFFER_TOO_SMALL) {
            out.resize(n);
            st = forge_tokenize(c, text.data(), text.size(), add_special, parse_special, out.data(), out.size(), &n);
        }
        if (st != FORGE_OK) throw status_error(env, st, forge_last_error());
        Napi::Array a = Napi::Array::New(env, n);
        for (size_t i = 0; i < n; i++) a[i] = Napi::Number::New(env, out[i]);
        return a;
    }

    // embed(ids, pooling, normalize) -> Float32Array: a model-only call
    // (forge_embed takes no lock), so it works while a generation runs.
    Napi::Value Embed(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        Napi::Array a = info[0].As<Napi::Array>();
        std::vector<int32_t> ids(a.Length());
        for (uint32_t i = 0; i < a.Length(); i++) ids[i] = a.Get(i).As<Napi::Number>().Int32Value();
        int32_t pooling = info[1].As<Napi::Number>().Int32Value();
        bool normalize = info[2].ToBoolean();
        forge_ctx *c = ctx(env);
        size_t n = 0;
        forge_status st = forge_embed(c, ids.data(), ids.size(), pooling, normalize, nullptr, 0, &n);
        if (st != FORGE_ERR_BUFFER_TOO_SMALL) throw status_error(env, st == FORGE_OK ? FORGE_ERR_INTERNAL : st, forge_last_error());
        Napi::Float32Array out = Napi::Float32Array::New(env, n);
        st = forge_embed(c, ids.data(), ids.size(), pooling, normalize, out.Data(), n, &n);
        if (st != FORGE_OK) throw status_error(env, st, forge_last_error());
        return out;
    }

    Napi::Value IsEncoder(const Napi::CallbackInfo &info) { return Napi::Boolean::New(info.Env(), forge_is_encoder(ctx(info.Env()))); }

    Napi::Value Detokenize(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        Napi::Array a = info[0].As<Napi::Array>();
        std::vector<int32_t> ids(a.Length());
        for (uint32_t i = 0; i < a.Length(); i++) ids[i] = a.Get(i).As<Napi::Number>().Int32Value();
        forge_ctx *c = ctx(env);
        return Napi::String::New(env, read_string(env, ids.size() * 8 + 16, [&](char *b, size_t cap, size_t *n) {
                                     return forge_detokenize(c, ids.data(), ids.size(), false, b, cap, n);
                                 }));
    }

    Napi::Value NewSession(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_ctx *c = nullptr;
        forge_status st = forge_ctx_clone_session(ctx(env), &c);
        if (st != FORGE_OK) throw status_error(env, st, forge_last_error());
        Napi::Object o = ctor.New({});
        auto h2 = std::make_shared<Handle>();
        h2->ctx = c;
        Unwrap(o)->h = h2;
        return o;
    }

    Napi::Value Backend(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_ctx *c = ctx(env);
        return Napi::String::New(
            env, read_string(env, 128, [&](char *b, size_t cap, size_t *n) { return forge_ctx_backend(c, b, cap, n); }));
    }

    Napi::Value Info(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_model_info mi{};
        forge_status st = forge_get_model_info(ctx(env), &mi);
        if (st != FORGE_OK) throw status_error(env, st, forge_last_error());
        Napi::Object o = Napi::Object::New(env);
        o.Set("arch", mi.arch);
        o.Set("nVocab", mi.n_vocab);
        o.Set("nCtxTrain", mi.n_ctx_train);
        o.Set("nCtx", mi.n_ctx);
        o.Set("nLayer", mi.n_layer);
        o.Set("nEmbd", mi.n_embd);
        o.Set("bos", mi.bos);
        o.Set("eos", mi.eos);
        o.Set("eot", mi.eot);
        o.Set("chatTemplate", mi.chat_template ? Napi::Value(Napi::String::New(env, mi.chat_template)) : env.Null());
        return o;
    }

    Napi::Value Reset(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_ctx *c = exclusive(env);
        size_t keep = info.Length() > 0 && !info[0].IsUndefined()
                          ? static_cast<size_t>(int_option(env, info[0], "nKeep", 0, kMaxSafeInteger))
                          : 0;
        forge_status st = forge_kv_reset(c, keep);
        if (st != FORGE_OK) throw status_error(env, st, forge_last_error());
        return env.Undefined();
    }

    Napi::Value Close(const Napi::CallbackInfo &info) {
        h.reset();  // a running worker keeps its own reference until it ends
        return info.Env().Undefined();
    }

    Napi::Value Generate(const Napi::CallbackInfo &info);
    Napi::Value NewEngine(const Napi::CallbackInfo &info);
};
Napi::FunctionReference Model::ctor;

class LoadWorker : public Napi::AsyncWorker {
  public:
    LoadWorker(Napi::Env env, std::string path, forge_load_params p)
        : Napi::AsyncWorker(env), path_(std::move(path)), p_(p), deferred_(Napi::Promise::Deferred::New(env)) {}
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override {
        st_ = forge_load(path_.c_str(), &p_, &ctx_);
        if (st_ != FORGE_OK) msg_ = forge_last_error();  // thread-local: read on this thread
    }
    void OnOK() override {
        Napi::Env env = Env();
        if (st_ != FORGE_OK) {
            deferred_.Reject(status_error(env, st_, msg_).Value());
            return;
        }
        Napi::Object o = Model::ctor.New({});
        auto h = std::make_shared<Handle>();
        h->ctx = ctx_;
        Model::Unwrap(o)->h = h;
        deferred_.Resolve(o);
    }

  private:
    std::string path_, msg_;
    forge_load_params p_;
    forge_ctx *ctx_ = nullptr;
    forge_status st_ = FORGE_OK;
    Napi::Promise::Deferred deferred_;
};

// "auto" | "cpu" | "cuda" | "hip" -> a forge_backend value, as the int32_t
// the C ABI takes. Anything else (another string; a number such as 1, whose
// text is "1") is INVALID_ARGUMENT: the C numbers are not this package's API.
int32_t parse_backend(Napi::Env env, const Napi::Value &v) {
    const std::string s = v.ToString().Utf8Value();
    forge_backend b;
    if (s == "auto") b = FORGE_BACKEND_AUTO;
    else if (s == "cpu") b = FORGE_BACKEND_CPU;
    else if (s == "cuda") b = FORGE_BACKEND_CUDA;
    else if (s == "hip") b = FORGE_BACKEND_HIP;
    else throw invalid_argument(env, "backend must be 'auto', 'cpu', 'cuda' or 'hip', not '" + s + "'");
    return static_cast<int32_t>(b);
}

Napi::Value DeviceCount(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    int32_t n = 0;
    forge_status st = forge_device_count(parse_backend(env, info[0]), &n);
    if (st != FORGE_OK) throw status_error(env, st, forge_last_error());
    return Napi::Number::New(env, n);
}

Napi::Value BackendCompiled(const Napi::CallbackInfo &info) {
    return Napi::Boolean::New(info.Env(), forge_backend_compiled(parse_backend(info.Env(), info[0])));
}

Napi::Value Load(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    if (forge_abi_version() != FORGE_ABI_VERSION)
        throw make_error(env, "ERR_ABI_MISMATCH", "librocmforge ABI version does not match this addon", -1);
    std::string path = info[0].As<Napi::String>();
    forge_load_params p = forge_load_default_params();
    if (info.Length() > 1 && info[1].IsObject()) {
        Napi::Object o = info[1].As<Napi::Object>();
        Napi::Value v;
        if (!(v = option(o, "threads")).IsUndefined()) p.n_threads = static_cast<uint32_t>(int_option(env, v, "threads", 0, UINT32_MAX));
        if (!(v = option(o, "contextSize")).IsUndefined())
            p.n_ctx = static_cast<uint32_t>(int_option(env, v, "contextSize", 0, UINT32_MAX));
        if (!(v = option(o, "backend")).IsUndefined()) p.backend = parse_backend(env, v);
        if (!(v = option(o, "gpuIndex")).IsUndefined())
            p.gpu_index = static_cast<int32_t>(int_option(env, v, "gpuIndex", INT32_MIN, INT32_MAX));
        if (!(v = option(o, "gpuMemBudget")).IsUndefined())
            p.gpu_mem_budget = static_cast<uint64_t>(int_option(env, v, "gpuMemBudget", 0, kMaxSafeInteger));
    }
    auto *w = new LoadWorker(env, path, p);
    auto promise = w->Promise();
    w->Queue();
    return promise;
}

struct Piece {
    int32_t token;
    std::string text;
};

class GenerateWorker : public Napi::AsyncWorker {
  public:
    GenerateWorker(Napi::Env env, std::shared_ptr<Handle> h, std::vector<int32_t> prompt, forge_sampler_params sp,
                   uint32_t max_tokens, std::vector<std::string> stop, Napi::Function on_token,
                   std::shared_ptr<std::atomic<bool>> abort)
        : Napi::AsyncWorker(env), h_(std::move(h)), prompt_(std::move(prompt)), sp_(sp), max_(max_tokens),
          stop_(std::move(stop)), abort_(std::move(abort)), deferred_(Napi::Promise::Deferred::New(env)) {
        if (!on_token.IsEmpty())
            tsfn_ = Napi::ThreadSafeFunction::New(env, on_token, "rocmforge-token", 0, 1);
    }
    Napi::Promise Promise() { return deferred_.Promise(); }

    static bool on_token(int32_t tok, const char *piece, size_t len, void *user) {
        auto *self = static_cast<GenerateWorker *>(user);
        self->text_.append(piece, len);
        if (self->tsfn_) {
            auto *p = new Piece{tok, std::string(piece, len)};
            // non-blocking: the JS side receives the pieces in order on the loop
            self->tsfn_.NonBlockingCall(p, [](Napi::Env env, Napi::Function cb, Piece *p) {
                cb.Call({Napi::Number::New(env, p->token), Napi::String::New(env, p->text)});
                delete p;
            });
        }
        return !self->abort_->load();
    }

    void Execute() override {
        forge_sampler *s = nullptr;
        st_ = forge_sampler_new(&sp_, &s);
        if (st_ == FORGE_OK) {
            std::vector<const char *> stops;
            for (auto &x : stop_) stops.push_back(x.c_str());
            forge_generate_params gp = forge_generate_default_params();
            gp.max_tokens = max_;
            gp.stop = stops.empty() ? nullptr : stops.data();
            gp.n_stop = stops.size();
            gp.on_token = &GenerateWorker::on_token;
            gp.user_data = this;
            // room for every id generate can produce: at most max_tokens, and
            // never more than the context holds
            forge_model_info mi{};
            size_t cap = max_;
            if (forge_get_model_info(h_->ctx, &mi) == FORGE_OK && mi.n_ctx > 0)
                cap = std::min(cap, static_cast<size_t>(mi.n_ctx));
            tokens_.resize(cap);
            size_t n = 0;
            st_ = forge_generate(h_->ctx, s, prompt_.data(), prompt_.size(), &gp, tokens_.data(), tokens_.size(), &n, &why_);
            tokens_.resize(st_ == FORGE_OK ? std::min(n, tokens_.size()) : 0);
        }
        if (st_ != FORGE_OK) msg_ = forge_last_error();
        forge_sampler_free(s);
        // End-of-stream marker through the same queue, so JS knows every
        // piece has been delivered (the promise may settle before them).
        if (tsfn_) {
            tsfn_.NonBlockingCall(new Piece{-2, std::string()}, [](Napi::Env env, Napi::Function cb, Piece *p) {
                cb.Call({Napi::Number::New(env, p->token), Napi::String::New(env, p->text)});
                delete p;
            });
        }
    }
    void Finish() {
        h_->busy = false;
        if (tsfn_) tsfn_.Release();
    }
    void OnOK() override {
        Napi::Env env = Env();
        Finish();
        if (st_ != FORGE_OK) {
            deferred_.Reject(status_error(env, st_, msg_).Value());
            return;
        }
        static const char *reasons[] = {"eog", "max_tokens", "stop", "callback", "context_full"};
        Napi::Object r = Napi::Object::New(env);
        Napi::Array t = Napi::Array::New(env, tokens_.size());
        for (size_t i = 0; i < tokens_.size(); i++) t[i] = Napi::Number::New(env, tokens_[i]);
        r.Set("tokens", t);
        r.Set("text", text_);
        r.Set("reason", reasons[static_cast<int>(why_)]);
        deferred_.Resolve(r);
    }
    void OnError(const Napi::Error &e) override {
        Finish();
        deferred_.Reject(e.Value());
    }

  private:
    std::shared_ptr<Handle> h_;
    std::vector<int32_t> prompt_, tokens_;
    forge_sampler_params sp_;
    uint32_t max_;
    std::vector<std::string> stop_;
    std::shared_ptr<std::atomic<bool>> abort_;
    Napi::ThreadSafeFunction tsfn_;
    std::string text_, msg_;
    forge_status st_ = FORGE_OK;
    forge_stop_reason why_ = FORGE_STOP_MAX_TOKENS;
    Napi::Promise::Deferred deferred_;
};

// generate(promptIds, {maxTokens, temperature, topK, topP, minP, repeatPenalty,
//          frequencyPenalty, presencePenalty, penaltyLastN, seed, stop}, onToken?, abortFlag)
Napi::Value Model::Generate(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    exclusive(env);  // throws ERR_CLOSED or FORGE_ERR_BUSY
    Napi::Array a = info[0].As<Napi::Array>();
    std::vector<int32_t> prompt(a.Length());
    for (uint32_t i = 0; i < a.Length(); i++) prompt[i] = a.Get(i).As<Napi::Number>().Int32Value();
    Napi::Object o = info[1].IsObject() ? info[1].As<Napi::Object>() : Napi::Object::New(env);
    auto num = [&](const char *k, float d) {
        Napi::Value v = option(o, k);
        return v.IsUndefined() ? d : float_option(env, v, k);
    };
    auto integer = [&](const char *k, double d, double hi) {
        Napi::Value v = option(o, k);
        return v.IsUndefined() ? d : int_option(env, v, k, 0, hi);
    };
    forge_sampler_params sp = forge_sampler_default_params();
    sp.temperature = num("temperature", sp.temperature);
    sp.top_k = static_cast<uint32_t>(integer("topK", sp.top_k, UINT32_MAX));
    sp.top_p = num("topP", sp.top_p);
    sp.min_p = num("minP", sp.min_p);
    sp.repeat_penalty = num("repeatPenalty", sp.repeat_penalty);
    sp.frequency_penalty = num("frequencyPenalty", sp.frequency_penalty);
    sp.presence_penalty = num("presencePenalty", sp.presence_penalty);
    sp.penalty_last_n = static_cast<uint32_t>(integer("penaltyLastN", sp.penalty_last_n, UINT32_MAX));
    sp.seed = static_cast<uint64_t>(integer("seed", static_cast<double>(sp.seed), kMaxSafeInteger));
    uint32_t max_tokens = static_cast<uint32_t>(integer("maxTokens", 128, UINT32_MAX));
    std::vector<std::string> stop;
    if (o.Has("stop") && o.Get("stop").IsArray()) {
        Napi::Array s = o.Get("stop").As<Napi::Array>();
        for (uint32_t i = 0; i < s.Length(); i++) stop.push_back(s.Get(i).As<Napi::String>());
    }
    Napi::Function cb = info.Length() > 2 && info[2].IsFunction() ? info[2].As<Napi::Function>() : Napi::Function();
    // abort flag: an object whose `abort()` the JS side may call
    auto abort = std::make_shared<std::atomic<bool>>(false);
    if (info.Length() > 3 && info[3].IsObject()) {
        info[3].As<Napi::Object>().Set("abort", Napi::Function::New(env, [abort](const Napi::CallbackInfo &i) {
                                                   abort->store(true);
                                                   return i.Env().Undefined();
                                               }));
    }
    h->busy = true;
    auto *w = new GenerateWorker(env, h, std::move(prompt), sp, max_tokens, std::move(stop), cb, abort);
    auto promise = w->Promise();
    w->Queue();
    return promise;
}

// ---- many sequences: the engine ----

// An engine shared between the JS object and a running decode worker, so a
// close() during a decode frees it only when the worker is done.
struct EngineHandle {
    forge_engine *e = nullptr;
    int32_t n_vocab = 0;
    uint32_t top_k = 0;             // setTopK's k: 0 for every logit
    std::atomic<bool> busy{false};  // an async decode is queued or running
    ~EngineHandle() { forge_engine_free(e); }
};

int32_t int32_option(Napi::Env env, const Napi::Value &v, const char *key) {
    return static_cast<int32_t>(int_option(env, v, key, INT32_MIN, INT32_MAX));
}

// [{seq, token, pos, logits}] -> C rows. Ids the C types cannot hold are
// INVALID_ARGUMENT here; the library checks the rest (negative or unknown
// sequence ids, tokens outside the vocab, wrong positions).
std::vector<forge_batch_row> parse_rows(Napi::Env env, const Napi::Value &v) {
    if (!v.IsArray()) throw invalid_argument(env, "rows must be an array of {seq, token, pos, logits}");
    Napi::Array a = v.As<Napi::Array>();
    std::vector<forge_batch_row> rows(a.Length());
    for (uint32_t i = 0; i < a.Length(); i++) {
        Napi::Value r = a.Get(i);
        if (!r.IsObject()) throw invalid_argument(env, "rows[" + std::to_string(i) + "] must be an object {seq, token, pos, logits}");
        Napi::Object o = r.As<Napi::Object>();
        rows[i].seq = int32_option(env, option(o, "seq"), "seq");
        rows[i].token = int32_option(env, option(o, "token"), "token");
        rows[i].pos = int32_option(env, option(o, "pos"), "pos");
        rows[i].logits = option(o, "logits").ToBoolean() ? 1 : 0;
    }
    return rows;
}

class DecodeWorker : public Napi::AsyncWorker {
  public:
    DecodeWorker(Napi::Env env, std::shared_ptr<EngineHandle> h, std::vector<forge_batch_row> rows)
        : Napi::AsyncWorker(env), h_(std::move(h)), rows_(std::move(rows)), deferred_(Napi::Promise::Deferred::New(env)) {}
    Napi::Promise Promise() { return deferred_.Promise(); }
    void Execute() override {
        st_ = forge_engine_decode(h_->e, rows_.data(), rows_.size());
        if (st_ != FORGE_OK) msg_ = forge_last_error();  // thread-local: read on this thread
    }
    void OnOK() override {
        h_->busy = false;
        if (st_ != FORGE_OK) deferred_.Reject(status_error(Env(), st_, msg_).Value());
        else deferred_.Resolve(Env().Undefined());
    }
    void OnError(const Napi::Error &e) override {
        h_->busy = false;
        deferred_.Reject(e.Value());
    }

  private:
    std::shared_ptr<EngineHandle> h_;
    std::vector<forge_batch_row> rows_;
    forge_status st_ = FORGE_OK;
    std::string msg_;
    Napi::Promise::Deferred deferred_;
};

class Engine : public Napi::ObjectWrap<Engine> {
  public:
    static Napi::FunctionReference ctor;
    static void Init(Napi::Env env, Napi::Object exports) {
        Napi::Function f = DefineClass(env, "NativeEngine",
                                       {InstanceMethod("newSeq", &Engine::NewSeq),
                                        InstanceMethod("freeSeq", &Engine::FreeSeq),
                                        InstanceMethod("forkSeq", &Engine::ForkSeq),
                                        InstanceMethod("keepSeq", &Engine::KeepSeq),
                                        InstanceMethod("seqLen", &Engine::SeqLen),
                                        InstanceMethod("reusePrefix", &Engine::ReusePrefix),
                                        InstanceMethod("decode", &Engine::Decode),
                                        InstanceMethod("decodeSync", &Engine::DecodeSync),
                                        InstanceMethod("logits", &Engine::Logits),
                                        InstanceMethod("setTopK", &Engine::SetTopK),
                                        InstanceMethod("top", &Engine::Top),
                                        InstanceMethod("stats", &Engine::Stats),
                                        InstanceMethod("setPreempt", &Engine::SetPreempt),
                                        InstanceMethod("preempted", &Engine::Preempted),
                                        InstanceMethod("nVocab", &Engine::NVocab),
                                        InstanceMethod("close", &Engine::Close)});
        ctor = Napi::Persistent(f);
        exports.Set("NativeEngine", f);
    }
    explicit Engine(const Napi::CallbackInfo &info) : Napi::ObjectWrap<Engine>(info) {}
    std::shared_ptr<EngineHandle> h;

    // Every engine call takes it whole (as the C ABI does): ERR_CLOSED after
    // close(), FORGE_ERR_BUSY while an async decode is queued or running.
    // Checked on the JS thread, so the answer does not depend on whether the
    // decode's worker has started yet.
    forge_engine *engine(Napi::Env env) {
        if (!h || !h->e) throw make_error(env, "ERR_CLOSED", "rocmforge: engine is closed", -1);
        if (h->busy)
            throw status_error(env, FORGE_ERR_BUSY, "rocmforge: a decode is running on this engine; await it first");
        return h->e;
    }
    static void check(Napi::Env env, forge_status st) {
        if (st != FORGE_OK) throw status_error(env, st, forge_last_error());
    }
    int32_t seq_arg(const Napi::CallbackInfo &info, size_t i) { return int32_option(info.Env(), info[i], "seq"); }

    Napi::Value NewSeq(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        int32_t s = -1;
        check(env, forge_seq_new(engine(env), &s));
        return Napi::Number::New(env, s);
    }
    Napi::Value FreeSeq(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        check(env, forge_seq_free(e, seq_arg(info, 0)));
        return env.Undefined();
    }
    Napi::Value ForkSeq(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        int32_t s = -1;
        check(env, forge_seq_fork(e, seq_arg(info, 0), &s));
        return Napi::Number::New(env, s);
    }
    Napi::Value KeepSeq(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        const int32_t seq = seq_arg(info, 0);
        const size_t keep = static_cast<size_t>(int_option(env, info[1], "nKeep", 0, kMaxSafeInteger));
        check(env, forge_seq_keep(e, seq, keep));
        return env.Undefined();
    }
    Napi::Value SeqLen(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        size_t n = 0;
        check(env, forge_seq_len(e, seq_arg(info, 0), &n));
        return Napi::Number::New(env, static_cast<double>(n));
    }
    Napi::Value ReusePrefix(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        const int32_t seq = seq_arg(info, 0);
        if (!info[1].IsArray()) throw invalid_argument(env, "tokens must be an array of token ids");
        Napi::Array a = info[1].As<Napi::Array>();
        std::vector<int32_t> ids(a.Length());
        for (uint32_t i = 0; i < a.Length(); i++) ids[i] = int32_option(env, a.Get(i), "token");
        size_t n = 0;
        check(env, forge_seq_reuse_prefix(e, seq, ids.data(), ids.size(), &n));
        return Napi::Number::New(env, static_cast<double>(n));
    }
    // decode(rows) -> Promise<void>: the batch runs on a worker thread; until
    // it settles every other call on this engine throws FORGE_ERR_BUSY.
    Napi::Value Decode(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        engine(env);
        std::vector<forge_batch_row> rows = parse_rows(env, info[0]);
        h->busy = true;
        auto *w = new DecodeWorker(env, h, std::move(rows));
        auto promise = w->Promise();
        w->Queue();
        return promise;
    }
    // decodeSync(rows): the same on the JS thread (blocks the event loop).
    Napi::Value DecodeSync(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        std::vector<forge_batch_row> rows = parse_rows(env, info[0]);
        check(env, forge_engine_decode(e, rows.data(), rows.size()));
        return env.Undefined();
    }
    // logits(row, out?) -> Float32Array of n_vocab: into `out` when given (a
    // Float32Array; shorter than n_vocab is FORGE_ERR_BUFFER_TOO_SMALL).
    Napi::Value Logits(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        const size_t row = static_cast<size_t>(int_option(env, info[0], "row", 0, kMaxSafeInteger));
        Napi::Float32Array out;
        if (info.Length() > 1 && !info[1].IsUndefined()) {
            if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_float32_array)
                throw invalid_argument(env, "out must be a Float32Array");
            out = info[1].As<Napi::Float32Array>();
        } else {
            out = Napi::Float32Array::New(env, static_cast<size_t>(h->n_vocab));
        }
        check(env, forge_engine_logits(e, row, out.Data(), out.ElementLength()));
        return out;
    }
    // setTopK(k): what decode keeps for the rows that ask for logits: 0
    // every logit (logits()), 1..min(FORGE_TOP_MAX, n_vocab) the k largest
    // with their ids and the row's log-sum-exp (top()).
    Napi::Value SetTopK(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        const auto k = static_cast<uint32_t>(int_option(env, info[0], "k", 0, UINT32_MAX));
        check(env, forge_engine_set_top_k(e, k));
        h->top_k = k;
        return env.Undefined();
    }
    // top(row) -> {ids: Int32Array, logits: Float32Array, lse: number}: the
    // row's k candidates, largest first (ties: the lower id first).
    Napi::Value Top(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        const size_t row = static_cast<size_t>(int_option(env, info[0], "row", 0, kMaxSafeInteger));
        const size_t cap = std::max<size_t>(h->top_k, 1);  // full mode: the library says so (INVALID_ARGUMENT)
        Napi::Int32Array ids = Napi::Int32Array::New(env, cap);
        Napi::Float32Array logits = Napi::Float32Array::New(env, cap);
        size_t n = 0;
        float lse = 0;
        check(env, forge_engine_top(e, row, ids.Data(), logits.Data(), cap, &n, &lse));
        Napi::Object o = Napi::Object::New(env);
        o.Set("ids", n == cap ? ids : Napi::Int32Array::New(env, n, ids.ArrayBuffer(), 0));
        o.Set("logits", n == cap ? logits : Napi::Float32Array::New(env, n, logits.ArrayBuffer(), 0));
        o.Set("lse", Napi::Number::New(env, lse));
        return o;
    }
    Napi::Value Stats(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_kv_stats s{};
        check(env, forge_engine_stats(engine(env), &s));
        Napi::Object o = Napi::Object::New(env);
        o.Set("blocksTotal", static_cast<double>(s.blocks_total));
        o.Set("blockSize", s.block_size);
        o.Set("blocksUsed", static_cast<double>(s.blocks_used));
        o.Set("blocksFree", static_cast<double>(s.blocks_free));
        o.Set("blocksCached", static_cast<double>(s.blocks_cached));
        o.Set("prefixHits", static_cast<double>(s.prefix_hits));
        o.Set("prefixTokensReused", static_cast<double>(s.prefix_tokens_reused));
        o.Set("cowCopies", static_cast<double>(s.cow_copies));
        o.Set("nSeqs", s.n_seqs);
        return o;
    }
    // setPreempt(on): a batch the pool cannot hold preempts the newest
    // sequences instead of FORGE_ERR_KV_EXHAUSTED.
    Napi::Value SetPreempt(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        check(env, forge_engine_set_preempt(e, info[0].ToBoolean() ? 1 : 0));
        return env.Undefined();
    }
    // preempted() -> number[]: the sequences the last decode preempted, in
    // order (the count first, then the ids).
    Napi::Value Preempted(const Napi::CallbackInfo &info) {
        Napi::Env env = info.Env();
        forge_engine *e = engine(env);
        size_t n = 0;
        forge_status st = forge_engine_preempted(e, nullptr, 0, &n);
        std::vector<int32_t> ids;
        if (st == FORGE_ERR_BUFFER_TOO_SMALL) {
            ids.resize(n);
            st = forge_engine_preempted(e, ids.data(), ids.size(), &n);
        }
        check(env, st);
        Napi::Array out = Napi::Array::New(env, n);
        for (size_t i = 0; i < n; i++) out.Set(static_cast<uint32_t>(i), Napi::Number::New(env, ids[i]));
        return out;
    }
    Napi::Value NVocab(const Napi::CallbackInfo &info) {
        if (!h) throw make_error(info.Env(), "ERR_CLOSED", "rocmforge: engine is closed", -1);
        return Napi::Number::New(info.Env(), h->n_vocab);
    }
    Napi::Value Close(const Napi::CallbackInfo &info) {
        h.reset();  // a running decode keeps its own reference until it ends
        return info.Env().Undefined();
    }
};
Napi::FunctionReference Engine::ctor;

// newEngine({contextSize, kvBudget, preempt}): a model-only call (the C engine reads
// only the loaded weights), so it works while a generation runs.
Napi::Value Model::NewEngine(const Napi::CallbackInfo &info) {
    Napi::Env env = info.Env();
    forge_ctx *c = ctx(env);
    forge_engine_params p = forge_engine_default_params();
    bool preempt = false;
    if (info.Length() > 0 && info[0].IsObject()) {
        Napi::Object o = info[0].As<Napi::Object>();
        Napi::Value v;
        if (!(v = option(o, "contextSize")).IsUndefined())
            p.n_ctx = static_cast<uint32_t>(int_option(env, v, "contextSize", 0, UINT32_MAX));
        if (!(v = option(o, "kvBudget")).IsUndefined())
            p.kv_budget = static_cast<uint64_t>(int_option(env, v, "kvBudget", 0, kMaxSafeInteger));
        preempt = option(o, "preempt").ToBoolean();
    }
    forge_engine *e = nullptr;
    forge_status st = forge_engine_new(c, &p, &e);
    if (st != FORGE_OK) throw status_error(env, st, forge_last_error());
    if (preempt && (st = forge_engine_set_preempt(e, 1)) != FORGE_OK) {
        Napi::Error err = status_error(env, st, forge_last_error());
        forge_engine_free(e);
        throw err;
    }
    auto eh = std::make_shared<EngineHandle>();
    eh->e = e;
    eh->n_vocab = forge_n_vocab(c);
    Napi::Object o = Engine::ctor.New({});
    Engine::Unwrap(o)->h = eh;
    return o;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
    Model::Init(env, exports);
    Engine::Init(env, exports);
    exports.Set("load", Napi::Function::New(env, Load));
    exports.Set("deviceCount", Napi::Function::New(env, DeviceCount));
    exports.Set("backendCompiled", Napi::Function::New(env, BackendCompiled));
    exports.Set("abiVersion", Napi::Number::New(env, forge_abi_version()));
    exports.Set("topMax", Napi::Number::New(env, FORGE_TOP_MAX));
    exports.Set("version", Napi::String::New(env, forge_version()));
    return exports;
}

}  // namespace

NODE_API_MODULE(rocmforge, Init)
