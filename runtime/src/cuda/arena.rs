//! The arena from the host: a program's graph inputs and outputs and their places in it
//! (`Port`s, read from the memory plan), writes into it, device-side copies (within one arena,
//! from a staged scratch table, between two programs' arenas), and readback through pinned host
//! memory.
//!
//! Every copy into, within or out of an arena goes through here, so the bounds checks that keep
//! those copies inside their allocations live in one file.

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use cudarc::driver::{DevicePtr, result};
use mimo_compiler::Program;
use mimo_compiler::plan::{Buffer, Location};
use mimo_ir::TensorType;
use mimo_ir::graph::NodeKind;

use super::call;
use super::megakernel::Megakernel;

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

    /// Copies `words` into the arena at `offset` (asynchronously, in stream order).
    pub fn write_arena(&mut self, offset: usize, words: &[u32]) -> Result<()> {
        let range = offset..offset + words.len();
        if range.end > self.arena.len() {
            bail!("arena write {range:?} past its {} words", self.arena.len());
        }
        call("copying inputs to the device", || {
            self.stream
                .memcpy_htod(words, &mut self.arena.slice_mut(range))
        })
    }

    /// Uploads `words` into a device scratch table (for bench loops that feed steps on the
    /// device), replacing the previous one.
    pub fn stage_scratch(&mut self, words: &[u32]) -> Result<()> {
        let mut w = words.to_vec();
        w.push(0);
        self.scratch = Some(call("uploading a scratch table", || {
            self.stream.clone_htod(&w[..])
        })?);
        Ok(())
    }

    /// Copies `len` words from scratch word `from` to arena word `to`, in stream order.
    pub fn copy_scratch_to_arena(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let scratch = self.scratch.as_ref().context("no scratch table staged")?;
        if from + len > scratch.len() || to + len > self.arena.len() {
            bail!("scratch copy out of bounds");
        }
        let src = scratch.slice(from..from + len);
        call("copying scratch words to the arena", || {
            self.stream
                .memcpy_dtod(&src, &mut self.arena.slice_mut(to..to + len))
        })
    }

    /// Copies `len` arena words from `from` to `to` (non-overlapping), in stream order: how a
    /// step's output (the next token) becomes the next step's input without the host.
    pub fn copy_within_arena(&mut self, from: usize, to: usize, len: usize) -> Result<()> {
        let n = self.arena.len();
        if from + len > n || to + len > n || (from < to + len && to < from + len) {
            bail!(
                "arena copy {from}..{} -> {to}..{} is out of bounds or overlaps",
                from + len,
                to + len
            );
        }
        let base = self.arena.device_ptr(&self.stream).0;
        call("binding the CUDA context", || self.ctx.bind_to_thread())?;
        call("copying within the arena", || {
            // SAFETY: both ranges lie inside the arena allocation (checked above) and do not
            // overlap; the copy is ordered on the stream every kernel launch uses.
            unsafe {
                result::memcpy_dtod_async(
                    base + 4 * to as u64,
                    base + 4 * from as u64,
                    4 * len,
                    self.stream.cu_stream(),
                )
            }
        })
    }

    /// Copies `len` words of this program's arena at `from` into `dst`'s arena at `to`, in
    /// stream order (both programs run on one stream of one context): a value one program
    /// produced becomes another's input without the host.
    pub fn copy_arena_to(
        &self,
        from: usize,
        dst: &mut Megakernel,
        to: usize,
        len: usize,
    ) -> Result<()> {
        if !Arc::ptr_eq(&self.shared, &dst.shared) {
            bail!("an arena copy between programs of different CUDA contexts");
        }
        if from + len > self.arena.len() || to + len > dst.arena.len() {
            bail!("arena copy {from}+{len} -> {to}+{len} is out of bounds");
        }
        let src = self.arena.slice(from..from + len);
        let mut dst_range = dst.arena.slice_mut(to..to + len);
        call("copying between program arenas", || {
            self.stream.memcpy_dtod(&src, &mut dst_range)
        })
    }

    /// Enqueues a copy of arena value `loc` into its pinned host buffer named `name`.
    pub(super) fn enqueue_read(&mut self, name: &str, loc: Location) -> Result<()> {
        if loc.buffer != Buffer::Arena {
            bail!("`{name}` is not in the arena");
        }
        if !self.host_out.contains_key(name) {
            // SAFETY: plain page-locked memory, fully written by the copy below before any read.
            let buf = call("allocating pinned host memory", || unsafe {
                self.ctx.alloc_pinned_with_flags::<u32>(loc.len.max(1), 0)
            })?;
            self.host_out.insert(name.to_string(), buf);
        }
        let dst = self.host_out.get_mut(name).expect("inserted above");
        let src = self.arena.slice(loc.offset..loc.offset + loc.len);
        call(&format!("copying `{name}` to the host"), || {
            self.stream.memcpy_dtoh(&src, dst)
        })
    }

    /// The words the last step copied for output `name`.
    pub(super) fn host_words(&self, name: &str) -> Result<Vec<u32>> {
        let buf = self.host_out.get(name).context("no such output buffer")?;
        let len = self
            .outputs
            .iter()
            .find(|p| p.name == name)
            .map_or(0, |p| p.loc.len);
        Ok(call("reading pinned host memory", || buf.as_slice())?[..len].to_vec())
    }

    /// Reads any arena value (after a step): for tests and debugging.
    pub fn read_arena(&mut self, loc: Location) -> Result<Vec<u32>> {
        self.check_usable()?;
        if loc.buffer != Buffer::Arena || loc.offset + loc.len > self.arena.len() {
            bail!("{loc:?} is not an arena range");
        }
        let src = self.arena.slice(loc.offset..loc.offset + loc.len);
        let v = call("copying an arena value to the host", || {
            self.stream.clone_dtoh(&src)
        })?;
        self.synchronize()?;
        Ok(v)
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
