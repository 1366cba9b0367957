// iquant.h: the integer forms of the weight types the decode kernels
// (mmvq.cu) multiply with DP4A, and the activation format they multiply
// against. Device code that also compiles as host C++ (FORGE_HOST_TEST), so
// tests/kernel_math.rs checks this arithmetic against the CPU dequantizer
// on any machine.
//
// Activations: per group of 32 values, d = max|x| / ACT_MAX and v =
// round(x / d), a 15-bit integer kept as two signed bytes, v = 256 * hi +
// lo (hi = floor((v + 128) / 256), |hi| <= 127, lo in [-128, 127]), so byte
// products are exact. x word k of a group holds values 4k .. 4k + 3 as
// int2 {hi bytes, lo bytes}.
#pragma once
#include "quant.h"

#define ACT_MAX 32512.0f

// v = round(x * id) (id = 1 / d, 0 for an all-zero group), |v| <= 32512.
static __device__ __forceinline__ int act_q(float x, float id) { return (int)roundf(x * id); }
static __device__ __forceinline__ void act_planes(int v, i8* hi, i8* lo) {
    const int h = (v + 128) >> 8;
    *hi = (i8)h;
    *lo = (i8)(v - 256 * h);
}

#if !defined(FORGE_HOST_TEST)
// Quantize one group of 32 values held by 32 consecutive lanes (lanes 0-31
// or 32-63 of a wave64), value e of a token's row per lane, and store it
// (when `store`; every lane of the group must call): its bytes in xq (the
// token's planes), and from its first lane d and d * sum(v) in xd/xs.
static __device__ __forceinline__ void act_store_group(float v, int e, bool store, i8* xq, float* xd, float* xs) {
    float amax = fabsf(v);
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) amax = fmaxf(amax, SHFL_XOR(amax, m));
    const float d = amax / ACT_MAX;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const int q = act_q(v, id);
    int sum = q;
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) sum += SHFL_XOR(sum, m);
    if (store) {
        i8* o = xq + (e >> 2) * 8 + (e & 3);
        act_planes(q, o, o + 4);
        if ((e & 31) == 0) {
            xd[e >> 5] = d;
            xs[e >> 5] = d * (float)sum;
        }
    }
}

// x prepared on the fly for one part of a weight row of type W (= IP<T>):
// the calling lane's 4 * W::WORDS values of group g (x words W::word(p,
// j)), v = x * s * nw (nw may be null), quantized with the group's scale,
// which the W::PARTS lanes holding the group's parts (consecutive lanes, p
// = lane % PARTS) share through shuffles: the numbers quant_act makes of v.
// In two steps, so a caller can issue the loads (act_load) before it knows
// s: act_quant then needs every lane of the warp (lanes past the row's end
// with any valid g, p).
template <typename W>
static __device__ __forceinline__ void act_load(const float* x, const float* nw, int g, int p, float4 (&a)[W::WORDS],
                                                float4 (&n)[W::WORDS]) {
#pragma unroll
    for (int j = 0; j < W::WORDS; j++) {
        const int k = g * 8 + W::word(p, j);
        a[j] = ((const float4*)x)[k];
        n[j] = nw ? ((const float4*)nw)[k] : make_float4(1.0f, 1.0f, 1.0f, 1.0f);
    }
}
template <typename W>
static __device__ __forceinline__ void act_quant(const float4 (&a)[W::WORDS], const float4 (&n)[W::WORDS], float s,
                                                 int2 (&xw)[W::WORDS], float& dx, float& sx) {
    constexpr int NW = W::WORDS;
    float v[4 * NW];
#pragma unroll
    for (int j = 0; j < NW; j++) {
        v[4 * j] = a[j].x * s * n[j].x;
        v[4 * j + 1] = a[j].y * s * n[j].y;
        v[4 * j + 2] = a[j].z * s * n[j].z;
        v[4 * j + 3] = a[j].w * s * n[j].w;
    }
    float amax = 0.0f;
#pragma unroll
    for (int k = 0; k < 4 * NW; k++) amax = fmaxf(amax, fabsf(v[k]));
#pragma unroll
    for (int m = 1; m < W::PARTS; m <<= 1) amax = fmaxf(amax, SHFL_XOR(amax, m));
    const float d = amax / ACT_MAX;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    int sum = 0;
#pragma unroll
    for (int j = 0; j < NW; j++) {
        u32 hi = 0, lo = 0;
#pragma unroll
        for (int k = 0; k < 4; k++) {
            const int q = act_q(v[4 * j + k], id);
            i8 h, l;
            act_planes(q, &h, &l);
            hi |= (u32)(u8)h << (8 * k);
            lo |= (u32)(u8)l << (8 * k);
            sum += q;
        }
        xw[j] = make_int2((int)hi, (int)lo);
    }
#pragma unroll
    for (int m = 1; m < W::PARTS; m <<= 1) sum += SHFL_XOR(sum, m);
    dx = d;
    sx = d * (float)sum;
}
#endif

