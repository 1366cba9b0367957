// mmvq.cu: y = W·x for 1..8 tokens (decode). mmvq_*: integer dot products,
// for the weight types with an integer form (q4_0 q4_1 q5_0 q5_1 q8_0 q4_k
// q5_k q6_k); mmvf_*: f32 products for f16/bf16/f32 weights; the other
// types take matvec.cu. CPU reference: backend::cpu::matmul (which also
// multiplies quantized activations).
//
// x is quantized once per step by quant_act (RMSNorm optionally fused) to
// 15-bit integers per group of 32 values, v = round(x / d), d = max|x| /
// 32512, kept as two planes of signed bytes, v = 256 * hi + lo, so that
// products are byte dot products (DP4A) that stay exact: the result is as
// precise as the CPU's 16-bit activations, unlike 8-bit activations.
//
// Layout (per token t, groups g of 32 values, cols % 32 == 0):
//   xq (nt, cols / 4) int2: {hi bytes, lo bytes} of values 4k .. 4k + 3;
//   xd (nt, cols / 32) f32: d;  xs (nt, cols / 32) f32: d * sum(v);
//   xf (nt, cols) f32: x itself (normalized), for the float weight types.
// Decode reads x from the L1 cache: 2 bytes per value, against 4 for f32.
#pragma once
#include "matvec.cu"

#define MMVQ_THREADS 128
#define MMVQ_MAXT 8
#define ACT_MAX 32512.0f

// Grid (ceil(cols / 256), nt), block 256: thread i quantizes value
// 256 * blockIdx.x + i of token blockIdx.y; each 32 consecutive threads
// (lanes 0-31 or 32-63 of a wave64) form one group. nw != 0: x is first
// normalized, x * rsqrt(mean(x²) + eps) * nw.
KERNEL void __launch_bounds__(256) quant_act(const float* __restrict__ x, const float* __restrict__ nw, float eps, int cols,
                                             i8* __restrict__ xq, float* __restrict__ xd, float* __restrict__ xs,
                                             float* __restrict__ xf) {
    __shared__ float red[32];
    const int t = blockIdx.y, ng = cols >> 5;
    const float* xr = x + (u64)t * cols;
    float s = 1.0f;
    if (nw) {
        float ss = 0.0f;
        const float4* x4 = (const float4*)xr;
#pragma unroll 4
        for (int i = threadIdx.x; i < cols / 4; i += blockDim.x) {
            const float4 v = x4[i];
            ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        s = rsqrtf(block_sum(ss, red) / (float)cols + eps);
    }
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    const bool in = e < cols;  // cols % 32 == 0: a group is wholly in or out
    const float v = in ? xr[e] * s * (nw ? nw[e] : 1.0f) : 0.0f;
    float amax = fabsf(v);
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) amax = fmaxf(amax, SHFL_XOR(amax, m));
    const float d = amax / ACT_MAX;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    const int q = (int)roundf(v * id);
    int sum = q;
#pragma unroll
    for (int m = 16; m > 0; m >>= 1) sum += SHFL_XOR(sum, m);
    if (in) {
        const int hi = (q + 128) >> 8;  // floor: lo in [-128, 127], |hi| <= 127
        i8* o = xq + (u64)t * cols * 2 + (e >> 2) * 8 + (e & 3);
        o[0] = (i8)hi;
        o[4] = (i8)(q - 256 * hi);
        xf[(u64)t * cols + e] = v;
        if ((e & 31) == 0) {
            xd[(u64)t * ng + (e >> 5)] = d;
            xs[(u64)t * ng + (e >> 5)] = d * (float)sum;
        }
    }
}

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

// IP<T>: a thread's part p (0..3) of group g of a weight row: 8 of the
// group's 32 values as two words of signed (or < 128) bytes, and their
// scales. dot(xg, p, dx, sx) = the part's share of sum(w * x), where xg is
// the token's group of x (8 int2), dx its scale and sx = dx * sum(v) over
// the group: types with a minimum add a quarter of m * sx per part.
template <typename T>
struct IP;

// q4_0/q5_0/q4_1/q5_1 parts: qs bytes 4p .. 4p + 3, whose low nibbles are
// values 4p.. (x word p) and high nibbles values 16 + 4p.. (x word 4 + p).
template <>
struct IP<TQ4_0> {
    int w0, w1;
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + g * 18;
        const u32 v = ld32a2(b + 2 + 4 * p);
        w0 = sub_bytes(v & 0x0F0F0F0Fu, 0x08080808u);
        w1 = sub_bytes((v >> 4) & 0x0F0F0F0Fu, 0x08080808u);
        d = h2f(ld16a(b));
    }
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float) const {
        return d * dx * (float)dot8(w0, xg[p], w1, xg[4 + p]);
    }
};

