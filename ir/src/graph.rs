//! The IR graph: a DAG (on petgraph) of inputs, weights, state and ops.
//!
//! Every node produces one or more values; an op node consumes values of earlier nodes. Edges run
//! from producer to consumer, weighted by the consumer's operand slot. The graph is built through
//! [`GraphBuilder`], which infers every op's result types as it goes, so a badly wired model fails
//! at the node that is wrong, with that node's name in the message.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use petgraph::Direction;
use petgraph::algo::toposort;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use serde_json::{Value as Json, json};

use crate::op::{Op, op_from_json};
use crate::types::TensorType;

/// What a node is.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// A value supplied by the caller at every step (token ids, positions).
    Input,
    /// A model parameter, resolved by name in the weight store.
    Weight,
    /// A value that persists across steps, zero at the start (a KV cache).
    State,
    /// An op applied to earlier values.
    Op(Arc<dyn Op>),
}

impl NodeKind {
    fn label(&self) -> &'static str {
        match self {
            NodeKind::Input => "input",
            NodeKind::Weight => "weight",
            NodeKind::State => "state",
            NodeKind::Op(_) => "op",
        }
    }
}

/// One node: its unique name, what it is, its operands and its result types.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    pub inputs: Vec<Value>,
    pub outputs: Vec<TensorType>,
}

impl Node {
    pub fn op(&self) -> Option<&Arc<dyn Op>> {
        match &self.kind {
            NodeKind::Op(op) => Some(op),
            _ => None,
        }
    }
}

/// A value: result `output` of node `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Value {
    pub node: NodeIndex,
    pub output: usize,
}

/// A graph error, naming the node it is about.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("node `{node}`: {message}")]
pub struct GraphError {
    pub node: String,
    pub message: String,
}

impl GraphError {
    fn new(node: impl Into<String>, message: impl Into<String>) -> Self {
        GraphError {
            node: node.into(),
            message: message.into(),
        }
    }
}

/// A validated IR graph.
#[derive(Debug, Clone)]
pub struct Graph {
    pub name: String,
    dag: DiGraph<Node, usize>,
    /// Named results of the graph (`logits`, `next_ids`, ...).
    outputs: Vec<(String, Value)>,
    /// Node indices in a topological order (operands before consumers).
    order: Vec<NodeIndex>,
}

impl Graph {
    pub fn node(&self, idx: NodeIndex) -> &Node {
        &self.dag[idx]
    }

    /// Nodes in a topological order.
    pub fn topo_order(&self) -> &[NodeIndex] {
        &self.order
    }

    pub fn node_count(&self) -> usize {
        self.dag.node_count()
    }

    /// All nodes with their indices, in insertion order.
    pub fn nodes(&self) -> impl Iterator<Item = (NodeIndex, &Node)> {
        self.dag.node_indices().map(|i| (i, &self.dag[i]))
    }

    pub fn outputs(&self) -> &[(String, Value)] {
        &self.outputs
    }