// The sum over 8 values of weight bytes (w0: values of x word k0, w1: of
// word k1) times x in its two planes. |result| < 2^25: exact.
static __device__ __forceinline__ int dot8(int w0, int2 x0, int w1, int2 x1) {
    return 256 * DP4A(w0, x0.x, DP4A(w1, x1.x, 0)) + DP4A(w0, x0.y, DP4A(w1, x1.y, 0));
}

// Bytes below 128 minus o (o4 = o in every byte, o <= 128), as signed bytes,
// without borrows between bytes.
static __device__ __forceinline__ int sub_bytes(u32 v, u32 o4) {
    return (int)(((v | 0x80808080u) - o4) ^ 0x80808080u);
}

// Bits 0-3 of h to bit 4 of bytes 0-3.
static __device__ __forceinline__ u32 spread4(u32 h) {
    return ((h & 1u) << 4) | ((h & 2u) << 11) | ((h & 4u) << 18) | ((h & 8u) << 25);
}

// IP<T>: a thread's part p (0 .. PARTS - 1) of group g of a weight row:
// 32 / PARTS of the group's 32 values as WORDS words of signed (or < 128)
// bytes, and their scales. dot(xg, p, dx, sx) = the part's share of
// sum(w * x), where xg is the token's group of x (8 int2), dx its scale
// and sx = dx * sum(v) over the group: types with a minimum add m * sx /
// PARTS per part. word(p, j): the x word weight word j multiplies.
template <typename T>
struct IP;

// MMVQ_XV (1): x words w and w + 1 (w even) in one 16-byte load, where a
// type's words come in such pairs (W::PAIRED), in place of two 8-byte
// loads. A group of x is 64 bytes at a 16-byte-aligned address (quant_act's
// planes, and the __align__(16) shared copies the kernels prepare). H200,
// 7B twin, engine B = 1: +3% over 0 (docs/PERFORMANCE.md).
#ifndef MMVQ_XV
#define MMVQ_XV 1
#endif
static __device__ __forceinline__ void x_pair(const int2* xg, int w, int2& a, int2& b) {
    if (MMVQ_XV) {
        const uint4 v = *(const uint4*)(xg + w);
        a.x = (int)v.x;
        a.y = (int)v.y;
        b.x = (int)v.z;
        b.y = (int)v.w;
    } else {
        a = xg[w];
        b = xg[w + 1];
    }
}

// Four parts of two words (8 values) each, dot() from the type's dot2(word
// a, word b, dx, sx): legacy types (q4_0 q4_1 q5_0 q5_1) take x words p
// and 4 + p, the others 2p and 2p + 1.
template <typename Self, bool LEGACY>
struct IPWords {
    static constexpr int PARTS = 4, WORDS = 2;
    static __device__ __forceinline__ int wa(int p) { return LEGACY ? p : 2 * p; }
    static __device__ __forceinline__ int wb(int p) { return LEGACY ? 4 + p : 2 * p + 1; }
    static __device__ __forceinline__ int word(int p, int j) { return j == 0 ? wa(p) : wb(p); }
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float sx) const {
        if (!LEGACY) {  // words 2p and 2p + 1: one pair
            int2 a, b;
            x_pair(xg, 2 * p, a, b);
            return static_cast<const Self*>(this)->dot2(a, b, dx, sx);
        }
        return static_cast<const Self*>(this)->dot2(xg[wa(p)], xg[wb(p)], dx, sx);
    }
};

