// matvec.cu: y = W·x for 1..8 tokens (decode, short batches); one warp per
// output row, each lane dequantizing one 32-value group at a time.
// CPU reference: backend::cpu::matmul (and quant::dequantize + dot in tests).
//
// Grid x: ceil(rows / MMV_ROWS); block: MMV_THREADS. Dynamic shared memory:
// nt * (cols / 32) * 33 floats (x, padded so lanes reading group g, element j
// hit distinct banks).
// W, W2: (rows, cols) of type T, rows contiguous. x: (nt, cols) f32.
// y: (nt, rows) f32. mode 0: y = W x; 1: y += W x (residual add);
// 2: y = silu(W x) * (W2 x); 3: y = gelu_tanh(W x) * (W2 x) (gated FFN).
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

template <typename T>
static __device__ __forceinline__ void dot_group(const u8* wr, int g, const float* sx, int stride, int nt, float* acc) {
    float w[32];
    T::deq(wr, g, w);
#pragma unroll
    for (int t = 0; t < MMV_MAXT; t++) {
        if (t < nt) {
            const float* xs = sx + t * stride + g * 33;
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < 32; j++) s += w[j] * xs[j];
            acc[t] += s;
        }
    }
}

template <typename T>
static __device__ void matvec(const u8* W, const u8* W2, const float* x, float* y, int rows, int cols, int nt, int mode) {
    extern __shared__ float sx[];
    const int ng = cols / 32, stride = ng * 33;
    for (int i = threadIdx.x; i < nt * cols; i += blockDim.x) {
        const int t = i / cols, c = i - t * cols;
        sx[t * stride + (c >> 5) * 33 + (c & 31)] = x[i];
    }
    __syncthreads();
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, nw = blockDim.x / WARP_SIZE;
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    const int rend = min(rows, (int)(blockIdx.x + 1) * MMV_ROWS);
    for (int r = blockIdx.x * MMV_ROWS + warp; r < rend; r += nw) {
        float acc[MMV_MAXT], acc2[MMV_MAXT];
#pragma unroll
        for (int t = 0; t < MMV_MAXT; t++) acc[t] = acc2[t] = 0.0f;
        const u8* wr = W + (u64)r * rb;
        for (int g = lane; g < ng; g += WARP_SIZE) {
            dot_group<T>(wr, g, sx, stride, nt, acc);
            if (mode >= 2) dot_group<T>(W2 + (u64)r * rb, g, sx, stride, nt, acc2);
        }
#pragma unroll
        for (int t = 0; t < MMV_MAXT; t++) {
            if (t < nt) {
                const float a = warp_sum(acc[t]);
                const float b = mode >= 2 ? warp_sum(acc2[t]) : 0.0f;
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
    KERNEL void matvec_##s(const u8* W, const u8* W2, const float* x, float* y, int rows, int cols, \
                           int nt, int mode) {                                                       \
        matvec<T>(W, W2, x, y, rows, cols, nt, mode);                                                \
    }
FOR_EACH_TYPE(MATVEC_KERNEL)
