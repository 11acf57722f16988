//! The CPU schedule executor: runs a compiled [`Program`] the way the megakernel does, with one
//! thread per worker queue, the same tasks, the same events and the same memory plan, each task
//! running its ops' reference implementations on its tile. Its results must equal the reference
//! interpreter's: that proves fusion, tiling, events and scheduling keep the model's meaning.
//!
//! The arena and the state buffer are words shared by all threads (`AtomicU32`, f32 or i32 bits).
//! Tasks write disjoint regions and read only regions that the events they waited for cover;
//! atomics keep the racing parts (a task copying a whole value while another writes an unrelated
//! part of it) defined behaviour, and the acquire/release event counters order everything else.
//!
//! The state buffer may be shared with other programs of the same model ([`SharedState`]): a
//! target's decode and verify programs, or a draft's programs for each context size, continue
//! one sequence.

mod programs;
mod state;

pub use programs::CpuBackend;
pub use state::SharedState;

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use mimo_compiler::Program;
use mimo_compiler::plan::{Buffer, Location, node_io};
use mimo_ir::graph::{NodeKind, Value};
use mimo_ir::interp::F32Weights;
use mimo_ir::op::{Io, Region};
use mimo_ir::{Tensor, TensorData, TensorType};
use petgraph::graph::NodeIndex;

/// Why a step of the executor failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecError {
    #[error(
        "worker {worker}: task {task} (`{op}` units {units:?}) waited more than {limit:?} for event {event} \
         (count {observed}, expected {expected})"
    )]
    StuckWait {
        worker: usize,
        task: usize,
        op: String,
        units: Range<usize>,
        event: usize,
        observed: u32,
        expected: u32,
        limit: Duration,
    },
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("missing weight `{0}`")]
    MissingWeight(String),
    #[error("the program has no output `{0}`")]
    MissingOutput(String),
    #[error("the program's memory plan has no place for `{0}`")]
    Unplaced(String),
    #[error(
        "graph `{graph}` lays out its KV state unlike the programs it would share it with: {detail}"
    )]
    StateLayout { graph: String, detail: String },
    #[error("output `{name}` has {have} rows; rows {rows:?} were asked for")]
    Rows {
        name: String,
        rows: Range<usize>,
        have: usize,
    },
}

/// How a wait ended without its count.
enum WaitFailed {
    /// Past the limit: the count it saw.
    TimedOut(u32),
    /// Another worker failed; this one stops quietly.
    Aborted,
}

/// Runs one compiled program step after step, keeping its KV state.
pub struct ScheduleExecutor {
    program: Program,
    weights: F32Weights,
    arena: Vec<AtomicU32>,
    state: SharedState,
    events: Vec<AtomicU32>,
    step: u32,
    /// A wait longer than this is reported as stuck.
    pub wait_limit: Duration,
}

impl ScheduleExecutor {
    /// Checks that every value a task touches has a place, then allocates the buffers.
    pub fn new(program: Program, weights: F32Weights) -> Result<Self, ExecError> {
        let state = SharedState::for_program(&program);
        Self::with_state(program, weights, state)
    }

    /// [`ScheduleExecutor::new`] on a state buffer other programs of the model use too; refused
    /// when the program lays its state out differently.
    pub fn with_state(
        program: Program,
        weights: F32Weights,
        state: SharedState,
    ) -> Result<Self, ExecError> {
        state.check(&program)?;
        let graph = &program.graph;
        for op in &program.ops {
            let touched = op
                .exports
                .iter()
                .map(|&(n, o)| Value {
                    node: NodeIndex::new(n),
                    output: o,
                })
                .chain(
                    op.members
                        .iter()
                        .flat_map(|m| graph.node(NodeIndex::new(m.node)).inputs.iter().copied()),
                );
            for v in touched {
                let needs_place =
                    matches!(graph.node(v.node).kind, NodeKind::Input | NodeKind::State)
                        || (matches!(graph.node(v.node).kind, NodeKind::Op(_))
                            && op.member(v.node.index()).is_none());
                if needs_place && program.memory.location(v).is_none() {
                    return Err(ExecError::Unplaced(graph.node(v.node).name.clone()));
                }
            }
        }
        let words = |n: usize| (0..n).map(|_| AtomicU32::new(0)).collect::<Vec<_>>();
        let (arena, events) = (words(program.memory.arena_len), words(program.events.len()));
        Ok(ScheduleExecutor {
            program,
            weights,
            arena,
            state,
            events,
            step: 0,
            wait_limit: Duration::from_secs(20),
        })
    }

    pub fn program(&self) -> &Program {
        &self.program
    }

    /// The state buffer, to share with another program of the model.
    pub fn state(&self) -> &SharedState {
        &self.state
    }

