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
// Grid: x = ceil(rows / BM), y = ceil(nt / BN), z = the split of the
// columns (each z takes `per` stages; with z > 1 the partial sums meet by
// atomicAdd in y, which the launcher zeroes first for a store). A block of
// BN tokens (32 or 64) has MMF_BM<BN> rows, MMF_WARPS<BN> warps and
// MMF_STAGES<BN> stages; each warp holds a tile of WM = MMF_WM<BN> rows x
// BN tokens (WM BN / 32 f32 sums a lane). WR = BM / WM warps lie side by side over
// the rows, and the other WK = warps / WR split each stage's groups
// between them; their sums meet in shared memory at the end.
// Each stage (MMF_KC groups: one q4_0x8 span of 256 values) of the
// block's rows and tokens is copied into shared memory by cp.async,
// STAGES - 1 stages ahead; the tokens' x is read by ldmatrix. One
// group of a row is two m16n8k16 mmas: lane c holds values 2c, 2c + 1,
// 2c + 8, 2c + 9 (the low nibbles of 4 bytes) for the first and the same
// bytes' high nibbles (16 + ...) for the second.
#pragma once
#include "quant.h"

#if defined(HAS_MMA_F16)
// rows, warps, a warp's rows and stages in flight + 1 of a block of 32
// tokens, and of 64
#ifndef MMF_BM32
#define MMF_BM32 128
#endif
#ifndef MMF_WARPS32
#define MMF_WARPS32 8
#endif
#ifndef MMF_WM32
#define MMF_WM32 32
#endif
#ifndef MMF_STAGES32
#define MMF_STAGES32 3
#endif
// blocks a multiprocessor should hold (the register budget: launch bounds)
#ifndef MMF_MINB32
#define MMF_MINB32 2
#endif
#ifndef MMF_MINB64
#define MMF_MINB64 1
#endif
#ifndef MMF_BM64
#define MMF_BM64 128
#endif
#ifndef MMF_WARPS64
#define MMF_WARPS64 8
#endif
#ifndef MMF_WM64
#define MMF_WM64 32
#endif
#ifndef MMF_STAGES64
#define MMF_STAGES64 3
#endif
// the fewest stages a part of a column split keeps (the launcher splits
// the columns where the row and token tiles leave multiprocessors idle)
#ifndef MMF_MIN_PER
#define MMF_MIN_PER 4
#endif
#define MMF_KC 8
// bytes of a token's x in a stage, and its stride in shared memory (≡ 16
// mod 128: ldmatrix's 8 rows fall in 8 different 16-byte bank groups)
#define MMF_XB (MMF_KC * 32 * 2)
#define MMF_XST (MMF_XB + 16)

// f16 pairs (1024 + n) - 1032 = n - 8, times d: the nibbles n of two
// bytes (bits 0-3 and 16-19 of t; the rest of t is masked off) as two f16
// weights. The mask and the exponent go in by one lop3 ((t & m) | e) from
// registers (an instruction takes one immediate), then the subtraction and
// the scale: d (n - 8) rounded once, as the f16 copy holds it.
static __device__ __forceinline__ u32 mmf_deq(u32 t, u32 m, u32 e, u32 d2) {
    u32 h, r;
    asm("lop3.b32 %0, %1, %2, %3, 0xEA;" : "=r"(h) : "r"(t), "r"(m), "r"(e));
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
        // the constants in registers the compiler keeps (a volatile-free
        // asm it cannot fold into an immediate)
        u32 m, e;
        asm("mov.b32 %0, 0x000F000F;" : "=r"(m));
        asm("mov.b32 %0, 0x64006400;" : "=r"(e));
        lo[0] = mmf_deq(t0, m, e, d2);
        lo[1] = mmf_deq(t1, m, e, d2);
        hi[0] = mmf_deq(t0 >> 4, m, e, d2);
        hi[1] = mmf_deq(t1 >> 4, m, e, d2);
    }
};

template <typename T, int BN, int BM, int WARPS, int WM_>
struct MMFShape {
    static constexpr int WM = WM_, WR = BM / WM, WK = WARPS / WR, GW = MMF_KC / WK;
    static constexpr int BYTES = BM * MF<T>::SPAN + BN * MMF_XST;  // one stage
    static constexpr int RST = BM + 4;  // a token's stride in the sums' meeting place
    static_assert(MF<T>::SPAN % 16 == 0, "a row's stage is whole 16-byte copies");
    static_assert(BN % 8 == 0 && WM % 16 == 0 && BM % WM == 0 && WARPS % WR == 0, "whole warp tiles");
    static_assert(MMF_KC % WK == 0, "the warps over a stage's groups divide them");
};

