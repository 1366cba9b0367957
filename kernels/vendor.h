// vendor.h: the one place where HIP (AMD) and CUDA (NVIDIA) differ. Every
// kernel file includes this and is otherwise written once.
//   - warp size: WARP_SIZE is 32 on NVIDIA and RDNA (wave32), 64 on CDNA
//     (wave64), taken from the compiler's own constant;
//   - shuffles: CUDA's *_sync forms take a mask, HIP's take none;
//   - half floats: stored as u16 bit patterns everywhere; h2f/f2h convert
//     with the vendor's instruction (no cuda_fp16.h / hip_fp16.h needed, so
//     NVRTC and hipRTC compile this without any include path);
//   - FORGE_HOST_TEST: a host C++ build of the arithmetic headers, for
//     tests that check kernel math without a GPU (tests/kernel_math.rs).
#pragma once

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;

#if defined(FORGE_HOST_TEST)
// Host C++ build of the arithmetic headers (quant.h, iquant.h) for
// tests/kernel_math.rs: no kernels, no warps; just enough to compile them.
#include <math.h>
#include <string.h>
#define __device__
#define __forceinline__ inline
#define __constant__
#define WARP_SIZE 32
struct int2 { int x, y; };
struct uint2 { u32 x, y; };
struct uint4 { u32 x, y, z, w; };
struct float4 { float x, y, z, w; };
static inline float __uint_as_float(u32 u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline float h2f(u16 h) {
    const int e = (h >> 10) & 31, m = h & 1023;
    const float v = e == 0 ? ldexpf((float)m, -24) : e == 31 ? (m ? NAN : INFINITY) : ldexpf((float)(m | 1024), e - 25);
    return (h >> 15) ? -v : v;
}
#elif defined(__HIPCC__) || defined(__HIPCC_RTC__) || defined(__HIP__)
#define FORGE_HIP 1
#if !defined(__HIPCC_RTC__)
#include <hip/hip_runtime.h>
#endif
#if defined(__AMDGCN_WAVEFRONT_SIZE)
#define WARP_SIZE __AMDGCN_WAVEFRONT_SIZE
#else
#define WARP_SIZE 64
#endif
#define SHFL_XOR(v, m) __shfl_xor((v), (m), WARP_SIZE)
#define SHFL(v, src) __shfl((v), (src), WARP_SIZE)
// order shared-memory writes of a wavefront before its own later reads
#define SYNC_WARP()                                                 \
    do {                                                            \
        __builtin_amdgcn_fence(__ATOMIC_RELEASE, "wavefront");      \
        __builtin_amdgcn_wave_barrier();                            \
        __builtin_amdgcn_fence(__ATOMIC_ACQUIRE, "wavefront");      \
    } while (0)
static __device__ __forceinline__ float h2f(u16 h) {
    _Float16 f;
    __builtin_memcpy(&f, &h, 2);
    return (float)f;
}
static __device__ __forceinline__ u16 f2h(float x) {
    _Float16 f = (_Float16)x;
    u16 h;
    __builtin_memcpy(&h, &f, 2);
    return h;
}
#else
#define FORGE_CUDA 1
#define WARP_SIZE 32
#define SHFL_XOR(v, m) __shfl_xor_sync(0xffffffffu, (v), (m), 32)
#define SHFL(v, src) __shfl_sync(0xffffffffu, (v), (src), 32)
#define SYNC_WARP() __syncwarp()
static __device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
static __device__ __forceinline__ u16 f2h(float x) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(x));
    return h;
}
#endif

#define KERNEL extern "C" __global__

#if !defined(FORGE_HOST_TEST)
// pack_h2(lo, hi): two floats as an f16 pair (lo in the low half)
static __device__ __forceinline__ u32 pack_h2(float lo, float hi) { return (u32)f2h(lo) | ((u32)f2h(hi) << 16); }
// split_h(v): v as two f16, v ≈ hi + lo / F16_SPLIT_SCALE to about 22 bits
// (the BLAS products' split activations: ops::X16; the second product
// takes alpha 1 / F16_SPLIT_SCALE, so lo stays a normal f16 where v does)
#define F16_SPLIT_SCALE 2048.0f
static __device__ __forceinline__ void split_h(float v, u16* hi, u16* lo) {
    const u16 h = f2h(v);
    const float r = h2f(h);
    *hi = h;
    // past f16's range hi is ±inf, as f16 alone gives; lo adds nothing then
    // (v - inf would make the second product's sum NaN)
    *lo = f2h(fabsf(r) <= 65504.0f ? (v - r) * F16_SPLIT_SCALE : 0.0f);
}
#endif

