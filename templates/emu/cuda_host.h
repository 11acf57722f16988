// The device emulator's view of CUDA: what a generated kernel.cu needs from the CUDA compiler,
// for the host C++ compiler. Included before kernel.cu (g++ -include), with MIMO_EMU defined, so
// the templates' inline-PTX wrappers take their `#ifdef MIMO_EMU` branch and call the models of
// the same instructions declared here.
//
// The kernel translation unit is compiled with -fsanitize=thread but linked without the TSan
// runtime: the emulator (runtime.cpp, not instrumented) defines the __tsan_read* / __tsan_write*
// hooks the compiler inserts before every plain load and store, and checks each one (bounds,
// alignment, races, shared-memory size) before it happens. The explicit models below (global
// loads by cache path, shared-window accesses, atomics, warp collectives, barriers) check
// themselves. Threads are fibers of one OS thread: every barrier, warp collective, atomic,
// acquire load and nanosleep may switch to another thread.
#pragma once

#include <cmath>
#include <cstring>

#define __device__
#define __host__
#define __global__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __grid_constant__
// Static shared memory: one section, whose contents the emulator swaps per block.
#define __shared__ __attribute__((section("mimo_emu_shared"), aligned(16)))

namespace mimo_emu {

struct Dim3 {
    unsigned x, y, z;
};

// ---- the running thread ----
Dim3 thread_index();
Dim3 block_index();
Dim3 block_dimension();
Dim3 grid_dimension();
// The kernel task index the block starts (megakernel.cu's persistent loop).
void task_begins(unsigned index);
// This block's dynamic shared memory (the launch's size, 16-byte aligned, with redzones).
unsigned char* dynamic_shared_memory();

// ---- barriers and warp collectives ----
void syncthreads();
int syncthreads_and(int predicate);
void syncwarp(unsigned mask);
unsigned shfl_xor_sync(unsigned mask, unsigned value, int lane_mask);
unsigned ballot_sync(unsigned mask, int predicate);
enum Redux { kReduxMax = 0, kReduxMin = 1 };
unsigned redux_sync(Redux op, unsigned value, unsigned mask);
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {d}, {a}, {b0, b1}, {d}.
void mma_m16n8k16_row_col_f32_bf16_bf16_f32(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1);

// ---- memory, by the path the instruction takes ----
enum LoadPath { kNonCoherent = 0, kL2Only = 1 };
void ld_global(const void* address, void* value, unsigned bytes, LoadPath path);
void st_global(void* address, const void* value, unsigned bytes);
unsigned shared_window_address(const void* generic);
void ld_shared(unsigned window_address, void* value, unsigned bytes);
void st_shared(unsigned window_address, const void* value, unsigned bytes);

// ---- memory ordering, atomics, time ----
unsigned ld_acquire_gpu(const unsigned* address);
unsigned ld_relaxed_gpu(const unsigned* address);
void red_release_gpu_add(unsigned* address, unsigned value);
void fence_acq_rel_gpu();
unsigned atomic_cas(unsigned* address, unsigned compare, unsigned value);
unsigned atomic_min(unsigned* address, unsigned value);
unsigned long long global_timer_ns();
void nanosleep(unsigned ns);

// ---- pure arithmetic, exactly as PTX defines it ----

inline unsigned f32_bits(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float f32_from_bits(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

// Rounds a double (holding an exact value) to bf16 bits, to nearest even, with bf16 subnormals
// and overflow to infinity; NaN becomes the canonical 0x7fff.
inline unsigned short bf16_round(double x) {
    if (x != x) return 0x7fff;
    const unsigned short sign = std::signbit(x) ? 0x8000 : 0;
    const double a = std::fabs(x);
    if (a == 0.0) return sign;
    int e = std::ilogb(a);
    if (e < -126) e = -126;                       // the subnormal quantum is 2^-133
    const double quantum = std::ldexp(1.0, e - 7);  // 8 significant bits
    const double r = std::nearbyint(a / quantum) * quantum;
    if (r >= std::ldexp(1.0, 128)) return sign | 0x7f80;
    return sign | (unsigned short)(f32_bits((float)r) >> 16);
}

// cvt.rn.bf16x2.f32 d, a, b: a to the upper half of d, b to the lower.
inline unsigned cvt_rn_bf16x2_f32(float a, float b) {
    return ((unsigned)bf16_round(a) << 16) | bf16_round(b);
}

// mul.rn.bf16x2 d, a, b: per half, the exact product rounded once.
inline unsigned mul_rn_bf16x2(unsigned a, unsigned b) {
    const double lo = (double)f32_from_bits(a << 16) * (double)f32_from_bits(b << 16);
    const double hi = (double)f32_from_bits(a & 0xffff0000u) * (double)f32_from_bits(b & 0xffff0000u);
    return ((unsigned)bf16_round(hi) << 16) | bf16_round(lo);
}

// cvt.f32.f16 (exact).
inline float cvt_f32_f16(unsigned short h) {
    const unsigned sign = (unsigned)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return f32_from_bits(sign | 0x7f800000u | (man << 13));
    if (exp == 0) {
        const float v = std::ldexp((float)man, -24);
        return sign ? -v : v;
    }
    return f32_from_bits(sign | ((exp + 112u) << 23) | (man << 13));
}

// prmt.b32 d, a, b, c (default mode): byte i of d is byte c[4i+2 : 4i] of {b, a} (a bytes 0..3,
// b bytes 4..7), or that byte's sign bit replicated when c[4i+3] is set.
inline unsigned prmt_b32(unsigned a, unsigned b, unsigned c) {
    const unsigned long long bytes = ((unsigned long long)b << 32) | a;
    unsigned d = 0;
    for (unsigned i = 0; i < 4; ++i) {
        const unsigned sel = (c >> (4 * i)) & 0xfu;
        unsigned byte = (unsigned)(bytes >> (8 * (sel & 7u))) & 0xffu;
        if (sel & 8u) byte = (byte & 0x80u) ? 0xffu : 0u;
        d |= byte << (8 * i);
    }
    return d;
}

}  // namespace mimo_emu

// ---- the CUDA built-ins the templates use ----

#define threadIdx (::mimo_emu::thread_index())
#define blockIdx (::mimo_emu::block_index())
#define blockDim (::mimo_emu::block_dimension())
#define gridDim (::mimo_emu::grid_dimension())

inline void __syncthreads() { mimo_emu::syncthreads(); }
inline int __syncthreads_and(int p) { return mimo_emu::syncthreads_and(p); }
inline void __syncwarp(unsigned mask = 0xffffffffu) { mimo_emu::syncwarp(mask); }
inline void __threadfence() { mimo_emu::fence_acq_rel_gpu(); }
inline unsigned __shfl_xor_sync(unsigned mask, unsigned v, int lane_mask, int = 32) {
    return mimo_emu::shfl_xor_sync(mask, v, lane_mask);
}
inline int __shfl_xor_sync(unsigned mask, int v, int lane_mask, int = 32) {
    return (int)mimo_emu::shfl_xor_sync(mask, (unsigned)v, lane_mask);
}
inline float __shfl_xor_sync(unsigned mask, float v, int lane_mask, int = 32) {
    return mimo_emu::f32_from_bits(mimo_emu::shfl_xor_sync(mask, mimo_emu::f32_bits(v), lane_mask));
}
inline unsigned __ballot_sync(unsigned mask, int p) { return mimo_emu::ballot_sync(mask, p); }
inline int __any_sync(unsigned mask, int p) { return mimo_emu::ballot_sync(mask, p) != 0u; }
inline int __popc(unsigned v) { return __builtin_popcount(v); }
inline int __ffs(int v) { return __builtin_ffs(v); }
inline float __uint_as_float(unsigned u) { return mimo_emu::f32_from_bits(u); }
inline unsigned __float_as_uint(float f) { return mimo_emu::f32_bits(f); }
inline unsigned atomicCAS(unsigned* p, unsigned compare, unsigned v) { return mimo_emu::atomic_cas(p, compare, v); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return mimo_emu::atomic_min(p, v); }
inline unsigned long long __cvta_generic_to_shared(const void* p) { return mimo_emu::shared_window_address(p); }

