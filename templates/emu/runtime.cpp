// The device emulator's runtime: runs a kernel compiled for the host (cuda_host.h) as a grid of
// fibers on one OS thread, and checks every memory access and every synchronisation on the way.
// Not instrumented itself; linked with the instrumented kernel into one shared library.
//
// - Threads are fibers (a tiny context switch below); they switch only at barriers, warp
//   collectives, atomics, acquire/relaxed loads and nanosleep. The next fiber is picked in order
//   or at random from a seed.
// - Time is virtual: %globaltimer advances only when every live thread sleeps, so a wait that can
//   never be satisfied times out by the kernel's own bound, and nothing else ever does.
// - Memory checks: every access must lie inside an allocation (or the block's shared memory, or
//   a thread's own stack) and be aligned to its size; nothing writes weights or tables; an
//   ld.global.nc must not read what this launch wrote.
// - Races (happens-before): blocks carry vector clocks joined through release/acquire on event
//   counters; threads of a block are ordered by barrier epochs (and warp epochs for __syncwarp).
//   Each 4-byte granule remembers its last write and last read.
// - Warp collectives: all lanes of the mask must reach the same kind of collective.
#include <dlfcn.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "cuda_host.h"
#include "launch_abi.h"

extern "C" void mimo_emu_kernel_entry(const void* params);
extern "C" char __start_mimo_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_mimo_emu_shared[] __attribute__((weak, visibility("hidden")));

namespace {

constexpr u32 kNone = 0xffffffffu;
constexpr u64 kStackBytes = 128 * 1024;
constexpr u64 kRedzone = 256;

// ---- fibers ----

// Saves the callee-saved registers on the current stack, stores the stack pointer in *from and
// continues on `to` (System V x86-64).
extern "C" void mimo_emu_switch(void** from, void* to);
asm(R"(
.text
.globl mimo_emu_switch
.hidden mimo_emu_switch
.type mimo_emu_switch,@function
mimo_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size mimo_emu_switch, .-mimo_emu_switch
)");

enum class Wait : u32 { kRunnable, kBarrier, kWarp, kSleep, kDone };
enum class Collective : u32 { kNone, kSyncwarp, kShuffle, kBallot, kRedux, kMma };
const char* collective_name(Collective c) {
    switch (c) {
        case Collective::kSyncwarp: return "__syncwarp";
        case Collective::kShuffle: return "__shfl_xor_sync";
        case Collective::kBallot: return "__ballot_sync/__any_sync";
        case Collective::kRedux: return "redux.sync";
        case Collective::kMma: return "mma.sync";
        default: return "nothing";
    }
}

struct Fiber {
    void* sp = nullptr;
    u32 block = 0, thread = 0;
    u32 task = kNone;  // the kernel task index this thread is running (threads of a block may differ)
    Wait wait = Wait::kRunnable;
    u64 wake_ns = 0;
    // A pending collective: what this lane brought and where its result goes.
    Collective kind = Collective::kNone;
    u32 mask = 0, value = 0, arg = 0, result = 0;
    float* mma_d = nullptr;
    const u32* mma_a = nullptr;
    u32 mma_b[2] = {0, 0};
};

// The last write and the last read of one 4-byte granule.
struct Access {
    u64 launch = 0;
    u32 clock = 0, barrier_epoch = 0, warp_epoch = 0, task = kNone;
    uint16_t block = 0, thread = 0;
    uint8_t bytes_mask = 0;
};
struct Granule {
    Access write, read;
};

struct Allocation {
    u64 base, bytes;
    u32 cls;
    const char* name;
    std::vector<Granule> shadow;  // per 4 bytes, except for weights (never written)
};

struct Warp {
    Collective kind = Collective::kNone;
    u32 mask = 0, arrived = 0;
    u32 epoch = 1;  // advanced by __syncwarp
};

struct Block {
    u32 index = 0;
    u32 live = 0, arrived = 0, and_acc = 1, barrier_epoch = 1;
    bool barrier_and = false;
    std::vector<u32> clock;  // vector clock over blocks
    std::vector<Warp> warps;
    std::vector<unsigned char> static_shared;  // this block's copy, when not resident
    unsigned char* dynamic_shared = nullptr;   // with kRedzone bytes either side
    std::vector<Granule> shared_shadow;        // static then dynamic shared, per 4 bytes
};

struct Failure {};

struct Emulator {
    EmuLaunch* launch = nullptr;
    std::vector<Allocation> allocations;
    std::vector<Block> blocks;
    std::vector<Fiber> fibers;
    std::vector<u32> runnable;
    std::vector<std::vector<u32>> event_clocks;  // of the synchronisation words used so far
    std::vector<std::pair<u64, size_t>> sync_clock_index;
    unsigned char* stacks = nullptr;
    u64 stack_count = 0;
    unsigned char* shared_pool = nullptr;
    u64 shared_pool_bytes = 0;
    std::vector<unsigned char> params;
    void* scheduler_sp = nullptr;
    Fiber* current = nullptr;
    bool in_fiber = false;  // running a thread (not the scheduler)
    u32 resident_block = kNone;
    u64 now_ns = 0;
    u64 rng = 0;
    bool failed = false;

