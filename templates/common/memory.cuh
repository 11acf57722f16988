// Loads and stores by inline PTX, each named by the cache path it takes:
// - weights never change during a launch: read-only path (`ld.global.nc`), not kept in L1
//   (they stream through once);
// - activations and KV rows written by other blocks in this launch: L2 only (`ld.global.cg`),
//   never a possibly stale L1 line (see shared/KERNELS.md);
// - shared memory by 32-bit shared-window addresses.
#pragma once

#include "common/types.cuh"

namespace mimo {

struct U32x4 {
    u32 x, y, z, w;
};

// ---- weights: read-only, streamed ----

__device__ __forceinline__ U32x4 ld_weight_v4(const void* p) {
    U32x4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ u32 ld_weight_u32(const void* p) {
    u32 v;
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ u32 ld_weight_u16(const void* p) {
    unsigned short v;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}
__device__ __forceinline__ u32 ld_weight_u8(const void* p) {
    unsigned short v;
    asm volatile("ld.global.nc.u8 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
}

// ---- activations / KV state written in this launch: through L2 only ----

__device__ __forceinline__ float ld_act_f32(const float* p) {
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ i32 ld_act_i32(const float* p) {
    i32 v;
    asm volatile("ld.global.cg.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u32 ld_state_u16(const u16* p) {
    unsigned short v;
    asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u32 ld_state_u32(const u16* p) {
    u32 v;
    asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ U32x4 ld_state_v4(const u16* p) {
    U32x4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
}

__device__ __forceinline__ void st_f32(float* p, float v) {
    asm volatile("st.global.f32 [%0], %1;" ::"l"(p), "f"(v) : "memory");
}
__device__ __forceinline__ void st_i32(float* p, i32 v) {
    asm volatile("st.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void st_u16(u16* p, u32 v) {
    const unsigned short h = (unsigned short)v;
    asm volatile("st.global.u16 [%0], %1;" ::"l"(p), "h"(h) : "memory");
}

// ---- shared memory ----

__device__ __forceinline__ u32 smem_addr(const void* p) {
    return (u32)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void lds_v2(u32 addr, u32& a, u32& b) {
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(a), "=r"(b) : "r"(addr));
}
__device__ __forceinline__ void sts_u32(u32 addr, u32 v) {
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}

// Hands out 16-byte aligned pieces of the dynamic shared memory.
struct Carve {
    u8* next;
    u8* end;
    template <class T>
    __device__ __forceinline__ T* take(u32 count) {
        T* p = (T*)next;
        next += round_up(count * (u32)sizeof(T), 16u);
        return p;
    }
    // Bytes still free (0 once over-carved).
    __device__ __forceinline__ u32 left() const { return next <= end ? (u32)(end - next) : 0u; }
    // Bytes carved so far past `base`.
    __device__ __forceinline__ u32 used(const u8* base) const { return (u32)(next - base); }
};

// What an op function returns: kOk, kOverLimit (a dimension above its compile-time MIMO_MAX_*
// limit), or the number of bytes of dynamic shared memory the task would need (>= 16) when
// MIMO_SMEM_BYTES is too small. The megakernel records a nonzero status in Diagnostics.
constexpr u32 kOk = 0;
constexpr u32 kOverLimit = 1;

}  // namespace mimo
