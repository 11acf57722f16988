// The dense projections of one (optionally rms-normed) input x [R, K], R rows of any count, run
// T = MIMO_TOKENS rows at a time ("row blocks"; each block reads the tile's weight rows again,
// from L2 after the first):
//
// TASK_NORM_MATMUL: up to 3 projections over the concatenation of their output features:
//   h = norm ? rms_norm(x, norm_w, eps) : x;   out_i[r, n] = sum_k h[r, k] * w_i[n, k]
// (the norm's 1/rms is applied to the dot products, see RowNorm in common/project.cuh).
// A tile's units are features of [0, N0) ++ [0, N1) ++ [0, N2); a 16-row group never straddles
// two weights (each weight's part of the tile is cut into its own groups).
//
// TASK_DENSE_GATE_UP: a dense SwiGLU's gate and up projections, as two terms of each group
// (planes 0 and 1, as the routed experts' gate/up), and the activation of their sums:
//   act[r, n] = silu(h[r, :] . gate[n, :]) * (h[r, :] . up[n, :])
//
// TASK_MATMUL_RESIDUAL: one projection and the residual add:
//   out[r, n] = residual[r, n] + x[r, :] . w[n, :]
//
// Without a norm and without the activation, K may exceed what fits in shared memory (the DFlash
// draft's fc reads 5 target layers' features, K = 5 H): the reduction then runs in k-slabs
// (multiples of 256 wide), each slab's sums added into `out`, the residual with the last. The
// norm needs its row's whole sum of squares and silu its whole sums, so those run in one slab
// (a K that does not fit stops the kernel with the bytes it needs).
#pragma once

#include "common/project.cuh"

namespace mimo {

// The projection mapping (see common/project.cuh) of all three kinds. Lives in shared memory
// (ProjPlan::map).
struct NormMatmulMap {
    const KernelParams* p;
    const DenseProjectionArgs* a;
    u32 row0[3];   // weight i's first row in this tile
    u32 rows[3];   // weight i's rows in this tile
    u32 first[3];  // weight i's first group
    RowNorm norm;
    u32 kind;        // TASK_NORM_MATMUL, TASK_DENSE_GATE_UP or TASK_MATMUL_RESIDUAL
    u32 tok0, ntok;  // the row block: x rows tok0 .. tok0 + ntok (1 <= ntok <= T)
    bool first_slab, last_slab;

