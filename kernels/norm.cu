// norm.cu: RMSNorm over rows. CPU reference: model::ops::rmsnorm_rows.
// Grid x: row; block: 256 threads (a multiple of WARP_SIZE).
// y = (add ? y : 0) + x * rsqrt(mean(x²) + eps) * w. x: (n, dim), w: (dim),
// y: (n, dim); y may be x when add is 0. Both weight conventions (w and
// 1 + w) are resolved at load: the kernel always multiplies by w.
#pragma once
#include "vendor.h"

// 1 / rms of row xr (dim values) plus eps, over the block (every thread
// calls).
static __device__ __forceinline__ float rms_scale(const float* xr, int dim, float eps, float* red) {
    float ss = 0.0f;
#pragma unroll 8
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    return rsqrtf(ss / (float)dim + eps);
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
KERNEL void rmsnorm_f16(const float* x, const float* w, u16* y, int dim, float eps) {
    GRID_START();
    __shared__ float red[32];
    const float* xr = x + (u64)blockIdx.x * dim;
    u16* yr = y + (u64)blockIdx.x * dim;
    const float s = rms_scale(xr, dim, eps, red);
#pragma unroll 8
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yr[i] = f2h(xr[i] * s * w[i]);
}
