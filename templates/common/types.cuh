// Scalar types and conversions shared by every op. No CUDA header is available under NVRTC, so
// bf16 / f16 live here as raw bits (u16) and are converted by bit manipulation or inline PTX.
#pragma once

#include "common/abi.cuh"

namespace mimo {

constexpr u32 kWarps = MIMO_THREADS / 32;
constexpr u32 kFullMask = 0xffffffffu;
static_assert(MIMO_THREADS % 32 == 0 && MIMO_THREADS >= 64, "whole warps, at least two");

constexpr u32 kTokens = MIMO_TOKENS;            // T, tokens per step
constexpr u32 kNTiles = (MIMO_TOKENS + 7) / 8;  // mma n-tiles of 8 token columns
static_assert(MIMO_TOKENS >= 1 && MIMO_TOKENS <= 16, "MIMO_TOKENS must be 1..16");

struct alignas(16) F32x4 {
    float x, y, z, w;
};

__device__ __forceinline__ u32 lane_id() { return threadIdx.x & 31u; }
__device__ __forceinline__ u32 warp_id() { return threadIdx.x >> 5; }

__device__ __forceinline__ u32 min_u32(u32 a, u32 b) { return a < b ? a : b; }
__device__ __forceinline__ u32 max_u32(u32 a, u32 b) { return a > b ? a : b; }
__device__ __forceinline__ u32 div_ceil(u32 a, u32 b) { return (a + b - 1) / b; }
__device__ __forceinline__ u32 round_up(u32 a, u32 b) { return div_ceil(a, b) * b; }

__device__ __forceinline__ float neg_inf() { return __uint_as_float(0xff800000u); }

// ---- bf16 (bits in a u16) ----

// Exact.
__device__ __forceinline__ float bf16_to_f32(u32 bits) { return __uint_as_float(bits << 16); }

// Round to nearest, ties to even (subnormals and overflow to infinity included); NaN stays a
// quiet NaN.
__device__ __forceinline__ u16 f32_to_bf16(float f) {
    u32 x = __float_as_uint(f);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (u16)((x >> 16) | 0x0040u);
    x += 0x7fffu + ((x >> 16) & 1u);
    return (u16)(x >> 16);
}

// Two floats to a bf16x2 register, `lo` in bits 0..15 (the lower k / column), each rounded to
// nearest even. One instruction; same rounding as f32_to_bf16 (NaN payloads aside).
__device__ __forceinline__ u32 pack_bf16x2(float lo, float hi) {
#ifdef MIMO_EMU
    // The emulator's cvt.rn.bf16x2.f32 takes PTX's operands in PTX's order (d, a, b).
    return mimo_emu::cvt_rn_bf16x2_f32(hi, lo);
#else
    u32 d;
    // cvt.rn.bf16x2.f32 d, a, b puts a in the upper half and b in the lower half.
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(d) : "f"(hi), "f"(lo));
    return d;
#endif
}

// The low / high bf16 of a bf16x2 register, as f32 (exact).
__device__ __forceinline__ float bf16x2_lo(u32 v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16x2_hi(u32 v) { return __uint_as_float(v & 0xffff0000u); }

// Elementwise bf16x2 product, rounded to nearest even; subnormal inputs and results are kept
// (no flush to zero: the FP4 decode below relies on it).
__device__ __forceinline__ u32 mul_bf16x2(u32 a, u32 b) {
#ifdef MIMO_EMU
    return mimo_emu::mul_rn_bf16x2(a, b);
#else
    u32 d;
    asm("mul.rn.bf16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
    return d;
#endif
}

// ---- f16 (bits in a u16) ----

__device__ __forceinline__ float f16_to_f32(u32 bits) {
#ifdef MIMO_EMU
    return mimo_emu::cvt_f32_f16((unsigned short)bits);
#else
    float f;
    const unsigned short h = (unsigned short)bits;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

// f16x2 register to bf16x2 (each half through f32, so rounded once, to nearest even).
__device__ __forceinline__ u32 f16x2_to_bf16x2(u32 v) {
    return pack_bf16x2(f16_to_f32(v & 0xffffu), f16_to_f32(v >> 16));
}

// ---- accurate scalar math without local memory ----

// sin and cos of a float angle, within about 1 ulp for |x| up to 2^24 (RoPE angles are
// position * inv_freq). sincosf's large-argument path uses local memory, so the argument is
// reduced by pi/2 in double precision here and the polynomials run on |r| <= pi/4.
__device__ __forceinline__ void sincos_f32(float x, float* s_out, float* c_out) {
    const double xd = (double)x;
    const double q = rint(xd * 0.63661977236758134308);        // 2 / pi
    double r = fma(-q, 1.5707963267948965580e+00, xd);           // pi/2, high part
    r = fma(-q, 6.1232339957367658e-17, r);                      // pi/2, low part
    const float rf = (float)r;
    const float r2 = rf * rf;
    // Cephes sinf / cosf minimax polynomials on [-pi/4, pi/4].
    const float sp = fmaf(fmaf(fmaf(-1.9515295891e-4f, r2, 8.3321608736e-3f), r2, -1.6666654611e-1f),
                          r2 * rf, rf);
    const float cp = fmaf(fmaf(fmaf(2.443315711809948e-5f, r2, -1.388731625493765e-3f), r2,
                               4.166664568298827e-2f),
                          r2 * r2, fmaf(-0.5f, r2, 1.0f));
    const int quadrant = (int)((long long)q & 3);
    const float s = (quadrant & 1) ? cp : sp;
    const float c = (quadrant & 1) ? sp : cp;
    *s_out = (quadrant & 2) ? -s : s;
    *c_out = ((quadrant + 1) & 2) ? -c : c;
}

// x * sigmoid(x) as the reference writes it: x / (1 + exp(-x)).
__device__ __forceinline__ float silu(float x) { return x / (1.0f + expf(-x)); }

}  // namespace mimo
