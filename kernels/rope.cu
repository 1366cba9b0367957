// rope.cu: everything between the Q/K/V projections and attention, fused:
// bias add (qwen2), per-head RMSNorm (gemma3), RoPE (normal or NeoX pairs),
// and the f16 store of K and V into the cache at their positions.
// CPU reference: model::forward (add_rows, rmsnorm_rows, rope_row).
//
// Grid: x = n_head + n_head_kv (Q heads first, then K/V heads), y = token;
// block 64 threads. Position of token t: *pos0 + t (read on the device so a
// captured graph replays for any position).
// q: (n, n_head, hd) f32, rotated in place. k: (n, n_head_kv, hd) f32;
// v: (n, n_head_kv, hdv) f32. kc: (n_ctx, n_head_kv * hd) f16; vc: (n_ctx,
// n_head_kv * hdv) f16 (one layer's slice). bq/bk/bv, qn/kn may be null.
// freq: (rope_dim / 2) per-pair frequencies with the scaling folded in;
// angle = pos * freq[i]; cos/sin are multiplied by mscale (YaRN).
#pragma once
#include "vendor.h"

// One head's vector as attention uses it, into xs (shared, hd floats): x =
// src + bias, RMS-normalized with nw when given (x * rsqrt(mean(x²) + eps) *
// nw), then RoPE at position pos over the first rope_dim values. Every
// thread of the block calls; xs is complete for all of them on return.
static __device__ __forceinline__ void head_prep(const float* src, const float* bias, const float* nw, const float* freq, int pos,
                                                 int hd, int rope_dim, int neox, float mscale, float eps, float* xs, float* red) {
    float ss = 0.0f;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        const float x = src[i] + (bias ? bias[i] : 0.0f);
        xs[i] = x;
        ss += x * x;
    }
    if (nw) {
        const float s = rsqrtf(block_sum(ss, red) / (float)hd + eps);  // also the barrier that publishes xs
        __syncthreads();
        for (int i = threadIdx.x; i < hd; i += blockDim.x) xs[i] = xs[i] * s * nw[i];
    }
    __syncthreads();
    const int half = rope_dim / 2;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        const float th = (float)pos * freq[i];
        const float c = cosf(th) * mscale, s = sinf(th) * mscale;
        const float x0 = xs[a], x1 = xs[b];
        xs[a] = x0 * c - x1 * s;
        xs[b] = x0 * s + x1 * c;
    }
    __syncthreads();
}

KERNEL void qkv_post(float* q, const float* k, const float* v, const float* bq, const float* bk, const float* bv,
                     const float* qn, const float* kn, u16* kc, u16* vc, const int* pos0, const float* freq,
                     int n_head, int n_head_kv, int hd, int hdv, int rope_dim, int neox, float mscale, float eps) {
    __shared__ float red[32];
    __shared__ float xs[512];
    GRID_START();
    const int t = blockIdx.y, pos = *pos0 + t;
    const bool is_q = (int)blockIdx.x < n_head;
    const int h = is_q ? blockIdx.x : blockIdx.x - n_head;
    const float* src = is_q ? q + ((u64)t * n_head + h) * hd : k + ((u64)t * n_head_kv + h) * hd;
    const float* bias = is_q ? (bq ? bq + h * hd : 0) : (bk ? bk + h * hd : 0);
    head_prep(src, bias, is_q ? qn : kn, freq, pos, hd, rope_dim, neox, mscale, eps, xs, red);
    if (is_q) {
        float* dst = q + ((u64)t * n_head + h) * hd;
        for (int i = threadIdx.x; i < hd; i += blockDim.x) dst[i] = xs[i];
    } else {
        u16* kd = kc + (u64)pos * n_head_kv * hd + (u64)h * hd;
        for (int i = threadIdx.x; i < hd; i += blockDim.x) kd[i] = f2h(xs[i]);
        const float* vs = v + ((u64)t * n_head_kv + h) * hdv;
        u16* vd = vc + (u64)pos * n_head_kv * hdv + (u64)h * hdv;
        for (int i = threadIdx.x; i < hdv; i += blockDim.x) vd[i] = f2h(vs[i] + (bv ? bv[h * hdv + i] : 0.0f));
    }
}
