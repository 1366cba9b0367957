#!/usr/bin/env python3
"""HF transformers' own NomicBert on nomic-embed-text-v1.5's GGUF, dequantized.

transformers 5.x has a native `nomic_bert` (NomicBertModel, merged into
transformers in 2026; earlier the model existed only as remote code on the
hub). Its GGUF loader does not take `nomic-bert`, so this script reads the
GGUF with the `gguf` package (F16 -> f32), puts the tensors under HF's
names (the mapping below; llama.cpp's converter wrote them from the
published checkpoint: Wqkv -> attn_qkv, fc11 -> ffn_up, fc12 -> ffn_gate,
norm1 -> attn_output_norm, norm2 -> layer_output_norm) and builds the
config from the GGUF's metadata. The model is loaded strictly (no missing
or unexpected weights) and run in float32, HF's default, on the token ids
of tests/fixtures/embed/sentences.json (our tokenizer's, equal to HF's
BertTokenizer's and llama.cpp's).

Output, tests/fixtures/embed/:
  hf_mean.f32  20 x n_embd little-endian f32: mean pooling, L2-normalised
  hf_cls.f32   20 x n_embd: the first token's final hidden state (raw)
  hf.json      versions, and the min cosine against the float64
               re-implementation's fixtures (mean.f32, cls.f32)

Run:  python scripts/gen_embed_hf.py   (a venv with torch, transformers >= 5
      with transformers.models.nomic_bert, gguf, numpy)
"""
import json
import os

import numpy as np
import torch
import transformers
from gguf import GGUFReader
from gguf.quants import dequantize
from transformers import NomicBertConfig, NomicBertModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "nomic-embed-text-v1.5.f16.gguf")
OUT = os.path.join(ROOT, "tests", "fixtures", "embed")


def main():
    torch.set_num_threads(os.cpu_count() or 2)
    r = GGUFReader(MODEL)
    meta = {}
    for k, f in r.fields.items():
        if k.startswith("nomic-bert."):
            meta[k] = f.contents()
    w = {}
    for t in r.tensors:
        a = dequantize(t.data, t.tensor_type)
        # gguf shapes are ggml order (ne0 first); torch's are reversed
        w[t.name] = torch.from_numpy(np.array(a, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)]))
    d = int(meta["nomic-bert.embedding_length"])
    n_layer = int(meta["nomic-bert.block_count"])
    cfg = NomicBertConfig(
        vocab_size=w["token_embd.weight"].shape[0],
        hidden_size=d,
        num_hidden_layers=n_layer,
        num_attention_heads=int(meta["nomic-bert.attention.head_count"]),
        intermediate_size=w["blk.0.ffn_up.weight"].shape[0],
        hidden_act="silu",
        max_position_embeddings=int(meta["nomic-bert.context_length"]),
        type_vocab_size=w["token_types.weight"].shape[0],
        layer_norm_eps=float(meta["nomic-bert.attention.layer_norm_epsilon"]),
        rope_parameters={"rope_type": "default", "rope_theta": float(meta["nomic-bert.rope.freq_base"])},
    )
    sd = {
        "embeddings.word_embeddings.weight": w["token_embd.weight"],
        "embeddings.token_type_embeddings.weight": w["token_types.weight"],
        "embeddings.LayerNorm.weight": w["token_embd_norm.weight"],
        "embeddings.LayerNorm.bias": w["token_embd_norm.bias"],
    }
    for i in range(n_layer):
        p, h = f"blk.{i}.", f"layers.{i}."
        q, k, v = w[p + "attn_qkv.weight"].split(d, dim=0)
        sd[h + "self_attn.q_proj.weight"] = q
        sd[h + "self_attn.k_proj.weight"] = k
        sd[h + "self_attn.v_proj.weight"] = v
        sd[h + "self_attn.o_proj.weight"] = w[p + "attn_output.weight"]
        sd[h + "post_attention_layernorm.weight"] = w[p + "attn_output_norm.weight"]
        sd[h + "post_attention_layernorm.bias"] = w[p + "attn_output_norm.bias"]
        # fc11(x) * silu(fc12(x)): HF's up_proj(x) * act(gate_proj(x))
        sd[h + "mlp.up_proj.weight"] = w[p + "ffn_up.weight"]
        sd[h + "mlp.gate_proj.weight"] = w[p + "ffn_gate.weight"]
        sd[h + "mlp.down_proj.weight"] = w[p + "ffn_down.weight"]
        sd[h + "post_mlp_layernorm.weight"] = w[p + "layer_output_norm.weight"]
        sd[h + "post_mlp_layernorm.bias"] = w[p + "layer_output_norm.bias"]
    used = {"token_embd.weight", "token_types.weight", "token_embd_norm.weight", "token_embd_norm.bias"}
    used |= {f"blk.{i}.{n}" for i in range(n_layer) for n in (
        "attn_qkv.weight", "attn_output.weight", "attn_output_norm.weight", "attn_output_norm.bias", "ffn_up.weight",
        "ffn_gate.weight", "ffn_down.weight", "layer_output_norm.weight", "layer_output_norm.bias")}
    assert used == set(w), f"GGUF tensors left unmapped: {sorted(set(w) - used)}"
    model = NomicBertModel(cfg, add_pooling_layer=False)
    model.load_state_dict(sd, strict=True)  # raises on a missing or unexpected weight
    model.eval()

    fx = json.load(open(os.path.join(OUT, "sentences.json"), encoding="utf-8"))
    assert len(fx["ids"]) == 20
    mean, cls = [], []
    with torch.no_grad():
        for ids in fx["ids"]:
            h = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
            e = h.mean(0)
            mean.append((e / e.norm()).numpy().astype("<f4"))
            cls.append(h[0].numpy().astype("<f4"))
    ref_mean = np.fromfile(os.path.join(OUT, "mean.f32"), dtype="<f4").reshape(20, d)
    ref_cls = np.fromfile(os.path.join(OUT, "cls.f32"), dtype="<f4").reshape(20, d)

    def cos(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    min_mean = min(cos(mean[i], ref_mean[i]) for i in range(20))
    min_cls = min(cos(cls[i], ref_cls[i]) for i in range(20))
    assert 1 - min_mean < 1e-6 and 1 - min_cls < 1e-6, f"HF and the float64 re-implementation disagree: {min_mean}, {min_cls}"
    np.concatenate(mean).tofile(os.path.join(OUT, "hf_mean.f32"))
    np.concatenate(cls).tofile(os.path.join(OUT, "hf_cls.f32"))
    json.dump({
        "model": os.path.basename(MODEL),
        "reference": f"transformers {transformers.__version__} NomicBertModel (native), float32, torch {torch.__version__}, "
                     "weights from the GGUF dequantized by gguf-py (scripts/gen_embed_hf.py)",
        "min_cosine_vs_float64_reimplementation": {"mean": min_mean, "cls": min_cls},
    }, open(os.path.join(OUT, "hf.json"), "w"), indent=1)
    print(f"wrote HF embeddings of 20 sentences; min cosine against the float64 re-implementation: mean {min_mean:.9f}, first token {min_cls:.9f}")


if __name__ == "__main__":
    main()
