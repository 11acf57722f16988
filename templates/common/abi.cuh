// The contract between the compiler (compiler/src/abi.rs mirrors every struct here, byte for byte)
// and the persistent kernel. Change one, change the other, and bump MIMO_ABI_VERSION in both.
//
// One launch runs one decode step. Grid = one block per worker (one per SM), MIMO_THREADS threads
// each. Worker w runs tasks[queue_start[w] .. queue_start[w+1]] in order. Before a task runs, the
// block waits until every event in its wait list has reached `per_step * (step + 1)`; after it
// ran, the block increments every event in its trigger list once. Counters are never reset: step
// s of a sequence waits for counts of step s, so nothing is cleared between launches.
//
// Activations live in one f32 arena (ids and positions as i32 in the same arena, same width);
// KV caches in a bf16 state buffer; weights in their stored formats, described by WeightRef.
// Every offset below counts elements of the buffer it indexes, not bytes.
#pragma once

#define MIMO_ABI_VERSION 2u
#define MIMO_NONE 0xffffffffu

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;

// Storage formats of a weight (WeightRef::format).
enum WeightFormat : u32 {
    FORMAT_F32 = 0,
    FORMAT_BF16 = 1,
    FORMAT_F16 = 2,
    FORMAT_MXFP4 = 3,  // data: packed E2M1 codes, 2 per byte, element 2j in the low nibble of byte j;
                       // scales: one E8M0 byte per 32 elements along a row
    FORMAT_NVFP4 = 4,  // data: packed E2M1 as MXFP4; scales: one E4M3 byte per 16 elements;
                       // value = (e2m1 * e4m3_scale) * tensor_scale, in that order, in f32
};

// A weight matrix: `rows` x `cols`, row-major along the reduction axis `cols` (nn.Linear layout:
// [out, in]). Stacked experts [E, N, K] are rows = E * N, cols = K; expert e starts at row e * N.
struct WeightRef {
    const void* data;
    const u8* scales;    // block scales (MXFP4 / NVFP4), else null
    float tensor_scale;  // NVFP4's per-tensor scale, else 1
    u32 format;
    u32 rows;
    u32 cols;
};

