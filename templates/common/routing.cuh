// MoE routing, recomputed by every expert task from the router logits (as the reference's
// router_topk): scores p = softmax(logits[t, :]), or sigmoid(logits[t, e]) per expert, in f32;
// the TOP_K largest choice scores c = p + selection_bias (no bias: c = p), the lower expert index
// first on ties, in descending order; weights p / sum(chosen p) when norm_topk (sum in slot
// order; for sigmoid scores the sum + 1e-20), else p; times scale. Then the distinct experts of
// all tokens, in order of first appearance (token-major, slot order), with each token's slot for
// each of them.
#pragma once

#include "common/reduce.cuh"
#include "common/memory.cuh"
#include "common/weights.cuh"

namespace mimo {

constexpr u32 kMaxPairs = MIMO_TOKENS * MIMO_MAX_TOP_K;  // (token, slot) pairs

struct Routing {
    i32 ids[kMaxPairs];                   // [t * top_k + j]
    float weights[kMaxPairs];             // [t * top_k + j]
    u32 expert[kMaxPairs];                // distinct experts, first appearance first
    i32 slot[kMaxPairs * MIMO_TOKENS];    // [d * T + t]: token t's slot for expert[d], or -1
    u32 first_pair[MIMO_MAX_EXPERTS];     // scratch: lowest pair index choosing each expert
    u32 distinct_of[MIMO_MAX_EXPERTS];    // scratch: d of each chosen expert
    u32 used;                             // number of distinct experts
};

// A float's bits mapped so that unsigned order is the values' order (negatives included).
__device__ __forceinline__ u32 ordered_bits(float x) {
    const u32 b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : b | 0x80000000u;
}

// Top-k of one token's logits by one warp.
__device__ __forceinline__ void route_token(const KernelParams& kp, const ExpertRouting& a, const float* logits, i32* ids,
                                            float* weights) {
    constexpr u32 EPL = (MIMO_MAX_EXPERTS + 31) / 32;  // experts per lane
    const u32 E = a.experts, top_k = a.top_k;
    const bool sigmoid = a.sigmoid != 0u, biased = a.selection_bias != MIMO_NONE;
    const u32 lane = lane_id();
    float p[EPL];
    if (sigmoid) {
#pragma unroll
        for (u32 v = 0; v < EPL; ++v) {
            const u32 i = lane + 32u * v;
            p[v] = i < E ? 1.0f / (1.0f + expf(-ld_act_f32(logits + i))) : 0.0f;
        }
    } else {
        float m = neg_inf();
#pragma unroll
        for (u32 v = 0; v < EPL; ++v) {
            const u32 i = lane + 32u * v;
            p[v] = i < E ? ld_act_f32(logits + i) : neg_inf();
            m = fmaxf(m, p[v]);
        }
        m = warp_max(m);
        float sum = 0.0f;
#pragma unroll
        for (u32 v = 0; v < EPL; ++v) {
            const u32 i = lane + 32u * v;
            p[v] = i < E ? expf(p[v] - m) : 0.0f;
            sum += p[v];
        }
        sum = warp_sum(sum);
#pragma unroll
        for (u32 v = 0; v < EPL; ++v) p[v] = p[v] / sum;
    }
    WeightDesc bias = {};
    if (biased) bias = weight_desc(kp, a.selection_bias);
    u32 key[EPL];  // the choice score c = p + bias, as ordered bits
#pragma unroll
    for (u32 v = 0; v < EPL; ++v) {
        const u32 i = lane + 32u * v;
        if (!(p[v] >= 0.0f)) p[v] = 0.0f;  // NaN logits: still k distinct, in-range experts
        float c = p[v];
        if (biased && i < E) c += weight_element(bias, 0, i);
        key[v] = c == c ? ordered_bits(c) : 0u;
    }

    // Top-k, one expert per round: the round's winner has the largest key, and among equal ones
    // the lowest index; its weight is its score p, which the lane holding it writes.
    u32 taken = 0;  // bit v: this lane's expert lane + 32v is chosen
    for (u32 j = 0; j < top_k; ++j) {
        u32 best = 0u, best_i = 0xffffffffu;  // this lane's first largest untaken key
        float best_p = 0.0f;
#pragma unroll
        for (u32 v = 0; v < EPL; ++v) {
            const u32 i = lane + 32u * v;
            if (i < E && !((taken >> v) & 1u) && (best_i == 0xffffffffu || key[v] > best)) {
                best = key[v];
                best_i = i;
                best_p = p[v];
            }
        }
        const u32 top = warp_max_u32(best_i == 0xffffffffu ? 0u : best);
        const u32 winner = warp_min_u32(best_i != 0xffffffffu && best == top ? best_i : 0xffffffffu);
        if ((winner & 31u) == lane) {
            taken |= 1u << (winner >> 5);
            weights[j] = best_p;  // read by lane 0 after the __syncwarp below
        }
        if (lane == 0) ids[j] = (i32)winner;
    }
    __syncwarp();
    if (lane == 0) {
        if (a.normalize != 0u) {
            float chosen = 0.0f;
            for (u32 j = 0; j < top_k; ++j) chosen += weights[j];
            if (sigmoid) chosen += 1e-20f;
            for (u32 j = 0; j < top_k; ++j) weights[j] = weights[j] / chosen;
        }
        for (u32 j = 0; j < top_k; ++j) weights[j] = weights[j] * a.scale;
    }
}

// Top-k of the T tokens of the router logits [T, E] (arena) into r.ids / r.weights: warp t
// takes token t. No barrier: the caller synchronises before route_distinct(). Requires
// E <= MIMO_MAX_EXPERTS and top_k <= min(E, MIMO_MAX_TOP_K) (the caller checks).
__device__ __forceinline__ void route_topk(const KernelParams& p, const ExpertRouting& a, Routing& r) {
    const u32 E = a.experts, top_k = a.top_k;
    for (u32 t = warp_id(); t < MIMO_TOKENS; t += kWarps)
        route_token(p, a, p.arena + a.logits + t * E, r.ids + t * top_k, r.weights + t * top_k);
}

// The distinct experts of r.ids in order of first appearance, and each token's slot for each.
// One warp, after a barrier that follows route_topk(); the caller synchronises before use.
__device__ __forceinline__ void route_distinct(u32 E, u32 top_k, Routing& r) {
    const u32 lane = lane_id(), pairs = MIMO_TOKENS * top_k;
    for (u32 e = lane; e < E; e += 32) r.first_pair[e] = 0xffffffffu;
    __syncwarp();
    for (u32 q = lane; q < pairs; q += 32) atomicMin(&r.first_pair[r.ids[q]], q);
    __syncwarp();
    u32 used = 0;
    for (u32 base = 0; base < pairs; base += 32) {
        const u32 q = base + lane;
        const bool first = q < pairs && r.first_pair[r.ids[q]] == q;
        const u32 ballot = __ballot_sync(kFullMask, first);
        if (first) {
            const u32 d = used + __popc(ballot & ((1u << lane) - 1u));
            r.expert[d] = (u32)r.ids[q];
            r.distinct_of[r.ids[q]] = d;
        }
        used += __popc(ballot);
    }
    __syncwarp();
    for (u32 i = lane; i < used * MIMO_TOKENS; i += 32) r.slot[i] = -1;
    __syncwarp();
    for (u32 q = lane; q < pairs; q += 32) r.slot[r.distinct_of[r.ids[q]] * MIMO_TOKENS + q / top_k] = (i32)(q % top_k);
    if (lane == 0) r.used = used;
    __syncwarp();
}

}  // namespace mimo
