// attention.cu: causal attention over the f16 KV cache, flash style: online
// softmax over tiles of WARP_SIZE keys, no score matrix in memory. Decode
// (attn_d64/128/256) splits the keys over up to S blocks of ATT_DWARPS warps
// (flash-decoding); the last block of each (token, head) to finish merges
// the partial results;
// prefill (attn_prefill) stages each key tile in shared memory once for a
// block of queries; on NVIDIA sm_80+ (HAS_MMA_F16) attn_prefill_mma64/128
// do the same on tensor cores, with the keys split over blocks at long
// contexts (attn_prefill_merge_w / attn_prefill_merge add the parts; also one-row decode steps
// at long contexts, a token's query heads of one KV head in one tile).
// GQA/MQA: Q head h reads K/V head h / (n_head / n_head_kv); nothing is copied.
// Sliding window (gemma3 local layers): keys (p - window, p] only.
// CPU reference: the attention loop in model::forward.
//
// q: (n, n_head, hd) f32. kc: (slots, n_head_kv * hd) f16; vc: (slots,
// n_head_kv * hdv) f16, paged (kv_slot in rope.cu: position j of row t's
// sequence is at slot kv_slot(bt, tab[t], j)). out: (n, n_head, hdv) f32.
// S > 1 also uses part ((n * n_head) * S, 2 + hdv) f32 rows {max, sum,
// unnormalised out} and counters (n * n_head) i32, zero between launches.
// Query t is at position pos[t] and sees its sequence's keys up to pos[t].
// Decode rows may be of any sequences (each its own table); the prefill
// kernels take the rows of one sequence, consecutive positions from pos[0],
// all with table tab[0]. hd must be a multiple of 8, hdv <= 256.
#pragma once
#include "iquant.h"
#include "rope.cu"

#define ATT_MAXD (256 / WARP_SIZE)
#define ATT_WARPS 4
// Warps of a decode block (attn_d*; a compile option may change it: the
// launcher reads it through ops::kernel_define). 8 (H200, 7B twin, engine
// B = 1 at 128-255 keys: +1.5% over 4; docs/PERFORMANCE.md): one split of
// a tile per warp covers 256 keys, with no merge below that.
#ifndef ATT_DWARPS
#define ATT_DWARPS 8
#endif
// head_prep (the fused decode) needs a thread per RoPE pair: 128 at hd 256
static_assert(ATT_DWARPS * WARP_SIZE >= 128, "a decode block of at least 128 threads");
// Most key splits of a decode launch: the merge keeps one weight per split.
#define ATT_MAX_SPLITS 64
// Keys one decode block takes before another split pays: one tile per warp
// (a compile option may change it: each step's splits are worked out on the
// device, and the launcher's upper bound, ops::decode_splits, reads it too).
#ifndef ATT_CHUNK
#define ATT_CHUNK (ATT_DWARPS * WARP_SIZE)
#endif
// Block-table entries a decode block stages in shared memory (its keys'
// blocks; a split of more keys reads the rest from the table itself), so
// a key's address costs no dependent global load.
#define ATT_BT_SHARED 128

// N consecutive f16 values, in one load of 2N bytes (2N-byte aligned).
template <int N>
struct HalfVec;
template <>
struct HalfVec<1> {
    u16 a;
    __device__ __forceinline__ void load(const u16* p) { a = *p; }
    __device__ __forceinline__ void zero() { a = 0; }
    __device__ __forceinline__ float at(int) const { return h2f(a); }
};
template <>
struct HalfVec<2> {
    u32 a;
    __device__ __forceinline__ void load(const u16* p) { a = *(const u32*)p; }
    __device__ __forceinline__ void zero() { a = 0; }
    __device__ __forceinline__ float at(int i) const { return h2f((u16)(i ? a >> 16 : a)); }
};
template <>
struct HalfVec<4> {
    uint2 a;
    __device__ __forceinline__ void load(const u16* p) { a = *(const uint2*)p; }
    __device__ __forceinline__ void zero() { a = make_uint2(0, 0); }
    __device__ __forceinline__ float at(int i) const {
        const u32 w = i < 2 ? a.x : a.y;
        return h2f((u16)(i & 1 ? w >> 16 : w));
    }
};
template <>
struct HalfVec<8> {
    uint4 a;
    __device__ __forceinline__ void load(const u16* p) { a = *(const uint4*)p; }
    __device__ __forceinline__ void zero() { a = make_uint4(0, 0, 0, 0); }
    __device__ __forceinline__ float at(int i) const {
        const u32 w = i < 2 ? a.x : i < 4 ? a.y : i < 6 ? a.z : a.w;
        return h2f((u16)(i & 1 ? w >> 16 : w));
    }
};