// v into y's element (r, t): stored (MODE 0), added (1) or added by
// atomicAdd (2); the bounds checked only in a block that ends past the
// rows or tokens (edge)
template <int MODE>
static __device__ __forceinline__ void mmf_put(float* y, int rows, int nt, bool edge, int r, int t, float v) {
    if (!edge || (r < rows && t < nt)) {
        float* o = y + (u64)t * rows + r;
        if (MODE == 2) atomicAdd(o, v);
        else if (MODE == 1) *o += v;
        else *o = v;
    }
}

// a block's sums into y: each warp's own where it is alone on its rows
// (WK = 1), else the WK warps' sums added in shared memory first (the
// stages' space, free by now: the launcher sizes it for both uses)
template <int MODE, typename S, int BN, int BM, int WARPS, int MT, int NJ>
static __device__ __forceinline__ void mmf_out(float (&acc)[MT][NJ][4], float* y, int rows, int nt, int r0, int t0, int wr, int wk, int g,
                                               int c) {
    const bool edge = r0 + BM > rows || t0 + BN > nt;
    if (S::WK == 1) {
#pragma unroll
        for (int m = 0; m < MT; m++)
#pragma unroll
            for (int j = 0; j < NJ; j++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                    mmf_put<MODE>(y, rows, nt, edge, r0 + S::WM * wr + 16 * m + mma_drow(e, g), t0 + 8 * j + mma_dcol(e, c), acc[m][j][e]);
        return;
    }
    extern __shared__ __align__(16) u8 smf[];
    float* red = (float*)smf;
    __syncthreads();
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int j = 0; j < NJ; j++)
#pragma unroll
            for (int e = 0; e < 4; e++)
                red[(wk * BN + 8 * j + mma_dcol(e, c)) * S::RST + S::WM * wr + 16 * m + mma_drow(e, g)] = acc[m][j][e];
    __syncthreads();
#pragma unroll 4
    for (int i = threadIdx.x; i < BM * BN; i += WARPS * 32) {
        const int t = i / BM, r = i % BM;
        float v = 0.0f;
#pragma unroll
        for (int k = 0; k < S::WK; k++) v += red[(k * BN + t) * S::RST + r];
        mmf_put<MODE>(y, rows, nt, edge, r0 + r, t0 + t, v);
    }
}