// q4_0/q5_0/q4_1/q5_1 parts: qs bytes 4p .. 4p + 3, whose low nibbles are
// values 4p.. (x word p) and high nibbles values 16 + 4p.. (x word 4 + p).
// Block: d (f16), then with MIN m (f16), with HIGH qh (4 bytes: bit 4 of
// each value), then the 16 qs bytes. Without MIN the values are centred
// (minus 8, or 16 with HIGH); with MIN they are not, and the part adds a
// quarter of m * sx. Blocks without m are only 2-byte aligned.
template <bool MIN, bool HIGH>
struct IPLegacy : IPWords<IPLegacy<MIN, HIGH>, true> {
    int w0, w1;
    float d, m;
    static __device__ __forceinline__ u32 ld32(const u8* p) { return MIN ? *(const u32*)p : ld32a2(p); }
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const int hq = MIN ? 4 : 2;  // qh (HIGH), else qs
        const u8* b = row + g * (18 + (MIN ? 2 : 0) + (HIGH ? 4 : 0));
        u32 lo = ld32(b + hq + (HIGH ? 4 : 0) + 4 * p), hi = (lo >> 4) & 0x0F0F0F0Fu;
        lo &= 0x0F0F0F0Fu;
        if (HIGH) {
            const u32 qh = ld32(b + hq);
            lo |= spread4(qh >> (4 * p));
            hi |= spread4(qh >> (16 + 4 * p));
        }
        const u32 centre = HIGH ? 0x10101010u : 0x08080808u;
        w0 = MIN ? (int)lo : sub_bytes(lo, centre);
        w1 = MIN ? (int)hi : sub_bytes(hi, centre);
        d = h2f(ld16a(b));
        m = MIN ? h2f(ld16a(b + 2)) : 0.0f;
    }
    __device__ __forceinline__ float dot2(int2 xa, int2 xb, float dx, float sx) const {
        const float v = d * dx * (float)dot8(w0, xa, w1, xb);
        return MIN ? v + 0.25f * m * sx : v;
    }
};
template <>
struct IP<TQ4_0> : IPLegacy<false, false> {};
template <>
struct IP<TQ4_1> : IPLegacy<true, false> {};
// Sum over a part's weight words w[j] times x word W::word(p, j) in both
// planes: 256 * hi + lo (the regrouped types, whose parts hold W::WORDS
// words).
template <typename W, int N>
static __device__ __forceinline__ int dot_words(const int (&w)[N], const int2* xg, int p) {
    int hi = 0, lo = 0;
    if (W::PAIRED) {
        // words j, j + 1 (j even) multiply x words word(p, j) (even) and the one after
#pragma unroll
        for (int j = 0; j + 1 < N; j += 2) {
            int2 x0, x1;
            x_pair(xg, W::word(p, j), x0, x1);
            hi = DP4A(w[j], x0.x, hi);
            lo = DP4A(w[j], x0.y, lo);
            hi = DP4A(w[j + 1], x1.x, hi);
            lo = DP4A(w[j + 1], x1.y, lo);
        }
        return 256 * hi + lo;
    }
#pragma unroll
    for (int j = 0; j < N; j++) {
        const int2 x = xg[W::word(p, j)];
        hi = DP4A(w[j], x.x, hi);
        lo = DP4A(w[j], x.y, lo);
    }
    return 256 * hi + lo;
}