// Decode attention, templated on D >= hd, hdv (64, 128 or 256).
// Grid x = Q head, y = token t, z = split s (of at most S); block ATT_DWARPS
// warps. The visible keys (first .. p) are split over SA = min(S,
// ceil(len / ATT_CHUNK)) blocks (worked out on the device, so one captured
// graph serves every position; blocks s >= SA exit at once). Warp w takes
// key tiles w, w + ATT_DWARPS, ... of its block's keys. Per tile, lane l
// scores key l (its whole K row in 16-byte loads) and owns value dims
// l * D / WARP_SIZE .. of the output; V rows are loaded in batches of VB
// keys, the first batch issued before the scores so both wait on memory
// once. Warps merge through shared memory; with SA > 1 each block writes a
// partial {max, sum, unnormalised out} and the last of the SA blocks of (t,
// h) to finish merges them (loads that bypass L1: the partials come from
// other SMs).
template <int D>
static __device__ __forceinline__ void attn_decode(const float* __restrict__ q, u16* __restrict__ kc,
                                                   u16* __restrict__ vc, float* out, float* part, int* counters,
                                                   const int* pos, const int* tab, const int* bt, int n_head,
                                                   int n_head_kv, int hd, int hdv, int window, float scale, int S, i8* aq, float* ad, float* as,
                                                   const float* kr, const float* vr, const float* bq, const float* bk,
                                                   const float* bv, const float* qn, const float* kn, const float* freq,
                                                   int rope_dim, int neox, float mscale, float eps) {
    constexpr int DPL = D / WARP_SIZE;                                      // value dims per lane
    constexpr int VB = WARP_SIZE < 128 * WARP_SIZE / D ? WARP_SIZE : 128 * WARP_SIZE / D;  // keys per V batch
    extern __shared__ float sm[];
    __shared__ float bred[32];
    float* sq = sm;
    float* red = sm + hd;
    float* sk = red + ATT_DWARPS * (2 + hdv);  // fused: the new key and value
    float* sv = sk + hd;
    const int h = blockIdx.x, t = blockIdx.y, s = blockIdx.z;
    const int lane = threadIdx.x % WARP_SIZE, w = threadIdx.x / WARP_SIZE;
    const int p = pos[t];  // written by the host, not by a kernel
    const int tb = tab ? tab[t] : 0;
    const int first = window > 0 ? max(0, p + 1 - window) : 0;
    const int len = p + 1 - first;
    const int SA = min(S, (len + ATT_CHUNK - 1) / ATT_CHUNK);
    if (s >= SA) return;
    const int chunk = (len + SA - 1) / SA;  // SA(SA - 1) < len: no split is empty
    const int j0 = first + s * chunk, j1 = min(j0 + chunk, p + 1);
    const int kvh = h / (n_head / n_head_kv);
    const u64 kv_stride = (u64)n_head_kv * hd, v_stride = (u64)n_head_kv * hdv;
    const bool fuse = kr != 0;  // one token: q, k, v come raw, qkv_post's work is done here
    const bool own = fuse && s == SA - 1;
    const int jend = own ? p : j1;  // keys read from the cache: [j0, jend)
    // this block's entries of the block table (written by the host before
    // the launch, so read before GRID_START)
    __shared__ int sbt[ATT_BT_SHARED];
    const int b0 = j0 / KV_BLOCK, nbt = bt ? min(ATT_BT_SHARED, (j1 - 1) / KV_BLOCK - b0 + 1) : 0;
    for (int i = threadIdx.x; i < nbt; i += blockDim.x) sbt[i] = bt[tb + b0 + i];
    __syncthreads();
    // the cache slot of key j of this block's range
    auto slot = [&](int j) -> u64 {
        const int b = j / KV_BLOCK - b0;
        return bt ? (u64)(b < nbt ? sbt[b] : bt[tb + j / KV_BLOCK]) * KV_BLOCK + (u64)(j % KV_BLOCK) : (u64)j;
    };
    // Those keys' K and V rows into L2 while the kernel before finishes (and
    // while q and the new key are prepared below): earlier steps wrote them,
    // no kernel in flight does (see GRID_START). 32 bytes per prefetch.
    {
        const int kw = hd / 16, vw = hdv / 16;  // 32-byte pieces per row
        for (int i = threadIdx.x; i < (jend - j0) * (kw + vw); i += blockDim.x) {
            const int j = j0 + i / (kw + vw), c = i % (kw + vw);
            const u64 sl = slot(j);
            if (c < kw) PREFETCH_L2(kc + sl * kv_stride + (u64)kvh * hd + 16 * c);
            else PREFETCH_L2(vc + sl * v_stride + (u64)kvh * hdv + 16 * (c - kw));
        }
    }
    GRID_START();
    const float* qh = q + ((u64)t * n_head + h) * hd;
    if (fuse) {
        // Fused, the last split owns key p: its blocks make the new key and
        // value themselves (rounded to f16 as the cache holds them) and use
        // them directly, and the first Q head of each KV group stores them
        // in the cache for the steps after; no block of this launch reads
        // position p from the cache.
        const bool store = own && h % (n_head / n_head_kv) == 0;
        const u64 kvo = (u64)t * n_head_kv + kvh;
        head_prep(qh, bq ? bq + h * hd : 0, qn, own ? kr + kvo * hd : 0, bk ? bk + kvh * hd : 0, kn, vr + kvo * hdv,
                  bv ? bv + kvh * hdv : 0, freq, p, hd, hdv, rope_dim, neox, mscale, eps, scale, sq, sk, sv,
                  store ? kc + kv_slot(bt, tb, p) * kv_stride + (u64)kvh * hd : 0,
                  store ? vc + kv_slot(bt, tb, p) * v_stride + (u64)kvh * hdv : 0,
                  bred);
    } else {
        for (int i = threadIdx.x; i < hd; i += blockDim.x) sq[i] = qh[i] * scale;
        __syncthreads();
    }

    const int d0 = lane * DPL;
    const bool vmine = d0 < hdv;  // hdv % 8 == 0: a lane's dims are all in or all out
    float m = NEG_INF, l = 0.0f, o[DPL];
#pragma unroll
    for (int k = 0; k < DPL; k++) o[k] = 0.0f;
    for (int jb = j0 + w * WARP_SIZE; jb < jend; jb += ATT_DWARPS * WARP_SIZE) {
        const int nb = min(WARP_SIZE, jend - jb);
        const u16* vb = vc + (u64)kvh * hdv + d0;
        HalfVec<DPL> vr[VB];
#pragma unroll
        for (int k = 0; k < VB; k++) {
            if (k < nb && vmine) vr[k].load(vb + slot(jb + k) * v_stride);
            else vr[k].zero();
        }
        // scores: lane l takes key jb + l
        const int j = jb + lane;
        float sc = NEG_INF;
        if (lane < nb) {
            const uint4* krow = (const uint4*)(kc + slot(j) * kv_stride + (u64)kvh * hd);
            float d = 0.0f;
            for (int c = 0; c < hd / 8; c += 8) {
                uint4 kv[8];
#pragma unroll
                for (int i = 0; i < 8; i++) kv[i] = c + i < hd / 8 ? krow[c + i] : make_uint4(0, 0, 0, 0);
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const u32 wd[4] = {kv[i].x, kv[i].y, kv[i].z, kv[i].w};
                    const float* qs = sq + 8 * (c + i);
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        if (c + i < hd / 8) d += h2f((u16)(wd[e] & 0xffff)) * qs[2 * e] + h2f((u16)(wd[e] >> 16)) * qs[2 * e + 1];
                    }
                }
            }
            sc = d;
        }
        const float mn = fmaxf(m, warp_max(sc));
        const float pj = lane < nb ? expf(sc - mn) : 0.0f;
        const float corr = expf(m - mn);
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int k = 0; k < DPL; k++) o[k] *= corr;
        for (int b = 0; b < nb; b += VB) {
            if (b > 0) {
#pragma unroll
                for (int k = 0; k < VB; k++) {
                    if (b + k < nb && vmine) vr[k].load(vb + slot(jb + b + k) * v_stride);
                    else vr[k].zero();
                }
            }
#pragma unroll
            for (int k = 0; k < VB; k++) {
                const float pk = SHFL(pj, (b + k) % WARP_SIZE);
#pragma unroll
                for (int e = 0; e < DPL; e++) o[e] += pk * vr[k].at(e);
            }
        }
        m = mn;
    }
    if (own && w == 0) {  // key p, from shared memory
        float d = 0.0f;
        for (int i = lane; i < hd; i += WARP_SIZE) d += sq[i] * sk[i];
        const float sc = warp_sum(d);
        const float mn = fmaxf(m, sc), corr = expf(m - mn), pj = expf(sc - mn);
        l = l * corr + pj;
#pragma unroll
        for (int e = 0; e < DPL; e++) o[e] = o[e] * corr + (vmine ? pj * sv[d0 + e] : 0.0f);
        m = mn;
    }
    // merge the warps: M = max m_w, L = Σ l_w e^(m_w - M), o = Σ o_w e^(m_w - M)
    float* mine = red + w * (2 + hdv);
    if (lane == 0) { mine[0] = m; mine[1] = l; }
    if (vmine) {
#pragma unroll
        for (int e = 0; e < DPL; e++) mine[2 + d0 + e] = o[e];
    }
    __syncthreads();
    float M = NEG_INF, L = 0.0f;