    u64 static_shared_bytes() const { return (u64)(__stop_mimo_emu_shared - __start_mimo_emu_shared); }
    Block& block() { return blocks[current->block]; }
};

Emulator emu;

// The load address of this library (the kernel and the emulator).
void* emu_library_base() {
    static void* base = [] {
        Dl_info info;
        return dladdr((void*)&mimo_emu_launch, &info) ? info.dli_fbase : nullptr;
    }();
    return base;
}

// ---- failure reports ----

std::string describe_address(u64 address);

[[noreturn]] void fail(const char* fmt, ...) {
    EmuLaunch* l = emu.launch;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->message, l->message_bytes, fmt, ap);
    va_end(ap);
    l->failed = 1;
    if (emu.current) {
        l->worker = emu.current->block;
        l->task = emu.current->task;
    }
    emu.failed = true;
    if (emu.in_fiber) {
        Fiber* f = emu.current;
        mimo_emu_switch(&f->sp, emu.scheduler_sp);
    }
    throw Failure{};
}

const char* who() {
    static char buf[64];
    snprintf(buf, sizeof buf, "thread %u (warp %u, lane %u)", emu.current->thread, emu.current->thread / 32,
             emu.current->thread % 32);
    return buf;
}

// ---- where an address is ----

Allocation* allocation_of(u64 a, u64 n) {
    auto& v = emu.allocations;
    size_t lo = 0, hi = v.size();
    while (lo < hi) {
        const size_t mid = (lo + hi) / 2;
        if (v[mid].base <= a) lo = mid + 1;
        else hi = mid;
    }
    if (lo == 0) return nullptr;
    Allocation& al = v[lo - 1];
    return a + n <= al.base + al.bytes ? &al : nullptr;
}

std::string describe_address(u64 a) {
    char buf[512];
    auto& v = emu.allocations;
    const Allocation* below = nullptr;
    const Allocation* above = nullptr;
    for (auto& al : v) {
        if (al.base <= a) below = &al;
        else if (!above) above = &al;
    }
    // Between two allocations, the nearer one is named (an index off by a little either way).
    const u64 past = below ? a - (below->base + below->bytes) : ~0ull;
    const u64 before = above ? above->base - a : ~0ull;
    if (below && a < below->base + below->bytes) {
        snprintf(buf, sizeof buf, "byte %llu of allocation `%s` (%s, %llu bytes)",
                 (unsigned long long)(a - below->base), below->name, kClassNames[below->cls],
                 (unsigned long long)below->bytes);
    } else if (past < 65536 && past <= before) {
        snprintf(buf, sizeof buf, "%llu bytes past the end of allocation `%s` (%s, %llu bytes)",
                 (unsigned long long)past, below->name, kClassNames[below->cls], (unsigned long long)below->bytes);
    } else if (before < 65536) {
        snprintf(buf, sizeof buf, "%llu bytes before allocation `%s` (%s, %llu bytes)", (unsigned long long)before,
                 above->name, kClassNames[above->cls], (unsigned long long)above->bytes);
    } else {
        snprintf(buf, sizeof buf, "no allocation");
    }
    return buf;
}

// ---- happens-before ----

Access now_access(u32 bytes_mask) {
    Block& b = emu.block();
    Access x;
    x.launch = emu.launch->launch_id;
    x.clock = b.clock[b.index];
    x.barrier_epoch = b.barrier_epoch;
    x.warp_epoch = b.warps[emu.current->thread / 32].epoch;
    x.task = emu.current->task;
    x.block = (uint16_t)b.index;
    x.thread = (uint16_t)emu.current->thread;
    x.bytes_mask = (uint8_t)bytes_mask;
    return x;
}

// Whether `prior` happens before the current thread's access now.
bool ordered(const Access& prior) {
    if (prior.launch != emu.launch->launch_id) return true;
    Block& b = emu.block();
    if (prior.block != b.index) return prior.clock <= b.clock[prior.block];
    if (prior.thread == emu.current->thread) return true;
    if (prior.barrier_epoch < b.barrier_epoch) return true;
    return prior.thread / 32 == emu.current->thread / 32 && prior.warp_epoch < b.warps[prior.thread / 32].epoch;
}

void report_race(const char* what, const Access& prior, const char* prior_what, u64 address, const std::string& where) {
    char task[32] = "no task";
    if (prior.task != kNone && prior.task == emu.current->task)
        snprintf(task, sizeof task, "in this task");
    else if (prior.task != kNone)
        snprintf(task, sizeof task, "kernel task index %u", prior.task);
    fail("%s race: %s %s %s at %#llx (%s), which block %u thread %u (%s) %s with nothing ordering the two "
         "(a missing event wait, or a missing barrier)",
         prior.block == emu.current->block ? "intra-block" : "cross-block", who(), what,
         prior.block == emu.current->block ? "shared or global memory" : "global memory",
         (unsigned long long)address, where.c_str(), prior.block, prior.thread, task, prior_what);
}

