// mmvq.cu: y = W·x for 1..8 tokens (decode). mmvq_*: integer dot products,
// for the weight types with an integer form (q4_0 q4_1 q5_0 q5_1 q8_0 q4_k
// q5_k q6_k); mmvf_*: f32 products for f16/bf16/f32 weights; the other
// types take matvec.cu. CPU reference: backend::cpu::matmul (which also
// multiplies quantized activations).
//
// x is prepared once per input by quant_act (RMSNorm optionally fused;
// attention prepares its own output, and the _wx, _x and pair kernels
// prepare x themselves): 15-bit integers per group of 32 values in two planes of
// signed bytes (format and the weight types' integer forms in iquant.h), so
// products are exact byte dot products (DP4A), as precise as the CPU's
// 16-bit activations, unlike 8-bit activations.
//
// Layout (per token t, groups g of 32 values, cols % 32 == 0):
//   xq (nt, cols / 4) int2: {hi bytes, lo bytes} of values 4k .. 4k + 3;
//   xd (nt, cols / 32) f32: d;  xs (nt, cols / 32) f32: d * sum(v);
//   xf (nt, cols) f32: x itself (normalized), for the float weight types.
// Decode reads x from the L1 cache: 2 bytes per value, against 4 for f32.
#pragma once
#include "iquant.h"
#include "matvec.cu"

#define MMVQ_THREADS 128
#define MMVQ_MAXT 8

// Grid (ceil(cols / 256), nt), block 256: thread i quantizes value
// 256 * blockIdx.x + i of token blockIdx.y; each 32 consecutive threads
// (lanes 0-31 or 32-63 of a wave64) form one group. nw != 0: x is first
// normalized, x * rsqrt(mean(x²) + eps) * nw.
// gm != 0: the group-major layout of mmq.cu (tokens nt = gridDim.y): group
// g of token t at word (g * nt + t) * 8 of xq, scales at g * nt + t.
KERNEL void __launch_bounds__(256) quant_act(const float* __restrict__ x, const float* __restrict__ nw, float eps, int cols,
                                             i8* __restrict__ xq, float* __restrict__ xd, float* __restrict__ xs,
                                             float* __restrict__ xf, int gm) {
    __shared__ float red[32];
    const int t = blockIdx.y, ng = cols >> 5, nt = gridDim.y;
    const int e = blockIdx.x * blockDim.x + threadIdx.x;
    const bool in = e < cols;  // cols % 32 == 0: a group is wholly in or out
    const float we = in && nw ? nw[e] : 1.0f;  // a weight: no kernel writes it (GRID_START)
    GRID_START();
    const float* xr = x + (u64)t * cols;
    const float xe = in ? xr[e] : 0.0f;  // issued with the norm's loads below, not after its sum
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
    const float v = xe * s * we;
    if (gm) {
        // act_store_group puts group g at word 8 g and scale g of its bases
        const u64 k = (u64)(e >> 5) * (nt - 1) + t;
        act_store_group(v, e, in, xq + k * 64, xd + k, xs + k);
    } else {
        act_store_group(v, e, in, xq + (u64)t * cols * 2, xd + (u64)t * ng, xs + (u64)t * ng);
    }
    if (in) xf[(u64)t * cols + e] = v;
}

// Weights depend on no kernel: fetch the block's rows into L2 while the
// kernel before finishes (see GRID_START), 32 bytes per prefetch.
#ifndef MMVQ_PREFETCH
#define MMVQ_PREFETCH 1
#endif
static __device__ __forceinline__ void prefetch_rows(const u8* W, const u8* W2, int r0, int R, int rows, u64 rb) {
    if (!MMVQ_PREFETCH) return;
    const u64 n = (u64)(min(r0 + R, rows) - r0) * rb, o0 = (u64)r0 * rb;
    for (u64 o = threadIdx.x * 32; o < n; o += blockDim.x * 32) {
        PREFETCH_L2(W + o0 + o);
        if (W2) PREFETCH_L2(W2 + o0 + o);
    }
}

// Most values of x the long-row FX products prepare in shared memory.
#ifndef MMVQ_X_MAXCOLS
#define MMVQ_X_MAXCOLS 8192
#endif
// Threads of a long-row FX block (_x; ops::X_THREADS): twice the others',
// since each of these few blocks (Qwen2.5-0.5B's down: 224 of 4 rows)
// prepares a long x and then strides over long rows, latency a block's
// own threads must hide.
#define MMVQ_X_THREADS 256
// float4 of x per thread whose loads block_prep_x issues at once (1: one
// round of parts at a time).
#ifndef MMVQ_PREP_BATCH
#define MMVQ_PREP_BATCH 8
#endif

