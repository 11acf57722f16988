// FP4 weights (OCP Microscaling MXFP4, NVIDIA NVFP4; decoded as ir/src/formats/ does): E2M1
// codes packed two per byte (element 2j in the low nibble of byte j), with MXFP4's E8M0 block
// scales (32 elements) or NVFP4's E4M3 block scales (16 elements) and f32 tensor scale.
//
// Scalar decodes return exact f32 values. The tensor-core path decodes two codes at once into a
// bf16x2 register by placing the code's bits into the bf16 fields (Marlin-style):
//   bf16 bits = sign << 15 | (code & 7) << 6   ==   e2m1(code) * 2^-126   exactly,
// because the 2 exponent bits of E2M1 land in the lowest bf16 exponent bits and its mantissa bit
// in the top mantissa bit (codes 0 and 1, the E2M1 zero and subnormal 0.5, become bf16 zero and
// the bf16 subnormal 2^-127). One bf16x2 multiply by the block scale (times 2^126) then gives the
// exact dequantised value: every MXFP4 value e2m1 * 2^(s-127) is a bf16 value (bf16 has f32's
// exponent range), and every NVFP4 product e2m1 * e4m3 has at most 6 significant bits.
#pragma once

#include "common/types.cuh"

namespace mimo {

// ---- scalar decodes (exact) ----

// E2M1 code (low 4 bits) to f32: 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
__device__ __forceinline__ float e2m1_to_f32(u32 code) {
    // (code & 7) << 22 is e2m1 * 2^-126 as an f32 (subnormal for codes 0 and 1); scaling by
    // 2^126 is exact.
    return __uint_as_float(((code & 8u) << 28) | ((code & 7u) << 22)) * 0x1p126f;
}

// E8M0 scale byte to 2^(s-127); 255 is NaN. s = 0 gives the f32 subnormal 2^-127.
__device__ __forceinline__ float e8m0_to_f32(u32 s) {
    if (s == 255u) return __uint_as_float(0x7fc00000u);
    if (s == 0u) return __uint_as_float(0x00400000u);
    return __uint_as_float(s << 23);
}

// E4M3 (OCP "E4M3FN": bias 7, no infinities, 0x7f / 0xff NaN, max 448) to f32. Branch-free:
// the 7 magnitude bits placed at f32 bits 20..26 are e4m3 * 2^-120 (an f32 subnormal for the
// E4M3 subnormals), and scaling by 2^120 is exact.
__device__ __forceinline__ float e4m3_to_f32(u32 code) {
    const float v = __uint_as_float(((code & 0x80u) << 24) | ((code & 0x7fu) << 20)) * 0x1p120f;
    return (code & 0x7fu) == 0x7fu ? __uint_as_float(0x7fc00000u) : v;
}

// ---- tensor-core decode: two codes to bf16x2 ----

// The two codes of byte `byte` (0..3) of `word` as bf16x2 (low nibble -> low half), each
// e2m1 * 2^-126. prmt puts the low nibble in bits 12..15 (taken from word << 4) and the high
// nibble in bits 28..31; the sign bits are then in place and the 3 magnitude bits shift down
// by 6. `byte` is a constant after unrolling, so the selector becomes an immediate.
__device__ __forceinline__ u32 e2m1x2_to_bf16x2_scaled(u32 word, u32 byte) {
#ifdef MIMO_EMU
    const u32 t = mimo_emu::prmt_b32(word, word << 4, (byte << 12) | ((4u + byte) << 4));
    return (t & 0x80008000u) | ((t >> 6) & 0x01c001c0u);
#else
    u32 t;
    asm("prmt.b32 %0, %1, %2, %3;" : "=r"(t) : "r"(word), "r"(word << 4), "r"((byte << 12) | ((4u + byte) << 4)));
    return (t & 0x80008000u) | ((t >> 6) & 0x01c001c0u);
#endif
}

// bf16x2 factors that turn e2m1 * 2^-126 into the dequantised value with one multiply.
// MXFP4: 2^(s-127) * 2^126 = 2^(s-1), a normal bf16 for s <= 128 (block maxima below 16).
// Larger scales need two multiplies (see mxfp4_factor_hi / the caller's slow path).
__device__ __forceinline__ u32 mxfp4_factor_fast(u32 s) {
    const u32 b = (s + 126u) << 7;
    return b | (b << 16);
}
// Two-multiply form, exact for every s: first 2^126, then 2^(s-127) (s = 0: the bf16
// subnormal 2^-127; s = 255: NaN).
constexpr u32 kBf16x2Pow126 = 0x7e807e80u;
__device__ __forceinline__ u32 mxfp4_factor_exact(u32 s) {
    const u32 b = s == 255u ? 0x7fc0u : (s == 0u ? 0x0040u : (s << 7));
    return b | (b << 16);
}
// NVFP4: e4m3 * 2^126 would overflow bf16 for scales above 4, so the factor is e4m3 * 2^118 and
// the caller multiplies the f32 dot product by tensor_scale * 2^8. Exact: at most 4 significant
// bits, and 2^118 * [2^-9, 448] is inside the normal bf16 range.
constexpr float kNvfp4PostScale = 256.0f;
__device__ __forceinline__ u32 nvfp4_factor(u32 code) {
    const float v = __uint_as_float(((code & 0x80u) << 24) | ((code & 0x7fu) << 20)) * 0x1p119f * 0x1p119f;
    const u32 b = (code & 0x7fu) == 0x7fu ? 0x7fc0u : __float_as_uint(v) >> 16;
    return b | (b << 16);
}

}  // namespace mimo
