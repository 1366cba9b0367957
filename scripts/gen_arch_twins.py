#!/usr/bin/env python3
"""HF transformers reference fixtures for issue 18's architecture twins.

Each twin (rocmforge::twin::arch: a published config's metadata and real
vocabulary, random F16 weights, 2 layers) is written by the Rust tool
`make_twin --arch KEY`, so the Rust test can regenerate the very same bytes
without Python; this script records the file's sha256 next to what HF
transformers computes on it. transformers loads the GGUF itself
(AutoModelForCausalLM.from_pretrained(dir, gguf_file=...): weights
dequantized by the gguf package, fp32 compute on CPU). What its GGUF loader
does not read is set on the config from the published config, or from the
file itself:

  llama3   rope_parameters {rope_type: llama3, factor 32, low 1, high 4,
           original 8192} (Llama-3.2-1B): transformers ignores rope_freqs.weight,
           so this also checks that the file's table is what HF computes.
  phi3     rope_parameters {rope_type: longrope, short/long factors and
           original context read from the GGUF}; two runs: "short" (what HF
           and llama.cpp use for contexts up to 4096) and "long" (HF with the
           long table in the short slot: what a context > 4096 uses).

Output, tests/fixtures/arch/<key>/:
  fixture.json   twin (sha256, size, shape), versions, and per run: the
                 engine context (n_ctx) that selects the same RoPE table,
                 HF's per-pair inverse frequencies and cos/sin scale, and per
                 prompt the 32 teacher-forced ids with the top-8 ids and
                 logits at every position; plus how far the same twin
                 without the RoPE scaling lands (sensitivity).
  <run>.last.f16 the full last-position logits of the 5 prompts (f16 LE).

Run:  .venv/bin/python scripts/gen_arch_twins.py [qwen3 llama3 phi3 mistral]   (`make venv`; part of `make fixtures`)
(builds make_twin with cargo; needs the llama.cpp vocabularies under vendor/, as `make` unpacks them.)
"""
import copy
import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "arch")
KEYS = ["qwen3", "llama3", "phi3", "mistral"]
N_TOKENS = 32
TOP_K = 8
PROMPTS = [
    "The history of the city begins in the early Middle Ages, when a small group of fishermen settled on the "
    "islands of the lagoon. Over the following centuries the settlement grew into a trading power whose ships",
    "def merge_sorted(a, b):\n    \"\"\"Merge two sorted lists into one sorted list.\"\"\"\n    out = []\n"
    "    i = j = 0\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i])\n",
    "Les chercheurs ont observé que les oiseaux migrateurs utilisent le champ magnétique terrestre pour "
    "s'orienter pendant leurs longs voyages, même lorsque le ciel est couvert et que les étoiles",
    "Q: A train leaves the station at 3:15 pm and travels 240 km at an average speed of 80 km/h. "
    "At what time does it arrive?\nA: The trip takes 240 / 80 = 3 hours, so it arrives at 6:15 pm.",
    "Ingredients: 2 cups of flour, 1 teaspoon of baking soda, a pinch of salt, 3 eggs, 1 cup of sugar and "
    "half a cup of melted butter. Preheat the oven to 180 degrees, then whisk the eggs with the sugar until",
]
# Llama-3.2-1B's rope_scaling (config.json); transformers' GGUF loader does not read rope_freqs.weight.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}


def make_twin(key, path):
    subprocess.run(["cargo", "run", "--quiet", "--release", "--example", "make_twin", "--", "--arch", key, "--out", path],
                   cwd=ROOT, check=True)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def gguf_fields(path):
    from gguf import GGUFReader
    r = GGUFReader(path)
    def val(k):
        f = r.fields[k]
        return f.parts[f.data[0]].tolist()[0]
    tensors = {t.name: np.array(t.data, dtype=np.float32) for t in r.tensors if t.name.startswith("rope_")}
    return r, val, tensors


def rope_params(key, path, base):
    """The rope_parameters HF needs for this twin (None: what its loader builds)."""
    if key == "llama3":
        return dict(LLAMA3_ROPE, rope_theta=base)
    if key == "phi3":
        _, val, t = gguf_fields(path)
        return {"rope_type": "longrope", "rope_theta": base,
                "short_factor": t["rope_factors_short.weight"].tolist(),
                "long_factor": t["rope_factors_long.weight"].tolist(),
                "original_max_position_embeddings": int(val("phi3.rope.scaling.original_context_length"))}
    return None


