package rocmforge

import "context"

// Example loads a model, tokenizes prompt, and generates n tokens greedily
// (the same job as examples/simple.c): it returns the generated ids and text.
func Example(path, prompt string, n int) ([]int32, string, error) {
	m, err := Load(path, WithContextSize(512))
	if err != nil {
		return nil, "", err
	}
	defer m.Close()
	ids, err := m.Tokenize(prompt, true, false)
	if err != nil {
		return nil, "", err
	}
	r, err := m.Generate(context.Background(), ids, GenerateOptions{MaxTokens: n, Sampler: Greedy()}, nil)
	if err != nil {
		return nil, "", err
	}
	return r.Tokens, r.Text, nil
}