    /// Zeroes the state (for every program sharing it) and the event counters: a new sequence.
    pub fn reset(&mut self) {
        self.state.clear();
        for w in &self.events {
            w.store(0, Ordering::Relaxed);
        }
        self.step = 0;
    }

    /// Rows `rows` (along the first axis) of output `name` of the last step, reading no other
    /// element: after a verify step the host needs only the committed rows of `features`.
    pub fn read_rows(&self, name: &str, rows: Range<usize>) -> Result<Tensor, ExecError> {
        let v = self
            .program
            .graph
            .output(name)
            .ok_or_else(|| ExecError::MissingOutput(name.to_string()))?;
        let ty: &TensorType = self.program.graph.value_type(v);
        let have = ty.shape.first().copied().unwrap_or(1);
        if rows.start > rows.end || rows.end > have {
            return Err(ExecError::Rows {
                name: name.to_string(),
                rows,
                have,
            });
        }
        let row: usize = ty.shape.iter().skip(1).product();
        let loc = self.location(v);
        let words = &self.buffer(loc)[loc.offset + rows.start * row..loc.offset + rows.end * row];
        let mut shape = ty.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = rows.len();
        }
        Ok(Tensor {
            shape,
            data: decode_words(ty, words),
        })
    }

    /// Runs one step, one thread per worker queue.
    pub fn run_step(
        &mut self,
        inputs: &[(&str, Tensor)],
        outputs: &[&str],
    ) -> Result<HashMap<String, Tensor>, ExecError> {
        let graph = &self.program.graph;
        for (idx, node) in graph.nodes_of(|k| matches!(k, NodeKind::Input)) {
            let (_, t) = inputs
                .iter()
                .find(|(n, _)| *n == node.name)
                .ok_or_else(|| ExecError::MissingInput(node.name.clone()))?;
            let loc = self.location(Value {
                node: idx,
                output: 0,
            });
            store(
                &self.arena,
                loc.offset,
                t,
                &whole_region(&t.shape),
                &t.shape,
            );
        }
        let abort = AtomicBool::new(false);
        let step = self.step;
        let this = &*self;
        let results: Vec<Result<(), ExecError>> = std::thread::scope(|s| {
            let handles: Vec<_> = this
                .program
                .schedule
                .queues
                .iter()
                .enumerate()
                .map(|(worker, queue)| {
                    let abort = &abort;
                    s.spawn(move || {
                        let r = this.run_queue(worker, queue, step, abort);
                        if r.is_err() {
                            abort.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("executor worker panicked"))
                .collect()
        });
        if let Some(err) = results.into_iter().find_map(Result::err) {
            return Err(err);
        }
        self.step += 1;
        let mut out = HashMap::new();
        for &name in outputs {
            let v = graph
                .output(name)
                .ok_or_else(|| ExecError::MissingOutput(name.to_string()))?;
            out.insert(name.to_string(), self.load_value(v));
        }
        Ok(out)
    }

    fn run_queue(
        &self,
        worker: usize,
        queue: &[usize],
        step: u32,
        abort: &AtomicBool,
    ) -> Result<(), ExecError> {
        for &t in queue {
            let task = &self.program.tasks[t];
            for &e in &task.waits {
                let expected = self.program.events[e].producers.len() as u32 * (step + 1);
                match self.wait_for_event(e, expected, abort) {
                    Ok(()) => {}
                    Err(WaitFailed::Aborted) => return Ok(()),
                    Err(WaitFailed::TimedOut(observed)) => {
                        return Err(ExecError::StuckWait {
                            worker,
                            task: t,
                            op: self.program.ops[task.op].name.clone(),
                            units: task.units.clone(),
                            event: e,
                            observed,
                            expected,
                            limit: self.wait_limit,
                        });
                    }
                }
            }
            self.run_task(t)?;
            for &e in &task.triggers {
                self.events[e].fetch_add(1, Ordering::Release);
            }
        }
        Ok(())
    }

    /// Waits until event `e` reaches `expected`, within the wait limit.
    fn wait_for_event(
        &self,
        e: usize,
        expected: u32,
        abort: &AtomicBool,
    ) -> Result<(), WaitFailed> {
        let started = Instant::now();
        let mut spins = 0u32;
        loop {
            let seen = self.events[e].load(Ordering::Acquire);
            if seen >= expected {
                return Ok(());
            }
            if abort.load(Ordering::Relaxed) {
                return Err(WaitFailed::Aborted);
            }
            if started.elapsed() > self.wait_limit {
                return Err(WaitFailed::TimedOut(seen));
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }

    /// Runs the members of task `t`'s fused op on its tile, then publishes the exported regions.
    fn run_task(&self, t: usize) -> Result<(), ExecError> {
        let program = &self.program;
        let graph = &program.graph;
        let task = &program.tasks[t];
        let op = &program.ops[task.op];
        let mut local: HashMap<Value, Tensor> = HashMap::new();
        for m in &op.members {
            let idx = NodeIndex::new(m.node);
            let node = graph.node(idx);
            let fop = node.op().expect("fused members are ops");
            let (in_types, out_types) = node_io(graph, idx);
            let io = Io {
                inputs: &in_types,
                outputs: &out_types,
            };
            let Some(units) = m.map.member_units(&task.units, fop.work_units(io)) else {
                continue;
            };
            // Operands: tile-local values, weights, or copies of arena / state values.
            let mut owned: Vec<Option<Tensor>> = Vec::new();
            for v in &node.inputs {
                let in_local = local.contains_key(v);
                let is_weight = matches!(graph.node(v.node).kind, NodeKind::Weight);
                owned.push((!in_local && !is_weight).then(|| self.load_value(*v)));
            }
            // An in-place result starts as its operand (the KV cache), which the op then updates.
            let mut outputs: Vec<Tensor> = out_types.iter().map(Tensor::zeros).collect();
            for &(out, inp) in fop.in_place() {
                let v = &node.inputs[inp];
                outputs[out] = owned[inp].take().unwrap_or_else(|| local[v].clone());
            }
            let placeholder = Tensor::empty();
            let mut operands: Vec<&Tensor> = Vec::new();
            for (slot, v) in node.inputs.iter().enumerate() {
                if fop.in_place().iter().any(|(_, inp)| *inp == slot) {
                    operands.push(&placeholder);
                } else if let Some(t) = &owned[slot] {
                    operands.push(t);
                } else if let Some(t) = local.get(v) {
                    operands.push(t);
                } else {
                    let name = &graph.node(v.node).name;
                    operands.push(
                        self.weights
                            .get(name)
                            .ok_or_else(|| ExecError::MissingWeight(name.clone()))?,
                    );
                }
            }
            fop.reference(&operands, &mut outputs, units.clone());
            let writes = fop.access(io, units).writes;
            for (out, tensor) in outputs.into_iter().enumerate() {
                let v = Value {
                    node: idx,
                    output: out,
                };
                if op.exports.contains(&(m.node, out)) {
                    let loc = self.location(v);
                    for (_, region) in writes.iter().filter(|(o, _)| *o == out) {
                        store(self.buffer(loc), loc.offset, &tensor, region, &tensor.shape);
                    }
                }
                local.insert(v, tensor);
            }
        }
        Ok(())
    }

    /// Where `v` lives; [`ScheduleExecutor::new`] checked that every value a task touches has a place.
    fn location(&self, v: Value) -> Location {
        self.program
            .memory
            .location(v)
            .expect("checked by ScheduleExecutor::new")
    }

    fn buffer(&self, loc: Location) -> &[AtomicU32] {
        match loc.buffer {
            Buffer::Arena => &self.arena,
            Buffer::State => self.state.words(),
        }
    }

    /// A copy of a whole value from its buffer.
    fn load_value(&self, v: Value) -> Tensor {
        let ty: &TensorType = self.program.graph.value_type(v);
        let loc = self.location(v);
        let words = &self.buffer(loc)[loc.offset..loc.offset + loc.len];
        Tensor {
            shape: ty.shape.clone(),
            data: decode_words(ty, words),
        }
    }
}

/// The elements of a value of type `ty` from their words.
fn decode_words(ty: &TensorType, words: &[AtomicU32]) -> TensorData {
    let bits = words.iter().map(|w| w.load(Ordering::Relaxed));
    if ty.dtype.is_int() {
        TensorData::I32(bits.map(|b| b as i32).collect())
    } else {
        TensorData::F32(bits.map(f32::from_bits).collect())
    }
}

fn whole_region(shape: &[usize]) -> Region {
    shape.iter().map(|&d| 0..d).collect()
}

/// Writes the elements of `t` inside `region` to `words[offset..]`.
fn store(words: &[AtomicU32], offset: usize, t: &Tensor, region: &Region, shape: &[usize]) {
    for_each_index(shape, region, |i| {
        let bits = match &t.data {
            TensorData::F32(v) => v[i].to_bits(),
            TensorData::I32(v) => v[i] as u32,
        };
        words[offset + i].store(bits, Ordering::Relaxed);
    });
}

/// Calls `f` with the flat row-major index of every element of `region` in a tensor of `shape`.
fn for_each_index(shape: &[usize], region: &Region, mut f: impl FnMut(usize)) {
    if region.iter().any(|r| r.is_empty()) {
        return;
    }
    let rank = shape.len();
    let mut idx: Vec<usize> = region.iter().map(|r| r.start).collect();
    loop {
        let flat = idx.iter().zip(shape).fold(0, |acc, (i, d)| acc * d + i);
        f(flat);
        // Odometer over the region, last axis fastest.
        let mut axis = rank;
        loop {
            if axis == 0 {
                return;
            }
            axis -= 1;
            idx[axis] += 1;
            if idx[axis] < region[axis].end {
                break;
            }
            idx[axis] = region[axis].start;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mimo_compiler::{CompileOptions, Machine, compile};
    use mimo_ir::formats::WeightFormat;
    use mimo_ir::interp::{self, StateStore};
    use mimo_ir::model::build::{LOGITS, NEXT_IDS, POSITIONS, TOKEN_IDS, decode_graph};
    use mimo_ir::model::random::random_weights;
    use mimo_ir::{Architecture, ModelSpec, WeightFormats};

    fn spec(architecture: Architecture, experts: WeightFormat) -> ModelSpec {
        let tiny = ModelSpec::tiny(architecture);
        ModelSpec {
            formats: WeightFormats {
                experts,
                ..tiny.formats
            },
            ..tiny
        }
    }

    fn step_inputs(token: u32, pos: usize) -> [(&'static str, Tensor); 2] {
        [
            (TOKEN_IDS, Tensor::from_i32([1], vec![token as i32])),
            (POSITIONS, Tensor::from_i32([1], vec![pos as i32])),
        ]
    }

    /// Decodes `tokens` one step at a time on the interpreter and on the executor for several
    /// worker counts; logits must agree closely (split-K attention sums in another order) and the
    /// greedy ids exactly.
    #[test]
    fn executor_matches_the_reference_interpreter() {
        let tokens = [3u32, 91, 77, 5, 59, 12, 64, 8];
        // MiMo-V2: sliding windows of 3 rows (shorter than the 8 steps) with sinks, a third of
        // each head rotated, narrower values, a dense layer and the sigmoid router.
        for (arch, experts) in [
            (Architecture::Qwen3Moe, WeightFormat::F32),
            (Architecture::Mixtral, WeightFormat::Mxfp4),
            (Architecture::MimoV2Flash, WeightFormat::Mxfp4),
        ] {
            let spec = spec(arch, experts);
            let weights = F32Weights::from_store(&random_weights(&spec, 9).unwrap());
            let graph = decode_graph(&spec, 1, 16).unwrap();
            let mut state = StateStore::new();
            let want: Vec<HashMap<String, Tensor>> = tokens
                .iter()
                .enumerate()
                .map(|(p, &t)| {
                    interp::run(&graph, &weights, &mut state, &step_inputs(t, p)).unwrap()
                })
                .collect();
            for workers in [1, 2, 3, 5, 8] {
                let machine = Machine {
                    workers,
                    ..Machine::h100()
                };
                let opts = CompileOptions {
                    min_task_bytes: 512.0,
                    ..CompileOptions::for_machine(machine)
                };
                let program = compile(&graph, &opts).unwrap();
                let mut exec = ScheduleExecutor::new(program, weights.clone()).unwrap();
                for (p, &t) in tokens.iter().enumerate() {
                    let got = exec
                        .run_step(&step_inputs(t, p), &[LOGITS, NEXT_IDS])
                        .unwrap();
                    assert_eq!(
                        got[NEXT_IDS], want[p][NEXT_IDS],
                        "{arch:?} workers {workers} step {p}"
                    );
                    let (g, w) = (got[LOGITS].f32(), want[p][LOGITS].f32());
                    let err = g
                        .iter()
                        .zip(w)
                        .map(|(a, b)| (a - b) * (a - b))
                        .sum::<f32>()
                        .sqrt()
                        / w.iter().map(|b| b * b).sum::<f32>().sqrt();
                    assert!(
                        err < 1e-5,
                        "{arch:?} workers {workers} step {p}: relative error {err}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_missing_event_is_reported_with_its_task() {
        let spec = spec(Architecture::Qwen3Moe, WeightFormat::F32);
        let weights = F32Weights::from_store(&random_weights(&spec, 9).unwrap());
        let graph = decode_graph(&spec, 1, 16).unwrap();
        let machine = Machine {
            workers: 3,
            ..Machine::h100()
        };
        let mut program = compile(&graph, &CompileOptions::for_machine(machine)).unwrap();
        // Sabotage: the first task that triggers anything forgets to.
        let victim = program
            .tasks
            .iter()
            .position(|t| !t.triggers.is_empty())
            .unwrap();
        program.tasks[victim].triggers.clear();
        let mut exec = ScheduleExecutor::new(program, weights).unwrap();
        exec.wait_limit = Duration::from_millis(300);
        let err = exec.run_step(&step_inputs(1, 0), &[LOGITS]).unwrap_err();
        let ExecError::StuckWait {
            observed, expected, ..
        } = &err
        else {
            panic!("{err}")
        };
        assert!(observed < expected, "{err}");
        assert!(err.to_string().contains("waited more than"), "{err}");
    }
}
