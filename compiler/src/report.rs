//! What one step of a compiled program costs: bytes read from device memory (counted the way a
//! person would count them by hand, from the model's shapes), the bandwidth-roofline time, and the
//! cost model's schedule estimate. Written into the artifact's `report.md`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use mimo_ir::ModelSpec;
use mimo_ir::graph::NodeKind;
use mimo_ir::model::names::LayerWeight;

use crate::program::Program;
use crate::resources::FunctionResources;

/// The [`StepBytes`] category of the KV cache rows (every other category is weights).
pub const KV_CACHE_PART: &str = "kv cache";

/// Bytes one step reads, by category.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepBytes {
    /// Category -> bytes (e.g. "attention weights", "routed experts", "kv cache").
    pub parts: BTreeMap<&'static str, f64>,
}

impl StepBytes {
    pub fn total(&self) -> f64 {
        self.parts.values().sum()
    }
}

/// Bytes a step of `tokens` tokens reads at `context` cached positions: every dense weight once,
/// the routed experts' rows (at most `tokens * top_k` distinct experts per layer, all of them
/// counted distinct: the worst case), the embedding rows of the tokens, and the K and V cache rows
/// (bf16) attention reads. Activations are a few KB and left out.
pub fn step_bytes(spec: &ModelSpec, tokens: usize, context: usize) -> StepBytes {
    let mut parts: BTreeMap<&'static str, f64> = BTreeMap::new();
    let bytes = |shape: &[usize], expert: bool| -> f64 {
        let format = if expert {
            spec.formats.experts
        } else {
            spec.formats.dense
        };
        shape.iter().product::<usize>() as f64 * format.bytes_per_element()
    };
    let routed =
        (tokens * spec.experts_per_token).min(spec.num_experts) as f64 / spec.num_experts as f64;
    let mut kv_row_bytes = 0.0;
    for layer in 0..spec.num_layers {
        let a = spec.attention(layer);
        // bf16 K and V rows; a sliding-window layer reads at most its window.
        let rows = match a.window {
            0 => context + tokens,
            w => (context + tokens).min(w + tokens - 1),
        };
        kv_row_bytes += rows as f64 * (a.kv_dim() + a.v_dim()) as f64 * 2.0;
        for w in LayerWeight::ALL
            .into_iter()
            .filter(|w| w.present_in(spec, layer))
        {
            let shape = w.shape(spec, layer);
            let (part, b) = match w {
                LayerWeight::ExpertsGate | LayerWeight::ExpertsUp | LayerWeight::ExpertsDown => {
                    ("routed experts", bytes(&shape, true) * routed)
                }
                LayerWeight::Router | LayerWeight::RouterBias => ("router", bytes(&shape, false)),
                LayerWeight::MlpGate | LayerWeight::MlpUp | LayerWeight::MlpDown => {
                    ("dense MLP", bytes(&shape, false))
                }
                LayerWeight::AttnNorm
                | LayerWeight::FfnNorm
                | LayerWeight::QNorm
                | LayerWeight::KNorm => ("norms", bytes(&shape, false)),
                _ => ("attention weights", bytes(&shape, false)),
            };
            *parts.entry(part).or_default() += b;
        }
    }
    *parts.entry("norms").or_default() += bytes(&[spec.hidden_size], false);
    parts.insert(
        "lm_head",
        bytes(&[spec.vocab_size, spec.hidden_size], false),
    );
    parts.insert("embedding rows", bytes(&[tokens, spec.hidden_size], false));
    // K and V, bf16, every layer: the cached rows plus this step's own rows.
    parts.insert(KV_CACHE_PART, kv_row_bytes);
    StepBytes { parts }
}

/// Inputs of the report.
pub struct ReportInputs<'a> {
    pub spec: &'a ModelSpec,
    pub source: &'a str,
    pub arch: &'a str,
    pub max_context: usize,
    /// Context the byte count and roofline are given at.
    pub report_context: usize,
    pub bandwidth_gbs: f64,
    pub programs: &'a [(&'a str, &'a Program)],
    pub resources: Option<&'a [FunctionResources]>,
    pub compile_seconds: f64,
}

