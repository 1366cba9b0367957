// mmf.cu: products of many tokens (the launcher takes them for
// ops::mmf_rows) on f16 tensor cores that read the quantized weights, not
// an f16 copy (NVIDIA sm_80+, where vendor.h
// defines HAS_MMA_F16): y (nt, rows) = / += W x, x (nt, cols) f16 as
// ops::x_to_f16 prepares it for the BLAS path, W in its device layout
// (quant.h). Each lane dequantizes its own part of the weights to f16 in
// registers (the same f16 values the resident copy holds: d (q - 8)
// rounded once), so the weights cross memory at 4.5 bits a value instead
// of 16; the f32 sums are the BLAS path's up to their order. CPU
// reference: the dequantized matrix times x (tests/device_ops.rs).
//
// Grid: x = ceil(rows / BM), y = ceil(nt / (8 NT)), z = the split of the
// columns (each z takes `per` stages; with z > 1 the partial sums meet by
// atomicAdd in y, which the launcher zeroes first for a store). Block
// MMF_WARPS warps, each on a tile of 32 rows x 32 tokens (MMFStage: 8 x 1
// warps, BM = 256, for 32 tokens; 4 x 2, BM = 128, for 64).
// Each stage (MMF_KC groups: one q4_0x8 span of 256 values) of the
// block's rows and tokens is copied into shared memory by cp.async,
// MMF_STAGES - 1 stages ahead; the tokens' x, shared by the warps, is read
// by ldmatrix. One group of a row is two m16n8k16 mmas: lane c holds
// values 2c, 2c + 1, 2c + 8, 2c + 9 (the low nibbles of 4 bytes) for the
// first and the same bytes' high nibbles (16 + ...) for the second.
#pragma once
#include "quant.h"

#if defined(HAS_MMA_F16)
#ifndef MMF_WARPS
#define MMF_WARPS 8
#endif
#ifndef MMF_STAGES
#define MMF_STAGES 2
#endif
// blocks per multiprocessor the launcher's column split aims at
#ifndef MMF_SPLIT_BLOCKS
#define MMF_SPLIT_BLOCKS 2
#endif
#define MMF_KC 8
// bytes of a token's x in a stage, and its stride in shared memory (≡ 16
// mod 128: ldmatrix's 8 rows fall in 8 different 16-byte bank groups)
#define MMF_XB (MMF_KC * 32 * 2)
#define MMF_XST (MMF_XB + 16)

// f16 pairs (1024 + n) - 1032 = n - 8, times d: the nibbles n of two
// bytes (bits 0-3 and 16-19 of `n`) as two f16 weights
static __device__ __forceinline__ u32 mmf_deq(u32 n, u32 d2) {
    u32 h = n | 0x64006400u, r;
    asm("sub.rn.f16x2 %0, %1, %2;" : "=r"(r) : "r"(h), "r"(0x64086408u));
    asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(h) : "r"(r), "r"(d2));
    return h;
}

// MF<T>: a row's stage in shared memory (SPAN bytes, 16-byte aligned), and
// lane c's f16 pairs of group gl: lo = values (2c, 2c + 1), (2c + 8, 2c + 9)
// for the group's first mma, hi = the same + 16 for its second.
template <typename T>
struct MF;
template <>
struct MF<TQ4_0X8> {
    static constexpr int SPAN = 144;  // 8 scales, then 8 x 16 qs bytes
    static __device__ __forceinline__ void load(const u8* row, int gl, int c, u32 (&lo)[2], u32 (&hi)[2]) {
        const u32 d = *(const u16*)(row + 2 * gl), d2 = d | (d << 16);
        const u8* qs = row + 16 + 16 * gl + 2 * c;
        const u32 q = (u32) * (const u16*)qs | ((u32) * (const u16*)(qs + 8) << 16);
        const u32 t0 = __byte_perm(q, 0, 0x4140), t1 = __byte_perm(q, 0, 0x4342);
        lo[0] = mmf_deq(t0 & 0x000F000Fu, d2);
        lo[1] = mmf_deq(t1 & 0x000F000Fu, d2);
        hi[0] = mmf_deq((t0 >> 4) & 0x000F000Fu, d2);
        hi[1] = mmf_deq((t1 >> 4) & 0x000F000Fu, d2);
    }
};

template <typename T, int NT>
struct MMFStage {
    // warps WR (rows) x WC (tokens), each 32 rows x 32 tokens
    static constexpr int WC = NT / 4, WR = MMF_WARPS / WC, BM = 32 * WR, BN = 8 * NT;
    static constexpr int BYTES = BM * MF<T>::SPAN + BN * MMF_XST;  // one stage
    static_assert(MF<T>::SPAN % 16 == 0, "a row's stage is whole 16-byte copies");
    static_assert(NT % 4 == 0 && MMF_WARPS % WC == 0, "whole warp tiles of 32 tokens");
};

