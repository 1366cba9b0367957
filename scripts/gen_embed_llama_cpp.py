#!/usr/bin/env python3
"""llama.cpp's own embeddings of the 20 nomic-embed-text-v1.5 sentences, as a
second, independent reference for tests/embeddings.rs (the first is
scripts/gen_embed_fixtures.py's float64 PyTorch NomicBert).

llama.cpp: the llama-cpp-python 0.3.36 sdist's, built as in
docs/PERFORMANCE.md (vendor/llama.cpp/build-cpu); driven through that
sdist's own Python package (`Llama(embedding=True).embed(normalize=True)`:
mean pooling, the model's pooling_type, L2-normalised).

Output: tests/fixtures/embed/llama_cpp_mean.f32 (20 x n_embd, little-endian
f32) and its provenance in llama_cpp.json.

Run:  PYTHONPATH=vendor/llama-cpp-python-0.3.36 \\
      LLAMA_CPP_LIB_PATH=$PWD/vendor/llama.cpp/build-cpu/bin \\
      .venv-llama/bin/python scripts/gen_embed_llama_cpp.py
"""
import json
import os

import numpy as np
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FX = os.path.join(ROOT, "tests", "fixtures", "embed")


def main():
    fx = json.load(open(os.path.join(FX, "sentences.json")))
    llm = Llama(model_path=os.path.join(ROOT, "models", "nomic-embed-text-v1.5.f16.gguf"),
                embedding=True, n_ctx=2048, n_threads=2, verbose=False)
    rows = []
    for s, ids in zip(fx["sentences"], fx["ids"]):
        assert llm.tokenize(s.encode(), add_bos=True, special=False) == ids, s
        rows.append(np.asarray(llm.embed(s, normalize=True), dtype="<f4"))
    np.stack(rows).tofile(os.path.join(FX, "llama_cpp_mean.f32"))
    json.dump({"llama_cpp": "llama-cpp-python 0.3.36 sdist and its llama.cpp, CPU build (vendor/llama.cpp/build-cpu)",
               "call": "Llama(embedding=True).embed(sentence, normalize=True)", "n": len(rows)},
              open(os.path.join(FX, "llama_cpp.json"), "w"), indent=1)
    print(f"{len(rows)} embeddings of {rows[0].shape[0]} values")


if __name__ == "__main__":
    main()