template <class Where>
void track(std::vector<Granule>& shadow, u64 offset, u64 n, bool is_write, u64 address, const Where& where) {
    for (u64 g = offset / 4; g <= (offset + n - 1) / 4 && g < shadow.size(); ++g) {
        u32 mask = 0;
        for (u64 byte = g * 4; byte < g * 4 + 4; ++byte)
            if (byte >= offset && byte < offset + n) mask |= 1u << (byte - g * 4);
        Granule& gr = shadow[g];
        if (gr.write.launch == emu.launch->launch_id && (gr.write.bytes_mask & mask) && !ordered(gr.write))
            report_race(is_write ? "writes" : "reads", gr.write, "wrote", address, where());
        if (is_write) {
            if (gr.read.launch == emu.launch->launch_id && (gr.read.bytes_mask & mask) && !ordered(gr.read))
                report_race("writes", gr.read, "read", address, where());
            gr.write = now_access(mask);
            gr.read = Access{};
        } else {
            gr.read = now_access(mask);
        }
    }
}

// ---- global memory ----

void count_read(u32 cls, u64 n) {
    const u32 task = emu.current->task;
    if (task != kNone && task < emu.launch->task_count && emu.launch->task_bytes)
        emu.launch->task_bytes[(u64)task * MIMO_EMU_CLASSES + cls] += n;
}

// Checks a global access; nc: through the non-coherent (read-only) path.
void check_global(Allocation* al, u64 a, u64 n, bool is_write, bool nc, bool aligned) {
    if (!al) {
        fail("%s %s %llu bytes at %#llx: out of bounds (%s)", who(), is_write ? "writes" : "reads",
             (unsigned long long)n, (unsigned long long)a, describe_address(a).c_str());
    }
    if (aligned && (n & (n - 1)) == 0 && a % n != 0)
        fail("%s %s %llu bytes at %#llx, not aligned to %llu (%s)", who(), is_write ? "writes" : "reads",
             (unsigned long long)n, (unsigned long long)a, (unsigned long long)n, describe_address(a).c_str());
    if (is_write && (al->cls == kWeights || al->cls == kTables))
        fail("%s writes %s memory at %#llx (%s): read-only during a launch", who(), kClassNames[al->cls],
             (unsigned long long)a, describe_address(a).c_str());
    if (!is_write) count_read(al->cls, n);
    if (al->shadow.empty()) return;
    const u64 offset = a - al->base;
    if (nc) {
        for (u64 g = offset / 4; g <= (offset + n - 1) / 4; ++g) {
            const Access& w = al->shadow[g].write;
            if (w.launch == emu.launch->launch_id)
                fail("%s reads %#llx (%s) through the non-coherent path (ld.global.nc) after block %u thread %u "
                     "wrote it in this launch: a stale value may be read; activations and state need ld.global.cg",
                     who(), (unsigned long long)a, describe_address(a).c_str(), w.block, w.thread);
        }
    }
    track(al->shadow, offset, n, is_write, a, [&] { return describe_address(a); });
}

// ---- shared memory ----

bool in_stack(u64 a) {
    return a >= (u64)emu.stacks && a < (u64)emu.stacks + emu.stack_count * kStackBytes;
}

// The shared-window offset of a generic address in the current block's shared memory (static
// first, then dynamic), or kNone.
u64 shared_offset(u64 a, u64 n, bool* in_redzone) {
    *in_redzone = false;
    const u64 sb = emu.static_shared_bytes();
    if (sb && a >= (u64)__start_mimo_emu_shared && a < (u64)__stop_mimo_emu_shared)
        return a + n <= (u64)__stop_mimo_emu_shared ? a - (u64)__start_mimo_emu_shared : kNone;
    Block& b = emu.block();
    const u64 base = (u64)b.dynamic_shared, size = emu.launch->dynamic_smem;
    if (a >= base - kRedzone && a < base + size + kRedzone) {
        if (a >= base && a + n <= base + size) return sb + (a - base);
        *in_redzone = true;
    }
    return kNone;
}

void check_shared(u64 offset, u64 a, u64 n, bool is_write) {
    if (a % n != 0 && (n & (n - 1)) == 0)
        fail("%s %s %llu bytes of shared memory at window offset %llu, not aligned to %llu", who(),
             is_write ? "writes" : "reads", (unsigned long long)n, (unsigned long long)offset, (unsigned long long)n);
    track(emu.block().shared_shadow, offset, n, is_write, a, [&] {
        char buf[96];
        const u64 sb = emu.static_shared_bytes();
        if (offset < sb)
            snprintf(buf, sizeof buf, "static shared memory, offset %llu", (unsigned long long)offset);
        else
            snprintf(buf, sizeof buf, "dynamic shared memory, offset %llu", (unsigned long long)(offset - sb));
        return std::string(buf);
    });
}

// Every plain access of the kernel (the TSan hooks) comes here.
void access(const void* p, u64 n, bool is_write, bool aligned) {
    const u64 a = (u64)p;
    if (in_stack(a) || !emu.current) return;
    if (a >= (u64)emu.params.data() && a < (u64)emu.params.data() + emu.params.size()) return;
    bool redzone = false;
    const u64 so = shared_offset(a, n, &redzone);
    if (so != kNone) return check_shared(so, a, n, is_write);
    if (redzone)
        fail("%s %s %llu bytes at %#llx, outside the %u bytes of dynamic shared memory the launch passes", who(),
             is_write ? "writes" : "reads", (unsigned long long)n, (unsigned long long)a, emu.launch->dynamic_smem);
    Allocation* al = allocation_of(a, n);
    if (!al) {
        // Constants of the kernel library itself (lookup tables, literals).
        Dl_info info;
        if (dladdr(p, &info) && info.dli_fbase == emu_library_base()) return;
    }
    check_global(al, a, n, is_write, false, aligned);
}