#pragma unroll
    for (int i = 0; i < ATT_DWARPS; i++) M = fmaxf(M, red[i * (2 + hdv)]);
#pragma unroll
    for (int i = 0; i < ATT_DWARPS; i++) L += red[i * (2 + hdv) + 1] * expf(red[i * (2 + hdv)] - M);
    float* dst = SA == 1 ? out + ((u64)t * n_head + h) * hdv : part + (((u64)t * n_head + h) * S + s) * (2 + hdv) + 2;
    const float norm = SA == 1 ? (L > 0.0f ? 1.0f / L : 0.0f) : 1.0f;
    const int cols = n_head * hdv, ng = cols >> 5;
    for (int d = threadIdx.x; d < hdv; d += blockDim.x) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_DWARPS; i++) acc += red[i * (2 + hdv) + 2 + d] * expf(red[i * (2 + hdv)] - M);
        dst[d] = acc * norm;
        if (SA == 1 && aq) act_store_group(acc * norm, h * hdv + d, true, aq + (u64)t * cols * 2, ad + t * ng, as + t * ng);
    }
    if (SA == 1) return;
    if (threadIdx.x == 0) { dst[-2] = M; dst[-1] = L; }
    // The last of the SA blocks of (t, h) to finish merges all partials:
    // out = Σ o_s e^(m_s - M) / Σ l_s e^(m_s - M). Its ticket comes from a
    // counter that it resets, so a replayed graph finds it at zero again.
    __shared__ int last;
    __shared__ float wgt[ATT_MAX_SPLITS];  // S <= ATT_MAX_SPLITS (launcher)
    __threadfence();
    __syncthreads();
    int* ctr = counters + (u64)t * n_head + h;
    if (threadIdx.x == 0) last = atomicAdd(ctr, 1) == SA - 1;
    __syncthreads();
    if (!last) return;
    __threadfence();
    const float* base = part + ((u64)t * n_head + h) * S * (2 + hdv);
    static_assert(ATT_DWARPS * WARP_SIZE >= ATT_MAX_SPLITS, "a thread per split in the merge");
    const int i = threadIdx.x;  // blockDim.x >= ATT_MAX_SPLITS >= SA
    const float mi = i < SA ? ld_cg(base + i * (2 + hdv)) : NEG_INF;
    const float li = i < SA ? ld_cg(base + i * (2 + hdv) + 1) : 0.0f;
    const float GM = block_max(mi, red);
    const float wi = i < SA ? expf(mi - GM) : 0.0f;
    if (i < SA) wgt[i] = wi;
    const float GL = block_sum(li * wi, red);  // its barriers also publish wgt
    const float inv = GL > 0.0f ? 1.0f / GL : 0.0f;
    for (int d = threadIdx.x; d < hdv; d += blockDim.x) {
        float acc = 0.0f;
#pragma unroll 8
        for (int k = 0; k < SA; k++) acc += wgt[k] * ld_cg(base + k * (2 + hdv) + 2 + d);
        out[((u64)t * n_head + h) * hdv + d] = acc * inv;
        if (aq) act_store_group(acc * inv, h * hdv + d, true, aq + (u64)t * cols * 2, ad + t * ng, as + t * ng);
    }
    if (threadIdx.x == 0) *ctr = 0;
}

// attn_d<D>: decode attention for heads of up to D values (launcher picks).
// Dynamic shared memory: (hd + ATT_DWARPS * (2 + hdv)) floats, (2 hd + hdv
// + ATT_DWARPS * (2 + hdv)) fused. aq/ad/as (null: not written): out (nt,
// n_head * hdv) also prepared for the decode products as quant_act would
// (kernels/mmvq.cu; hdv % 32 == 0). kr != null (one token only): fused
// with qkv_post: q, kr, vr are the raw projections and the rest are
// qkv_post's arguments (bias, QK-norm, RoPE, the f16 store of K/V at p).
// GRID_START is inside attn_decode, after the K/V prefetch.
#define ATTN_DECODE(D)                                                                                                   \
    KERNEL void __launch_bounds__(ATT_DWARPS * WARP_SIZE) attn_d##D(                                                      \
        const float* __restrict__ q, u16* __restrict__ kc, u16* __restrict__ vc, float* out, float* part,                \
        int* counters, const int* pos, const int* tab, const int* bt, int n_head, int n_head_kv, int hd, int hdv,       \
        int window, float scale, int S, i8* aq, float* ad, float* as, const float* kr, const float* vr,                 \
        const float* bq, const float* bk, const float* bv, const float* qn, const float* kn, const float* freq,         \
        int rope_dim, int neox, float mscale, float eps) {                                                                                                     \
        attn_decode<D>(q, kc, vc, out, part, counters, pos, tab, bt, n_head, n_head_kv, hd, hdv, window, scale, S,  \
                       aq, ad, as, kr, vr, bq, bk, bv, qn, kn, freq, rope_dim, neox, mscale, eps);                       \
    }
