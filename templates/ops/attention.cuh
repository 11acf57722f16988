// TASK_ATTENTION_PARTIAL: split-K ("flash decoding") attention. Unit u is KV head u / splits,
// split s = u % splits; it serves the G = HEADS / KVH query heads of that KV head, which share
// each K and V row read. For token t the context is the L rows from r = 0 to positions[t], or
// with a sliding window (window > 0) only the last window of them (r = max(0, positions[t] + 1 -
// window)), and split s covers rows [r + s*L/splits, r + (s+1)*L/splits). Per query head h:
//   q = rope(qk_norm ? rms_norm(q_raw[t, h, :], q_norm_w) : q_raw[t, h, :], rope_pos[t])
// (rope_pos = positions unless the op has its own, rope_positions: the DFlash draft's block queries are
// rotated at their own positions but all attend up to the block's last; the first rotary_dim dims
// of the HD rotate)
//   s_j = scale * dot(q, k_cache[j, kvh, :]);  m = max_j s_j;  l = sum_j exp(s_j - m);
//   acc = sum_j exp(s_j - m) * v_cache[j, kvh, :]          (empty split: m = -inf, l = 0, acc = 0)
// written unnormalised to acc [T, HEADS, splits, VHD] and ml [T, HEADS, splits, 2]. Keys are HD
// wide, values VHD (MiMo-V2: 192 and 128).
//
// Rows are processed in chunks of 256 (online softmax across chunks, f32 throughout):
//   scores: thread i takes row i of the chunk, dots it with the G queries (broadcast from shared
//           memory); one warp per head then updates (m, l) and turns scores into weights;
//   values: threads over (dimension d, head), reading V rows coalesced along d.
// K and V rows were written in this launch by kv_append tasks: read through L2 (ld.global.cg).
#pragma once

#include "common/norm.cuh"

