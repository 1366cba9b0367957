// matvec.cu: y = W·x for 1..8 tokens (decode, short batches); one warp per
// output row, each lane dequantizing one 32-value group at a time.
// CPU reference: backend::cpu::matmul (and quant::dequantize + dot in tests).
//
// Grid x: ceil(rows / MMV_ROWS); block: MMV_THREADS. Dynamic shared memory:
// nt * (cols / 32) * 33 floats (x, padded so lanes reading group g, element j
// hit distinct banks), then 2 staging chunks per warp (Stage<T>::PITCH bytes
// each; see below).
// W, W2: (rows, cols) of type T, rows contiguous. x: (nt, cols) f32.
// y: (nt, rows) f32. mode 0: y = W x; 1: y += W x (residual add);
// 2: y = silu(W x) * (W2 x); 3: y = gelu_tanh(W x) * (W2 x) (gated FFN).
// nw (optional, nt == 1 only): RMSNorm weight applied to x first (the
// block's input norm fused into its projections). cols % 4 == 0.
#pragma once
#include "quant.h"

#define MMV_THREADS 256
#define MMV_ROWS 16
#define MMV_MAXT 8

static __device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }
static __device__ __forceinline__ float gelu_tanh(float x) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608f * (x + 0.044715f * x * x * x)));
}
static __device__ __forceinline__ float gated(int mode, float g, float u) {
    return (mode == 2 ? silu(g) : gelu_tanh(g)) * u;
}

// Values [32 gx, 32 gx + 32) of x (padded layout) times group `gw` of the
// weight row at `wr`, for nt tokens.
template <typename T>
static __device__ __forceinline__ void dot_group(const u8* wr, int gw, const float* sx, int gx, int stride, int nt, float* acc) {
    float w[32];
    T::deq(wr, gw, w);
#pragma unroll
    for (int t = 0; t < MMV_MAXT; t++) {
        if (t < nt) {
            const float* xs = sx + t * stride + gx * 33;
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < 32; j++) s += w[j] * xs[j];
            acc[t] += s;
        }
    }
}

// Quantized rows have blocks of odd sizes (18, 22, 210 bytes...): a lane
// reading its own block makes every load instruction touch many cache
// sectors. So a warp first copies a chunk of WARP_SIZE groups with
// coalesced loads (16, 4, 2 or 1 bytes wide, as the row alignment allows)
// into its own shared-memory stage, then each lane dequantizes its group
// from there. Float types (16-byte multiples per group) read directly.
template <typename T>
struct Stage {
    static constexpr bool ON = T::BLK != 32 || (T::BYTES % 16) != 0;
    static constexpr int BYTES = (WARP_SIZE * 32 / T::BLK) * T::BYTES;  // one chunk of WARP_SIZE groups
    static constexpr int PITCH = (BYTES + 15) / 16 * 16;
};

static __device__ __forceinline__ void copy_chunk(u8* dst, const u8* src, int nbytes, int al, int lane) {
    if (al == 16) {
#pragma unroll 4
        for (int o = lane * 16; o < nbytes; o += WARP_SIZE * 16) *(uint4*)(dst + o) = *(const uint4*)(src + o);
    } else if (al == 4) {
#pragma unroll 4
        for (int o = lane * 4; o < nbytes; o += WARP_SIZE * 4) *(u32*)(dst + o) = *(const u32*)(src + o);
    } else if (al == 2) {
#pragma unroll 4
        for (int o = lane * 2; o < nbytes; o += WARP_SIZE * 2) *(u16*)(dst + o) = *(const u16*)(src + o);
    } else {
        for (int o = lane; o < nbytes; o += WARP_SIZE) dst[o] = src[o];
    }
}

