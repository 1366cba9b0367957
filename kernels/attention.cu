// attention.cu: causal attention over the f16 KV cache, flash style: online
// softmax over tiles of WARP_SIZE keys, no score matrix in memory. Decode
// (attn) splits the keys over S blocks of 4 warps (flash-decoding); the
// last block of each (token, head) to finish merges the partial results;
// prefill (attn_prefill) stages each key tile in shared memory once for a
// block of queries.
// GQA/MQA: Q head h reads K/V head h / (n_head / n_head_kv); nothing is copied.
// Sliding window (gemma3 local layers): keys (p - window, p] only.
// CPU reference: the attention loop in model::forward.
//
// q: (n, n_head, hd) f32. kc: (n_ctx, n_head_kv * hd) f16; vc: (n_ctx,
// n_head_kv * hdv) f16. out: (n, n_head, hdv) f32. S > 1 also uses part
// ((n * n_head) * S, 2 + hdv) f32 rows {max, sum, unnormalised out} and
// counters (n * n_head) i32, zero between launches.
// Token t is at position *pos0 + t. hd must be a multiple of 8, hdv <= 256.
#pragma once
#include "vendor.h"

#define ATT_MAXD (256 / WARP_SIZE)
#define ATT_WARPS 4

// attn (decode and any n): grid x = Q head, y = token t, z = split s (of S);
// block ATT_WARPS warps, warp w taking key tiles w, w + ATT_WARPS, ... of
// the split, the warps merged through shared memory at the end.
// Dynamic shared memory: (hd + ATT_WARPS * (2 + hdv)) floats.
KERNEL void attn(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc, float* out,
                 float* part, int* counters, const int* pos0, int n_head, int n_head_kv, int hd, int hdv, int window,
                 float scale, int S) {
    extern __shared__ float sm[];
    float* sq = sm;
    float* red = sm + hd;
    const int h = blockIdx.x, t = blockIdx.y, s = blockIdx.z;
    const int lane = threadIdx.x % WARP_SIZE, w = threadIdx.x / WARP_SIZE;
    const int p = *pos0 + t;
    const int first = window > 0 ? max(0, p + 1 - window) : 0;
    const int len = p + 1 - first, chunk = (len + S - 1) / S;
    const int j0 = first + s * chunk, j1 = min(j0 + chunk, p + 1);
    const int kvh = h / (n_head / n_head_kv);
    const u64 kv_stride = (u64)n_head_kv * hd, v_stride = (u64)n_head_kv * hdv;
    const float* qh = q + ((u64)t * n_head + h) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) sq[i] = qh[i] * scale;
    __syncthreads();

    float m = NEG_INF, l = 0.0f, o[ATT_MAXD];
