// sample.cu: the candidates of each logits row on the device, so a step
// copies back k (id, logit) pairs per row, not n_vocab floats (151,936 of
// them per row for Qwen). CPU reference: backend::TopRows::push_row (the
// host selection the CPU backend uses); tests/device_ops.rs compares them.
//
// topk_rows: grid = rows, block TOPK_THREADS. For row b of x (rows, n): the
// k (1 ..= min(TOPK_MAX, n)) largest values, largest first, ties broken by
// the lower index (top-1 is the host's argmax: the first maximum), into ids
// and vals (rows, k), and log(sum(exp(x))) into lse (rows), from which a
// caller gets log-probabilities. Selection: radix select on 64-bit keys
// (the value's bits made order-preserving, then the complement of the
// index: unique per element), 8 bits a pass from the top, each pass a
// histogram of the keys that match the prefix found so far, until exactly
// the k largest keys match; they are gathered and bitonic-sorted in shared
// memory. k = 1: one pass and a block maximum of the keys.
#pragma once
#include "vendor.h"

#define TOPK_THREADS 512
#define TOPK_MAX 256
// top-1 in two passes (topk1_part, topk1_merge): at most TOPK_PARTS blocks
// per row, each taking TOPK_PART_MIN values or more
#define TOPK_PARTS 64
#define TOPK_PART_MIN 2048
#define TOPK1_THREADS 256

static __device__ __forceinline__ u64 topk_key(float v, int i) {
    u32 u = __float_as_uint(v);
    u ^= (u >> 31) ? 0xFFFFFFFFu : 0x80000000u;
    return ((u64)u << 32) | (u64)(0xFFFFFFFFu - (u32)i);
}
static __device__ __forceinline__ float topk_val(u64 key) {
    u32 u = (u32)(key >> 32);
    u ^= (u >> 31) ? 0x80000000u : 0xFFFFFFFFu;
    return __uint_as_float(u);
}
static __device__ __forceinline__ int topk_id(u64 key) { return (int)(0xFFFFFFFFu - (u32)key); }
// One value into an online log-sum-exp: the running max m and the sum l
// of exp(v - m).
static __device__ __forceinline__ void lse_push(float v, float& m, float& l) {
    if (v > m) {
        l = l * expf(m - v) + 1.0f;
        m = v;
    } else {
        l += expf(v - m);
    }
}

