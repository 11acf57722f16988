// The one instance of the projection engine (common/project.cuh), shared by the projection ops
// (norm_matmul.cuh's three dense kinds, oproj_residual, expert_gate_up, expert_down, lm_head): it dispatches each mapping call on the plan's kind to the op's mapping struct. One
// instance keeps the kernel's code (and NVRTC's compile time) to a single copy of the
// format-specialised inner loops.
#pragma once

#include "ops/expert_down.cuh"
#include "ops/expert_gate_up.cuh"
#include "ops/lm_head.cuh"
#include "ops/norm_matmul.cuh"
#include "ops/oproj_residual.cuh"

namespace mimo {

struct AnyProjection {
    const ProjPlan* plan;
    u32 kind, groups, terms;

// Calls `expr` on the op's mapping object `m`.
#define MIMO_DISPATCH(expr)                                                                  \
    switch (kind) {                                                                          \
        case TASK_NORM_MATMUL:                                                               \
        case TASK_DENSE_GATE_UP:                                                             \
        case TASK_MATMUL_RESIDUAL: { const NormMatmulMap& m = plan_map<NormMatmulMap>(*plan); return expr; } \
        case TASK_OPROJ_RESIDUAL: { const OprojMap& m = plan_map<OprojMap>(*plan); return expr; }        \
        case TASK_EXPERT_GATE_UP: { const GateUpMap& m = plan_map<GateUpMap>(*plan); return expr; }      \
        case TASK_EXPERT_DOWN: { const ExpertDownMap& m = plan_map<ExpertDownMap>(*plan); return expr; } \
        default: { const LmHeadMap& m = plan_map<LmHeadMap>(*plan); return expr; }                        \
    }

    __device__ Term term(u32 group, u32 t) const { MIMO_DISPATCH(m.term(group, t)) }
    __device__ u32 group_rows(u32 group) const { MIMO_DISPATCH(m.group_rows(group)) }
    __device__ u32 b_row(u32 group, u32 t, u32 n) const { MIMO_DISPATCH(m.b_row(group, t, n)) }
    __device__ float col_scale(u32 group, u32 t, u32 n) const { MIMO_DISPATCH(m.col_scale(group, t, n)) }
    __device__ void emit(u32 group, u32 row, u32 n, float v0, float v1) const { MIMO_DISPATCH(m.emit(group, row, n, v0, v1)) }

#undef MIMO_DISPATCH
};

static_assert(MIMO_SMEM_BYTES + sizeof(ProjPlan) <= 232448, "more shared memory than an sm_90 block can have");

__device__ __noinline__ void run_projection(const KernelParams& p, const ProjPlan& plan) {
    AnyProjection op;
    op.plan = &plan;
    op.kind = plan.kind;
    op.groups = plan.groups;
    op.terms = plan.terms;
    const Pass pass = plan.pass;
    project(p, op, pass);
}

}  // namespace mimo
