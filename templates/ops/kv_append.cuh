// TASK_KV_APPEND: for KV head h of the tile and row t (of R = rows: T, or the DFlash draft's
// C context rows and B block rows) at position p = positions[t]:
//   k_cache[p, h, :] = rope(qk_norm ? rms_norm(k_raw[t, h, :], k_norm_w) : k_raw[t, h, :], p)
//                      (the first rotary_dim dims of the head_dim rotate)
//   v_cache[p, h, :] = v_scale * v_raw[t, h, :]   (v_head_dim wide)
// both rounded to bf16 (nearest even) in the state buffer. Units: KV heads. One warp per
// (row, head). Two rows at one position (the graphs we build have none) would race, where the
// reference keeps the later row.
#pragma once

#include "common/norm.cuh"

namespace mimo {

__device__ __noinline__ u32 run_kv_append(const KernelParams& p, const KvAppendArgs& a, u32 unit_begin, u32 unit_end, u8*) {
    const u32 kv_heads = a.kv_heads, hd = a.head_dim, vhd = a.v_head_dim, rotary = a.rotary_dim;
    if (hd > MIMO_MAX_HEAD_DIM || hd % 2u != 0 || rotary > hd || rotary % 2u != 0) return kOverLimit;
    const bool norm = a.k_norm != MIMO_NONE;
    WeightDesc nw = {};
    if (norm) nw = weight_desc(p, a.k_norm);
    const u32 heads_in_tile = unit_end - unit_begin, rows = a.rows;
    for (u32 i = warp_id(); i < rows * heads_in_tile; i += kWarps) {
        const u32 t = i / heads_in_tile, h = unit_begin + i % heads_in_tile;
        const i32 pos = ld_act_i32(p.arena + a.positions + t);
        const u32 row = t * kv_heads + h;
        const u64 slot = (u64)(u32)pos * kv_heads + h;
        u16* k_cache = p.state + a.k_cache + slot * hd;
        u16* v_cache = p.state + a.v_cache + slot * vhd;
        head_norm_rope(p.arena + a.k_raw + row * hd, hd, rotary, norm, nw, a.eps, a.rope_theta, pos,
                       [&](u32 d, float v) { st_u16(k_cache + d, f32_to_bf16(v)); });
        const float* v_raw = p.arena + a.v_raw + row * vhd;
        for (u32 d = lane_id(); d < vhd; d += 32) st_u16(v_cache + d, f32_to_bf16(a.v_scale * ld_act_f32(v_raw + d)));
    }
    return kOk;
}

}  // namespace mimo
