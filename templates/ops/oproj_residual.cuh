// TASK_OPROJ_RESIDUAL: merges the split-K attention partials, then the output projection and
// the residual add. Units: output features (H).
//   attn[t, h, :] = sum_s exp(m_s - M) acc_s / (exp(sink_h - M) + sum_s exp(m_s - M) l_s)
//                   (M = max(sink_h, max m_s); splits with l_s == 0 are skipped; without sinks
//                   sink_h = -inf), flattened to [T, HEADS*HD]
//   out[t, n] = residual[t, n] + sum_k attn[t, k] wo[n, k]
#pragma once

#include "common/project.cuh"

namespace mimo {

// The projection mapping (see common/project.cuh). Lives in shared memory (ProjPlan::map).
struct OprojMap {
    const KernelParams* p;
    const OprojResidualArgs* a;
    u32 unit_begin, unit_end;

    __device__ u32 group_rows(u32 group) const { return min_u32(16u, unit_end - unit_begin - 16u * group); }
    __device__ Term term(u32 group, u32) const {
        Term t;
        t.weight = a->wo;
        t.row0 = unit_begin + 16u * group;
        t.nrows = group_rows(group);
        t.plane = 0;
        return t;
    }
    __device__ u32 b_row(u32, u32, u32 n) const { return min_u32(n, kTokens - 1); }
    __device__ float col_scale(u32, u32, u32) const { return 1.0f; }
    __device__ void emit(u32 group, u32 row, u32 n, float v, float) const {
        const u32 H = a->hidden;
        const u32 i = n * H + unit_begin + 16u * group + row;
        st_f32(p->arena + a->out + i, ld_act_f32(p->arena + a->residual + i) + v);
    }
};

// One warp merges the partials of (token t, head h) into B row t, columns h*HD .. h*HD + HD.
__device__ __forceinline__ void merge_attention_head(const KernelParams& p, const OprojResidualArgs& a, const BStage& stage,
                                                     u32 t, u32 h) {
    constexpr u32 M = (MIMO_MAX_HEAD_DIM + 63) / 64;  // column pairs per lane
    const u32 heads = a.heads, hd = a.head_dim, splits = a.splits;
    const u32 lane = lane_id();
    const float* ml = p.arena + a.ml + (t * heads + h) * splits * 2u;
    const float* acc = p.arena + a.acc + (t * heads + h) * splits * hd;
    float m_max = neg_inf();
    for (u32 s = lane; s < splits; s += 32) m_max = fmaxf(m_max, ld_act_f32(ml + 2u * s));
    m_max = warp_max(m_max);
    // A learned sink logit: one more softmax column with no value (MiMo-V2's sliding layers).
    const bool sink = a.sinks != MIMO_NONE;
    const float sink_logit = sink ? weight_element(weight_desc(p, a.sinks), 0, h) : neg_inf();
    m_max = fmaxf(m_max, sink_logit);
    float sum[M][2];
#pragma unroll
    for (u32 j = 0; j < M; ++j) sum[j][0] = sum[j][1] = 0.0f;
    float l = sink ? expf(sink_logit - m_max) : 0.0f;
    for (u32 s = 0; s < splits; ++s) {
        const float ls = ld_act_f32(ml + 2u * s + 1u);
        if (ls == 0.0f) continue;  // an empty split adds nothing
        const float w = expf(ld_act_f32(ml + 2u * s) - m_max);
        l += w * ls;
#pragma unroll
        for (u32 j = 0; j < M; ++j) {
            const u32 d = 2u * lane + 64u * j;
            if (d < hd) {
                sum[j][0] += w * ld_act_f32(acc + s * hd + d);
                sum[j][1] += w * ld_act_f32(acc + s * hd + d + 1u);
            }
        }
    }
#pragma unroll
    for (u32 j = 0; j < M; ++j) {
        const u32 d = 2u * lane + 64u * j;
        if (d < hd) stage_pair(stage, t, h * hd + d, sum[j][0] / l, sum[j][1] / l);
    }
}

__device__ __noinline__ u32 run_oproj_residual(const KernelParams& p, const OprojResidualArgs& a, u32 unit_begin, u32 unit_end,
                                               u8* smem) {
    const u32 heads = a.heads, hd = a.head_dim, K = heads * hd;
    if (hd > MIMO_MAX_HEAD_DIM || hd % 2u != 0) return kOverLimit;
    Carve cv = {smem, smem + MIMO_SMEM_BYTES};
    Pass pass;
    const u32 status = carve_pass(cv, smem, kTokens, K, pass);
    if (status != kOk) return status;

    if (threadIdx.x == 0) {
        OprojMap map;
        map.p = &p;
        map.a = &a;
        map.unit_begin = unit_begin;
        map.unit_end = unit_end;
        proj_plan.kind = TASK_OPROJ_RESIDUAL;
        proj_plan.groups = div_ceil(unit_end - unit_begin, 16u);
        proj_plan.terms = 1;
        proj_plan.pass = pass;
        set_plan_map(proj_plan, map);
    }
    for (u32 th = warp_id(); th < kTokens * heads; th += kWarps) merge_attention_head(p, a, pass.stage, th / heads, th % heads);
    stage_zero_tail(pass.stage, kTokens, K);
    __syncthreads();

    run_projection(p, proj_plan);
    return kOk;
}

}  // namespace mimo