// GRID_START(): the first statement of every kernel (after PREFETCH_L2 of
// weights at most). NVIDIA sm_90+: kernels are launched as programmatic
// dependents of the kernel before them in the stream (cuda adapter), so a
// kernel's blocks may start while that kernel finishes; this waits until its
// writes are visible, then lets the next kernel's blocks start launching.
// Before it a kernel may only read data no kernel writes (weights) and must
// write nothing. Elsewhere (older NVIDIA, AMD) both are no-ops.
#if defined(FORGE_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define GRID_START() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#define PREFETCH_L2(p) asm volatile("prefetch.global.L2 [%0];" ::"l"(p))
#else
#define GRID_START() \
    do {             \
    } while (0)
#define PREFETCH_L2(p) ((void)(p))
#endif
// Tensor cores for f16 (NVIDIA sm_80+): HAS_MMA_F16, and
//   mma16816(d, a, b0, b1): d (16x8 f32) += a (16x16 f16, row-major: four
//     f16 pairs per lane) * b (16x8 f16, column-major: two pairs per lane),
//     PTX mma.sync.m16n8k16; lane l holds rows l / 4 (+ 8), columns 2 (l %
//     4) (+ 1, + 8) of a, rows 2 (l % 4) (+ 1, + 8), column l / 4 of b, and
//     rows l / 4 (+ 8), columns 2 (l % 4) (+ 1) of d;
//   ldsm_t2(row, b0, b1): b from a 16x8 block of f16 stored row-major in
//     shared memory (lanes 0-15 pass the addresses of rows 0-15, 16-byte
//     aligned), transposed on the way (ldmatrix.trans); ldsm_t4 (two
//     such b a load), ldsm4 (not transposed) and ex2_approx (2^x on the
//     special-function unit alone) below.
// Kernels using them exist only where HAS_MMA_F16 is defined; the launcher
// takes them only there (AMD's matrix cores, MFMA/WMMA, are not used yet).
#if defined(FORGE_CUDA) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
#define HAS_MMA_F16 1
// the row (of 16) and column (of 8) of lane (g = l / 4, c = l % 4)'s sum e
// (0 .. 3) in an mma's d tile, for mma16816 and mma_s8 alike
static __device__ __forceinline__ int mma_drow(int e, int g) { return g + (e & 2 ? 8 : 0); }
static __device__ __forceinline__ int mma_dcol(int e, int c) { return 2 * c + (e & 1); }
static __device__ __forceinline__ void mma16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
// the shared-memory address of a generic pointer into shared memory
static __device__ __forceinline__ u32 smem_addr(const void* p) {
    u32 a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
static __device__ __forceinline__ void ldsm_t2(const void* row, u32& b0, u32& b1) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];" : "=r"(b0), "=r"(b1) : "r"(smem_addr(row)) : "memory");
}
// ldsm_t4(row, r): two such b, for columns 0-7 (r[0], r[1]) and 8-15
// (r[2], r[3]) of a 16x16 block (lanes 16-31 pass rows 0-15 of the second
// 8 columns): ldmatrix.x4.trans
static __device__ __forceinline__ void ldsm_t4(const void* row, u32 (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)) : "memory");
}
// ex2_approx(x): 2^x by the special-function unit alone (ex2.approx.ftz:
// no range fix-ups, results below 2^-126 flushed to 0; 2^-inf = 0)
static __device__ __forceinline__ float ex2_approx(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}
// ldsm4(row, r): four 8 x 8 blocks of f16 from shared memory, not
// transposed (ldmatrix.x4): lanes 8i .. 8i + 7 pass block i's row
// addresses (16-byte aligned); lane l gets row l / 4, columns 2 (l % 4)
// (+ 1) of block i in r[i] (an mma16816 b0 / b1 for a row-major x tile)
static __device__ __forceinline__ void ldsm4(const void* row, u32 (&r)[4]) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_addr(row)) : "memory");
}
// cp_async16(s, g): copy 16 bytes global -> shared (both 16-byte aligned)
// without waiting (cp.async, sm_80+); cp_async_commit closes a group of
// copies, cp_async_wait<N> waits until at most N groups are in flight.
static __device__ __forceinline__ void cp_async16(void* s, const void* g) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(smem_addr(s)), "l"(g) : "memory");
}
// cp_async16s: the same to a shared-memory address (smem_addr), for a
// kernel that works out its shared addresses once
static __device__ __forceinline__ void cp_async16s(u32 s, const void* g) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(g) : "memory");
}
static __device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
static __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}
// mma_s8(d, a, b0, b1): d (16x8 i32) += a (16x32 i8, row-major) * b (32x8
// i8, column-major), PTX mma.sync.m16n8k32; lane l holds 4 bytes each of
// a's rows l / 4 (a0, a2) and l / 4 + 8 (a1, a3) at columns 4 (l % 4)
// (a0, a1) and 16 + 4 (l % 4) (a2, a3), of b's column l / 4 at rows 4 (l %
// 4) (b0) and 16 + 4 (l % 4) (b1), and d as mma16816 does.
static __device__ __forceinline__ void mma_s8(int (&d)[4], const int (&a)[4], int b0, int b1) {
    asm("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
#endif
// Register budget: at most `threads` per block and, on NVIDIA, enough
// registers left for `blocks` resident blocks per SM (AMD takes the first).
#if defined(FORGE_HIP)
#define BOUNDS(threads, blocks) __launch_bounds__(threads)
#else
#define BOUNDS(threads, blocks) __launch_bounds__(threads, blocks)
#endif
#define NEG_INF (-3.0e38f)

static __device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }

// DP4A(a, b, c): c + the dot product of the four signed bytes of a and b.
// NVIDIA: dp4a (sm_61 and later); AMD: v_dot4_i32_i8 where the chip has it
// (gfx906/908/90a/94x, gfx1030), else four multiplies.
static __device__ __forceinline__ int dp4a_bytes(int a, int b, int c) {
#pragma unroll
    for (int k = 0; k < 32; k += 8) c += (int)(i8)(a >> k) * (int)(i8)(b >> k);
    return c;
}
#if defined(FORGE_HOST_TEST)
#define DP4A(a, b, c) dp4a_bytes((a), (b), (c))
#elif defined(FORGE_HIP)
#if defined(__gfx906__) || defined(__gfx908__) || defined(__gfx90a__) || defined(__gfx940__) || defined(__gfx941__) || \
    defined(__gfx942__) || defined(__gfx1030__)
#define DP4A(a, b, c) __builtin_amdgcn_sdot4((a), (b), (c), false)
#else
#define DP4A(a, b, c) dp4a_bytes((a), (b), (c))
#endif
#else
static __device__ __forceinline__ int dp4a_ptx(int a, int b, int c) {
#if __CUDA_ARCH__ >= 610
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
#else
    return dp4a_bytes(a, b, c);
#endif
}
#define DP4A(a, b, c) dp4a_ptx((a), (b), (c))
#endif

// A 16-bit load, and a 32-bit value from two 16-bit loads, at addresses known
// to be 2-byte aligned (the odd-sized blocks of q4_0, q5_0, q8_0, q6_k).
static __device__ __forceinline__ u32 ld16a(const u8* p) { return *(const u16*)p; }
static __device__ __forceinline__ u32 ld32a2(const u8* p) { return ld16a(p) | (ld16a(p + 2) << 16); }

#if !defined(FORGE_HOST_TEST)
static __device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) v += SHFL_XOR(v, m);
    return v;
}

