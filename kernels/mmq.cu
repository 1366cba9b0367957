// mmq.cu: quantized products of 2 .. 256 tokens on tensor cores (NVIDIA
// sm_80+, where vendor.h defines HAS_MMA_F16): y (nt, rows) = / += W x, x
// prepared by quant_act in its group-major layout (mmvq.cu: per group of
// 32 values, 15-bit integers in two byte planes, d and d * sum(v); the nt
// tokens of one group side by side, so a warp's loads of 8 tokens' x
// fragments and scales touch few lines), W in its device layout (quant.h;
// integer forms in iquant.h). Each weight group is read once per block of
// tokens and multiplied by int8 mma (m16n8k32) against both planes; the
// group's scales turn the int32 sums into floats. CPU reference: the
// dequantized matrix times x (tests/device_ops.rs).
//
// Grid: x = ceil(rows / (16 RT)), y = ceil(nt / (8 NT)); block MMQ_WARPS
// warps on the same 16 RT rows and 8 NT tokens. The rows' weights come
// into shared memory a stage of groups at a time (mmq_staged, below);
// within a stage warp w takes groups w, w + MMQ_WARPS, ...; the warps'
// sums meet in shared memory. Lane l holds rows l / 4 and l / 4 + 8 of the
// mma's A fragment: part l % 4 of each row's group (iquant.h's parts of 8
// values, or half of a part of 16 for the regrouped q4_0x8 / q5_0x4), and
// the x words those parts meet take the B fragment's k slots, so the k
// order of one mma is a permutation that A and B share.
#pragma once
#include "mmvq.cu"

#if defined(HAS_MMA_F16)
// warps of a block, each taking every MMQ_WARPS-th group of the same rows
#ifndef MMQ_WARPS
#define MMQ_WARPS 8
#endif
#define MMQ_ROWS 16
// row tiles of MMQ_ROWS a block takes up to 16 tokens, and above
#ifndef MMQ_RT_SMALL
#define MMQ_RT_SMALL 1
#endif
#ifndef MMQ_RT_LARGE
#define MMQ_RT_LARGE 1
#endif
// weights staged through shared memory in stages of MMQ_KC groups,
// MMQ_STAGES buffers
#ifndef MMQ_KC
#define MMQ_KC 32
#endif
// groups per stage of a block of 8 tokens (more weight bytes in flight
// at once: those blocks are bound by the weights' latency)
#ifndef MMQ_KC_SMALL
#define MMQ_KC_SMALL 64
#endif
#ifndef MMQ_STAGES
#define MMQ_STAGES 3
#endif
// 1: the first stages' weight copies are issued before GRID_START
#ifndef MMQ_EARLY
#define MMQ_EARLY 1
#endif

// MQ<T>: lane part c (0 .. 3) of group g of a weight row for the mma: its
// two words (w0 for k slots 4c .., w1 for 16 + 4c ..), the x words they
// meet (kw0, kw1), the group's scale s and minimum m (y += s * dx * dot +
// m * sx). SPLIT types have two scales per group (q6_k: one per 16 values,
// parts 0-1 and 2-3): s is this lane's half's.
template <typename T>
struct MQ;

// Types whose IP parts are 4 of 2 words: part c is the lane's.
template <typename T>
struct MQWords {
    using P = IP<T>;
    static constexpr bool SPLIT = false;
    // the sums' factor (MQ<TQ4_0X8>), applied to the whole sum, minimum
    // terms included: a type with POST != 1 must have no minimum (m = 0)
    static constexpr float POST = 1.0f;
    static __device__ __forceinline__ int kw0(int c) { return P::word(c, 0); }
    static __device__ __forceinline__ int kw1(int c) { return P::word(c, 1); }
};
#define MQ_WORDS(TT, SCALE, MIN)                                                      \
    template <>                                                                      \
    struct MQ<TT> : MQWords<TT> {                                                    \
        int w0, w1;                                                                  \
        float s, m;                                                                  \
        __device__ __forceinline__ void load(const u8* row, int g, int c) {          \
            IP<TT> p;                                                                \
            p.load(row, g, c);                                                       \
            w0 = p.w0;                                                               \
            w1 = p.w1;                                                               \
            s = SCALE;                                                               \
            m = MIN;                                                                 \
        }                                                                            \
    };