ATTN_DECODE(64)
ATTN_DECODE(128)
ATTN_DECODE(256)

// attn_dr<D> (hd = hdv = D): decode rows of many sequences (a mixed step
// of several rows), one warp per (row t, Q head h, key split s), the
// warps of a block independent. Where rows x heads already fill the
// device, attn_d's block per (t, h) spends more on its fixed work (one
// key per lane, a tile per warp, the merge through shared memory) than on
// its keys. Here a key's row is LK = D / 8 lanes of 16 bytes, so one load
// instruction reads KPL = WARP_SIZE / LK whole rows; lane (kl, sub) keeps
// dims 8 sub .. 8 sub + 7 of keys kl, kl + KPL, ... of the warp's range as
// its own online softmax (m, l, o[8]), and the KPL streams meet by
// shuffles at the end. ATR_U loads of K and ATR_U of V a lane are in
// flight, the next chunk's issued as soon as this chunk's registers are
// free. The range's block-table entries (written by the host) sit in
// registers, one a lane, read before GRID_START. Splits as attn_decode
// (SA = min(S, ceil(len / ATR_MIN)), worked out on the device), and the
// last warp of a (t, h) to finish merges the partials.
// Grid: x = ceil(n * n_head * S / ATR_WARPS); block ATR_WARPS warps.
#ifndef ATR_U
#define ATR_U 8
#endif
#ifndef ATR_MIN
#define ATR_MIN 64
#endif
#define ATR_WARPS 4
// blocks a multiprocessor should hold (the register budget)
#ifndef ATR_MINB
#define ATR_MINB 4
#endif

template <int D>
static __device__ __forceinline__ void attn_rows(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                                                 float* __restrict__ out, float* part, int* counters, const int* pos, const int* tab,
                                                 const int* bt, int n, int n_head, int n_head_kv, int window, float scale, int S) {
    constexpr int LK = D / 8, KPL = WARP_SIZE / LK, U = ATR_U, CH = KPL * U;
    constexpr int PPL = (ATT_MAX_SPLITS + WARP_SIZE - 1) / WARP_SIZE;  // splits a lane merges
    static_assert(LK <= WARP_SIZE && WARP_SIZE % LK == 0, "a key's row within one warp");
    const int lane = threadIdx.x % WARP_SIZE;
    const int item = blockIdx.x * ATR_WARPS + threadIdx.x / WARP_SIZE;
    if (item >= n * n_head * S) return;
    const int s = item % S, th = item / S, h = th % n_head, t = th / n_head;
    const int p = pos[t], tb = tab ? tab[t] : 0;  // written by the host
    const int first = window > 0 ? max(0, p + 1 - window) : 0;
    const int len = p + 1 - first;
    const int SA = min(S, (len + ATR_MIN - 1) / ATR_MIN);
    if (s >= SA) return;
    const int chunk = (len + SA - 1) / SA;
    const int j0 = first + s * chunk, j1 = min(j0 + chunk, p + 1);
    const int kvh = h / (n_head / n_head_kv), sub = lane % LK, kl = lane / LK;
    const u64 stride = (u64)n_head_kv * D;
    const u16* kb = kc + (u64)kvh * D + 8 * sub;
    const u16* vb = vc + (u64)kvh * D + 8 * sub;
    // block-table entries from block tb0 on, entry tb0 + i in lane i
    int tb0 = j0 / KV_BLOCK, bte = 0;
    const int blast = (j1 - 1) / KV_BLOCK;
    if (bt && tb0 + lane <= blast) bte = bt[tb + tb0 + lane];
    u32 sl[U];
    // the slots of this lane's keys of the chunk from jb (warp-uniform)
    auto slots = [&](int jb) {
        if (bt && (jb + CH - 1) / KV_BLOCK - tb0 >= WARP_SIZE) {
            tb0 = jb / KV_BLOCK;
            bte = tb0 + lane <= blast ? bt[tb + tb0 + lane] : 0;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int j = min(jb + u * KPL + kl, j1 - 1);
            const int e = SHFL(bte, min(j / KV_BLOCK - tb0, WARP_SIZE - 1));
            sl[u] = bt ? (u32)e * KV_BLOCK + (u32)(j % KV_BLOCK) : (u32)j;
        }
    };
    // a key's 8 values of this lane (zeros past the range)
    auto row = [&](HalfVec<8>& r, const u16* base, int u, bool ok) {
        if (ok) r.load(base + (u64)sl[u] * stride);
        else r.zero();
    };
    HalfVec<8> kr[U], vr[U];
    slots(j0);
    GRID_START();  // q and the new key and value come from the kernel before
#pragma unroll
    for (int u = 0; u < U; u++) {
        const int j = j0 + u * KPL + kl;
        row(kr[u], kb, u, j < j1);
        row(vr[u], vb, u, j < j1);
    }
    float qr[8];
    {
        const float4* qp = (const float4*)(q + ((u64)t * n_head + h) * D + 8 * sub);
        const float4 a = qp[0], b = qp[1];
        qr[0] = a.x * scale, qr[1] = a.y * scale, qr[2] = a.z * scale, qr[3] = a.w * scale;
        qr[4] = b.x * scale, qr[5] = b.y * scale, qr[6] = b.z * scale, qr[7] = b.w * scale;
    }
    float m = NEG_INF, l = 0.0f, o[8];
#pragma unroll
    for (int e = 0; e < 8; e++) o[e] = 0.0f;
    for (int jb = j0; jb < j1; jb += CH) {
        float sc[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            float d = 0.0f;
#pragma unroll
            for (int e = 0; e < 8; e++) d = fmaf(kr[u].at(e), qr[e], d);
#pragma unroll
            for (int off = LK / 2; off > 0; off >>= 1) d += SHFL_XOR(d, off);
            sc[u] = jb + u * KPL + kl < j1 ? d : NEG_INF;
        }
        // the next chunk's slots and keys (kr is free now)
        const int jn = jb + CH;
        if (jn < j1) {
            slots(jn);
#pragma unroll
            for (int u = 0; u < U; u++) row(kr[u], kb, u, jn + u * KPL + kl < j1);
        }
        float mc = NEG_INF;
#pragma unroll
        for (int u = 0; u < U; u++) mc = fmaxf(mc, sc[u]);
        const float mn = fmaxf(m, mc), corr = expf(m - mn);
        l *= corr;
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] *= corr;
#pragma unroll
        for (int u = 0; u < U; u++) {
            const float pu = jb + u * KPL + kl < j1 ? expf(sc[u] - mn) : 0.0f;
            l += pu;
#pragma unroll
            for (int e = 0; e < 8; e++) o[e] = fmaf(pu, vr[u].at(e), o[e]);
        }
        m = mn;
        if (jn < j1) {
#pragma unroll
            for (int u = 0; u < U; u++) row(vr[u], vb, u, jn + u * KPL + kl < j1);
        }
    }
    // the KPL streams of the warp: M = max m, L = sum l e^(m - M), o likewise
