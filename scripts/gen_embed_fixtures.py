#!/usr/bin/env python3
"""Reference embeddings for nomic-embed-text-v1.5 (GGUF arch `nomic-bert`).

Written when transformers had no native NomicBert (the model's modelling
code was remote code on the HF hub, which this project cannot reach; since
transformers 5.x has one, scripts/gen_embed_hf.py runs it, and the two agree
to a cosine of 1.000000000), this script is an independent PyTorch
implementation of the published architecture
(nomic-ai/contrastors `NomicBertModel`, the code `trust_remote_code` loads:
post-norm blocks, fused Wqkv, rotary embeddings rotating halves
(`rotate_half`, interleaved=False, base `rotary_emb_base`), SwiGLU MLP
`fc11(x) * silu(fc12(x))` -> fc2, token-type embeddings, embedding
LayerNorm), written with torch's own ops (F.layer_norm,
F.scaled_dot_product_attention) in float64, reading the GGUF's tensors
dequantized by the `gguf` package. GGUF names (llama.cpp's converter):
fc11 -> ffn_up, fc12 -> ffn_gate, fc2 -> ffn_down, Wqkv -> attn_qkv,
norm1 -> attn_output_norm, norm2 -> layer_output_norm, emb_ln ->
token_embd_norm.

Cross-check (not part of the fixtures): llama.cpp's own libllama
(vendor/llama.cpp/build-cpu) through llama-cpp-python's Llama(embedding=True)
.embed(normalize=True) gives these 20 vectors at min cosine 0.9999996.

Tokenization is HF's own BertTokenizer (uncased) over the GGUF's vocab
(turned back into vocab.txt form), [CLS] ... [SEP], as
sentence-transformers feeds nomic-embed-text.

Output, tests/fixtures/embed/:
  sentences.json  the 20 sentences, their token ids, the retrieval set
                  (5 queries, 8 passages, the right passage of each query)
                  and how the reference was made
  mean.f32        20 x n_embd little-endian f32: mean pooling, L2-normalised
                  (what nomic-embed-text returns; the model's pooling_type 1)
  cls.f32         20 x n_embd: the first token's final hidden state (raw),
                  to check the unpooled states and CLS pooling

Run:  /work/venv-hf/bin/python scripts/gen_embed_fixtures.py
"""
import json
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import BertTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "nomic-embed-text-v1.5.f16.gguf")
OUT = os.path.join(ROOT, "tests", "fixtures", "embed")

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "search_query: What is the capital of France?",
    "search_document: Paris is the capital and most populous city of France.",
    "Machine learning models turn text into dense vectors.",
    "I love eating fresh strawberries in the summer.",
    "The stock market fell sharply after the announcement.",
    "Photosynthesis converts light energy into chemical energy in plants.",
    "He didn't know whether to laugh or cry; it was absurd!",
    "GPUs accelerate matrix multiplication for deep neural networks.",
    "Le chat est assis sur le tapis.",
    "Café, naïve, résumé: accents are stripped by the uncased tokenizer.",
    "1234567890 and 3.14159 are numbers.",
    "search_query: how do vaccines work",
    "search_document: Vaccines train the immune system to recognise a pathogen without causing the disease.",
    "A",
    "The mitochondria is the powerhouse of the cell, producing ATP through oxidative phosphorylation, "
    "a process that depends on a gradient of protons across the inner membrane.",
    "Rust guarantees memory safety without a garbage collector.",
    "Tokyo (東京) is the capital of Japan.",
    "classification: This movie was absolutely wonderful, I would watch it again.",
    "clustering: quarterly earnings report for a technology company",
]

QUERIES = [
    "search_query: How do plants make food from sunlight?",
    "search_query: What is the tallest mountain on Earth?",
    "search_query: Which programming language prevents data races at compile time?",
    "search_query: When did the Second World War end?",
    "search_query: How does the heart pump blood?",
]
PASSAGES = [
    "search_document: Photosynthesis is the process by which green plants use sunlight, water and carbon dioxide to produce glucose and oxygen.",
    "search_document: Mount Everest, in the Himalayas, rises 8,849 metres above sea level, the highest point on Earth.",
    "search_document: Rust's ownership and borrowing rules let the compiler reject programs with data races before they run.",
    "search_document: The Second World War ended in 1945, with Germany's surrender in May and Japan's in September.",
    "search_document: The heart's muscular chambers contract rhythmically, pushing blood through the arteries to the body and lungs.",
    "search_document: The Great Barrier Reef is the world's largest coral reef system, off the coast of Queensland.",
    "search_document: Sourdough bread rises thanks to wild yeast and lactic acid bacteria in the starter.",
    "search_document: The Python language uses indentation to delimit blocks of code.",
]
ANSWERS = [0, 1, 2, 3, 4]


def load():
    r = GGUFReader(MODEL)
    meta = {}
    for k, f in r.fields.items():
        if not k.startswith("tokenizer.ggml.") or k == "tokenizer.ggml.tokens":
            try:
                meta[k] = f.contents()
            except Exception:
                pass
    w = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type)
        # gguf shapes are ggml order (ne0 first); numpy's are reversed
        w[t.name] = torch.from_numpy(np.array(a, dtype=np.float64).reshape([int(x) for x in reversed(t.shape)]))
    return meta, w