MQ_WORDS(TQ4_0, p.d, 0.0f)
MQ_WORDS(TQ4_1, p.d, p.m)
MQ_WORDS(TQ5_0, p.d, 0.0f)
MQ_WORDS(TQ5_1, p.d, p.m)
MQ_WORDS(TQ8_0, p.d, 0.0f)
MQ_WORDS(TQ8_0X4, p.d, 0.0f)
MQ_WORDS(TQ4_K, p.dl, -p.ml)
MQ_WORDS(TQ5_K, p.dl, -p.ml)
#undef MQ_WORDS

template <>
struct MQ<TQ6_K> : MQWords<TQ6_K> {
    static constexpr bool SPLIT = true;
    int w0, w1;
    float s, m;
    __device__ __forceinline__ void load(const u8* row, int g, int c) {
        IP<TQ6_K> p;
        p.load(row, g, c);
        w0 = p.w0;
        w1 = p.w1;
        s = p.dl;
        m = 0.0f;
    }
};

// The regrouped types: 2 parts of 4 words, words 2p, 2p + 1 (low) and 4 +
// 2p, 5 + 2p (high): lane c takes words c and 4 + c of part c / 2.
template <typename T>
struct MQHalves {
    static constexpr bool SPLIT = false;
    static constexpr float POST = 1.0f;
    static __device__ __forceinline__ int kw0(int c) { return c; }
    static __device__ __forceinline__ int kw1(int c) { return 4 + c; }
};
template <>
struct MQ<TQ4_0X8> : MQHalves<TQ4_0X8> {
    // the words are 16 (q - 8): the sums come out 16 times too large
    static constexpr float POST = 1.0f / 16.0f;
    int w0, w1;
    float s, m;
    __device__ __forceinline__ void load(const u8* row, int g, int c) {
        // lane c's qs word c: its low nibbles meet x word c, its high ones x
        // word 4 + c. Each nibble q goes to its byte's top half and the top
        // bit flips: the signed byte 16 (q - 8), two instructions a word
        // (centring q itself took four, and two constants in registers)
        const u32 v = *(const u32*)(TQ4_0X8::qs(row, g) + 4 * c);
        w0 = (int)(((v << 4) & 0xF0F0F0F0u) ^ 0x80808080u);
        w1 = (int)((v & 0xF0F0F0F0u) ^ 0x80808080u);
        s = TQ4_0X8::d(row, g);
        m = 0.0f;
    }
};
template <>
struct MQ<TQ5_0X4> : MQHalves<TQ5_0X4> {
    int w0, w1;
    float s, m;
    __device__ __forceinline__ void load(const u8* row, int g, int c) {
        IP<TQ5_0X4> p;
        p.load(row, g, c >> 1);
        w0 = c & 1 ? p.w[1] : p.w[0];  // selects: an index unknown at compile time would put p.w in local memory
        w1 = c & 1 ? p.w[3] : p.w[2];
        s = p.d;
        m = -IP<TQ5_0X4>::CENTRE * p.d;  // the centre comes off through sx, as in IP's dot
    }
};

// The block's rows are copied into shared
// memory a stage of MMQ_KC groups at a time by cp.async (16-byte copies, a
// warp's 512 bytes contiguous), MMQ_STAGES - 1 stages ahead of the one the
// warps multiply, and the warps read their A fragments there: a warp's
// fragment loads touch 8 rows of shared memory, not 8 lines of L1 each.
// A row's bytes of a stage start at any byte: the copy starts at the
// 16-byte boundary below and the row's base in shared memory is moved by
// the difference (so a copy may read up to 15 bytes on either side of a
// row's groups: inside the matrix, or inside its allocation's 256-byte
// rounding at the matrix's end).

