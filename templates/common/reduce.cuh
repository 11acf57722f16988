// Warp and block reductions. All are deterministic: a fixed butterfly / fixed order, so the same
// inputs give the same bits on every run.
#pragma once

#include "common/types.cuh"

namespace mimo {

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (u32 o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (u32 o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
    return v;
}

// Warp-wide unsigned max / min in one instruction (redux.sync, sm_80+).
__device__ __forceinline__ u32 warp_max_u32(u32 v) {
#ifdef MIMO_EMU
    return mimo_emu::redux_sync(mimo_emu::kReduxMax, v, kFullMask);
#else
    u32 r;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
    return r;
#endif
}
__device__ __forceinline__ u32 warp_min_u32(u32 v) {
#ifdef MIMO_EMU
    return mimo_emu::redux_sync(mimo_emu::kReduxMin, v, kFullMask);
#else
    u32 r;
    asm volatile("redux.sync.min.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
    return r;
#endif
}

// The larger value, the lower index on ties; every lane gets the winner. NaN never wins over a
// number (as in the reference's `x > best` scan).
__device__ __forceinline__ void warp_argmax(float& v, u32& idx) {
#pragma unroll
    for (u32 o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(kFullMask, v, o);
        const u32 oi = __shfl_xor_sync(kFullMask, idx, o);
        if (ov > v || (ov == v && oi < idx) || (v != v && ov == ov)) {
            v = ov;
            idx = oi;
        }
    }
}

// Sum over the block; `scratch` holds kWarps floats. Every thread gets the result. Contains two
// __syncthreads(), so every thread of the block must call it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    v = warp_sum(v);
    if (lane_id() == 0) scratch[warp_id()] = v;
    __syncthreads();
    float total = 0.0f;
#pragma unroll
    for (u32 w = 0; w < kWarps; ++w) total += scratch[w];
    __syncthreads();
    return total;
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    v = warp_max(v);
    if (lane_id() == 0) scratch[warp_id()] = v;
    __syncthreads();
    float m = scratch[0];
#pragma unroll
    for (u32 w = 1; w < kWarps; ++w) m = fmaxf(m, scratch[w]);
    __syncthreads();
    return m;
}

}  // namespace mimo
