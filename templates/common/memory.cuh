// Loads and stores by inline PTX, each named by the cache path it takes:
// - weights never change during a launch: read-only path (`ld.global.nc`), not kept in L1
//   (they stream through once);
// - activations and KV rows written by other blocks in this launch: L2 only (`ld.global.cg`),
//   never a possibly stale L1 line (L1 is not coherent across SMs);
// - shared memory by 32-bit shared-window addresses.
//
// Under MIMO_EMU (the device emulator, templates/emu/) each wrapper calls the emulator's model of
// the same instruction instead, named for the PTX it stands for; the emulator checks bounds,
// alignment, races and the read-only path there.
#pragma once

#include "common/types.cuh"

namespace mimo {

struct U32x4 {
    u32 x, y, z, w;
};

// ---- weights: read-only, streamed ----

__device__ __forceinline__ U32x4 ld_weight_v4(const void* p) {
#ifdef MIMO_EMU
    U32x4 v;
    mimo_emu::ld_global(p, &v, 16, mimo_emu::kNonCoherent);
    return v;
#else
    U32x4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
#endif
}
__device__ __forceinline__ u32 ld_weight_u32(const void* p) {
#ifdef MIMO_EMU
    u32 v;
    mimo_emu::ld_global(p, &v, 4, mimo_emu::kNonCoherent);
    return v;
#else
    u32 v;
    asm volatile("ld.global.nc.u32 %0, [%1];" : "=r"(v) : "l"(p));
    return v;
#endif
}
__device__ __forceinline__ u32 ld_weight_u16(const void* p) {
#ifdef MIMO_EMU
    unsigned short v;
    mimo_emu::ld_global(p, &v, 2, mimo_emu::kNonCoherent);
    return v;
#else
    unsigned short v;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
#endif
}
__device__ __forceinline__ u32 ld_weight_u8(const void* p) {
#ifdef MIMO_EMU
    unsigned char v;
    mimo_emu::ld_global(p, &v, 1, mimo_emu::kNonCoherent);
    return v;
#else
    unsigned short v;
    asm volatile("ld.global.nc.u8 %0, [%1];" : "=h"(v) : "l"(p));
    return v;
#endif
}

// ---- activations / KV state written in this launch: through L2 only ----

__device__ __forceinline__ float ld_act_f32(const float* p) {
#ifdef MIMO_EMU
    float v;
    mimo_emu::ld_global(p, &v, 4, mimo_emu::kL2Only);
    return v;
#else
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
#endif
}
__device__ __forceinline__ i32 ld_act_i32(const float* p) {
#ifdef MIMO_EMU
    i32 v;
    mimo_emu::ld_global(p, &v, 4, mimo_emu::kL2Only);
    return v;
#else
    i32 v;
    asm volatile("ld.global.cg.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#endif
}
__device__ __forceinline__ u32 ld_state_u16(const u16* p) {
#ifdef MIMO_EMU
    unsigned short v;
    mimo_emu::ld_global(p, &v, 2, mimo_emu::kL2Only);
    return v;
#else
    unsigned short v;
    asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(v) : "l"(p) : "memory");
    return v;
#endif
}
__device__ __forceinline__ u32 ld_state_u32(const u16* p) {
#ifdef MIMO_EMU
    u32 v;
    mimo_emu::ld_global(p, &v, 4, mimo_emu::kL2Only);
    return v;
#else
    u32 v;
    asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#endif
}
__device__ __forceinline__ U32x4 ld_state_v4(const u16* p) {
#ifdef MIMO_EMU
    U32x4 v;
    mimo_emu::ld_global(p, &v, 16, mimo_emu::kL2Only);
    return v;
#else
    U32x4 v;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p)
                 : "memory");
    return v;
#endif
}

__device__ __forceinline__ void st_f32(float* p, float v) {
#ifdef MIMO_EMU
    mimo_emu::st_global(p, &v, 4);
#else
    asm volatile("st.global.f32 [%0], %1;" ::"l"(p), "f"(v) : "memory");
#endif
}
__device__ __forceinline__ void st_i32(float* p, i32 v) {
#ifdef MIMO_EMU
    mimo_emu::st_global(p, &v, 4);
#else
    asm volatile("st.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#endif
}
__device__ __forceinline__ void st_u16(u16* p, u32 v) {
#ifdef MIMO_EMU
    const unsigned short h = (unsigned short)v;
    mimo_emu::st_global(p, &h, 2);
#else
    const unsigned short h = (unsigned short)v;
    asm volatile("st.global.u16 [%0], %1;" ::"l"(p), "h"(h) : "memory");
#endif
}

// ---- shared memory ----

__device__ __forceinline__ u32 smem_addr(const void* p) {
#ifdef MIMO_EMU
    return mimo_emu::shared_window_address(p);
#else
    return (u32)__cvta_generic_to_shared(p);
#endif
}
__device__ __forceinline__ void lds_v2(u32 addr, u32& a, u32& b) {
#ifdef MIMO_EMU
    u32 v[2];
    mimo_emu::ld_shared(addr, v, 8);
    a = v[0];
    b = v[1];
#else
    asm volatile("ld.shared.v2.u32 {%0, %1}, [%2];" : "=r"(a), "=r"(b) : "r"(addr));
#endif
}
__device__ __forceinline__ void sts_u32(u32 addr, u32 v) {
#ifdef MIMO_EMU
    mimo_emu::st_shared(addr, &v, 4);
#else
    asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
#endif
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
