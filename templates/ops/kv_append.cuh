// TASK_KV_APPEND: for KV head h of the tile and row t (of R = dims[2]: T, or the DFlash draft's
// C context rows and B block rows) at position p = positions[t]:
//   k_cache[p, h, :] = rope(qk_norm ? rms_norm(k_raw[t, h, :], k_norm_w) : k_raw[t, h, :], p)
//   v_cache[p, h, :] = v_raw[t, h, :]
// both rounded to bf16 (nearest even) in the state buffer. Units: KV heads. One warp per
// (row, head). Two rows at one position (the graphs we build have none) would race, where the
// reference keeps the later row.
#pragma once

#include "common/norm.cuh"

namespace mimo {

__device__ __noinline__ u32 run_kv_append(const KernelParams& p, const OpArgs& a, u32 unit_begin, u32 unit_end, u8*) {
    const u32 kv_heads = a.dims[0], hd = a.dims[1];
    if (hd > MIMO_MAX_HEAD_DIM || hd % 2u != 0) return kOverLimit;
    const bool norm = a.weights[0] != MIMO_NONE;
    WeightDesc nw = {};
    if (norm) nw = weight_desc(p, a.weights[0]);
    const u32 heads_in_tile = unit_end - unit_begin, rows = a.dims[2];
    for (u32 i = warp_id(); i < rows * heads_in_tile; i += kWarps) {
        const u32 t = i / heads_in_tile, h = unit_begin + i % heads_in_tile;
        const i32 pos = ld_act_i32(p.arena + a.values[2] + t);
        const u32 src = (t * kv_heads + h) * hd;
        const u64 dst = ((u64)(u32)pos * kv_heads + h) * hd;
        u16* k_cache = p.state + a.state[0] + dst;
        u16* v_cache = p.state + a.state[1] + dst;
        head_norm_rope(p.arena + a.values[0] + src, hd, norm, nw, a.fparams[0], a.fparams[1], pos,
                       [&](u32 d, float v) { st_u16(k_cache + d, f32_to_bf16(v)); });
        for (u32 d = lane_id(); d < hd; d += 32) st_u16(v_cache + d, f32_to_bf16(ld_act_f32(p.arena + a.values[1] + src + d)));
    }
    return kOk;
}

}  // namespace mimo
