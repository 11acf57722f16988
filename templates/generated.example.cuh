// An example of the per-model header the compiler writes as generated.cuh (the megakernel's
// first include), for Qwen3-30B-A3B decode: hidden 2048, 32 query heads and 4 KV heads of
// head_dim 128, 128 experts top-8 with expert dim 768, vocab 151936, T = 1. It lets
// templates/megakernel.cu compile on its own (inline it as generated.cuh).
#pragma once

// Threads per block (one block per worker / SM): whole warps; 256 is the tuned value.
#define MIMO_THREADS 256
// T: tokens per step, 1 for decode, up to 16 for verification. Sizes the register tiles.
#define MIMO_TOKENS 1
// The largest reduction length of any projection (here wo: 32 heads x 128). The templates do not
// use it (the compiler sizes MIMO_SMEM_BYTES with it).
#define MIMO_MAX_K 4096
// Limits of the register and shared-memory tables; a task beyond them stops the kernel with a
// diagnostic (see megakernel.cu).
#define MIMO_MAX_HEAD_DIM 128  // attention / kv_append head_dim (even, <= 256)
#define MIMO_MAX_TOP_K 8       // experts per token
#define MIMO_MAX_EXPERTS 128   // router width E

// Dynamic shared memory per block in bytes: the host raises the function's
// CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES to it and passes exactly this at launch. The
// kernel also has 160 bytes of static shared memory (the projection plan), so at most
// 232448 - 160 on sm_90. A task that needs more stops the kernel with a diagnostic naming the
// bytes it needs. Each task needs, with W = MIMO_THREADS / 32, NT = ceil(T / 8), G = HEADS /
// KV_HEADS, r16(x) = x rounded up to a multiple of 16, and
//   stage(rows, K) = rows * (round_up(ceil(K / 8), 8) + 2) * 16   (bf16 activation rows)
//   A = 2048 * W * NT                    (split-group partial sums of the projections)
//   N = r16(4 * W * T)                   (the RMSNorm's per-warp sums of squares)
//   R = r16(12 T TOP_K + 4 T^2 TOP_K + 8 MIMO_MAX_EXPERTS + 4)   (the routing table):
//   norm_matmul, lm_head   N + A + stage(T, K), K its reduction length (H for Qwen3 / Mixtral);
//                          also dense_gate_up; without a norm (and matmul_residual) a longer K
//                          runs in k-slabs of a multiple of 256 (at least N + A + stage(T, 256))
//   concat, accept         nothing
//   oproj_residual         A + stage(T, HEADS * HD)
//   expert_gate_up         R + N + A + stage(T, H)
//   expert_down            R + A + stage(T * TOP_K, I) for one pass over I; with less it runs in
//                          k-slabs of a multiple of 256 (at least R + A + stage(T * TOP_K, 256));
//                          the compiler sizes it for slabs of up to 1024, fewer where that passes
//                          the block's limit (T = 16)
//   attention_partial      r16(4 * (2 G HD + MIMO_THREADS * G + 3 G))
// Here the largest is expert_down: 1168 + 16384 + 8 * 1568 = 30096 bytes.
#define MIMO_SMEM_BYTES 49152