/// The artifact's `report.md`.
pub fn render(r: &ReportInputs<'_>) -> String {
    let mut s = String::new();
    let spec = r.spec;
    let _ = writeln!(s, "# mimo compile report\n");
    let _ = writeln!(
        s,
        "- model: `{}` ({}), {} layers, hidden {}, {} experts top-{}",
        r.source,
        spec.architecture.model_type(),
        spec.num_layers,
        spec.hidden_size,
        spec.num_experts,
        spec.experts_per_token
    );
    let _ = writeln!(
        s,
        "- formats: experts {}, everything else {}; KV cache bf16",
        spec.formats.experts, spec.formats.dense
    );
    let _ = writeln!(
        s,
        "- target: {}, max context {}, compiled in {:.2} s\n",
        r.arch, r.max_context, r.compile_seconds
    );
    for (name, p) in r.programs {
        let tokens = p
            .graph
            .nodes_of(|k| matches!(k, NodeKind::Input))
            .next()
            .map(|(_, n)| n.outputs[0].shape[0])
            .unwrap_or(1);
        let _ = writeln!(s, "## Graph `{name}` ({tokens} token(s) per step)\n");
        let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
        for op in &p.ops {
            *kinds.entry(format!("{:?}", op.kind)).or_default() += 1;
        }
        let _ = writeln!(
            s,
            "- fused ops: {} ({})",
            p.ops.len(),
            kinds
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let _ = writeln!(
            s,
            "- tasks per step: {}; events per step: {}; workers: {}",
            p.tasks.len(),
            p.events.len(),
            p.schedule.queues.len()
        );
        let _ = writeln!(
            s,
            "- arena: {} KiB (f32/i32); KV state: {} MiB (bf16)",
            p.memory.arena_len * 4 / 1024,
            p.memory.state_len * 2 / (1024 * 1024)
        );
        let _ = writeln!(
            s,
            "- cost-model estimate of the step: {:.1} us\n",
            p.schedule.makespan_us
        );
        let bytes = step_bytes(spec, tokens, r.report_context);
        let _ = writeln!(s, "Bytes read per step at context {}:\n", r.report_context);
        let _ = writeln!(s, "| what | MB |\n|---|---:|");
        for (part, b) in &bytes.parts {
            let _ = writeln!(s, "| {part} | {:.3} |", b / 1e6);
        }
        let total = bytes.total();
        let _ = writeln!(s, "| **total** | **{:.3}** |\n", total / 1e6);
        let roofline_us = total / (r.bandwidth_gbs * 1e3);
        let _ = writeln!(
            s,
            "Bandwidth roofline at {:.0} GB/s: **{:.1} us per step** ({:.0} steps/s).\n",
            r.bandwidth_gbs,
            roofline_us,
            1e6 / roofline_us
        );
    }
    if let Some(res) = r.resources {
        let _ = writeln!(s, "## Kernel resources (ptxas and cuobjdump)\n");
        let _ = writeln!(
            s,
            "Device functions share the kernel's registers (\"-\": ptxas reports none of their own).\n"
        );
        let _ = writeln!(
            s,
            "| function | registers | stack | spill stores | spill loads | shared |\n|---|---:|---:|---:|---:|---:|"
        );
        for f in res {
            let regs = if f.registers == 0 {
                "-".to_string()
            } else {
                f.registers.to_string()
            };
            let _ = writeln!(
                s,
                "| `{}` | {regs} | {} | {} | {} | {} |",
                crate::resources::short_name(&f.function),
                f.stack_bytes,
                f.spill_stores,
                f.spill_loads,
                f.shared_bytes
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's hand count for Qwen3-30B-A3B (MXFP4 experts, bf16 elsewhere, one token at
    /// context 1024), written out factor by factor.
    #[test]
    fn qwen3_30b_bytes_per_token_match_the_hand_count() {
        let b = step_bytes(&ModelSpec::qwen3_30b_a3b(), 1, 1024);
        let fp4 = 0.5 + 1.0 / 32.0; // E2M1 nibble + one E8M0 byte per 32
        let layers = 48.0;
        let expect = [
            (
                "attention weights",
                (4096.0 * 2048.0 + 2.0 * 512.0 * 2048.0 + 2048.0 * 4096.0) * 2.0 * layers,
            ),
            ("router", 128.0 * 2048.0 * 2.0 * layers),
            ("routed experts", 8.0 * 3.0 * 768.0 * 2048.0 * fp4 * layers),
            (
                "norms",
                (2.0 * 2048.0 + 2.0 * 128.0) * 2.0 * layers + 2048.0 * 2.0,
            ),
            ("lm_head", 151936.0 * 2048.0 * 2.0),
            ("embedding rows", 2048.0 * 2.0),
            ("kv cache", layers * 2.0 * 1025.0 * 512.0 * 2.0),
        ];
        for (part, bytes) in expect {
            assert_eq!(b.parts[part], bytes, "{part}");
        }
        assert_eq!(b.parts.len(), expect.len());
        assert_eq!(b.total(), 3_523_215_360.0);
        // About 1.17 ms per token at an H100's 3.0 TB/s.
        let roofline_ms = b.total() / 3.0e12 * 1e3;
        assert!((roofline_ms - 1.1744).abs() < 1e-3, "{roofline_ms}");
    }
}
