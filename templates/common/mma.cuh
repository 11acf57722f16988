// Warp-level tensor-core MMA: mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32.
//
// D[16x8] += A[16x16] * B[16x8], bf16 inputs, f32 accumulation. Lane = 4 * g + c (g = lane / 4,
// c = lane % 4) holds (PTX ISA "Matrix Fragments for mma.m16n8k16"):
//   A: a[0] = (row g,     k 2c, 2c+1)   a[1] = (row g + 8, k 2c, 2c+1)
//      a[2] = (row g,     k 2c+8, 2c+9) a[3] = (row g + 8, k 2c+8, 2c+9)
//   B: b[0] = (k 2c, 2c+1;   column g)  b[1] = (k 2c+8, 2c+9; column g)
//   C: c[0], c[1] = (row g, columns 2c, 2c+1)   c[2], c[3] = (row g + 8, columns 2c, 2c+1)
// (each bf16x2 register holds the lower k in its low half).
//
// The reduction runs over all 16 k slots, so any one-to-one map from slots to real k indices
// works, as long as A and B use the same one. The projections use: lane c's slots
// {2c, 2c+1, 2c+8, 2c+9} are four consecutive real k's (k0, k0+1, k0+2, k0+3), so a lane's A
// pairs come from one contiguous 16-byte weight load and its B pair from one 8-byte shared load.
//
// Projections put the weights on the M side ("swap AB"): M = 16 output features, N = 8 tokens
// (padded), K = the reduction.
//
// Native FP4 (Blackwell) goes here. Hopper has no FP4 tensor-core instruction, so project.cuh's
// MXFP4 path decodes E2M1 codes and E8M0 scales to bf16 in registers (step_pairs) and calls
// mma_bf16_16816. On sm_100 / sm_120 that decode disappears: a wrapper beside this one, selected
// with `#if __CUDA_ARCH__ >= 1000`, feeds the packed codes and the scales directly to
// `tcgen05.mma.cta_group::1.kind::mxf4nvf4.block_scale` (sm_100, operands in tensor memory) or
// `mma.sync.aligned.m16n8k64.row.col.kind::mxf4.block_scale.scale_vec::2X...e2m1...ue8m0` (sm_120).
// The weight layout the loads already use (codes packed along k, element 2j in the low nibble,
// one scale byte per 32 k) is the one those instructions consume.
#pragma once

#include "common/types.cuh"

namespace mimo {

__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
#ifdef MIMO_EMU
    mimo_emu::mma_m16n8k16_row_col_f32_bf16_bf16_f32(d, a, b0, b1);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
}

// Which accumulator element of a C fragment is (row, column) for this lane.
__device__ __forceinline__ u32 frag_row(u32 i) { return (lane_id() >> 2) + 8u * (i >> 1); }
__device__ __forceinline__ u32 frag_col(u32 i) { return 2u * (lane_id() & 3u) + (i & 1u); }

}  // namespace mimo
