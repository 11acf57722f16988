// Weights in their stored formats (WeightRef, declared in generated.cuh): scalar element reads,
// and the per-lane streaming loads + decode that feed the tensor-core projections
// (common/project.cuh).
//
// Formats (WeightRef::format, the FORMAT_* of generated.cuh): f32, bf16 and f16 elements, little-
// endian; MXFP4: packed E2M1 codes, 2 per byte, element 2j in the low nibble of byte j, and one
// E8M0 scale byte per 32 elements along a row; NVFP4: the codes as MXFP4, one E4M3 scale byte per
// 16 elements, value = (e2m1 * e4m3_scale) * tensor_scale, in that order, in f32.
//
// Streaming layout (one 16-row group of a weight, one mma per 16 k): lane (g, c) reads rows g and
// g + 8 of the group, in 16-byte "granules" of SEG elements (4 f32, 8 bf16/f16, 32 fp4 codes).
// Within a stage of a run, granule u of lane c starts at k = k_stage + (4u + c) * SEG, so the four
// lanes of a row read 64 contiguous bytes per load instruction (a warp: 8 rows x 64 bytes). A
// stage is U granules per row (2U loads in flight per lane, and the next stage is loaded while
// this one is computed). The mma slot map of common/mma.cuh makes each 4-k step of a granule one
// mma: A pairs straight from the granule's registers, B from one 8-byte shared load.
#pragma once

#include "common/fp4.cuh"
#include "common/memory.cuh"