// ---- scheduling ----

u64 next_random() {
    emu.rng ^= emu.rng << 13;
    emu.rng ^= emu.rng >> 7;
    emu.rng ^= emu.rng << 17;
    return emu.rng;
}

void make_runnable(Fiber& f) {
    f.wait = Wait::kRunnable;
    emu.runnable.push_back((u32)(&f - emu.fibers.data()));
}

// Leaves the current thread (in the state it set) and continues with the scheduler.
void yield_to_scheduler() {
    Fiber* f = emu.current;
    mimo_emu_switch(&f->sp, emu.scheduler_sp);
    if (emu.failed) throw Failure{};  // never reached: a failed launch resumes no thread
}

// Swaps the static shared memory of the resident block for block `b`'s.
void make_resident(u32 b) {
    if (emu.resident_block == b) return;
    const u64 sb = emu.static_shared_bytes();
    if (sb) {
        if (emu.resident_block != kNone)
            std::memcpy(emu.blocks[emu.resident_block].static_shared.data(), __start_mimo_emu_shared, sb);
        std::memcpy(__start_mimo_emu_shared, emu.blocks[b].static_shared.data(), sb);
    }
    emu.resident_block = b;
}

void fiber_main() {
    mimo_emu_kernel_entry(emu.params.data());
    Fiber* f = emu.current;
    Block& b = emu.blocks[f->block];
    f->wait = Wait::kDone;
    b.live -= 1;
    // A barrier waiting only for this thread completes; a warp collective waiting for it cannot.
    Warp& w = b.warps[f->thread / 32];
    if (!emu.failed && w.kind != Collective::kNone && (w.mask >> (f->thread % 32)) & 1u)
        fail("%s exits while lanes %#x of its warp wait for it in %s: a lane skips a warp collective", who(),
             w.arrived, collective_name(w.kind));
    if (!emu.failed && b.arrived && b.arrived == b.live)
        fail("%s exits while the rest of block %u waits at __syncthreads", who(), b.index);
    mimo_emu_switch(&f->sp, emu.scheduler_sp);
    __builtin_trap();
}

extern "C" void mimo_emu_fiber_start();
asm(R"(
.text
.globl mimo_emu_fiber_start
.hidden mimo_emu_fiber_start
.type mimo_emu_fiber_start,@function
mimo_emu_fiber_start:
    call mimo_emu_fiber_main
    ud2
.size mimo_emu_fiber_start, .-mimo_emu_fiber_start
)");
extern "C" __attribute__((visibility("hidden"))) void mimo_emu_fiber_main() { fiber_main(); }

void init_fiber(Fiber& f, u64 index) {
    unsigned char* top = emu.stacks + (index + 1) * kStackBytes;
    void** sp = (void**)((u64)top & ~15ull);
    // mimo_emu_switch's ret enters the start routine with rsp = top (16-byte aligned), so its
    // call leaves the callee the usual rsp + 8 alignment.
    *--sp = (void*)&mimo_emu_fiber_start;
    for (int i = 0; i < 6; ++i) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    f.sp = sp;
}

// Why nothing can run: where every live thread of a stuck block waits.
[[noreturn]] void report_deadlock() {
    for (Block& b : emu.blocks) {
        if (!b.live) continue;
        u32 barrier = 0, warp = 0;
        Collective kind = Collective::kNone;
        for (u32 t = 0; t < emu.launch->threads; ++t) {
            Fiber& f = emu.fibers[(u64)b.index * emu.launch->threads + t];
            if (f.wait == Wait::kBarrier) barrier++;
            if (f.wait == Wait::kWarp) {
                warp++;
                kind = f.kind;
            }
        }
        emu.current = &emu.fibers[(u64)b.index * emu.launch->threads];
        fail("deadlock in block %u: %u threads wait at __syncthreads and %u in warp collectives (%s) that "
             "cannot complete: a lane skips a warp collective or a barrier",
             b.index, barrier, warp, collective_name(kind));
    }
    fail("deadlock: no thread can run");
}

