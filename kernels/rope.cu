// rope.cu: everything between the Q/K/V projections and attention, fused:
// bias add (qwen2), per-head RMSNorm (gemma3), RoPE (normal or NeoX pairs),
// and the f16 store of K and V into the cache at their positions.
// CPU reference: model::forward (add_rows, rmsnorm_rows, rope_row).
//
// Grid: x = n_head + n_head_kv (Q heads first, then K/V heads), y = token;
// block 128 threads (head_prep). Token t is at position pos[t] of its
// sequence (read on the device, so a captured graph replays for any
// position) and its K/V go to cache slot kv_slot(bt, tab[t], pos[t]).
// q: (n, n_head, hd) f32, rotated in place. k: (n, n_head_kv, hd) f32;
// v: (n, n_head_kv, hdv) f32. kc: (slots, n_head_kv * hd) f16; vc: (slots,
// n_head_kv * hdv) f16 (one layer's slice). bq/bk/bv, qn/kn may be null.
// freq: (rope_dim / 2) per-pair frequencies with the scaling folded in;
// angle = pos * freq[i]; cos/sin are multiplied by mscale (YaRN).
#pragma once
#include "vendor.h"

// The paged KV cache (src/kv.rs): positions in blocks of KV_BLOCK slots; a
// sequence's block table lists the physical block of each KV_BLOCK of its
// positions. Rows of a step find their sequence's table at bt + tab[t]
// (tab null: at bt). The cache slot of position j: bt[tb + j / KV_BLOCK] *
// KV_BLOCK + j % KV_BLOCK; with bt null the cache is contiguous (slot j).
#define KV_BLOCK 16
static __device__ __forceinline__ u64 kv_slot(const int* bt, int tb, int j) {
    return bt ? (u64)bt[tb + j / KV_BLOCK] * KV_BLOCK + (u64)(j % KV_BLOCK) : (u64)j;
}

// One head's vectors as attention uses them (qkv_post's blocks, and one
// decode token's attention blocks doing qkv_post's work): q = qs + bq,
// RMS-normalized with qn when given (x * rsqrt(mean(x²) + eps) * qn), RoPE
// at position pos over the first rope_dim values, times scale, into sq
// (shared, hd floats); with ks, the new key the same way (kn, no scale,
// rounded to f16) into sk and the value vs + bv (rounded to f16) into sv,
// and with kd/vd their f16 stores into the cache. Every load and the RoPE
// angles are issued in one pass and q and k rotate in one pass, so the
// block waits on global memory once and passes 3 barriers without a norm
// (q and k one after the other took 3 round trips and 6). Needs blockDim.x
// >= rope_dim / 2 (rope_dim <= hd <= 256: blocks of at least 128 threads).
// Every thread of the block calls; sq, sk, sv are complete for all of them
// on return.
static __device__ __forceinline__ void head_prep(const float* qs, const float* bq, const float* qn, const float* ks,
                                                 const float* bk, const float* kn, const float* vs, const float* bv,
                                                 const float* freq, int pos, int hd, int hdv, int rope_dim, int neox,
                                                 float mscale, float eps, float scale, float* sq, float* sk, float* sv,
                                                 u16* kd, u16* vd, float* red) {
    const bool own = ks != 0;
    const int half = rope_dim / 2, ir = threadIdx.x;
    float c = 0.0f, sn = 0.0f;
    if (ir < half) {
        const float th = (float)pos * freq[ir];
        c = cosf(th) * mscale;
        sn = sinf(th) * mscale;
    }
    float ssq = 0.0f, ssk = 0.0f;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        const float x = qs[i] + (bq ? bq[i] : 0.0f);
        sq[i] = x;
        ssq += x * x;
        if (own) {
            const float y = ks[i] + (bk ? bk[i] : 0.0f);
            sk[i] = y;
            ssk += y * y;
        }
    }
    if (own) {
        for (int i = threadIdx.x; i < hdv; i += blockDim.x) {
            const u16 vh = f2h(vs[i] + (bv ? bv[i] : 0.0f));
            sv[i] = h2f(vh);
            if (vd) vd[i] = vh;
        }
    }
    const bool normk = own && kn;
    if (qn || normk) {
        const float gq = qn ? rsqrtf(block_sum(ssq, red) / (float)hd + eps) : 1.0f;
        const float gk = normk ? rsqrtf(block_sum(ssk, red) / (float)hd + eps) : 1.0f;
        __syncthreads();
        for (int i = threadIdx.x; i < hd; i += blockDim.x) {
            if (qn) sq[i] = sq[i] * gq * qn[i];
            if (normk) sk[i] = sk[i] * gk * kn[i];
        }
    }
    __syncthreads();
    if (ir < half) {
        const int a = neox ? ir : 2 * ir, b = neox ? ir + half : 2 * ir + 1;
        const float x0 = sq[a], x1 = sq[b];
        sq[a] = x0 * c - x1 * sn;
        sq[b] = x0 * sn + x1 * c;
        if (own) {
            const float y0 = sk[a], y1 = sk[b];
            sk[a] = y0 * c - y1 * sn;
            sk[b] = y0 * sn + y1 * c;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < hd; i += blockDim.x) {
        sq[i] *= scale;
        if (own) {
            const u16 kh = f2h(sk[i]);
            sk[i] = h2f(kh);
            if (kd) kd[i] = kh;
        }
    }
    __syncthreads();
}

KERNEL void qkv_post(float* q, const float* k, const float* v, const float* bq, const float* bk, const float* bv,
                     const float* qn, const float* kn, u16* kc, u16* vc, const int* pos, const int* tab,
                     const int* bt, const float* freq,
                     int n_head, int n_head_kv, int hd, int hdv, int rope_dim, int neox, float mscale, float eps) {
    __shared__ float red[32];
    __shared__ float xs[512];
    GRID_START();
    const int t = blockIdx.y, p = pos[t];
    if (p < 0) return;  // a padding row
    const bool is_q = (int)blockIdx.x < n_head;
    const int h = is_q ? blockIdx.x : blockIdx.x - n_head;
    const float* src = is_q ? q + ((u64)t * n_head + h) * hd : k + ((u64)t * n_head_kv + h) * hd;
    const float* bias = is_q ? (bq ? bq + h * hd : 0) : (bk ? bk + h * hd : 0);
    head_prep(src, bias, is_q ? qn : kn, 0, 0, 0, 0, 0, freq, p, hd, 0, rope_dim, neox, mscale, eps, 1.0f, xs, 0, 0, 0, 0, red);
    if (is_q) {
        float* dst = q + ((u64)t * n_head + h) * hd;
        for (int i = threadIdx.x; i < hd; i += blockDim.x) dst[i] = xs[i];
    } else {
        const u64 slot = kv_slot(bt, tab ? tab[t] : 0, p);
        u16* kd = kc + slot * n_head_kv * hd + (u64)h * hd;
        for (int i = threadIdx.x; i < hd; i += blockDim.x) kd[i] = f2h(xs[i]);
        const float* vs = v + ((u64)t * n_head_kv + h) * hdv;
        u16* vd = vc + slot * n_head_kv * hdv + (u64)h * hdv;
        for (int i = threadIdx.x; i < hdv; i += blockDim.x) vd[i] = f2h(vs[i] + (bv ? bv[h * hdv + i] : 0.0f));
    }
}
