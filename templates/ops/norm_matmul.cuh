// TASK_NORM_MATMUL: up to 3 projections of one (optionally rms-normed) input, over the
// concatenation of their output features:
//   h = norm ? rms_norm(x, norm_w, eps) : x;   out_i[t, n] = sum_k h[t, k] * w_i[n, k]
// (the norm's 1/rms is applied to the dot products, see RowNorm in common/project.cuh).
// A tile's units are features of [0, N0) ++ [0, N1) ++ [0, N2); a 16-row group never straddles
// two weights (each weight's part of the tile is cut into its own groups).
#pragma once

#include "common/project.cuh"

namespace mimo {

// The projection mapping (see common/project.cuh). Lives in shared memory (ProjPlan::map).
struct NormMatmulMap {
    const KernelParams* p;
    const OpArgs* a;
    u32 row0[3];   // weight i's first row in this tile
    u32 rows[3];   // weight i's rows in this tile
    u32 first[3];  // weight i's first group
    RowNorm norm;

    __device__ u32 segment(u32 group) const { return group >= first[2] ? 2u : (group >= first[1] ? 1u : 0u); }
    __device__ u32 group_row0(u32 group) const {
        const u32 s = segment(group);
        return row0[s] + 16u * (group - first[s]);
    }
    __device__ u32 group_rows(u32 group) const {
        const u32 s = segment(group);
        return min_u32(16u, row0[s] + rows[s] - group_row0(group));
    }
    __device__ Term term(u32 group, u32) const {
        Term t;
        t.weight = a->weights[1 + segment(group)];
        t.row0 = group_row0(group);
        t.nrows = group_rows(group);
        t.plane = 0;
        return t;
    }
    __device__ u32 b_row(u32, u32, u32 n) const { return min_u32(n, kTokens - 1); }
    __device__ float col_scale(u32, u32, u32 n) const { return norm.scale(min_u32(n, kTokens - 1)); }
    __device__ void emit(u32 group, u32 row, u32 n, float v, float) const {
        const u32 s = segment(group);
        st_f32(p->arena + a->values[1 + s] + n * a->dims[1 + s] + group_row0(group) + row, v);
    }
};

__device__ __noinline__ u32 run_norm_matmul(const KernelParams& p, const OpArgs& a, u32 unit_begin, u32 unit_end,
                                            u8* smem) {
    const u32 K = a.dims[0];
    Carve cv = {smem, smem + MIMO_SMEM_BYTES};
    float* red = cv.take<float>(kWarps * kTokens);
    Pass pass;
    const u32 status = carve_pass(cv, smem, kTokens, K, pass);
    if (status != kOk) return status;

    const RowNorm norm = stage_normed_rows(p, p.arena + a.values[0], K, a.weights[0], a.fparams[0], pass.stage, red);
    if (threadIdx.x == 0) {
        NormMatmulMap map;
        map.p = &p;
        map.a = &a;
        map.norm = norm;
        // Weight i owns units [off, off + N_i) of the concatenation.
        u32 off = 0, groups = 0;
        for (u32 i = 0; i < 3; ++i) {
            const u32 N = a.values[1 + i] == MIMO_NONE ? 0u : a.dims[1 + i];
            const u32 lo = max_u32(unit_begin, off), hi = min_u32(unit_end, off + N);
            map.row0[i] = lo - off;
            map.rows[i] = hi > lo ? hi - lo : 0u;
            map.first[i] = groups;
            groups += div_ceil(map.rows[i], 16u);
            off += N;
        }
        proj_plan.kind = TASK_NORM_MATMUL;
        proj_plan.groups = groups;
        proj_plan.terms = 1;
        proj_plan.pass = pass;
        set_plan_map(proj_plan, map);
    }
    __syncthreads();
    run_projection(p, proj_plan);
    return kOk;
}

}  // namespace mimo