KERNEL void __launch_bounds__(TOPK_THREADS) topk_rows(const float* __restrict__ x, int n, int k, int* ids, float* vals,
                                                      float* lse) {
    __shared__ float red[32];
    __shared__ u32 hist[256];
    __shared__ u64 cand[TOPK_MAX];
    __shared__ u64 sprefix, smask, best;
    __shared__ int skrem, sdone, ncand;
    GRID_START();
    const int tid = threadIdx.x;
    const float* r = x + (u64)blockIdx.x * n;
    // log-sum-exp: an online (max, sum) per thread, merged over the block;
    // with k = 1 the largest key in the same pass
    float m = NEG_INF, l = 0.0f;
    u64 top = 0;
    if (tid == 0) best = 0;
    for (int i = tid; i < n; i += blockDim.x) {
        const float v = r[i];
        lse_push(v, m, l);
        if (k == 1) {
            const u64 key = topk_key(v, i);
            top = key > top ? key : top;
        }
    }
    const float M = block_max(m, red);
    const float L = block_sum(m > NEG_INF ? l * expf(m - M) : 0.0f, red);
    if (tid == 0) lse[blockIdx.x] = M + logf(L);
    if (k == 1) {
        atomicMax((unsigned long long*)&best, (unsigned long long)top);
        __syncthreads();
        if (tid == 0) {
            ids[blockIdx.x] = topk_id(best);
            vals[blockIdx.x] = topk_val(best);
        }
        return;
    }
    if (tid == 0) {
        sprefix = 0;
        smask = 0;
        skrem = k;
        sdone = 0;
        ncand = 0;
    }
    __syncthreads();
    for (int shift = 56; shift >= 0; shift -= 8) {
        const u64 prefix = sprefix, mask = smask;
        if (sdone) break;  // read after a barrier: uniform
        if (tid < 256) hist[tid] = 0;
        __syncthreads();
        for (int i = tid; i < n; i += blockDim.x) {
            const u64 key = topk_key(r[i], i);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            // the digit of the k-th largest key: counts from the top digit
            // down until they reach the keys still to place
            const u32 krem = (u32)skrem;
            u32 above = 0;
            int d = 255;
            for (; d > 0 && above + hist[d] < krem; d--) above += hist[d];
            sprefix = prefix | ((u64)d << shift);
            smask = mask | ((u64)255 << shift);
            skrem = (int)(krem - above);
            sdone = hist[d] == krem - above;  // every key with this prefix is in
        }
        __syncthreads();
    }
    // exactly k keys are above the prefix or match it (keys are unique)
    const u64 prefix = sprefix, mask = smask;
    for (int i = tid; i < n; i += blockDim.x) {
        const u64 key = topk_key(r[i], i);
        if ((key & mask) >= prefix) {
            const int at = atomicAdd(&ncand, 1);
            if (at < TOPK_MAX) cand[at] = key;
        }
    }
    __syncthreads();
    int P = 1;
    while (P < k) P <<= 1;
    for (int i = k + tid; i < P; i += blockDim.x) cand[i] = 0;
    __syncthreads();
    // bitonic sort, largest first
    for (int size = 2; size <= P; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = tid; i < P; i += blockDim.x) {
                const int j = i ^ stride;
                if (j > i) {
                    const u64 a = cand[i], b = cand[j];
                    const bool desc = (i & size) == 0;
                    if (desc ? a < b : a > b) {
                        cand[i] = b;
                        cand[j] = a;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (int i = tid; i < k; i += blockDim.x) {
        ids[(u64)blockIdx.x * k + i] = topk_id(cand[i]);
        vals[(u64)blockIdx.x * k + i] = topk_val(cand[i]);
    }
}

// Top-1 and log-sum-exp of each row in two passes, so a row's values are
// read by many blocks (one block per row leaves a decode step's few rows
// on few SMs: 120 us for 8 rows of Qwen's 151,936 values on an H200).
// topk1_part: grid (rows, parts); block p of row b reduces its slice to
// (max, sum of exp(v - max), largest key) in part[b * parts + p]
// (the key's two halves as float bits). topk1_merge: one thread per row
// merges its parts into ids, vals and lse as topk_rows does with k = 1.
KERNEL void __launch_bounds__(TOPK1_THREADS) topk1_part(const float* __restrict__ x, int n, float4* __restrict__ part) {
    __shared__ float red[32];
    __shared__ unsigned long long best;
    if (threadIdx.x == 0) best = 0;
    GRID_START();
    const int P = gridDim.y, chunk = (n + P - 1) / P, a = blockIdx.y * chunk, e = min(n, a + chunk);
    const float* r = x + (u64)blockIdx.x * n;
    float m = NEG_INF, l = 0.0f;
    u64 top = 0;
    for (int i = a + threadIdx.x; i < e; i += blockDim.x) {
        const float v = r[i];
        lse_push(v, m, l);
        const u64 key = topk_key(v, i);
        top = key > top ? key : top;
    }
    const float M = block_max(m, red);  // its barriers also publish best = 0
    const float L = block_sum(m > NEG_INF ? l * expf(m - M) : 0.0f, red);
    atomicMax(&best, (unsigned long long)top);
    __syncthreads();
    if (threadIdx.x == 0) {
        const u64 b = best;
        part[(u64)blockIdx.x * P + blockIdx.y] = make_float4(M, L, __uint_as_float((u32)(b >> 32)), __uint_as_float((u32)b));
    }
}

KERNEL void __launch_bounds__(64) topk1_merge(const float4* __restrict__ part, int rows, int P, int* ids, float* vals,
                                               float* lse) {
    GRID_START();
    const int b = blockIdx.x * blockDim.x + threadIdx.x;
    if (b >= rows) return;
    float M = NEG_INF;
    u64 top = 0;
    for (int p = 0; p < P; p++) {
        const float4 q = part[(u64)b * P + p];
        M = fmaxf(M, q.x);
        const u64 key = ((u64)__float_as_uint(q.z) << 32) | (u64)__float_as_uint(q.w);
        top = key > top ? key : top;
    }
    float L = 0.0f;
    for (int p = 0; p < P; p++) {
        const float4 q = part[(u64)b * P + p];
        if (q.x > NEG_INF) L += q.y * expf(q.x - M);
    }
    lse[b] = M + logf(L);
    ids[b] = topk_id(top);
    vals[b] = topk_val(top);
}
