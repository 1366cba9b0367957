// attention.cu: causal attention over the f16 KV cache, flash style: online
// softmax over tiles of WARP_SIZE keys, no score matrix in memory. Decode
// splits the keys over S blocks (flash-decoding) and merges the partial
// results in attn_combine; prefill runs S = 1, one warp per (query, head).
// GQA/MQA: Q head h reads K/V head h / (n_head / n_head_kv); nothing is copied.
// Sliding window (gemma3 local layers): keys (p - window, p] only.
// CPU reference: the attention loop in model::forward.
//
// attn grid: x = Q head, y = token t, z = split s (of S); block = one warp.
// Dynamic shared memory: hd floats (the query head, pre-scaled).
// q: (n, n_head, hd) f32. kc: (n_ctx, n_head_kv * hd) f16; vc: (n_ctx,
// n_head_kv * hdv) f16. S == 1: out (n, n_head, hdv) f32. S > 1: part
// ((n * n_head) * S, 2 + hdv) f32 rows {max, sum, unnormalised out}.
// Token t is at position *pos0 + t. hd must be a multiple of 8, hdv <= 256.
#pragma once
#include "vendor.h"

#define ATT_MAXD (256 / WARP_SIZE)

KERNEL void attn(const float* q, const u16* kc, const u16* vc, float* out, float* part, const int* pos0,
                 int n_head, int n_head_kv, int hd, int hdv, int window, float scale, int S) {
    extern __shared__ float sq[];
    const int h = blockIdx.x, t = blockIdx.y, s = blockIdx.z, lane = threadIdx.x;
    const int p = *pos0 + t;
    const int first = window > 0 ? max(0, p + 1 - window) : 0;
    const int len = p + 1 - first, chunk = (len + S - 1) / S;
    const int j0 = first + s * chunk, j1 = min(j0 + chunk, p + 1);
    const int kvh = h / (n_head / n_head_kv);
    const u64 kv_stride = (u64)n_head_kv * hd, v_stride = (u64)n_head_kv * hdv;
    const float* qh = q + ((u64)t * n_head + h) * hd;
    for (int i = lane; i < hd; i += WARP_SIZE) sq[i] = qh[i] * scale;
    __syncthreads();

    float m = NEG_INF, l = 0.0f, o[ATT_MAXD];
#pragma unroll
    for (int k = 0; k < ATT_MAXD; k++) o[k] = 0.0f;
    for (int jb = j0; jb < j1; jb += WARP_SIZE) {
        const int j = jb + lane;
        float sc = NEG_INF;
        if (j < j1) {
            const uint4* kr = (const uint4*)(kc + j * kv_stride + (u64)kvh * hd);
            float d = 0.0f;
            for (int i = 0; i < hd / 8; i++) {
                const uint4 v = kr[i];
                const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    d += h2f((u16)(w[e] & 0xffff)) * sq[8 * i + 2 * e];
                    d += h2f((u16)(w[e] >> 16)) * sq[8 * i + 2 * e + 1];
                }
            }
            sc = d;
        }
        const float mn = fmaxf(m, warp_max(sc));
        const float pj = j < j1 ? expf(sc - mn) : 0.0f;
        const float corr = expf(m - mn);
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int k = 0; k < ATT_MAXD; k++) o[k] *= corr;
        const int nb = min(WARP_SIZE, j1 - jb);
        for (int jj = 0; jj < nb; jj++) {
            const float pw = SHFL(pj, jj);
            const u16* vr = vc + (u64)(jb + jj) * v_stride + (u64)kvh * hdv;
#pragma unroll
            for (int k = 0; k < ATT_MAXD; k++) {
                const int d = lane + k * WARP_SIZE;
                if (d < hdv) o[k] += pw * h2f(vr[d]);
            }
        }
        m = mn;
    }
    if (S == 1) {
        float* dst = out + ((u64)t * n_head + h) * hdv;
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_MAXD; k++) {
            const int d = lane + k * WARP_SIZE;
            if (d < hdv) dst[d] = o[k] * inv;
        }
    } else {
        float* dst = part + (((u64)t * n_head + h) * S + s) * (2 + hdv);
        if (lane == 0) { dst[0] = m; dst[1] = l; }
#pragma unroll
        for (int k = 0; k < ATT_MAXD; k++) {
            const int d = lane + k * WARP_SIZE;
            if (d < hdv) dst[2 + d] = o[k];
        }
    }
}

// Merge S partial results: out = Σ o_s e^(m_s - M) / Σ l_s e^(m_s - M).
// Grid: x = head, y = token; block: any multiple of WARP_SIZE (loops over hdv).
KERNEL void attn_combine(const float* part, float* out, int n_head, int hdv, int S) {
    const int h = blockIdx.x, t = blockIdx.y;
    const float* base = part + ((u64)t * n_head + h) * S * (2 + hdv);
    float M = NEG_INF;
    for (int s = 0; s < S; s++) M = fmaxf(M, base[s * (2 + hdv)]);
    float L = 0.0f;
    for (int s = 0; s < S; s++) L += base[s * (2 + hdv) + 1] * expf(base[s * (2 + hdv)] - M);
    const float inv = 1.0f / L;
    for (int d = threadIdx.x; d < hdv; d += blockDim.x) {
        float acc = 0.0f;
        for (int s = 0; s < S; s++) acc += base[s * (2 + hdv) + 2 + d] * expf(base[s * (2 + hdv)] - M);
        out[((u64)t * n_head + h) * hdv + d] = acc * inv;
    }
}
