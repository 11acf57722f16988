// TASK_ARGMAX_COMBINE: next[t] = the chunk argmax of the first chunk with the largest maximum
// (chunks are in vocabulary order, so that is the row's first maximum). Units: tokens.
#pragma once

#include "common/memory.cuh"
#include "common/reduce.cuh"

namespace mimo {

__device__ __noinline__ u32 run_argmax_combine(const KernelParams& p, const ArgmaxCombineArgs& a, u32 unit_begin, u32 unit_end,
                                               u8*) {
    const u32 chunks = a.chunks, lane = lane_id();
    for (u32 t = unit_begin + warp_id(); t < unit_end; t += kWarps) {
        const float* maxima = p.arena + a.chunk_max + t * chunks;
        float best = neg_inf();
        u32 best_c = 0xffffffffu;
        for (u32 c = lane; c < chunks; c += 32) {
            const float v = ld_act_f32(maxima + c);
            if (v > best || best_c == 0xffffffffu) {
                best = v;
                best_c = c;
            }
        }
        warp_argmax(best, best_c);
        if (lane == 0) st_i32(p.arena + a.next + t, ld_act_i32(p.arena + a.chunk_argmax + t * chunks + best_c));
    }
    return kOk;
}

}  // namespace mimo
