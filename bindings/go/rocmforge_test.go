package rocmforge

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// The tests need ROCMFORGE_MODEL (the SmolLM2 GGUF) and ROCMFORGE_C_IDS (a
// file holding the C example's "ids: ..." line). `make test-go` sets both.
func env(t *testing.T, k string) string {
	v := os.Getenv(k)
	if v == "" {
		t.Fatalf("%s is not set (run through `make test-go`)", k)
	}
	return v
}

func cExampleIDs(t *testing.T) []int32 {
	f, err := os.Open(env(t, "ROCMFORGE_C_IDS"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if line := s.Text(); strings.HasPrefix(line, "ids:") {
			var ids []int32
			for _, w := range strings.Fields(line[4:]) {
				v, err := strconv.Atoi(w)
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, int32(v))
			}
			return ids
		}
	}
	t.Fatal("no ids line in the C example output")
	return nil
}

func load(t *testing.T) *Model {
	m, err := Load(env(t, "ROCMFORGE_MODEL"), WithContextSize(512))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func TestExampleMatchesC(t *testing.T) {
	ids, text, err := Example(env(t, "ROCMFORGE_MODEL"), "The capital of France is", 32)
	if err != nil {
		t.Fatal(err)
	}
	want := cExampleIDs(t)
	if len(want) == 0 || len(ids) != len(want) {
		t.Fatalf("ids %v, C example %v", ids, want)
	}
	for i := range want {
		if ids[i] != want[i] {
			t.Fatalf("ids %v, C example %v", ids, want)
		}
	}
	if !strings.Contains(text, "Paris") {
		t.Fatalf("text %q", text)
	}
}

func TestBadPath(t *testing.T) {
	_, err := Load("/nonexistent/model.gguf")
	if !errors.Is(err, ErrIO) || !strings.Contains(err.Error(), "/nonexistent/model.gguf") {
		t.Fatalf("got %v", err)
	}
	var e *Error
	if !errors.As(err, &e) || e.Status != StatusIO {
		t.Fatalf("status: %v", err)
	}
}

func TestUseAfterClose(t *testing.T) {
	m := load(t)
	s, err := m.NewSession()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("Close is idempotent")
	}
	if _, err := s.Tokenize("hi", false, false); !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v", err)
	}
	if _, err := s.Generate(context.Background(), []int32{1}, GenerateOptions{MaxTokens: 1, Sampler: Greedy()}, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("got %v", err)
	}
}

func TestStreamingStopsWhenConsumerStops(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("Once upon a time", true, false)
	seen := 0
	r, err := m.Generate(context.Background(), prompt, GenerateOptions{MaxTokens: 32, Sampler: Greedy()}, func(Token) bool {
		seen++
		return seen < 3
	})
	if err != nil || seen != 3 || len(r.Tokens) != 3 || r.Reason != "callback" {
		t.Fatalf("seen %d, %+v, %v", seen, r, err)
	}
	// cancelling the context stops a channel stream
	s, _ := m.NewSession()
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, done := s.Stream(ctx, prompt, GenerateOptions{MaxTokens: 64, Sampler: Greedy()})
	n := 0
	for range ch {
		n++
		if n == 2 {
			cancel()
		}
	}
	if err := <-done; !errors.Is(err, context.Canceled) || n > 3 {
		t.Fatalf("after cancel: %d tokens, err %v", n, err)
	}
}

