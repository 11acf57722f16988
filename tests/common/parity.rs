//! The megakernel (or any engine) against the reference interpreter at bf16 tolerance: the
//! interpreter's bf16 twin measures how much rounding alone moves a model's logits, router and
//! argmax near ties are recognised, and [`compare_greedy`] / [`check_greedy_run`] apply the rules.

use mimo_ir::formats::WeightFormat;
use mimo_ir::interp::{self, F32Weights, StateStore};
use mimo_ir::model::build::decode_graph;
use mimo_ir::model::names::LayerWeight;
use mimo_ir::weights::WeightStore;
use mimo_ir::{Graph, ModelSpec, Tensor};
use mimo_runtime::engine::{CpuEngine, Engine, StepOutput};

/// Relative L2 error allowed for a whole model's logits (errors compound over layers).
pub const MODEL_TOLERANCE: f64 = 5e-2;
pub fn rel_l2(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Greedy decoding of `n` tokens after `prompt`, with the logits of each chosen token.
pub fn greedy(engine: &mut dyn Engine, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
    engine.reset();
    let positions: Vec<usize> = (0..prompt.len()).collect();
    let first = engine.step(prompt, &positions, true).unwrap();
    let v = engine.spec().vocab_size;
    let mut next = *first.next_ids.last().unwrap();
    let all = first.logits.unwrap();
    let mut logits = vec![all[all.len() - v..].to_vec()];
    let mut ids = vec![next];
    for i in 1..n {
        let out = engine.step(&[next], &[prompt.len() + i - 1], true).unwrap();
        next = out.next_ids[0];
        ids.push(next);
        logits.push(out.logits.unwrap());
    }
    (ids, logits)
}

/// The same token sequence through `engine` (teacher forcing): logits after each token.
pub fn forced(engine: &mut dyn Engine, tokens: &[u32]) -> Vec<Vec<f32>> {
    engine.reset();
    let positions: Vec<usize> = (0..tokens.len()).collect();
    let out = engine.step(tokens, &positions, true).unwrap();
    let v = engine.spec().vocab_size;
    out.logits.unwrap().chunks(v).map(<[f32]>::to_vec).collect()
}

/// The interpreter computing as the kernel's tensor cores do (see
/// [`mimo_ir::math::with_bf16_operands`]): weights, matmul activations and KV rows in bf16, sums
/// in f32. Its distance from the f32 interpreter is the bf16 noise of this model on this sequence.
pub struct Bf16Twin(pub CpuEngine, pub F32Weights);

impl Bf16Twin {
    /// `dequantised` is `weights` as the oracle holds them; only f32 weights differ in the twin
    /// (bf16 and FP4 weights are exact in bf16), so the rest is shared.
    pub fn new(
        spec: &ModelSpec,
        weights: &WeightStore,
        dequantised: &F32Weights,
        ctx: usize,
    ) -> Self {
        let mut rounded = dequantised.clone();
        for (name, w) in weights.iter() {
            if w.format() == WeightFormat::F32 {
                let values: Vec<f32> = w
                    .to_f32()
                    .into_iter()
                    .map(mimo_ir::math::round_bf16)
                    .collect();
                rounded.insert(name, Tensor::from_f32(w.shape.clone(), values));
            }
        }
        Bf16Twin(CpuEngine::new(spec.clone(), rounded.clone(), ctx), rounded)
    }
}

impl Engine for Bf16Twin {
    fn spec(&self) -> &ModelSpec {
        self.0.spec()
    }
    fn max_context(&self) -> usize {
        self.0.max_context()
    }
    fn device(&self) -> String {
        format!("{} (bf16 operands)", self.0.device())
    }
    fn step(
        &mut self,
        tokens: &[u32],
        positions: &[usize],
        want_logits: bool,
    ) -> anyhow::Result<StepOutput> {
        mimo_ir::math::with_bf16_operands(|| self.0.step(tokens, positions, want_logits))
    }
    fn reset(&mut self) {
        self.0.reset();
    }
}

/// Per position of `seq` (one forced step from an empty cache), each MoE layer's router
/// selection keys: the keys its top-k compares, the router logits themselves for a softmax
/// router, `sigmoid(logit) + selection_bias` for MiMo-V2's sigmoid router.
pub fn router_keys(
    spec: &ModelSpec,
    weights: &F32Weights,
    seq: &[u32],
    ctx: usize,
    bf16: bool,
) -> Vec<Vec<Vec<f32>>> {
    let graph = decode_graph(spec, seq.len(), ctx).unwrap();
    let mut doc = graph.to_json();
    let routers: Vec<(String, usize)> = graph
        .nodes()
        .filter(|(_, n)| n.name.ends_with(".router_logits"))
        .map(|(i, n)| (n.name.clone(), i.index()))
        .collect();
    for (name, node) in &routers {
        doc["outputs"][name.as_str()] = serde_json::json!([node, 0]);
    }
    let graph = Graph::from_json(&doc).unwrap();
    let ids = Tensor::from_i32(vec![seq.len()], seq.iter().map(|&t| t as i32).collect());
    let positions = Tensor::from_i32(vec![seq.len()], (0..seq.len() as i32).collect());
    let inputs = [
        (mimo_ir::model::build::TOKEN_IDS, ids),
        (mimo_ir::model::build::POSITIONS, positions),
    ];
    let run = || interp::run(&graph, weights, &mut StateStore::new(), &inputs).unwrap();
    let out = if bf16 {
        mimo_ir::math::with_bf16_operands(run)
    } else {
        run()
    };
    let bias = |name: &str| -> Option<Vec<f32>> {
        if !spec.architecture.has_sigmoid_router() {
            return None;
        }
        let layer: usize = name.split('.').nth(1)?.parse().ok()?;
        let bias = weights.get(&LayerWeight::RouterBias.name(layer));
        Some(bias.expect("a sigmoid router's bias").f32().to_vec())
    };
    let biases: Vec<Option<Vec<f32>>> = routers.iter().map(|(name, _)| bias(name)).collect();
    (0..seq.len())
        .map(|t| {
            routers
                .iter()
                .zip(&biases)
                .map(|((name, _), bias)| {
                    let r = &out[name];
                    let e = r.shape[1];
                    let logits = &r.f32()[t * e..(t + 1) * e];
                    match bias {
                        Some(bias) => logits
                            .iter()
                            .zip(bias)
                            .map(|(&l, &b)| 1.0 / (1.0 + (-l).exp()) + b)
                            .collect(),
                        None => logits.to_vec(),
                    }
                })
                .collect()
        })
        .collect()
}

/// Positions where the oracle's choice of experts is within bf16 reach: in some layer the gap
/// between the k-th and (k+1)-th router key ([`router_keys`]) is at most 4x what the bf16 twin
/// moves that layer's keys at that position. The kernel may legitimately route those tokens
/// differently, which changes their logits by far more than rounding does.
pub fn router_near_ties(
    spec: &ModelSpec,
    oracle: &F32Weights,
    twin: &F32Weights,
    seq: &[u32],
    ctx: usize,
) -> Vec<usize> {
    let k = spec.experts_per_token;
    let want = router_keys(spec, oracle, seq, ctx, false);
    let bf16 = router_keys(spec, twin, seq, ctx, true);
    (0..seq.len())
        .filter(|&t| {
            want[t].iter().zip(&bf16[t]).any(|(w, b)| {
                let mut sorted = w.clone();
                sorted.sort_by(|x, y| y.total_cmp(x));
                let margin = f64::from(sorted[k - 1] - sorted[k]);
                margin <= 4.0 * max_abs_diff(b, w)
            })
        })
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .fold(0.0, f64::max)
}

pub fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |b, (j, &x)| if x > b.1 { (j, x) } else { b },
        )
        .0
}

