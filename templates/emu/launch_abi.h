// The C interface between the Rust side of the device emulator (runtime/src/emu/) and its C++
// runtime (runtime.cpp): one launch of the kernel over the device memory the host allocated.
// runtime/src/emu/ffi.rs mirrors these structs field for field; mimo_emu_abi_bytes() lets it
// refuse a library built from a different version.
#pragma once

#include <stdint.h>

#define MIMO_EMU_ABI 1u
#define MIMO_EMU_CLASSES 6u      // MemClass: weights, kv, activations, tables, sync, other
#define MIMO_EMU_MESSAGE 1024u   // bytes of the failure message
#define MIMO_EMU_NO_TASK 0xffffffffu

struct MimoEmuAllocation {
    uint64_t base;
    uint64_t bytes;
    uint32_t mem_class;  // MemClass index
    uint32_t reserved;
    const char* name;  // NUL-terminated
};

struct MimoEmuLaunch {
    // In.
    const struct MimoEmuAllocation* allocations;  // sorted by base, not overlapping
    uint64_t allocation_count;
    const void* params;
    uint64_t params_bytes;
    uint32_t blocks, threads, dynamic_smem;
    uint32_t randomize;  // pick the next thread at random (seeded) instead of in order
    uint64_t seed;
    uint64_t launch_id;  // distinct per launch: what a launch wrote is recognised by it
    uint32_t task_count;  // rows of task_bytes
    uint32_t reserved;
    uint64_t* task_bytes;  // [task_count][MIMO_EMU_CLASSES], bytes read, accumulated
    // Out.
    uint32_t failed;      // 0: the launch ran to completion
    uint32_t worker;      // the failing block
    uint32_t task;        // its task index, or MIMO_EMU_NO_TASK
    uint32_t reserved2;
    uint64_t virtual_ns;  // the virtual clock at the end
    char message[MIMO_EMU_MESSAGE];
};

#ifdef __cplusplus
extern "C" {
#endif
uint64_t mimo_emu_abi_bytes(void);
uint32_t mimo_emu_abi_version(void);
uint64_t mimo_emu_static_shared_bytes(void);
int mimo_emu_launch(struct MimoEmuLaunch* launch);
#ifdef __cplusplus
}
#endif
