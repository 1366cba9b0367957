// Package rocmforge is a thin Go binding over librocmforge's C ABI
// (include/rocmforge.h): load GGUF models, tokenize, and generate text with
// streaming and context cancellation. It adds no inference logic.
//
// Finding the library: cgo links with -lrocmforge. Point cgo at an install
// with pkg-config,
//
//	export CGO_CFLAGS="$(pkg-config --cflags rocmforge)" CGO_LDFLAGS="$(pkg-config --libs rocmforge)"
//
// or at a source checkout through the environment:
//
//	export CGO_CFLAGS=-I$ROCMFORGE/include CGO_LDFLAGS=-L$ROCMFORGE/target/release LD_LIBRARY_PATH=$ROCMFORGE/target/release
//
// Concurrency: every method of a *Model locks it, so a Model is safe to share
// between goroutines, but calls on one Model run one at a time (the C
// context holds one sequence). For parallel generation take one Model per
// goroutine with NewSession: sessions share the loaded weights. Do not call
// the same Model from Generate's onToken callback or while consuming its
// Stream: the call would wait for the generation that is waiting for it.
//
// Many sequences: an Engine (Model.NewEngine) runs many sequences over one
// loaded model with a paged KV block pool; each Decode is one batch of rows
// from any of its sequences. An Engine locks itself like a Model.
//
// Errors are *Error values carrying the library's Status; test them with
// errors.Is and the Err* sentinels (ErrBusy is the library's FORGE_ERR_BUSY:
// a C handle used by two calls at once; ErrKVExhausted an Engine's full KV
// pool).
package rocmforge

/*
#cgo LDFLAGS: -lrocmforge
#include <stdlib.h>
#include "rocmforge.h"

extern bool rocmforgeGoToken(int32_t token, char *piece, size_t len, void *user);
extern bool rocmforgeGoProgress(float p, void *user);

static enum forge_status rf_generate(forge_ctx *ctx, forge_sampler *s, const int32_t *prompt, size_t n,
                                     uint32_t max_tokens, const char **stop, size_t n_stop, uintptr_t handle,
                                     int32_t *out, size_t cap, size_t *n_out, enum forge_stop_reason *why) {
	struct forge_generate_params gp = forge_generate_default_params();
	gp.max_tokens = max_tokens;
	gp.stop = stop;
	gp.n_stop = n_stop;
	gp.on_token = (forge_token_cb)rocmforgeGoToken;
	gp.user_data = (void *)handle;
	return forge_generate(ctx, s, prompt, n, &gp, out, cap, n_out, why);
}

static enum forge_status rf_load(const char *path, uint32_t threads, uint32_t n_ctx, int32_t backend, int32_t gpu,
                                 uint64_t budget, uintptr_t handle, forge_ctx **out) {
	struct forge_load_params p = forge_load_default_params();
	p.n_threads = threads;
	p.n_ctx = n_ctx;
	p.backend = backend; // an int32_t: the library rejects a value that is not a forge_backend
	p.gpu_index = gpu;
	p.gpu_mem_budget = budget;
	if (handle) {
		p.progress = (forge_progress_cb)rocmforgeGoProgress;
		p.progress_user_data = (void *)handle;
	}
	return forge_load(path, &p, out);
}
*/
import "C"

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime/cgo"
	"sync"
	"unsafe"
)

// ABIVersion is the C ABI version this binding was written for.
const ABIVersion = 3

// Status is a forge_status code.
type Status int

// Status codes (fixed numbers, as in rocmforge.h).
const (
	StatusOK                 Status = 0
	StatusInvalidArgument    Status = 1
	StatusNullPointer        Status = 2
	StatusBufferTooSmall     Status = 3
	StatusInvalidUTF8        Status = 4
	StatusIO                 Status = 10
	StatusInvalidModel       Status = 11
	StatusUnsupported        Status = 12
	StatusContextFull        Status = 20
	StatusOutOfMemory        Status = 21
	StatusKVExhausted        Status = 22 // an Engine's KV block pool cannot hold a batch; nothing was evaluated
	StatusBackendUnavailable Status = 30
	StatusCancelled          Status = 40
	StatusBusy               Status = 41 // a handle in use by another call; nothing was done
	StatusInternal           Status = 99
)

// The Status numbers above are the header's: a difference is a compile
// error (an index other than 0 into a one-element array).
var (
	_ = [1]struct{}{}[StatusOK-C.FORGE_OK]
	_ = [1]struct{}{}[StatusInvalidArgument-C.FORGE_ERR_INVALID_ARGUMENT]
	_ = [1]struct{}{}[StatusNullPointer-C.FORGE_ERR_NULL_POINTER]
	_ = [1]struct{}{}[StatusBufferTooSmall-C.FORGE_ERR_BUFFER_TOO_SMALL]
	_ = [1]struct{}{}[StatusInvalidUTF8-C.FORGE_ERR_INVALID_UTF8]
	_ = [1]struct{}{}[StatusIO-C.FORGE_ERR_IO]
	_ = [1]struct{}{}[StatusInvalidModel-C.FORGE_ERR_INVALID_MODEL]
	_ = [1]struct{}{}[StatusUnsupported-C.FORGE_ERR_UNSUPPORTED]
	_ = [1]struct{}{}[StatusContextFull-C.FORGE_ERR_CONTEXT_FULL]
	_ = [1]struct{}{}[StatusOutOfMemory-C.FORGE_ERR_OUT_OF_MEMORY]
	_ = [1]struct{}{}[StatusKVExhausted-C.FORGE_ERR_KV_EXHAUSTED]
	_ = [1]struct{}{}[StatusBackendUnavailable-C.FORGE_ERR_BACKEND_UNAVAILABLE]
	_ = [1]struct{}{}[StatusCancelled-C.FORGE_ERR_CANCELLED]
	_ = [1]struct{}{}[StatusBusy-C.FORGE_ERR_BUSY]
	_ = [1]struct{}{}[StatusInternal-C.FORGE_ERR_INTERNAL]
)