// bytes of k groups of a row of T (k a multiple of T's groups per block)
template <typename T>
static __host__ __device__ constexpr int mmq_bytes(int k) {
    return k * 32 / T::BLK * T::BYTES;
}
// row stride in shared memory: room for the bytes plus both alignment
// slacks, ≡ 32 (mod 128) so that 8 rows a warp reads fall in 8 different
// 32-byte bank groups
static __host__ __device__ constexpr int mmq_stride(int bytes) {
    return (bytes + 16 + 127) / 128 * 128 + 32;
}
#define MMQ_SMEM 46080
template <typename T, int NT, int RT>
struct MMQStage {
    static constexpr int R = MMQ_ROWS * RT;
    // groups per stage: MMQ_KC (MMQ_KC_SMALL for one token tile), halved
    // while two stages do not fit
    static constexpr int K0 = NT == 1 ? MMQ_KC_SMALL : MMQ_KC;
    static constexpr int K1 = 2 * R * mmq_stride(mmq_bytes<T>(K0)) <= MMQ_SMEM ? K0 : K0 / 2;
    static constexpr int KC = 2 * R * mmq_stride(mmq_bytes<T>(K1)) <= MMQ_SMEM ? K1 : K1 / 2;
    static constexpr int STR = mmq_stride(mmq_bytes<T>(KC));
    static constexpr int S0 = MMQ_SMEM / (R * STR);
    static constexpr int STAGES = S0 < MMQ_STAGES ? S0 : MMQ_STAGES;
    static constexpr int NCH = mmq_bytes<T>(KC) / 16 + 2;  // 16-byte copies a row can need
    static_assert(KC % 8 == 0 && KC % MMQ_WARPS == 0, "a stage gives every warp the same whole groups");
    static_assert(STAGES >= 2, "two stages fit");
    // shared memory: the stages, or one token tile's sums of the warps
    // (the reduction's floor; mmq_staged reduces in as many tiles as fit)
    static constexpr int RED = (MMQ_WARPS - 1) * RT * 4 * 32 * 4;
    static constexpr int BYTES = STAGES * R * STR > RED ? STAGES * R * STR : RED;
};

