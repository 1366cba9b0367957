// quant.h: dequantize one group of 32 consecutive values of a weight row, for
// every GGUF type the GPU backends compute with. CPU reference: src/quant/
// (legacy.rs, kquants.rs, nonlinear.rs, float.rs), bit-exact against gguf-py.
//
// Each type is a struct with
//   BLK   values per block, BYTES bytes per block,
//   deq(row, g, out): out[0..32) = values [32g, 32g + 32) of the row.
// Rows start at 16-byte aligned addresses (the executor lays tensors out so).
#pragma once
#include "vendor.h"

struct TF32 {
    static constexpr int BLK = 32, BYTES = 128;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const float4* p = (const float4*)(row + g * 128);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            float4 v = p[j];
            o[4 * j] = v.x; o[4 * j + 1] = v.y; o[4 * j + 2] = v.z; o[4 * j + 3] = v.w;
        }
    }
};

// 16-bit floats: f16 (BF = false) or bf16 (BF = true), two per 32-bit word.
template <bool BF>
struct T16 {
    static constexpr int BLK = 32, BYTES = 64;
    static __device__ __forceinline__ float lo(u32 w) { return BF ? __uint_as_float(w << 16) : h2f((u16)(w & 0xffff)); }
    static __device__ __forceinline__ float hi(u32 w) { return BF ? __uint_as_float(w & 0xffff0000u) : h2f((u16)(w >> 16)); }
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const uint4* p = (const uint4*)(row + g * 64);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            uint4 v = p[j];
            u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 4; k++) {
                o[8 * j + 2 * k] = lo(w[k]);
                o[8 * j + 2 * k + 1] = hi(w[k]);
            }
        }
    }
};
typedef T16<false> TF16;
typedef T16<true> TBF16;

// 16 bytes of packed nibbles -> 32 values: low nibbles first, then high.
static __device__ __forceinline__ void nibbles16(const u8* qs, int* q) {
#pragma unroll
    for (int j = 0; j < 16; j += 2) {
        u16 v = ld16(qs + j);
        q[j] = v & 0xF; q[j + 16] = (v >> 4) & 0xF;
        q[j + 1] = (v >> 8) & 0xF; q[j + 17] = v >> 12;
    }
}

struct TQ4_0 {  // d:f16, qs[16]
    static constexpr int BLK = 32, BYTES = 18;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + g * 18;
        const float d = h2f(ld16(b));
        int q[32];
        nibbles16(b + 2, q);
#pragma unroll
        for (int j = 0; j < 32; j++) o[j] = d * (float)(q[j] - 8);
    }
};

// q4_0 regrouped on the device (ops::pack_rows, for rows of whole groups of
// 8 blocks): every 8 blocks become 144 bytes, their 8 scales d (f16) and
// then their 8 x 16 qs bytes, so every load is aligned and a warp's loads
// are contiguous (a GGUF q4_0 block of 18 bytes only allows 2-byte loads).
// Same row size as q4_0; qs byte k of a block: value k (low nibble) and
// value 16 + k (high nibble), as in q4_0.
struct TQ4_0X8 {
    static constexpr int BLK = 32, BYTES = 18;
    static __device__ __forceinline__ float d(const u8* row, int g) {
        return h2f(*(const u16*)(row + (g >> 3) * 144 + 2 * (g & 7)));
    }
    static __device__ __forceinline__ const u8* qs(const u8* row, int g) { return row + (g >> 3) * 144 + 16 + 16 * (g & 7); }
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const float d = TQ4_0X8::d(row, g);
        const uint4 v = *(const uint4*)qs(row, g);
        const u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 16; k++) {
            const u32 b = (w[k >> 2] >> (8 * (k & 3))) & 0xFF;
            o[k] = d * (float)((int)(b & 0xF) - 8);
            o[k + 16] = d * (float)((int)(b >> 4) - 8);
        }
    }
};