#pragma unroll
    for (int k = 0; k < ATT_MAXD; k++) o[k] = 0.0f;
    for (int jb = j0 + w * WARP_SIZE; jb < j1; jb += ATT_WARPS * WARP_SIZE) {
        const int j = jb + lane;
        float sc = NEG_INF;
        if (j < j1) {
            const uint4* kr = (const uint4*)(kc + j * kv_stride + (u64)kvh * hd);
            float d = 0.0f;
#pragma unroll 4
            for (int i = 0; i < hd / 8; i++) {
                const uint4 v = kr[i];
                const u32 wd[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    d += h2f((u16)(wd[e] & 0xffff)) * sq[8 * i + 2 * e];
                    d += h2f((u16)(wd[e] >> 16)) * sq[8 * i + 2 * e + 1];
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
        const u16* vb = vc + (u64)jb * v_stride + (u64)kvh * hdv;
        int jj = 0;
        for (; jj + 4 <= nb; jj += 4) {  // four keys' loads in flight at once
            const float p0 = SHFL(pj, jj), p1 = SHFL(pj, jj + 1), p2 = SHFL(pj, jj + 2), p3 = SHFL(pj, jj + 3);
            const u16* v0 = vb + (u64)jj * v_stride;
#pragma unroll
            for (int k = 0; k < ATT_MAXD; k++) {
                const int d = lane + k * WARP_SIZE;
                if (d < hdv)
                    o[k] += p0 * h2f(v0[d]) + p1 * h2f(v0[v_stride + d]) + p2 * h2f(v0[2 * v_stride + d]) +
                            p3 * h2f(v0[3 * v_stride + d]);
            }
        }
        for (; jj < nb; jj++) {
            const float pw = SHFL(pj, jj);
            const u16* v0 = vb + (u64)jj * v_stride;
#pragma unroll
            for (int k = 0; k < ATT_MAXD; k++) {
                const int d = lane + k * WARP_SIZE;
                if (d < hdv) o[k] += pw * h2f(v0[d]);
            }
        }
        m = mn;
    }
    // merge the warps: M = max m_w, L = Σ l_w e^(m_w - M), o = Σ o_w e^(m_w - M)
    float* mine = red + w * (2 + hdv);
    if (lane == 0) { mine[0] = m; mine[1] = l; }
#pragma unroll
    for (int k = 0; k < ATT_MAXD; k++) {
        const int d = lane + k * WARP_SIZE;
        if (d < hdv) mine[2 + d] = o[k];
    }
    __syncthreads();
    const int nw = blockDim.x / WARP_SIZE;
    float M = NEG_INF, L = 0.0f;
    for (int i = 0; i < nw; i++) M = fmaxf(M, red[i * (2 + hdv)]);
    for (int i = 0; i < nw; i++) L += red[i * (2 + hdv) + 1] * expf(red[i * (2 + hdv)] - M);
    float* dst = S == 1 ? out + ((u64)t * n_head + h) * hdv : part + (((u64)t * n_head + h) * S + s) * (2 + hdv) + 2;
    const float norm = S == 1 ? (L > 0.0f ? 1.0f / L : 0.0f) : 1.0f;
    for (int d = threadIdx.x; d < hdv; d += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < nw; i++) acc += red[i * (2 + hdv) + 2 + d] * expf(red[i * (2 + hdv)] - M);
        dst[d] = acc * norm;
    }
    if (S == 1) return;
    if (threadIdx.x == 0) { dst[-2] = M; dst[-1] = L; }
    // The last of the S blocks of (t, h) to finish merges all partials:
    // out = Σ o_s e^(m_s - M) / Σ l_s e^(m_s - M). Its ticket comes from a
    // counter that it resets, so a replayed graph finds it at zero again.
    __shared__ int last;
    __threadfence();
    __syncthreads();
    int* ctr = counters + (u64)t * n_head + h;
    if (threadIdx.x == 0) last = atomicAdd(ctr, 1) == S - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const volatile float* base = part + ((u64)t * n_head + h) * S * (2 + hdv);
    float GM = NEG_INF, GL = 0.0f;
    for (int i = 0; i < S; i++) GM = fmaxf(GM, base[i * (2 + hdv)]);
    for (int i = 0; i < S; i++) GL += base[i * (2 + hdv) + 1] * expf(base[i * (2 + hdv)] - GM);
    const float inv = GL > 0.0f ? 1.0f / GL : 0.0f;
    for (int d = threadIdx.x; d < hdv; d += blockDim.x) {
        float acc = 0.0f;
        for (int i = 0; i < S; i++) acc += base[i * (2 + hdv) + 2 + d] * expf(base[i * (2 + hdv)] - GM);
        out[((u64)t * n_head + h) * hdv + d] = acc * inv;
    }
    if (threadIdx.x == 0) *ctr = 0;
}

// attn_prefill: many queries, flash style with K/V tiles shared by a block.
// Grid: x = Q head, y = tile of `qb` queries (qb = 4 * qw, qw <= 4 per warp);
// block ATT_WARPS warps. Each WARP_SIZE-key tile is staged in shared memory as f16
// (K rows padded by one word: conflict-free per-lane rows) and used by every
// query of the block; per query an online softmax as in attn.
// Dynamic shared memory: WARP_SIZE * (hd / 2 + 1) words (K) + WARP_SIZE * hdv
// halves (V) + qb * hd floats (Q). Registers capped for 5 blocks per SM: on
// an H100 a 96-register cap on everything raised pp512 by 10-19%.
KERNEL void BOUNDS(ATT_WARPS * WARP_SIZE, 5) attn_prefill(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                         float* out, const int* pos0, int n, int n_head, int n_head_kv, int hd, int hdv, int window,
                         float scale, int qw) {
    extern __shared__ u32 smem[];
    const int hw = hd / 2 + 1;
    u32* sk = smem;
    u16* sv = (u16*)(sk + WARP_SIZE * hw);
    float* sq = (float*)(sv + WARP_SIZE * hdv);
    const int h = blockIdx.x, lane = threadIdx.x % WARP_SIZE, w = threadIdx.x / WARP_SIZE;
    const int qb = qw * ATT_WARPS, t0 = blockIdx.y * qb, tend = min(t0 + qb, n);
    const int base = *pos0;
    const int kvh = h / (n_head / n_head_kv);
    const u64 kv_stride = (u64)n_head_kv * hd, v_stride = (u64)n_head_kv * hdv;
    for (int i = threadIdx.x; i < (tend - t0) * hd; i += blockDim.x) {
        const int tq = i / hd, e = i % hd;
        sq[tq * hd + e] = q[((u64)(t0 + tq) * n_head + h) * hd + e] * scale;
    }
    const int p_last = base + tend - 1;
    const int kfirst = window > 0 ? max(0, base + t0 + 1 - window) : 0;
    float m[4], l[4], o[4][ATT_MAXD];
#pragma unroll
    for (int a = 0; a < 4; a++) {
        m[a] = NEG_INF; l[a] = 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_MAXD; k++) o[a][k] = 0.0f;
    }
    for (int kb = kfirst; kb <= p_last; kb += WARP_SIZE) {
        __syncthreads();
        // 16-byte loads, several in flight per thread
#pragma unroll 4
        for (int i = threadIdx.x; i < WARP_SIZE * (hd / 8); i += blockDim.x) {
            const int r = i / (hd / 8), c = i % (hd / 8);
            const uint4 v = kb + r <= p_last ? ((const uint4*)(kc + (u64)(kb + r) * kv_stride + (u64)kvh * hd))[c] : make_uint4(0, 0, 0, 0);
            u32* d = sk + r * hw + 4 * c;
            d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
        }
#pragma unroll 4
        for (int i = threadIdx.x; i < WARP_SIZE * (hdv / 8); i += blockDim.x) {
            const int r = i / (hdv / 8), c = i % (hdv / 8);
            ((uint4*)sv)[i] = kb + r <= p_last ? ((const uint4*)(vc + (u64)(kb + r) * v_stride + (u64)kvh * hdv))[c] : make_uint4(0, 0, 0, 0);
        }
        __syncthreads();
#pragma unroll
        for (int a = 0; a < 4; a++) {
            const int tq = w * qw + a, t = t0 + tq;
            if (a >= qw || t >= tend) continue;  // uniform per warp
            const int p = base + t, first = window > 0 ? max(0, p + 1 - window) : 0;
            const int j = kb + lane;
            const bool valid = j <= p && j >= first;
            float sc = NEG_INF;
            if (valid) {
                const u32* kr = sk + lane * hw;
                const float* qv = sq + tq * hd;
                float d = 0.0f;
                for (int c = 0; c < hd / 2; c++) {
                    const u32 x = kr[c];
                    d += h2f((u16)(x & 0xffff)) * qv[2 * c] + h2f((u16)(x >> 16)) * qv[2 * c + 1];
                }
                sc = d;
            }
            const float mx = warp_max(sc);
            if (mx == NEG_INF) continue;  // no visible key in this tile (uniform)
            const float mn = fmaxf(m[a], mx);
            const float pj = valid ? expf(sc - mn) : 0.0f;
            const float corr = expf(m[a] - mn);
            l[a] = l[a] * corr + warp_sum(pj);
#pragma unroll
            for (int k = 0; k < ATT_MAXD; k++) o[a][k] *= corr;
            for (int jj = 0; jj < WARP_SIZE; jj++) {
                const float pw = SHFL(pj, jj);
                const u16* vr = sv + jj * hdv;
#pragma unroll
                for (int k = 0; k < ATT_MAXD; k++) {
                    const int d = lane + k * WARP_SIZE;
                    if (d < hdv) o[a][k] += pw * h2f(vr[d]);
                }
            }
            m[a] = mn;
        }
    }
#pragma unroll
    for (int a = 0; a < 4; a++) {
        const int t = t0 + w * qw + a;
        if (a >= qw || t >= tend) continue;
        float* dst = out + ((u64)t * n_head + h) * hdv;
        const float inv = l[a] > 0.0f ? 1.0f / l[a] : 0.0f;
#pragma unroll
        for (int k = 0; k < ATT_MAXD; k++) {
            const int d = lane + k * WARP_SIZE;
            if (d < hdv) dst[d] = o[a][k] * inv;
        }
    }
}