    pub fn output(&self, name: &str) -> Option<Value> {
        self.outputs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| *v)
    }

    pub fn value_type(&self, v: Value) -> &TensorType {
        &self.dag[v.node].outputs[v.output]
    }

    /// The types of node `n`'s operands, in operand order (what an op's `Io` takes as inputs).
    pub fn operand_types(&self, n: NodeIndex) -> Vec<TensorType> {
        self.dag[n]
            .inputs
            .iter()
            .map(|v| self.value_type(*v).clone())
            .collect()
    }

    pub fn find(&self, name: &str) -> Option<NodeIndex> {
        self.dag.node_indices().find(|&i| self.dag[i].name == name)
    }

    /// Nodes that consume any result of `idx`, with the operand slot.
    pub fn consumers(&self, idx: NodeIndex) -> impl Iterator<Item = (NodeIndex, usize)> + '_ {
        self.dag
            .edges_directed(idx, Direction::Outgoing)
            .map(|e| (e.target(), *e.weight()))
    }

    /// Nodes of one kind (`Input`, `Weight`, `State`), in insertion order.
    pub fn nodes_of(
        &self,
        kind: fn(&NodeKind) -> bool,
    ) -> impl Iterator<Item = (NodeIndex, &Node)> {
        self.nodes().filter(move |(_, n)| kind(&n.kind))
    }

    /// The graph as JSON: every node with its kind, op and attributes, operands and result types.
    pub fn to_json(&self) -> Json {
        let nodes: Vec<Json> = self
            .dag
            .node_indices()
            .map(|i| {
                let n = &self.dag[i];
                let mut obj = json!({
                    "id": i.index(),
                    "name": n.name,
                    "kind": n.kind.label(),
                    "outputs": n.outputs,
                });
                if let NodeKind::Op(op) = &n.kind {
                    obj["op"] = json!(op.name());
                    obj["attrs"] = op.attrs();
                    obj["inputs"] = n
                        .inputs
                        .iter()
                        .map(|v| json!([v.node.index(), v.output]))
                        .collect();
                }
                obj
            })
            .collect();
        let outputs: serde_json::Map<String, Json> = self
            .outputs
            .iter()
            .map(|(name, v)| (name.clone(), json!([v.node.index(), v.output])))
            .collect();
        json!({ "name": self.name, "nodes": nodes, "outputs": outputs })
    }

    /// Rebuilds a graph from [`Graph::to_json`], re-inferring and re-validating every op.
    pub fn from_json(doc: &Json) -> Result<Graph, GraphError> {
        let bad = |what: &str| GraphError::new("<json>", what.to_string());
        let name = doc["name"]
            .as_str()
            .ok_or_else(|| bad("missing graph `name`"))?;
        let mut b = GraphBuilder::new(name);
        let mut ids: HashMap<u64, NodeIndex> = HashMap::new();
        for node in doc["nodes"]
            .as_array()
            .ok_or_else(|| bad("missing `nodes` array"))?
        {
            let node_name = node["name"]
                .as_str()
                .ok_or_else(|| bad("a node has no `name`"))?;
            let err = |m: String| GraphError::new(node_name, m);
            let id = node["id"]
                .as_u64()
                .ok_or_else(|| err("missing `id`".into()))?;
            // Ids are positions: schedules and plans refer to nodes by index.
            if id as usize != ids.len() {
                return Err(err(format!(
                    "node ids must be 0, 1, 2, ... in order; found {id} at {}",
                    ids.len()
                )));
            }
            let outputs: Vec<TensorType> = serde_json::from_value(node["outputs"].clone())
                .map_err(|e| err(format!("bad `outputs`: {e}")))?;
            let kind = node["kind"].as_str().unwrap_or_default();
            let values = match kind {
                "input" | "weight" | "state" => {
                    let [ty] = <[TensorType; 1]>::try_from(outputs)
                        .map_err(|_| err(format!("a {kind} node has exactly one output")))?;
                    vec![match kind {
                        "input" => b.input(node_name, ty)?,
                        "weight" => b.weight(node_name, ty)?,
                        _ => b.state(node_name, ty)?,
                    }]
                }
                "op" => {
                    let op_name = node["op"]
                        .as_str()
                        .ok_or_else(|| err("missing `op`".into()))?;
                    let op = op_from_json(op_name, &node["attrs"]).map_err(err)?;
                    let mut inputs = Vec::new();
                    for v in node["inputs"]
                        .as_array()
                        .ok_or_else(|| err("missing `inputs`".into()))?
                    {
                        let (src, out) = (v[0].as_u64(), v[1].as_u64());
                        let src = src
                            .and_then(|s| ids.get(&s))
                            .ok_or_else(|| err(format!("operand {v} names no earlier node")))?;
                        inputs.push(Value {
                            node: *src,
                            output: out.unwrap_or(u64::MAX) as usize,
                        });
                    }
                    let values = b.op_arc(node_name, op, &inputs)?;
                    let inferred: Vec<&TensorType> =
                        values.iter().map(|v| b.value_type(*v)).collect();
                    if inferred.iter().copied().ne(outputs.iter()) {
                        return Err(err(format!(
                            "recorded outputs {outputs:?} differ from inferred {inferred:?}"
                        )));
                    }
                    values
                }
                other => return Err(err(format!("unknown node kind `{other}`"))),
            };
            ids.insert(id, values[0].node);
        }
        for (out_name, v) in doc["outputs"]
            .as_object()
            .ok_or_else(|| bad("missing `outputs` object"))?
        {
            let src = v[0]
                .as_u64()
                .and_then(|s| ids.get(&s))
                .ok_or_else(|| bad("graph output names no node"))?;
            let output = v[1].as_u64().unwrap_or(u64::MAX) as usize;
            b.output(out_name, Value { node: *src, output })?;
        }
        b.finish()
    }
}