/// The f32 interpreter's greedy run after a prompt (the oracle), with its bf16 twin
/// ([`Bf16Twin`]) fed the same sequence to measure how much bf16 rounding alone moves this
/// model's logits: small random models amplify rounding, and a fixed tolerance would be either
/// loose on calm models or fail a correct kernel on chaotic ones.
pub struct Oracle<'a> {
    label: &'a str,
    prompt_len: usize,
    /// The prompt and the oracle's greedy ids but the last.
    seq: Vec<u32>,
    /// The oracle's greedy ids.
    ids: Vec<u32>,
    /// Logits after each token of `seq`: the oracle's and the twin's.
    want: Vec<Vec<f32>>,
    bf16: Vec<Vec<f32>>,
    /// The twin's largest relative L2 distance from the oracle, router near ties left out.
    twin_worst: f64,
    bound: f64,
    router_near_ties: Vec<usize>,
    near_ties: Vec<usize>,
    worst: f64,
}

impl<'a> Oracle<'a> {
    /// The oracle's `n` greedy tokens after `prompt`; a kernel's logits are held to `tol`
    /// relative L2, or 3x the twin's worst distance over the sequence (router near ties left
    /// out) when that is larger: each of the kernel's few extra roundings, such as the norm
    /// weight staged before the 1/rms scale, is of the twin's size.
    pub fn new(
        label: &'a str,
        (engine, weights): (&mut dyn Engine, &F32Weights),
        twin: &mut Bf16Twin,
        prompt: &[u32],
        n: usize,
        tol: f64,
    ) -> Self {
        let (ids, _) = greedy(engine, prompt, n);
        let mut seq = prompt.to_vec();
        seq.extend_from_slice(&ids[..n - 1]);
        let want = forced(engine, &seq);
        let bf16 = forced(twin, &seq);
        let ties = router_near_ties(engine.spec(), weights, &twin.1, &seq, engine.max_context());
        // The twin's worst where it routes as the oracle does: at a router near tie the twin
        // may take other experts itself, which says nothing about rounding.
        let twin_worst = bf16
            .iter()
            .zip(&want)
            .enumerate()
            .filter(|(i, _)| !ties.contains(i))
            .map(|(_, (b, w))| rel_l2(b, w))
            .fold(0.0, f64::max);
        Oracle {
            label,
            ids,
            want,
            bf16,
            twin_worst,
            bound: tol.max(3.0 * twin_worst),
            router_near_ties: ties,
            near_ties: vec![],
            worst: 0.0,
            prompt_len: prompt.len(),
            seq,
        }
    }