template <>
struct IP<TQ4_1> {
    int w0, w1;
    float d, m;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + g * 20;
        const u32 v = *(const u32*)(b + 4 + 4 * p);
        w0 = (int)(v & 0x0F0F0F0Fu);
        w1 = (int)((v >> 4) & 0x0F0F0F0Fu);
        d = h2f(ld16a(b));
        m = h2f(ld16a(b + 2));
    }
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float sx) const {
        return d * dx * (float)dot8(w0, xg[p], w1, xg[4 + p]) + 0.25f * m * sx;
    }
};

template <>
struct IP<TQ5_0> {
    int w0, w1;
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + g * 22;
        const u32 qh = ld32a2(b + 2);
        const u32 v = ld32a2(b + 6 + 4 * p);
        w0 = sub_bytes((v & 0x0F0F0F0Fu) | spread4(qh >> (4 * p)), 0x10101010u);
        w1 = sub_bytes(((v >> 4) & 0x0F0F0F0Fu) | spread4(qh >> (16 + 4 * p)), 0x10101010u);
        d = h2f(ld16a(b));
    }
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float) const {
        return d * dx * (float)dot8(w0, xg[p], w1, xg[4 + p]);
    }
};

template <>
struct IP<TQ5_1> {
    int w0, w1;
    float d, m;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + g * 24;
        const u32 qh = *(const u32*)(b + 4);
        const u32 v = *(const u32*)(b + 8 + 4 * p);
        w0 = (int)((v & 0x0F0F0F0Fu) | spread4(qh >> (4 * p)));
        w1 = (int)(((v >> 4) & 0x0F0F0F0Fu) | spread4(qh >> (16 + 4 * p)));
        d = h2f(ld16a(b));
        m = h2f(ld16a(b + 2));
    }
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float sx) const {
        return d * dx * (float)dot8(w0, xg[p], w1, xg[4 + p]) + 0.25f * m * sx;
    }
};

// q8_0 and the k-quants: part p = values 8p .. 8p + 7 (x words 2p, 2p + 1).
template <>
struct IP<TQ8_0> {
    int w0, w1;
    float d;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + g * 34;
        w0 = (int)ld32a2(b + 2 + 8 * p);
        w1 = (int)ld32a2(b + 6 + 8 * p);
        d = h2f(ld16a(b));
    }
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float) const {
        return d * dx * (float)dot8(w0, xg[2 * p], w1, xg[2 * p + 1]);
    }
};

// k-quants: group g is chunk c = g % 8 of super-block g / 8.
template <>
struct IP<TQ4_K> {
    int w0, w1;
    float dl, ml;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + (g >> 3) * 144;
        const int c = g & 7, shift = (c & 1) * 4;
        const u32* q = (const u32*)(b + 16 + (c >> 1) * 32 + 8 * p);
        w0 = (int)((q[0] >> shift) & 0x0F0F0F0Fu);
        w1 = (int)((q[1] >> shift) & 0x0F0F0F0Fu);
        int sc, m;
        scale_min_k4(c, b + 4, &sc, &m);
        dl = h2f(ld16a(b)) * (float)sc;
        ml = h2f(ld16a(b + 2)) * (float)m;
    }
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float sx) const {
        return dl * dx * (float)dot8(w0, xg[2 * p], w1, xg[2 * p + 1]) - 0.25f * ml * sx;
    }
};

template <>
struct IP<TQ5_K> {
    int w0, w1;
    float dl, ml;
    __device__ __forceinline__ void load(const u8* row, int g, int p) {
        const u8* b = row + (g >> 3) * 176;
        const int c = g & 7, shift = (c & 1) * 4;
        const u32* q = (const u32*)(b + 48 + (c >> 1) * 32 + 8 * p);
        const u32* h = (const u32*)(b + 16 + 8 * p);
        w0 = (int)(((q[0] >> shift) & 0x0F0F0F0Fu) | (((h[0] >> c) & 0x01010101u) << 4));
        w1 = (int)(((q[1] >> shift) & 0x0F0F0F0Fu) | (((h[1] >> c) & 0x01010101u) << 4));
        int sc, m;
        scale_min_k4(c, b + 4, &sc, &m);
        dl = h2f(ld16a(b)) * (float)sc;
        ml = h2f(ld16a(b + 2)) * (float)m;
    }
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float sx) const {
        return dl * dx * (float)dot8(w0, xg[2 * p], w1, xg[2 * p + 1]) - 0.25f * ml * sx;
    }
};