/// Builds a [`Graph`], checking every op as it is added.
pub struct GraphBuilder {
    name: String,
    dag: DiGraph<Node, usize>,
    names: HashSet<String>,
    outputs: Vec<(String, Value)>,
}

impl GraphBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        GraphBuilder {
            name: name.into(),
            dag: DiGraph::new(),
            names: HashSet::new(),
            outputs: Vec::new(),
        }
    }

    pub fn input(&mut self, name: &str, ty: TensorType) -> Result<Value, GraphError> {
        self.leaf(name, NodeKind::Input, ty)
    }

    pub fn weight(&mut self, name: &str, ty: TensorType) -> Result<Value, GraphError> {
        self.leaf(name, NodeKind::Weight, ty)
    }

    pub fn state(&mut self, name: &str, ty: TensorType) -> Result<Value, GraphError> {
        self.leaf(name, NodeKind::State, ty)
    }

    fn leaf(&mut self, name: &str, kind: NodeKind, ty: TensorType) -> Result<Value, GraphError> {
        let node = self.add(Node {
            name: name.into(),
            kind,
            inputs: vec![],
            outputs: vec![ty],
        })?;
        Ok(Value { node, output: 0 })
    }

    /// Adds `op` applied to `inputs`; returns its results.
    pub fn op(
        &mut self,
        name: &str,
        op: impl Op,
        inputs: &[Value],
    ) -> Result<Vec<Value>, GraphError> {
        self.op_arc(name, Arc::new(op), inputs)
    }

    /// Adds an op with a single result; returns it.
    pub fn op1(&mut self, name: &str, op: impl Op, inputs: &[Value]) -> Result<Value, GraphError> {
        let values = self.op(name, op, inputs)?;
        match values[..] {
            [v] => Ok(v),
            _ => Err(GraphError::new(
                name,
                format!("expected one result, the op has {}", values.len()),
            )),
        }
    }

    pub fn op_arc(
        &mut self,
        name: &str,
        op: Arc<dyn Op>,
        inputs: &[Value],
    ) -> Result<Vec<Value>, GraphError> {
        let mut types = Vec::with_capacity(inputs.len());
        for (slot, v) in inputs.iter().enumerate() {
            let producer = self.dag.node_weight(v.node).ok_or_else(|| {
                GraphError::new(
                    name,
                    format!("operand {slot} refers to a node that does not exist"),
                )
            })?;
            let ty = producer.outputs.get(v.output).ok_or_else(|| {
                GraphError::new(
                    name,
                    format!(
                        "operand {slot}: node `{}` has no result {}",
                        producer.name, v.output
                    ),
                )
            })?;
            types.push(ty.clone());
        }
        let outputs = op
            .infer(&types)
            .map_err(|m| GraphError::new(name, format!("{}: {m}", op.name())))?;
        if outputs.len() != op.output_names().len() {
            return Err(GraphError::new(
                name,
                format!(
                    "{} inferred {} results, declares {}",
                    op.name(),
                    outputs.len(),
                    op.output_names().len()
                ),
            ));
        }
        let n = outputs.len();
        let node = self.add(Node {
            name: name.into(),
            kind: NodeKind::Op(op),
            inputs: inputs.to_vec(),
            outputs,
        })?;
        for (slot, v) in inputs.iter().enumerate() {
            self.dag.add_edge(v.node, node, slot);
        }
        Ok((0..n).map(|output| Value { node, output }).collect())
    }

    fn add(&mut self, node: Node) -> Result<NodeIndex, GraphError> {
        if !self.names.insert(node.name.clone()) {
            return Err(GraphError::new(
                &node.name,
                "a node of this name already exists",
            ));
        }
        Ok(self.dag.add_node(node))
    }

    pub fn value_type(&self, v: Value) -> &TensorType {
        &self.dag[v.node].outputs[v.output]
    }

    /// Marks `v` as a named result of the graph.
    pub fn output(&mut self, name: &str, v: Value) -> Result<(), GraphError> {
        let node = self.dag.node_weight(v.node).ok_or_else(|| {
            GraphError::new(name, "graph output refers to a node that does not exist")
        })?;
        if v.output >= node.outputs.len() {
            return Err(GraphError::new(
                &node.name,
                format!("graph output `{name}`: no result {}", v.output),
            ));
        }
        if self.outputs.iter().any(|(n, _)| n == name) {
            return Err(GraphError::new(
                &node.name,
                format!("graph output `{name}` declared twice"),
            ));
        }
        self.outputs.push((name.to_string(), v));
        Ok(())
    }

    /// Validates and returns the graph.
    pub fn finish(self) -> Result<Graph, GraphError> {
        let order = toposort(&self.dag, None).map_err(|cycle| {
            GraphError::new(
                &self.dag[cycle.node_id()].name,
                "the graph has a cycle through this node",
            )
        })?;
        let graph = Graph {
            name: self.name,
            dag: self.dag,
            outputs: self.outputs,
            order,
        };
        validate_in_place(&graph)?;
        Ok(graph)
    }
}