template <typename T, int NT, int RT>
static __device__ __forceinline__ void mmq_staged(const u8* __restrict__ W, const int2* __restrict__ xq, const float* __restrict__ xd,
                                                  const float* __restrict__ xs, float* __restrict__ y, int rows, int cols,
                                                  int nt, int add) {
    using Q = MQ<T>;
    using S = MMQStage<T, NT, RT>;
    constexpr int KC = S::KC, STR = S::STR, R = S::R, STAGES = S::STAGES, UG = KC / MMQ_WARPS;
    __shared__ __align__(16) u8 sm[S::BYTES];
    const int lane = threadIdx.x % 32, w = threadIdx.x / 32, g = lane / 4, c = lane % 4;
    __builtin_assume(w >= 0 && w < MMQ_WARPS);  // blocks of MMQ_WARPS warps
    const int r0 = blockIdx.x * R, t0 = blockIdx.y * 8 * NT;
    const int ng = cols >> 5, nst = (ng + KC - 1) / KC;
    const u64 rb = (u64)(cols / T::BLK) * T::BYTES;
    // copy stage st (groups st KC ..) of every row into buffer b: warp w
    // copies rows w, w + MMQ_WARPS, .., lane l the row's 16-byte pieces l,
    // l + 32, .. (row bases and shared addresses worked out once, so a copy
    // is a compare and the copy: the copies spread over all threads with a
    // division and clamps each took 24 instructions, a quarter of an
    // 8-token block's instructions)
    static_assert(R % MMQ_WARPS == 0, "every warp copies the same number of rows");
    constexpr int RW = R / MMQ_WARPS, NQ = (S::NCH + 31) / 32;
    const u32 sbase = smem_addr(sm);
    const u8* crow[RW];
    u32 cs[RW];
#pragma unroll
    for (int k = 0; k < RW; k++) {
        const int r = w + MMQ_WARPS * k;
        crow[k] = W + (u64)min(r0 + r, rows - 1) * rb;
        cs[k] = sbase + r * STR + 16 * lane;
    }
    auto issue = [&](int st, int b) {
        const int a = mmq_bytes<T>(st * KC), e = mmq_bytes<T>(min((st + 1) * KC, ng));
#pragma unroll
        for (int k = 0; k < RW; k++) {
            const u64 lo = (u64)(crow[k] + a) & ~(u64)15, hi = ((u64)(crow[k] + e) + 15) & ~(u64)15;
            const int n = (int)((hi - lo) >> 4) - lane;
            const u8* gp = (const u8*)lo + 16 * lane;
            const u32 sp = cs[k] + b * R * STR;
#pragma unroll
            for (int q = 0; q < NQ; q++) {
                if (32 * q < n) cp_async16s(sp + 512 * q, gp + 512 * q);
            }
        }
    };
    // the first stages' weights before GRID_START (MMQ_EARLY): no kernel
    // writes them, so they load while the kernel before this one finishes
    if (!MMQ_EARLY) GRID_START();
#pragma unroll
    for (int st = 0; st < STAGES - 1; st++) {
        if (st < nst) issue(st, st);
        cp_async_commit();
    }
    if (MMQ_EARLY) GRID_START();
    // this lane's rows in the block, and how far each row's copy is moved
    int off[RT][2];
#pragma unroll
    for (int i = 0; i < RT; i++) {
#pragma unroll
        for (int h = 0; h < 2; h++) off[i][h] = MMQ_ROWS * i + g + 8 * h;
    }
    const int kw0 = Q::kw0(c), kw1 = Q::kw1(c);
    float acc[NT][RT][4];
#pragma unroll
    for (int j = 0; j < NT; j++) {
#pragma unroll
        for (int i = 0; i < RT; i++) acc[j][i][0] = acc[j][i][1] = acc[j][i][2] = acc[j][i][3] = 0.0f;
    }
    constexpr bool PX = NT <= 2;
    constexpr int PN = PX ? NT : 1, PU = PX ? UG : 1;
    // the prefetch's tokens (clamped to the batch): x words (tb) and scales (tc, td)
    int ptb[PN], ptc[PN], ptd[PN];
#pragma unroll
    for (int j = 0; j < PN; j++) {
        ptb[j] = min(t0 + 8 * j + g, nt - 1);
        ptc[j] = min(t0 + 8 * j + 2 * c, nt - 1);
        ptd[j] = min(t0 + 8 * j + 2 * c + 1, nt - 1);
    }
    for (int st = 0; st < nst; st++) {
        const int ga = st * KC, gb = min(ga + KC, ng), a = mmq_bytes<T>(ga);
        int2 px0[PU][PN], px1[PU][PN];
        float pdc[PU][PN], pdd[PU][PN], pxc[PU][PN], pxe[PU][PN];
        if (PX) {
            // this stage's x, in flight while the stage's copy lands; groups
            // past the last (grp >= gb, never used) are read unclamped: the
            // activations' buffer has room past its groups (ActBuf)
            const int2* xg = xq + (u64)(ga + w) * nt * 8;
            const float* dg = xd + (u64)(ga + w) * nt;
            const float* sg = xs + (u64)(ga + w) * nt;
#pragma unroll
            for (int u = 0; u < PU; u++) {
                const int du = MMQ_WARPS * u * nt;
#pragma unroll
                for (int j = 0; j < PN; j++) {
                    const int2* xr = xg + (du + ptb[j]) * 8;
                    px0[u][j] = xr[kw0];
                    px1[u][j] = xr[kw1];
                    pdc[u][j] = dg[du + ptc[j]];
                    pdd[u][j] = dg[du + ptd[j]];
                    pxc[u][j] = sg[du + ptc[j]];
                    pxe[u][j] = sg[du + ptd[j]];
                }
            }
        }
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        if (st + STAGES - 1 < nst) issue(st + STAGES - 1, (st + STAGES - 1) % STAGES);
        cp_async_commit();
        const u8* buf = sm + (st % STAGES) * R * STR;
        const u8* ra[RT];
        const u8* rbp[RT];
#pragma unroll
        for (int i = 0; i < RT; i++) {
            const int ia = off[i][0], ib = off[i][1];
            const u8* pa = W + (u64)min(r0 + ia, rows - 1) * rb + a;
            const u8* pb = W + (u64)min(r0 + ib, rows - 1) * rb + a;
            ra[i] = buf + ia * STR + ((u64)pa & 15);
            rbp[i] = buf + ib * STR + ((u64)pb & 15);
        }
#pragma unroll
        for (int u = 0; u < UG; u++) {
            // gl: the group in the stage, written so that the compiler folds
            // a type's group-of-8 index and offsets into constants (w < MMQ_WARPS)
            const int gl = w + MMQ_WARPS * u, grp = ga + gl;
            if (grp >= gb) break;  // uniform per warp
            float sa0[RT], sb0[RT], sa1[RT], sb1[RT], ma[RT], mb[RT];
            int a0[RT][4], a1[RT][4];
            bool mins = false;
#pragma unroll
            for (int i = 0; i < RT; i++) {
                Q qa, qb;
                qa.load(ra[i], gl, c);
                qb.load(rbp[i], gl, c);
                sa0[i] = qa.s;
                sb0[i] = qb.s;
                ma[i] = qa.m;
                mb[i] = qb.m;
                sa1[i] = sb1[i] = 0.0f;
                a0[i][0] = qa.w0;
                a0[i][1] = qb.w0;
                a0[i][2] = qa.w1;
                a0[i][3] = qb.w1;
                mins |= qa.m != 0.0f || qb.m != 0.0f;
#pragma unroll
                for (int e = 0; e < 4; e++) a1[i][e] = 0;
                if (Q::SPLIT) {
                    const float oa = SHFL_XOR(sa0[i], 2), ob = SHFL_XOR(sb0[i], 2);
                    const bool h0 = c < 2;
                    sa1[i] = h0 ? oa : sa0[i];
                    sb1[i] = h0 ? ob : sb0[i];
                    sa0[i] = h0 ? sa0[i] : oa;
                    sb0[i] = h0 ? sb0[i] : ob;
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        a1[i][e] = h0 ? 0 : a0[i][e];
                        a0[i][e] = h0 ? a0[i][e] : 0;
                    }
                }
            }
#pragma unroll
            for (int j = 0; j < NT; j++) {
                int2 x0, x1;
                float dc, dd, xc = 0.0f, xe = 0.0f;
                if (PX) {
                    x0 = px0[PX ? u : 0][PX ? j : 0];
                    x1 = px1[PX ? u : 0][PX ? j : 0];
                    dc = pdc[PX ? u : 0][PX ? j : 0];
                    dd = pdd[PX ? u : 0][PX ? j : 0];
                    xc = pxc[PX ? u : 0][PX ? j : 0];
                    xe = pxe[PX ? u : 0][PX ? j : 0];
                } else {
                    const int tb = min(t0 + 8 * j + g, nt - 1);
                    const int2* xr = xq + ((u64)grp * nt + tb) * 8;
                    x0 = xr[kw0];
                    x1 = xr[kw1];
                    const int tc = min(t0 + 8 * j + 2 * c, nt - 1), td = min(t0 + 8 * j + 2 * c + 1, nt - 1);
                    dc = xd[(u64)grp * nt + tc];
                    dd = xd[(u64)grp * nt + td];
                    if (mins) {
                        xc = xs[(u64)grp * nt + tc];
                        xe = xs[(u64)grp * nt + td];
                    }
                }
#pragma unroll
                for (int i = 0; i < RT; i++) {
                    int hi[4] = {0, 0, 0, 0}, lo[4] = {0, 0, 0, 0};
                    mma_s8(hi, a0[i], x0.x, x1.x);
                    mma_s8(lo, a0[i], x0.y, x1.y);
                    float* o = acc[j][i];
                    o[0] += sa0[i] * dc * (float)(256 * hi[0] + lo[0]);
                    o[1] += sa0[i] * dd * (float)(256 * hi[1] + lo[1]);
                    o[2] += sb0[i] * dc * (float)(256 * hi[2] + lo[2]);
                    o[3] += sb0[i] * dd * (float)(256 * hi[3] + lo[3]);
                    if (Q::SPLIT) {
                        int h1[4] = {0, 0, 0, 0}, l1[4] = {0, 0, 0, 0};
                        mma_s8(h1, a1[i], x0.x, x1.x);
                        mma_s8(l1, a1[i], x0.y, x1.y);
                        o[0] += sa1[i] * dc * (float)(256 * h1[0] + l1[0]);
                        o[1] += sa1[i] * dd * (float)(256 * h1[1] + l1[1]);
                        o[2] += sb1[i] * dc * (float)(256 * h1[2] + l1[2]);
                        o[3] += sb1[i] * dd * (float)(256 * h1[3] + l1[3]);
                    }
                    if (mins) {
                        o[0] += ma[i] * xc;
                        o[1] += ma[i] * xe;
                        o[2] += mb[i] * xc;
                        o[3] += mb[i] * xe;
                    }
                }
            }
        }
    }
    cp_async_wait<0>();
    __syncthreads();
    // the warps' sums meet in the stage buffers, JC token tiles at a time
    float* red = (float*)sm;
    constexpr int PER = (MMQ_WARPS - 1) * RT * 4 * 32;  // floats of one token tile
    constexpr int JF = S::BYTES / 4 / PER, JC = JF >= NT ? NT : (JF >= 4 ? 4 : (JF >= 2 ? 2 : 1));
    static_assert(JF >= 1, "one token tile's sums fit");
