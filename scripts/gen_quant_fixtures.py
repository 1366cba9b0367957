#!/usr/bin/env python3
"""Generate dequantization fixtures with gguf-py (the ggml project's numpy
reference), for tests/quant_reference.rs.

  tests/fixtures/quant/<TYPE>.q     raw blocks
  tests/fixtures/quant/<TYPE>.f32   gguf-py's dequantization (little-endian f32)
  tests/fixtures/quant/Q8_0_act.{in,q}  f32 input and gguf-py's Q8_0 quantization
  tests/fixtures/quant/model_tensors.tsv  per real-model tensor: sha256 of gguf-py's
                                          dequantization of the whole tensor

Sources of blocks:
  * types gguf-py can quantize: random normal data, quantized by gguf-py;
  * types it cannot quantize: blocks taken from the real models where a model
    holds that type (Q4_K, Q6_K); otherwise random bytes with finite f16 scales
    (no real model here stores Q2_K, Q3_K, Q5_K, IQ4_NL or IQ4_XS).

Run:  .venv/bin/python scripts/gen_quant_fixtures.py   (after `make models`)
"""
import hashlib
import os
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T, quants
from gguf.constants import GGML_QUANT_SIZES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "quant")
MODELS = os.path.join(ROOT, "models")
MODEL_FILES = [
    "SmolLM2-135M-Instruct.Q4_1.gguf",
    "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    "gemma-3-270m-q4_k_m.gguf",
]
N_BLOCKS = 64
rng = np.random.default_rng(20261125)


def write(name, arr):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(np.ascontiguousarray(arr).tobytes())


def random_blocks(qtype, n_blocks):
    """Random bytes, with every f16 scale field replaced by a finite small value."""
    bs, ts = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, ts), dtype=np.uint8)
    f16_fields = {
        T.Q2_K: [80, 82], T.Q3_K: [108], T.Q5_K: [0, 2], T.Q4_K: [0, 2], T.Q6_K: [208],
        T.IQ4_NL: [0], T.IQ4_XS: [0],
    }[qtype]
    for off in f16_fields:
        scale = rng.uniform(-0.05, 0.05, size=n_blocks).astype(np.float16)
        raw[:, off:off + 2] = scale.view(np.uint8).reshape(n_blocks, 2)
    return raw


def model_blocks(qtype, n_blocks):
    for mf in MODEL_FILES:
        path = os.path.join(MODELS, mf)
        r = GGUFReader(path)
        for t in r.tensors:
            if t.tensor_type == qtype:
                data = np.asarray(t.data).reshape(-1).view(np.uint8)
                ts = GGML_QUANT_SIZES[qtype][1]
                blocks = data.reshape(-1, ts)
                idx = np.linspace(0, blocks.shape[0] - 1, n_blocks).astype(np.int64)
                print(f"  {qtype.name}: {n_blocks} blocks from {mf}:{t.name}")
                return blocks[idx]
    return None


def main():
    os.makedirs(OUT, exist_ok=True)
    quantizable = [T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.MXFP4]
    for qt in quantizable:
        bs = GGML_QUANT_SIZES[qt][0]
        x = rng.standard_normal((N_BLOCKS * max(bs, 32),), dtype=np.float32)
        x[:37] *= 1e-3  # exercise small magnitudes too
        if qt == T.F16:
            q = x.astype(np.float16).view(np.uint8)
        else:
            q = quants.quantize(x.reshape(1, -1), qt)
        y = quants.dequantize(np.asarray(q).reshape(-1).view(np.uint8), qt).astype(np.float32)
        write(f"{qt.name}.q", q)
        write(f"{qt.name}.f32", y)
        print(f"  {qt.name}: {N_BLOCKS} random blocks quantized by gguf-py")

    for qt in [T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K, T.IQ4_NL, T.IQ4_XS]:
        q = model_blocks(qt, N_BLOCKS) if qt in (T.Q4_K, T.Q6_K) else None
        if q is None:
            q = random_blocks(qt, N_BLOCKS)
            print(f"  {qt.name}: {N_BLOCKS} random blocks (finite scales)")
        y = quants.dequantize(q.reshape(-1), qt).astype(np.float32)
        write(f"{qt.name}.q", q)
        write(f"{qt.name}.f32", y)

    # Q8_0 activation quantization, bit-exact with ggml's quantize_row_q8_0_ref.
    x = (rng.standard_normal(32 * 64).astype(np.float32) * 3).astype(np.float32)
    x[32:64] = 0.0  # an all-zero block
    write("Q8_0_act.in", x)
    write("Q8_0_act.q", quants.quantize(x.reshape(1, -1), T.Q8_0))

    # Every tensor of every real model: sha256 of gguf-py's full dequantization.
    lines = ["# model\ttensor\ttype\tn_elements\tsha256(f32 LE of gguf-py dequantize)"]
    for mf in MODEL_FILES:
        r = GGUFReader(os.path.join(MODELS, mf))
        for t in r.tensors:
            y = quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32)
            h = hashlib.sha256(np.ascontiguousarray(y).reshape(-1).tobytes()).hexdigest()
            lines.append(f"{mf}\t{t.name}\t{t.tensor_type.name}\t{y.size}\t{h}")
        print(f"  {mf}: {len(r.tensors)} tensors hashed")
    with open(os.path.join(OUT, "model_tensors.tsv"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