// Runs every thread of the launch to completion (or to the first failure).
void schedule() {
    const bool randomize = emu.launch->randomize != 0;
    size_t head = 0;
    for (;;) {
        if (emu.failed) return;
        if (head >= emu.runnable.size()) {
            emu.runnable.clear();
            head = 0;
            // Nobody can run: wake the earliest sleepers (virtual time jumps), or stop.
            u64 earliest = ~0ull;
            bool live = false;
            for (Fiber& f : emu.fibers) {
                if (f.wait != Wait::kDone) live = true;
                if (f.wait == Wait::kSleep) earliest = std::min(earliest, f.wake_ns);
            }
            if (!live) return;
            if (earliest == ~0ull) {
                try {
                    report_deadlock();
                } catch (Failure&) {
                }
                return;
            }
            emu.now_ns = std::max(emu.now_ns, earliest);
            for (Fiber& f : emu.fibers)
                if (f.wait == Wait::kSleep && f.wake_ns <= emu.now_ns) make_runnable(f);
            continue;
        }
        u32 pick;
        if (randomize) {
            const size_t i = head + next_random() % (emu.runnable.size() - head);
            std::swap(emu.runnable[head], emu.runnable[i]);
        }
        pick = emu.runnable[head++];
        Fiber& f = emu.fibers[pick];
        if (f.wait != Wait::kRunnable) continue;
        make_resident(f.block);
        emu.current = &f;
        emu.in_fiber = true;
        mimo_emu_switch(&emu.scheduler_sp, f.sp);
        emu.in_fiber = false;
        emu.current = nullptr;
        if (head > 4096 && head * 2 > emu.runnable.size()) {
            emu.runnable.erase(emu.runnable.begin(), emu.runnable.begin() + head);
            head = 0;
        }
    }
}

// ---- barriers and collectives ----

int barrier(bool with_and, int predicate) {
    Fiber& f = *emu.current;
    Block& b = emu.block();
    Warp& w = b.warps[f.thread / 32];
    if (w.kind != Collective::kNone)
        fail("%s reaches __syncthreads while lanes %#x of its warp wait in %s: a lane skips a warp collective",
             who(), w.arrived, collective_name(w.kind));
    if (b.arrived == 0) {
        b.and_acc = 1;
        b.barrier_and = with_and;
    } else if (b.barrier_and != with_and) {
        fail("%s reaches %s while other threads of its block wait at %s", who(),
             with_and ? "__syncthreads_and" : "__syncthreads", with_and ? "__syncthreads" : "__syncthreads_and");
    }
    b.and_acc &= predicate != 0;
    b.arrived += 1;
    if (b.arrived < b.live) {
        f.wait = Wait::kBarrier;
        yield_to_scheduler();
        return (int)f.result;
    }
    // The last thread releases the barrier.
    b.arrived = 0;
    b.barrier_epoch += 1;
    const u64 first = (u64)b.index * emu.launch->threads;
    for (u32 t = 0; t < emu.launch->threads; ++t) {
        Fiber& o = emu.fibers[first + t];
        if (o.wait == Wait::kBarrier) {
            o.result = b.and_acc;
            make_runnable(o);
        }
    }
    return (int)b.and_acc;
}

void mma_compute(Fiber* const* lane);

// A warp collective: waits until every lane of `mask` has arrived, then the last lane computes
// every lane's result. Returns this lane's result.
u32 collective(Collective kind, u32 mask, u32 value, u32 arg) {
    Fiber& f = *emu.current;
    Block& b = emu.block();
    const u32 lane = f.thread % 32;
    Warp& w = b.warps[f.thread / 32];
    if (!((mask >> lane) & 1u)) fail("%s calls %s with a mask (%#x) that leaves itself out", who(), collective_name(kind), mask);
    if (w.kind == Collective::kNone) {
        w.kind = kind;
        w.mask = mask;
        w.arrived = 0;
    } else if (w.kind != kind || w.mask != mask) {
        fail("%s reaches %s (mask %#x) while lanes %#x of its warp wait in %s (mask %#x): a lane skips a warp collective",
             who(), collective_name(kind), mask, w.arrived, collective_name(w.kind), w.mask);
    }
    f.kind = kind;
    f.mask = mask;
    f.value = value;
    f.arg = arg;
    w.arrived |= 1u << lane;
    const u64 first = (u64)b.index * emu.launch->threads + (f.thread / 32) * 32;
    for (u32 l = 0; l < 32; ++l) {
        const Fiber& o = emu.fibers[first + l];
        if ((mask >> l) & 1u && !((w.arrived >> l) & 1u) && o.wait == Wait::kDone)
            fail("%s waits in %s for lane %u, which has exited: a lane skips a warp collective", who(),
                 collective_name(kind), l);
        if ((mask >> l) & 1u && o.wait == Wait::kBarrier)
            fail("%s reaches %s while lane %u of its warp waits at __syncthreads: a lane skips a warp collective",
                 who(), collective_name(kind), l);
    }
    if (w.arrived != mask) {
        f.wait = Wait::kWarp;
        yield_to_scheduler();
        return f.result;
    }
    // The last lane: every lane's result.
    Fiber* lanes[32];
    for (u32 l = 0; l < 32; ++l) lanes[l] = &emu.fibers[first + l];
    u32 reduced = kind == Collective::kRedux && arg == mimo_emu::kReduxMin ? ~0u : 0u;
    for (u32 l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        const u32 v = lanes[l]->value;
        if (kind == Collective::kBallot) reduced |= (v != 0) << l;
        if (kind == Collective::kRedux) reduced = arg == mimo_emu::kReduxMax ? std::max(reduced, v) : std::min(reduced, v);
    }
    if (kind == Collective::kMma) mma_compute(lanes);
    for (u32 l = 0; l < 32; ++l) {
        if (!((mask >> l) & 1u)) continue;
        Fiber& o = *lanes[l];
        switch (kind) {
            case Collective::kShuffle: {
                const u32 src = l ^ (o.arg & 31u);
                o.result = (mask >> src) & 1u ? lanes[src]->value : o.value;
                break;
            }
            case Collective::kBallot:
            case Collective::kRedux: o.result = reduced; break;
            default: o.result = 0;
        }
        o.kind = Collective::kNone;
        if (&o != &f) make_runnable(o);
    }
    w.kind = Collective::kNone;
    w.arrived = 0;
    if (kind == Collective::kSyncwarp) w.epoch += 1;
    return f.result;
}

