//! The contract between the compiler and the persistent kernel, declared once, here: every
//! struct the kernel reads is a `#[derive(CStruct)]` Rust struct, from which its C declaration
//! (written into each program's `generated.cuh` by [`c_declarations`]) and its word encoding are
//! generated. Each fused kind's operand struct is declared in its module of [`crate::kinds`].
//!
//! One launch runs one decode step. Grid = one block per worker (one per SM). Worker w runs
//! `tasks[queue_start[w] .. queue_start[w+1]]` in order. Before a task runs, the block waits until
//! every event in its wait list has reached `per_step * (step + 1)`; after it ran, the block
//! increments every event in its trigger list once. Counters are never reset: step s of a
//! sequence waits for counts of step s, so nothing is cleared between launches.
//!
//! Activations live in one f32 arena (ids and positions as i32 in the same arena, same width); KV
//! caches in a bf16 state buffer; weights in their stored formats, described by [`WeightRef`].
//! Every offset counts elements of the buffer it indexes, not bytes.

use std::fmt::Write as _;

pub use mimo_macros::CStruct;

use mimo_ir::formats::WeightFormat;

use crate::kinds::{self, TaskArgs};
use crate::program::Program;

/// `MIMO_ABI_VERSION`: an artifact records it, and a runtime refuses a kernel of another.
pub const ABI_VERSION: u32 = 5;
/// `MIMO_NONE`: an absent operand.
pub const NONE: u32 = u32::MAX;

/// An offset into the f32 activation arena (elements).
pub type ArenaOffset = u32;
/// An offset into the bf16 state buffer (elements).
pub type StateOffset = u32;
/// An index into the program's weight table (`KernelParams::weights`).
pub type WeightIndex = u32;

/// What an operand field of a [`CStruct`] indexes (the alias it is declared with).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operand {
    ArenaOffset,
    StateOffset,
    WeightIndex,
}