// q4_0 regrouped (TQ4_0X8): part p = qs bytes [16p / PARTS, 16(p + 1) /
// PARTS) of the block, NQ words loaded at once (aligned, 4 * NQ bytes);
// qs word k's low nibbles are values 4k .. (x word k), its high ones
// 16 + 4k .. (x word 4 + k). PARTS = 2: each lane loads 8 bytes, a warp
// the quants of 16 consecutive blocks (two 144-byte groups). Measured on
// the 7B twin (H100): 2 parts 408 t/s, 1 part 390, 4 parts 379. Nibbles
// are kept in 0 .. 15 and the centre 8 comes off through sx (8 d sx over
// the group, 8 / PARTS per part, as TQ5_0X4 does), which saves the
// borrow-free subtraction on every word.
#ifndef Q4_0X8_PARTS
#define Q4_0X8_PARTS 2
#endif
template <>
struct IP<TQ4_0X8> {
    static constexpr int PARTS = Q4_0X8_PARTS, NQ = 4 / PARTS, WORDS = 2 * NQ;
    static constexpr bool PAIRED = NQ % 2 == 0;  // words p NQ + j, 4 + p NQ + j: even pairs
    // the words hold value + CENTRE; dot takes it off through sx (MQ centres
    // its words at load instead)
    static constexpr float CENTRE = 8.0f;
    static __device__ __forceinline__ int word(int p, int j) { return j < NQ ? p * NQ + j : 4 + p * NQ + (j - NQ); }
    int w[WORDS];
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* q = TQ4_0X8::qs(row, g) + 4 * NQ * p;
        u32 v[NQ];
        if (NQ == 4) {
            const uint4 t = *(const uint4*)q;
            const u32 a[4] = {t.x, t.y, t.z, t.w};
#pragma unroll
            for (int k = 0; k < NQ; k++) v[k] = a[k & 3];
        } else if (NQ == 2) {
            const uint2 t = *(const uint2*)q;
            v[0] = t.x;
            v[NQ - 1] = t.y;
        } else {
            v[0] = *(const u32*)q;
        }
#pragma unroll
        for (int k = 0; k < NQ; k++) {
            w[k] = (int)(v[k] & 0x0F0F0F0Fu);
            w[NQ + k] = (int)((v[k] >> 4) & 0x0F0F0F0Fu);
        }
        d = TQ4_0X8::d(row, g);
    }
    // |sum| <= 32 * 15 * 32512 < 2^24: exact in int and in float
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float sx) const {
        return d * (dx * (float)dot_words<IP<TQ4_0X8> >(w, xg, p) - (CENTRE / PARTS) * sx);
    }
};

template <>
struct IP<TQ5_0> : IPLegacy<false, true> {};
// q5_0 regrouped (TQ5_0X4): two parts, part p = qs bytes 8p .. 8p + 7
// (one 8-byte load; qs word k's low nibbles are x word k, its high ones
// word 4 + k) and the block's qh word (one 4-byte load) and d: 3 aligned
// loads per 16 values where the GGUF layout needs 10 2-byte loads. Values
// are kept in 0 .. 31 and the centre comes off through sx (as q4_1's
// minimum does: 16 * d * sx over the group, half per part), which saves
// the borrow-free subtraction on every word.
template <>
struct IP<TQ5_0X4> {
    static constexpr int PARTS = 2, WORDS = 4;
    static constexpr bool PAIRED = true;  // words 2p, 2p + 1 and 4 + 2p, 5 + 2p
    // the words hold value + CENTRE; dot (and MQ's minimum) take it off through sx
    static constexpr float CENTRE = 16.0f;
    static __device__ __forceinline__ int word(int p, int j) { return j < 2 ? 2 * p + j : 4 + 2 * p + (j - 2); }
    int w[WORDS];
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const uint2 t = *(const uint2*)(TQ5_0X4::qs(row, g) + 8 * p);
        const u32 h = TQ5_0X4::qh(row, g), v[2] = {t.x, t.y};
#pragma unroll
        for (int k = 0; k < 2; k++) {
            // x word 2p + k: its high bits are bits 2p + k of h's bytes
            w[k] = (int)((v[k] & 0x0F0F0F0Fu) | (((h >> (2 * p + k)) << 4) & 0x10101010u));
            w[2 + k] = (int)(((v[k] >> 4) & 0x0F0F0F0Fu) | (((h >> (4 + 2 * p + k)) << 4) & 0x10101010u));
        }
        d = TQ5_0X4::d(row, g);
    }
    // |sum| <= 16 * 31 * 32512 < 2^24: exact in int and in float
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float sx) const {
        return d * (dx * (float)dot_words<IP<TQ5_0X4> >(w, xg, p) - (CENTRE / PARTS) * sx);
    }
};
template <>
struct IP<TQ5_1> : IPLegacy<true, true> {};