// block_prep_x's loads of B rounds of TH parts from part i0 on (this
// thread's part of each; rounds past the row's np parts skipped).
template <typename T, int TH, int B>
static __device__ __forceinline__ void prep_load_batch(const float* __restrict__ x, const float* __restrict__ nw, int np, int i0,
                                                       float4 (&a)[B][IP<T>::WORDS], float4 (&n)[B][IP<T>::WORDS]) {
    constexpr int P = IP<T>::PARTS;
#pragma unroll
    for (int b = 0; b < B; b++) {
        if (i0 + b * TH < np) {
            const int ic = min(i0 + b * TH + (int)threadIdx.x, np - 1);
            act_load<IP<T> >(x, nw, ic / P, ic % P, a[b], n[b]);
        }
    }
}

// The block prepares one token's x (cols values, f32; nw != 0:
// RMS-normalized, x * s * nw) into shared memory in quant_act's format,
// through weight type T's parts (act_load / act_quant): sq (cols / 4 int2),
// sd and ss (cols / 32). The numbers are quant_act's, whatever T is (s up
// to the order of its sum of squares). The first batch's loads are issued
// before anything waits on them; when its first round covers the whole row
// (short rows) s comes from a block sum of those values, so the block reads
// x from L2 once (each warp reading all of x for s tripled the L2 traffic
// of a 896-wide gated pair, whose 1,216 blocks each prepare x). Every
// thread of the block must call.
template <typename T, int TH = MMVQ_THREADS>
static __device__ __forceinline__ void block_prep_x(const float* __restrict__ x, const float* __restrict__ nw, float eps, int cols,
                                                    int2* sq, float* sd, float* ss) {
    constexpr int P = IP<T>::PARTS, NW = IP<T>::WORDS;
    // B rounds of TH (the block's threads) parts have their loads issued
    // together (a batch: MMVQ_PREP_BATCH float4 of x, and as many of nw, per
    // thread); rounds past the row's end are skipped block-uniformly, so
    // short rows pay for one
    constexpr int B = MMVQ_PREP_BATCH / NW > 0 ? MMVQ_PREP_BATCH / NW : 1;
    const int lane = threadIdx.x % WARP_SIZE, np = P * (cols >> 5);
    float4 a[B][NW], n[B][NW];
    prep_load_batch<T, TH>(x, nw, np, 0, a, n);
    float s = 1.0f;
    if (nw && np <= TH) {
        // every value is in one thread's first-round part
        __shared__ float red[32];
        float sum = 0.0f;
        if ((int)threadIdx.x < np) {
#pragma unroll
            for (int j = 0; j < NW; j++) sum += a[0][j].x * a[0][j].x + a[0][j].y * a[0][j].y + a[0][j].z * a[0][j].z + a[0][j].w * a[0][j].w;
        }
        s = rsqrtf(block_sum(sum, red) / (float)cols + eps);
    } else if (nw) {
        float sum = 0.0f;
        for (int i = lane; i < cols / 4; i += WARP_SIZE) {
            const float4 v = ((const float4*)x)[i];
            sum += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        s = rsqrtf(warp_sum(sum) / (float)cols + eps);
    }
    // every thread the same rounds: act_quant shuffles
    for (int i0 = 0; i0 < np; i0 += B * TH) {
        if (i0 > 0) prep_load_batch<T, TH>(x, nw, np, i0, a, n);
#pragma unroll
        for (int b = 0; b < B; b++) {
            const int i = i0 + b * TH + threadIdx.x, ic = min(i, np - 1), g = ic / P, p = ic % P;
            if (i0 + b * TH >= np) break;  // block-uniform
            int2 xw[NW];
            float dx, sx;
            act_quant<IP<T> >(a[b], n[b], s, xw, dx, sx);
            if (i < np) {
#pragma unroll
                for (int j = 0; j < NW; j++) sq[g * 8 + IP<T>::word(p, j)] = xw[j];
                if (p == 0) {
                    sd[g] = dx;
                    ss[g] = sx;
                }
            }
        }
    }
    __syncthreads();
}

// Sum the per-thread partials of R rows x NT tokens over the block and
// store rows r0 .. r0 + R - 1 (those below `rows`).
template <int R, int NT, int TH = MMVQ_THREADS>
static __device__ __forceinline__ void rows_out(const float (&acc)[R][NT], const float (&acc2)[R][NT], float* __restrict__ y,
                                                int rows, int r0, int nt, int mode) {
    constexpr int NW = TH / WARP_SIZE;
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

// Grid x: ceil(rows / R); block: TH threads, which stride over the parts
// of R rows at once, U parts of 8 values per thread per step (UP = U *
// PARTS / 4 parts of the type's own size): all UP * R weight loads of a
// step are issued before the first product, so a thread waits on memory
// once per step, not once per part (one step covers 1024 U values).
// NT: most tokens (a kernel for 1 token keeps fewer
// accumulators). W, W2: (rows, cols) of type T. y: (nt, rows) f32. mode as
// in matvec.cu: 0 y = W x, 1 y += W x, 2/3 gated FFN y = act(W x) * (W2 x).
// FX (one token): x comes as f32 and the block prepares it itself into
// shared memory (block_prep_x, no norm), in place of a quant_act launch.
template <typename T, int NT, int R, int U, bool GLU, bool FX = false, int TH = MMVQ_THREADS>
static __device__ __forceinline__ void mmvq(const u8* __restrict__ W, const u8* __restrict__ W2, const int2* __restrict__ xq,
                                            const float* __restrict__ xd, const float* __restrict__ xs, float* __restrict__ y,
                                            int rows, int cols, int nt, int mode, const float* __restrict__ x = 0) {
    constexpr int P = IP<T>::PARTS, UP = U * P / 4 > 0 ? U * P / 4 : 1;  // a step: U * 128 groups of 8 values
    const int r0 = blockIdx.x * R, ng = cols >> 5, nq = cols >> 2, np = P * ng;
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    prefetch_rows(W, GLU ? W2 : 0, r0, R, rows, rb);
    GRID_START();
    if (FX) {
        __shared__ __align__(16) int2 sq[FX ? MMVQ_X_MAXCOLS / 4 : 1];
        __shared__ float sd[FX ? MMVQ_X_MAXCOLS / 32 : 1], ssum[FX ? MMVQ_X_MAXCOLS / 32 : 1];
        block_prep_x<T, TH>(x, 0, 0.0f, cols, sq, sd, ssum);
        xq = sq;
        xd = sd;
        xs = ssum;
    }
    float acc[R][NT] = {}, acc2[R][NT] = {};
    for (int i0 = threadIdx.x; i0 < np; i0 += UP * TH) {
        IP<T> a[UP][R], b[GLU ? UP : 1][R];
#pragma unroll
        for (int u = 0; u < UP; u++) {
            // parts past the row's end load the last part again: no branch
            // between the loads, so all are in flight at once (a branch here
            // made each wait for the one before); their products are skipped
            const int i = min(i0 + u * TH, np - 1), g = i / P, p = i % P;
#pragma unroll
            for (int j = 0; j < R; j++) {
                const u64 off = (u64)min(r0 + j, rows - 1) * rb;  // rows past the end repeat the last
                a[u][j].load(W + off, g, p);
                if (GLU) b[GLU ? u : 0][j].load(W2 + off, g, p);
            }
        }
#pragma unroll
        for (int u = 0; u < UP; u++) {
            const int i = i0 + u * TH, g = i / P, p = i % P;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                if (t < nt && i < np) {
                    const int2* xg = xq + (u64)t * nq + g * 8;
                    const float dx = xd[t * ng + g], sx = xs[t * ng + g];
#pragma unroll
                    for (int j = 0; j < R; j++) {
                        acc[j][t] += a[u][j].dot(xg, p, dx, sx);
                        if (GLU) acc2[j][t] += b[GLU ? u : 0][j].dot(xg, p, dx, sx);
                    }
                }
            }
        }
    }
    rows_out<R, NT, TH>(acc, acc2, y, rows, r0, nt, mode);
}

// One token, one row per warp (rows of fewer than 2048 values): warp w of
// block b takes row b * NW + w, its lanes stride over the row's parts U at
// a time, and a warp sum finishes it: no idle threads on short rows (896
// values = 112 parts: 4 per lane).
// FX: x comes as f32 (x, and nw != 0: RMS-normalized, x * s * nw) and the
// block prepares it itself into shared memory (block_prep_x), in place of a
// quant_act launch.
#define MMVQ_WX_MAXCOLS 2048
// RW rows per warp (rows row0 .. row0 + RW - 1): their loads issued
// together, and a block's preparation of x shared by more rows.
template <typename T, int U, bool GLU, int RW = 1>
static __device__ __forceinline__ void warp_row(const u8* __restrict__ W, const u8* __restrict__ W2, int row0, int rows, int cols,
                                                const int2* __restrict__ xq, const float* __restrict__ xd,
                                                const float* __restrict__ xs, float* __restrict__ y, int mode) {
    constexpr int P = IP<T>::PARTS, UP = U * P / 4 > 0 ? U * P / 4 : 1;
    if (row0 >= rows) return;  // whole warps
    const int lane = threadIdx.x % WARP_SIZE, np = P * (cols >> 5);
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    float acc[RW] = {}, acc2[RW] = {};
    for (int i0 = lane; i0 < np; i0 += UP * WARP_SIZE) {
        IP<T> a[UP][RW], b[GLU ? UP : 1][RW];
#pragma unroll
        for (int u = 0; u < UP; u++) {  // clamped, no branch: all loads in flight at once
            const int i = min(i0 + u * WARP_SIZE, np - 1);
#pragma unroll
            for (int r = 0; r < RW; r++) {
                const u64 off = (u64)min(row0 + r, rows - 1) * rb;
                a[u][r].load(W + off, i / P, i % P);
                if (GLU) b[GLU ? u : 0][r].load(W2 + off, i / P, i % P);
            }
        }
#pragma unroll
        for (int u = 0; u < UP; u++) {
            const int i = i0 + u * WARP_SIZE, g = i / P, p = i % P;
            if (i < np) {
                const float dx = xd[g], sx = xs[g];
#pragma unroll
                for (int r = 0; r < RW; r++) {
                    acc[r] += a[u][r].dot(xq + g * 8, p, dx, sx);
                    if (GLU) acc2[r] += b[GLU ? u : 0][r].dot(xq + g * 8, p, dx, sx);
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RW; r++) {
        const float a = warp_sum(acc[r]), b = GLU ? warp_sum(acc2[r]) : 0.0f;
        if (lane == 0 && row0 + r < rows) {
            float* o = y + row0 + r;
            if (mode == 0) *o = a;
            else if (mode == 1) *o += a;
            else *o = gated(mode, a, b);
        }
    }
}

template <typename T, int U, bool GLU, bool FX, int RW = 1>
static __device__ __forceinline__ void mmvq_warp(const u8* __restrict__ W, const u8* __restrict__ W2, const int2* __restrict__ xq,
                                                 const float* __restrict__ xd, const float* __restrict__ xs,
                                                 const float* __restrict__ x, const float* __restrict__ nw, float eps,
                                                 float* __restrict__ y, int rows, int cols, int mode) {
    constexpr int NW = MMVQ_THREADS / WARP_SIZE;
    __shared__ __align__(16) int2 sq[FX ? MMVQ_WX_MAXCOLS / 4 : 1];
    __shared__ float sd[FX ? MMVQ_WX_MAXCOLS / 32 : 1], ssum[FX ? MMVQ_WX_MAXCOLS / 32 : 1];
    prefetch_rows(W, GLU ? W2 : 0, blockIdx.x * NW * RW, NW * RW, rows, (u64)(cols / T::BLK) * T::BYTES);
    GRID_START();
    if (FX) {
        block_prep_x<T>(x, nw, eps, cols, sq, sd, ssum);
        xq = sq;
        xd = sd;
        xs = ssum;
    }
    warp_row<T, U, GLU, RW>(W, W2, (blockIdx.x * NW + threadIdx.x / WARP_SIZE) * RW, rows, cols, xq, xd, xs, y, mode);
}

// Two products of one x in one launch (one token, rows of fewer than 2048
// values, x prepared by the block as in _wx, y = W x): blocks below
// ceil(ra / NW) take rows of Wa (type TA) into ya, the others rows of Wb
// (TB) into yb. A layer's Q|K and V when their types differ (Qwen2.5 Q4_K_M:
// q5_0 and q8_0), one launch less. x's prepared form does not depend on the
// weight type, so TA's part layout prepares it for both.
template <typename TA, typename TB>
static __device__ __forceinline__ void mmvq_pair(const u8* __restrict__ Wa, const u8* __restrict__ Wb, const float* __restrict__ x,
                                                 const float* __restrict__ nw, float eps, float* __restrict__ ya,
                                                 float* __restrict__ yb, int ra, int rb, int cols) {
    constexpr int NW = MMVQ_THREADS / WARP_SIZE;
    __shared__ __align__(16) int2 sq[MMVQ_WX_MAXCOLS / 4];
    __shared__ float sd[MMVQ_WX_MAXCOLS / 32], ssum[MMVQ_WX_MAXCOLS / 32];
    const int nba = (ra + NW - 1) / NW;
    const bool second = blockIdx.x >= nba;
    const int r0 = (second ? blockIdx.x - nba : blockIdx.x) * NW;
    if (second) prefetch_rows(Wb, 0, r0, NW, rb, (u64)(cols / TB::BLK) * TB::BYTES);
    else prefetch_rows(Wa, 0, r0, NW, ra, (u64)(cols / TA::BLK) * TA::BYTES);
    GRID_START();
    block_prep_x<TA>(x, nw, eps, cols, sq, sd, ssum);
    const int row = r0 + threadIdx.x / WARP_SIZE;
    if (second) warp_row<TB, 4, false>(Wb, 0, row, rb, cols, sq, sd, ssum, yb, 0);
    else warp_row<TA, 4, false>(Wa, 0, row, ra, cols, sq, sd, ssum, ya, 0);
}

// Kernels (the launcher picks by token count, mode and width): for one
// token, mmvq_<type> (4 rows per block) and mmvq_<type>_glu (gated pair, 2
// rows), and their _w forms (one row per warp) for rows of fewer than 2048
// values, and _wx forms of those that take x as f32 (RMSNorm fused) with no
// quant_act before (_glu_wx2: two rows per warp, for pairs of many rows);
// mmvq_<type>_x: the 4-row form taking x as f32 (no norm, rows of at most
// MMVQ_X_MAXCOLS values, MMVQ_X_THREADS threads); mmvq_<type>_n: up to
// MMVQ_MAXT tokens, one row per block, any mode.
// Rows per block of mmvq_<type> and of mmvq_<type>_glu, and parts of 8
// values per thread per step of both (the launcher reads the rows through
// ops::kernel_define: experiments set them with FORGE_NVRTC_OPTS). Step 2
// (40 registers, not 56) ties step 4 on one-token steps from an empty
// context and gains 2% on the 7B twin's engine steps at 128-255 keys
// (docs/PERFORMANCE.md, thirteenth session).
#ifndef MMVQ_ROWS
#define MMVQ_ROWS 4
#endif
#ifndef MMVQ_GLU_ROWS
#define MMVQ_GLU_ROWS 2
#endif
#ifndef MMVQ_STEP
#define MMVQ_STEP 2
#endif
#define MMVQ_ONE(name, T, R, U, GLU)                                                                                  \
    KERNEL void __launch_bounds__(MMVQ_THREADS) name(const u8* W, const u8* W2, const int2* xq, const float* xd,        \
                                                     const float* xs, float* y, int rows, int cols, int nt, int mode) { \
        mmvq<T, 1, R, U, GLU>(W, W2, xq, xd, xs, y, rows, cols, nt, mode);                                              \
    }
#define MMVQ_KERNEL(T, s)                                                                                            \
    MMVQ_ONE(mmvq_##s, T, MMVQ_ROWS, MMVQ_STEP, false)                                                                  \
    MMVQ_ONE(mmvq_##s##_glu, T, MMVQ_GLU_ROWS, MMVQ_STEP, true)                                                         \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvq_##s##_w(const u8* W, const u8* W2, const int2* xq, const float* xd, \
                                                             const float* xs, float* y, int rows, int cols, int nt,     \
                                                             int mode) {                                                \
        mmvq_warp<T, 4, false, false>(W, W2, xq, xd, xs, 0, 0, 0.0f, y, rows, cols, mode);                              \
    }                                                                                                                   \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvq_##s##_glu_w(const u8* W, const u8* W2, const int2* xq,             \
                                                                 const float* xd, const float* xs, float* y, int rows,  \
                                                                 int cols, int nt, int mode) {                          \
        mmvq_warp<T, 4, true, false>(W, W2, xq, xd, xs, 0, 0, 0.0f, y, rows, cols, mode);                               \
    }                                                                                                                   \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvq_##s##_wx(const u8* W, const u8* W2, const float* x,                \
                                                              const float* nw, float eps, float* y, int rows, int cols, \
                                                              int mode) {                                               \
        mmvq_warp<T, 4, false, true>(W, W2, 0, 0, 0, x, nw, eps, y, rows, cols, mode);                                  \
    }                                                                                                                   \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvq_##s##_glu_wx(const u8* W, const u8* W2, const float* x,            \
                                                                  const float* nw, float eps, float* y, int rows,       \
                                                                  int cols, int mode) {                                 \
        mmvq_warp<T, 4, true, true>(W, W2, 0, 0, 0, x, nw, eps, y, rows, cols, mode);                                   \
    }                                                                                                                   \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvq_##s##_glu_wx2(const u8* W, const u8* W2, const float* x,           \
                                                                   const float* nw, float eps, float* y, int rows,      \
                                                                   int cols, int mode) {                                \
        mmvq_warp<T, 4, true, true, 2>(W, W2, 0, 0, 0, x, nw, eps, y, rows, cols, mode);                                \
    }                                                                                                                   \
    KERNEL void __launch_bounds__(MMVQ_X_THREADS) mmvq_##s##_x(const u8* W, const float* x, float* y, int rows, int cols,  \
                                                               int mode) {                                              \
        mmvq<T, 1, 4, 4, false, true, MMVQ_X_THREADS>(W, 0, 0, 0, 0, y, rows, cols, 1, mode, x);                        \
    }                                                                                                                   \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvq_##s##_n(const u8* W, const u8* W2, const int2* xq, const float* xd, \
                                                             const float* xs, float* y, int rows, int cols, int nt,     \
                                                             int mode) {                                                \
        if (mode >= 2) mmvq<T, MMVQ_MAXT, 1, 2, true>(W, W2, xq, xd, xs, y, rows, cols, nt, mode);                      \
        else mmvq<T, MMVQ_MAXT, 1, 2, false>(W, W2, xq, xd, xs, y, rows, cols, nt, mode);                               \
    }