/// A struct the kernel reads, declared once in Rust (`#[derive(CStruct)]`, `#[repr(C)]`, no
/// padding): its C declaration and its words are generated from that declaration.
pub trait CStruct: Sized {
    const C_NAME: &'static str;
    /// `struct NAME { ... };`, with the Rust doc comments as C comments.
    const C_DECLARATION: &'static str;
    /// Size in 4-byte words.
    const WORDS: usize;
    /// Appends the declarations this one needs (of the structs it nests), then its own, each
    /// once.
    fn declare(out: &mut Vec<&'static str>);
    /// Appends the struct's words, in its C layout (little-endian, u64 low word first).
    fn write_words(&self, out: &mut Vec<u32>);
    /// The struct from exactly [`Self::WORDS`] words.
    fn from_words(words: &[u32]) -> Self;
    /// Every operand field (role, field name, value), arrays element by element.
    fn operands(&self) -> Vec<(Operand, &'static str, u32)>;

    fn to_words(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(Self::WORDS);
        self.write_words(&mut out);
        out
    }
}

/// One task: a tile of a fused op, with the events it waits for and triggers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, CStruct)]
#[repr(C)]
pub struct Task {
    /// `TaskKind`: which device function runs it.
    pub kind: u32,
    /// Index into `KernelParams::ops`.
    pub op: u32,
    pub unit_begin: u32,
    pub unit_end: u32,
    /// Into `KernelParams::waits`.
    pub wait_begin: u32,
    pub wait_count: u32,
    /// Into `KernelParams::triggers` (event ids).
    pub trigger_begin: u32,
    pub trigger_count: u32,
}

/// Proceed when `events[event] >= per_step * (step + 1)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, CStruct)]
#[repr(C)]
pub struct Wait {
    pub event: u32,
    pub per_step: u32,
}

/// A weight matrix: `rows` x `cols`, row-major along the reduction axis `cols` (nn.Linear layout:
/// [out, in]). Stacked experts [E, N, K] are rows = E * N, cols = K; expert e starts at row e * N.
#[derive(Debug, Clone, Copy, PartialEq, Default, CStruct)]
#[repr(C)]
pub struct WeightRef {
    #[c_type = "const void*"]
    pub data: u64,
    /// Block scales (MXFP4 / NVFP4), else null.
    #[c_type = "const u8*"]
    pub scales: u64,
    /// NVFP4's per-tensor scale, else 1.
    pub tensor_scale: f32,
    /// `WeightFormat`.
    pub format: u32,
    pub rows: u32,
    pub cols: u32,
}

/// Written by the first wait that gives up; the host turns it into an error naming the task.
/// A task whose shapes exceed what the kernel was built for stops the kernel the same way, with
/// event = MIMO_NONE, observed = 1 (a MIMO_MAX_* limit or an unknown kind) or the bytes of
/// dynamic shared memory the task needs, and expected = MIMO_SMEM_BYTES.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, CStruct)]
#[repr(C)]
pub struct Diagnostics {
    /// Nonzero once any block gave up; every other wait then returns at once.
    pub aborted: u32,
    pub worker: u32,
    /// Index into tasks.
    pub task: u32,
    pub event: u32,
    pub observed: u32,
    pub expected: u32,
}

/// The kernel's one by-value parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, CStruct)]
#[repr(C)]
pub struct KernelParams {
    #[c_type = "const Task*"]
    pub tasks: u64,
    /// [workers + 1]
    #[c_type = "const u32*"]
    pub queue_start: u64,
    #[c_type = "const Wait*"]
    pub waits: u64,
    #[c_type = "const u32*"]
    pub triggers: u64,
    #[c_type = "const OpArgs*"]
    pub ops: u64,
    #[c_type = "const WeightRef*"]
    pub weights: u64,
    #[c_type = "float*"]
    pub arena: u64,
    /// bf16 KV caches.
    #[c_type = "u16*"]
    pub state: u64,
    #[c_type = "u32*"]
    pub events: u64,
    #[c_type = "Diagnostics*"]
    pub diag: u64,
    /// A wait longer than this gives up.
    pub wait_limit_ns: u64,
    /// Steps since the events were zeroed (the sequence's step counter).
    pub step: u32,
    pub workers: u32,
}

impl KernelParams {
    /// The struct's bytes, little-endian, in its C layout: what a launch passes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.to_words()
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .collect()
    }
}

/// `WeightRef::format` of a weight stored as `format`: its index in [`WeightFormat::ALL`] (the
/// C enumerators are `FORMAT_<NAME>`; the layouts are described in `templates/common/weights.cuh`).
pub fn format_code(format: WeightFormat) -> u32 {
    WeightFormat::ALL
        .iter()
        .position(|&f| f == format)
        .expect("ALL lists every format") as u32
}

/// Every declaration of the ABI in C, for `generated.cuh`: the version, the operand aliases, the
/// weight formats and task kinds, each struct, the operand union and the dispatch list
/// `MIMO_TASK_KINDS(X)`, which expands `X(TASK_NAME, union_member, run_name)` once per kind.
/// Needs the scalar typedefs of `templates/common/abi.cuh` before it.
pub fn c_declarations() -> String {
    let mut s = String::new();
    let _ = writeln!(s, "#define MIMO_ABI_VERSION {ABI_VERSION}u");
    let _ = writeln!(s, "#define MIMO_NONE 0x{NONE:x}u");
    for alias in ["ArenaOffset", "StateOffset", "WeightIndex"] {
        let _ = writeln!(s, "typedef u32 {alias};");
    }
    s.push_str("enum WeightFormat : u32 {\n");
    for f in WeightFormat::ALL {
        let name = f.name().to_uppercase();
        let _ = writeln!(s, "    FORMAT_{name} = {},", format_code(f));
    }
    s.push_str("};\nenum TaskKind : u32 {\n");
    for (number, kind) in kinds::KINDS.iter().enumerate() {
        let _ = writeln!(s, "    {} = {number},", kind.c_enum());
    }
    s.push_str("};\n");
    for decl in [
        Task::C_DECLARATION,
        Wait::C_DECLARATION,
        WeightRef::C_DECLARATION,
        Diagnostics::C_DECLARATION,
    ] {
        s.push_str(decl);
    }
    let mut declared = vec![];
    for kind in kinds::KINDS {
        (kind.declare)(&mut declared);
    }
    declared.iter().for_each(|d| s.push_str(d));
    let _ = writeln!(
        s,
        "// The operands of one fused op, as its kind's member.\nunion OpArgs {{"
    );
    for kind in kinds::KINDS {
        let _ = writeln!(s, "    {} {};", kind.args_name, kind.name);
    }
    let _ = writeln!(s, "    u32 words[{}];\n}};", kinds::OP_ARGS_WORDS);
    s.push_str(KernelParams::C_DECLARATION);
    s.push_str("#define MIMO_TASK_KINDS(X)");
    for kind in kinds::KINDS {
        let _ = write!(
            s,
            " \\\n    X({}, {}, run_{})",
            kind.c_enum(),
            kind.name,
            kind.name
        );
    }
    s.push('\n');
    s
}

/// Why a program cannot run on the megakernel.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AbiError {
    #[error("fused op `{0}` has no CUDA template (it mixes ops no device function implements)")]
    NoTemplate(String),
    #[error("fused op `{op}`: {message}")]
    Shape { op: String, message: String },
}

