//! The engine boundary: one decode step over a batch of tokens at given positions.
//!
//! Implementations: [`CpuEngine`] (the reference interpreter, here) and [`ProgramEngine`], a
//! model's compiled programs in a [`ProgramCache`]: [`ScheduleEngine`] on the CPU schedule
//! executor, [`crate::cuda::CudaEngine`] on a GPU. Everything above this trait (generation,
//! speculative decoding, the server) is shared.

mod cache;
mod program;
mod schedule;

pub use cache::{Backend, ProgramCache};
pub use program::{ProgramEngine, ProgramRun, TargetProgram, committed_rows, token_id};
pub use schedule::ScheduleEngine;

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mimo_ir::interp::{self, F32Weights, StateStore};
use mimo_ir::model::build::{
    DecodeOptions, FEATURES, LOGITS, NEXT_IDS, POSITIONS, TOKEN_IDS, decode_graph_with,
};
use mimo_ir::{Graph, ModelSpec, Tensor, TensorData};

/// What one step returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StepOutput {
    /// Logits [tokens, vocab], row-major, when asked for.
    pub logits: Option<Vec<f32>>,
    /// The greedy (argmax) next token after each input token.
    pub next_ids: Vec<u32>,
    /// With capture layers set ([`Engine::set_capture_layers`]): the hidden states of those
    /// layers after each input token, [tokens, layers * hidden] row-major, the layers side by
    /// side in the order given. DFlash drafts from them.
    pub features: Option<Vec<f32>>,
}

/// A drafted block verified where the step ran ([`Engine::verify_greedy`]): only the acceptance
/// and the committed rows come back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Verified {
    /// Drafts accepted: the block's tokens `1..=accepted` equal the target's greedy choices.
    pub accepted: usize,
    /// The target's greedy tokens after block rows `0..=accepted`: the accepted drafts, then the
    /// bonus token.
    pub committed: Vec<u32>,
    /// With capture layers set: the features of the committed rows, [accepted + 1, width].
    pub features: Option<Vec<f32>>,
    /// When asked for: the logits of the committed rows, [accepted + 1, vocab].
    pub logits: Option<Vec<f32>>,
}

/// One model's decode step on some device, with its KV cache.
pub trait Engine: Send {
    fn spec(&self) -> &ModelSpec;
    /// Positions the KV cache can hold.
    fn max_context(&self) -> usize;
    /// A short description for logs and `--json` output (`"cpu"`, `"cuda:0 (H100)"`).
    fn device(&self) -> String;
    /// Runs `tokens` at absolute `positions` (causal among themselves, after whatever the cache
    /// holds below them) and writes their keys and values into the cache.
    fn step(
        &mut self,
        tokens: &[u32],
        positions: &[usize],
        want_logits: bool,
    ) -> Result<StepOutput>;
    /// Empties the KV cache.
    fn reset(&mut self);
    /// Verifies the drafted `block` (the last committed token, then drafts) greedily as
    /// [`Engine::step`] would, with the [`mimo_ir::ops::Accept`] op running where the step runs,
    /// so only the acceptance and the committed rows are read back. `None` (the default): this
    /// engine does not accept on its device, nothing ran, and the caller steps and accepts itself.
    fn verify_greedy(
        &mut self,
        block: &[u32],
        positions: &[usize],
        want_logits: bool,
    ) -> Result<Option<Verified>> {
        let _ = (block, positions, want_logits);
        Ok(None)
    }
    /// Makes every later step also return the hidden states of `layers` (empty: none). Engines
    /// that cannot capture them refuse any layer.
    fn set_capture_layers(&mut self, layers: &[usize]) -> Result<()> {
        if layers.is_empty() {
            return Ok(());
        }
        bail!(
            "{} cannot capture hidden features, which speculative decoding needs; run on the CPU (--device cpu: the reference engine, or the schedule executor for an artifact)",
            self.device()
        )
    }
}

