//! The arena from the host: a program's graph inputs and outputs and their places in it
//! (`Port`s, read from the memory plan), writes into it, device-side copies (within one arena,
//! from a staged scratch table, between two programs' arenas), and readback (after the step's
//! deadline-bounded wait).
//!
//! Every copy into, within or out of an arena goes through here, so the bounds checks that keep
//! those copies inside their allocations live in one file.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mimo_compiler::Program;
use mimo_compiler::plan::{Buffer, Location};
use mimo_ir::TensorType;
use mimo_ir::graph::NodeKind;

use super::megakernel::Megakernel;
use crate::device::{DeviceBuffer, MemClass};

/// A graph input or output: where it lives in the arena and what it is.
#[derive(Debug, Clone)]
pub(super) struct Port {
    pub(super) name: String,
    pub(super) loc: Location,
    pub(super) ty: TensorType,
}

/// The program's graph inputs (`inputs = true`) or outputs with their arena places.
pub(super) fn ports(program: &Program, inputs: bool) -> Result<Vec<Port>> {
    let g = &program.graph;
    let values: Vec<(String, mimo_ir::graph::Value)> = if inputs {
        g.nodes_of(|k| matches!(k, NodeKind::Input))
            .map(|(idx, n)| {
                (
                    n.name.clone(),
                    mimo_ir::graph::Value {
                        node: idx,
                        output: 0,
                    },
                )
            })
            .collect()
    } else {
        g.outputs().to_vec()
    };
    values
        .into_iter()
        .map(|(name, v)| {
            let loc = program
                .memory
                .location(v)
                .filter(|l| l.buffer == Buffer::Arena)
                .with_context(|| format!("the memory plan has no arena place for `{name}`"))?;
            Ok(Port {
                name,
                loc,
                ty: g.value_type(v).clone(),
            })
        })
        .collect()
}

impl Megakernel {
    /// The location of a graph input or output by name.
    pub fn port(&self, name: &str, input: bool) -> Option<Location> {
        let list = if input { &self.inputs } else { &self.outputs };
        list.iter().find(|p| p.name == name).map(|p| p.loc)
    }

    /// Words of the arena.
    fn arena_words(&self) -> usize {
        self.arena.bytes() / 4
    }

    /// Copies `words` into the arena at `offset` (in stream order).
    pub fn write_arena(&mut self, offset: usize, words: &[u32]) -> Result<()> {
        let range = offset..offset + words.len();
        if range.end > self.arena_words() {
            bail!(
                "arena write {range:?} past its {} words",
                self.arena_words()
            );
        }
        self.arena
            .write_words(4 * offset, words)
            .context("copying inputs to the device")
    }

    /// Uploads `words` into a device scratch table (for bench loops that feed steps on the
    /// device), replacing the previous one.
    pub fn stage_scratch(&mut self, words: &[u32]) -> Result<()> {
        self.scratch = None;
        self.scratch = Some(DeviceBuffer::from_words(
            &self.dev,
            words,
            MemClass::Other,
            "scratch table",
        )?);
        Ok(())
    }

    /// Copies `len` words from scratch word `from` to arena word `to`, in stream order.
    pub fn copy_scratch_to_arena(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let scratch = self.scratch.as_ref().context("no scratch table staged")?;
        if from + len > scratch.bytes() / 4 || to + len > self.arena_words() {
            bail!("scratch copy out of bounds");
        }
        self.dev
            .copy_on_device(
                self.arena.ptr() + 4 * to as u64,
                scratch.ptr() + 4 * from as u64,
                4 * len,
            )
            .context("copying scratch words to the arena")
    }

    /// Copies `len` arena words from `from` to `to` (non-overlapping), in stream order: how a
    /// step's output (the next token) becomes the next step's input without the host.
    pub fn copy_within_arena(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let n = self.arena_words();
        if from + len > n || to + len > n || (from < to + len && to < from + len) {
            bail!(
                "arena copy {from}..{} -> {to}..{} is out of bounds or overlaps",
                from + len,
                to + len
            );
        }
        let base = self.arena.ptr();
        self.dev
            .copy_on_device(base + 4 * to as u64, base + 4 * from as u64, 4 * len)
            .context("copying within the arena")
    }

    /// Copies `len` words of this program's arena at `from` into `dst`'s arena at `to`, in
    /// stream order (both programs run on one device): a value one program produced becomes
    /// another's input without the host.
    pub fn copy_arena_to(
        &self,
        from: usize,
        dst: &mut Megakernel,
        to: usize,
        len: usize,
    ) -> Result<()> {
        if !Arc::ptr_eq(&self.shared, &dst.shared) {
            bail!("an arena copy between programs of different device contexts");
        }
        if from + len > self.arena_words() || to + len > dst.arena_words() {
            bail!("arena copy {from}+{len} -> {to}+{len} is out of bounds");
        }
        self.dev
            .copy_on_device(
                dst.arena.ptr() + 4 * to as u64,
                self.arena.ptr() + 4 * from as u64,
                4 * len,
            )
            .context("copying between program arenas")
    }

    /// The words of arena value `loc`, read back now: only after [`Megakernel::synchronize`]
    /// (a read before the deadline-bounded wait would block on a hung kernel).
    pub(super) fn read_back(&self, name: &str, loc: Location) -> Result<Vec<u32>> {
        if loc.buffer != Buffer::Arena || loc.offset + loc.len > self.arena_words() {
            bail!("`{name}` ({loc:?}) is not an arena range");
        }
        self.arena
            .read_words(4 * loc.offset, loc.len)
            .with_context(|| format!("copying `{name}` to the host"))
    }

    /// Reads any arena value (after everything enqueued): for tests and debugging.
    pub fn read_arena(&mut self, loc: Location) -> Result<Vec<u32>> {
        self.check_usable()?;
        if loc.buffer != Buffer::Arena || loc.offset + loc.len > self.arena_words() {
            bail!("{loc:?} is not an arena range");
        }
        self.synchronize()?;
        self.read_back("an arena value", loc)
    }

    /// Words `rows` of output `name` (a [tokens, ...] value), copied back after everything
    /// enqueued: the committed rows of a verified block, without the rejected ones.
    pub fn read_rows(&mut self, name: &str, rows: std::ops::Range<usize>) -> Result<Vec<u32>> {
        let port = self
            .outputs
            .iter()
            .find(|p| p.name == name)
            .with_context(|| format!("`{}` has no output `{name}`", self.program.graph.name))?;
        let n = port.ty.shape.first().copied().unwrap_or(1).max(1);
        let width = port.loc.len / n;
        if rows.end > n {
            bail!("rows {rows:?} of `{name}`, which has {n}");
        }
        let loc = Location {
            buffer: Buffer::Arena,
            offset: port.loc.offset + rows.start * width,
            len: rows.len() * width,
        };
        self.read_arena(loc)
    }
}
