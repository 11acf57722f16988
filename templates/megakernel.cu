#include "common/abi.cuh"
// The persistent megakernel: one launch runs one step of one program (decode, DFlash verify or
// draft) (see common/abi.cuh for the contract with the compiler). Block w is worker w: it runs its queue of tasks in order, each
// after the events it waits for have reached this step's counts, and increments the task's
// trigger events when done.
//
// generated.cuh (written per program by the compiler: `generated_header` in
// compiler/src/codegen.rs; included by common/abi.cuh) declares the ABI (`abi::c_declarations`)
// and these sizes:
//   MIMO_THREADS       threads per block (256)
//   MIMO_TOKENS        T, tokens per step (1..16), compile-time so register tiles can be sized
//   MIMO_MAX_HEAD_DIM  largest head_dim (even, <= 256)
//   MIMO_MAX_TOP_K     largest experts per token
//   MIMO_MAX_EXPERTS   largest router width E
//   MIMO_SMEM_BYTES    dynamic shared memory the host passes at launch (`shared_memory_bytes`)
//
// Launch: grid = workers (never more than can be co-resident: one block per SM), block =
// MIMO_THREADS, dynamic shared memory = MIMO_SMEM_BYTES (the kernel adds 160 bytes of static
// shared memory). A task whose shapes exceed these limits stops the kernel with Diagnostics
// {event = MIMO_NONE, observed = status (1: a MIMO_MAX_* limit, else the shared-memory bytes the
// task needs), expected = MIMO_SMEM_BYTES}.

#include "common/sync.cuh"
#include "ops/accept.cuh"
#include "ops/argmax_combine.cuh"
#include "ops/attention.cuh"
#include "ops/concat.cuh"
#include "ops/embed.cuh"
#include "ops/kv_append.cuh"
// norm_matmul (with dense_gate_up, matmul_residual), oproj_residual, expert_gate_up, expert_down,
// lm_head:
#include "ops/projections.cuh"

using namespace mimo;

// The dispatch: one case per fused kind, in the order compiler/src/kinds/mod.rs lists them
// (MIMO_TASK_KINDS is generated from that list, with each kind's OpArgs member and function).
__device__ __forceinline__ u32 run_task(const KernelParams& p, const Task& task, u8* smem) {
    const OpArgs& a = p.ops[task.op];
    switch (task.kind) {
#define MIMO_RUN_KIND(kind, args, run) \
    case kind: return run(p, a.args, task.unit_begin, task.unit_end, smem);
        MIMO_TASK_KINDS(MIMO_RUN_KIND)
#undef MIMO_RUN_KIND
        default: return kOverLimit;
    }
}

extern "C" __global__ void __launch_bounds__(MIMO_THREADS, 1) mimo_megakernel(const __grid_constant__ KernelParams p) {
#ifdef MIMO_EMU
    u8* smem = mimo_emu::dynamic_shared_memory();
#else
    extern __shared__ F32x4 smem_words[];  // 16-byte aligned
    u8* smem = (u8*)smem_words;
#endif
    const u32 worker = blockIdx.x;
    const u32 end = p.queue_start[worker + 1];
    for (u32 index = p.queue_start[worker]; index < end; ++index) {
        const Task task = p.tasks[index];
#ifdef MIMO_EMU
        mimo_emu::task_begins(index);  // names the task in the emulator's reports and byte counts
#endif
        for (u32 i = 0; i < task.wait_count; ++i) {
            const Wait w = p.waits[task.wait_begin + i];
            if (!wait_for_event(p, index, w.event, w.per_step * (p.step + 1u))) return;
        }
        const u32 status = run_task(p, task, smem);
        if (status != kOk) {
            if (threadIdx.x == 0) record_failure(p, index, MIMO_NONE, status, MIMO_SMEM_BYTES);
            return;
        }
        trigger_events(p, task.trigger_begin, task.trigger_count);
    }
}
