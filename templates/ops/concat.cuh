// TASK_CONCAT: y = [a' | b'] along axis 0 (rows: the DFlash draft's context rows above its block
// rows) or axis 1 (columns: the verify graph's captured layers side by side), where an operand
// with a norm weight is first rms-normed per row (ir/src/ops/rms_norm.rs, rank 2):
//   a'[r, c] = norm_a[c] * (a[r, c] * inv_r),  inv_r = 1 / sqrt(sum_c a[r, c]^2 / Ca + eps_a)
// Units: columns of y (as the reference op, ir/src/ops/concat.rs). One warp per row of y: a
// normed row's sum of squares needs the whole source row, which one warp reads (from L2) and
// reduces in registers, so the op needs no shared memory whatever R is.
#pragma once

#include "common/memory.cuh"
#include "common/reduce.cuh"
#include "common/weights.cuh"

namespace mimo {

__device__ __noinline__ u32 run_concat(const KernelParams& p, const ConcatArgs& a, u32 unit_begin, u32 unit_end, u8*) {
    const u32 axis = a.axis;
    const u32 rows_a = a.rows[0], cols_a = a.cols[0], rows_b = a.rows[1], cols_b = a.cols[1];
    const u32 rows = axis == 0 ? rows_a + rows_b : rows_a;
    const u32 cols = axis == 0 ? cols_a : cols_a + cols_b;
    const u32 lane = lane_id();
    float* y = p.arena + a.y;
    for (u32 r = warp_id(); r < rows; r += kWarps) {
        // The operand rows this row of y takes columns from; on axis 1 both, split at cols_a.
        for (u32 side = 0; side < 2; ++side) {
            u32 src_row, c_lo, c_hi;  // y columns [c_lo, c_hi) come from row src_row of the operand
            if (axis == 0) {
                const bool in_a = r < rows_a;
                if ((side == 0) != in_a) continue;
                src_row = in_a ? r : r - rows_a;
                c_lo = 0;
                c_hi = cols;
            } else {
                src_row = r;
                c_lo = side == 0 ? 0u : cols_a;
                c_hi = side == 0 ? cols_a : cols;
            }
            const u32 lo = max_u32(unit_begin, c_lo), hi = min_u32(unit_end, c_hi);
            if (lo >= hi) continue;
            const u32 n = side == 0 ? cols_a : cols_b;  // the operand's row length
            const float* x = p.arena + a.src[side] + src_row * n;
            const u32 norm_weight = a.norm[side];
            float inv = 1.0f;
            WeightDesc nw = {};
            if (norm_weight != MIMO_NONE) {
                nw = weight_desc(p, norm_weight);
                float ssq = 0.0f;
                for (u32 c = lane; c < n; c += 32) {
                    const float v = ld_act_f32(x + c);
                    ssq = fmaf(v, v, ssq);
                }
                inv = 1.0f / sqrtf(warp_sum(ssq) / (float)n + a.eps[side]);
            }
            for (u32 c = lo + lane; c < hi; c += 32) {
                const u32 src_c = c - c_lo;
                float v = ld_act_f32(x + src_c);
                if (norm_weight != MIMO_NONE) v = weight_element(nw, 0, src_c) * (v * inv);
                st_f32(y + r * cols + c, v);
            }
        }
    }
    return kOk;
}

}  // namespace mimo
