// matmul.cu: Y = X·Wᵀ for many tokens (prefill), the portable path used
// when no vendor BLAS is loaded: 64×64 output tiles, W dequantized into
// shared memory one 32-column group at a time, f32 FMA.
// CPU reference: backend::cpu::matmul.
//
// Grid: x = ceil(rows / 64) (W rows), y = ceil(nt / 64) (tokens); block 256.
// W: (rows, cols) of type T; X: (nt, cols) f32; Y: (nt, rows) f32.
// mode 0: Y = X Wᵀ; 1: Y += X Wᵀ.
// Also here: dequantization of a whole matrix to f16 (for the BLAS path) and
// embedding rows (get_rows).
#pragma once
#include "quant.h"

template <typename T>
static __device__ void matmul_tiled(const u8* W, const float* X, float* Y, int rows, int cols, int nt, int mode) {
    __shared__ float sw[64][33];
    __shared__ float sxt[64][33];
    const int r0 = blockIdx.x * 64, t0 = blockIdx.y * 64, tid = threadIdx.x;
    const int tr = tid / 16, tc = tid % 16;
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    float acc[4][4];
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) acc[a][b] = 0.0f;
    for (int g = 0; g < cols / 32; g++) {
        if (tid < 64) {
            float w[32];
            if (r0 + tid < rows) T::deq(W + (u64)(r0 + tid) * rb, g, w);
            else
#pragma unroll
                for (int j = 0; j < 32; j++) w[j] = 0.0f;
#pragma unroll
            for (int j = 0; j < 32; j++) sw[tid][j] = w[j];
        }
        for (int i = tid; i < 64 * 32; i += blockDim.x) {
            const int t = i / 32, k = i % 32;
            sxt[t][k] = t0 + t < nt ? X[(u64)(t0 + t) * cols + g * 32 + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int k = 0; k < 32; k++) {
            float wv[4], xv[4];
#pragma unroll
            for (int a = 0; a < 4; a++) wv[a] = sw[tr * 4 + a][k];
#pragma unroll
            for (int b = 0; b < 4; b++) xv[b] = sxt[tc * 4 + b][k];
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int b = 0; b < 4; b++) acc[a][b] += wv[a] * xv[b];
        }
        __syncthreads();
    }
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int b = 0; b < 4; b++) {
            const int r = r0 + tr * 4 + a, t = t0 + tc * 4 + b;
            if (r < rows && t < nt) {
                float* o = Y + (u64)t * rows + r;
                *o = mode == 1 ? *o + acc[a][b] : acc[a][b];
            }
        }
}

// out (rows, cols) f16 = W. One thread per 32-value group, grid-stride.
template <typename T>
static __device__ void dequant_f16(const u8* W, u16* out, int rows, int cols) {
    const int ng = cols / 32;
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)rows * ng; i += (u64)gridDim.x * blockDim.x) {
        const int r = (int)(i / ng), g = (int)(i % ng);
        float w[32];
        T::deq(W + r * rb, g, w);
        uint4* o = (uint4*)(out + (u64)r * cols + g * 32);
#pragma unroll
        for (int j = 0; j < 4; j++) {
            u32 h[4];
#pragma unroll
            for (int e = 0; e < 4; e++) h[e] = (u32)f2h(w[8 * j + 2 * e]) | ((u32)f2h(w[8 * j + 2 * e + 1]) << 16);
            o[j] = make_uint4(h[0], h[1], h[2], h[3]);
        }
    }
}

// out (n, cols) f32 = scale * W[ids[t]]. Grid x: token; block: groups.
template <typename T>
static __device__ void get_rows(const u8* W, const int* ids, float* out, int cols, float scale) {
    const int t = blockIdx.x;
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    const u8* wr = W + (u64)ids[t] * rb;
    for (int g = threadIdx.x; g < cols / 32; g += blockDim.x) {
        float w[32];
        T::deq(wr, g, w);
#pragma unroll
        for (int j = 0; j < 32; j++) out[(u64)t * cols + g * 32 + j] = w[j] * scale;
    }
}

#define MATMUL_KERNELS(T, s)                                                                            \
    KERNEL void matmul_##s(const u8* W, const float* X, float* Y, int rows, int cols, int nt, int mode) { \
        GRID_START();                                                                                     \
        matmul_tiled<T>(W, X, Y, rows, cols, nt, mode);                                                   \
    }                                                                                                     \
    KERNEL void dequant_f16_##s(const u8* W, u16* out, int rows, int cols) {                            \
        GRID_START();                                                                                     \
        dequant_f16<T>(W, out, rows, cols);                                                               \
    }                                                                                                     \
    KERNEL void get_rows_##s(const u8* W, const int* ids, float* out, int cols, float scale) {          \
        GRID_START();                                                                                     \
        get_rows<T>(W, ids, out, cols, scale);                                                            \
    }
FOR_EACH_TYPE(MATMUL_KERNELS)