namespace mimo {

constexpr u32 kAttnChunk = MIMO_THREADS;  // rows per chunk: one per thread in the score phase

struct AttnSmem {
    float* q;       // [G][HD] rotated queries
    float* acc;     // [G][VHD] running sum of p * v
    float* scores;  // [G][kAttnChunk] scores, then weights exp(s - m)
    float* m;       // [G] running maximum
    float* l;       // [G] running sum of weights
    float* alpha;   // [G] rescale of the previous chunks: exp(m_old - m_new)
};

// scores[h][i] = scale * q_h . k_row for the chunk's row i = threadIdx.x (< n).
__device__ __forceinline__ void attention_scores(const AttnSmem& sm, const u16* k_row, u32 G, u32 hd, float scale,
                                                 bool vec) {
    for (u32 hb = 0; hb < G; hb += 8) {
        float dot[8];
#pragma unroll
        for (u32 e = 0; e < 8; ++e) dot[e] = 0.0f;
        if (vec) {
#pragma unroll 2
            for (u32 d = 0; d < hd; d += 8) {
                const U32x4 kv = ld_state_v4(k_row + d);
                const u32 w[4] = {kv.x, kv.y, kv.z, kv.w};
#pragma unroll
                for (u32 e = 0; e < 8; ++e) {
                    if (hb + e >= G) break;
                    const F32x4* q = (const F32x4*)(sm.q + (hb + e) * hd + d);
                    const F32x4 q0 = q[0], q1 = q[1];
                    float s = dot[e];
                    s = fmaf(q0.x, bf16x2_lo(w[0]), s);
                    s = fmaf(q0.y, bf16x2_hi(w[0]), s);
                    s = fmaf(q0.z, bf16x2_lo(w[1]), s);
                    s = fmaf(q0.w, bf16x2_hi(w[1]), s);
                    s = fmaf(q1.x, bf16x2_lo(w[2]), s);
                    s = fmaf(q1.y, bf16x2_hi(w[2]), s);
                    s = fmaf(q1.z, bf16x2_lo(w[3]), s);
                    s = fmaf(q1.w, bf16x2_hi(w[3]), s);
                    dot[e] = s;
                }
            }
        } else {
            for (u32 d = 0; d < hd; ++d) {
                const float kf = bf16_to_f32(ld_state_u16(k_row + d));
#pragma unroll
                for (u32 e = 0; e < 8; ++e)
                    if (hb + e < G) dot[e] = fmaf(sm.q[(hb + e) * hd + d], kf, dot[e]);
            }
        }
#pragma unroll
        for (u32 e = 0; e < 8; ++e)
            if (hb + e < G) sm.scores[(hb + e) * kAttnChunk + threadIdx.x] = dot[e] * scale;
    }
}

// One warp per head: new maximum, rescale factor, weights exp(s - m) in place, new l.
__device__ __forceinline__ void attention_softmax_update(const AttnSmem& sm, u32 G, u32 n) {
    const u32 lane = lane_id();
    for (u32 h = warp_id(); h < G; h += kWarps) {
        float* sc = sm.scores + h * kAttnChunk;
        float cm = neg_inf();
        for (u32 i = lane; i < n; i += 32) cm = fmaxf(cm, sc[i]);
        cm = warp_max(cm);
        const float m_old = sm.m[h], m_new = fmaxf(m_old, cm);
        const bool none = m_new == neg_inf();  // only -inf scores so far: keep everything at 0
        float sum = 0.0f;
        for (u32 i = lane; i < n; i += 32) {
            const float w = none ? 0.0f : expf(sc[i] - m_new);
            sc[i] = w;
            sum += w;
        }
        sum = warp_sum(sum);
        // Every lane read m[h] and l[h] above; a shuffle orders no memory, so lane 0 overwrites
        // them only after the warp has met here.
        __syncwarp();
        if (lane == 0) {
            const float alpha = none ? 1.0f : expf(m_old - m_new);
            sm.alpha[h] = alpha;
            sm.m[h] = m_new;
            sm.l[h] = sm.l[h] * alpha + sum;
        }
    }
}

// acc[h][d] = alpha[h] * acc[h][d] + sum_i w[h][i] * v[row i][d]. A thread takes the column pair
// (d, d + 1) for the heads h0, h0 + stride, ... (four at a time), reading V rows coalesced.
__device__ __forceinline__ void attention_values(const AttnSmem& sm, const u16* v_rows, u64 row_stride, u32 G, u32 vhd,
                                                 u32 n, bool v32) {
    const u32 pairs = vhd / 2u;
    const u32 stride = MIMO_THREADS / pairs;  // head groups side by side (vhd <= 256 <= 2 * MIMO_THREADS)
    if (threadIdx.x >= stride * pairs) return;
    const u32 d = 2u * (threadIdx.x % pairs);
    for (u32 hb = threadIdx.x / pairs; hb < G; hb += 4u * stride) {
        float acc[4][2];
#pragma unroll
        for (u32 e = 0; e < 4; ++e) {
            const u32 h = hb + e * stride;
            acc[e][0] = h < G ? sm.acc[h * vhd + d] * sm.alpha[h] : 0.0f;
            acc[e][1] = h < G ? sm.acc[h * vhd + d + 1] * sm.alpha[h] : 0.0f;
        }
#pragma unroll 4
        for (u32 i = 0; i < n; ++i) {
            const u16* v = v_rows + i * row_stride + d;
            const u32 pair = v32 ? ld_state_u32(v) : (ld_state_u16(v) | (ld_state_u16(v + 1) << 16));
            const float v0 = bf16x2_lo(pair), v1 = bf16x2_hi(pair);
#pragma unroll
            for (u32 e = 0; e < 4; ++e) {
                const u32 h = hb + e * stride;
                if (h < G) {
                    const float w = sm.scores[h * kAttnChunk + i];
                    acc[e][0] = fmaf(w, v0, acc[e][0]);
                    acc[e][1] = fmaf(w, v1, acc[e][1]);
                }
            }
        }
#pragma unroll
        for (u32 e = 0; e < 4; ++e) {
            const u32 h = hb + e * stride;
            if (h < G) {
                sm.acc[h * vhd + d] = acc[e][0];
                sm.acc[h * vhd + d + 1] = acc[e][1];
            }
        }
    }
}

__device__ __noinline__ u32 run_attention_partial(const KernelParams& p, const AttentionPartialArgs& a, u32 unit_begin, u32 unit_end,
                                                  u8* smem) {
    const u32 heads = a.heads, kv_heads = a.kv_heads, hd = a.head_dim, vhd = a.v_head_dim, splits = a.splits;
    const u32 rotary = a.rotary_dim;
    const float eps = a.eps, theta = a.rope_theta, scale = a.scale;
    if (hd > MIMO_MAX_HEAD_DIM || hd % 2u != 0 || vhd > MIMO_MAX_HEAD_DIM || vhd % 2u != 0 || rotary > hd ||
        rotary % 2u != 0)
        return kOverLimit;
    const u32 G = heads / kv_heads;
    // One array: q [G][HD], acc [G][VHD], scores [G][chunk], m, l, alpha [G] each.
    const u32 floats = G * (hd + vhd) + G * kAttnChunk + 3u * G;
    if (floats * 4u > MIMO_SMEM_BYTES) return round_up(floats * 4u, 16u);
    AttnSmem sm;
    sm.q = (float*)smem;
    sm.acc = sm.q + G * hd;
    sm.scores = sm.acc + G * vhd;
    sm.m = sm.scores + G * kAttnChunk;
    sm.l = sm.m + G;
    sm.alpha = sm.l + G;

    const bool norm = a.q_norm != MIMO_NONE;
    WeightDesc nw = {};
    if (norm) nw = weight_desc(p, a.q_norm);
    const u16* k_cache = p.state + a.k_cache;
    const u16* v_cache = p.state + a.v_cache;
    const u64 v_row_stride = (u64)kv_heads * vhd;                // elements between consecutive positions
    const bool vec = hd % 8u == 0 && ((u64)k_cache & 15u) == 0;  // 16-byte K loads
    const bool v32 = ((u64)v_cache & 3u) == 0;                  // 4-byte V loads (vhd is even)

    for (u32 u = unit_begin; u < unit_end; ++u) {
        const u32 kvh = u / splits, s = u % splits;
        for (u32 t = 0; t < kTokens; ++t) {
            const i32 pos = ld_act_i32(p.arena + a.positions + t);
            const i32 rope_pos = a.rope_positions == MIMO_NONE ? pos : ld_act_i32(p.arena + a.rope_positions + t);
            const u64 end = (u64)(u32)pos + 1u;
            const u64 begin = a.window != 0u && end > a.window ? end - a.window : 0u;
            const u64 L = end - begin;
            const u32 r0 = (u32)(begin + s * L / splits), r1 = (u32)(begin + (s + 1u) * L / splits);

            for (u32 h = warp_id(); h < G; h += kWarps) {
                float* q = sm.q + h * hd;
                head_norm_rope(p.arena + a.q_raw + (t * heads + kvh * G + h) * hd, hd, rotary, norm, nw, eps, theta,
                               rope_pos, [&](u32 d, float v) { q[d] = v; });
            }
            for (u32 i = threadIdx.x; i < G * vhd; i += MIMO_THREADS) sm.acc[i] = 0.0f;
            for (u32 h = threadIdx.x; h < G; h += MIMO_THREADS) {
                sm.m[h] = neg_inf();
                sm.l[h] = 0.0f;
            }
            __syncthreads();

            for (u32 c0 = r0; c0 < r1; c0 += kAttnChunk) {
                const u32 n = min_u32(kAttnChunk, r1 - c0);
                if (threadIdx.x < n)
                    attention_scores(sm, k_cache + ((u64)(c0 + threadIdx.x) * kv_heads + kvh) * hd, G, hd, scale, vec);
                __syncthreads();
                attention_softmax_update(sm, G, n);
                __syncthreads();
                attention_values(sm, v_cache + ((u64)c0 * kv_heads + kvh) * vhd, v_row_stride, G, vhd, n, v32);
                __syncthreads();
            }

            const u32 slot0 = (t * heads + kvh * G) * splits + s;  // (t, first head of the group, s)
            for (u32 i = threadIdx.x; i < G * vhd; i += MIMO_THREADS) {
                const u32 h = i / vhd, d = i % vhd;
                st_f32(p.arena + a.acc + (u64)(slot0 + h * splits) * vhd + d, sm.acc[i]);
            }
            for (u32 h = threadIdx.x; h < G; h += MIMO_THREADS) {
                float* ml = p.arena + a.ml + (u64)(slot0 + h * splits) * 2u;
                st_f32(ml, sm.m[h]);
                st_f32(ml + 1, sm.l[h]);
            }
            __syncthreads();  // the next (unit, token) rewrites the shared state
        }
    }
    return kOk;
}

}  // namespace mimo