// q5_0 regrouped on the device (ops::pack_rows, for rows of whole groups
// of 4 blocks: 128 values; the q5_0 matrices of k-quant mixes are the ones
// whose rows are not whole 256-value super-blocks, so a group of 8 would
// not fit Qwen2.5-0.5B's 896): every 4 blocks (88 bytes) become their 4
// scales d (f16), their 4 qh words, then their 4 x 16 qs bytes, so a lane's
// loads are aligned words (a GGUF q5_0 block of 22 bytes only allows 2-byte
// loads). qh bits are regrouped: bit 8j + k is the high bit of value 4k + j
// (GGUF: bit 4k + j), so (qh >> k) & 0x01010101 are the high bits of x
// word k's 4 values, one per byte. Same row size as q5_0; rows are 8-byte
// aligned (22 * 4 * (cols / 128) bytes), so qs are 8-byte, qh 4-byte aligned.
struct TQ5_0X4 {
    static constexpr int BLK = 32, BYTES = 22;
    static __device__ __forceinline__ const u8* grp(const u8* row, int g) { return row + (g >> 2) * 88; }
    static __device__ __forceinline__ float d(const u8* row, int g) { return h2f(*(const u16*)(grp(row, g) + 2 * (g & 3))); }
    static __device__ __forceinline__ u32 qh(const u8* row, int g) { return *(const u32*)(grp(row, g) + 8 + 4 * (g & 3)); }
    static __device__ __forceinline__ const u8* qs(const u8* row, int g) { return grp(row, g) + 24 + 16 * (g & 3); }
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const float d = TQ5_0X4::d(row, g);
        const u32 h = qh(row, g);
        const uint2 a = *(const uint2*)qs(row, g), b = *(const uint2*)(qs(row, g) + 8);
        const u32 w[4] = {a.x, a.y, b.x, b.y};
#pragma unroll
        for (int k = 0; k < 16; k++) {
            const u32 q = (w[k >> 2] >> (8 * (k & 3))) & 0xFF;
            const int j = 8 * (k & 3) + (k >> 2);  // value k: x word k / 4, byte k % 4
            o[k] = d * (float)((int)((q & 0xF) | (((h >> j) & 1) << 4)) - 16);
            o[k + 16] = d * (float)((int)((q >> 4) | (((h >> (j + 4)) & 1) << 4)) - 16);
        }
    }
};

struct TQ4_1 {  // d:f16, m:f16, qs[16]
    static constexpr int BLK = 32, BYTES = 20;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + g * 20;
        const float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
        int q[32];
        nibbles16(b + 4, q);
#pragma unroll
        for (int j = 0; j < 32; j++) o[j] = d * (float)q[j] + m;
    }
};

struct TQ5_0 {  // d:f16, qh:u32, qs[16]
    static constexpr int BLK = 32, BYTES = 22;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + g * 22;
        const float d = h2f(ld16(b));
        const u32 qh = (u32)ld16(b + 2) | ((u32)ld16(b + 4) << 16);
        int q[32];
        nibbles16(b + 6, q);
#pragma unroll
        for (int j = 0; j < 32; j++) o[j] = d * (float)((q[j] | (int)(((qh >> j) & 1) << 4)) - 16);
    }
};

struct TQ5_1 {  // d:f16, m:f16, qh:u32, qs[16]
    static constexpr int BLK = 32, BYTES = 24;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + g * 24;
        const float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
        const u32 qh = *(const u32*)(b + 4);
        int q[32];
        nibbles16(b + 8, q);
#pragma unroll
        for (int j = 0; j < 32; j++) o[j] = d * (float)(q[j] | (((qh >> j) & 1) << 4)) + m;
    }
};

struct TQ8_0 {  // d:f16, qs[32] int8
    static constexpr int BLK = 32, BYTES = 34;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + g * 34;
        const float d = h2f(ld16(b));
#pragma unroll
        for (int j = 0; j < 32; j += 2) {
            u16 v = ld16(b + 2 + j);
            o[j] = d * (float)(i8)(v & 0xff);
            o[j + 1] = d * (float)(i8)(v >> 8);
        }
    }
};