    /// Holds the kernel's logits `got` after token `i` of the oracle's sequence (the same
    /// context) to the rules:
    /// - within the bound of [`Oracle::new`];
    /// - the same argmax, unless the oracle's top-two gap is within reach of bf16 noise there:
    ///   twice the larger of the kernel's and the twin's largest logit deviation, and at most 8x
    ///   the twin's (a near tie, reported);
    /// - at a router near tie ([`router_near_ties`]) the kernel may route the token differently,
    ///   so the bound does not hold there (reported; later positions are still held to it).
    pub fn check_row(&mut self, i: usize, got: &[f32]) {
        let label = self.label;
        let (w, b) = (&self.want[i], &self.bf16[i]);
        let err = rel_l2(got, w);
        if err >= self.bound && self.router_near_ties.contains(&i) {
            eprintln!(
                "{label}: position {i}: logits relative L2 error {err:.3e} at a router near tie (accepted)"
            );
            self.near_ties.push(i);
            return;
        }
        self.worst = self.worst.max(err);
        assert!(
            err < self.bound,
            "{label}: position {i}: logits relative L2 error {err:.3e} (bound {:.3e}: the bf16 twin's worst is {:.3e})",
            self.bound,
            self.twin_worst
        );
        let (gi, wi) = (argmax(got), argmax(w));
        if gi != wi {
            let gap = f64::from(w[wi] - w[gi]);
            let twin_dev = max_abs_diff(b, w);
            let reach = (2.0 * max_abs_diff(got, w).max(twin_dev)).min(8.0 * twin_dev);
            assert!(
                gap <= reach,
                "{label}: position {i}: kernel argmax {gi}, interpreter {wi} (gap {gap} beyond bf16 noise {reach}: the twin moves a logit by at most {twin_dev})"
            );
            self.near_ties.push(i);
        }
    }

