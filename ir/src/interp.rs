//! The reference interpreter: runs any graph on the CPU in f32, the oracle for every backend.
//!
//! Weights are dequantised once to f32 ([`F32Weights`]), exactly as a kernel reading their stored
//! format sees them. State (the KV caches) lives in a [`StateStore`] shared by every graph of a
//! model, so a prefill graph and a decode graph continue the same sequence. The ops' reference
//! implementations parallelise their own inner loops (rayon), so one step uses every core.

use std::collections::HashMap;
use std::sync::Arc;

use petgraph::graph::NodeIndex;
use rayon::prelude::*;

use crate::graph::{Graph, NodeKind};
use crate::op::Io;
use crate::tensor::Tensor;
use crate::types::TensorType;
use crate::weights::WeightStore;

/// Why a graph could not run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InterpError {
    #[error("missing weight `{0}`")]
    MissingWeight(String),
    #[error("weight `{name}`: the graph expects shape {expected:?}, the store has {found:?}")]
    WeightShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("missing input `{0}`")]
    MissingInput(String),
    #[error("input `{name}`: expected {expected}, got shape {found:?}{kind}", kind = if *.int_mismatch { " of the wrong element type" } else { "" })]
    InputType {
        name: String,
        expected: TensorType,
        found: Vec<usize>,
        int_mismatch: bool,
    },
    #[error("state `{name}`: expected shape {expected:?}, the store has {found:?}")]
    StateShape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
}

/// Every weight of a store, dequantised to f32 once.
#[derive(Debug, Clone, Default)]
pub struct F32Weights {
    map: HashMap<String, Arc<Tensor>>,
}

impl F32Weights {
    pub fn from_store(store: &WeightStore) -> Self {
        let items: Vec<(&str, &crate::weights::Weight)> = store.iter().collect();
        let map = items
            .par_iter()
            .map(|(name, w)| {
                (
                    name.to_string(),
                    Arc::new(Tensor::from_f32(w.shape.clone(), w.to_f32())),
                )
            })
            .collect();
        F32Weights { map }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Tensor>> {
        self.map.get(name)
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: Tensor) {
        self.map.insert(name.into(), Arc::new(tensor));
    }
}

/// Values that persist across steps (KV caches), by state-node name; zero until first written.
#[derive(Debug, Clone, Default)]
pub struct StateStore {
    map: HashMap<String, Tensor>,
}

impl StateStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }
    /// Forgets every value: the next step starts from zero state.
    pub fn clear(&mut self) {
        self.map.clear();
    }
}

/// A value slot while the graph runs: computed results, or a shared weight.
enum Slot {
    Empty,
    Owned(Vec<Tensor>),
    Weight(Arc<Tensor>),
}

impl Slot {
    fn get(&self, output: usize) -> &Tensor {
        match self {
            Slot::Owned(v) => &v[output],
            Slot::Weight(w) => w,
            Slot::Empty => {
                unreachable!("topological order computes operands before their consumers")
            }
        }
    }
}

/// Runs `graph` once: reads `inputs` by input-node name, updates `state` in place, and returns the
/// graph's named outputs.
pub fn run(
    graph: &Graph,
    weights: &F32Weights,
    state: &mut StateStore,
    inputs: &[(&str, Tensor)],
) -> Result<HashMap<String, Tensor>, InterpError> {
    let mut slots: Vec<Slot> = (0..graph.node_count()).map(|_| Slot::Empty).collect();
    // Consumers left per node, so intermediates are freed as soon as nothing needs them.
    let mut uses: Vec<usize> = (0..graph.node_count())
        .map(|i| graph.consumers(NodeIndex::new(i)).count())
        .collect();
    for (_, v) in graph.outputs() {
        uses[v.node.index()] += 1;
    }
    // Results that replace a state value in place: (op node, result, state name). They are kept
    // alive to the end so the store can take them back.
    let mut state_results: Vec<(NodeIndex, usize, String)> = Vec::new();
    for (idx, node) in graph.nodes() {
        for &(out, inp) in node.op().map_or(&[][..], |op| op.in_place()) {
            let src = graph.node(node.inputs[inp].node);
            if matches!(src.kind, NodeKind::State) {
                state_results.push((idx, out, src.name.clone()));
                uses[idx.index()] += 1;
            }
        }
    }

    for &idx in graph.topo_order() {
        let node = graph.node(idx);
        let ty = &node.outputs[0];
        let slot = match &node.kind {
            NodeKind::Input => {
                let (_, t) = inputs
                    .iter()
                    .find(|(n, _)| *n == node.name)
                    .ok_or_else(|| InterpError::MissingInput(node.name.clone()))?;
                if t.shape != ty.shape || t.is_i32() != ty.dtype.is_int() {
                    return Err(InterpError::InputType {
                        name: node.name.clone(),
                        expected: ty.clone(),
                        found: t.shape.clone(),
                        int_mismatch: t.is_i32() != ty.dtype.is_int(),
                    });
                }
                Slot::Owned(vec![t.clone()])
            }
            NodeKind::Weight => {
                let w = weights
                    .get(&node.name)
                    .ok_or_else(|| InterpError::MissingWeight(node.name.clone()))?;
                if w.shape != ty.shape {
                    return Err(InterpError::WeightShape {
                        name: node.name.clone(),
                        expected: ty.shape.clone(),
                        found: w.shape.clone(),
                    });
                }
                Slot::Weight(w.clone())
            }
            NodeKind::State => {
                let t = state
                    .map
                    .remove(&node.name)
                    .unwrap_or_else(|| Tensor::zeros(ty));
                if t.shape != ty.shape {
                    return Err(InterpError::StateShape {
                        name: node.name.clone(),
                        expected: ty.shape.clone(),
                        found: t.shape.clone(),
                    });
                }
                Slot::Owned(vec![t])
            }
            NodeKind::Op(op) => {
                let mut outputs: Vec<Tensor> = node.outputs.iter().map(Tensor::zeros).collect();
                let mut moved: Vec<(usize, Tensor)> = Vec::new();
                for &(out, inp) in op.in_place() {
                    let src = node.inputs[inp];
                    if let Slot::Owned(values) = &mut slots[src.node.index()] {
                        outputs[out] = std::mem::replace(&mut values[src.output], Tensor::empty());
                        moved.push((inp, Tensor::empty()));
                    }
                }
                let operands: Vec<&Tensor> = node
                    .inputs
                    .iter()
                    .enumerate()
                    .map(|(slot, v)| match moved.iter().find(|(i, _)| *i == slot) {
                        Some((_, placeholder)) => placeholder,
                        None => slots[v.node.index()].get(v.output),
                    })
                    .collect();
                let input_types = graph.operand_types(idx);
                let io = Io {
                    inputs: &input_types,
                    outputs: &node.outputs,
                };
                op.reference(&operands, &mut outputs, 0..op.work_units(io));
                Slot::Owned(outputs)
            }
        };
        slots[idx.index()] = slot;
        for v in &node.inputs {
            let n = v.node.index();
            uses[n] -= 1;
            if uses[n] == 0 {
                slots[n] = Slot::Empty;
            }
        }
    }

    let mut results = HashMap::new();
    for (name, v) in graph.outputs() {
        results.insert(name.clone(), slots[v.node.index()].get(v.output).clone());
    }
    for (node, out, name) in state_results {
        if let Slot::Owned(values) = &mut slots[node.index()] {
            state
                .map
                .insert(name, std::mem::replace(&mut values[out], Tensor::empty()));
        }
    }
    Ok(results)
}