template <>
struct IP<TQ6_K> {
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
    __device__ __forceinline__ float dot(const int2* xg, int p, float dx, float) const {
        return dl * dx * (float)dot8(w0, xg[2 * p], w1, xg[2 * p + 1]);
    }
};

// Sum the per-thread partials of R rows x NT tokens over the block and
// store rows r0 .. r0 + R - 1 (those below `rows`).
template <int R, int NT>
static __device__ __forceinline__ void rows_out(const float (&acc)[R][NT], const float (&acc2)[R][NT], float* __restrict__ y,
                                                int rows, int r0, int nt, int mode) {
    constexpr int NW = MMVQ_THREADS / WARP_SIZE;
    __shared__ float red[2 * R * NT * NW];
    const bool glu = mode >= 2;
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
#pragma unroll
    for (int j = 0; j < R; j++) {
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) {
                const float a = warp_sum(acc[j][t]);
                const float b = glu ? warp_sum(acc2[j][t]) : 0.0f;
                if (lane == 0) {
                    red[(j * NT + t) * NW + warp] = a;
                    red[((R + j) * NT + t) * NW + warp] = b;
                }
            }
        }
    }
    __syncthreads();
    const int k = threadIdx.x, j = k / NT, t = k % NT;
    if (k < R * NT && t < nt && r0 + j < rows) {
        float a = 0.0f, b = 0.0f;
#pragma unroll
        for (int w = 0; w < NW; w++) {
            a += red[(j * NT + t) * NW + w];
            b += red[((R + j) * NT + t) * NW + w];
        }
        float* o = y + (u64)t * rows + r0 + j;
        if (mode == 0) *o = a;
        else if (mode == 1) *o += a;
        else *o = gated(mode, a, b);
    }
}

// Grid x: ceil(rows / R); block: MMVQ_THREADS, which stride over the parts
// of R rows at once (R independent weight loads per step, one x load).
// NT: most tokens (a kernel for 1 token keeps fewer accumulators). W, W2:
// (rows, cols) of type T. y: (nt, rows) f32. mode as in matvec.cu: 0 y =
// W x, 1 y += W x, 2/3 gated FFN y = act(W x) * (W2 x).
template <typename T, int NT, int R>
static __device__ __forceinline__ void mmvq(const u8* __restrict__ W, const u8* __restrict__ W2, const int2* __restrict__ xq,
                                            const float* __restrict__ xd, const float* __restrict__ xs, float* __restrict__ y,
                                            int rows, int cols, int nt, int mode) {
    const int r0 = blockIdx.x * R, ng = cols >> 5, nq = cols >> 2;
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    const bool glu = mode >= 2;
    float acc[R][NT], acc2[R][NT];
#pragma unroll
    for (int j = 0; j < R; j++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[j][t] = acc2[j][t] = 0.0f;
    for (int i = threadIdx.x; i < 4 * ng; i += MMVQ_THREADS) {
        const int g = i >> 2, p = i & 3;
        IP<T> a[R], b[R];
#pragma unroll
        for (int j = 0; j < R; j++) {
            const u64 off = (u64)min(r0 + j, rows - 1) * rb;  // rows past the end repeat the last
            a[j].load(W + off, g, p);
            if (glu) b[j].load(W2 + off, g, p);
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) {
                const int2* xg = xq + (u64)t * nq + g * 8;
                const float dx = xd[t * ng + g], sx = xs[t * ng + g];
#pragma unroll
                for (int j = 0; j < R; j++) {
                    acc[j][t] += a[j].dot(xg, p, dx, sx);
                    if (glu) acc2[j][t] += b[j].dot(xg, p, dx, sx);
                }
            }
        }
    }
    rows_out<R, NT>(acc, acc2, y, rows, r0, nt, mode);
}

// Kernels: mmvq_<type> for one token (4 rows per block), mmvq_<type>_n for
// up to MMVQ_MAXT tokens (1 row per block).
#define MMVQ_KERNEL(T, s)                                                                                            \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvq_##s(const u8* W, const u8* W2, const int2* xq, const float* xd,    \
                                                         const float* xs, float* y, int rows, int cols, int nt,         \
                                                         int mode) {                                                    \
        mmvq<T, 1, 4>(W, W2, xq, xd, xs, y, rows, cols, nt, mode);                                                      \
    }                                                                                                                   \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvq_##s##_n(const u8* W, const u8* W2, const int2* xq, const float* xd, \
                                                             const float* xs, float* y, int rows, int cols, int nt,     \
                                                             int mode) {                                                \
        mmvq<T, MMVQ_MAXT, 1>(W, W2, xq, xd, xs, y, rows, cols, nt, mode);                                              \
    }