// q8_0 regrouped on the device (ops::pack_rows, rows of whole groups of 4
// blocks: 128 values): every 4 blocks (136 bytes) become their 4 scales d
// (f16), then their 4 x 32 qs bytes, so qs loads are aligned 8-byte words
// (a GGUF q8_0 block of 34 bytes only allows 2-byte loads). Same row size
// as q8_0; rows are 8-byte aligned.
struct TQ8_0X4 {
    static constexpr int BLK = 32, BYTES = 34;
    static __device__ __forceinline__ float d(const u8* row, int g) {
        return h2f(*(const u16*)(row + (g >> 2) * 136 + 2 * (g & 3)));
    }
    static __device__ __forceinline__ const u8* qs(const u8* row, int g) { return row + (g >> 2) * 136 + 8 + 32 * (g & 3); }
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const float d = TQ8_0X4::d(row, g);
        const uint2* q = (const uint2*)qs(row, g);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const uint2 v = q[j];
#pragma unroll
            for (int k = 0; k < 4; k++) {
                o[8 * j + k] = d * (float)(i8)((v.x >> (8 * k)) & 0xFF);
                o[8 * j + 4 + k] = d * (float)(i8)((v.y >> (8 * k)) & 0xFF);
            }
        }
    }
};

__constant__ static const i8 KV_IQ4NL[16] = {-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113};
__constant__ static const i8 KV_MXFP4[16] = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12};

struct TMXFP4 {  // e:e8m0, qs[16] (fp4 e2m1 codes, values doubled; the scale is halved)
    static constexpr int BLK = 32, BYTES = 17;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + g * 17;
        const u32 e = b[0];
        const float d = __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const u8 v = b[1 + j];
            o[j] = d * (float)KV_MXFP4[v & 0xF];
            o[j + 16] = d * (float)KV_MXFP4[v >> 4];
        }
    }
};

struct TIQ4_NL {  // d:f16, qs[16] (non-linear 4-bit codes)
    static constexpr int BLK = 32, BYTES = 18;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + g * 18;
        const float d = h2f(ld16(b));
#pragma unroll
        for (int j = 0; j < 16; j++) {
            const u8 v = b[2 + j];
            o[j] = d * (float)KV_IQ4NL[v & 0xF];
            o[j + 16] = d * (float)KV_IQ4NL[v >> 4];
        }
    }
};

// ---- k-quants: super-blocks of 256 values; group g is chunk g % 8 of block g / 8.

static __device__ __forceinline__ void scale_min_k4(int j, const u8* s, int* sc, int* m) {
    if (j < 4) {
        *sc = s[j] & 63; *m = s[j + 4] & 63;
    } else {
        *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
        *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
    }
}

struct TQ2_K {  // scales[16] (4-bit scale | 4-bit min), qs[64], d:f16, dmin:f16
    static constexpr int BLK = 256, BYTES = 84;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + (g >> 3) * 84;
        const int c = g & 7;
        const float d = h2f(ld16(b + 80)), dmin = h2f(ld16(b + 82));
        const u8* qs = b + 16 + (c >> 2) * 32;
        const int shift = (c & 3) * 2;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const u8 s = b[c * 2 + h];
            const float dl = d * (float)(s & 0xF), ml = dmin * (float)(s >> 4);
#pragma unroll
            for (int l = 0; l < 16; l++) o[h * 16 + l] = dl * (float)((qs[h * 16 + l] >> shift) & 3) - ml;
        }
    }
};

struct TQ3_K {  // hmask[32], qs[64], scales[12] (6-bit, packed), d:f16
    static constexpr int BLK = 256, BYTES = 110;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + (g >> 3) * 110;
        const int c = g & 7;
        const float d = h2f(ld16(b + 108));
        const u8* hm = b;
        const u8* qs = b + 32 + (c >> 2) * 32;
        const u8* sc = b + 96;
        const int shift = (c & 3) * 2;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int k = c * 2 + h;
            const int lo = k < 8 ? (sc[k] & 0xF) : (sc[k - 8] >> 4);
            const int hi = (sc[8 + (k & 3)] >> (2 * (k >> 2))) & 3;
            const float dl = d * (float)((lo | (hi << 4)) - 32);
#pragma unroll
            for (int l = 0; l < 16; l++) {
                const int ll = h * 16 + l;
                const int q = ((qs[ll] >> shift) & 3) - (((hm[ll] >> c) & 1) ? 0 : 4);
                o[ll] = dl * (float)q;
            }
        }
    }
};