    __device__ u32 segment(u32 group) const { return group >= first[2] ? 2u : (group >= first[1] ? 1u : 0u); }
    __device__ u32 group_row0(u32 group) const {
        const u32 s = segment(group);
        return row0[s] + 16u * (group - first[s]);
    }
    __device__ u32 group_rows(u32 group) const {
        const u32 s = segment(group);
        return min_u32(16u, row0[s] + rows[s] - group_row0(group));
    }
    __device__ Term term(u32 group, u32 t) const {
        Term tm;
        // Gate/up: one weight per term (the same rows of both); otherwise one per segment.
        tm.weight = a->w[kind == TASK_DENSE_GATE_UP ? t : segment(group)];
        tm.row0 = group_row0(group);
        tm.nrows = group_rows(group);
        tm.plane = t;
        return tm;
    }
    // B rows ntok .. T-1 are staged as zeros, so the columns past the block's rows (which emit()
    // drops) read defined values; the bound stays the compile-time T, which keeps the address
    // arithmetic of the inner loop constant (T = 1: row 0).
    __device__ u32 b_row(u32, u32, u32 n) const { return min_u32(n, kTokens - 1); }
    __device__ float col_scale(u32, u32, u32 n) const { return norm.scale(min_u32(n, kTokens - 1)); }
    __device__ void emit(u32 group, u32 row, u32 n, float v0, float v1) const {
        if (n >= ntok) return;
        const u32 s = segment(group);
        const u32 i = (tok0 + n) * a->n[s] + group_row0(group) + row;
        float* out = p->arena + a->out[s] + i;
        if (kind == TASK_DENSE_GATE_UP) {
            st_f32(out, silu(v0) * v1);
            return;
        }
        // Each element is emitted by one thread per slab; a later slab may read it back on
        // another warp, after the barrier that ends every slab (run_dense_projection).
        if (!first_slab) v0 = ld_act_f32(out) + v0;
        if (last_slab && kind == TASK_MATMUL_RESIDUAL) v0 = ld_act_f32(p->arena + a->residual + i) + v0;
        st_f32(out, v0);
    }
};

// The body of the three kinds (`kind` says which).
__device__ __noinline__ u32 run_dense_projection(const KernelParams& p, const DenseProjectionArgs& a, u32 kind, u32 unit_begin,
                                                 u32 unit_end, u8* smem) {
    const u32 K = a.k, R = a.rows;
    const bool one_slab = a.norm != MIMO_NONE || kind == TASK_DENSE_GATE_UP;
    Carve cv = {smem, smem + MIMO_SMEM_BYTES};
    float* red = cv.take<float>(kWarps * kTokens);

    // The widest k-slab whose T staged rows fit beside the split-group slots: all of K, else a
    // multiple of kCellK (as expert_down's).
    const u32 slots_bytes = kSlotFloats * 4u;
    const u32 avail = cv.left() > slots_bytes ? cv.left() - slots_bytes : 0u;
    u32 slab = K;
    if (kTokens * stage_stride_bytes(K) > avail) {
        const u32 granules = avail / (16u * kTokens);  // per row, including the 2 of padding
        slab = granules > 2u ? ((granules - 2u) * 8u) / kCellK * kCellK : 0u;
        if (one_slab || slab == 0)
            return cv.used(smem) + slots_bytes + kTokens * stage_stride_bytes(one_slab ? K : kCellK);
    }
    Pass pass;
    const u32 status = carve_pass(cv, smem, kTokens, slab, pass);
    if (status != kOk) return status;

    const float* x = p.arena + a.x;
    for (u32 tok0 = 0; tok0 < R; tok0 += kTokens) {
        const u32 ntok = min_u32(kTokens, R - tok0);
        for (u32 k_lo = 0; k_lo < K; k_lo += slab) {
            const u32 k_hi = min_u32(K, k_lo + slab);
            RowNorm norm = {nullptr, K, 0.0f};
            if (slab == K) {
                norm = stage_normed_rows(p, x + tok0 * K, K, a.norm, a.eps, pass.stage, red, ntok);
            } else {
                stage_rows(pass.stage, kTokens, k_hi - k_lo, [&](u32 row, u32 k) {
                    return row < ntok ? ld_act_f32(x + (tok0 + row) * K + k_lo + k) : 0.0f;
                });
            }
            if (threadIdx.x == 0) {
                NormMatmulMap map;
                map.p = &p;
                map.a = &a;
                map.norm = norm;
                map.kind = kind;
                map.tok0 = tok0;
                map.ntok = ntok;
                map.first_slab = k_lo == 0;
                map.last_slab = k_hi == K;
                // Weight i owns units [off, off + N_i) of the concatenation; the other kinds
                // have one segment (gate/up: both weights' rows of the tile's features).
                const u32 weights = kind == TASK_NORM_MATMUL ? 3u : 1u;
                u32 off = 0, groups = 0;
                for (u32 i = 0; i < 3; ++i) {
                    const u32 N = i < weights && a.out[i] != MIMO_NONE ? a.n[i] : 0u;
                    const u32 lo = max_u32(unit_begin, off), hi = min_u32(unit_end, off + N);
                    map.row0[i] = hi > lo ? lo - off : 0u;
                    map.rows[i] = hi > lo ? hi - lo : 0u;
                    map.first[i] = groups;
                    groups += div_ceil(map.rows[i], 16u);
                    off += N;
                }
                proj_plan.kind = kind;
                proj_plan.groups = groups;
                proj_plan.terms = kind == TASK_DENSE_GATE_UP ? 2u : 1u;
                proj_plan.pass = pass;
                proj_plan.pass.k_lo = k_lo;
                proj_plan.pass.k_hi = k_hi;
                set_plan_map(proj_plan, map);
            }
            __syncthreads();
            run_projection(p, proj_plan);
            // The next slab or row block rewrites the staged rows, `red`, the slots and the plan,
            // and reads `out` back.
            __syncthreads();
        }
    }
    return kOk;
}

__device__ __noinline__ u32 run_norm_matmul(const KernelParams& p, const DenseProjectionArgs& a, u32 unit_begin, u32 unit_end,
                                            u8* smem) {
    return run_dense_projection(p, a, TASK_NORM_MATMUL, unit_begin, unit_end, smem);
}

__device__ __noinline__ u32 run_dense_gate_up(const KernelParams& p, const DenseProjectionArgs& a, u32 unit_begin, u32 unit_end,
                                              u8* smem) {
    return run_dense_projection(p, a, TASK_DENSE_GATE_UP, unit_begin, unit_end, smem);
}

__device__ __noinline__ u32 run_matmul_residual(const KernelParams& p, const DenseProjectionArgs& a, u32 unit_begin, u32 unit_end,
                                                u8* smem) {
    return run_dense_projection(p, a, TASK_MATMUL_RESIDUAL, unit_begin, unit_end, smem);
}

}  // namespace mimo