#pragma unroll
    for (int off = LK; off < WARP_SIZE; off <<= 1) {
        const float m2 = SHFL_XOR(m, off), l2 = SHFL_XOR(l, off);
        const float mn = fmaxf(m, m2), c1 = expf(m - mn), c2 = expf(m2 - mn);
        l = l * c1 + l2 * c2;
#pragma unroll
        for (int e = 0; e < 8; e++) o[e] = o[e] * c1 + SHFL_XOR(o[e], off) * c2;
        m = mn;
    }
    float* dst = SA == 1 ? out + ((u64)t * n_head + h) * D : part + (((u64)t * n_head + h) * S + s) * (2 + D) + 2;
    const float norm = SA == 1 ? (l > 0.0f ? 1.0f / l : 0.0f) : 1.0f;
    if (kl == 0) {
#pragma unroll
        for (int e = 0; e < 8; e++) dst[8 * sub + e] = o[e] * norm;
    }
    if (SA == 1) return;
    if (lane == 0) dst[-2] = m, dst[-1] = l;
    // the last warp of (t, h) to finish: out = sum o_s e^(m_s - M) / sum
    // l_s e^(m_s - M); its ticket from a counter it resets (graph replays)
    __threadfence();
    SYNC_WARP();  // every lane's partials stored and fenced before the ticket
    int* ctr = counters + (u64)t * n_head + h;
    int last = 0;
    if (lane == 0) last = atomicAdd(ctr, 1) == SA - 1;
    if (!SHFL(last, 0)) return;
    __threadfence();
    const float* base = part + ((u64)t * n_head + h) * S * (2 + D);
    float mi[PPL], li[PPL], GM = NEG_INF;
#pragma unroll
    for (int k = 0; k < PPL; k++) {
        const int i = lane + k * WARP_SIZE;
        mi[k] = i < SA ? ld_cg(base + i * (2 + D)) : NEG_INF;
        li[k] = i < SA ? ld_cg(base + i * (2 + D) + 1) : 0.0f;
        GM = fmaxf(GM, mi[k]);
    }
    GM = warp_max(GM);
    float GL = 0.0f;
#pragma unroll
    for (int k = 0; k < PPL; k++) {
        mi[k] = lane + k * WARP_SIZE < SA ? expf(mi[k] - GM) : 0.0f;  // now the weights
        GL += li[k] * mi[k];
    }
    GL = warp_sum(GL);
    const float inv = GL > 0.0f ? 1.0f / GL : 0.0f;
    constexpr int DL = (D + WARP_SIZE - 1) / WARP_SIZE;
    float acc[DL];
#pragma unroll
    for (int e = 0; e < DL; e++) acc[e] = 0.0f;
    for (int i = 0; i < SA; i++) {
        float wi = 0.0f;
#pragma unroll
        for (int k = 0; k < PPL; k++) wi = i / WARP_SIZE == k ? mi[k] : wi;
        wi = SHFL(wi, i % WARP_SIZE);
#pragma unroll
        for (int e = 0; e < DL; e++)
            if (lane + e * WARP_SIZE < D) acc[e] += wi * ld_cg(base + i * (2 + D) + 2 + lane + e * WARP_SIZE);
    }
#pragma unroll
    for (int e = 0; e < DL; e++)
        if (lane + e * WARP_SIZE < D) out[((u64)t * n_head + h) * D + lane + e * WARP_SIZE] = acc[e] * inv;
    if (lane == 0) *ctr = 0;
}

#define ATTN_ROWS(D)                                                                                                     \
    KERNEL void BOUNDS(ATR_WARPS * WARP_SIZE, ATR_MINB)                                                                  \
        attn_dr##D(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc, float* out,      \
                   float* part, int* counters, const int* pos, const int* tab, const int* bt, int n, int n_head,        \
                   int n_head_kv, int window, float scale, int S) {                                                      \
        attn_rows<D>(q, kc, vc, out, part, counters, pos, tab, bt, n, n_head, n_head_kv, window, scale, S);             \
    }
ATTN_ROWS(64)
ATTN_ROWS(128)
ATTN_ROWS(256)

// attn_prefill: many queries, flash style with K/V tiles shared by a block.
// Grid: x = Q head, y = tile of `qb` queries (qb = 4 * qw, qw <= 4 per warp);
// block ATT_WARPS warps. Each WARP_SIZE-key tile is staged in shared memory as f16
// (K rows padded by one word: conflict-free per-lane rows) and used by every
// query of the block; per query an online softmax as in attn.
// Dynamic shared memory: WARP_SIZE * (hd / 2 + 1) words (K) + WARP_SIZE * hdv
// halves (V) + qb * hd floats (Q). Registers capped for 5 blocks per SM: on
// an H100 a 96-register cap on everything raised pp512 by 10-19%.
KERNEL void BOUNDS(ATT_WARPS * WARP_SIZE, 5) attn_prefill(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                         float* out, const int* pos, const int* tab, const int* bt, int n, int n_head, int n_head_kv,
                         int hd, int hdv, int window, float scale, int qw) {
    extern __shared__ u32 smem[];
    GRID_START();
    const int hw = hd / 2 + 1;
    u32* sk = smem;
    u16* sv = (u16*)(sk + WARP_SIZE * hw);
    float* sq = (float*)(sv + WARP_SIZE * hdv);
    const int h = blockIdx.x, lane = threadIdx.x % WARP_SIZE, w = threadIdx.x / WARP_SIZE;
    const int qb = qw * ATT_WARPS, t0 = blockIdx.y * qb, tend = min(t0 + qb, n);
    const int base = pos[0], tb = tab ? tab[0] : 0;
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
            const uint4 v = kb + r <= p_last ? ((const uint4*)(kc + kv_slot(bt, tb, kb + r) * kv_stride + (u64)kvh * hd))[c] : make_uint4(0, 0, 0, 0);
            u32* d = sk + r * hw + 4 * c;
            d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
        }
