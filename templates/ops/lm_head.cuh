// TASK_LM_HEAD: h = rms_norm(x, norm_w); logits[t, n] = h[t, :] . w[n, :] for n in the tile;
// then for every chunk of CHUNK vocabulary entries inside the tile (tiles are aligned to CHUNK;
// the last chunk ends at V), the chunk's largest logit and its index, the first on ties.
// Units: vocabulary entries (V).
#pragma once

#include "common/project.cuh"

namespace mimo {

// The projection mapping (see common/project.cuh). Lives in shared memory (ProjPlan::map).
struct LmHeadMap {
    const KernelParams* p;
    const LmHeadArgs* a;
    u32 unit_begin, unit_end;
    RowNorm norm;

    __device__ u32 group_rows(u32 group) const { return min_u32(16u, unit_end - unit_begin - 16u * group); }
    __device__ Term term(u32 group, u32) const {
        Term t;
        t.weight = a->lm_head;
        t.row0 = unit_begin + 16u * group;
        t.nrows = group_rows(group);
        t.plane = 0;
        return t;
    }
    __device__ u32 b_row(u32, u32, u32 n) const { return min_u32(n, kTokens - 1); }
    __device__ float col_scale(u32, u32, u32 n) const { return norm.scale(min_u32(n, kTokens - 1)); }
    __device__ void emit(u32 group, u32 row, u32 n, float v, float) const {
        st_f32(p->arena + a->logits + n * a->vocab + unit_begin + 16u * group + row, v);
    }
};

__device__ __noinline__ u32 run_lm_head(const KernelParams& p, const LmHeadArgs& a, u32 unit_begin, u32 unit_end, u8* smem) {
    const u32 H = a.hidden, V = a.vocab, chunk = a.chunk;
    Carve cv = {smem, smem + MIMO_SMEM_BYTES};
    float* red = cv.take<float>(kWarps * kTokens);
    Pass pass;
    const u32 status = carve_pass(cv, smem, kTokens, H, pass);
    if (status != kOk) return status;

    const RowNorm norm = stage_normed_rows(p, p.arena + a.x, H, a.norm, a.eps, pass.stage, red);
    if (threadIdx.x == 0) {
        LmHeadMap map;
        map.p = &p;
        map.a = &a;
        map.unit_begin = unit_begin;
        map.unit_end = unit_end;
        map.norm = norm;
        proj_plan.kind = TASK_LM_HEAD;
        proj_plan.groups = div_ceil(unit_end - unit_begin, 16u);
        proj_plan.terms = 1;
        proj_plan.pass = pass;
        set_plan_map(proj_plan, map);
    }
    __syncthreads();
    run_projection(p, proj_plan);
    __syncthreads();  // the block's logits are written

    // One warp per (token, chunk): the chunk's first maximum.
    const u32 chunks = div_ceil(V, chunk);
    const u32 c_begin = div_ceil(unit_begin, chunk);
    u32 c_end = unit_end / chunk;  // chunks wholly inside the tile
    if (unit_end == V && V % chunk != 0) c_end = chunks;  // the last, shorter chunk
    const u32 lane = lane_id();
    for (u32 i = warp_id(); c_begin + i / kTokens < c_end; i += kWarps) {
        const u32 t = i % kTokens, c = c_begin + i / kTokens;
        const u32 lo = c * chunk, hi = min_u32(lo + chunk, V);
        const float* row = p.arena + a.logits + t * V;
        float best = neg_inf();
        u32 best_i = 0xffffffffu;
        for (u32 n = lo + lane; n < hi; n += 32) {
            const float v = ld_act_f32(row + n);
            if (v > best || best_i == 0xffffffffu) {
                best = v;
                best_i = n;
            }
        }
        warp_argmax(best, best_i);
        if (lane == 0) {
            st_f32(p.arena + a.chunk_max + t * chunks + c, best);
            st_i32(p.arena + a.chunk_argmax + t * chunks + c, (i32)best_i);
        }
    }
    return kOk;
}

}  // namespace mimo