float bf16_lo(u32 v) { return mimo_emu::f32_from_bits(v << 16); }
float bf16_hi(u32 v) { return mimo_emu::f32_from_bits(v & 0xffff0000u); }

// mma.m16n8k16 .row.col bf16 -> f32, from each lane's fragments (PTX ISA, "Matrix Fragments for
// mma.m16n8k16 with floating point type"), with g = lane / 4, c = lane % 4:
//   A (16 x 16): a[0] = (g, 2c..2c+1), a[1] = (g+8, 2c..2c+1), a[2] = (g, 2c+8..2c+9),
//                a[3] = (g+8, 2c+8..2c+9), the lower column in the low half;
//   B (16 x 8):  b0 = (rows 2c..2c+1, column g), b1 = (rows 2c+8..2c+9, column g);
//   C, D (16 x 8): d[0..1] = (g, 2c..2c+1), d[2..3] = (g+8, 2c..2c+1).
// The products are exact in double; each output is summed in double and rounded once.
void mma_compute(Fiber* const* lanes) {
    float A[16][16], B[16][8], C[16][8];
    for (u32 l = 0; l < 32; ++l) {
        const u32 g = l / 4, c = l % 4;
        const u32* a = lanes[l]->mma_a;
        const u32* b = lanes[l]->mma_b;
        const float* d = lanes[l]->mma_d;
        for (u32 i = 0; i < 4; ++i) {
            const u32 row = g + 8 * (i & 1), col = 2 * c + 8 * (i >> 1);
            A[row][col] = bf16_lo(a[i]);
            A[row][col + 1] = bf16_hi(a[i]);
        }
        for (u32 i = 0; i < 2; ++i) {
            B[2 * c + 8 * i][g] = bf16_lo(b[i]);
            B[2 * c + 8 * i + 1][g] = bf16_hi(b[i]);
        }
        for (u32 i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * c + (i & 1)] = d[i];
    }
    for (u32 l = 0; l < 32; ++l) {
        const u32 g = l / 4, c = l % 4;
        float* d = lanes[l]->mma_d;
        for (u32 i = 0; i < 4; ++i) {
            const u32 row = g + 8 * (i >> 1), col = 2 * c + (i & 1);
            double sum = C[row][col];
            for (u32 k = 0; k < 16; ++k) sum += (double)A[row][k] * (double)B[k][col];
            d[i] = (float)sum;
        }
    }
}

// ---- synchronisation through global memory ----

// The vector clock of a synchronisation word (an event counter, the abort flag), created at its
// first use in the launch.
std::vector<u32>& sync_clock(u64 address) {
    for (auto& e : emu.sync_clock_index)
        if (e.first == address) return emu.event_clocks[e.second];
    emu.sync_clock_index.emplace_back(address, emu.event_clocks.size());
    emu.event_clocks.emplace_back(emu.blocks.size(), 0u);
    return emu.event_clocks.back();
}

void acquire(u64 address) {
    Block& b = emu.block();
    const std::vector<u32>& c = sync_clock(address);
    for (size_t i = 0; i < b.clock.size(); ++i) b.clock[i] = std::max(b.clock[i], c[i]);
}

void release(u64 address) {
    Block& b = emu.block();
    std::vector<u32>& c = sync_clock(address);
    for (size_t i = 0; i < b.clock.size(); ++i) c[i] = std::max(c[i], b.clock[i]);
    b.clock[b.index] += 1;
}

// An atomic or ordered access of a 4-byte synchronisation word: bounds and alignment checked,
// not a race (atomics never race with each other); may switch threads.
u32* sync_word(const void* p, const char* what) {
    const u64 a = (u64)p;
    bool redzone = false;
    if (shared_offset(a, 4, &redzone) != kNone) {
        if (a % 4) fail("%s: %s at %#llx, not 4-byte aligned", who(), what, (unsigned long long)a);
        return (u32*)p;
    }
    Allocation* al = allocation_of(a, 4);
    if (!al || a % 4)
        fail("%s: %s at %#llx: %s (%s)", who(), what, (unsigned long long)a, al ? "not 4-byte aligned" : "out of bounds",
             describe_address(a).c_str());
    if (al->cls == kWeights || al->cls == kTables)
        fail("%s: %s on %s memory at %#llx (%s)", who(), what, kClassNames[al->cls], (unsigned long long)a,
             describe_address(a).c_str());
    count_read(al->cls, 4);
    return (u32*)p;
}

void switch_point() {
    Fiber& f = *emu.current;
    make_runnable(f);
    yield_to_scheduler();
}

}  // namespace