MMVQ_KERNEL(TQ4_0, q4_0)
MMVQ_KERNEL(TQ4_0X8, q4_0x8)
MMVQ_KERNEL(TQ4_1, q4_1)
MMVQ_KERNEL(TQ5_0, q5_0)
MMVQ_KERNEL(TQ5_0X4, q5_0x4)
MMVQ_KERNEL(TQ5_1, q5_1)
MMVQ_KERNEL(TQ8_0, q8_0)
MMVQ_KERNEL(TQ8_0X4, q8_0x4)
MMVQ_KERNEL(TQ4_K, q4_k)
MMVQ_KERNEL(TQ5_K, q5_k)
MMVQ_KERNEL(TQ6_K, q6_k)

// mmvq_pair_<a>_<b>: the type pairs of Q|K and V that the common k-quant
// mixes give (llama.cpp's Q4_K_M / Q5_K_M: attn_v one step up from
// attn_q/attn_k, and q5_0 / q8_0 where the rows are not whole 256-value
// super-blocks). The launcher's list: ops::PAIRS.
#define MMVQ_PAIR(TA, a, TB, b)                                                                                     \
    KERNEL void __launch_bounds__(MMVQ_THREADS) mmvq_pair_##a##_##b(const u8* Wa, const u8* Wb, const float* x,     \
                                                                    const float* nw, float eps, float* ya, float* yb, \
                                                                    int ra, int rb, int cols) {                       \
        mmvq_pair<TA, TB>(Wa, Wb, x, nw, eps, ya, yb, ra, rb, cols);                                                  \
    }
MMVQ_PAIR(TQ5_0, q5_0, TQ8_0, q8_0)
MMVQ_PAIR(TQ5_0X4, q5_0x4, TQ8_0X4, q8_0x4)
MMVQ_PAIR(TQ4_K, q4_k, TQ6_K, q6_k)
MMVQ_PAIR(TQ5_K, q5_k, TQ6_K, q6_k)
MMVQ_PAIR(TQ4_K, q4_k, TQ5_K, q5_k)

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
    prefetch_rows(W, glu ? W2 : 0, r0, R, rows, rb);
    GRID_START();
    float acc[R][NT] = {}, acc2[R][NT] = {};
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