    /// Whether positions `from..` of the oracle's sequence are clear of bf16 near ties: no
    /// router near tie there, and the oracle's greedy choice leading by more than 8x the twin's
    /// largest logit deviation (so any kernel within bf16 noise makes the oracle's choices).
    pub fn clear_of_near_ties(&self, from: usize) -> bool {
        !self.router_near_ties.iter().any(|&t| t >= from)
            && (from..self.seq.len()).all(|t| {
                let (w, b) = (&self.want[t], &self.bf16[t]);
                let mut sorted = w.clone();
                sorted.sort_by(|x, y| y.total_cmp(x));
                f64::from(sorted[0] - sorted[1]) > 8.0 * max_abs_diff(b, w)
            })
    }

    /// Free-running, the kernel's greedy ids `got` equal the oracle's, or first differ at a near
    /// tie found by [`Oracle::check_row`]. Returns where they differ.
    pub fn check_ids(&self, got: &[u32]) -> Option<usize> {
        let (label, want) = (self.label, &self.ids);
        assert_eq!(got.len(), want.len(), "{label}: greedy ids");
        let d = got.iter().zip(want).position(|(a, b)| a != b)?;
        assert!(
            self.near_ties.contains(&(self.prompt_len - 1 + d)),
            "{label}: greedy ids diverge at new token {d} (kernel {}, interpreter {}) without a near tie:\n kernel {got:?}\n interpreter {want:?}",
            got[d],
            want[d]
        );
        eprintln!("{label}: greedy ids diverge at new token {d}, a near tie (accepted)");
        Some(d)
    }

    /// The closing line of a comparison.
    pub fn summary(&self) {
        eprintln!(
            "{}: {} greedy tokens, worst logits error {:.2e} away from router near ties (bf16 twin {:.2e}), near ties at {:?}",
            self.label,
            self.ids.len(),
            self.worst,
            self.twin_worst,
            self.near_ties
        );
    }
}

/// The kernel on `gpu` against the oracle ([`Oracle`]), all fed the oracle's greedy sequence
/// (one multi-token step: the prefill path) and row by row held to [`Oracle::check_row`]; then
/// free-running, its greedy ids to [`Oracle::check_ids`].
///
/// A wrong fragment layout, a race or a stale read moves logits by far more than bf16 does.
pub fn compare_greedy(
    label: &str,
    oracle: (&mut dyn Engine, &F32Weights),
    twin: &mut Bf16Twin,
    gpu: &mut dyn Engine,
    prompt: &[u32],
    n: usize,
    tol: f64,
) {
    let mut o = Oracle::new(label, oracle, twin, prompt, n, tol);
    let got = forced(gpu, &o.seq);
    for (i, row) in got.iter().enumerate() {
        o.check_row(i, row);
    }
    let (gpu_ids, _) = greedy(gpu, prompt, n);
    o.check_ids(&gpu_ids);
    o.summary();
}

/// A kernel's free-running greedy run (`ids`, and the logits each was chosen from, as
/// `mimo generate --json --logits` prints them) against the oracle: the logits of every new token
/// up to and including the first divergence (the context is the oracle's until then) held to
/// [`Oracle::check_row`], the ids to [`Oracle::check_ids`].
pub fn check_greedy_run(mut o: Oracle<'_>, ids: &[u32], logits: &[Vec<f32>]) {
    assert_eq!(
        logits.len(),
        ids.len(),
        "{}: one logits row per new token",
        o.label
    );
    let compared = ids
        .iter()
        .zip(&o.ids)
        .position(|(a, b)| a != b)
        .map_or(ids.len(), |d| d + 1);
    for (t, row) in logits.iter().enumerate().take(compared) {
        o.check_row(o.prompt_len - 1 + t, row);
    }
    o.check_ids(ids);
    o.summary();
}