namespace mimo {

// The fields of a WeightRef a projection needs, read once per term.
struct WeightDesc {
    const u8* data;
    const u8* scales;
    float tensor_scale;
    u32 format;
    u32 cols;  // K, the reduction length
};

__device__ __forceinline__ WeightDesc weight_desc(const KernelParams& p, u32 index) {
    const WeightRef& w = p.weights[index];
    WeightDesc d;
    d.data = (const u8*)w.data;
    d.scales = w.scales;
    d.tensor_scale = w.tensor_scale;
    d.format = w.format;
    d.cols = w.cols;
    return d;
}

__device__ __forceinline__ u32 e2m1_code_at(const u8* data, u64 element) {
    const u32 byte = ld_weight_u8(data + (element >> 1));
    return (element & 1u) ? (byte >> 4) : (byte & 0xfu);
}

// One element of a weight as f32: exact for every format (NVFP4 is (e2m1 * e4m3) * tensor_scale
// in that order; with `nvfp4_tensor_scale` false the tensor scale is left to the caller).
__device__ __forceinline__ float weight_element(const WeightDesc& w, u64 row, u32 k, bool nvfp4_tensor_scale = true) {
    const u64 i = row * w.cols + k;
    switch (w.format) {
        case FORMAT_F32: return __uint_as_float(ld_weight_u32(w.data + i * 4u));
        case FORMAT_BF16: return bf16_to_f32(ld_weight_u16(w.data + i * 2u));
        case FORMAT_F16: return f16_to_f32(ld_weight_u16(w.data + i * 2u));
        case FORMAT_MXFP4: {
            const u32 s = ld_weight_u8(w.scales + row * (w.cols / 32u) + k / 32u);
            return e2m1_to_f32(e2m1_code_at(w.data, i)) * e8m0_to_f32(s);
        }
        case FORMAT_NVFP4: {
            const u32 s = ld_weight_u8(w.scales + row * (w.cols / 16u) + k / 16u);
            const float v = e2m1_to_f32(e2m1_code_at(w.data, i)) * e4m3_to_f32(s);
            return nvfp4_tensor_scale ? v * w.tensor_scale : v;
        }
        default: return 0.0f;
    }
}

// ---- streaming paths ----

enum LoadPath : u32 {
    PATH_F32 = 0,
    PATH_BF16 = 1,
    PATH_F16 = 2,
    PATH_MXFP4 = 3,
    PATH_NVFP4 = 4,
    PATH_SCALAR = 5,  // any format, any alignment: element by element (tiny test models)
};

template <u32 PATH> struct PathTraits;
template <> struct PathTraits<PATH_F32> { static constexpr u32 SEG = 4, U = 4; };
template <> struct PathTraits<PATH_BF16> { static constexpr u32 SEG = 8, U = 4; };
template <> struct PathTraits<PATH_F16> { static constexpr u32 SEG = 8, U = 4; };
template <> struct PathTraits<PATH_MXFP4> { static constexpr u32 SEG = 32, U = 2; };
template <> struct PathTraits<PATH_NVFP4> { static constexpr u32 SEG = 32, U = 2; };
template <> struct PathTraits<PATH_SCALAR> { static constexpr u32 SEG = 4, U = 4; };

// k elements one stage covers (all divide the 256-wide work cells of common/project.cuh).
template <u32 PATH> constexpr u32 stage_k() { return 4u * PathTraits<PATH>::SEG * PathTraits<PATH>::U; }

// The 16-byte vector path a weight can take, or PATH_SCALAR when its rows are not 16-byte
// aligned (or the format is unknown).
__device__ __forceinline__ u32 choose_path(const WeightDesc& w) {
    const bool aligned = ((u64)w.data & 15u) == 0;
    switch (w.format) {
        case FORMAT_F32: return aligned && w.cols % 4u == 0 ? PATH_F32 : PATH_SCALAR;
        case FORMAT_BF16: return aligned && w.cols % 8u == 0 ? PATH_BF16 : PATH_SCALAR;
        case FORMAT_F16: return aligned && w.cols % 8u == 0 ? PATH_F16 : PATH_SCALAR;
        case FORMAT_MXFP4: return aligned && w.cols % 32u == 0 ? PATH_MXFP4 : PATH_SCALAR;
        case FORMAT_NVFP4:
            return aligned && w.cols % 32u == 0 && ((u64)w.scales & 1u) == 0 ? PATH_NVFP4 : PATH_SCALAR;
        default: return PATH_SCALAR;
    }
}

// The two weight rows (g and g + 8 of a group) one lane streams.
struct LaneRows {
    WeightDesc w;
    u64 row[2];
    const u8* data[2];    // first byte of each row (vector paths)
    const u8* scales[2];  // first scale byte of each row (FP4 vector paths)
    bool valid[2];        // false past the group's last row: no loads, zeros
    u32 k_end;            // elements at k >= k_end are not read (end of K or of the k-slab)
};

// Fills the row pointers of `r` for `path` (its row indices and weight set).
__device__ __forceinline__ void lane_rows_pointers(LaneRows& r, u32 path) {
#pragma unroll
    for (u32 h = 0; h < 2; ++h) {
        const u64 element = r.row[h] * r.w.cols;  // first element of the row
        u32 bits = 32;
        if (path == PATH_BF16 || path == PATH_F16) bits = 16;
        if (path == PATH_MXFP4 || path == PATH_NVFP4) bits = 4;
        r.data[h] = r.w.data + element * bits / 8u;
        r.scales[h] = r.w.scales + (path == PATH_NVFP4 ? element / 16u : element / 32u);
    }
}

// Raw registers of one stage: granule u of row half h.
template <u32 PATH> struct StageRegs {
    U32x4 v[2][PathTraits<PATH>::U];
    u32 scale[2][PathTraits<PATH>::U];  // FP4: the granule's scale byte(s); unused otherwise
};

// Four consecutive elements k0..k0+3 of a row as two bf16x2 pairs (scalar path); elements at
// k >= k_end are zero. NVFP4 leaves out the tensor scale (see project.cuh's post scale).
__device__ __forceinline__ void scalar_pairs(const LaneRows& r, u32 h, u32 k0, u32& lo, u32& hi) {
    float e[4];
#pragma unroll
    for (u32 j = 0; j < 4; ++j) e[j] = k0 + j < r.k_end ? weight_element(r.w, r.row[h], k0 + j, false) : 0.0f;
    lo = pack_bf16x2(e[0], e[1]);
    hi = pack_bf16x2(e[2], e[3]);
}

// Issues the loads of the stage starting at k_stage for lane c.
template <u32 PATH>
__device__ __forceinline__ void load_stage(StageRegs<PATH>& s, const LaneRows& r, u32 k_stage, u32 c) {
    constexpr u32 SEG = PathTraits<PATH>::SEG;
    constexpr u32 U = PathTraits<PATH>::U;
#pragma unroll
    for (u32 h = 0; h < 2; ++h) {
#pragma unroll
        for (u32 u = 0; u < U; ++u) {
            const u32 k0 = k_stage + (4u * u + c) * SEG;
            const bool valid = r.valid[h] && k0 < r.k_end;
            U32x4 v = {0u, 0u, 0u, 0u};
            u32 sc = 0u;
            if constexpr (PATH == PATH_SCALAR) {
                if (valid) scalar_pairs(r, h, k0, v.x, v.y);
            } else if (valid) {
                v = ld_weight_v4(r.data[h] + (SEG == 32u ? k0 / 2u : k0 * (16u / SEG)));
                if constexpr (PATH == PATH_MXFP4) sc = ld_weight_u8(r.scales[h] + k0 / 32u);
                if constexpr (PATH == PATH_NVFP4) sc = ld_weight_u16(r.scales[h] + k0 / 16u);
            }
            if constexpr (PATH == PATH_MXFP4) sc = valid ? sc : 127u;     // 1.0: zeros stay zeros
            if constexpr (PATH == PATH_NVFP4) sc = valid ? sc : 0x3838u;  // 1.0, 1.0
            s.v[h][u] = v;
            s.scale[h][u] = sc;
        }
    }
}

// Word i of a granule; a select chain (never a local-memory array) when i is not a constant.
__device__ __forceinline__ u32 word_of(const U32x4& v, u32 i) {
    const u32 lo = (i & 1u) ? v.y : v.x, hi = (i & 1u) ? v.w : v.z;
    return (i & 2u) ? hi : lo;
}

// The bf16x2 factors of granule scale `scale` for the FP4 decode (common/fp4.cuh): f[0] for
// steps 0-3, f[1] for steps 4-7 (NVFP4's two 16-element blocks; MXFP4 has one 32-element block).
template <u32 PATH, bool EXACT_MX>
__device__ __forceinline__ void granule_factors(u32 scale, u32 (&f)[2]) {
    if constexpr (PATH == PATH_NVFP4) {
        f[0] = nvfp4_factor(scale & 0xffu);
        f[1] = nvfp4_factor(scale >> 8);
    } else if constexpr (PATH == PATH_MXFP4) {
        f[0] = f[1] = EXACT_MX ? mxfp4_factor_exact(scale) : mxfp4_factor_fast(scale);
    } else {
        f[0] = f[1] = 0u;  // unused
    }
}

// The A pairs of step `step` (elements 4*step .. 4*step+3 of granule `v`): lo = elements 0,1 of
// the step, hi = elements 2,3, as bf16x2. `f` is the step's FP4 factor (granule_factors).
// Called from unrolled loops, so `step` is usually a constant. EXACT_MX selects MXFP4's
// two-multiply decode (needed when a scale exceeds 128, see common/fp4.cuh).
template <u32 PATH, bool EXACT_MX>
__device__ __forceinline__ void step_pairs(const U32x4& v, u32 f, u32 step, u32& lo, u32& hi) {
    if constexpr (PATH == PATH_BF16) {
        lo = word_of(v, 2 * step);
        hi = word_of(v, 2 * step + 1);
    } else if constexpr (PATH == PATH_F16) {
        lo = f16x2_to_bf16x2(word_of(v, 2 * step));
        hi = f16x2_to_bf16x2(word_of(v, 2 * step + 1));
    } else if constexpr (PATH == PATH_F32) {
        lo = pack_bf16x2(__uint_as_float(v.x), __uint_as_float(v.y));
        hi = pack_bf16x2(__uint_as_float(v.z), __uint_as_float(v.w));
    } else if constexpr (PATH == PATH_SCALAR) {
        lo = v.x;
        hi = v.y;
    } else {
        // FP4: the step's 4 codes are bytes 2*(step&1) and 2*(step&1)+1 of word step/2.
        const u32 word = word_of(v, step / 2);
        lo = e2m1x2_to_bf16x2_scaled(word, 2 * (step & 1));
        hi = e2m1x2_to_bf16x2_scaled(word, 2 * (step & 1) + 1);
        if constexpr (PATH == PATH_MXFP4 && EXACT_MX) {
            lo = mul_bf16x2(lo, kBf16x2Pow126);
            hi = mul_bf16x2(hi, kBf16x2Pow126);
        }
        lo = mul_bf16x2(lo, f);
        hi = mul_bf16x2(hi, f);
    }
}

}  // namespace mimo
