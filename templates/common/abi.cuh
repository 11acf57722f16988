// The contract between the compiler and the persistent kernel. Every struct, enum and constant
// of it (Task, Wait, WeightRef, Diagnostics, KernelParams, each fused kind's operand struct and
// the OpArgs union over them, TaskKind, WeightFormat, MIMO_ABI_VERSION, MIMO_NONE) is declared
// once, in Rust (compiler/src/abi.rs and compiler/src/kinds/), and written into each program's
// generated.cuh by `abi::c_declarations`; a kernel.cu shows them in full. Only the scalar types
// they are spelled in are declared here.
//
// One launch runs one decode step. Grid = one block per worker (one per SM), MIMO_THREADS threads
// each. Worker w runs tasks[queue_start[w] .. queue_start[w+1]] in order. Before a task runs, the
// block waits until every event in its wait list has reached `per_step * (step + 1)`; after it
// ran, the block increments every event in its trigger list once. Counters are never reset: step
// s of a sequence waits for counts of step s, so nothing is cleared between launches.
//
// Activations live in one f32 arena (ids and positions as i32 in the same arena, same width);
// KV caches in a bf16 state buffer; weights in their stored formats, described by WeightRef.
// Every offset (ArenaOffset, StateOffset) counts elements of the buffer it indexes, not bytes.
#pragma once

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef int i32;
typedef unsigned long long u64;

#include "generated.cuh"