func TestSessionsInParallel(t *testing.T) {
	m := load(t)
	prompt, _ := m.Tokenize("1, 2, 3,", false, false)
	serial, err := m.Generate(context.Background(), prompt, GenerateOptions{MaxTokens: 8, Sampler: Greedy()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for i := 0; i < 3; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := m.NewSession()
			if err != nil {
				errs <- err
				return
			}
			defer s.Close()
			r, err := s.Generate(context.Background(), prompt, GenerateOptions{MaxTokens: 8, Sampler: Greedy()}, nil)
			if err == nil && r.Text != serial.Text {
				err = errors.New("parallel session differs: " + r.Text + " vs " + serial.Text)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
}

// Backend choice: Auto without a usable GPU runs on the CPU; a GPU backend
// that is not compiled in or has no device is ErrBackendUnavailable.
func TestBackendChoice(t *testing.T) {
	m := load(t)
	if where, err := m.Backend(); err != nil || !strings.HasPrefix(where, "cpu (") {
		t.Fatalf("Auto on a CPU build: %q, %v", where, err)
	}
	if n, err := DeviceCount(BackendCPU); err != nil || n != 1 || !BackendCompiled(BackendCPU) {
		t.Fatalf("CPU: %d devices, %v", n, err)
	}
	for _, b := range []Backend{BackendCUDA, BackendHIP} {
		n, err := DeviceCount(b)
		g, lerr := Load(env(t, "ROCMFORGE_MODEL"), WithBackend(b), WithContextSize(64), WithGPUMemBudget(1<<30))
		if !BackendCompiled(b) || err != nil {
			if !errors.Is(err, ErrBackendUnavailable) || !errors.Is(lerr, ErrBackendUnavailable) {
				t.Fatalf("backend %d: DeviceCount %v, Load %v", b, err, lerr)
			}
			continue
		}
		if n < 1 || lerr != nil {
			t.Fatalf("backend %d: %d devices, Load %v", b, n, lerr)
		}
		g.Close()
	}
	c, err := Load(env(t, "ROCMFORGE_MODEL"), WithBackend(BackendCPU), WithThreads(1), WithContextSize(64))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if where, _ := c.Backend(); where != "cpu (1 threads)" {
		t.Fatalf("got %q", where)
	}
}

// writeTemp writes a scratch file for a load that must fail.
func writeTemp(t *testing.T, name string, data []byte) string {
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// wantStatus fails unless err is an *Error with the status of sentinel and a
// message containing each of words.
func wantStatus(t *testing.T, what string, err error, sentinel *Error, words ...string) {
	t.Helper()
	var e *Error
	if !errors.Is(err, sentinel) || !errors.As(err, &e) || e.Status != sentinel.Status {
		t.Fatalf("%s: got %v, want status %d", what, err, int(sentinel.Status))
	}
	for _, w := range words {
		if !strings.Contains(e.Message, w) {
			t.Fatalf("%s: message %q lacks %q", what, e.Message, w)
		}
	}
}

// Values the C ABI rejects come back as ErrInvalidArgument, never a crash:
// a backend that is not a forge_backend (also one that would wrap into a
// valid int32), threads above MaxThreads, a context above MaxContextSize.
func TestInvalidArguments(t *testing.T) {
	path := env(t, "ROCMFORGE_MODEL")
	bad := []Backend{42, -1}
	if strconv.IntSize == 64 {
		wraps := int64(BackendCPU) + 1<<32 // BackendCPU as an int32
		bad = append(bad, Backend(wraps))
	}
	for _, b := range bad {
		if BackendCompiled(b) {
			t.Fatalf("BackendCompiled(%d) is true", int(b))
		}
		n, err := DeviceCount(b)
		wantStatus(t, "DeviceCount", err, ErrInvalidArgument, "not a forge_backend")
		if n != 0 {
			t.Fatalf("DeviceCount(%d) = %d on error", int(b), n)
		}
		m, err := Load(path, WithBackend(b), WithContextSize(64))
		wantStatus(t, "Load with a bad backend", err, ErrInvalidArgument, "not a forge_backend")
		if m != nil {
			t.Fatal("Load returned a Model with its error")
		}
	}
	_, err := Load(path, WithThreads(MaxThreads+1), WithContextSize(64))
	wantStatus(t, "threads above MaxThreads", err, ErrInvalidArgument, "FORGE_MAX_THREADS")
	_, err = Load(path, WithThreads(-1), WithContextSize(64))
	wantStatus(t, "negative threads", err, ErrInvalidArgument)
	if strconv.IntSize == 64 {
		wraps := int64(1)<<32 + 1 // 1 as a uint32
		_, err = Load(path, WithThreads(int(wraps)), WithContextSize(64))
		wantStatus(t, "threads that would wrap to 1", err, ErrInvalidArgument, "out of range")
	}
	_, err = Load(path, WithContextSize(MaxContextSize+1))
	wantStatus(t, "context above MaxContextSize", err, ErrInvalidArgument, "FORGE_MAX_CTX")
	m := load(t)
	prompt, err := m.Tokenize("Hi", true, false)
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Generate(context.Background(), prompt, GenerateOptions{MaxTokens: -2, Sampler: Greedy()}, nil)
	wantStatus(t, "negative MaxTokens", err, ErrInvalidArgument, "MaxTokens")
	// the failures left nothing behind: the model still generates
	if r, err := m.Generate(context.Background(), prompt, GenerateOptions{MaxTokens: 2, Sampler: Greedy()}, nil); err != nil || len(r.Tokens) != 2 {
		t.Fatalf("after the errors: %+v, %v", r, err)
	}
}

// A file that is not a whole GGUF model is ErrInvalidModel; a directory is
// ErrIO saying so.
func TestCorruptModel(t *testing.T) {
	garbage := append([]byte("GGUF"), []byte("\x03\x00\x00\x00garbage garbage garbage \xff\xff\xff\xff\xff\xff\xff\xff")...)
	real, err := os.ReadFile(env(t, "ROCMFORGE_MODEL"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"garbage.gguf": garbage, "truncated.gguf": real[:4096], "empty.gguf": {}} {
		m, err := Load(writeTemp(t, name, data), WithContextSize(64))
		wantStatus(t, name, err, ErrInvalidModel, "corrupt GGUF")
		if m != nil {
			t.Fatalf("%s: Load returned a Model with its error", name)
		}
	}
	_, err = Load(t.TempDir())
	wantStatus(t, "a directory", err, ErrIO, "directory")
}

// A nil *Model and a closed one give ErrClosed from every method, never a
// nil dereference; Close on either is a no-op.
func TestNilAndClosedModel(t *testing.T) {
	closed := load(t)
	if err := closed.Close(); err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]*Model{"nil": nil, "closed": closed} {
		if err := m.Close(); err != nil {
			t.Fatalf("%s: Close: %v", name, err)
		}
		if _, err := m.Tokenize("hi", true, false); !errors.Is(err, ErrClosed) {
			t.Fatalf("%s: Tokenize: %v", name, err)
		}
		if _, err := m.Detokenize([]int32{1, 2}); !errors.Is(err, ErrClosed) {
			t.Fatalf("%s: Detokenize: %v", name, err)
		}
		if s, err := m.NewSession(); !errors.Is(err, ErrClosed) || s != nil {
			t.Fatalf("%s: NewSession: %v, %v", name, s, err)
		}
		if _, err := m.Backend(); !errors.Is(err, ErrClosed) {
			t.Fatalf("%s: Backend: %v", name, err)
		}
		if err := m.Reset(0); !errors.Is(err, ErrClosed) {
			t.Fatalf("%s: Reset: %v", name, err)
		}
		if _, err := m.Generate(context.Background(), []int32{1}, GenerateOptions{MaxTokens: 1, Sampler: Greedy()}, nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("%s: Generate: %v", name, err)
		}
		tokens, done := m.Stream(context.Background(), []int32{1}, GenerateOptions{MaxTokens: 1, Sampler: Greedy()})
		for range tokens {
			t.Fatalf("%s: Stream delivered a token", name)
		}
		if err := <-done; !errors.Is(err, ErrClosed) {
			t.Fatalf("%s: Stream: %v", name, err)
		}
	}
}

// FORGE_ERR_BUSY is its own status: ErrBusy matches it and nothing else.
func TestBusyStatus(t *testing.T) {
	busy := error(&Error{Status: 41, Message: "forge_eval: the context is in use by another call"})
	if StatusBusy != 41 || !errors.Is(busy, ErrBusy) || errors.Is(busy, ErrInvalidArgument) || errors.Is(ErrInvalidArgument, ErrBusy) {
		t.Fatalf("ErrBusy does not identify status 41: %v", busy)
	}
	if !strings.Contains(busy.Error(), "status 41") {
		t.Fatalf("%q", busy.Error())
	}
}

// argmax is the first index of the largest logit (the library's greedy choice).
func argmax(l []float32) int32 {
	best := 0
	for i, v := range l {
		if v > l[best] {
			best = i
		}
	}
	return int32(best)
}

// prefillRows appends tokens to seq from pos; the last row asks for logits.
func prefillRows(seq SeqID, pos int, tokens []int32) []BatchRow {
	rows := make([]BatchRow, len(tokens))
	for i, t := range tokens {
		rows[i] = BatchRow{Seq: seq, Token: t, Pos: pos + i, Logits: i == len(tokens)-1}
	}
	return rows
}

func newEngine(t *testing.T, m *Model, opts EngineOptions) *Engine {
	t.Helper()
	e, err := m.NewEngine(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// must unwraps a (value, error) result in the engine tests; an error
// panics, and the test's deferred failOnPanic turns it into t.Fatal.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func failOnPanic(t *testing.T) {
	if r := recover(); r != nil {
		t.Fatal(r)
	}
}

func equalIDs(a, b []int32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Two sequences interleaved in one engine, both prompts in one decode and
// one row per sequence per step, each get exactly their solo greedy tokens.
func TestEngineInterleavedEqualsSolo(t *testing.T) {
	defer failOnPanic(t)
	m := load(t)
	const steps = 8
	prompts := []string{"The capital of France is", "Once upon a time"}
	var ptoks, solo [][]int32
	for _, p := range prompts {
		ids := must(m.Tokenize(p, true, false))
		s := must(m.NewSession())
		r, err := s.Generate(context.Background(), ids, GenerateOptions{MaxTokens: steps, Sampler: Greedy()}, nil)
		s.Close()
		if err != nil || len(r.Tokens) != steps {
			t.Fatalf("solo %q: %+v, %v", p, r, err)
		}
		ptoks, solo = append(ptoks, ids), append(solo, r.Tokens)
	}
	if equalIDs(solo[0], solo[1]) {
		t.Fatal("the two prompts continue the same way")
	}
	e := newEngine(t, m, EngineOptions{})
	if e.NVocab() < 1000 {
		t.Fatalf("NVocab %d", e.NVocab())
	}
	seqs := []SeqID{must(e.NewSeq()), must(e.NewSeq())}
	var rows []BatchRow
	var logitRow []int
	for i, s := range seqs {
		rows = append(rows, prefillRows(s, 0, ptoks[i])...)
		logitRow = append(logitRow, len(rows)-1)
	}
	if err := e.Decode(rows); err != nil {
		t.Fatal(err)
	}
	got := make([][]int32, 2)
	var buf []float32
	for i := range seqs {
		buf = must(e.LogitsInto(logitRow[i], buf))
		got[i] = append(got[i], argmax(buf))
	}
	if _, err := e.Logits(0); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("a row without logits: %v", err)
	}
	for len(got[0]) < steps {
		step := make([]BatchRow, len(seqs))
		for i, s := range seqs {
			step[i] = BatchRow{Seq: s, Token: got[i][len(got[i])-1], Pos: must(e.SeqLen(s)), Logits: true}
		}
		if err := e.Decode(step); err != nil {
			t.Fatal(err)
		}
		for i := range seqs {
			got[i] = append(got[i], argmax(must(e.Logits(i))))
		}
	}
	for i := range seqs {
		if !equalIDs(got[i], solo[i]) {
			t.Fatalf("%q: engine %v, solo %v", prompts[i], got[i], solo[i])
		}
	}
	if n := must(e.SeqLen(seqs[0])); n != len(ptoks[0])+steps-1 {
		t.Fatalf("SeqLen %d", n)
	}
}

// A fork gives the same next token as its source; KeepSeq truncates;
// invalid ids are ErrInvalidArgument; the prefix cache reuses a freed
// sequence's blocks; freeing every sequence frees every block.
func TestEngineSequences(t *testing.T) {
	defer failOnPanic(t)
	m := load(t)
	e := newEngine(t, m, EngineOptions{ContextSize: 256})
	prompt := must(m.Tokenize("The capital of France is", true, false))
	src := must(e.NewSeq())
	if err := e.Decode(prefillRows(src, 0, prompt)); err != nil {
		t.Fatal(err)
	}
	tok := argmax(must(e.Logits(len(prompt) - 1)))
	f := must(e.ForkSeq(src))
	if f == src || must(e.SeqLen(f)) != len(prompt) {
		t.Fatalf("fork %d of %d, len %d", f, src, must(e.SeqLen(f)))
	}
	pos := len(prompt)
	if err := e.Decode([]BatchRow{{Seq: src, Token: tok, Pos: pos, Logits: true}, {Seq: f, Token: tok, Pos: pos, Logits: true}}); err != nil {
		t.Fatal(err)
	}
	if a, b := argmax(must(e.Logits(0))), argmax(must(e.Logits(1))); a != b {
		t.Fatalf("source next %d, fork next %d", a, b)
	}
	if err := e.KeepSeq(f, 3); err != nil || must(e.SeqLen(f)) != 3 {
		t.Fatalf("KeepSeq: %v", err)
	}
	st := must(e.Stats())
	if st.NumSeqs != 2 || st.BlocksUsed == 0 || st.BlockSize != 16 || st.BlocksUsed+st.BlocksFree != st.BlocksTotal {
		t.Fatalf("stats %+v", st)
	}

	// invalid ids: ErrInvalidArgument from every call, nothing changed
	for _, bad := range []SeqID{-1, 999} {
		_, err := e.SeqLen(bad)
		wantStatus(t, "SeqLen", err, ErrInvalidArgument)
		wantStatus(t, "FreeSeq", e.FreeSeq(bad), ErrInvalidArgument)
		_, err = e.ForkSeq(bad)
		wantStatus(t, "ForkSeq", err, ErrInvalidArgument)
		wantStatus(t, "KeepSeq", e.KeepSeq(bad, 0), ErrInvalidArgument)
		wantStatus(t, "Decode", e.Decode([]BatchRow{{Seq: bad, Token: 1, Pos: 0, Logits: true}}), ErrInvalidArgument)
		_, err = e.ReusePrefix(bad, prompt)
		wantStatus(t, "ReusePrefix", err, ErrInvalidArgument)
	}
	wantStatus(t, "no rows", e.Decode(nil), ErrInvalidArgument)
	wantStatus(t, "negative position", e.Decode([]BatchRow{{Seq: src, Token: 1, Pos: -1}}), ErrInvalidArgument)
	wantStatus(t, "negative nKeep", e.KeepSeq(src, -1), ErrInvalidArgument)
	_, err := e.Logits(-1)
	wantStatus(t, "negative row", err, ErrInvalidArgument)
	before := must(e.SeqLen(src))
	// a wrong position refuses the whole batch: the good row did not move
	err = e.Decode([]BatchRow{{Seq: src, Token: 1, Pos: before}, {Seq: f, Token: 1, Pos: 0}})
	wantStatus(t, "wrong position", err, ErrInvalidArgument)
	if n := must(e.SeqLen(src)); n != before {
		t.Fatalf("a refused batch moved a sequence: %d -> %d", before, n)
	}

	// the prefix cache: a freed sequence's full blocks serve the next one
	// with the same prompt, which then predicts the same next token
	long := must(m.Tokenize("The quick brown fox jumps over the lazy dog. The quick brown fox jumps over the lazy dog again and again.", true, false))
	a := must(e.NewSeq())
	if err := e.Decode(prefillRows(a, 0, long)); err != nil {
		t.Fatal(err)
	}
	want := argmax(must(e.Logits(len(long) - 1)))
	if err := e.FreeSeq(a); err != nil {
		t.Fatal(err)
	}
	b := must(e.NewSeq())
	reused := must(e.ReusePrefix(b, long))
	if reused != (len(long)-1)/16*16 || reused < 16 || must(e.SeqLen(b)) != reused {
		t.Fatalf("reused %d of %d", reused, len(long))
	}
	if err := e.Decode(prefillRows(b, reused, long[reused:])); err != nil {
		t.Fatal(err)
	}
	if got := argmax(must(e.Logits(len(long) - reused - 1))); got != want {
		t.Fatalf("after the prefix hit: next %d, fresh %d", got, want)
	}
	if st := must(e.Stats()); st.PrefixHits < 1 || st.PrefixTokensReused < uint64(reused) {
		t.Fatalf("stats %+v", st)
	}
	_, err = e.ReusePrefix(b, long)
	wantStatus(t, "ReusePrefix on a non-empty sequence", err, ErrInvalidArgument)

	for _, s := range []SeqID{src, f, b} {
		if err := e.FreeSeq(s); err != nil {
			t.Fatal(err)
		}
	}
	st = must(e.Stats())
	if st.BlocksUsed != 0 || st.NumSeqs != 0 || st.BlocksFree != st.BlocksTotal {
		t.Fatalf("after freeing all: %+v", st)
	}
	wantStatus(t, "a freed id", e.FreeSeq(b), ErrInvalidArgument)
}

// A 1-byte KV budget is the smallest pool (one sequence's context plus a
// block); a second sequence that needs more blocks gets ErrKVExhausted and
// the engine stays usable.
func TestEngineKVExhausted(t *testing.T) {
	defer failOnPanic(t)
	m := load(t)
	e := newEngine(t, m, EngineOptions{ContextSize: 64, KVBudget: 1})
	if st := must(e.Stats()); st.BlocksTotal != 64/16+1 {
		t.Fatalf("stats %+v", st)
	}
	toks := make([]int32, 48)
	for i := range toks {
		toks[i] = int32(100 + i)
	}
	a, b := must(e.NewSeq()), must(e.NewSeq())
	if err := e.Decode(prefillRows(a, 0, toks)); err != nil { // 3 blocks of 5
		t.Fatal(err)
	}
	err := e.Decode(prefillRows(b, 0, toks))
	wantStatus(t, "second sequence", err, ErrKVExhausted, "blocks")
	if errors.Is(err, ErrOutOfMemory) || errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("ErrKVExhausted matches another sentinel: %v", err)
	}
	if must(e.SeqLen(b)) != 0 || must(e.SeqLen(a)) != len(toks) {
		t.Fatal("a refused batch moved a sequence")
	}
	// usable afterwards: free the first sequence, then the second fits
	if err := e.FreeSeq(a); err != nil {
		t.Fatal(err)
	}
	if err := e.Decode(prefillRows(b, 0, toks)); err != nil {
		t.Fatal(err)
	}
	if l := must(e.Logits(len(toks) - 1)); len(l) != e.NVocab() {
		t.Fatalf("%d logits", len(l))
	}
	if err := e.FreeSeq(b); err != nil {
		t.Fatal(err)
	}
	if st := must(e.Stats()); st.BlocksUsed != 0 {
		t.Fatalf("stats %+v", st)
	}
	_, err = m.NewEngine(EngineOptions{ContextSize: MaxContextSize + 1})
	wantStatus(t, "ContextSize above MaxContextSize", err, ErrInvalidArgument, "FORGE_MAX_CTX")
	_, err = m.NewEngine(EngineOptions{ContextSize: -1})
	wantStatus(t, "negative ContextSize", err, ErrInvalidArgument)
}

// Preemption: a pool of exactly 6 blocks (SmolLM2-135M keeps (kv_dim +
// v_dim) * 2 bytes * n_layer = (192 + 192) * 2 * 30 bytes per position, 16
// positions a block). a and b hold 20 positions (2 blocks each), the newer
// c 1 (1 block); 20 more rows each need a and b at 3 blocks and c at 2: 8 >
// 6. Without Preempt that batch is ErrKVExhausted; with it c is preempted
// (a and b then fill the 6 blocks), its rows get no logits and it holds
// nothing. The option and SetPreempt do the same.
func TestEnginePreempt(t *testing.T) {
	defer failOnPanic(t)
	m := load(t)
	toks := make([]int32, 20)
	for i := range toks {
		toks[i] = int32(100 + i)
	}
	for _, preempt := range []bool{false, true} {
		e := newEngine(t, m, EngineOptions{ContextSize: 48, KVBudget: 6 * 16 * (192 + 192) * 2 * 30, Preempt: preempt})
		if st := must(e.Stats()); st.BlocksTotal != 6 {
			t.Fatalf("stats %+v, want 6 blocks", st)
		}
		a, b := must(e.NewSeq()), must(e.NewSeq())
		if err := e.Decode(append(prefillRows(a, 0, toks), prefillRows(b, 0, toks)...)); err != nil {
			t.Fatal(err)
		}
		if p := must(e.Preempted()); len(p) != 0 {
			t.Fatalf("preempted %v after a batch that fits", p)
		}
		c := must(e.NewSeq())
		if err := e.Decode([]BatchRow{{Seq: c, Token: 1, Pos: 0}}); err != nil {
			t.Fatal(err)
		}
		if st := must(e.Stats()); st.BlocksUsed != 5 {
			t.Fatalf("stats %+v, want 5 blocks used", st)
		}
		// a's last row is 19, b's 39, c's 59
		rows := append(append(prefillRows(a, 20, toks), prefillRows(b, 20, toks)...), prefillRows(c, 1, toks)...)
		if !preempt {
			wantStatus(t, "a batch past the pool without Preempt", e.Decode(rows), ErrKVExhausted, "blocks")
			if p := must(e.Preempted()); len(p) != 0 {
				t.Fatalf("preempted %v by a refused batch", p)
			}
			if must(e.SeqLen(a)) != 20 || must(e.SeqLen(b)) != 20 || must(e.SeqLen(c)) != 1 {
				t.Fatal("a refused batch moved a sequence")
			}
			if err := e.SetPreempt(true); err != nil { // the same batch now runs
				t.Fatal(err)
			}
		}
		if err := e.Decode(rows); err != nil {
			t.Fatalf("Preempt %v: %v", preempt, err)
		}
		if p := must(e.Preempted()); len(p) != 1 || p[0] != c {
			t.Fatalf("preempted %v, want [%d]", p, c)
		}
		if la, lb, lc := must(e.SeqLen(a)), must(e.SeqLen(b)), must(e.SeqLen(c)); la != 40 || lb != 40 || lc != 0 {
			t.Fatalf("lengths %d %d %d, want 40 40 0", la, lb, lc)
		}
		if st := must(e.Stats()); st.BlocksUsed != 6 {
			t.Fatalf("stats %+v, want 6 blocks used", st)
		}
		for _, row := range []int{19, 39} {
			if l := must(e.Logits(row)); len(l) != e.NVocab() {
				t.Fatalf("row %d: %d logits", row, len(l))
			}
		}
		_, err := e.Logits(59)
		wantStatus(t, "a preempted sequence's row", err, ErrInvalidArgument)
		// the next decode that needs no preemption names none
		if err := e.Decode([]BatchRow{{Seq: a, Token: 1, Pos: 40, Logits: true}}); err != nil {
			t.Fatal(err)
		}
		if p := must(e.Preempted()); len(p) != 0 {
			t.Fatalf("preempted %v after a batch that fits", p)
		}
		// turned off again, a batch that does not fit is refused
		if err := e.SetPreempt(false); err != nil {
			t.Fatal(err)
		}
		wantStatus(t, "Preempt turned off", e.Decode(prefillRows(c, 0, toks)), ErrKVExhausted)
		if must(e.SeqLen(b)) != 40 || must(e.SeqLen(c)) != 0 {
			t.Fatal("a refused batch moved a sequence")
		}
	}
}

// Top-k candidates: the same two prompts in one batch, once with full
// logits and once under SetTopK(5) in a fresh engine: the 5 ids are the full
// row's 5 largest (ties: the lower id) in descending order with the same
// values, and lse is the row's log-sum-exp. A k above MaxTopK is
// ErrInvalidArgument and changes nothing; each mode refuses the other's
// read; SetTopK(0) gives the full logits back.
func TestEngineTopK(t *testing.T) {
	defer failOnPanic(t)
	m := load(t)
	ptoks := [][]int32{must(m.Tokenize("The capital of France is", true, false)), must(m.Tokenize("Once upon a time", true, false))}
	// prefillBoth decodes both prompts in one batch and returns each one's logits row.
	prefillBoth := func(e *Engine, seqs []SeqID) []int {
		var rows []BatchRow
		var logitRow []int
		for i, s := range seqs {
			rows = append(rows, prefillRows(s, 0, ptoks[i])...)
			logitRow = append(logitRow, len(rows)-1)
		}
		if err := e.Decode(rows); err != nil {
			panic(err)
		}
		return logitRow
	}
	closeTo := func(got, want float32) bool {
		return math.Abs(float64(got)-float64(want)) <= 1e-5*math.Max(1, math.Abs(float64(want)))
	}

	full := newEngine(t, m, EngineOptions{})
	lrow := prefillBoth(full, []SeqID{must(full.NewSeq()), must(full.NewSeq())})
	want := [][]float32{must(full.Logits(lrow[0])), must(full.Logits(lrow[1]))}
	_, _, _, err := full.Top(lrow[0])
	wantStatus(t, "Top in full mode", err, ErrInvalidArgument, "forge_engine_set_top_k")

	e := newEngine(t, m, EngineOptions{})
	wantStatus(t, "SetTopK(MaxTopK+1)", e.SetTopK(MaxTopK+1), ErrInvalidArgument, "256")
	wantStatus(t, "SetTopK(-1)", e.SetTopK(-1), ErrInvalidArgument, "top-k")
	if err := e.SetTopK(5); err != nil {
		t.Fatal(err)
	}
	seqs := []SeqID{must(e.NewSeq()), must(e.NewSeq())}
	if got := prefillBoth(e, seqs); got[0] != lrow[0] || got[1] != lrow[1] {
		t.Fatalf("rows %v, want %v", got, lrow)
	}
	var top5 [][]int32
	for i, l := range want {
		order := make([]int32, len(l))
		for j := range order {
			order[j] = int32(j)
		}
		sort.SliceStable(order, func(a, b int) bool { return l[order[a]] > l[order[b]] }) // stable: ties keep the lower id first
		order = order[:5]
		ids, logits, lse, err := e.Top(lrow[i])
		if err != nil {
			t.Fatal(err)
		}
		if !equalIDs(ids, order) || len(logits) != 5 {
			t.Fatalf("row %d: top ids %v logits %v, want the full row's largest %v", i, ids, logits, order)
		}
		for j, id := range ids {
			if !closeTo(logits[j], l[id]) {
				t.Fatalf("row %d: candidate %d (id %d) logit %v, full row %v", i, j, id, logits[j], l[id])
			}
			if j > 0 && logits[j-1] < logits[j] {
				t.Fatalf("row %d: logits not descending: %v", i, logits)
			}
		}
		mx, sum := float64(l[order[0]]), 0.0
		for _, x := range l {
			sum += math.Exp(float64(x) - mx)
		}
		if wantLSE := mx + math.Log(sum); math.Abs(float64(lse)-wantLSE) >= 1e-3 {
			t.Fatalf("row %d: lse %v, want %v", i, lse, wantLSE)
		}
		top5 = append(top5, ids)
	}
	// top-k mode: no full logits, and a row that did not ask (or is not
	// there) has no candidates either
	_, err = e.Logits(lrow[0])
	wantStatus(t, "Logits in top-k mode", err, ErrInvalidArgument, "forge_engine_top")
	_, err = e.LogitsInto(lrow[1], make([]float32, e.NVocab()))
	wantStatus(t, "LogitsInto in top-k mode", err, ErrInvalidArgument)
	for _, row := range []int{0, lrow[1] + 1, -1} {
		_, _, _, err = e.Top(row)
		wantStatus(t, fmt.Sprintf("Top(%d)", row), err, ErrInvalidArgument)
	}
	// a refused k changes nothing: still top-5, the results still there
	wantStatus(t, "SetTopK(MaxTopK+1)", e.SetTopK(MaxTopK+1), ErrInvalidArgument)
	if ids, _, _, err := e.Top(lrow[1]); err != nil || !equalIDs(ids, top5[1]) {
		t.Fatalf("after a refused SetTopK: %v, %v", ids, err)
	}
	// the largest k: MaxTopK candidates, the first five as before
	if err := e.SetTopK(MaxTopK); err != nil {
		t.Fatal(err)
	}
	_, _, _, err = e.Top(lrow[0])
	wantStatus(t, "Top after SetTopK dropped the results", err, ErrInvalidArgument)
	for _, s := range seqs {
		if err := e.KeepSeq(s, 0); err != nil {
			t.Fatal(err)
		}
	}
	prefillBoth(e, seqs)
	ids, logits, _, err := e.Top(lrow[0])
	if err != nil || len(ids) != MaxTopK || len(logits) != MaxTopK {
		t.Fatalf("top-%d: %d ids, %d logits, %v", MaxTopK, len(ids), len(logits), err)
	}
	if !equalIDs(ids[:5], top5[0]) || !sort.SliceIsSorted(logits, func(a, b int) bool { return logits[a] > logits[b] }) {
		t.Fatalf("top-%d: first ids %v, want %v (descending logits)", MaxTopK, ids[:5], top5[0])
	}
	// back to every logit: the same as the first engine's
	if err := e.SetTopK(0); err != nil {
		t.Fatal(err)
	}
	for _, s := range seqs {
		if err := e.KeepSeq(s, 0); err != nil {
			t.Fatal(err)
		}
	}
	prefillBoth(e, seqs)
	for i := range want {
		l := must(e.Logits(lrow[i]))
		if len(l) != len(want[i]) {
			t.Fatalf("row %d: %d logits", i, len(l))
		}
		for j := range l {
			if !closeTo(l[j], want[i][j]) {
				t.Fatalf("row %d: logit %d is %v, the full engine's %v", i, j, l[j], want[i][j])
			}
		}
	}
	_, _, _, err = e.Top(lrow[0])
	wantStatus(t, "Top after SetTopK(0)", err, ErrInvalidArgument)
}

// An Engine outlives its Model (the library keeps the weights); a closed or
// nil Engine is ErrClosed from every method, Close is idempotent; a closed
// Model cannot make one; concurrent calls serialize.
func TestEngineLifetime(t *testing.T) {
	defer failOnPanic(t)
	m, err := Load(env(t, "ROCMFORGE_MODEL"), WithContextSize(64))
	if err != nil {
		t.Fatal(err)
	}
	hello := must(m.Tokenize("Hello", true, false))
	e, err := m.NewEngine(EngineOptions{KVBudget: 1})
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	if _, err := m.NewEngine(EngineOptions{}); !errors.Is(err, ErrClosed) {
		t.Fatalf("NewEngine on a closed Model: %v", err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := e.NewSeq()
			if err == nil {
				err = e.Decode(prefillRows(s, 0, hello))
			}
			if err == nil {
				err = e.FreeSeq(s)
			}
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []*Engine{e, nil} {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal("Close is idempotent")
		}
		_, err1 := c.NewSeq()
		_, err2 := c.SeqLen(0)
		_, err3 := c.ForkSeq(0)
		_, err4 := c.ReusePrefix(0, hello)
		_, err5 := c.Logits(0)
		_, err6 := c.Stats()
		_, err7 := c.Preempted()
		_, _, _, err8 := c.Top(0)
		for i, err := range []error{err1, err2, err3, err4, err5, err6, err7, err8, c.SetPreempt(true), c.SetTopK(5), c.FreeSeq(0), c.KeepSeq(0, 0), c.Decode(prefillRows(0, 0, hello))} {
			if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "engine is closed") {
				t.Fatalf("call %d on a closed engine: %v", i, err)
			}
		}
	}
}

func TestEmbeddings(t *testing.T) {
	m := load(t)
	e, err := m.Embed("The capital of France is", PoolingDefault, true)
	if err != nil {
		t.Fatal(err)
	}
	var norm float64
	for _, x := range e {
		norm += float64(x) * float64(x)
	}
	if len(e) != 576 || norm < 0.9998 || norm > 1.0002 {
		t.Fatalf("SmolLM2 embedding: %d floats, squared norm %v", len(e), norm)
	}
	ids, _ := m.Tokenize("Hi there", true, false)
	all, err := m.EmbedTokens(ids, PoolingNone, false)
	if err != nil || len(all) != len(ids)*576 {
		t.Fatalf("PoolingNone: %d floats, %v", len(all), err)
	}
	if _, err := m.EmbedTokens(nil, PoolingMean, true); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("no tokens: %v", err)
	}
	if _, err := m.EmbedTokens(ids, Pooling(9), true); !errors.Is(err, ErrInvalidArgument) {
		t.Fatalf("pooling 9: %v", err)
	}

	// the encoder nomic-embed-text, beside the test model in models/
	nomic, err := Load(filepath.Join(filepath.Dir(env(t, "ROCMFORGE_MODEL")), "nomic-embed-text-v1.5.f16.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	defer nomic.Close()
	if !nomic.IsEncoder() || m.IsEncoder() {
		t.Fatal("IsEncoder")
	}
	dot := func(a, b []float32) (s float64) {
		for i := range a {
			s += float64(a[i]) * float64(b[i])
		}
		return
	}
	q, err := nomic.Embed("search_query: What is the tallest mountain on Earth?", PoolingDefault, true)
	if err != nil || len(q) != 768 {
		t.Fatalf("nomic: %d floats, %v", len(q), err)
	}
	right, _ := nomic.Embed("search_document: Mount Everest, in the Himalayas, rises 8,849 metres above sea level.", PoolingDefault, true)
	wrong, _ := nomic.Embed("search_document: Sourdough bread rises thanks to wild yeast.", PoolingDefault, true)
	if dot(q, right) < dot(q, wrong)+0.1 {
		t.Fatalf("retrieval: right %v, wrong %v", dot(q, right), dot(q, wrong))
	}
	if err := nomic.Reset(0); !errors.Is(err, ErrUnsupported) {
		t.Fatalf("Reset on an encoder: %v", err)
	}
}