template <typename T>
static __device__ void matvec(const u8* __restrict__ W, const u8* __restrict__ W2, const float* __restrict__ x,
                              float* __restrict__ y, int rows, int cols, int nt, int mode, const float* __restrict__ nw_,
                              float eps) {
    extern __shared__ float sx[];
    __shared__ float red[32];
    const int ng = cols / 32, stride = ng * 33;
    // x into shared memory: 16-byte loads, all of a thread's in flight at once
    float ss = 0.0f;
    const int n4 = nt * cols / 4;
#pragma unroll 4
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = ((const float4*)x)[i];
        const int e = 4 * i, t = e / cols, c = e - t * cols;
        float* d = sx + t * stride + (c >> 5) * 33 + (c & 31);
        d[0] = v.x; d[1] = v.y; d[2] = v.z; d[3] = v.w;
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    if (nw_) {
        // fused RMSNorm of the single token (nt == 1): x * rsqrt(mean(x²) + eps) * w
        const float s = rsqrtf(block_sum(ss, red) / (float)cols + eps);
        __syncthreads();
        for (int c = threadIdx.x; c < cols; c += blockDim.x) sx[(c >> 5) * 33 + (c & 31)] *= s * nw_[c];
    }
    __syncthreads();
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, nwarps = blockDim.x / WARP_SIZE;
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    const bool glu = mode >= 2;
    // stage: after x, 2 chunks per warp (the second for W2)
    u8* stage = (u8*)sx + ((nt * stride * 4 + 15) & ~15) + warp * 2 * Stage<T>::PITCH;
    const int al = (rb % 16 == 0 && Stage<T>::BYTES % 16 == 0) ? 16 : (rb % 4 == 0 && Stage<T>::BYTES % 4 == 0) ? 4 : (rb % 2 == 0 && Stage<T>::BYTES % 2 == 0) ? 2 : 1;
    const int rend = min(rows, (int)(blockIdx.x + 1) * MMV_ROWS);
    for (int r = blockIdx.x * MMV_ROWS + warp; r < rend; r += nwarps) {
        float acc[MMV_MAXT], acc2[MMV_MAXT];
#pragma unroll
        for (int t = 0; t < MMV_MAXT; t++) acc[t] = acc2[t] = 0.0f;
        const u8* wr = W + (u64)r * rb;
        const u8* wr2 = glu ? W2 + (u64)r * rb : wr;
        if (Stage<T>::ON) {
            for (int g0 = 0; g0 < ng; g0 += WARP_SIZE) {
                const u64 off = (u64)(g0 / WARP_SIZE) * Stage<T>::BYTES;
                const int nbytes = (int)min((u64)Stage<T>::BYTES, rb - off);
                copy_chunk(stage, wr + off, nbytes, al, lane);
                if (glu) copy_chunk(stage + Stage<T>::PITCH, wr2 + off, nbytes, al, lane);
                SYNC_WARP();
                if (g0 + lane < ng) {
                    dot_group<T>(stage, lane, sx, g0 + lane, stride, nt, acc);
                    if (glu) dot_group<T>(stage + Stage<T>::PITCH, lane, sx, g0 + lane, stride, nt, acc2);
                }
                SYNC_WARP();
            }
        } else {
#pragma unroll 2
            for (int g = lane; g < ng; g += WARP_SIZE) {
                dot_group<T>(wr, g, sx, g, stride, nt, acc);
                if (glu) dot_group<T>(wr2, g, sx, g, stride, nt, acc2);
            }
        }
#pragma unroll
        for (int t = 0; t < MMV_MAXT; t++) {
            if (t < nt) {
                const float a = warp_sum(acc[t]);
                const float b = glu ? warp_sum(acc2[t]) : 0.0f;
                if (lane == 0) {
                    float* o = y + (u64)t * rows + r;
                    if (mode == 0) *o = a;
                    else if (mode == 1) *o += a;
                    else *o = gated(mode, a, b);
                }
            }
        }
    }
}

#define MATVEC_KERNEL(T, s)                                                                          \
    KERNEL void __launch_bounds__(MMV_THREADS) matvec_##s(const u8* W, const u8* W2, const float* x, float* y, \
                                                          int rows, int cols, int nt, int mode, const float* nw, \
                                                          float eps) {                                       \
        GRID_START();                                                                                        \
        matvec<T>(W, W2, x, y, rows, cols, nt, mode, nw, eps);                                               \
    }
FOR_EACH_TYPE(MATVEC_KERNEL)
