"""llama-cpp-python's tokens/s on a libllama.so: the library in
LLAMA_CPP_LIB_PATH (this script is run once per library, in a fresh
process, by scripts/llama_python_compare.sh).

For each model: load with n_threads=2, evaluate a 32-token prompt, then 64
greedy steps through llama-cpp-python's own loop (Llama.eval of one token,
Llama.sample through its sampler chain): prompt tokens/s and decode
tokens/s, best of --reps runs. Prints one JSON line per model.
"""
import argparse
import json
import time

from llama_cpp import Llama

ap = argparse.ArgumentParser()
ap.add_argument("models", nargs="+")
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--tokens", type=int, default=64)
a = ap.parse_args()

prompt = "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg"
for path in a.models:
    llm = Llama(model_path=path, n_ctx=512, n_threads=2, n_threads_batch=2, verbose=False)
    toks = llm.tokenize(prompt.encode())
    best_pp, best_tg, text = 0.0, 0.0, None
    for _ in range(a.reps):
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(toks)
        t1 = time.perf_counter()
        out = []
        for _ in range(a.tokens):
            t = llm.sample(temp=0.0)
            out.append(t)
            llm.eval([t])
        t2 = time.perf_counter()
        best_pp = max(best_pp, len(toks) / (t1 - t0))
        best_tg = max(best_tg, a.tokens / (t2 - t1))
        text = out
    print(json.dumps({"model": path.rsplit("/", 1)[-1], "prompt_tokens": len(toks), "pp_tps": round(best_pp, 2), "tg_tps": round(best_tg, 2), "greedy_ids": text[:16]}), flush=True)
    llm.close()