/// Every table of one program, ready to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct AbiTables {
    pub tasks: Vec<Task>,
    /// The program's task id of each entry of `tasks` (diagnostics name tasks by these).
    pub task_ids: Vec<usize>,
    pub queue_start: Vec<u32>,
    pub waits: Vec<Wait>,
    pub triggers: Vec<u32>,
    /// Each fused op's operands, in program order.
    pub ops: Vec<TaskArgs>,
    /// Weight names in weight-table order (`KernelParams::weights`).
    pub weights: Vec<String>,
}

impl AbiTables {
    /// The operand table's words: each op's `OpArgs`, zero-padded to the union's size.
    pub fn op_words(&self) -> Vec<u32> {
        let mut words = Vec::with_capacity(self.ops.len() * kinds::OP_ARGS_WORDS);
        for op in &self.ops {
            let start = words.len();
            op.write_words(&mut words);
            words.resize(start + kinds::OP_ARGS_WORDS, 0);
        }
        words
    }

    pub fn task_words(&self) -> Vec<u32> {
        self.tasks.iter().flat_map(Task::to_words).collect()
    }

    pub fn wait_words(&self) -> Vec<u32> {
        self.waits.iter().flat_map(Wait::to_words).collect()
    }
}

/// Encodes `program` for the kernel.
pub fn encode(program: &Program) -> Result<AbiTables, AbiError> {
    let (ops, weights) = kinds::encode_ops(program)?;
    let mut t = AbiTables {
        tasks: vec![],
        task_ids: vec![],
        queue_start: vec![0],
        waits: vec![],
        triggers: vec![],
        ops,
        weights,
    };
    for queue in &program.schedule.queues {
        for &id in queue {
            let task = &program.tasks[id];
            t.tasks.push(Task {
                kind: t.ops[task.op].kind_number(),
                op: task.op as u32,
                unit_begin: task.units.start as u32,
                unit_end: task.units.end as u32,
                wait_begin: t.waits.len() as u32,
                wait_count: task.waits.len() as u32,
                trigger_begin: t.triggers.len() as u32,
                trigger_count: task.triggers.len() as u32,
            });
            t.task_ids.push(id);
            t.waits.extend(task.waits.iter().map(|&e| Wait {
                event: e as u32,
                per_step: program.events[e].producers.len() as u32,
            }));
            t.triggers.extend(task.triggers.iter().map(|&e| e as u32));
        }
        t.queue_start.push(t.tasks.len() as u32);
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuse::FusedKind;
    use crate::fuse::tests::tiny;
    use crate::{CompileOptions, Machine, compile};
    use mimo_ir::Architecture;
    use mimo_ir::model::decode_graph;

    #[test]
    fn structs_encode_in_their_declared_layout() {
        assert_eq!(Task::WORDS, 8);
        assert_eq!(WeightRef::WORDS, 8);
        assert_eq!(KernelParams::WORDS, 24);
        let w = WeightRef {
            data: 0x1122_3344_5566_7788,
            scales: 0,
            tensor_scale: 0.5,
            format: format_code(WeightFormat::Nvfp4),
            rows: 3,
            cols: 64,
        };
        let words = w.to_words();
        assert_eq!(
            words,
            [0x5566_7788, 0x1122_3344, 0, 0, 0.5f32.to_bits(), 4, 3, 64]
        );
        assert_eq!(WeightRef::from_words(&words), w);
        let p = KernelParams {
            tasks: 0x0102_0304_0506_0708,
            step: 7,
            workers: 9,
            ..KernelParams::default()
        };
        let bytes = p.to_bytes();
        assert_eq!(bytes.len(), std::mem::size_of::<KernelParams>());
        assert_eq!(&bytes[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&bytes[88..], &[7, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(std::mem::offset_of!(KernelParams, step), 88);

        // A nested struct's words sit in its place, and its operands are the struct's.
        let down = kinds::ExpertDownArgs {
            act: 1,
            residual: 2,
            out: 3,
            down: 4,
            routing: kinds::ExpertRouting {
                logits: 5,
                experts: 6,
                top_k: 7,
                normalize: 1,
                sigmoid: 1,
                selection_bias: 11,
                scale: 2.5,
            },
            hidden: 8,
            intermediate: 9,
        };
        assert_eq!(kinds::ExpertDownArgs::WORDS, 13);
        let scale = 2.5f32.to_bits();
        assert_eq!(
            down.to_words(),
            [1, 2, 3, 4, 5, 6, 7, 1, 1, 11, scale, 8, 9]
        );
        assert_eq!(kinds::ExpertDownArgs::from_words(&down.to_words()), down);
        let arena: Vec<u32> = down
            .operands()
            .into_iter()
            .filter(|o| o.0 == Operand::ArenaOffset)
            .map(|o| o.2)
            .collect();
        assert_eq!(arena, [1, 2, 3, 5]);
    }

    #[test]
    fn the_c_declarations_follow_the_rust_ones() {
        let c = c_declarations();
        assert!(c.contains(&format!("#define MIMO_ABI_VERSION {ABI_VERSION}u")));
        assert!(
            c.contains("struct KernelParams {\n    const Task* tasks;\n"),
            "{c}"
        );
        assert!(
            c.contains("    u64 wait_limit_ns;\n    // Steps since"),
            "{c}"
        );
        assert!(c.contains("    FORMAT_MXFP4 = 3,\n"));
        assert!(c.contains("    ArenaOffset out[3];\n"), "{c}");
        for (number, kind) in kinds::KINDS.iter().enumerate() {
            assert!(c.contains(&format!("    {} = {number},\n", kind.c_enum())));
            assert!(c.contains(&format!(
                "X({}, {}, run_{})",
                kind.c_enum(),
                kind.name,
                kind.name
            )));
        }
        // A struct is declared once however many kinds share it, a nested one before its users.
        assert_eq!(c.matches("struct DenseProjectionArgs {").count(), 1);
        assert_eq!(c.matches("struct ExpertRouting {").count(), 1);
        let at = |s: &str| c.find(s).unwrap_or_else(|| panic!("{s} missing"));
        assert!(at("struct ExpertRouting {") < at("struct ExpertGateUpArgs {"));
        assert!(c.contains("    ExpertRouting routing;\n"), "{c}");
    }

    #[test]
    fn encodes_every_task_and_operand() {
        for arch in [Architecture::Qwen3Moe, Architecture::Mixtral] {
            let spec = tiny(arch);
            let graph = decode_graph(&spec, 1, 16).unwrap();
            let program = compile(
                &graph,
                &CompileOptions::for_machine(Machine {
                    workers: 5,
                    ..Machine::h100()
                }),
            )
            .unwrap();
            let t = encode(&program).unwrap();
            assert_eq!(t.tasks.len(), program.tasks.len());
            assert_eq!(t.queue_start.len(), 6);
            assert_eq!(*t.queue_start.last().unwrap() as usize, t.tasks.len());
            assert_eq!(t.op_words().len(), t.ops.len() * kinds::OP_ARGS_WORDS);
            let mut seen = t.task_ids.clone();
            seen.sort_unstable();
            assert_eq!(seen, (0..program.tasks.len()).collect::<Vec<_>>());
            for (i, task) in t.tasks.iter().enumerate() {
                let op = &t.ops[task.op as usize];
                assert_eq!(op.kind(), program.ops[task.op as usize].kind);
                for (role, field, v) in op.operands().into_iter().filter(|o| o.2 != NONE) {
                    let bound = match role {
                        Operand::ArenaOffset => program.memory.arena_len,
                        Operand::StateOffset => program.memory.state_len,
                        Operand::WeightIndex => t.weights.len(),
                    };
                    assert!((v as usize) < bound, "task {i}: {field} = {v}");
                }
                let waits = &t.waits[task.wait_begin as usize..][..task.wait_count as usize];
                assert!(
                    waits
                        .iter()
                        .all(|w| (w.event as usize) < program.events.len() && w.per_step > 0)
                );
            }
            // Qwen3 has q/k norms; Mixtral has none.
            let kv = program
                .ops
                .iter()
                .position(|o| o.kind == FusedKind::KvAppend)
                .unwrap();
            let TaskArgs::KvAppend(kv) = &t.ops[kv] else {
                panic!("kv_append encodes as its kind")
            };
            assert_eq!(kv.k_norm == NONE, arch == Architecture::Mixtral);
        }
    }
}
