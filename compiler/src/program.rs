//! A compiled program: the rewritten graph, its fused ops, tasks, events, queues and memory plan.
//! This is what an artifact stores (as JSON) and what every backend executes.

use mimo_ir::Graph;
use mimo_ir::graph::{GraphError, NodeKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::fuse::{self, FuseError, FusedOp, RewriteOptions};
use crate::plan::{self, Event, MemoryPlan, Task, TileOptions};
use crate::schedule::{self, Machine, Schedule};

/// Knobs of the compilation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CompileOptions {
    pub machine: Machine,
    /// Parts each KV head's context is split into; default: enough to give every worker work.
    pub attention_splits: Option<usize>,
    /// Smallest task worth scheduling, bytes.
    pub min_task_bytes: f64,
}

impl CompileOptions {
    pub fn for_machine(machine: Machine) -> Self {
        CompileOptions {
            machine,
            attention_splits: None,
            min_task_bytes: 32.0 * 1024.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error(transparent)]
    Graph(#[from] GraphError),
    #[error(transparent)]
    Fuse(#[from] FuseError),
    #[error("the planned tasks wait on each other in a cycle (a compiler bug)")]
    Cycle,
    #[error("malformed program JSON: {0}")]
    Json(String),
}

/// The compiled form of one graph.
#[derive(Debug, Clone)]
pub struct Program {
    pub graph: Graph,
    pub ops: Vec<FusedOp>,
    pub tasks: Vec<Task>,
    pub events: Vec<Event>,
    pub schedule: Schedule,
    pub memory: MemoryPlan,
    pub machine: Machine,
}

/// The serialisable part of a program (everything but the graph).
#[derive(Serialize, Deserialize)]
struct Parts {
    machine: Machine,
    ops: Vec<FusedOp>,
    tasks: Vec<Task>,
    events: Vec<Event>,
    schedule: Schedule,
    memory: MemoryPlan,
}

/// Compiles `graph` (a decode or verify graph from the model builders).
pub fn compile(graph: &Graph, opts: &CompileOptions) -> Result<Program, CompileError> {
    let workers = opts.machine.workers.max(1);
    let rewrite = RewriteOptions {
        attention_splits: opts
            .attention_splits
            .unwrap_or_else(|| default_splits(graph, workers)),
        argmax_chunk: default_argmax_chunk(graph, workers),
    };
    let graph = fuse::rewrite(graph, rewrite)?;
    let ops = fuse::fuse(&graph)?;
    let tile = TileOptions {
        workers,
        min_task_bytes: opts.min_task_bytes,
    };
    let (tasks, events) = plan::plan_tasks(&graph, &ops, tile);
    let schedule = schedule::schedule(&tasks, &events, &opts.machine).ok_or(CompileError::Cycle)?;
    let memory = plan::plan_memory(&graph, &ops);
    Ok(Program {
        graph,
        ops,
        tasks,
        events,
        schedule,
        memory,
        machine: opts.machine,
    })
}

/// Splits so that all KV heads' attention tiles give a quarter of the workers work: more splits
/// shorten the attention tiles but make every output-projection tile merge more partial results.
fn default_splits(graph: &Graph, workers: usize) -> usize {
    let kv_heads = graph
        .nodes_of(|k| matches!(k, NodeKind::State))
        .map(|(_, n)| n.outputs[0].shape[1])
        .next()
        .unwrap_or(1);
    (workers / (4 * kv_heads)).clamp(1, 32)
}

/// Vocabulary chunk per lm_head tile: the vocabulary over the workers, a multiple of 16 (one
/// tensor-core tile of rows), and at most half the vocabulary where that leaves a whole tile
/// (half the vocabulary, whatever its size, under 32 tokens): the per-chunk argmax joins the
/// lm_head as its epilogue only while it leaves the lm_head at least two tiles (see
/// `fuse::try_epilogue`), so a single chunk (one worker, or a vocabulary smaller than the
/// workers' share) would leave it without a device function.
fn default_argmax_chunk(graph: &Graph, workers: usize) -> usize {
    let vocab = graph
        .output("logits")
        .map(|v| graph.value_type(v).last_dim())
        .unwrap_or(1);
    let per_worker = vocab.div_ceil(workers).div_ceil(16) * 16;
    let half = (vocab / 2) / 16 * 16;
    if half >= 16 {
        per_worker.min(half)
    } else {
        // Under 32 tokens: chunks of half the vocabulary, so there are still two to fuse.
        (vocab / 2).max(1)
    }
}

impl Program {
    pub fn to_json(&self) -> Json {
        let parts = Parts {
            machine: self.machine,
            ops: self.ops.clone(),
            tasks: self.tasks.clone(),
            events: self.events.clone(),
            schedule: self.schedule.clone(),
            memory: self.memory.clone(),
        };
        json!({ "graph": self.graph.to_json(), "program": parts })
    }

    pub fn from_json(doc: &Json) -> Result<Program, CompileError> {
        let graph = Graph::from_json(&doc["graph"])?;
        let p: Parts = serde_json::from_value(doc["program"].clone())
            .map_err(|e| CompileError::Json(e.to_string()))?;
        Ok(Program {
            graph,
            ops: p.ops,
            tasks: p.tasks,
            events: p.events,
            schedule: p.schedule,
            memory: p.memory,
            machine: p.machine,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mimo_ir::ModelSpec;
    use mimo_ir::model::decode_graph;

    /// Found by the emulator's fixture test: mixtral_c (vocabulary 288) on one worker had its
    /// argmax in a group of its own, which no template implements.
    #[test]
    fn the_argmax_fuses_into_the_lm_head_for_any_vocabulary_and_worker_count() {
        for vocab in [2, 15, 16, 17, 24, 31, 32, 97, 288, 300, 320, 384, 1000] {
            for workers in [1, 2, 7, 32, 132] {
                let spec = ModelSpec {
                    vocab_size: vocab,
                    ..ModelSpec::tiny(mimo_ir::Architecture::Mixtral)
                };
                let graph = decode_graph(&spec, 1, 64).unwrap();
                let mut machine = Machine::h100();
                machine.workers = workers;
                let p = compile(&graph, &CompileOptions::for_machine(machine)).unwrap();
                crate::abi::encode(&p)
                    .unwrap_or_else(|e| panic!("vocab {vocab}, {workers} workers: {e}"));
            }
        }
    }

    #[test]
    fn full_qwen3_30b_compiles_into_a_balanced_program() {
        let started = std::time::Instant::now();
        let graph = decode_graph(&ModelSpec::qwen3_30b_a3b(), 1, 4096).unwrap();
        let p = compile(&graph, &CompileOptions::for_machine(Machine::h100())).unwrap();
        eprintln!(
            "qwen3-30b: {} ops, {} tasks, {} events, makespan {:.1} us, {:.2} s",
            p.ops.len(),
            p.tasks.len(),
            p.events.len(),
            p.schedule.makespan_us,
            started.elapsed().as_secs_f64()
        );
        assert_eq!(p.ops.len(), 1 + 48 * 7 + 2);
        assert!(
            p.ops
                .iter()
                .all(|o| o.kind != crate::fuse::FusedKind::Generic)
        );
        assert_eq!(p.schedule.queues.len(), 132);
        // Every worker has work: the tiling spreads each layer's weights over the machine.
        assert!(p.schedule.queues.iter().all(|q| !q.is_empty()));
    }
}