#pragma unroll 4
        for (int i = threadIdx.x; i < WARP_SIZE * (hdv / 8); i += blockDim.x) {
            const int r = i / (hdv / 8), c = i % (hdv / 8);
            ((uint4*)sv)[i] = kb + r <= p_last ? ((const uint4*)(vc + kv_slot(bt, tb, kb + r) * v_stride + (u64)kvh * hdv))[c] : make_uint4(0, 0, 0, 0);
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

// Most key splits of a tensor-core attention launch (ops::APM_MAX_SPLITS).
#define APM_MAX_SPLITS 256

#if defined(HAS_MMA_F16)
// attn_prefill_mma<D>: prefill attention on tensor cores (NVIDIA sm_80+; the
// launcher takes it there for hd = hdv = D of 64 or 128, attn_prefill
// elsewhere). Rows: G = 1, the n queries of Q head x = blockIdx.x; G > 1
// (packed: G = n_head / n_head_kv), the n G (query, head) pairs of KV head x,
// row r being query r / G of head x G + r % G (one token's G heads share
// an mma tile: decode, and short runs). Grid: x = Q head (G = 1) or KV head,
// y = tile of APM_Q rows (the last tile first: the rows with the most keys
// start first), z = key split s of S; block 4 warps, warp w taking the
// tile's rows 16 w .. 16 w + 15 (mma rows). The tile's keys (from its first
// row's window start to its last row) are APM_K-key tiles; split s takes
// the s-th run of ceil(tiles / S) of them (worked out on the device from
// pos, so a captured graph replays at any position; empty splits write
// empty partials). Each key tile is staged in shared memory (K and V rows, cp.async, two
// buffers: the next tile loads while this one is used; rows past the last key
// repeat the last key, masked, so nothing unwritten is ever read). Per tile:
//   S = Q K^T by mma16816, Q held as f16 fragments for the whole loop,
//     pre-scaled by scale * log2(e) so the softmax works in base 2, K read
//     through ldmatrix (two 16-dim steps a load);
//   the causal / window mask, only on the tiles where some key is hidden
//     from some row of the warp (a warp-uniform test: at long contexts
//     nearly every tile needs none), and the online softmax on S's
//     fragments (a row's running max over its 4 lanes by two shuffles;
//     2^x by ex2.approx alone; a row that has seen no key yet, its max
//     still NEG_INF like its masked scores, subtracts 0 so that they weigh
//     0, not 2^0);
//   O += P V by mma16816, P turned into f16 fragments in registers (S's
//     accumulator layout is P's operand layout) and V read through
//     ldmatrix.trans (two 8-dim column blocks a load).
// Warps whose rows see none of a tile's keys skip it. S = 1 writes out; S >
// 1 writes part row (t * n_head + h) * S + s = {max (base 2), sum,
// unnormalised out} and attn_prefill_merge_w (a warp a row, S <= WARP_SIZE) or
// attn_prefill_merge (a block a row) combines them. Dynamic shared
// memory: 4 * APM_K * (D / 2 + 4) words. Precision: Q and P are rounded to
// f16 (K/V are f16 already), sums in f32.
#define APM_Q 64
#define APM_K 64
template <int D>
static __device__ __forceinline__ void attn_prefill_mma(const float* __restrict__ q, const u16* __restrict__ kc, const u16* __restrict__ vc,
                                                        float* __restrict__ out, float* __restrict__ part, const int* pos, const int* tab,
                                                        const int* bt, int n, int n_head, int n_head_kv, int window, float scale, int S,
                                                        int G) {
    // words per staged row: 4 more than the row, so the 8 rows one fragment
    // load touches fall in distinct banks (and rows stay 16-byte aligned)
    constexpr int RW = D / 2 + 4;
    constexpr int TW = APM_K * RW;  // words per staged tile
    extern __shared__ __align__(16) u32 smem[];  // [buffer][K, V][TW]
    GRID_START();
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, split = blockIdx.z;
    const int g = lane / 4, c = lane % 4;
    const bool packed = G > 1;
    const int kvh = packed ? blockIdx.x : blockIdx.x / (n_head / n_head_kv);
    const int R = n * G;  // rows
    const int r0 = (gridDim.y - 1 - blockIdx.y) * APM_Q, rend = min(r0 + APM_Q, R);
    const int base = pos[0], tb = tab ? tab[0] : 0;
    const u64 stride = (u64)n_head_kv * D;
    // row r: query r / G of head hq(r)
    auto hq = [&](int r) { return packed ? kvh * G + r % G : (int)blockIdx.x; };
    const int ra = r0 + 16 * w + g, rb = ra + 8;  // this lane's two rows
    const int pa = base + ra / G, pb = base + rb / G;
    const int p_last = base + (rend - 1) / G;
    const int kfirst = window > 0 ? max(0, base + r0 / G + 1 - window) : 0;
    const int tiles = (p_last - kfirst) / APM_K + 1, per = (tiles + S - 1) / S;
    const int it0 = split * per, it1 = min(tiles, it0 + per);  // this split's key tiles
    // stage key tile it into buffer b: 16-byte pieces, K then V
    auto stage = [&](int b, int it) {
        u32* sk = smem + 2 * b * TW;
        const int kb = kfirst + it * APM_K;
        constexpr int PR = D / 8, RP = 4 * 32 / PR;  // pieces a row, rows a pass
        const int cc = threadIdx.x % PR;
#pragma unroll
        for (int r = threadIdx.x / PR; r < APM_K; r += RP) {
            const u64 at = kv_slot(bt, tb, min(kb + r, p_last)) * stride + (u64)kvh * D;
            cp_async16(sk + r * RW + 4 * cc, kc + at + 8 * cc);
            cp_async16(sk + TW + r * RW + 4 * cc, vc + at + 8 * cc);
        }
    };
    if (it0 < it1) stage(0, it0);
    cp_async_commit();
    const float qs = scale * 1.4426950408889634f;
    u32 qf[D / 16][4];
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++) {
#pragma unroll
        for (int e = 0; e < 4; e++) {
            const int r = e & 1 ? rb : ra, col = kk * 16 + 2 * c + (e & 2 ? 8 : 0);
            float2 v = make_float2(0.0f, 0.0f);
            if (r < R) v = *(const float2*)(q + ((u64)(r / G) * n_head + hq(r)) * D + col);
            qf[kk][e] = pack_h2(v.x * qs, v.y * qs);
        }
    }
    float o[D / 8][4];
#pragma unroll
    for (int j = 0; j < D / 8; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.0f;
    float ma = NEG_INF, mb = NEG_INF, la = 0.0f, lb = 0.0f;
    const bool rows = r0 + 16 * w < rend;  // the warp has rows to compute
    const int wfirst = base + (r0 + 16 * w) / G, wlast = base + min(r0 + 16 * w + 15, rend - 1) / G;
    for (int it = it0; it < it1; it++) {
        if (it + 1 < it1) stage((it + 1 - it0) & 1, it + 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const u32* sk = smem + 2 * ((it - it0) & 1) * TW;
        const u32* sv = sk + TW;
        const int kb = kfirst + it * APM_K;
        // keys all after the warp's last row, or all before its first row's
        // window: nothing to do
        if (rows && kb <= wlast && !(window > 0 && kb + APM_K - 1 <= wfirst - window)) {
            float s[APM_K / 8][4];
#pragma unroll
            for (int j = 0; j < APM_K / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
            // K as mma B operands, two 16-dim steps per ldmatrix.x4: lane l
            // passes row 8 j + l % 8 (key), dims 8 (l / 8) .. of the pair
#pragma unroll
            for (int j = 0; j < APM_K / 8; j++) {
#pragma unroll
                for (int kk = 0; kk < D / 16; kk += 2) {
                    u32 kr[4];
                    ldsm4(sk + (j * 8 + lane % 8) * RW + kk * 8 + (lane / 8) * 4, kr);
                    mma16816(s[j], qf[kk], kr[0], kr[1]);
                    mma16816(s[j], qf[kk + 1], kr[2], kr[3]);
                }
            }
            // the causal / window mask, only on tiles that need one (a key
            // after the warp's first row, or at or before its last row's
            // window start): a warp-uniform branch
            if (kb + APM_K - 1 > wfirst || (window > 0 && kb <= wlast - window)) {
#pragma unroll
                for (int j = 0; j < APM_K / 8; j++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        const int key = kb + j * 8 + 2 * c + (e & 1), p = e & 2 ? pb : pa;
                        if (key > p || (window > 0 && key <= p - window)) s[j][e] = NEG_INF;
                    }
                }
            }
            float mxa = NEG_INF, mxb = NEG_INF;
#pragma unroll
            for (int j = 0; j < APM_K / 8; j++) {
                mxa = fmaxf(mxa, fmaxf(s[j][0], s[j][1]));
                mxb = fmaxf(mxb, fmaxf(s[j][2], s[j][3]));
            }
            mxa = fmaxf(mxa, SHFL_XOR(mxa, 1));
            mxa = fmaxf(mxa, SHFL_XOR(mxa, 2));
            mxb = fmaxf(mxb, SHFL_XOR(mxb, 1));
            mxb = fmaxf(mxb, SHFL_XOR(mxb, 2));
            // a row with no key yet keeps max NEG_INF (finite, -3e38), as
            // its masked scores are: it subtracts 0 instead, so they weigh
            // 0, not 2^0
            const float na = fmaxf(ma, mxa), nb = fmaxf(mb, mxb);
            const float sa = na == NEG_INF ? 0.0f : na, sb = nb == NEG_INF ? 0.0f : nb;
            const float ca = ex2_approx(ma - sa), cb = ex2_approx(mb - sb);
            ma = na;
            mb = nb;
            la *= ca;
            lb *= cb;
#pragma unroll
            for (int j = 0; j < D / 8; j++) {
                o[j][0] *= ca;
                o[j][1] *= ca;
                o[j][2] *= cb;
                o[j][3] *= cb;
            }
            // P as the A operand of 16-key chunks: tile j is half j % 2 of chunk j / 2
            u32 pf[APM_K / 16][4];
#pragma unroll
            for (int j = 0; j < APM_K / 8; j++) {
                const float p0 = ex2_approx(s[j][0] - sa), p1 = ex2_approx(s[j][1] - sa);
                const float p2 = ex2_approx(s[j][2] - sb), p3 = ex2_approx(s[j][3] - sb);
                la += p0 + p1;
                lb += p2 + p3;
                pf[j / 2][(j & 1) * 2] = pack_h2(p0, p1);
                pf[j / 2][(j & 1) * 2 + 1] = pack_h2(p2, p3);
            }
            // O += P V: V as B operands, two 8-dim column blocks per
            // ldmatrix.x4.trans (lanes 16 .. 31 pass the second block's rows)
#pragma unroll
            for (int kk = 0; kk < APM_K / 16; kk++) {
#pragma unroll
                for (int j = 0; j < D / 8; j += 2) {
                    u32 vr[4];
                    ldsm_t4(sv + (kk * 16 + (lane & 15)) * RW + j * 4 + (lane / 16) * 4, vr);  // keys 16 kk .., dims 8 j .. 8 j + 15
                    mma16816(o[j], pf[kk], vr[0], vr[1]);
                    mma16816(o[j + 1], pf[kk], vr[2], vr[3]);
                }
            }
        }
        __syncthreads();  // the buffer is staged again two tiles on
    }
    la += SHFL_XOR(la, 1);
    la += SHFL_XOR(la, 2);
    lb += SHFL_XOR(lb, 1);
    lb += SHFL_XOR(lb, 2);
    // S = 1: normalised rows of out; S > 1: {max, sum, out} partial rows
    const bool whole = S == 1;
    const float ia = !whole ? 1.0f : la > 0.0f ? 1.0f / la : 0.0f, ib = !whole ? 1.0f : lb > 0.0f ? 1.0f / lb : 0.0f;
    const u64 oa = (u64)(ra / G) * n_head + hq(ra), ob = (u64)(rb / G) * n_head + hq(rb);  // (query, head)
    float* da = whole ? out + oa * D : part + (oa * S + split) * (2 + D) + 2;
    float* db = whole ? out + ob * D : part + (ob * S + split) * (2 + D) + 2;
    if (!whole && c == 0) {
        if (ra < R) { da[-2] = ma; da[-1] = la; }
        if (rb < R) { db[-2] = mb; db[-1] = lb; }
    }
#pragma unroll
    for (int j = 0; j < D / 8; j++) {
        const int col = j * 8 + 2 * c;
        if (ra < R) *(float2*)(da + col) = make_float2(o[j][0] * ia, o[j][1] * ia);
        if (rb < R) *(float2*)(db + col) = make_float2(o[j][2] * ib, o[j][3] * ib);
    }
}
// blocks of attn_prefill_mma64 a multiprocessor should hold (its register
// budget; ops::mma_attention_blocks_per_sm). attn_prefill_mma128 keeps
// its registers (two blocks).
#ifndef APM_MINB64
#define APM_MINB64 4
#endif
#define APM_MINB(D) ((D) <= 64 ? APM_MINB64 : 1)
#define ATTN_PREFILL_MMA(D)                                                                                             \
    KERNEL void __launch_bounds__(4 * 32, APM_MINB(D)) attn_prefill_mma##D(const float* q, const u16* kc, const u16* vc, float* out, \
                                                              float* part, const int* pos, const int* tab,              \
                                                              const int* bt, int n, int n_head, int n_head_kv,          \
                                                              int window, float scale, int S, int G) {                  \
        attn_prefill_mma<D>(q, kc, vc, out, part, pos, tab, bt, n, n_head, n_head_kv, window, scale, S, G);             \
    }
ATTN_PREFILL_MMA(64)
ATTN_PREFILL_MMA(128)
#endif

// attn_prefill_merge: out row r (of n * n_head, hdv <= 256 values) = Σ_s
// o_s 2^(m_s - M) / Σ_s l_s 2^(m_s - M), M = max_s m_s, from the S partial
// rows {m_s (base 2), l_s, o_s} attn_prefill_mma wrote for it (empty splits
// have m_s = NEG_INF, l_s = 0). One block of APM_MERGE threads per row: the
// weights into shared memory, then thread t sums value t % hdv over every
// g-th split from t / hdv (g = APM_MERGE / hdv groups, many splits' loads in
// flight at once), and the groups are added.
#define APM_MERGE 256
KERNEL void __launch_bounds__(APM_MERGE) attn_prefill_merge(const float* __restrict__ part, float* __restrict__ out, int rows,
                                                            int S, int hdv) {
    __shared__ float wgt[APM_MAX_SPLITS];
    __shared__ float red[32];
    __shared__ float sums[APM_MERGE];
    GRID_START();
    const int r = blockIdx.x, t = threadIdx.x;
    if (r >= rows) return;  // the whole block
    const int W = 2 + hdv;
    const float* src = part + (u64)r * S * W;
    float m = NEG_INF;
    for (int s = t; s < S; s += APM_MERGE) m = fmaxf(m, src[s * W]);
    const float M = block_max(m, red);
    float l = 0.0f;
    for (int s = t; s < S; s += APM_MERGE) {
        const float w = exp2f(src[s * W] - M);
        wgt[s] = w;
        l += w * src[s * W + 1];
    }
    const float L = block_sum(l, red);  // its barriers also publish wgt
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    const int groups = hdv <= APM_MERGE ? APM_MERGE / hdv : 1;
    for (int d0 = 0; d0 < hdv; d0 += APM_MERGE) {
        const int d = d0 + t % hdv, grp = t / hdv;
        float acc = 0.0f;
        if (grp < groups && d < hdv) {
#pragma unroll 8
            for (int s = grp; s < S; s += groups) acc += wgt[s] * src[(u64)s * W + 2 + d];
        }
        sums[t] = acc;
        __syncthreads();
        if (grp == 0 && d < hdv) {
            float v = 0.0f;
            for (int k = 0; k < groups; k++) v += sums[k * hdv + t];
            out[(u64)r * hdv + d] = v * inv;
        }
        __syncthreads();
    }
}

// attn_prefill_merge_w: the same sum for S <= WARP_SIZE splits, one warp
// per row (APM_MERGE_W rows a block): lane s holds split s's weight, and
// each lane adds its values over the splits (many rows a block: a prefill
// chunk's n * n_head rows of a few splits; attn_prefill_merge's block per
// row and its barriers were a wave of blocks per few rows).
#define APM_MERGE_W 8
KERNEL void __launch_bounds__(APM_MERGE_W * WARP_SIZE) attn_prefill_merge_w(const float* __restrict__ part, float* __restrict__ out,
                                                                            int rows, int S, int hdv) {
    GRID_START();
    const int lane = threadIdx.x % WARP_SIZE;
    const int r = blockIdx.x * APM_MERGE_W + threadIdx.x / WARP_SIZE;
    if (r >= rows) return;  // the whole warp
    const int W = 2 + hdv;
    const float* src = part + (u64)r * S * W;
    const float m = lane < S ? src[lane * W] : NEG_INF;
    const float M = warp_max(m);
    const float w = m > NEG_INF ? exp2f(m - M) : 0.0f;  // empty splits weigh 0
    const float L = warp_sum(lane < S ? w * src[lane * W + 1] : 0.0f);
    const float inv = L > 0.0f ? 1.0f / L : 0.0f;
    // every lane runs every step (the shuffles need the whole warp); lanes
    // past hdv only skip their loads and stores
    for (int d0 = 0; d0 < hdv; d0 += WARP_SIZE) {
        const int d = d0 + lane;
        // 4 splits' loads in flight a step (a fixed inner count: hipcc
        // will not unroll a shuffle loop of unknown count)
        float acc = 0.0f;
        for (int k0 = 0; k0 < S; k0 += 4) {
#pragma unroll
            for (int u = 0; u < 4; u++) {
                const int k = k0 + u;
                const float wk = SHFL(w, k % WARP_SIZE);
                acc += k < S && d < hdv ? wk * src[(u64)k * W + 2 + d] : 0.0f;
            }
        }
        if (d < hdv) out[(u64)r * hdv + d] = acc * inv;
    }
}