// ---- the models the kernel calls (cuda_host.h) ----

namespace mimo_emu {

Dim3 thread_index() { return {emu.current->thread, 0, 0}; }
Dim3 block_index() { return {emu.current->block, 0, 0}; }
Dim3 block_dimension() { return {emu.launch->threads, 1, 1}; }
Dim3 grid_dimension() { return {emu.launch->blocks, 1, 1}; }
void task_begins(unsigned index) { emu.current->task = index; }
unsigned char* dynamic_shared_memory() { return emu.block().dynamic_shared; }

void syncthreads() { barrier(false, 1); }
int syncthreads_and(int p) { return barrier(true, p); }
void syncwarp(unsigned mask) { collective(Collective::kSyncwarp, mask, 0, 0); }
unsigned shfl_xor_sync(unsigned mask, unsigned v, int lane_mask) {
    return collective(Collective::kShuffle, mask, v, (unsigned)lane_mask);
}
unsigned ballot_sync(unsigned mask, int p) { return collective(Collective::kBallot, mask, p != 0, 0); }
unsigned redux_sync(Redux op, unsigned v, unsigned mask) { return collective(Collective::kRedux, mask, v, op); }
void mma_m16n8k16_row_col_f32_bf16_bf16_f32(float (&d)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    Fiber& f = *emu.current;
    f.mma_d = d;
    f.mma_a = a;
    f.mma_b[0] = b0;
    f.mma_b[1] = b1;
    collective(Collective::kMma, 0xffffffffu, 0, 0);
}

void ld_global(const void* p, void* v, unsigned n, LoadPath path) {
    const u64 a = (u64)p;
    check_global(allocation_of(a, n), a, n, false, path == kNonCoherent, true);
    std::memcpy(v, p, n);
}
void st_global(void* p, const void* v, unsigned n) {
    const u64 a = (u64)p;
    check_global(allocation_of(a, n), a, n, true, false, true);
    std::memcpy(p, v, n);
}
unsigned shared_window_address(const void* p) {
    bool redzone = false;
    const u64 o = shared_offset((u64)p, 1, &redzone);
    if (o == kNone) fail("%s converts %p, not shared memory of its block, to a shared-window address", who(), p);
    return (unsigned)o;
}
static unsigned char* shared_at(unsigned window, unsigned n, bool is_write) {
    const u64 sb = emu.static_shared_bytes(), total = sb + emu.launch->dynamic_smem;
    if ((u64)window + n > total)
        fail("%s %s %u bytes of shared memory at window offset %u, beyond the %llu bytes the block has (%llu static "
             "+ %u dynamic, as the launch passes)",
             who(), is_write ? "writes" : "reads", n, window, (unsigned long long)total, (unsigned long long)sb,
             emu.launch->dynamic_smem);
    unsigned char* p = window < sb ? (unsigned char*)__start_mimo_emu_shared + window : emu.block().dynamic_shared + (window - sb);
    check_shared(window, (u64)p, n, is_write);
    return p;
}
void ld_shared(unsigned window, void* v, unsigned n) { std::memcpy(v, shared_at(window, n, false), n); }
void st_shared(unsigned window, const void* v, unsigned n) { std::memcpy(shared_at(window, n, true), v, n); }

unsigned ld_acquire_gpu(const unsigned* p) {
    u32* w = sync_word(p, "ld.acquire.gpu");
    switch_point();
    acquire((u64)w);
    return *w;
}
unsigned ld_relaxed_gpu(const unsigned* p) {
    u32* w = sync_word(p, "ld.relaxed.gpu");
    switch_point();
    return *w;
}
void red_release_gpu_add(unsigned* p, unsigned v) {
    u32* w = sync_word(p, "red.release.gpu.add");
    release((u64)w);
    *w += v;
    switch_point();
}
void fence_acq_rel_gpu() {}
unsigned atomic_cas(unsigned* p, unsigned compare, unsigned v) {
    u32* w = sync_word(p, "atomicCAS");
    switch_point();
    const u32 old = *w;
    if (old == compare) *w = v;
    return old;
}
unsigned atomic_min(unsigned* p, unsigned v) {
    u32* w = sync_word(p, "atomicMin");
    const u32 old = *w;
    *w = std::min(old, v);
    return old;
}
unsigned long long global_timer_ns() { return emu.now_ns; }
void nanosleep(unsigned ns) {
    Fiber& f = *emu.current;
    f.wait = Wait::kSleep;
    f.wake_ns = emu.now_ns + std::max(ns, 1u);
    yield_to_scheduler();
}

}  // namespace mimo_emu

// ---- the compiler's instrumentation (-fsanitize=thread): every plain load and store ----

#define MIMO_EMU_HOOKS(N)                                                                   \
    extern "C" void __tsan_read##N(void* p) { access(p, N, false, true); }                  \
    extern "C" void __tsan_write##N(void* p) { access(p, N, true, true); }                  \
    extern "C" void __tsan_unaligned_read##N(void* p) { access(p, N, false, true); }        \
    extern "C" void __tsan_unaligned_write##N(void* p) { access(p, N, true, true); }
