// Events between blocks: monotonic u32 counters in global memory.
// - A consumer block waits until a counter reaches its expected count: one thread spins with
//   acquire loads and exponential __nanosleep back-off, bounded by %globaltimer; then
//   __syncthreads() lets the whole block go on. Activations the producers wrote must then be
//   read through L2 (ld.global.cg, see common/memory.cuh).
// - A producer block finishes its writes, __syncthreads(), and one thread publishes them with a
//   gpu-scope release increment.
// - A wait that gives up records Diagnostics once and sets `aborted`; every later wait (in any
//   block) sees `aborted` and gives up at once, so the kernel drains instead of hanging.
#pragma once

#include "common/types.cuh"

namespace mimo {

__device__ __forceinline__ u32 ld_acquire_gpu(const u32* p) {
#ifdef MIMO_EMU
    return mimo_emu::ld_acquire_gpu(p);
#else
    u32 v;
    asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#endif
}
__device__ __forceinline__ u32 ld_relaxed_gpu(const u32* p) {
#ifdef MIMO_EMU
    return mimo_emu::ld_relaxed_gpu(p);
#else
    u32 v;
    asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
#endif
}
__device__ __forceinline__ void red_release_gpu_add(u32* p, u32 v) {
#ifdef MIMO_EMU
    mimo_emu::red_release_gpu_add(p, v);
#else
    asm volatile("red.release.gpu.global.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
#endif
}
__device__ __forceinline__ void fence_acq_rel_gpu() {
#ifdef MIMO_EMU
    mimo_emu::fence_acq_rel_gpu();
#else
    asm volatile("fence.acq_rel.gpu;" ::: "memory");
#endif
}
__device__ __forceinline__ u64 global_timer_ns() {
#ifdef MIMO_EMU
    return mimo_emu::global_timer_ns();
#else
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
#endif
}
__device__ __forceinline__ void nanosleep(u32 ns) {
#ifdef MIMO_EMU
    mimo_emu::nanosleep(ns);
#else
    asm volatile("nanosleep.u32 %0;" ::"r"(ns));
#endif
}

// Whether some block gave up (a relaxed gpu-scope read: it only has to be seen eventually).
__device__ __forceinline__ bool kernel_aborted(const KernelParams& p) {
    return ld_relaxed_gpu(&p.diag->aborted) != 0u;
}

// Records the first failure of the launch (later ones are dropped) and raises `aborted`.
// Called by one thread.
__device__ __forceinline__ void record_failure(const KernelParams& p, u32 task, u32 event, u32 observed,
                                               u32 expected) {
    if (atomicCAS(&p.diag->aborted, 0u, 1u) == 0u) {
        p.diag->worker = blockIdx.x;
        p.diag->task = task;
        p.diag->event = event;
        p.diag->observed = observed;
        p.diag->expected = expected;
        __threadfence();
    }
}

// Thread 0's part of a wait: spins until events[event] >= expected. Returns false when the
// kernel is aborting (this wait timed out and recorded it, or another block gave up).
__device__ __forceinline__ bool spin_until_event_reaches(const KernelParams& p, u32 task, u32 event, u32 expected) {
    const u32* counter = p.events + event;
    u32 seen = ld_acquire_gpu(counter);
    if (seen >= expected) return true;
    const u64 start = global_timer_ns();
    u32 backoff_ns = 32;
    for (;;) {
        if (kernel_aborted(p)) return false;
        nanosleep(backoff_ns);
        backoff_ns = min_u32(backoff_ns * 2u, 1024u);
        seen = ld_acquire_gpu(counter);
        if (seen >= expected) return true;
        if (global_timer_ns() - start > p.wait_limit_ns) {
            record_failure(p, task, event, seen, expected);
            return false;
        }
    }
}

// Block-wide wait until events[event] has reached `expected` (every thread must call it).
// Returns false when the kernel is aborting: the caller returns.
__device__ __forceinline__ bool wait_for_event(const KernelParams& p, u32 task, u32 event, u32 expected) {
    bool ok = true;
    if (threadIdx.x == 0) ok = spin_until_event_reaches(p, task, event, expected);
    // A barrier (with bar.sync's memory ordering) that also hands thread 0's verdict to all.
    return __syncthreads_and(ok ? 1 : 0) != 0;
}

// Block-wide: publishes everything the block wrote, then increments each event once.
__device__ __forceinline__ void trigger_events(const KernelParams& p, u32 trigger_begin, u32 trigger_count) {
    __syncthreads();
    if (threadIdx.x == 0) {
        fence_acq_rel_gpu();
        for (u32 i = 0; i < trigger_count; ++i) red_release_gpu_add(p.events + p.triggers[trigger_begin + i], 1u);
    }
}

}  // namespace mimo