class NomicBert:
    def __init__(self, meta, w):
        self.w = w
        self.n_layer = meta["nomic-bert.block_count"]
        self.n_head = meta["nomic-bert.attention.head_count"]
        self.eps = meta["nomic-bert.attention.layer_norm_epsilon"]
        self.base = meta["nomic-bert.rope.freq_base"]
        self.d = meta["nomic-bert.embedding_length"]

    def rotary(self, x):
        # x: (heads, n, hd); rotate_half, as the published code (interleaved=False)
        n, hd = x.shape[1], x.shape[2]
        inv = 1.0 / (self.base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        ang = torch.outer(torch.arange(n, dtype=torch.float64), inv)  # (n, hd/2)
        cos = torch.cat([ang.cos(), ang.cos()], -1)
        sin = torch.cat([ang.sin(), ang.sin()], -1)
        x1, x2 = x[..., : hd // 2], x[..., hd // 2:]
        rot = torch.cat([-x2, x1], -1)
        return x * cos + rot * sin

    def ln(self, x, name):
        return F.layer_norm(x, (self.d,), self.w[name + ".weight"], self.w[name + ".bias"], self.eps)

    def forward(self, ids):
        w, d, nh = self.w, self.d, self.n_head
        hd = d // nh
        x = w["token_embd.weight"][ids] + w["token_types.weight"][0]
        x = self.ln(x, "token_embd_norm")
        n = len(ids)
        for i in range(self.n_layer):
            p = f"blk.{i}."
            qkv = x @ w[p + "attn_qkv.weight"].T
            q, k, v = qkv.split(d, dim=-1)
            q, k, v = (t.reshape(n, nh, hd).transpose(0, 1) for t in (q, k, v))
            q, k = self.rotary(q), self.rotary(k)
            a = F.scaled_dot_product_attention(q[None], k[None], v[None], is_causal=False)[0]
            a = a.transpose(0, 1).reshape(n, d) @ w[p + "attn_output.weight"].T
            x = self.ln(a + x, p + "attn_output_norm")
            up = x @ w[p + "ffn_up.weight"].T      # fc11
            gate = x @ w[p + "ffn_gate.weight"].T  # fc12
            m = (up * F.silu(gate)) @ w[p + "ffn_down.weight"].T
            x = self.ln(m + x, p + "layer_output_norm")
        return x


def main():
    torch.set_num_threads(os.cpu_count() or 2)
    meta, w = load()
    r = GGUFReader(MODEL)
    tokens = [bytes(r.fields["tokenizer.ggml.tokens"].parts[i]).decode("utf-8") for i in r.fields["tokenizer.ggml.tokens"].data]
    # llama.cpp's converter marks word starts with "▁" and drops WordPiece's
    # "##" from continuations: back to BERT's vocab.txt form
    tokens = [t[1:] if t.startswith("\u2581") else t if (t.startswith("[") and t.endswith("]")) else "##" + t for t in tokens]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as vf:
        vf.write("\n".join(tokens) + "\n")
    tok = BertTokenizer(vf.name, do_lower_case=True)
    os.unlink(vf.name)
    m = NomicBert(meta, w)
    os.makedirs(OUT, exist_ok=True)
    all_ids, mean, cls = [], [], []
    with torch.no_grad():
        for s in SENTENCES:
            ids = tok.encode(s, add_special_tokens=True)
            h = m.forward(torch.tensor(ids))
            e = h.mean(0)
            mean.append((e / e.norm()).numpy().astype("<f4"))
            cls.append(h[0].numpy().astype("<f4"))
            all_ids.append(ids)
        # the retrieval example, ranked by the reference itself
        emb = lambda s: (lambda e: e / e.norm())(m.forward(torch.tensor(tok.encode(s))).mean(0))
        qs = torch.stack([emb(q) for q in QUERIES])
        ps = torch.stack([emb(p) for p in PASSAGES])
        ranks = (qs @ ps.T).argmax(1).tolist()
    assert ranks == ANSWERS, f"the reference ranks {ranks}, expected {ANSWERS}"
    np.concatenate(mean).tofile(os.path.join(OUT, "mean.f32"))
    np.concatenate(cls).tofile(os.path.join(OUT, "cls.f32"))
    json.dump({
        "model": os.path.basename(MODEL),
        "reference": f"independent PyTorch NomicBert (scripts/gen_embed_fixtures.py), float64, torch {torch.__version__}; "
                     f"HF BertTokenizer (transformers {__import__('transformers').__version__}) over the GGUF vocab",
        "n_embd": m.d,
        "sentences": SENTENCES,
        "ids": all_ids,
        "queries": QUERIES,
        "passages": PASSAGES,
        "answers": ANSWERS,
    }, open(os.path.join(OUT, "sentences.json"), "w"), ensure_ascii=False, indent=1)
    print(f"wrote {len(SENTENCES)} embeddings to {OUT}; retrieval ranks {ranks}")


if __name__ == "__main__":
    main()
