// TASK_EXPERT_DOWN: routing as in expert_gate_up, then for hidden feature n of the tile:
//   out[t, n] = residual[t, n] + sum_j w[t, j] * sum_i act[t, j, i] down[e_j, n, i]
// Units: hidden features (H). A group is 16 features; its terms are the distinct experts, each
// read once for all tokens: token column t of expert e reads B row (t, slot of e in t) and is
// scaled by that slot's routing weight (0 for tokens that did not choose e). The experts are
// added in order of first appearance, which is slot order for T = 1.
//
// The B rows are all T * TOP_K activation rows; when they do not fit in shared memory at full
// length I, the reduction runs in k-slabs, each added into `out` (the residual last).
#pragma once

#include "common/project.cuh"
#include "common/routing.cuh"

namespace mimo {

// The projection mapping (see common/project.cuh). Lives in shared memory (ProjPlan::map).
struct ExpertDownMap {
    const KernelParams* p;
    const ExpertDownArgs* a;
    const Routing* route;
    u32 unit_begin, unit_end;
    bool first_slab, last_slab;

    __device__ u32 group_rows(u32 group) const { return min_u32(16u, unit_end - unit_begin - 16u * group); }
    __device__ Term term(u32 group, u32 d) const {
        const u32 H = a->hidden;
        Term tm;
        tm.weight = a->down;
        tm.row0 = (u64)route->expert[d] * H + unit_begin + 16u * group;
        tm.nrows = group_rows(group);
        tm.plane = 0;
        return tm;
    }
    __device__ i32 slot_of(u32 d, u32 n) const { return n < kTokens ? route->slot[d * kTokens + n] : -1; }
    __device__ u32 b_row(u32, u32 d, u32 n) const {
        const i32 j = slot_of(d, n);
        return j < 0 ? 0u : n * a->routing.top_k + (u32)j;
    }
    __device__ float col_scale(u32, u32 d, u32 n) const {
        const i32 j = slot_of(d, n);
        return j < 0 ? 0.0f : route->weights[n * a->routing.top_k + (u32)j];
    }
    __device__ void emit(u32 group, u32 row, u32 n, float v, float) const {
        const u32 H = a->hidden;
        const u32 i = n * H + unit_begin + 16u * group + row;
        float* out = p->arena + a->out + i;
        if (!first_slab) v = ld_act_f32(out) + v;
        if (last_slab) v = ld_act_f32(p->arena + a->residual + i) + v;
        st_f32(out, v);
    }
};

__device__ __noinline__ u32 run_expert_down(const KernelParams& p, const ExpertDownArgs& a, u32 unit_begin, u32 unit_end,
                                            u8* smem) {
    const u32 E = a.routing.experts, top_k = a.routing.top_k, I = a.intermediate;
    if (E > MIMO_MAX_EXPERTS || top_k > MIMO_MAX_TOP_K || top_k > E) return kOverLimit;
    Carve cv = {smem, smem + MIMO_SMEM_BYTES};
    Routing* route = cv.take<Routing>(1);

    // The widest k-slab (a multiple of kCellK, or all of I) whose T * TOP_K rows fit.
    const u32 rows = kTokens * top_k;
    const u32 slots_bytes = kSlotFloats * 4u;
    const u32 avail = cv.left() > slots_bytes ? cv.left() - slots_bytes : 0u;
    u32 slab = I;
    if (rows * stage_stride_bytes(I) > avail) {
        const u32 granules = avail / (16u * rows);  // per row, including the 2 of padding
        slab = granules > 2u ? ((granules - 2u) * 8u) / kCellK * kCellK : 0u;
        if (slab == 0) return cv.used(smem) + slots_bytes + rows * stage_stride_bytes(kCellK);
    }
    Pass pass;
    const u32 status = carve_pass(cv, smem, rows, slab, pass);
    if (status != kOk) return status;

    // Routing's top-k (warp t: token t) runs beside the staging of the first slab.
    route_topk(p, a.routing, *route);
    const float* act = p.arena + a.act;
    for (u32 k_lo = 0; k_lo < I; k_lo += slab) {
        const u32 k_hi = min_u32(I, k_lo + slab);
        stage_rows(pass.stage, rows, k_hi - k_lo, [&](u32 row, u32 k) { return ld_act_f32(act + row * I + k_lo + k); });
        if (k_lo == 0) {
            __syncthreads();
            if (warp_id() == 0) route_distinct(E, top_k, *route);
        }
        if (threadIdx.x == 0) {
            ExpertDownMap map;
            map.p = &p;
            map.a = &a;
            map.route = route;
            map.unit_begin = unit_begin;
            map.unit_end = unit_end;
            map.first_slab = k_lo == 0;
            map.last_slab = k_hi == I;
            proj_plan.kind = TASK_EXPERT_DOWN;
            proj_plan.groups = div_ceil(unit_end - unit_begin, 16u);
            proj_plan.terms = route->used;
            proj_plan.pass = pass;
            proj_plan.pass.k_lo = k_lo;
            proj_plan.pass.k_hi = k_hi;
            set_plan_map(proj_plan, map);
        }
        __syncthreads();
        run_projection(p, proj_plan);
        __syncthreads();  // the next slab rewrites the plan, the rows and the slots, and reads `out` back
    }
    return kOk;
}

}  // namespace mimo
