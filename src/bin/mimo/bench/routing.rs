//! Which experts a verified block routes to, computed on the host: the reference interpreter runs
//! the target's step graph, cut after its last decoder layer and with every layer's router top-k
//! ids as outputs, over a short context and then each block.
//!
//! The engines are left alone: the routing is a property of the model and the block, the same on
//! every device (up to ties in the router's logits).

use anyhow::{Context, Result, bail};
use mimo_ir::interp::{self, F32Weights, StateStore};
use mimo_ir::model::build::{POSITIONS, TOKEN_IDS, decode_graph};
use mimo_ir::model::names;
use mimo_ir::ops::RouterTopK;
use mimo_ir::weights::WeightStore;
use mimo_ir::{Graph, ModelSpec, Tensor};
use serde_json::Value;

/// The f32 weights the probe may convert by default.
const DEFAULT_BUDGET_BYTES: f64 = 8.0 * (1u64 << 30) as f64;

/// The target's first `layers` layers on the reference interpreter, with a cache of `context`
/// positions filled before any block is routed.
pub struct RoutingProbe {
    spec: ModelSpec,
    weights: F32Weights,
    state: StateStore,
    context: usize,
    max_context: usize,
}

/// How many layers' routing fits the default budget of f32 weights (at least one).
pub fn default_layers(spec: &ModelSpec) -> usize {
    let per_layer: f64 = {
        let one = ModelSpec {
            num_layers: 1,
            ..spec.clone()
        };
        names::all_weights(&one)
            .iter()
            .filter(|(n, _, _)| n.starts_with("layers."))
            .map(|(_, s, _)| s.iter().product::<usize>() as f64 * 4.0)
            .sum()
    };
    let embed = (spec.vocab_size * spec.hidden_size) as f64 * 4.0;
    let fit = ((DEFAULT_BUDGET_BYTES - embed) / per_layer.max(1.0)).floor();
    (fit.max(1.0) as usize).min(spec.num_layers)
}

impl RoutingProbe {
    /// A probe of `layers` layers of `spec` over `weights` (the target's), routing blocks of up
    /// to `max_block` tokens after `context` cached positions of `fill` tokens.
    pub fn new(
        spec: &ModelSpec,
        weights: &WeightStore,
        layers: usize,
        context: usize,
        max_block: usize,
    ) -> Result<RoutingProbe> {
        if layers == 0 || layers > spec.num_layers {
            bail!("--route-layers must be in 1..={}", spec.num_layers);
        }
        let spec = ModelSpec {
            num_layers: layers,
            ..spec.clone()
        };
        let mut store = WeightStore::new();
        for (name, _, _) in names::all_weights(&spec) {
            if name == names::LM_HEAD || name == names::FINAL_NORM {
                continue;
            }
            let w = weights
                .get(&name)
                .with_context(|| format!("routing probe: no weight `{name}`"))?;
            store.insert(name, w.clone());
        }
        let weights = F32Weights::from_store(&store);
        Ok(RoutingProbe {
            spec,
            weights,
            state: StateStore::new(),
            context,
            max_context: context + max_block,
        })
    }

    pub fn layers(&self) -> usize {
        self.spec.num_layers
    }

    pub fn context(&self) -> usize {
        self.context
    }

    /// The step graph of `tokens` tokens up to the last layer's MoE block, its outputs
    /// `route.L`: layer L's top-k expert ids, i32 [tokens, k].
    fn graph(&self, tokens: usize) -> Result<Graph> {
        let full = decode_graph(&self.spec, tokens, self.max_context)
            .map_err(|e| anyhow::anyhow!("building the routing graph: {e}"))?;
        let mut doc = full.to_json();
        // The final norm and the lm_head come after every layer (nodes are in insertion order):
        // cut there, so the probe never multiplies by the lm_head.
        let nodes = doc["nodes"].as_array_mut().context("graph JSON: nodes")?;
        let cut = nodes
            .iter()
            .position(|n| n["name"] == names::FINAL_NORM)
            .context("graph JSON: no final norm")?;
        nodes.truncate(cut);
        let mut outputs = serde_json::Map::new();
        for l in 0..self.spec.num_layers {
            let name = format!("layers.{l}.route");
            let id = nodes
                .iter()
                .position(|n| n["name"] == name.as_str())
                .with_context(|| format!("graph JSON: no node `{name}`"))?;
            outputs.insert(
                format!("route.{l}"),
                Value::from(vec![id as u64, RouterTopK::IDS as u64]),
            );
        }
        doc["outputs"] = Value::Object(outputs);
        Graph::from_json(&doc).map_err(|e| anyhow::anyhow!("the routing graph: {e}"))
    }

    fn run(&mut self, tokens: &[u32], start: usize) -> Result<Vec<Vec<i32>>> {
        let n = tokens.len();
        let graph = self.graph(n)?;
        let inputs = [
            (
                TOKEN_IDS,
                Tensor::from_i32([n], tokens.iter().map(|&t| t as i32).collect()),
            ),
            (
                POSITIONS,
                Tensor::from_i32([n], (start..start + n).map(|p| p as i32).collect()),
            ),
        ];
        let out = interp::run(&graph, &self.weights, &mut self.state, &inputs)?;
        (0..self.spec.num_layers)
            .map(|l| {
                out.get(&format!("route.{l}"))
                    .map(|t| t.i32().to_vec())
                    .with_context(|| format!("the routing graph has no output route.{l}"))
            })
            .collect()
    }

    /// Fills the probe's cache with `tokens` (exactly its context).
    pub fn fill(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.len() != self.context {
            bail!(
                "routing probe: {} context tokens, expected {}",
                tokens.len(),
                self.context
            );
        }
        if !tokens.is_empty() {
            self.run(tokens, 0)?;
        }
        Ok(())
    }

    /// The number of distinct experts each probed layer routes `block` to.
    pub fn distinct_experts(&mut self, block: &[u32]) -> Result<Vec<usize>> {
        let ids = self.run(block, self.context)?;
        Ok(ids
            .iter()
            .map(|layer| {
                let mut seen = vec![false; self.spec.num_experts];
                for &e in layer {
                    if let Some(s) = seen.get_mut(e as usize) {
                        *s = true;
                    }
                }
                seen.iter().filter(|&&s| s).count()
            })
            .collect())
    }
}

/// Expected distinct experts of `tokens` tokens each routed to `k` of `experts` uniformly at
/// random: `E * (1 - (1 - k/E)^B)`.
pub fn uniform_expected(experts: usize, k: usize, tokens: usize) -> f64 {
    let e = experts as f64;
    e * (1.0 - (1.0 - k as f64 / e).powi(tokens as i32))
}
