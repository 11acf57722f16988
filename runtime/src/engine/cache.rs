//! [`ProgramCache`]: a model's compiled programs by key (a shape) on one device, all continuing
//! one sequence in one KV state, on either side of the device boundary: what differs per device
//! (how a program is loaded, what state the programs share, how a sequence is reset) is its
//! [`Backend`], the CPU schedule executor ([`crate::exec::CpuBackend`]) or megakernels on a GPU or
//! the emulator ([`crate::cuda::CudaBackend`]).
//!
//! Programs are compiled only for fixed shapes, but a speculative step's shapes vary: a verify
//! block is shorter at the end of the output, and the draft's new context rows number 1 to B. The
//! few shapes that occur are compiled the first time they are needed (an artifact's programs are
//! added up front) and kept, so each is compiled once per process.

use std::collections::HashMap;
use std::fmt::Debug;
use std::hash::Hash;

use anyhow::{Context, Result};
use mimo_compiler::{CompileOptions, Program, compile};
use mimo_ir::Graph;

use super::ProgramRun;

/// One device's half of a [`ProgramCache`].
pub trait Backend: Send {
    /// A program loaded on the device.
    type Loaded: ProgramRun + Send;
    /// What a program compiled ahead of time may bring along (an artifact's kernel).
    type Image;
    /// Loads `program` into the state the device's programs share (the first lays it out),
    /// with `image` or an image of its own.
    fn load(&mut self, program: Program, image: Option<&Self::Image>) -> Result<Self::Loaded>;
    /// A new sequence: the shared state emptied, and each of `loaded` ready to start over.
    fn reset<'a>(&mut self, loaded: impl Iterator<Item = &'a mut Self::Loaded>) -> Result<()>
    where
        Self::Loaded: 'a;
    /// A backend for another model's programs (a DFlash draft) on the same device and weights,
    /// with a state of its own.
    fn for_draft(&self) -> Self
    where
        Self: Sized;
    /// Where the programs run, for logs and `--json` output (`workers` per step).
    fn describe(&self, workers: usize) -> String;
    /// The device in a few words, for messages.
    fn place(&self) -> String;
}

/// Loaded programs by key, on one [`Backend`].
pub struct ProgramCache<K, B: Backend> {
    backend: B,
    options: CompileOptions,
    loaded: HashMap<K, B::Loaded>,
}

impl<K: Eq + Hash + Clone + Debug, B: Backend> ProgramCache<K, B> {
    /// No program yet; those compiled here use `options` (an artifact's machine, so that every
    /// program of a model is scheduled for the same workers).
    pub fn new(backend: B, options: CompileOptions) -> Self {
        ProgramCache {
            backend,
            options,
            loaded: HashMap::new(),
        }
    }

    /// Adds a program compiled ahead of time (an artifact's) under `key`, with its image
    /// (`None`: one of its own).
    pub fn insert(&mut self, key: K, program: Program, image: Option<&B::Image>) -> Result<()> {
        let loaded = self.backend.load(program, image)?;
        self.loaded.insert(key, loaded);
        Ok(())
    }

    /// The program of `key`, compiling the graph `build` makes the first time.
    pub fn get(
        &mut self,
        key: &K,
        build: impl FnOnce() -> Result<Graph>,
    ) -> Result<&mut B::Loaded> {
        if !self.loaded.contains_key(key) {
            let graph = build()?;
            let started = std::time::Instant::now();
            let program = compile(&graph, &self.options)
                .with_context(|| format!("compiling `{}` for {key:?}", graph.name))?;
            let tasks = program.tasks.len();
            let place = self.backend.place();
            let loaded = self
                .backend
                .load(program, None)
                .with_context(|| format!("loading `{}` ({key:?}) on {place}", graph.name))?;
            tracing::debug!(
                "`{}` ({tasks} tasks) compiled and loaded on {place} in {:.3} s",
                graph.name,
                started.elapsed().as_secs_f64()
            );
            self.loaded.insert(key.clone(), loaded);
        }
        Ok(self.loaded.get_mut(key).expect("inserted above"))
    }

    /// The program of `key`, when it has been loaded.
    pub fn loaded(&mut self, key: &K) -> Option<&mut B::Loaded> {
        self.loaded.get_mut(key)
    }

    /// A new sequence: the KV state emptied.
    pub fn reset(&mut self) -> Result<()> {
        self.backend.reset(self.loaded.values_mut())
    }

    /// Worker threads (or blocks) per step.
    pub fn workers(&self) -> usize {
        self.options.machine.workers.max(1)
    }

    /// Where the programs run, for logs and `--json` output.
    pub fn describe(&self) -> String {
        self.backend.describe(self.workers())
    }

    /// An empty cache for another model's programs (a DFlash draft) on the same device and
    /// weights, compiling with the same options.
    pub fn for_draft<K2>(&self) -> ProgramCache<K2, B> {
        ProgramCache {
            backend: self.backend.for_draft(),
            options: self.options,
            loaded: HashMap::new(),
        }
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }
}
