// TASK_EXPERT_GATE_UP: h = rms_norm(x, norm_w); routing from the router logits (see
// common/routing.cuh); then for routed slot j of token t (expert e = id[t, j]) and feature n of
// the tile:
//   act[t, j, n] = silu(sum_k h[t,k] gate[e, n, k]) * (sum_k h[t,k] up[e, n, k])
// Units: expert features (I). Every distinct expert's rows are read once for all tokens: a group
// is (distinct expert, 16 features) with two terms, gate (plane 0) and up (plane 1).
#pragma once

#include "common/project.cuh"
#include "common/routing.cuh"

namespace mimo {

// The projection mapping (see common/project.cuh). Lives in shared memory (ProjPlan::map).
struct GateUpMap {
    const KernelParams* p;
    const ExpertGateUpArgs* a;
    const Routing* route;
    u32 unit_begin, unit_end;
    u32 feature_groups;  // 16-feature groups in the tile
    RowNorm norm;

    __device__ u32 group_rows(u32 group) const {
        return min_u32(16u, unit_end - unit_begin - 16u * (group % feature_groups));
    }
    __device__ Term term(u32 group, u32 t) const {
        const u32 I = a->intermediate;
        Term tm;
        tm.weight = t == 0 ? a->gate : a->up;
        tm.row0 = (u64)route->expert[group / feature_groups] * I + unit_begin + 16u * (group % feature_groups);
        tm.nrows = group_rows(group);
        tm.plane = t;
        return tm;
    }
    __device__ u32 b_row(u32, u32, u32 n) const { return min_u32(n, kTokens - 1); }
    __device__ float col_scale(u32, u32, u32 n) const { return norm.scale(min_u32(n, kTokens - 1)); }
    __device__ void emit(u32 group, u32 row, u32 n, float gate, float up) const {
        const i32 j = route->slot[(group / feature_groups) * kTokens + n];
        if (j < 0) return;  // token n did not choose this expert
        const u32 top_k = a->routing.top_k, I = a->intermediate;
        const u32 feature = unit_begin + 16u * (group % feature_groups) + row;
        st_f32(p->arena + a->act + (n * top_k + (u32)j) * I + feature, silu(gate) * up);
    }
};

__device__ __noinline__ u32 run_expert_gate_up(const KernelParams& p, const ExpertGateUpArgs& a, u32 unit_begin, u32 unit_end,
                                               u8* smem) {
    const u32 H = a.hidden, E = a.routing.experts, top_k = a.routing.top_k;
    if (E > MIMO_MAX_EXPERTS || top_k > MIMO_MAX_TOP_K || top_k > E) return kOverLimit;
    Carve cv = {smem, smem + MIMO_SMEM_BYTES};
    Routing* route = cv.take<Routing>(1);
    float* red = cv.take<float>(kWarps * kTokens);
    Pass pass;
    const u32 status = carve_pass(cv, smem, kTokens, H, pass);
    if (status != kOk) return status;

    // Routing's top-k (warp t: token t) and the staging of the normed input run side by side.
    route_topk(p, a.routing, *route);
    const RowNorm norm = stage_normed_rows(p, p.arena + a.x, H, a.norm, a.eps, pass.stage, red);
    __syncthreads();
    if (warp_id() == 0) {
        route_distinct(E, top_k, *route);
        if (lane_id() == 0) {
            GateUpMap map;
            map.p = &p;
            map.a = &a;
            map.route = route;
            map.unit_begin = unit_begin;
            map.unit_end = unit_end;
            map.feature_groups = div_ceil(unit_end - unit_begin, 16u);
            map.norm = norm;
            proj_plan.kind = TASK_EXPERT_GATE_UP;
            proj_plan.groups = route->used * map.feature_groups;
            proj_plan.terms = 2;
            proj_plan.pass = pass;
            set_plan_map(proj_plan, map);
        }
    }
    __syncthreads();
    run_projection(p, proj_plan);
    return kOk;
}

}  // namespace mimo