MIMO_EMU_HOOKS(1)
MIMO_EMU_HOOKS(2)
MIMO_EMU_HOOKS(4)
MIMO_EMU_HOOKS(8)
MIMO_EMU_HOOKS(16)
extern "C" void __tsan_read_range(void* p, unsigned long n) {
    if (n) access(p, n, false, false);
}
extern "C" void __tsan_write_range(void* p, unsigned long n) {
    if (n) access(p, n, true, false);
}
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit() {}

// ---- the launch ----

extern "C" u64 mimo_emu_abi_bytes(void) { return sizeof(EmuLaunch); }
extern "C" u32 mimo_emu_abi_version(void) { return MIMO_EMU_ABI; }
extern "C" u64 mimo_emu_static_shared_bytes(void) { return emu.static_shared_bytes(); }

extern "C" int mimo_emu_launch(EmuLaunch* l) {
    emu.launch = l;
    l->failed = 0;
    l->worker = 0;
    l->task = MIMO_EMU_NO_TASK;
    if (l->message_bytes) l->message[0] = 0;
    emu.failed = false;
    emu.current = nullptr;
    emu.now_ns = 0;
    emu.rng = l->seed * 0x9e3779b97f4a7c15ull + 0x2545f4914f6cdd1dull;
    if (!emu.rng) emu.rng = 1;
    const u64 blocks = l->blocks, threads = l->threads;
    if (!blocks || !threads || threads % 32 || threads > 1024) {
        snprintf(l->message, l->message_bytes, "launch of %llu blocks of %llu threads: not a valid shape",
                 (unsigned long long)blocks, (unsigned long long)threads);
        l->failed = 1;
        return 1;
    }
    // Allocations (shadows kept across launches while the allocation is the same).
    std::vector<Allocation> next;
    for (u64 i = 0; i < l->allocation_count; ++i) {
        const EmuAllocation& m = l->allocations[i];
        Allocation al{m.base, m.bytes, m.mem_class < MIMO_EMU_CLASSES ? m.mem_class : kOther, m.name, {}};
        for (Allocation& old : emu.allocations)
            if (old.base == al.base && old.bytes == al.bytes) al.shadow.swap(old.shadow);
        if (al.cls != kWeights && al.shadow.empty()) al.shadow.resize((al.bytes + 3) / 4);
        next.push_back(std::move(al));
    }
    emu.allocations.swap(next);
    emu.params.assign((const unsigned char*)l->params, (const unsigned char*)l->params + l->params_bytes);
    // Stacks: one mapping, grown when a launch needs more threads.
    const u64 count = blocks * threads;
    if (count > emu.stack_count) {
        if (emu.stacks) munmap(emu.stacks, emu.stack_count * kStackBytes);
        void* m = mmap(nullptr, count * kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (m == MAP_FAILED) {
            snprintf(l->message, l->message_bytes, "cannot map %llu thread stacks", (unsigned long long)count);
            l->failed = 1;
            emu.stacks = nullptr;
            emu.stack_count = 0;
            return 1;
        }
        emu.stacks = (unsigned char*)m;
        emu.stack_count = count;
    }
    // Dynamic shared memory with redzones, per block.
    const u64 per_block = ((u64)l->dynamic_smem + 2 * kRedzone + 255) & ~255ull;
    if (per_block * blocks > emu.shared_pool_bytes) {
        if (emu.shared_pool) munmap(emu.shared_pool, emu.shared_pool_bytes);
        emu.shared_pool_bytes = per_block * blocks;
        emu.shared_pool = (unsigned char*)mmap(nullptr, emu.shared_pool_bytes, PROT_READ | PROT_WRITE,
                                               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    emu.blocks.assign(blocks, Block{});
    const u64 sb = emu.static_shared_bytes();
    for (u64 b = 0; b < blocks; ++b) {
        Block& blk = emu.blocks[b];
        blk.index = (u32)b;
        blk.live = (u32)threads;
        blk.clock.assign(blocks, 0u);
        blk.clock[b] = 1;
        blk.warps.assign(threads / 32, Warp{});
        blk.static_shared.assign(sb, 0xa5);  // uninitialised shared memory is garbage
        blk.dynamic_shared = emu.shared_pool + b * per_block + kRedzone;
        std::memset(blk.dynamic_shared, 0xa5, l->dynamic_smem);
        blk.shared_shadow.assign((sb + l->dynamic_smem + 3) / 4, Granule{});
    }
    emu.resident_block = kNone;
    emu.event_clocks.clear();
    emu.sync_clock_index.clear();
    emu.fibers.assign(count, Fiber{});
    emu.runnable.clear();
    for (u64 i = 0; i < count; ++i) {
        Fiber& f = emu.fibers[i];
        f.block = (u32)(i / threads);
        f.thread = (u32)(i % threads);
        init_fiber(f, i);
        emu.runnable.push_back((u32)i);
    }
    schedule();
    if (emu.resident_block != kNone && sb)
        std::memcpy(emu.blocks[emu.resident_block].static_shared.data(), __start_mimo_emu_shared, sb);
    l->virtual_ns = emu.now_ns;
    emu.current = nullptr;
    return l->failed ? 1 : 0;
}
