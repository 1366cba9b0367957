// norm.cu: RMSNorm over rows. CPU reference: model::ops::rmsnorm_rows.
// Grid x: row; block: 256 threads (a multiple of WARP_SIZE).
// y = (add ? y : 0) + x * rsqrt(mean(x²) + eps) * w. x: (n, dim), w: (dim),
// y: (n, dim); y may be x when add is 0. Both weight conventions (w and
// 1 + w) are resolved at load: the kernel always multiplies by w.
#pragma once
#include "vendor.h"

// 1 / rms of row xr (dim values) plus eps, over the block (every thread
// calls); rms_of from each thread's part ss of the sum of squares.
static __device__ __forceinline__ float rms_of(float ss, int dim, float eps, float* red) { return rsqrtf(block_sum(ss, red) / (float)dim + eps); }
static __device__ __forceinline__ float rms_scale(const float* xr, int dim, float eps, float* red) {
    float ss = 0.0f;
#pragma unroll 8
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    return rms_of(ss, dim, eps, red);
}

KERNEL void rmsnorm(const float* x, const float* w, float* y, int dim, float eps, int add) {
    GRID_START();
    __shared__ float red[32];
    const float* xr = x + (u64)blockIdx.x * dim;
    float* yr = y + (u64)blockIdx.x * dim;
    const float s = rms_scale(xr, dim, eps, red);
#pragma unroll 8
    for (int i = threadIdx.x; i < dim; i += blockDim.x) {
        const float v = xr[i] * s * w[i];
        yr[i] = add ? yr[i] + v : v;
    }
}

// rmsnorm_f16: y16 (n, dim) f16 = x * rsqrt(mean(x²) + eps) * w, the input
// of the vendor BLAS over resident f16 weights (norm and conversion in one).
// Rows of up to 4 RMS_VEC values a thread (dim a multiple of 4) are read
// once, by 16-byte loads all in flight together, and kept in registers;
// longer or odd rows take the two-pass loop.
#define RMS_VEC 8
KERNEL void rmsnorm_f16(const float* x, const float* w, u16* y, int dim, float eps) {
    GRID_START();
    __shared__ float red[32];
    const float* xr = x + (u64)blockIdx.x * dim;
    u16* yr = y + (u64)blockIdx.x * dim;
    if ((dim & 3) == 0 && dim <= 4 * RMS_VEC * (int)blockDim.x) {
        const int n4 = dim / 4;
        float4 v[RMS_VEC];
        float ss = 0.0f;
#pragma unroll
        for (int k = 0; k < RMS_VEC; k++) {
            const int i = threadIdx.x + k * blockDim.x;
            v[k] = i < n4 ? ((const float4*)xr)[i] : make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            ss += v[k].x * v[k].x + v[k].y * v[k].y + v[k].z * v[k].z + v[k].w * v[k].w;
        }
        const float s = rms_of(ss, dim, eps, red);
#pragma unroll
        for (int k = 0; k < RMS_VEC; k++) {
            const int i = threadIdx.x + k * blockDim.x;
            if (i < n4) {
                const float4 ww = ((const float4*)w)[i];
                ((uint2*)yr)[i] = make_uint2(pack_h2(v[k].x * s * ww.x, v[k].y * s * ww.y), pack_h2(v[k].z * s * ww.z, v[k].w * s * ww.w));
            }
        }
        return;
    }
    const float s = rms_scale(xr, dim, eps, red);
#pragma unroll 8
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = f2h(xr[i] * s * w[i]);
}

// rmsnorm_f16_split: rmsnorm_f16's values split by split_h into hi and lo
// (n, dim) f16: the BLAS path's input when its products take activations
// in two halves (ops::X16, FORGE_F16_SPLIT). One two-pass loop: this mode
// trades speed for precision.
KERNEL void rmsnorm_f16_split(const float* x, const float* w, u16* hi, u16* lo, int dim, float eps) {
    GRID_START();
    __shared__ float red[32];
    const float* xr = x + (u64)blockIdx.x * dim;
    const u64 o = (u64)blockIdx.x * dim;
    const float s = rms_scale(xr, dim, eps, red);
    for (int i = threadIdx.x; i < dim; i += blockDim.x) split_h(xr[i] * s * w[i], hi + o + i, lo + o + i);
}