/// Checks a step's arguments against the model, so no engine sees an id outside the vocabulary or
/// a position outside its cache.
pub fn check_step(
    spec: &ModelSpec,
    max_context: usize,
    tokens: &[u32],
    positions: &[usize],
) -> Result<()> {
    if tokens.is_empty() || tokens.len() != positions.len() {
        bail!(
            "a step needs one position per token ({} tokens, {} positions)",
            tokens.len(),
            positions.len()
        );
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= spec.vocab_size) {
        bail!(
            "token id {bad} is outside the vocabulary (size {})",
            spec.vocab_size
        );
    }
    if let Some(&bad) = positions.iter().find(|&&p| p >= max_context) {
        bail!("position {bad} is beyond the context of {max_context} tokens");
    }
    Ok(())
}

/// An i32 vector input (token ids, positions) of a graph.
pub(crate) fn i32s(values: impl Iterator<Item = usize>) -> Tensor {
    let v: Vec<i32> = values.map(|x| x as i32).collect();
    Tensor::from_i32([v.len()], v)
}

/// Checks capture layers ([`Engine::set_capture_layers`]) against the model.
pub fn check_capture_layers(spec: &ModelSpec, layers: &[usize]) -> Result<()> {
    if let Some(&bad) = layers.iter().find(|&&l| l >= spec.num_layers) {
        bail!(
            "cannot capture the features of layer {bad}: the model has {} layers",
            spec.num_layers
        );
    }
    Ok(())
}

/// The reference interpreter as an engine: f32 on every core of the CPU.
pub struct CpuEngine {
    spec: ModelSpec,
    /// Shared with a drafter that runs on the same weights (DFlash reads the target's embedding
    /// and lm_head), so one store holds both models.
    weights: Arc<F32Weights>,
    state: StateStore,
    max_context: usize,
    /// Graphs by token count: decode (1), and each prefill or verify length seen so far.
    graphs: HashMap<usize, Graph>,
    options: DecodeOptions,
}

impl CpuEngine {
    pub fn new(spec: ModelSpec, weights: F32Weights, max_context: usize) -> Self {
        Self::with_shared_weights(spec, Arc::new(weights), max_context)
    }

    /// An engine on weights that other graphs (a drafter's) read too.
    pub fn with_shared_weights(
        spec: ModelSpec,
        weights: Arc<F32Weights>,
        max_context: usize,
    ) -> Self {
        CpuEngine {
            spec,
            weights,
            state: StateStore::new(),
            max_context,
            graphs: HashMap::new(),
            options: DecodeOptions::default(),
        }
    }

    fn graph(&mut self, tokens: usize) -> Result<&Graph> {
        if !self.graphs.contains_key(&tokens) {
            let g = decode_graph_with(&self.spec, tokens, self.max_context, &self.options)
                .with_context(|| format!("building the {tokens}-token graph"))?;
            self.graphs.insert(tokens, g);
        }
        Ok(&self.graphs[&tokens])
    }
}

fn into_f32(t: Tensor) -> Option<Vec<f32>> {
    match t.data {
        TensorData::F32(v) => Some(v),
        TensorData::I32(_) => None,
    }
}

impl Engine for CpuEngine {
    fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn device(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn step(
        &mut self,
        tokens: &[u32],
        positions: &[usize],
        want_logits: bool,
    ) -> Result<StepOutput> {
        check_step(&self.spec, self.max_context, tokens, positions)?;
        let n = tokens.len();
        let inputs = [
            (TOKEN_IDS, i32s(tokens.iter().map(|&t| t as usize))),
            (POSITIONS, i32s(positions.iter().copied())),
        ];
        self.graph(n)?;
        let graph = &self.graphs[&n];
        let mut out = interp::run(graph, &self.weights, &mut self.state, &inputs)?;
        let next_ids = out[NEXT_IDS].i32().iter().map(|&t| t as u32).collect();
        let logits = if want_logits {
            out.remove(LOGITS).and_then(into_f32)
        } else {
            None
        };
        let features = out.remove(FEATURES).and_then(into_f32);
        Ok(StepOutput {
            logits,
            next_ids,
            features,
        })
    }

    fn reset(&mut self) {
        self.state.clear();
    }

    fn set_capture_layers(&mut self, layers: &[usize]) -> Result<()> {
        check_capture_layers(&self.spec, layers)?;
        if self.options.capture_layers != layers {
            self.options.capture_layers = layers.to_vec();
            self.graphs.clear();
        }
        Ok(())
    }
}