static __device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int m = WARP_SIZE / 2; m > 0; m >>= 1) v = fmaxf(v, SHFL_XOR(v, m));
    return v;
}

// Sum (MAX: maximum) over the block; every thread gets the result. `red`
// holds one float per warp (at most 32 warps). blockDim.x must be a
// multiple of WARP_SIZE.
template <bool MAX>
static __device__ __forceinline__ float block_reduce(float v, float* red) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int nwarps = blockDim.x / WARP_SIZE;
    v = MAX ? warp_max(v) : warp_sum(v);
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = lane < nwarps ? red[lane] : (MAX ? NEG_INF : 0.0f);
    return MAX ? warp_max(v) : warp_sum(v);
}
static __device__ __forceinline__ float block_sum(float v, float* red) { return block_reduce<false>(v, red); }
static __device__ __forceinline__ float block_max(float v, float* red) { return block_reduce<true>(v, red); }

// A load of data other blocks of this kernel wrote (after __threadfence()):
// from L2, past this SM's L1 (NVIDIA: ld.global.cg). On AMD the fence's
// acquire side already invalidated the L1, so a plain load does.
#if defined(FORGE_HIP)
static __device__ __forceinline__ float ld_cg(const float* p) { return *p; }
#else
static __device__ __forceinline__ float ld_cg(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p));
    return v;
}
#endif

#endif  // !FORGE_HOST_TEST

static __device__ __forceinline__ u16 ld16(const u8* p) { return (u16)p[0] | ((u16)p[1] << 8); }
static __device__ __forceinline__ u32 ld32(const u8* p) {
    return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}
