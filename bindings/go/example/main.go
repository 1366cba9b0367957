// Command example loads SmolLM2, tokenizes a prompt and streams 32 greedy
// tokens, then prints the ids (the same output as examples/simple.c).
package main

import (
	"context"
	"fmt"
	"os"

	rocmforge "github.com/rocmforge/rocmforge/bindings/go"
)

func main() {
	path, prompt := "models/SmolLM2-135M-Instruct.Q4_1.gguf", "The capital of France is"
	if len(os.Args) > 1 {
		path = os.Args[1]
	}
	if len(os.Args) > 2 {
		prompt = os.Args[2]
	}
	m, err := rocmforge.Load(path, rocmforge.WithContextSize(512))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer m.Close()
	ids, err := m.Tokenize(prompt, true, false)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Print(prompt)
	r, err := m.Generate(context.Background(), ids, rocmforge.GenerateOptions{MaxTokens: 32, Sampler: rocmforge.Greedy()}, func(t rocmforge.Token) bool {
		fmt.Print(t.Text)
		return true
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	fmt.Print("\nids:")
	for _, t := range r.Tokens {
		fmt.Print(" ", t)
	}
	fmt.Println()
}