#pragma unroll
    for (int jc = 0; jc < NT; jc += JC) {
        if (w > 0) {
#pragma unroll
            for (int j = 0; j < JC; j++) {
#pragma unroll
                for (int i = 0; i < RT; i++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) red[(((j * (MMQ_WARPS - 1) + w - 1) * RT + i) * 4 + e) * 32 + lane] = acc[jc + j][i][e];
                }
            }
        }
        __syncthreads();
        if (w == 0) {
#pragma unroll
            for (int j = 0; j < JC; j++) {
#pragma unroll
                for (int i = 0; i < RT; i++) {
#pragma unroll
                    for (int e = 0; e < 4; e++) {
                        float v = acc[jc + j][i][e];
#pragma unroll
                        for (int k = 0; k < MMQ_WARPS - 1; k++) v += red[(((j * (MMQ_WARPS - 1) + k) * RT + i) * 4 + e) * 32 + lane];
                        v *= Q::POST;
                        const int r = r0 + MMQ_ROWS * i + mma_drow(e, g), t = t0 + 8 * (jc + j) + mma_dcol(e, c);
                        if (r < rows && t < nt) {
                            float* o = y + (u64)t * rows + r;
                            *o = add ? *o + v : v;
                        }
                    }
                }
            }
        }
        __syncthreads();
    }
}

