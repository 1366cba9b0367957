#!/usr/bin/env python3
"""Reference logits from HF transformers loading each real GGUF (weights
dequantized to fp32, fp32 compute on CPU): an independent forward pass.

Output per model, tests/fixtures/logits/<key>/:
  teacher.json   token ids of the committed English text (HF tokenizer, BOS
                 as the model adds it), first N_TEACHER tokens, and per
                 position the top-5 ids and logits of the next-token
                 distribution (teacher-forced).
  prompt<i>.ids  / prompt<i>.f16   5 prompts: token ids (json) and the full
                 last-position logits as little-endian f16.

Run:  .venv/bin/python scripts/gen_logit_fixtures.py [smollm2 qwen2 gemma3 qwen2-1.5b]
"""
import json
import os
import sys

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, "models")
OUT = os.path.join(ROOT, "tests", "fixtures", "logits")
MODEL_FILES = {
    "smollm2": "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2": "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "gemma3": "gemma-3-270m-q4_k_m.gguf",
    # make models-extra; not part of the default run
    "qwen2-1.5b": "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
}
DEFAULT = ["smollm2", "qwen2", "gemma3"]
N_TEACHER = 320
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "Once upon a time, in a small village by the sea, there lived",
    "Q: What is 12 times 7?\nA:",
    "Les chats et les chiens sont des animaux",
]


def main():
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 2)
    text = open(os.path.join(ROOT, "tests", "fixtures", "text", "english.txt"), encoding="utf-8").read()
    for key in sys.argv[1:] or DEFAULT:
        fname = MODEL_FILES[key]
        out = os.path.join(OUT, key)
        os.makedirs(out, exist_ok=True)
        tok = AutoTokenizer.from_pretrained(MODELS, gguf_file=fname)
        model = AutoModelForCausalLM.from_pretrained(MODELS, gguf_file=fname, dtype=torch.float32)
        model.eval()
        ids = tok.encode(text, add_special_tokens=True)[:N_TEACHER]
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        top = torch.topk(logits, 5, dim=-1)
        json.dump({
            "model": fname,
            "reference": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, fp32 CPU",
            "ids": ids,
            "top_ids": top.indices.tolist(),
            "top_logits": [[round(v, 4) for v in row] for row in top.values.tolist()],
        }, open(os.path.join(out, "teacher.json"), "w"))
        for i, p in enumerate(PROMPTS):
            pid = tok.encode(p, add_special_tokens=True)
            with torch.no_grad():
                last = model(torch.tensor([pid])).logits[0, -1].float().numpy()
            json.dump({"prompt": p, "ids": pid}, open(os.path.join(out, f"prompt{i}.json"), "w"))
            last.astype("<f2").tofile(os.path.join(out, f"prompt{i}.f16"))
        print(f"{key}: {len(ids)} teacher-forced positions, {len(PROMPTS)} prompts; "
              f"top-1 of prompt0 = {int(np.argmax(last))}", flush=True)


if __name__ == "__main__":
    main()