// Error is a failed call: the status and forge_last_error()'s message.
// errors.Is(err, ErrIO) and friends compare the status.
type Error struct {
	Status  Status
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("rocmforge: %s (status %d)", e.Message, int(e.Status))
}

// Is matches any *Error with the same Status.
func (e *Error) Is(target error) bool {
	var t *Error
	return errors.As(target, &t) && t.Status == e.Status
}

// Sentinel errors for errors.Is.
var (
	ErrInvalidArgument = &Error{Status: StatusInvalidArgument}
	ErrIO              = &Error{Status: StatusIO}
	ErrInvalidModel    = &Error{Status: StatusInvalidModel}
	ErrUnsupported     = &Error{Status: StatusUnsupported}
	ErrContextFull     = &Error{Status: StatusContextFull}
	ErrOutOfMemory     = &Error{Status: StatusOutOfMemory}
	// ErrKVExhausted: an Engine's KV block pool has no room for the batch
	// (FORGE_ERR_KV_EXHAUSTED). Nothing was evaluated and the Engine stays
	// usable: free or truncate a sequence (Stats has the numbers), or make
	// the Engine with a larger KVBudget.
	ErrKVExhausted = &Error{Status: StatusKVExhausted}
	// ErrBackendUnavailable: the backend is not compiled in or has no usable device.
	ErrBackendUnavailable = &Error{Status: StatusBackendUnavailable}
	ErrCancelled          = &Error{Status: StatusCancelled}
	// ErrBusy: the library found a context, sampler or engine in use by
	// another call (FORGE_ERR_BUSY) and did nothing; retry once that call has
	// returned. A Model and an Engine serialize their own calls, so this
	// arises only if the same C handle is reached some other way.
	ErrBusy = &Error{Status: StatusBusy}
	// ErrInternal: a bug in the library (a caught panic); close the Model.
	ErrInternal = &Error{Status: StatusInternal}
	// ErrClosed: the Model was used after Close, or is a nil *Model. An
	// Engine used after Close (or a nil *Engine) returns an error that
	// errors.Is matches with ErrClosed too.
	ErrClosed       = errors.New("rocmforge: model is closed")
	errEngineClosed = closedError("engine")
)

// closedError is a handle other than a Model used after Close; it is
// ErrClosed for errors.Is.
type closedError string

func (c closedError) Error() string        { return "rocmforge: " + string(c) + " is closed" }
func (c closedError) Is(target error) bool { return target == ErrClosed }

func check(st C.enum_forge_status) error {
	if st == C.FORGE_OK {
		return nil
	}
	return &Error{Status: Status(st), Message: C.GoString(C.forge_last_error())}
}

// Version is the library's version string.
func Version() string { return C.GoString(C.forge_version()) }

func checkABI() error {
	// The header cgo compiled must match this binding too: Go's build cache
	// does not notice a changed rocmforge.h outside the module, and a stale
	// struct layout would corrupt memory (go clean -cache fixes it).
	if h := int(C.FORGE_ABI_VERSION); h != ABIVersion {
		return &Error{Status: StatusUnsupported, Message: fmt.Sprintf("compiled against rocmforge.h ABI version %d, this binding needs %d (stale Go build cache? run go clean -cache)", h, ABIVersion)}
	}
	if v := int(C.forge_abi_version()); v != ABIVersion {
		return &Error{Status: StatusUnsupported, Message: fmt.Sprintf("librocmforge ABI version %d, this binding needs %d", v, ABIVersion)}
	}
	return nil
}

// Backend is where a model runs (forge_backend).
type Backend int

// Backends. BackendAuto takes the first GPU of a compiled-in GPU backend,
// else the CPU. Any other value is ErrInvalidArgument.
const (
	BackendAuto Backend = 0
	BackendCPU  Backend = 1
	BackendCUDA Backend = 2
	BackendHIP  Backend = 3
)

// cBackend is b as the C ABI's int32_t. A value outside int32 would wrap
// into a valid backend, so it is an error here; the library checks the rest.
func (b Backend) cBackend() (C.int32_t, error) {
	if int64(b) < math.MinInt32 || int64(b) > math.MaxInt32 {
		return 0, &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("backend %d is not a forge_backend (0 Auto, 1 CPU, 2 CUDA, 3 HIP)", int(b))}
	}
	return C.int32_t(b), nil
}