// mmq_<type>_<8 NT>: NT tiles of 8 tokens per block, on MMQ_RT_SMALL row
// tiles of 16 rows up to 16 tokens (their x fragments loaded once for all),
// on one above.
#define MMQ_KERNEL(T, s, NT)                                                                                         \
    KERNEL void __launch_bounds__(MMQ_WARPS * 32) mmq_##s##_##NT(const u8* W, const int2* xq, const float* xd,        \
                                                                 const float* xs, float* y, int rows, int cols, int nt, \
                                                                 int add) {                                            \
        mmq_staged<T, NT / 8, NT <= 16 ? MMQ_RT_SMALL : MMQ_RT_LARGE>(W, xq, xd, xs, y, rows, cols, nt, add);                 \
    }
#define MMQ_TYPE(T, s) MMQ_KERNEL(T, s, 8) MMQ_KERNEL(T, s, 16) MMQ_KERNEL(T, s, 32) MMQ_KERNEL(T, s, 64)
MMQ_TYPE(TQ4_0, q4_0)
MMQ_TYPE(TQ4_0X8, q4_0x8)
MMQ_TYPE(TQ4_1, q4_1)
MMQ_TYPE(TQ5_0, q5_0)
MMQ_TYPE(TQ5_0X4, q5_0x4)
MMQ_TYPE(TQ5_1, q5_1)
MMQ_TYPE(TQ8_0, q8_0)
MMQ_TYPE(TQ8_0X4, q8_0x4)
MMQ_TYPE(TQ4_K, q4_k)
MMQ_TYPE(TQ5_K, q5_k)
MMQ_TYPE(TQ6_K, q6_k)
#undef MMQ_TYPE
#undef MMQ_KERNEL
#endif
