// The projection engine every matmul-like op uses: out[n, t] = sum_k W[n, k] * B_t[k] for the
// 16-row groups of a task, on tensor cores (weights on the M side, tokens on N; see mma.cuh).
//
// B (the activations) is staged once per task in shared memory as bf16 rows ("B rows"),
// swizzled so that the lanes of a warp read conflict-free.
// Each output group (16 weight rows) is the sum of one or more "terms": a term is a run of up
// to 16 rows of one weight read against some B rows (one per token column), scaled per column
// (e.g. an expert's routing weight). The work of a pass is cut into cells (group, term, 256-wide
// slice of k) and the cells are split evenly over the warps in order, so a group's cells lie on
// consecutive warps. A warp that owns a whole group hands it straight to the op's epilogue from
// registers; a group split over warps is summed through shared memory in warp order
// (deterministic) by the warp that owns its first cell.
//
// Each lane streams two weight rows with 16-byte loads (common/weights.cuh), decodes them to bf16
// in registers and feeds one mma per 4 k of its granule; the bf16 and FP4 paths keep the next
// stage's loads in flight while the current one is computed.
//
// An op describes itself with a mapping object (its policy), the same interface for all:
//   Term term(u32 group, u32 t) const;              which weight rows
//   u32 b_row(u32 group, u32 t, u32 n) const;       staged B row of token column n (n < 8 * NT)
//   float col_scale(u32 group, u32 t, u32 n) const; 0 drops the column
//   u32 group_rows(u32 group) const;                valid rows (1..16)
//   void emit(u32 group, u32 row, u32 n, float plane0, float plane1) const;  row < group_rows, n < T
// stores it in a ProjPlan in shared memory with the pass and the work size (groups, terms per
// group), and calls run_projection(): one engine instance (ops/projections.cuh) serves all the
// ops, so the format-specialised inner loops exist once in the kernel.
#pragma once

#include "common/mma.cuh"
#include "common/norm.cuh"
#include "common/weights.cuh"