// BackendCompiled reports whether the library was built with backend b
// (the CPU and Auto always are). False for a value that is not a backend.
func BackendCompiled(b Backend) bool {
	cb, err := b.cBackend()
	return err == nil && bool(C.forge_backend_compiled(cb))
}

// DeviceCount is the number of devices of a GPU backend this process can
// use (1 for the CPU and Auto). A backend that is not compiled in or whose
// driver reports no device gives ErrBackendUnavailable with the driver's
// words; a value that is not a backend, ErrInvalidArgument.
func DeviceCount(b Backend) (int, error) {
	cb, err := b.cBackend()
	if err != nil {
		return 0, err
	}
	var n C.int32_t
	if err := check(C.forge_device_count(cb, &n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// MaxThreads and MaxContextSize are the largest WithThreads and
// WithContextSize values (FORGE_MAX_THREADS, FORGE_MAX_CTX); larger ones
// fail Load with ErrInvalidArgument.
const (
	MaxThreads     = int(C.FORGE_MAX_THREADS)
	MaxContextSize = int(C.FORGE_MAX_CTX)
)

// MaxTopK is the largest Engine.SetTopK value (FORGE_TOP_MAX; the
// vocabulary size when that is smaller): a larger one is ErrInvalidArgument.
const MaxTopK = int(C.FORGE_TOP_MAX)

type options struct {
	threads, nCtx, gpu int
	backend            Backend
	gpuBudget          uint64
	progress           func(float32) bool
}

// Option configures Load.
type Option func(*options)

// WithThreads sets the CPU worker threads, 0..MaxThreads (0 = one per core).
func WithThreads(n int) Option { return func(o *options) { o.threads = n } }

// WithContextSize sets the KV cache size in tokens, 0..MaxContextSize
// (0 = min(n_ctx_train, 4096)).
func WithContextSize(n int) Option { return func(o *options) { o.nCtx = n } }

// WithBackend picks the backend (default BackendAuto).
func WithBackend(b Backend) Option { return func(o *options) { o.backend = b } }

// WithGPU picks the device index of a GPU backend (default 0).
func WithGPU(index int) Option { return func(o *options) { o.gpu = index } }

// WithGPUMemBudget caps the device memory the model may use for weights, KV
// cache and scratch, in bytes (0 = the free memory less 5%); exceeding it
// fails Load with ErrOutOfMemory.
func WithGPUMemBudget(bytes uint64) Option { return func(o *options) { o.gpuBudget = bytes } }

// WithProgress reports load progress in [0, 1]; return false to cancel.
func WithProgress(f func(float32) bool) Option { return func(o *options) { o.progress = f } }

// Model is a loaded model plus one sequence (its KV cache).
type Model struct {
	mu  sync.Mutex
	ctx *C.forge_ctx
}

// inRange is an *Error for an option the C type cannot hold (it would wrap
// into an accepted value); the library checks the ranges within it.
func inRange(what string, v int, lo, hi int64) error {
	if int64(v) < lo || int64(v) > hi {
		return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("%s %d is out of range", what, v)}
	}
	return nil
}

//export rocmforgeGoProgress
func rocmforgeGoProgress(p C.float, user unsafe.Pointer) C.bool {
	f := cgo.Handle(uintptr(user)).Value().(func(float32) bool)
	return C.bool(f(float32(p)))
}

// Load opens a GGUF model.
func Load(path string, opts ...Option) (*Model, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	backend, err := o.backend.cBackend()
	if err != nil {
		return nil, err
	}
	for _, err := range []error{inRange("threads", o.threads, 0, math.MaxUint32), inRange("context size", o.nCtx, 0, math.MaxUint32),
		inRange("GPU index", o.gpu, math.MinInt32, math.MaxInt32)} {
		if err != nil {
			return nil, err
		}
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	var h cgo.Handle
	if o.progress != nil {
		h = cgo.NewHandle(o.progress)
		defer h.Delete()
	}
	var ctx *C.forge_ctx
	st := C.rf_load(cpath, C.uint32_t(o.threads), C.uint32_t(o.nCtx), backend, C.int32_t(o.gpu), C.uint64_t(o.gpuBudget), C.uintptr_t(h), &ctx)
	if err := check(st); err != nil {
		return nil, err
	}
	return &Model{ctx: ctx}, nil
}

// Close frees the context. Further calls return ErrClosed. Idempotent; a
// nil *Model is a no-op.
func (m *Model) Close() error {
	if m == nil {
		return nil
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.ctx != nil {
		C.forge_free(m.ctx)
		m.ctx = nil
	}
	return nil
}

// lock takes the Model for one call: ErrClosed after Close or on a nil *Model.
func (m *Model) lock() error {
	if m == nil {
		return ErrClosed
	}
	m.mu.Lock()
	if m.ctx == nil {
		m.mu.Unlock()
		return ErrClosed
	}
	return nil
}

// NewSession returns another Model on the same loaded weights (shared, not
// copied) with its own empty KV cache.
func (m *Model) NewSession() (*Model, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	var ctx *C.forge_ctx
	if err := check(C.forge_ctx_clone_session(m.ctx, &ctx)); err != nil {
		return nil, err
	}
	return &Model{ctx: ctx}, nil
}

// Tokenize encodes text. addSpecial adds BOS/EOS as the model asks;
// parseSpecial turns control tokens written in the text into single ids.
func (m *Model) Tokenize(text string, addSpecial, parseSpecial bool) ([]int32, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	ctext := C.CString(text)
	defer C.free(unsafe.Pointer(ctext))
	out := make([]int32, len(text)+8)
	var n C.size_t
	st := C.forge_tokenize(m.ctx, ctext, C.size_t(len(text)), C.bool(addSpecial), C.bool(parseSpecial), (*C.int32_t)(unsafe.Pointer(&out[0])), C.size_t(len(out)), &n)
	if st == C.FORGE_ERR_BUFFER_TOO_SMALL {
		out = make([]int32, int(n))
		st = C.forge_tokenize(m.ctx, ctext, C.size_t(len(text)), C.bool(addSpecial), C.bool(parseSpecial), (*C.int32_t)(unsafe.Pointer(&out[0])), C.size_t(len(out)), &n)
	}
	if err := check(st); err != nil {
		return nil, err
	}
	return out[:int(n)], nil
}

// Detokenize decodes ids to text (control tokens omitted).
func (m *Model) Detokenize(tokens []int32) (string, error) {
	if err := m.lock(); err != nil {
		return "", err
	}
	defer m.mu.Unlock()
	if len(tokens) == 0 {
		return "", nil
	}
	tp := (*C.int32_t)(unsafe.Pointer(&tokens[0]))
	return readString(len(tokens)*8+16, func(buf *C.char, size C.size_t, n *C.size_t) C.enum_forge_status {
		return C.forge_detokenize(m.ctx, tp, C.size_t(len(tokens)), false, buf, size, n)
	})
}

// readString reads text the C API writes into a caller's buffer: a first
// call with `guess` bytes and, on BUFFER_TOO_SMALL, one more with the size
// that call reported.
func readString(guess int, call func(buf *C.char, size C.size_t, n *C.size_t) C.enum_forge_status) (string, error) {
	buf := make([]byte, guess)
	var n C.size_t
	st := call((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n)
	if st == C.FORGE_ERR_BUFFER_TOO_SMALL {
		buf = make([]byte, int(n))
		st = call((*C.char)(unsafe.Pointer(&buf[0])), C.size_t(len(buf)), &n)
	}
	if err := check(st); err != nil {
		return "", err
	}
	return string(buf[:int(n)]), nil
}

// Backend says where the model runs: "cpu (N threads)" or e.g.
// "cuda:0 NVIDIA H100 80GB HBM3 (sm_90)".
func (m *Model) Backend() (string, error) {
	if err := m.lock(); err != nil {
		return "", err
	}
	defer m.mu.Unlock()
	return readString(128, func(buf *C.char, size C.size_t, n *C.size_t) C.enum_forge_status {
		return C.forge_ctx_backend(m.ctx, buf, size, n)
	})
}

// Pooling says how Embed pools per-token hidden states (forge_pooling).
type Pooling int32

const (
	// PoolingDefault is the model's own (its pooling_type; mean when unset).
	PoolingDefault Pooling = -1
	// PoolingNone gives one n_embd row per token, back to back.
	PoolingNone Pooling = 0
	PoolingMean Pooling = 1
	// PoolingCLS is the first token's ([CLS]).
	PoolingCLS  Pooling = 2
	PoolingLast Pooling = 3
)

// EmbedTokens is the embedding of one input's token ids (from Tokenize
// with addSpecial): n_embd floats, or len(tokens)*n_embd with PoolingNone;
// unit L2 length when normalize. An encoder (nomic-bert, IsEncoder) runs
// its bidirectional pass; a decoder gives its final hidden states. The
// KV cache is not touched.
func (m *Model) EmbedTokens(tokens []int32, pooling Pooling, normalize bool) ([]float32, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	var tp *C.int32_t
	if len(tokens) > 0 {
		tp = (*C.int32_t)(unsafe.Pointer(&tokens[0]))
	}
	var n C.size_t
	st := C.forge_embed(m.ctx, tp, C.size_t(len(tokens)), C.int32_t(pooling), C.bool(normalize), nil, 0, &n)
	if st != C.FORGE_ERR_BUFFER_TOO_SMALL {
		if err := check(st); err != nil {
			return nil, err
		}
	}
	out := make([]float32, int(n))
	if err := check(C.forge_embed(m.ctx, tp, C.size_t(len(tokens)), C.int32_t(pooling), C.bool(normalize), (*C.float)(unsafe.Pointer(&out[0])), C.size_t(len(out)), &n)); err != nil {
		return nil, err
	}
	return out[:int(n)], nil
}

// Embed tokenizes text with the model's special tokens ([CLS] ... [SEP]
// for BERT-like models) and returns EmbedTokens of it.
func (m *Model) Embed(text string, pooling Pooling, normalize bool) ([]float32, error) {
	ids, err := m.Tokenize(text, true, false)
	if err != nil {
		return nil, err
	}
	return m.EmbedTokens(ids, pooling, normalize)
}

// IsEncoder reports an embedding-only encoder (nomic-bert): Generate,
// Reset and NewEngine fail with StatusUnsupported; Embed works. False
// after Close.
func (m *Model) IsEncoder() bool {
	if m.lock() != nil {
		return false
	}
	defer m.mu.Unlock()
	return bool(C.forge_is_encoder(m.ctx))
}

// Reset keeps the first nKeep positions of the KV cache (0 clears it).
func (m *Model) Reset(nKeep int) error {
	if err := m.lock(); err != nil {
		return err
	}
	defer m.mu.Unlock()
	return check(C.forge_kv_reset(m.ctx, C.size_t(nKeep)))
}

// SamplerOptions: Temperature <= 0 is greedy. Zero values of the other
// fields mean "off" (TopP and RepeatPenalty use 1 for off; see Greedy/DefaultSampler).
type SamplerOptions struct {
	Temperature, TopP, MinP, RepeatPenalty, FrequencyPenalty, PresencePenalty float32
	TopK, PenaltyLastN                                                        int
	Seed                                                                      uint64
}

// Greedy picks the most likely token every step.
func Greedy() SamplerOptions { return SamplerOptions{Temperature: 0, TopP: 1, RepeatPenalty: 1} }

// DefaultSampler returns the library's default sampling settings.
func DefaultSampler() SamplerOptions {
	p := C.forge_sampler_default_params()
	return SamplerOptions{Temperature: float32(p.temperature), TopK: int(p.top_k), TopP: float32(p.top_p), MinP: float32(p.min_p),
		RepeatPenalty: float32(p.repeat_penalty), FrequencyPenalty: float32(p.frequency_penalty), PresencePenalty: float32(p.presence_penalty),
		PenaltyLastN: int(p.penalty_last_n), Seed: uint64(p.seed)}
}

// GenerateOptions for Generate and Stream.
type GenerateOptions struct {
	MaxTokens int
	Sampler   SamplerOptions
	Stop      []string
}

// Token is one streamed token: its id and the text it completes (may be
// empty while a multi-byte character or a possible stop string is pending;
// ID is -1 for a final flush of held-back text).
type Token struct {
	ID   int32
	Text string
}

// Result of a generation.
type Result struct {
	Tokens []int32
	Text   string
	// Reason: "eog", "max_tokens", "stop", "callback" or "context_full".
	Reason string
}

type genState struct {
	ctx     context.Context
	onToken func(Token) bool
	text    []byte
	ctxErr  error
}

//export rocmforgeGoToken
func rocmforgeGoToken(token C.int32_t, piece *C.char, n C.size_t, user unsafe.Pointer) C.bool {
	st := cgo.Handle(uintptr(user)).Value().(*genState)
	text := C.GoStringN(piece, C.int(n))
	st.text = append(st.text, text...)
	if err := st.ctx.Err(); err != nil {
		st.ctxErr = err
		return false
	}
	keep := st.onToken == nil || st.onToken(Token{ID: int32(token), Text: text})
	// a cancellation during onToken (Stream's send gives up on ctx.Done()
	// and returns false) is still a cancellation, not a callback stop
	if err := st.ctx.Err(); err != nil {
		st.ctxErr = err
		return false
	}
	return C.bool(keep)
}

// Generate evaluates prompt at the current position, then samples up to
// opts.MaxTokens tokens, calling onToken (may be nil) for each. Returning
// false from onToken stops generation (Reason "callback"). Cancelling ctx
// stops it too, and Generate returns ctx.Err() with the partial result.
func (m *Model) Generate(ctx context.Context, prompt []int32, opts GenerateOptions, onToken func(Token) bool) (*Result, error) {
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	if len(prompt) == 0 {
		return nil, &Error{Status: StatusInvalidArgument, Message: "empty prompt"}
	}
	if err := inRange("MaxTokens", opts.MaxTokens, 0, math.MaxUint32-1); err != nil {
		return nil, err
	}
	sp := C.forge_sampler_default_params()
	s := opts.Sampler
	sp.temperature, sp.top_k, sp.top_p, sp.min_p = C.float(s.Temperature), C.uint32_t(s.TopK), C.float(s.TopP), C.float(s.MinP)
	sp.repeat_penalty, sp.frequency_penalty, sp.presence_penalty = C.float(s.RepeatPenalty), C.float(s.FrequencyPenalty), C.float(s.PresencePenalty)
	sp.penalty_last_n, sp.seed = C.uint32_t(s.PenaltyLastN), C.uint64_t(s.Seed)
	var smp *C.forge_sampler
	if err := check(C.forge_sampler_new(&sp, &smp)); err != nil {
		return nil, err
	}
	defer C.forge_sampler_free(smp)

	cstops := make([]*C.char, len(opts.Stop))
	for i, s := range opts.Stop {
		cstops[i] = C.CString(s)
		defer C.free(unsafe.Pointer(cstops[i]))
	}
	var stopPtr **C.char
	if len(cstops) > 0 {
		// a C array of the pointers (Go memory must not hold Go pointers passed to C)
		arr := C.malloc(C.size_t(len(cstops)) * C.size_t(unsafe.Sizeof(uintptr(0))))
		defer C.free(arr)
		for i, p := range cstops {
			*(**C.char)(unsafe.Add(arr, i*int(unsafe.Sizeof(uintptr(0))))) = p
		}
		stopPtr = (**C.char)(arr)
	}
	state := &genState{ctx: ctx, onToken: onToken}
	h := cgo.NewHandle(state)
	defer h.Delete()
	maxTok := opts.MaxTokens
	out := make([]int32, maxTok+1)
	var n C.size_t
	var why C.enum_forge_stop_reason
	st := C.rf_generate(m.ctx, smp, (*C.int32_t)(unsafe.Pointer(&prompt[0])), C.size_t(len(prompt)), C.uint32_t(maxTok),
		stopPtr, C.size_t(len(cstops)), C.uintptr_t(h), (*C.int32_t)(unsafe.Pointer(&out[0])), C.size_t(len(out)), &n, &why)
	if err := check(st); err != nil {
		return nil, err
	}
	reasons := map[C.enum_forge_stop_reason]string{C.FORGE_STOP_EOG: "eog", C.FORGE_STOP_MAX_TOKENS: "max_tokens",
		C.FORGE_STOP_STRING: "stop", C.FORGE_STOP_CALLBACK: "callback", C.FORGE_STOP_CONTEXT_FULL: "context_full"}
	res := &Result{Tokens: out[:int(n)], Text: string(state.text), Reason: reasons[why]}
	return res, state.ctxErr
}

// Stream runs Generate in a goroutine and delivers tokens on a channel,
// which is closed when generation ends; the final result or error arrives on
// the second channel. Cancel ctx to stop early (the consumer may simply stop
// reading after cancelling).
func (m *Model) Stream(ctx context.Context, prompt []int32, opts GenerateOptions) (<-chan Token, <-chan error) {
	tokens := make(chan Token)
	done := make(chan error, 1)
	go func() {
		defer close(tokens)
		_, err := m.Generate(ctx, prompt, opts, func(t Token) bool {
			select {
			case tokens <- t:
				return true
			case <-ctx.Done():
				return false
			}
		})
		done <- err
		close(done)
	}()
	return tokens, done
}

// ---- many sequences: the engine ----

// EngineOptions sizes an Engine and says what it does when full. Zero
// values are the library's defaults.
type EngineOptions struct {
	// ContextSize is the most positions one sequence may hold,
	// 0..MaxContextSize (0 = the Model's context size).
	ContextSize int
	// KVBudget is the bytes of KV cache for all sequences together,
	// rounded down to whole blocks of 16 positions and at least one full
	// sequence (0 = four full sequences).
	KVBudget uint64
	// Preempt: a batch the pool cannot hold preempts the newest sequences
	// until it fits, instead of failing Decode with ErrKVExhausted
	// (Engine.SetPreempt).
	Preempt bool
}

// SeqID names a sequence of an Engine. Ids are not reused while the Engine
// lives: a freed or unknown id is ErrInvalidArgument.
type SeqID int32

// BatchRow is one row of a batch: Token appended to sequence Seq at
// position Pos, which must be the sequence's length (plus one for each
// earlier row of the same sequence in the batch). Logits asks for this
// row's logits (Engine.Logits).
type BatchRow struct {
	Seq    SeqID
	Token  int32
	Pos    int
	Logits bool
}

// KVStats are an Engine's KV pool statistics.
type KVStats struct {
	BlocksTotal uint64 // blocks in the pool
	BlockSize   int    // positions per block
	BlocksUsed  uint64 // blocks some sequence holds
	BlocksFree  uint64 // blocks no sequence holds (free, or cached and evictable)
	// BlocksCached: of the free ones, blocks the prefix cache keeps for reuse.
	BlocksCached       uint64
	PrefixHits         uint64 // prefix lookups that reused blocks
	PrefixTokensReused uint64 // positions those lookups reused
	CowCopies          uint64 // blocks copied because a shared block was written (forks)
	NumSeqs            int    // sequences alive
}

// Engine is many sequences over one loaded model: a KV block pool and one
// batch of rows per Decode. It shares the Model's weights (not copied); the
// library keeps them loaded while the Engine lives, so closing the Model
// first is safe. Every method locks the Engine, so it may be shared between
// goroutines, but its calls run one at a time. Close frees it and all its
// sequences.
type Engine struct {
	mu     sync.Mutex
	e      *C.forge_engine
	model  *Model // the Model it was made from, kept reachable while the Engine is
	nVocab int
	topK   int // SetTopK's k: 0 for every logit
}

// NewEngine makes an Engine over the Model's loaded weights. A ContextSize
// out of range is ErrInvalidArgument; a pool the host cannot allocate,
// ErrOutOfMemory. The Model's own sequence is not touched; like the Model's
// other methods, NewEngine waits for a Generate running on it.
func (m *Model) NewEngine(opts EngineOptions) (*Engine, error) {
	if err := checkABI(); err != nil {
		return nil, err
	}
	if err := inRange("ContextSize", opts.ContextSize, 0, math.MaxUint32); err != nil {
		return nil, err
	}
	if err := m.lock(); err != nil {
		return nil, err
	}
	defer m.mu.Unlock()
	p := C.forge_engine_default_params()
	p.n_ctx = C.uint32_t(opts.ContextSize)
	p.kv_budget = C.uint64_t(opts.KVBudget)
	var e *C.forge_engine
	if err := check(C.forge_engine_new(m.ctx, &p, &e)); err != nil {
		return nil, err
	}
	if opts.Preempt {
		if err := check(C.forge_engine_set_preempt(e, 1)); err != nil {
			C.forge_engine_free(e)
			return nil, err
		}
	}
	return &Engine{e: e, model: m, nVocab: int(C.forge_n_vocab(m.ctx))}, nil
}

// Close frees the engine and all its sequences. Further calls return an
// error matching ErrClosed. Idempotent; a nil *Engine is a no-op.
func (e *Engine) Close() error {
	if e == nil {
		return nil
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.e != nil {
		C.forge_engine_free(e.e)
		e.e = nil
		e.model = nil
	}
	return nil
}

// lock takes the Engine for one call: an ErrClosed error after Close or on
// a nil *Engine.
func (e *Engine) lock() error {
	if e == nil {
		return errEngineClosed
	}
	e.mu.Lock()
	if e.e == nil {
		e.mu.Unlock()
		return errEngineClosed
	}
	return nil
}

// NVocab is the length of a row's logits.
func (e *Engine) NVocab() int {
	if e == nil {
		return 0
	}
	return e.nVocab
}

// NewSeq adds a new, empty sequence.
func (e *Engine) NewSeq() (SeqID, error) {
	if err := e.lock(); err != nil {
		return -1, err
	}
	defer e.mu.Unlock()
	var id C.int32_t
	if err := check(C.forge_seq_new(e.e, &id)); err != nil {
		return -1, err
	}
	return SeqID(id), nil
}

// FreeSeq removes a sequence and gives its KV blocks back (full blocks stay
// in the prefix cache until the pool needs them).
func (e *Engine) FreeSeq(seq SeqID) error {
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	return check(C.forge_seq_free(e.e, C.int32_t(seq)))
}

// ForkSeq adds a sequence with the same positions as src, sharing its full
// KV blocks copy-on-write: for several completions of one prompt.
func (e *Engine) ForkSeq(src SeqID) (SeqID, error) {
	if err := e.lock(); err != nil {
		return -1, err
	}
	defer e.mu.Unlock()
	var id C.int32_t
	if err := check(C.forge_seq_fork(e.e, C.int32_t(src), &id)); err != nil {
		return -1, err
	}
	return SeqID(id), nil
}

// KeepSeq keeps the first nKeep positions of a sequence (0 clears it).
func (e *Engine) KeepSeq(seq SeqID, nKeep int) error {
	if nKeep < 0 {
		return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("nKeep %d is negative", nKeep)}
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	return check(C.forge_seq_keep(e.e, C.int32_t(seq), C.size_t(nKeep)))
}

// SeqLen is the positions a sequence holds: the Pos of its next row.
func (e *Engine) SeqLen(seq SeqID) (int, error) {
	if err := e.lock(); err != nil {
		return 0, err
	}
	defer e.mu.Unlock()
	var n C.size_t
	if err := check(C.forge_seq_len(e.e, C.int32_t(seq), &n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// ReusePrefix is the prefix cache: it gives an empty sequence the cached KV
// blocks that its prompt tokens start with, and returns the positions
// reused (whole blocks, never the last token). Decode tokens[n:] from
// position n.
func (e *Engine) ReusePrefix(seq SeqID, tokens []int32) (int, error) {
	if err := e.lock(); err != nil {
		return 0, err
	}
	defer e.mu.Unlock()
	var tp *C.int32_t
	if len(tokens) > 0 {
		tp = (*C.int32_t)(unsafe.Pointer(&tokens[0]))
	}
	var n C.size_t
	if err := check(C.forge_seq_reuse_prefix(e.e, C.int32_t(seq), tp, C.size_t(len(tokens)), &n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// Decode runs one batch: every row of every sequence in one forward pass
// (decode rows and prefill chunks together). All or nothing: on error no
// sequence has moved. Errors: ErrInvalidArgument (no rows, a bad sequence
// id, token or position), ErrContextFull (a sequence past ContextSize),
// ErrKVExhausted (the pool cannot hold the batch: free or truncate a
// sequence and retry; with Preempt on, the batch runs instead, less the
// sequences Preempted names). Decode runs on the calling goroutine.
func (e *Engine) Decode(rows []BatchRow) error {
	crows := make([]C.forge_batch_row, len(rows))
	for i, r := range rows {
		if r.Pos < 0 || r.Pos > math.MaxInt32 {
			return &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("row %d: position %d is out of range", i, r.Pos)}
		}
		crows[i] = C.forge_batch_row{seq: C.int32_t(r.Seq), token: C.int32_t(r.Token), pos: C.int32_t(r.Pos)}
		if r.Logits {
			crows[i].logits = 1
		}
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	var rp *C.forge_batch_row
	if len(crows) > 0 {
		rp = &crows[0]
	}
	return check(C.forge_engine_decode(e.e, rp, C.size_t(len(crows))))
}

// Logits returns row's logits (NVocab floats) of the last successful
// Decode: ErrInvalidArgument for no such row or a row that did not ask.
func (e *Engine) Logits(row int) ([]float32, error) {
	return e.LogitsInto(row, nil)
}

// LogitsInto is Logits into dst when it has room (cap >= NVocab), else
// into a new slice; it returns the filled slice.
func (e *Engine) LogitsInto(row int, dst []float32) ([]float32, error) {
	if row < 0 {
		return nil, &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("row %d is negative", row)}
	}
	if err := e.lock(); err != nil {
		return nil, err
	}
	defer e.mu.Unlock()
	if cap(dst) < e.nVocab {
		dst = make([]float32, e.nVocab)
	}
	dst = dst[:e.nVocab]
	if err := check(C.forge_engine_logits(e.e, C.size_t(row), (*C.float)(unsafe.Pointer(&dst[0])), C.size_t(len(dst)))); err != nil {
		return nil, err
	}
	return dst, nil
}

// SetTopK says what Decode keeps for the rows that ask for logits: k = 0
// (the default) every logit (Logits); 1 <= k <= min(MaxTopK, NVocab) only
// the k largest with their token ids and the row's log-sum-exp (Top). A GPU
// backend selects them on the device, so k*8+4 bytes a row come back
// instead of NVocab floats. In top-k mode Logits is ErrInvalidArgument, and
// Top is in full mode. The last Decode's results are dropped. A k out of
// range is ErrInvalidArgument and changes nothing.
func (e *Engine) SetTopK(k int) error {
	if err := inRange("top-k", k, 0, math.MaxUint32); err != nil {
		return err
	}
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	if err := check(C.forge_engine_set_top_k(e.e, C.uint32_t(k))); err != nil {
		return err
	}
	e.topK = k
	return nil
}

// Top returns row's candidates of the last successful Decode under
// SetTopK(k), k >= 1: k token ids and their logits, largest first (ties:
// the lower id first), and the row's log-sum-exp over the whole vocabulary
// (a candidate's log-probability is its logit minus lse). Errors:
// ErrInvalidArgument in full mode (no SetTopK), for no such row or a row
// that did not ask for logits.
func (e *Engine) Top(row int) (ids []int32, logits []float32, lse float32, err error) {
	if row < 0 {
		return nil, nil, 0, &Error{Status: StatusInvalidArgument, Message: fmt.Sprintf("row %d is negative", row)}
	}
	if err := e.lock(); err != nil {
		return nil, nil, 0, err
	}
	defer e.mu.Unlock()
	k := e.topK
	if k == 0 {
		k = 1 // full mode: the library says so (INVALID_ARGUMENT)
	}
	ids, logits = make([]int32, k), make([]float32, k)
	var n C.size_t
	var clse C.float
	if err := check(C.forge_engine_top(e.e, C.size_t(row), (*C.int32_t)(unsafe.Pointer(&ids[0])), (*C.float)(unsafe.Pointer(&logits[0])),
		C.size_t(k), &n, &clse)); err != nil {
		return nil, nil, 0, err
	}
	return ids[:int(n)], logits[:int(n)], float32(clse), nil
}

// SetPreempt says what Decode does with a batch the pool cannot hold: off
// (the default) it fails with ErrKVExhausted; on, it preempts the newest
// sequences (by creation; forks are new) one by one until the rest fits. A
// preempted sequence keeps its id but holds no positions afterwards (SeqLen
// 0: decode its tokens again later), and its rows in that batch get no
// logits (Logits is ErrInvalidArgument). The oldest sequence with rows in
// the batch is never preempted.
func (e *Engine) SetPreempt(on bool) error {
	if err := e.lock(); err != nil {
		return err
	}
	defer e.mu.Unlock()
	var c C.int32_t
	if on {
		c = 1
	}
	return check(C.forge_engine_set_preempt(e.e, c))
}

// Preempted returns the sequences the last Decode preempted, in order
// (empty when none).
func (e *Engine) Preempted() ([]SeqID, error) {
	if err := e.lock(); err != nil {
		return nil, err
	}
	defer e.mu.Unlock()
	var n C.size_t
	st := C.forge_engine_preempted(e.e, nil, 0, &n)
	var ids []SeqID
	if st == C.FORGE_ERR_BUFFER_TOO_SMALL {
		ids = make([]SeqID, int(n)) // SeqID is an int32: the C ids' layout
		st = C.forge_engine_preempted(e.e, (*C.int32_t)(unsafe.Pointer(&ids[0])), C.size_t(len(ids)), &n)
	}
	if err := check(st); err != nil {
		return nil, err
	}
	return ids[:int(n)], nil
}

// Stats reports the KV pool.
func (e *Engine) Stats() (KVStats, error) {
	if err := e.lock(); err != nil {
		return KVStats{}, err
	}
	defer e.mu.Unlock()
	var s C.forge_kv_stats
	if err := check(C.forge_engine_stats(e.e, &s)); err != nil {
		return KVStats{}, err
	}
	return KVStats{BlocksTotal: uint64(s.blocks_total), BlockSize: int(s.block_size), BlocksUsed: uint64(s.blocks_used),
		BlocksFree: uint64(s.blocks_free), BlocksCached: uint64(s.blocks_cached), PrefixHits: uint64(s.prefix_hits),
		PrefixTokensReused: uint64(s.prefix_tokens_reused), CowCopies: uint64(s.cow_copies), NumSeqs: int(s.n_seqs)}, nil
}