def load(dirname, fname, rope):
    config = AutoConfig.from_pretrained(dirname, gguf_file=fname)
    if rope is not None:
        config.rope_parameters = rope
    model = AutoModelForCausalLM.from_pretrained(dirname, gguf_file=fname, config=config, dtype=torch.float32)
    model.eval()
    return model


def run_prompts(model, prompt_ids):
    rows, last = [], []
    for ids in prompt_ids:
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].float()
        top = torch.topk(logits, TOP_K, dim=-1)
        rows.append({"ids": ids, "top_ids": top.indices.tolist(),
                     "top_logits": [[round(v, 4) for v in r] for r in top.values.tolist()]})
        last.append(logits[-1].numpy())
    return rows, np.stack(last)


def rope_of(model):
    emb = model.model.rotary_emb
    return [float(x) for x in emb.inv_freq.float().tolist()], float(emb.attention_scaling)


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def top1_agree(rows_a, rows_b):
    n = sum(len(r["top_ids"]) for r in rows_a)
    same = sum(x[0] == y[0] for ra, rb in zip(rows_a, rows_b) for x, y in zip(ra["top_ids"], rb["top_ids"]))
    return same / n


def gen(key, tmp):
    fname = f"{key}.gguf"
    path = os.path.join(tmp, fname)
    make_twin(key, path)
    digest, size = sha256(path), os.path.getsize(path)
    reader, val, _ = gguf_fields(path)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    base = float(val(f"{arch}.rope.freq_base"))
    tok = AutoTokenizer.from_pretrained(tmp, gguf_file=fname)
    prompt_ids = []
    for p in PROMPTS:
        ids = tok.encode(p, add_special_tokens=True)
        assert len(ids) >= N_TOKENS, f"{key}: prompt has {len(ids)} tokens"
        prompt_ids.append(ids[:N_TOKENS])
    rope = rope_params(key, path, base)
    out = os.path.join(OUT, key)
    os.makedirs(out, exist_ok=True)
    variants = [("short", 4096, rope)]
    if key == "phi3":
        long_rope = copy.deepcopy(rope)
        long_rope["short_factor"] = rope["long_factor"]  # what HF uses past the original context
        variants.append(("long", 8192, long_rope))
    runs = []
    plain = None
    if rope is not None:  # the same twin without the RoPE scaling: how much the feature matters here
        m = load(tmp, fname, None)
        plain, plain_last = run_prompts(m, prompt_ids)
        del m
    hf_class = None
    for name, n_ctx, rp in variants:
        model = load(tmp, fname, rp)
        hf_class = type(model).__name__
        rows, last = run_prompts(model, prompt_ids)
        inv_freq, scaling = rope_of(model)
        del model
        last.astype("<f2").tofile(os.path.join(out, f"{name}.last.f16"))
        run = {"name": name, "n_ctx": n_ctx, "rope_parameters": rp, "rope_inv_freq": inv_freq,
               "rope_attention_scaling": scaling, "last_f16": f"{name}.last.f16", "prompts": rows}
        for i, r in enumerate(rows):
            r["text"] = PROMPTS[i]
        if plain is not None:
            run["without_rope_scaling"] = {"top1_agreement": round(top1_agree(plain, rows), 4),
                                           "last_rel_l2": round(rel_l2(plain_last, last), 5)}
        runs.append(run)
        print(f"{key}/{name}: {hf_class}, sha256 {digest[:16]}…, top-1 of prompt 0: {rows[0]['top_ids'][-1][0]}"
              + (f", without scaling {run['without_rope_scaling']}" if plain is not None else ""), flush=True)
    from importlib.metadata import version
    fixture = {
        "twin": {"key": key, "file_bytes": size, "sha256": digest, "architecture": arch,
                 "made_by": f"make_twin --arch {key} (rocmforge::twin::arch, seed 18)"},
        "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, gguf {version('gguf')}, fp32 CPU",
        "hf_class": hf_class,
        "n_tokens": N_TOKENS,
        "runs": runs,
    }
    with open(os.path.join(out, "fixture.json"), "w") as f:
        json.dump(fixture, f, indent=None, separators=(",", ":"))
        f.write("\n")


def main():
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 2)
    keys = sys.argv[1:] or KEYS
    for key in keys:
        with tempfile.TemporaryDirectory(prefix=f"arch-twin-{key}-") as tmp:
            gen(key, tmp)


if __name__ == "__main__":
    main()