// Fused-op kinds: one device function each, in templates/ops/.
enum TaskKind : u32 {
    // y[t, :] = table[ids[t], :]      (Units: tokens, as the IR's embedding op.)
    //   values: [0] ids (i32 [T]), [1] y ([T, H])      weights: [0] table     dims: [0] H
    TASK_EMBED = 0,
    // Up to 3 projections of one input, over their concatenated output features:
    //   h = norm ? rms_norm(x, norm_w, eps) : x;  out_i[t, n] = sum_k h[t, k] * w_i[n, k]
    // A tile's units are features of the concatenation [0, N0) ++ [0, N1) ++ [0, N2). x has R
    // rows (any R: T at a time; the DFlash draft projects C context rows, or C + B rows). Without
    // a norm, K may be longer than the staged rows fit: the reduction then runs in k-slabs.
    //   values: [0] x ([R, K]), [1..=3] out_i ([R, N_i], MIMO_NONE when absent)
    //   weights: [0] norm weight ([K], MIMO_NONE for no norm), [1..=3] w_i
    //   dims: [0] K, [1..=3] N_i (0 when absent), [4] R      fparams: [0] eps
    TASK_NORM_MATMUL = 1,
    // Per KV head h in the tile, for every token t at position p = positions[t]:
    //   k_h = rope(qk_norm ? rms_norm(k_raw[t, h, :], k_norm_w) : k_raw[t, h, :], p)
    //   k_cache[p, h, :] = k_h;  v_cache[p, h, :] = v_raw[t, h, :]        (units: KV heads)
    //   values: [0] k_raw ([T, KVH*HD]), [1] v_raw, [2] positions (i32 [T])
    //   state:  [0] k_cache offset, [1] v_cache offset (bf16 [CTX, KVH, HD] in the state buffer)
    //   weights: [0] k_norm weight ([HD], MIMO_NONE when the model has no q/k norm)
    //   dims: [0] KVH, [1] HD, [2] rows of k_raw / v_raw (T, or C + B in the DFlash draft)
    //   fparams: [0] eps, [1] rope theta
    TASK_KV_APPEND = 2,
    // Split-K attention. Unit u = KV head u / splits, split s = u % splits; it serves the
    // G = HEADS / KVH query heads of that KV head. For token t the context is L = positions[t] + 1
    // rows and split s covers rows [s*L/splits, (s+1)*L/splits). Prologue per query head:
    //   q_h = rope(qk_norm ? rms_norm(q_raw[t, h, :], q_norm_w) : q_raw[t, h, :], rope_pos[t])
    // with rope_pos = values[4], or positions when values[4] is MIMO_NONE (the DFlash draft's
    // queries sit at their own positions but all attend up to the block's last).
    //   scores_j = scale * dot(q_h, k_cache[j, kvh, :]);  m = max_j scores_j;
    //   l = sum_j exp(scores_j - m);  acc = sum_j exp(scores_j - m) * v_cache[j, kvh, :]
    // Empty split: m = -inf, l = 0, acc = 0.
    //   values: [0] q_raw ([T, HEADS*HD]), [1] positions, [2] acc ([T, HEADS, splits, HD]),
    //           [3] ml ([T, HEADS, splits, 2] = (m, l)), [4] rope_pos (i32 [T]) or MIMO_NONE
    //   state: [0] k_cache, [1] v_cache     weights: [0] q_norm weight or MIMO_NONE
    //   dims: [0] HEADS, [1] KVH, [2] HD, [3] splits, [4] CTX     fparams: [0] eps, [1] theta, [2] scale
    TASK_ATTENTION_PARTIAL = 3,
    // Prologue: attn[t, h, :] = sum_s exp(m_s - M) acc_s / sum_s exp(m_s - M) l_s  (M = max m_s,
    // skipping l_s == 0), flattened to [T, HEADS*HD]; then out = residual + attn @ wo^T.
    // Units: output features (H).
    //   values: [0] acc, [1] ml, [2] residual ([T, H]), [3] out ([T, H])
    //   weights: [0] wo ([H, HEADS*HD])      dims: [0] HEADS, [1] HD, [2] splits, [3] H
    TASK_OPROJ_RESIDUAL = 4,
    // Prologue: h = rms_norm(x, norm_w); routing of each token from its router logits:
    //   p = softmax(logits[t, :]); the TOP_K largest (the lower index first on ties), in
    //   descending order; weights renormalised to sum 1 when norm_topk.
    // Then for routed slot j of token t (expert e = id[t, j]) and feature n in the tile:
    //   act[t, j, n] = silu(sum_k h[t,k] gate[e, n, k]) * (sum_k h[t,k] up[e, n, k])
    // Units: expert features (I).
    //   values: [0] x ([T, H]), [1] router logits ([T, E]), [2] act ([T, TOP_K, I])
    //   weights: [0] norm weight, [1] gate ([E*I, H]), [2] up ([E*I, H])
    //   dims: [0] H, [1] E, [2] TOP_K, [3] I, [4] norm_topk (0/1)     fparams: [0] eps
    TASK_EXPERT_GATE_UP = 5,
    // Routing as above (from the router logits), then for feature n of the tile:
    //   out[t, n] = residual[t, n] + sum_j w[t, j] * sum_i act[t, j, i] down[e_j, n, i]
    // (slots summed in order j = 0, 1, ...). Units: hidden features (H).
    //   values: [0] act ([T, TOP_K, I]), [1] router logits, [2] residual ([T, H]), [3] out ([T, H])
    //   weights: [0] down ([E*H, I])     dims: [0] H, [1] E, [2] TOP_K, [3] I, [4] norm_topk
    TASK_EXPERT_DOWN = 6,
    // h = rms_norm(x, norm_w); logits[t, n] = h[t, :] . w[n, :] for n in the tile; then for every
    // whole chunk c of CHUNK vocabulary entries in the tile: the chunk's largest logit and its
    // index (the first on ties). Tiles are aligned to CHUNK. Units: vocabulary entries (V).
    //   values: [0] x ([T, H]), [1] logits ([T, V]), [2] chunk maxima (f32 [T, V/CHUNK rounded up]),
    //           [3] chunk argmax (i32, same shape)
    //   weights: [0] norm weight, [1] lm_head ([V, H])    dims: [0] H, [1] V, [2] CHUNK
    //   fparams: [0] eps
    TASK_LM_HEAD = 7,
    // next[t] = the id of the first chunk with the largest maximum. Units: tokens.
    //   values: [0] chunk maxima, [1] chunk argmax, [2] next (i32 [T])    dims: [0] chunks
    TASK_ARGMAX_COMBINE = 8,
    // A dense SwiGLU's first half: h = norm ? rms_norm(x, norm_w, eps) : x;
    //   act[r, n] = silu(sum_k h[r, k] gate[n, k]) * (sum_k h[r, k] up[n, k])
    // Units: features (N). x has R rows, T at a time. Slots as TASK_NORM_MATMUL's:
    //   values: [0] x ([R, K]), [1] act ([R, N])
    //   weights: [0] norm weight or MIMO_NONE, [1] gate ([N, K]), [2] up ([N, K])
    //   dims: [0] K, [1] N, [4] R      fparams: [0] eps
    TASK_DENSE_GATE_UP = 9,
    // out[r, n] = residual[r, n] + sum_k x[r, k] w[n, k] (a dense MLP's down projection; k-slabs
    // as TASK_NORM_MATMUL). Units: features (N). Slots as TASK_NORM_MATMUL's with one weight:
    //   values: [0] x ([R, K]), [1] out ([R, N]), [4] residual ([R, N])
    //   weights: [0] MIMO_NONE, [1] w ([N, K])      dims: [0] K, [1] N, [4] R
    TASK_MATMUL_RESIDUAL = 10,
    // y = [a' | b'] joined on axis 0 (rows) or 1 (columns), where a' = rms_norm(a, norm_a, eps_a)
    // when norm_a is given, else a (the same for b):  rms_norm(x)[r, c] = w[c] * (x[r, c] * inv_r),
    // inv_r = 1 / sqrt(mean_c x[r, c]^2 + eps). Units: columns of y.
    //   values: [0] a ([Ra, Ca]), [1] b ([Rb, Cb]), [2] y
    //   weights: [0] norm_a or MIMO_NONE, [1] norm_b or MIMO_NONE
    //   dims: [0] axis, [1] Ra, [2] Ca, [3] Rb, [4] Cb      fparams: [0] eps_a, [1] eps_b
    TASK_CONCAT = 11,
    // DFlash acceptance of a verified block (ir/src/ops/accept.rs): a = the number of leading i
    // with block[i + 1] == posterior[i]; accepted[0] = a; committed[i] = i <= a ? posterior[i] : -1.
    // One unit.
    //   values: [0] block (i32 [B]), [1] posterior (i32 [B]), [2] accepted (i32 [1]),
    //           [3] committed (i32 [B])      dims: [0] B
    TASK_ACCEPT = 12,
};

