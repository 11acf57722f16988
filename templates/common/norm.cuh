// Per-head RMSNorm and RoPE as the reference computes them (ir/src/ops/rms_norm.rs, rope.rs), in
// f32 (the projections' RMSNorm is in common/project.cuh):
//   rms_norm: y = w * (x * (1 / sqrt(mean(x^2) + eps)))   (over the whole head)
//   rope (NeoX) over the first R = rotary dims: inv_freq[i] = 1 / theta^(2i / R);
//   y[i] = a cos - b sin, y[i + R/2] = b cos + a sin with (a, b) = (x[i], x[i + R/2]) and the
//   angle pos * inv_freq[i]; dims R .. hd pass through (MiMo-V2's partial RoPE; R = hd elsewhere).
#pragma once

#include "common/reduce.cuh"
#include "common/weights.cuh"

namespace mimo {

// The rms_norm'd (when `norm` is set, with weight `nw`) and rotated head x[0 .. hd) (arena),
// computed by one warp; store(d, value) is called once for every d < hd. rotary must be even and
// at most hd, hd at most MIMO_MAX_HEAD_DIM.
template <class Store>
__device__ __forceinline__ void head_norm_rope(const float* x, u32 hd, u32 rotary, bool norm, const WeightDesc& nw,
                                               float eps, float theta, i32 pos, const Store& store) {
    constexpr u32 M = (MIMO_MAX_HEAD_DIM / 2 + 31) / 32;  // rotation pairs per lane
    const u32 half = rotary / 2, lane = lane_id();
    float a[M], b[M];
    float ssq = 0.0f;
#pragma unroll
    for (u32 m = 0; m < M; ++m) {
        const u32 i = lane + 32u * m;
        a[m] = i < half ? ld_act_f32(x + i) : 0.0f;
        b[m] = i < half ? ld_act_f32(x + i + half) : 0.0f;
        ssq = fmaf(a[m], a[m], fmaf(b[m], b[m], ssq));
    }
    // The dims past the rotated ones join the norm's sum here and are read again to be stored:
    // holding them too would double the registers of the common full rotation.
    for (u32 d = rotary + lane; d < hd; d += 32) {
        const float v = ld_act_f32(x + d);
        ssq = fmaf(v, v, ssq);
    }
    float inv = 1.0f;
    if (norm) inv = 1.0f / sqrtf(warp_sum(ssq) / (float)hd + eps);
#pragma unroll
    for (u32 m = 0; m < M; ++m) {
        const u32 i = lane + 32u * m;
        if (i >= half) continue;
        float xa = a[m], xb = b[m];
        if (norm) {
            xa = weight_element(nw, 0, i) * (xa * inv);
            xb = weight_element(nw, 0, i + half) * (xb * inv);
        }
        const float inv_freq = 1.0f / powf(theta, (float)(2u * i) / (float)rotary);
        float s, c;
        sincos_f32((float)pos * inv_freq, &s, &c);
        store(i, xa * c - xb * s);
        store(i + half, xb * c + xa * s);
    }
    for (u32 d = rotary + lane; d < hd; d += 32) {
        float v = ld_act_f32(x + d);
        if (norm) v = weight_element(nw, 0, d) * (v * inv);
        store(d, v);
    }
}

}  // namespace mimo