namespace mimo {

constexpr u32 kCellK = 256;  // k-width of a work cell

// ---- staged B rows ----

struct BStage {
    u32 base;    // shared-window address of row 0
    u32 stride;  // bytes per row
};

// Bytes per staged row of `width` bf16: whole 16-byte granules, rounded up to 8 granules (the
// swizzle pairs granules inside each 8) plus 2, so that consecutive rows start 2 granules apart
// in the bank space (fewer conflicts when token rows differ, T > 1).
__device__ __forceinline__ u32 stage_stride_bytes(u32 width) { return (round_up(div_ceil(width, 8u), 8u) + 2u) * 16u; }

// Byte offset of element k (even) in a staged row: 16-byte granule q = k / 8 is stored at
// q ^ ((q >> 3) & 1). The four lanes of an FP4 row read granules 4c + j (c = lane % 4): without
// the swap lanes 0 and 2 (and 1 and 3) would hit the same banks.
__device__ __forceinline__ u32 stage_offset(u32 k) { return ((((k >> 3) ^ ((k >> 6) & 1u)) << 4) | ((k & 7u) << 1)); }

__device__ __forceinline__ void stage_pair(const BStage& s, u32 row, u32 k, float v0, float v1) {
    sts_u32(s.base + row * s.stride + stage_offset(k), pack_bf16x2(v0, v1));
}

// Zeros in columns [round_up(width, 2), round_up(width, 8)) of `rows` staged rows: a lane reads
// whole 8-byte quads, the last one partly past `width` on the scalar path.
__device__ __forceinline__ void stage_zero_tail(const BStage& s, u32 rows, u32 width) {
    const u32 first = round_up(width, 2u) / 2u, pairs = round_up(width, 8u) / 2u - first;
    for (u32 i = threadIdx.x; i < rows * pairs; i += MIMO_THREADS)
        stage_pair(s, i / pairs, 2u * (first + i % pairs), 0.0f, 0.0f);
}

// Fills `rows` staged rows with value(row, k) for k < width, zeros after. All threads; the
// caller synchronises before use.
template <class F>
__device__ __forceinline__ void stage_rows(const BStage& s, u32 rows, u32 width, const F& value) {
    const u32 half = div_ceil(width, 2u);
    for (u32 i = threadIdx.x; i < rows * half; i += MIMO_THREADS) {
        const u32 row = i / half, k = 2u * (i % half);
        const float v0 = value(row, k);
        const float v1 = k + 1 < width ? value(row, k + 1) : 0.0f;
        stage_pair(s, row, k, v0, v1);
    }
    stage_zero_tail(s, rows, width);
}

// ---- work description ----

struct Term {
    u32 weight;  // index into KernelParams::weights
    u64 row0;    // first weight row
    u32 nrows;   // 1..16
    u32 plane;   // accumulator plane: 0, or 1 (the up projection of gate/up)
};

struct Pass {
    u32 k_lo, k_hi;  // the k-slab staged in B (k_lo a multiple of kCellK)
    BStage stage;    // staged column k_lo + j is at stage_offset(j)
    float* slots;    // kSlotFloats floats of shared memory for split groups
};

// Partial sums of split groups: [warp][2 slots][2 planes][NT][4][32 lanes].
constexpr u32 kSlotFloats = kWarps * 2u * 2u * kNTiles * 4u * 32u;

typedef float Acc[kNTiles][4];
typedef float GroupAcc[2][kNTiles][4];

// What a projection op hands to the shared engine instance (ops/projections.cuh): its kind, the
// size of the work, the pass, and its mapping object (the op's policy struct, see the top of
// this file) stored in `map`. One per block, in static shared memory (proj_plan), so that the
// dynamic shared memory needs (compiler/src/kinds/) need not count it; thread 0 writes it,
// and a barrier precedes run_projection().
struct ProjPlan {
    u32 kind;  // TaskKind
    u32 groups, terms;
    Pass pass;
    alignas(16) u8 map[112];
};
__shared__ ProjPlan proj_plan;

template <class Map>
__device__ __forceinline__ const Map& plan_map(const ProjPlan& plan) {
    static_assert(sizeof(Map) <= sizeof(ProjPlan::map), "mapping object too large for ProjPlan::map");
    return *(const Map*)plan.map;
}
template <class Map>
__device__ __forceinline__ void set_plan_map(ProjPlan& plan, const Map& map) {
    static_assert(sizeof(Map) <= sizeof(ProjPlan::map), "mapping object too large for ProjPlan::map");
    *(Map*)plan.map = map;
}

// Runs one pass of `plan` (all threads; see project() below). The one instance of the engine,
// defined in ops/projections.cuh once every op's mapping is known.
__device__ __noinline__ void run_projection(const KernelParams& p, const ProjPlan& plan);

// ---- the inner loop: one term's rows over a run of k ----

// The shared address of staged column k_stage + in_stage (a multiple of 4) for the lane's B row
// `bcol`, or of the row's first column when that granule lies past k_end: its A elements are
// zero, so any finite B will do, and the read stays inside the staged row. When the stage start
// k_stage - k_lo is a multiple of 128 (every path but f32 / scalar), the swizzle only depends on
// the offset inside the stage, a per-lane constant the compiler hoists.
template <u32 SK>
__device__ __forceinline__ u32 b_addr(u32 bcol, u32 k_stage, u32 k_lo, u32 in_stage, bool in_range) {
    u32 off;
    if constexpr (SK % 128u == 0) off = 2u * (k_stage - k_lo) + stage_offset(in_stage);
    else off = stage_offset(k_stage - k_lo + in_stage);
    return bcol + (in_range ? off : 0u);
}

// One mma step per 4 k of every granule of a stage (unrolled: the fast paths). A is zero past
// k_end (load_stage).
template <u32 PATH, bool EXACT_MX>
__device__ __forceinline__ void compute_stage(const StageRegs<PATH>& s, u32 k_stage, u32 k_lo, u32 k_end,
                                              const u32 (&bcol)[kNTiles], Acc& acc) {
    constexpr u32 SEG = PathTraits<PATH>::SEG;
    constexpr u32 U = PathTraits<PATH>::U;
    const u32 c = lane_id() & 3u;
#pragma unroll
    for (u32 u = 0; u < U; ++u) {
        u32 f0[2], f1[2];
        granule_factors<PATH, EXACT_MX>(s.scale[0][u], f0);
        granule_factors<PATH, EXACT_MX>(s.scale[1][u], f1);
        const bool in_range = k_stage + (4u * u + c) * SEG < k_end;
#pragma unroll
        for (u32 step = 0; step < SEG / 4u; ++step) {
            const u32 in_stage = (4u * u + c) * SEG + 4u * step;
            u32 b[kNTiles][2];
#pragma unroll
            for (u32 nt = 0; nt < kNTiles; ++nt)
                lds_v2(b_addr<stage_k<PATH>()>(bcol[nt], k_stage, k_lo, in_stage, in_range), b[nt][0], b[nt][1]);
            u32 a[4];
            step_pairs<PATH, EXACT_MX>(s.v[0][u], f0[step / 4u], step, a[0], a[2]);
            step_pairs<PATH, EXACT_MX>(s.v[1][u], f1[step / 4u], step, a[1], a[3]);
#pragma unroll
            for (u32 nt = 0; nt < kNTiles; ++nt) mma_bf16_16816(acc[nt], a, b[nt][0], b[nt][1]);
        }
    }
}

// The same with the steps rolled (small code): the rare MXFP4 stages with a scale above 128.
template <u32 PATH>
__device__ __forceinline__ void compute_stage_rolled(const StageRegs<PATH>& s, u32 k_stage, u32 k_lo, u32 k_end,
                                                     const u32 (&bcol)[kNTiles], Acc& acc) {
    constexpr u32 SEG = PathTraits<PATH>::SEG;
    constexpr u32 U = PathTraits<PATH>::U;
    const u32 c = lane_id() & 3u;
#pragma unroll
    for (u32 u = 0; u < U; ++u) {
        const U32x4 v0 = s.v[0][u], v1 = s.v[1][u];
        // One 32-element block per granule: one factor for all steps.
        const u32 s0 = mxfp4_factor_exact(s.scale[0][u]), s1 = mxfp4_factor_exact(s.scale[1][u]);
        const bool in_range = k_stage + (4u * u + c) * SEG < k_end;
#pragma unroll 1
        for (u32 step = 0; step < SEG / 4u; ++step) {
            const u32 in_stage = (4u * u + c) * SEG + 4u * step;
            u32 b[kNTiles][2];
#pragma unroll
            for (u32 nt = 0; nt < kNTiles; ++nt)
                lds_v2(b_addr<stage_k<PATH>()>(bcol[nt], k_stage, k_lo, in_stage, in_range), b[nt][0], b[nt][1]);
            u32 a[4];
            step_pairs<PATH, true>(v0, s0, step, a[0], a[2]);
            step_pairs<PATH, true>(v1, s1, step, a[1], a[3]);
#pragma unroll
            for (u32 nt = 0; nt < kNTiles; ++nt) mma_bf16_16816(acc[nt], a, b[nt][0], b[nt][1]);
        }
    }
}

template <u32 PATH>
__device__ __forceinline__ void compute_stage_any(const StageRegs<PATH>& s, u32 k_stage, u32 k_lo, u32 k_end,
                                                  const u32 (&bcol)[kNTiles], Acc& acc) {
    if constexpr (PATH == PATH_MXFP4) {
        // Scales above 128 (block maxima of 16 or more) need the two-multiply decode; the vote
        // keeps the common case at one multiply per pair.
        bool big = false;
#pragma unroll
        for (u32 h = 0; h < 2; ++h)
#pragma unroll
            for (u32 u = 0; u < PathTraits<PATH>::U; ++u) big |= s.scale[h][u] > 128u;
        if (__any_sync(kFullMask, big)) {
            compute_stage_rolled<PATH>(s, k_stage, k_lo, k_end, bcol, acc);
            return;
        }
    }
    compute_stage<PATH, false>(s, k_stage, k_lo, k_end, bcol, acc);
}

// Streams k in [k_begin, k_stop) of the lane's two rows. The common formats (bf16, FP4) are
// double-buffered: the next stage's loads are in flight while this stage is decoded and
// multiplied. f32, f16 and the scalar path load and compute in turn (correctness over speed).
template <u32 PATH>
__device__ __forceinline__ void run_rows(const LaneRows& r, u32 k_begin, u32 k_stop, u32 k_lo,
                                         const u32 (&bcol)[kNTiles], Acc& acc) {
    constexpr u32 SK = stage_k<PATH>();
    if (r.k_end <= k_begin) return;
    k_stop = min_u32(k_stop, k_begin + round_up(r.k_end - k_begin, SK));
    const u32 c = lane_id() & 3u;
    if constexpr (PATH == PATH_BF16 || PATH == PATH_MXFP4 || PATH == PATH_NVFP4) {
        StageRegs<PATH> s0, s1;
        u32 k = k_begin;
        load_stage<PATH>(s0, r, k, c);
        for (;;) {
            if (k + SK < k_stop) load_stage<PATH>(s1, r, k + SK, c);
            compute_stage_any<PATH>(s0, k, k_lo, r.k_end, bcol, acc);
            k += SK;
            if (k >= k_stop) break;
            if (k + SK < k_stop) load_stage<PATH>(s0, r, k + SK, c);
            compute_stage_any<PATH>(s1, k, k_lo, r.k_end, bcol, acc);
            k += SK;
            if (k >= k_stop) break;
        }
    } else {
        for (u32 k = k_begin; k < k_stop; k += SK) {
            StageRegs<PATH> s;
            load_stage<PATH>(s, r, k, c);
            compute_stage<PATH, false>(s, k, k_lo, r.k_end, bcol, acc);
        }
    }
}

// Cells [kc0, kc1) of term t of group `group`, added into the group accumulator.
template <class Op>
__device__ __forceinline__ void run_term(const KernelParams& p, const Op& op, const Pass& pass, u32 group, u32 t,
                                         u32 kc0, u32 kc1, GroupAcc& gacc) {
    const u32 g = lane_id() >> 2, c = lane_id() & 3u;
    const Term tm = op.term(group, t);
    LaneRows r;
    r.w = weight_desc(p, tm.weight);
    r.k_end = min_u32(r.w.cols, pass.k_hi);
#pragma unroll
    for (u32 h = 0; h < 2; ++h) {
        r.row[h] = tm.row0 + g + 8u * h;
        r.valid[h] = g + 8u * h < tm.nrows;
    }
    u32 bcol[kNTiles];
#pragma unroll
    for (u32 nt = 0; nt < kNTiles; ++nt) bcol[nt] = pass.stage.base + op.b_row(group, t, g + 8u * nt) * pass.stage.stride;

    Acc acc;
#pragma unroll
    for (u32 nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (u32 i = 0; i < 4; ++i) acc[nt][i] = 0.0f;

    const u32 k_begin = pass.k_lo + kc0 * kCellK, k_stop = pass.k_lo + kc1 * kCellK;
    const u32 path = choose_path(r.w);
    lane_rows_pointers(r, path);
    switch (path) {
        case PATH_F32: run_rows<PATH_F32>(r, k_begin, k_stop, pass.k_lo, bcol, acc); break;
        case PATH_BF16: run_rows<PATH_BF16>(r, k_begin, k_stop, pass.k_lo, bcol, acc); break;
        case PATH_F16: run_rows<PATH_F16>(r, k_begin, k_stop, pass.k_lo, bcol, acc); break;
        case PATH_MXFP4: run_rows<PATH_MXFP4>(r, k_begin, k_stop, pass.k_lo, bcol, acc); break;
        case PATH_NVFP4: run_rows<PATH_NVFP4>(r, k_begin, k_stop, pass.k_lo, bcol, acc); break;
        default: run_rows<PATH_SCALAR>(r, k_begin, k_stop, pass.k_lo, bcol, acc); break;
    }
    // NVFP4's tensor scale is applied to the dot product (times 2^8 on the vector path, whose
    // decoded weights are e2m1 * e4m3 * 2^-8).
    float post = 1.0f;
    if (r.w.format == FORMAT_NVFP4) post = path == PATH_NVFP4 ? r.w.tensor_scale * kNvfp4PostScale : r.w.tensor_scale;

#pragma unroll
    for (u32 nt = 0; nt < kNTiles; ++nt) {
#pragma unroll
        for (u32 j = 0; j < 2; ++j) {
            const float cs = op.col_scale(group, t, 2u * c + j + 8u * nt);
#pragma unroll
            for (u32 i = j; i < 4; i += 2) {
                const float v = cs == 0.0f ? 0.0f : acc[nt][i] * post * cs;
                if (tm.plane == 0) gacc[0][nt][i] += v;
                else gacc[1][nt][i] += v;
            }
        }
    }
}

template <class Op>
__device__ __forceinline__ void emit_group(const Op& op, u32 group, const GroupAcc& gacc) {
    const u32 rows = op.group_rows(group);
#pragma unroll
    for (u32 nt = 0; nt < kNTiles; ++nt)
#pragma unroll
        for (u32 i = 0; i < 4; ++i) {
            const u32 row = frag_row(i), n = frag_col(i) + 8u * nt;
            if (row < rows && n < kTokens) op.emit(group, row, n, gacc[0][nt][i], gacc[1][nt][i]);
        }
}

__device__ __forceinline__ float* slot_ptr(float* slots, u32 warp, u32 slot) {
    return slots + (warp * 2u + slot) * (2u * kNTiles * 4u * 32u) + lane_id();
}

__device__ __forceinline__ u32 cells_begin(u32 warp, u32 cells) { return (u32)((u64)warp * cells / kWarps); }

// Runs one pass: every warp its share of the cells, then the split groups' reduction. Ends after
// the reduction with no trailing barrier: the caller synchronises before reusing the staged rows
// or the slots, or before reading what emit() wrote.
template <class Op>
__device__ __forceinline__ void project(const KernelParams& p, const Op& op, const Pass& pass) {
    const u32 kcells = div_ceil(pass.k_hi - pass.k_lo, kCellK);
    const u32 per_group = max_u32(op.terms * kcells, 1u);
    const u32 cells = op.groups * op.terms * kcells;
    const u32 warp = warp_id();
    const u32 cb = cells_begin(warp, cells), ce = cells_begin(warp + 1, cells);
    const u32 first_group = cb / per_group;

    GroupAcc gacc;
    auto clear = [&]() {
#pragma unroll
        for (u32 pl = 0; pl < 2; ++pl)
#pragma unroll
            for (u32 nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                for (u32 i = 0; i < 4; ++i) gacc[pl][nt][i] = 0.0f;
    };
    clear();
    for (u32 ci = cb; ci < ce;) {
        const u32 group = ci / per_group, in_group = ci % per_group;
        const u32 t = in_group / kcells, kc0 = in_group % kcells;
        const u32 run = min_u32(ce - ci, kcells - kc0);
        run_term(p, op, pass, group, t, kc0, kc0 + run, gacc);
        ci += run;
        if (ci == ce || ci % per_group == 0) {
            // This warp is done with `group`.
            const bool whole = group * per_group >= cb && (group + 1) * per_group <= ce;
            if (whole) {
                emit_group(op, group, gacc);
            } else {
                float* slot = slot_ptr(pass.slots, warp, group == first_group ? 0u : 1u);
#pragma unroll
                for (u32 pl = 0; pl < 2; ++pl)
#pragma unroll
                    for (u32 nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                        for (u32 i = 0; i < 4; ++i) slot[((pl * kNTiles + nt) * 4u + i) * 32u] = gacc[pl][nt][i];
            }
            clear();
        }
    }
    __syncthreads();

    // The warp owning the first cell of a split group sums the group's slots in warp order.
    if (cb >= ce) return;
    const u32 group = (ce - 1) / per_group;
    const u32 g_begin = group * per_group, g_end = g_begin + per_group;
    const bool whole = g_begin >= cb && g_end <= ce;
    if (whole || g_begin < cb) return;
    clear();
    for (u32 w = warp; w < kWarps; ++w) {
        const u32 wb = cells_begin(w, cells), we = cells_begin(w + 1, cells);
        if (wb >= g_end) break;
        if (wb >= we) continue;  // an empty share holds nothing
        const float* slot = slot_ptr(pass.slots, w, group == wb / per_group ? 0u : 1u);
#pragma unroll
        for (u32 pl = 0; pl < 2; ++pl)
#pragma unroll
            for (u32 nt = 0; nt < kNTiles; ++nt)
#pragma unroll
                for (u32 i = 0; i < 4; ++i) gacc[pl][nt][i] += slot[((pl * kNTiles + nt) * 4u + i) * 32u];
    }
    emit_group(op, group, gacc);
}

// ---- setting a pass up ----

// Carves the split-group slots and a stage of `rows` B rows of `width` columns. Returns kOk, or
// the shared-memory bytes the pass would need when MIMO_SMEM_BYTES is too small.
__device__ __forceinline__ u32 carve_pass(Carve& cv, const u8* smem, u32 rows, u32 width, Pass& pass) {
    pass.slots = cv.take<float>(kSlotFloats);
    const u32 stride = stage_stride_bytes(width);
    u8* stage = cv.take<u8>(rows * stride);
    if (cv.next > cv.end) return cv.used(smem);
    pass.stage.base = smem_addr(stage);
    pass.stage.stride = stride;
    pass.k_lo = 0;
    pass.k_hi = width;
    return kOk;
}

// RMSNorm of the staged rows, applied to the dot products: rms_norm(x) . w = inv_t * (w_norm * x) . w
// with inv_t = 1 / sqrt(mean(x[t]^2) + eps). The rows are staged as bf16(w_norm * x) and each
// warp's sum of squares lands in `red` [kWarps][kTokens]; inv_t is computed where a column scale
// is needed, after the barrier that precedes the projection. This saves a pass over x and two
// barriers per task.
struct RowNorm {
    const float* red;  // shared, kWarps * kTokens floats; null: no norm
    u32 K;
    float eps;
    __device__ float scale(u32 t) const {
        if (red == nullptr) return 1.0f;
        float s = 0.0f;
        for (u32 w = 0; w < kWarps; ++w) s += red[w * kTokens + t];
        return 1.0f / sqrtf(s / (float)K + eps);
    }
};

// Stages w_norm * x (x when norm_weight is MIMO_NONE) for the `rows` (<= T) rows of x [rows, K]
// (arena) as B rows 0..rows-1, zeros in B rows rows..T-1, and returns the RowNorm to apply.
// `red` is shared scratch of kWarps * kTokens floats that must stay untouched until the
// projection ends. All threads; the caller synchronises before the projection.
__device__ __forceinline__ RowNorm stage_normed_rows(const KernelParams& p, const float* x, u32 K, u32 norm_weight,
                                                     float eps, const BStage& stage, float* red,
                                                     u32 rows = kTokens) {
    const bool norm = norm_weight != MIMO_NONE;
    WeightDesc nw = {};
    if (norm) nw = weight_desc(p, norm_weight);
    float ssq[kTokens];
#pragma unroll
    for (u32 t = 0; t < kTokens; ++t) ssq[t] = 0.0f;
    for (u32 k = 2u * threadIdx.x; k < K; k += 2u * MIMO_THREADS) {
        const bool pair = k + 1 < K;
        const float w0 = norm ? weight_element(nw, 0, k) : 1.0f;
        const float w1 = !pair ? 0.0f : (norm ? weight_element(nw, 0, k + 1) : 1.0f);
#pragma unroll
        for (u32 t = 0; t < kTokens; ++t) {
            // Rows past `rows` are not read (x may end there): zeros, which add nothing.
            const bool live = t < rows;
            const float v0 = live ? ld_act_f32(x + t * K + k) : 0.0f;
            const float v1 = live && pair ? ld_act_f32(x + t * K + k + 1) : 0.0f;
            ssq[t] = fmaf(v0, v0, fmaf(v1, v1, ssq[t]));
            stage_pair(stage, t, k, w0 * v0, w1 * v1);
        }
    }
    stage_zero_tail(stage, kTokens, K);
    RowNorm rn = {nullptr, K, eps};
    if (norm) {
#pragma unroll
        for (u32 t = 0; t < kTokens; ++t) {
            const float s = warp_sum(ssq[t]);
            if (lane_id() == 0) red[warp_id() * kTokens + t] = s;
        }
        rn.red = red;
    }
    return rn;
}

}  // namespace mimo