// One task: a tile of a fused op, with the events it waits for and triggers.
struct Task {
    u32 kind;
    u32 op;  // index into KernelParams::ops
    u32 unit_begin;
    u32 unit_end;
    u32 wait_begin;  // into KernelParams::waits
    u32 wait_count;
    u32 trigger_begin;  // into KernelParams::triggers (event ids)
    u32 trigger_count;
};

struct Wait {
    u32 event;
    u32 per_step;  // proceed when events[event] >= per_step * (step + 1)
};

// The operands of one fused op (see TaskKind for what each slot means).
struct OpArgs {
    u32 values[8];   // arena offsets (f32 or i32 elements)
    u32 state[2];    // state-buffer offsets (bf16 elements)
    u32 weights[4];  // indices into KernelParams::weights
    u32 dims[8];
    float fparams[4];
};

// Written by the first wait that gives up; the host turns it into an error naming the task.
// A task whose shapes exceed what the kernel was built for stops the kernel the same way, with
// event = MIMO_NONE, observed = 1 (a MIMO_MAX_* limit or an unknown kind) or the bytes of dynamic
// shared memory the task needs, and expected = MIMO_SMEM_BYTES (see templates/megakernel.cu).
struct Diagnostics {
    u32 aborted;  // nonzero once any block gave up; every other wait then returns at once
    u32 worker;
    u32 task;     // index into tasks
    u32 event;
    u32 observed;
    u32 expected;
};

struct KernelParams {
    const Task* tasks;
    const u32* queue_start;  // [workers + 1]
    const Wait* waits;
    const u32* triggers;
    const OpArgs* ops;
    const WeightRef* weights;
    float* arena;
    u16* state;  // bf16 KV caches
    u32* events;
    Diagnostics* diag;
    u64 wait_limit_ns;  // a wait longer than this gives up
    u32 step;           // steps since the events were zeroed (the sequence's step counter)
    u32 workers;
};
