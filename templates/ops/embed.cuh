// TASK_EMBED: y[t, :] = table[ids[t], :], dequantised to f32 whatever the table's format.
// Units: tokens (as the reference op, ir/src/ops/embedding.rs).
#pragma once

#include "common/weights.cuh"

namespace mimo {

__device__ __noinline__ u32 run_embed(const KernelParams& p, const EmbedArgs& a, u32 unit_begin, u32 unit_end, u8*) {
    const WeightDesc table = weight_desc(p, a.table);
    const u32 H = a.hidden;
    for (u32 t = unit_begin; t < unit_end; ++t) {
        const u64 id = (u64)(u32)ld_act_i32(p.arena + a.ids + t);
        float* y = p.arena + a.y + t * H;
        for (u32 k = threadIdx.x; k < H; k += MIMO_THREADS) st_f32(y + k, weight_element(table, id, k));
    }
    return kOk;
}

}  // namespace mimo
