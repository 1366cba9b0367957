package rocmforge

import (
	"bufio"
	"context"
	"errors"
	"os"
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