// q8_0 and the k-quants: part p = values 8p .. 8p + 7 (x words 2p, 2p + 1).
template <>
struct IP<TQ8_0> : IPWords<IP<TQ8_0>, false> {
    int w0, w1;
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + g * 34;
        w0 = (int)ld32a2(b + 2 + 8 * p);
        w1 = (int)ld32a2(b + 6 + 8 * p);
        d = h2f(ld16a(b));
    }
    __device__ __forceinline__ float dot2(int2 xa, int2 xb, float dx, float) const {
        return d * dx * (float)dot8(w0, xa, w1, xb);
    }
};

// q8_0 regrouped (TQ8_0X4): part p's 8 values in one aligned 8-byte load.
template <>
struct IP<TQ8_0X4> : IPWords<IP<TQ8_0X4>, false> {
    int w0, w1;
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const uint2 v = *(const uint2*)(TQ8_0X4::qs(row, g) + 8 * p);
        w0 = (int)v.x;
        w1 = (int)v.y;
        d = TQ8_0X4::d(row, g);
    }
    __device__ __forceinline__ float dot2(int2 xa, int2 xb, float dx, float) const {
        return d * dx * (float)dot8(w0, xa, w1, xb);
    }
};

// k-quants: group g is chunk c = g % 8 of super-block g / 8.
// q4_k/q5_k: d, dmin (f16), 12 bytes of 6-bit scales and minimums, with
// HIGH (q5_k) 32 bytes holding bit 4 of each value (bit c of each byte for
// chunk c), then 128 qs bytes (chunk pair c / 2, low nibbles chunk c even).
template <bool HIGH>
struct IPK45 : IPWords<IPK45<HIGH>, false> {
    int w0, w1;
    float dl, ml;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + (g >> 3) * (HIGH ? 176 : 144);
        const int c = g & 7, shift = (c & 1) * 4;
        const u32* q = (const u32*)(b + (HIGH ? 48 : 16) + (c >> 1) * 32 + 8 * p);
        u32 a0 = (q[0] >> shift) & 0x0F0F0F0Fu, a1 = (q[1] >> shift) & 0x0F0F0F0Fu;
        if (HIGH) {
            const u32* h = (const u32*)(b + 16 + 8 * p);
            a0 |= ((h[0] >> c) & 0x01010101u) << 4;
            a1 |= ((h[1] >> c) & 0x01010101u) << 4;
        }
        w0 = (int)a0;
        w1 = (int)a1;
        int sc, m;
        scale_min_k4(c, b + 4, &sc, &m);
        dl = h2f(ld16a(b)) * (float)sc;
        ml = h2f(ld16a(b + 2)) * (float)m;
    }
    __device__ __forceinline__ float dot2(int2 xa, int2 xb, float dx, float sx) const {
        return dl * dx * (float)dot8(w0, xa, w1, xb) - 0.25f * ml * sx;
    }
};
template <>
struct IP<TQ4_K> : IPK45<false> {};
template <>
struct IP<TQ5_K> : IPK45<true> {};

template <>
struct IP<TQ6_K> : IPWords<IP<TQ6_K>, false> {
    int w0, w1;
    float dl;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + (g >> 3) * 210;  // 210-byte blocks: 2-byte aligned only
        const int c = g & 7, half = c >> 2, run = c & 3;
        const u8* ql = b + half * 64 + (run & 1) * 32 + 8 * p;
        const u8* qh = b + 128 + half * 32 + 8 * p;
        const int ls = run < 2 ? 0 : 4, hs = 2 * run;
        w0 = sub_bytes(((ld32a2(ql) >> ls) & 0x0F0F0F0Fu) | (((ld32a2(qh) >> hs) & 0x03030303u) << 4), 0x20202020u);
        w1 = sub_bytes(((ld32a2(ql + 4) >> ls) & 0x0F0F0F0Fu) | (((ld32a2(qh + 4) >> hs) & 0x03030303u) << 4), 0x20202020u);
        dl = h2f(ld16a(b + 208)) * (float)(i8)b[192 + c * 2 + (p >> 1)];
    }
    __device__ __forceinline__ float dot2(int2 xa, int2 xb, float dx, float) const {
        return dl * dx * (float)dot8(w0, xa, w1, xb);
    }
};

