package rocmforge

import (
	"bufio"
	"context"
	"errors"
	"os"
	"path/filepath"
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