/// A value an op updates in place must be state, consumed by that op alone, with the same type as
/// the result that replaces it; otherwise another reader could see it half-updated.
fn validate_in_place(graph: &Graph) -> Result<(), GraphError> {
    for (idx, node) in graph.nodes() {
        let Some(op) = node.op() else { continue };
        for &(out, inp) in op.in_place() {
            let v = node.inputs[inp];
            let src = graph.node(v.node);
            if !matches!(src.kind, NodeKind::State) {
                return Err(GraphError::new(
                    &node.name,
                    format!(
                        "operand `{}` is updated in place but `{}` is not state",
                        op.input_names()[inp],
                        src.name
                    ),
                ));
            }
            if graph.consumers(v.node).any(|(c, _)| c != idx) {
                return Err(GraphError::new(
                    &node.name,
                    format!(
                        "state `{}` is updated in place here but also read elsewhere",
                        src.name
                    ),
                ));
            }
            if graph.value_type(v) != &node.outputs[out] {
                return Err(GraphError::new(
                    &node.name,
                    "an in-place result must keep its operand's type",
                ));
            }
        }
    }
    Ok(())
}

impl fmt::Display for Graph {
    /// One line per node, in topological order: `name = op(operands) -> types`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "graph {} ({} nodes)", self.name, self.node_count())?;
        for &i in &self.order {
            let n = &self.dag[i];
            let outs: Vec<String> = n.outputs.iter().map(ToString::to_string).collect();
            match &n.kind {
                NodeKind::Op(op) => {
                    let ins: Vec<&str> = n
                        .inputs
                        .iter()
                        .map(|v| self.dag[v.node].name.as_str())
                        .collect();
                    writeln!(
                        f,
                        "  {} = {}({}) -> {}",
                        n.name,
                        op.name(),
                        ins.join(", "),
                        outs.join(", ")
                    )?;
                }
                kind => writeln!(f, "  {} : {} {}", n.name, kind.label(), outs.join(", "))?,
            }
        }
        Ok(())
    }
}