template <typename T, int BN, int BM, int WARPS, int WM_, int STAGES>
static __device__ __forceinline__ void mmf_tiles(const u8* __restrict__ W, const u16* __restrict__ x, float* __restrict__ y, int rows,
                                                 int cols, int nt, int add, int per) {
    using F = MF<T>;
    using S = MMFShape<T, BN, BM, WARPS, WM_>;
    constexpr int WM = S::WM, MT = WM / 16, NJ = BN / 8, SP = F::SPAN, WCH = SP / 16, XCH = MMF_XB / 16;
    extern __shared__ __align__(16) u8 smf[];
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, c = lane % 4;
    const int wr = w % S::WR, wk = w / S::WR;
    const int r0 = blockIdx.x * BM, t0 = blockIdx.y * BN;
    const int ns = cols / (32 * MMF_KC), s0 = blockIdx.z * per, s1 = min(s0 + per, ns);
    const u64 rb = (u64)(cols / 32) * T::BYTES;
    // copy stage st of the block's rows (weights) or tokens (x) into buffer
    // b: each thread's copies (source row and shared address) worked out
    // once, in registers
    constexpr int TH = WARPS * 32, NW = BM * WCH, NX = BN * XCH, KW = (NW + TH - 1) / TH, KX = (NX + TH - 1) / TH;
    const u32 sbase = smem_addr(smf);
    const u8* wsrc[KW];
    u32 wdst[KW];
#pragma unroll
    for (int k = 0; k < KW; k++) {
        const int i = min((int)threadIdx.x + k * TH, NW - 1), r = i / WCH, j = i % WCH;
        wsrc[k] = W + (u64)min(r0 + r, rows - 1) * rb + 16 * j;
        wdst[k] = sbase + r * SP + 16 * j;
    }
    const u16* xsrc[KX];
    u32 xdst[KX];
#pragma unroll
    for (int k = 0; k < KX; k++) {
        const int i = min((int)threadIdx.x + k * TH, NX - 1), t = i / XCH, j = i % XCH;
        xsrc[k] = x + (u64)min(t0 + t, nt - 1) * cols + 8 * j;
        xdst[k] = sbase + BM * SP + t * MMF_XST + 16 * j;
    }
    auto issue_w = [&](int st, int b) {
#pragma unroll
        for (int k = 0; k < KW; k++)
            if (NW % TH == 0 || (int)threadIdx.x + k * TH < NW) cp_async16s(wdst[k] + b * S::BYTES, wsrc[k] + (u64)st * SP);
    };
    auto issue_x = [&](int st, int b) {
#pragma unroll
        for (int k = 0; k < KX; k++)
            if (NX % TH == 0 || (int)threadIdx.x + k * TH < NX) cp_async16s(xdst[k] + b * S::BYTES, xsrc[k] + (u64)st * (32 * MMF_KC));
    };
    // the first stages' weights before GRID_START (no kernel writes them:
    // they load while the kernel before finishes), their x after it
#pragma unroll
    for (int i = 0; i < STAGES - 1; i++)
        if (s0 + i < s1) issue_w(s0 + i, i);
    GRID_START();
#pragma unroll
    for (int i = 0; i < STAGES - 1; i++) {
        if (s0 + i < s1) issue_x(s0 + i, i);
        cp_async_commit();
    }
    float acc[MT][NJ][4];
#pragma unroll
    for (int m = 0; m < MT; m++)
#pragma unroll
        for (int j = 0; j < NJ; j++) acc[m][j][0] = acc[m][j][1] = acc[m][j][2] = acc[m][j][3] = 0.0f;
    for (int st = s0; st < s1; st++) {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int nx = st + STAGES - 1;
        if (nx < s1) {
            issue_w(nx, (nx - s0) % STAGES);
            issue_x(nx, (nx - s0) % STAGES);
        }
        cp_async_commit();
        const u8* ws = smf + ((st - s0) % STAGES) * S::BYTES;
        const u8* xs = ws + BM * SP + (lane & 7) * MMF_XST + 16 * (lane >> 3);
        const u8* wa = ws + (WM * wr + g) * SP;
#pragma unroll
        for (int gi = 0; gi < S::GW; gi++) {
            const int gl = wk * S::GW + gi;
            u32 a0[MT][4], a1[MT][4];
#pragma unroll
            for (int m = 0; m < MT; m++) {
                u32 la[2], ha[2], lb[2], hb[2];
                F::load(wa + 16 * m * SP, gl, c, la, ha);
                F::load(wa + (16 * m + 8) * SP, gl, c, lb, hb);
                a0[m][0] = la[0], a0[m][1] = lb[0], a0[m][2] = la[1], a0[m][3] = lb[1];
                a1[m][0] = ha[0], a1[m][1] = hb[0], a1[m][2] = ha[1], a1[m][3] = hb[1];
            }
#pragma unroll
            for (int j = 0; j < NJ; j++) {
                u32 b[4];
                ldsm4(xs + 8 * j * MMF_XST + 64 * gl, b);
#pragma unroll
                for (int m = 0; m < MT; m++) {
                    mma16816(acc[m][j], a0[m], b[0], b[1]);
                    mma16816(acc[m][j], a1[m], b[2], b[3]);
                }
            }
        }
    }
    cp_async_wait<0>();
    // the sums into y: added by atomicAdd where the columns are split,
    // else stored or added
    if (gridDim.z > 1) mmf_out<2, S, BN, BM, WARPS>(acc, y, rows, nt, r0, t0, wr, wk, g, c);
    else if (add) mmf_out<1, S, BN, BM, WARPS>(acc, y, rows, nt, r0, t0, wr, wk, g, c);
    else mmf_out<0, S, BN, BM, WARPS>(acc, y, rows, nt, r0, t0, wr, wk, g, c);
}

// mmf_<type>_<BN>: blocks of BN tokens
#define MMF_KERNEL(T, s, BN)                                                                                           \
    KERNEL void __launch_bounds__(MMF_WARPS##BN * 32, MMF_MINB##BN)                                                           \
        mmf_##s##_##BN(const u8* W, const u16* x, float* y, int rows, int cols, int nt, int add, int per) {           \
        mmf_tiles<T, BN, MMF_BM##BN, MMF_WARPS##BN, MMF_WM##BN, MMF_STAGES##BN>(W, x, y, rows, cols, nt, add, per);              \
    }
MMF_KERNEL(TQ4_0X8, q4_0x8, 32)
MMF_KERNEL(TQ4_0X8, q4_0x8, 64)
#undef MMF_KERNEL
#endif