struct TQ4_K {  // d:f16, dmin:f16, scales[12] (6-bit scale/min pairs), qs[128]
    static constexpr int BLK = 256, BYTES = 144;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + (g >> 3) * 144;
        const int c = g & 7;
        const float d = h2f(*(const u16*)b), dmin = h2f(*(const u16*)(b + 2));
        int sc, m;
        scale_min_k4(c, b + 4, &sc, &m);
        const float dl = d * (float)sc, ml = dmin * (float)m;
        const uint4* qp = (const uint4*)(b + 16 + (c >> 1) * 32);
        const int shift = (c & 1) * 4;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            uint4 v = qp[j];
            u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int k = 0; k < 4; k++)
#pragma unroll
                for (int i = 0; i < 4; i++) o[16 * j + 4 * k + i] = dl * (float)((w[k] >> (8 * i + shift)) & 0xF) - ml;
        }
    }
};

struct TQ5_K {  // d:f16, dmin:f16, scales[12], qh[32], qs[128]
    static constexpr int BLK = 256, BYTES = 176;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + (g >> 3) * 176;
        const int c = g & 7;
        const float d = h2f(*(const u16*)b), dmin = h2f(*(const u16*)(b + 2));
        int sc, m;
        scale_min_k4(c, b + 4, &sc, &m);
        const float dl = d * (float)sc, ml = dmin * (float)m;
        const u8* qh = b + 16;
        const u8* qs = b + 48 + (c >> 1) * 32;
        const int shift = (c & 1) * 4;
#pragma unroll
        for (int l = 0; l < 32; l++) {
            const int q = ((qs[l] >> shift) & 0xF) | (((qh[l] >> c) & 1) << 4);
            o[l] = dl * (float)q - ml;
        }
    }
};

struct TQ6_K {  // ql[128], qh[64], scales[16] int8, d:f16
    static constexpr int BLK = 256, BYTES = 210;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + (g >> 3) * 210;
        const int c = g & 7;
        const float d = h2f(ld16(b + 208));
        const int half = c >> 2, run = c & 3;
        const u8* ql = b + half * 64 + ((run & 1) ? 32 : 0);
        const u8* qh = b + 128 + half * 32;
        const int lshift = run < 2 ? 0 : 4;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float dl = d * (float)(i8)b[192 + c * 2 + h];
#pragma unroll
            for (int l = 0; l < 16; l++) {
                const int ll = h * 16 + l;
                const int q = (((ql[ll] >> lshift) & 0xF) | (((qh[ll] >> (2 * run)) & 3) << 4)) - 32;
                o[ll] = dl * (float)q;
            }
        }
    }
};

struct TIQ4_XS {  // d:f16, scales_h:u16, scales_l[4], qs[128]
    static constexpr int BLK = 256, BYTES = 136;
    static __device__ __forceinline__ void deq(const u8* row, int g, float* o) {
        const u8* b = row + (g >> 3) * 136;
        const int c = g & 7;
        const float d = h2f(ld16(b));
        const u16 sh = ld16(b + 2);
        const int lo = (b[4 + c / 2] >> (4 * (c & 1))) & 0xF;
        const int hi = (sh >> (2 * c)) & 3;
        const float dl = d * (float)((lo | (hi << 4)) - 32);
        const u8* qs = b + 8 + c * 16;
#pragma unroll
        for (int j = 0; j < 16; j++) {
            o[j] = dl * (float)KV_IQ4NL[qs[j] & 0xF];
            o[j + 16] = dl * (float)KV_IQ4NL[qs[j] >> 4];
        }
    }
};

// Instantiate `M(type_struct, suffix)` for every type, suffix = kernel name tail.
#define FOR_EACH_TYPE(M)                                                                    \
    M(TF32, f32) M(TF16, f16) M(TBF16, bf16) M(TQ4_0, q4_0) M(TQ4_0X8, q4_0x8) M(TQ4_1, q4_1) \
    M(TQ5_0, q5_0) M(TQ5_0X4, q5_0x4) M(TQ5_1, q5_1) M(TQ8_0, q8_0) M(TQ8_0X4, q8_0x4) M(TQ2_K, q2_k) M(TQ3_K, q3_k)                 \
    M(TQ4_K, q4_k) M(TQ5_K, q5_k) M(TQ6_K, q6_k) M(TIQ4_NL, iq4_nl) M(TIQ4_XS, iq4_xs)         \
    M(TMXFP4, mxfp4)