template <typename T, int NT>
static __device__ __forceinline__ void mmf_tiles(const u8* __restrict__ W, const u16* __restrict__ x, float* __restrict__ y, int rows,
                                                 int cols, int nt, int add, int per) {
    using F = MF<T>;
    using S = MMFStage<T, NT>;
    constexpr int BM = S::BM, BN = S::BN, SP = F::SPAN, WCH = SP / 16, XCH = MMF_XB / 16;
    extern __shared__ __align__(16) u8 smf[];
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, c = lane % 4;
    const int wr = w % S::WR, wc = w / S::WR;
    const int r0 = blockIdx.x * BM, t0 = blockIdx.y * BN;
    const int ns = cols / (32 * MMF_KC), s0 = blockIdx.z * per, s1 = min(s0 + per, ns);
    const u64 rb = (u64)(cols / 32) * T::BYTES;
    // copy stage st of the block's rows (weights) or tokens (x) into buffer b
    auto issue_w = [&](int st, int b) {
        u8* ws = smf + b * S::BYTES;
        for (int i = threadIdx.x; i < BM * WCH; i += MMF_WARPS * 32) {
            const int r = i / WCH, j = i % WCH;
            cp_async16(ws + r * SP + 16 * j, W + (u64)min(r0 + r, rows - 1) * rb + (u64)st * SP + 16 * j);
        }
    };
    auto issue_x = [&](int st, int b) {
        u8* xs = smf + b * S::BYTES + BM * SP;
        for (int i = threadIdx.x; i < BN * XCH; i += MMF_WARPS * 32) {
            const int t = i / XCH, j = i % XCH;
            cp_async16(xs + t * MMF_XST + 16 * j, x + (u64)min(t0 + t, nt - 1) * cols + (u64)st * (32 * MMF_KC) + 8 * j);
        }
    };
    // the first stages' weights before GRID_START (no kernel writes them:
    // they load while the kernel before finishes), their x after it
#pragma unroll
    for (int i = 0; i < MMF_STAGES - 1; i++)
        if (s0 + i < s1) issue_w(s0 + i, i);
    GRID_START();
#pragma unroll
    for (int i = 0; i < MMF_STAGES - 1; i++) {
        if (s0 + i < s1) issue_x(s0 + i, i);
        cp_async_commit();
    }
    float acc[2][4][4];
#pragma unroll
    for (int m = 0; m < 2; m++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[m][j][0] = acc[m][j][1] = acc[m][j][2] = acc[m][j][3] = 0.0f;
    for (int st = s0; st < s1; st++) {
        cp_async_wait<MMF_STAGES - 2>();
        __syncthreads();
        const int nx = st + MMF_STAGES - 1;
        if (nx < s1) {
            issue_w(nx, (nx - s0) % MMF_STAGES);
            issue_x(nx, (nx - s0) % MMF_STAGES);
        }
        cp_async_commit();
        const u8* ws = smf + ((st - s0) % MMF_STAGES) * S::BYTES;
        const u8* xs = ws + BM * SP + (32 * wc + (lane & 7)) * MMF_XST + 16 * (lane >> 3);
        const u8* wa = ws + (32 * wr + g) * SP;
#pragma unroll 2
        for (int gl = 0; gl < MMF_KC; gl++) {
            u32 a0[2][4], a1[2][4];
#pragma unroll
            for (int m = 0; m < 2; m++) {
                u32 la[2], ha[2], lb[2], hb[2];
                F::load(wa + 16 * m * SP, gl, c, la, ha);
                F::load(wa + (16 * m + 8) * SP, gl, c, lb, hb);
                a0[m][0] = la[0], a0[m][1] = lb[0], a0[m][2] = la[1], a0[m][3] = lb[1];
                a1[m][0] = ha[0], a1[m][1] = hb[0], a1[m][2] = ha[1], a1[m][3] = hb[1];
            }
#pragma unroll
            for (int j = 0; j < 4; j++) {
                u32 b[4];
                ldsm4(xs + 8 * j * MMF_XST + 64 * gl, b);
#pragma unroll
                for (int m = 0; m < 2; m++) {
                    mma16816(acc[m][j], a0[m], b[0], b[1]);
                    mma16816(acc[m][j], a1[m], b[2], b[3]);
                }
            }
        }
    }
    cp_async_wait<0>();
    const bool split = gridDim.z > 1;
#pragma unroll
    for (int m = 0; m < 2; m++) {
#pragma unroll
        for (int j = 0; j < 4; j++) {
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int r = r0 + 32 * wr + 16 * m + g + (e & 2 ? 8 : 0), t = t0 + 32 * wc + 8 * j + 2 * c + (e & 1);
                if (r < rows && t < nt) {
                    float* o = y + (u64)t * rows + r;
                    if (split) atomicAdd(o, acc[m][j][e]);
                    else *o = add ? *o + acc[m][j][e] : acc[m][j][e];
                }
            }
        }
    }
}

// mmf_<type>_<8 NT>: blocks of 8 NT tokens
#define MMF_KERNEL(T, s, NT)                                                                                           \
    KERNEL void __launch_bounds__(MMF_WARPS * 32) mmf_##s##_##NT(const u8* W, const u16* x, float* y, int rows, int cols, \
                                                                 int nt, int add, int per) {                              \
        mmf_tiles<T, NT / 8>(W, x, y, rows, cols, nt, add, per);                                                         \
    }
MMF_KERNEL(TQ4_0X8, q4_0x8, 32)
MMF_KERNEL(TQ4_0X8, q4_0x8, 64)
#undef MMF_KERNEL
#endif