MMVQ_KERNEL(TQ4_0, q4_0)
MMVQ_KERNEL(TQ4_1, q4_1)
MMVQ_KERNEL(TQ5_0, q5_0)
MMVQ_KERNEL(TQ5_1, q5_1)
MMVQ_KERNEL(TQ8_0, q8_0)
MMVQ_KERNEL(TQ4_K, q4_k)
MMVQ_KERNEL(TQ5_K, q5_k)
MMVQ_KERNEL(TQ6_K, q6_k)

// Float weights: part i = values 8i .. 8i + 7 of the row, against xf.
template <typename T>
struct FP;
template <bool BF>
struct FP<T16<BF> > {
    static __device__ __forceinline__ void load(const u8* row, int i, float* w) {
        const uint4 v = ((const uint4*)row)[i];
        const u32 u[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; k++) {
            w[2 * k] = T16<BF>::lo(u[k]);
            w[2 * k + 1] = T16<BF>::hi(u[k]);
        }
    }
};
template <>
struct FP<TF32> {
    static __device__ __forceinline__ void load(const u8* row, int i, float* w) {
        const float4 a = ((const float4*)row)[2 * i], b = ((const float4*)row)[2 * i + 1];
        w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w;
        w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
    }
};

// As mmvq, for float weights and the f32 activations xf (nt, cols); part i
// = values 8i .. 8i + 7.
template <typename T, int NT, int R>
static __device__ __forceinline__ void mmvf(const u8* __restrict__ W, const u8* __restrict__ W2, const float* __restrict__ xf,
                                            float* __restrict__ y, int rows, int cols, int nt, int mode) {
    const int r0 = blockIdx.x * R;
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    const bool glu = mode >= 2;
    float acc[R][NT], acc2[R][NT];
#pragma unroll
    for (int j = 0; j < R; j++)
#pragma unroll
        for (int t = 0; t < NT; t++) acc[j][t] = acc2[j][t] = 0.0f;
    for (int i = threadIdx.x; i < cols / 8; i += MMVQ_THREADS) {
        float a[R][8], b[R][8];
#pragma unroll
        for (int j = 0; j < R; j++) {
            const u64 off = (u64)min(r0 + j, rows - 1) * rb;
            FP<T>::load(W + off, i, a[j]);
            if (glu) FP<T>::load(W2 + off, i, b[j]);
        }
#pragma unroll
        for (int t = 0; t < NT; t++) {
            if (t < nt) {
                const float4* x4 = (const float4*)(xf + (u64)t * cols) + 2 * i;
                const float4 x0 = x4[0], x1 = x4[1];
                const float xv[8] = {x0.x, x0.y, x0.z, x0.w, x1.x, x1.y, x1.z, x1.w};
#pragma unroll
                for (int j = 0; j < R; j++) {
                    float s = 0.0f, s2 = 0.0f;
#pragma unroll
                    for (int k = 0; k < 8; k++) {
                        s += a[j][k] * xv[k];
                        if (glu) s2 += b[j][k] * xv[k];
                    }
                    acc[j][t] += s;
                    acc2[j][t] += s2;
                }
            }
        }
    }
    rows_out<R, NT>(acc, acc2, y, rows, r0, nt, mode);
}

// mmvf_<type>: one token, 2 rows per block; mmvf_<type>_n: up to MMVQ_MAXT tokens.
#define MMVF_KERNEL(T, s)                                                                                                \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvf_##s(const u8* W, const u8* W2, const float* xf, float* y, int rows,    \
                                                         int cols, int nt, int mode) {                                    \
        mmvf<T, 1, 2>(W, W2, xf, y, rows, cols, nt, mode);                                                                \
    }                                                                                                                     \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvf_##s##_n(const u8* W, const u8* W2, const float* xf, float* y, int rows, \
                                                             int cols, int nt, int mode) {                                \
        mmvf<T, MMVQ_MAXT, 1>(W, W2, xf, y, rows, cols, nt, mode);                                                        \
    }
MMVF_KERNEL(TF32, f32)
MMVF_KERNEL(TF16, f16)
MMVF_KERNEL(TBF16, bf16)
