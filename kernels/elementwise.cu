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
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (u64)gridDim.x * blockDim.x)
        y[i] = f2h(x[i]);
}
