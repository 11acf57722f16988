//! abi.cuh's structs as the host writes and reads them: [`KernelParams`] (the kernel's one
//! by-value parameter), [`Diagnostics`] (the block a failing wait or task leaves behind), and the
//! task and operand tables flattened to words.
//!
//! Kept apart from the code that launches and decodes so the whole host side of the ABI is one
//! file to hold against `templates/common/abi.cuh`; a test checks field order and sizes against
//! the header itself.

use mimo_compiler::abi::{self, OpArgs};

/// abi.cuh `KernelParams`, byte for byte (96 bytes; checked against the header by a test).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelParams {
    pub tasks: u64,
    pub queue_start: u64,
    pub waits: u64,
    pub triggers: u64,
    pub ops: u64,
    pub weights: u64,
    pub arena: u64,
    pub state: u64,
    pub events: u64,
    pub diag: u64,
    pub wait_limit_ns: u64,
    pub step: u32,
    pub workers: u32,
}

impl KernelParams {
    /// The struct's bytes, little-endian, in abi.cuh's layout (no padding: eleven u64s, then two
    /// u32s): what [`crate::device::Device::launch`] passes as the kernel's parameter.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(std::mem::size_of::<Self>());
        for v in [
            self.tasks,
            self.queue_start,
            self.waits,
            self.triggers,
            self.ops,
            self.weights,
            self.arena,
            self.state,
            self.events,
            self.diag,
            self.wait_limit_ns,
        ] {
            b.extend(v.to_le_bytes());
        }
        b.extend(self.step.to_le_bytes());
        b.extend(self.workers.to_le_bytes());
        b
    }
}

/// abi.cuh `Diagnostics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Diagnostics {
    pub aborted: u32,
    pub worker: u32,
    pub task: u32,
    pub event: u32,
    pub observed: u32,
    pub expected: u32,
}

/// Words of the diagnostics block (6 used; 8 keeps the copy a whole 32 bytes).
pub(super) const DIAG_WORDS: usize = 8;

impl Diagnostics {
    pub(super) fn from_words(w: &[u32]) -> Self {
        Diagnostics {
            aborted: w[0],
            worker: w[1],
            task: w[2],
            event: w[3],
            observed: w[4],
            expected: w[5],
        }
    }
}

/// The words of the abi structs, in their C layout (every field 4 bytes).
pub(super) fn task_words(t: &abi::Task) -> [u32; 8] {
    [
        t.kind,
        t.op,
        t.unit_begin,
        t.unit_end,
        t.wait_begin,
        t.wait_count,
        t.trigger_begin,
        t.trigger_count,
    ]
}

pub(super) fn op_words(o: &OpArgs) -> Vec<u32> {
    let mut w = Vec::with_capacity(26);
    w.extend_from_slice(&o.values);
    w.extend_from_slice(&o.state);
    w.extend_from_slice(&o.weights);
    w.extend_from_slice(&o.dims);
    w.extend(o.fparams.iter().map(|f| f.to_bits()));
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field names of `struct NAME { ... };` in abi.cuh, in order.
    fn c_fields(name: &str) -> Vec<String> {
        let header = include_str!("../../../templates/common/abi.cuh");
        let start = header
            .find(&format!("struct {name} {{"))
            .unwrap_or_else(|| panic!("struct {name} not in abi.cuh"));
        let body = &header[start..];
        let body = &body[body.find('{').unwrap() + 1..body.find("};").unwrap()];
        body.lines()
            .map(|l| l.split("//").next().unwrap().trim())
            .filter(|l| l.ends_with(';'))
            .map(|l| {
                let decl = l.trim_end_matches(';');
                let last = decl.split_whitespace().last().unwrap();
                last.trim_start_matches('*')
                    .split('[')
                    .next()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn kernel_params_match_abi_cuh() {
        assert_eq!(
            c_fields("KernelParams"),
            [
                "tasks",
                "queue_start",
                "waits",
                "triggers",
                "ops",
                "weights",
                "arena",
                "state",
                "events",
                "diag",
                "wait_limit_ns",
                "step",
                "workers"
            ]
        );
        assert_eq!(std::mem::size_of::<KernelParams>(), 96);
        assert_eq!(std::mem::offset_of!(KernelParams, wait_limit_ns), 80);
        assert_eq!(std::mem::offset_of!(KernelParams, step), 88);
        assert_eq!(std::mem::offset_of!(KernelParams, workers), 92);
        let p = KernelParams {
            tasks: 0x0102_0304_0506_0708,
            step: 7,
            workers: 9,
            ..KernelParams::default()
        };
        let bytes = p.to_bytes();
        assert_eq!(bytes.len(), 96);
        assert_eq!(&bytes[..8], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&bytes[88..], &[7, 0, 0, 0, 9, 0, 0, 0]);
        assert_eq!(
            c_fields("Diagnostics"),
            ["aborted", "worker", "task", "event", "observed", "expected"]
        );
        assert_eq!(
            c_fields("WeightRef"),
            ["data", "scales", "tensor_scale", "format", "rows", "cols"]
        );
        assert_eq!(
            c_fields("Task"),
            [
                "kind",
                "op",
                "unit_begin",
                "unit_end",
                "wait_begin",
                "wait_count",
                "trigger_begin",
                "trigger_count"
            ]
        );
        assert_eq!(
            c_fields("OpArgs"),
            ["values", "state", "weights", "dims", "fparams"]
        );
        let t = abi::Task {
            kind: 1,
            op: 2,
            unit_begin: 3,
            unit_end: 4,
            wait_begin: 5,
            wait_count: 6,
            trigger_begin: 7,
            trigger_count: 8,
        };
        assert_eq!(task_words(&t), [1, 2, 3, 4, 5, 6, 7, 8]);
        let o = OpArgs {
            values: [1; 8],
            state: [2; 2],
            weights: [3; 4],
            dims: [4; 8],
            fparams: [0.5; 4],
        };
        let w = op_words(&o);
        assert_eq!(w.len() * 4, std::mem::size_of::<OpArgs>());
        assert_eq!(&w[..8], &[1; 8]);
        assert_eq!(&w[8..10], &[2; 2]);
        assert_eq!(&w[10..14], &[3; 4]);
        assert_eq!(&w[14..22], &[4; 8]);
        assert_eq!(w[22], 0.5f32.to_bits());
    }
}
