// elementwise.cu: small element-wise steps. CPU references: model::ops.
// Grid-stride loops; any grid.
#pragma once
#include "matvec.cu"

// g = act(g) * u (the gated FFN after two separate projections); act: 2 silu, 3 gelu_tanh.
KERNEL void glu(float* g, const float* u, u64 n, int act) {
    GRID_START();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        g[i] = gated(act, g[i], u[i]);
}

// y = 0 over n floats: a kernel, not a memset, so that the launches
// around it stay programmatic dependents of each other (GRID_START).
KERNEL void zero_f32(float* y, u64 n) {
    GRID_START();
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x) y[i] = 0.0f;
}

// y (f16) = x (f32), for the BLAS path's activations.
KERNEL void f32_to_f16(const float* x, u16* y, u64 n) {
    GRID_START();
    const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x;
    // four values a thread where x and y allow 16- and 8-byte access
    const u64 n4 = ((u64)x % 16 == 0 && (u64)y % 8 == 0) ? n / 4 : 0;
    for (u64 i = t; i < n4; i += stride) {
        const float4 v = ((const float4*)x)[i];
        ((uint2*)y)[i] = make_uint2(pack_h2(v.x, v.y), pack_h2(v.z, v.w));
    }
    for (u64 i = 4 * n4 + t; i < n; i += stride) y[i] = f2h(x[i]);
}

// hi, lo (f16) = x (f32) split by split_h: the BLAS path's activations when
// its products take them in two halves (ops::X16, FORGE_F16_SPLIT).
KERNEL void f32_to_f16_split(const float* x, u16* hi, u16* lo, u64 n) {
    GRID_START();
    const u64 t = (u64)blockIdx.x * blockDim.x + threadIdx.x, stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = t; i < n; i += stride) split_h(x[i], hi + i, lo + i);
}
