//! What the emulator counted the timed steps reading, beside `report.md`'s hand count of the same
//! step ([`step_bytes`]): weights and KV cache as ratios (a kernel that re-reads weights shows a
//! weights ratio above 1), the other classes in bytes, and the ops that read the most weights.

use mimo_compiler::report::{KV_CACHE_PART, StepBytes};
use mimo_runtime::device::{MemClass, TaskBytes};
use serde_json::{Value, json};

/// One step's counted reads.
pub struct Reads {
    /// Bytes per step, per [`MemClass`].
    per_class: [f64; 6],
    /// Weight bytes per step of the ops that read the most, largest first.
    top_ops: Vec<(String, f64)>,
    weights_ratio: f64,
    kv_ratio: f64,
}

impl Reads {
    /// `bytes` over its launches, per step; `by_op` the same bytes per fused op.
    pub fn new(bytes: &TaskBytes, by_op: Vec<(String, [u64; 6])>, counted: &StepBytes) -> Self {
        let steps = bytes.launches.max(1) as f64;
        let per_class = MemClass::ALL.map(|c| bytes.total(c) as f64 / steps);
        let kv_counted = counted.parts.get(KV_CACHE_PART).copied().unwrap_or(0.0);
        let weights_counted = counted.total() - kv_counted;
        let mut top_ops: Vec<(String, f64)> = by_op
            .into_iter()
            .map(|(name, b)| (name, b[MemClass::Weights.index()] as f64 / steps))
            .filter(|(_, b)| *b > 0.0)
            .collect();
        top_ops.sort_by(|a, b| b.1.total_cmp(&a.1));
        top_ops.truncate(5);
        let ratio = |got: f64, want: f64| if want > 0.0 { got / want } else { 0.0 };
        Reads {
            weights_ratio: ratio(per_class[MemClass::Weights.index()], weights_counted),
            kv_ratio: ratio(per_class[MemClass::Kv.index()], kv_counted),
            per_class,
            top_ops,
        }
    }

    /// The bench JSON's fields.
    pub fn json(&self) -> Vec<(&'static str, Value)> {
        let classes: serde_json::Map<String, Value> = MemClass::ALL
            .iter()
            .map(|c| (c.name().to_string(), json!(self.per_class[c.index()])))
            .collect();
        vec![
            ("emulator_read_bytes_per_step", Value::Object(classes)),
            ("weights_read_ratio", json!(self.weights_ratio)),
            ("kv_read_ratio", json!(self.kv_ratio)),
        ]
    }

    /// The human-readable lines.
    pub fn lines(&self) -> Vec<String> {
        let mb = |c: MemClass| self.per_class[c.index()] / 1e6;
        let mut lines = vec![
            format!(
                "  the emulator counted per step: weights {:.3} MB ({:.2}x report.md's count), KV {:.3} MB ({:.2}x), activations {:.3} MB, tables {:.3} MB, sync {:.3} MB",
                mb(MemClass::Weights),
                self.weights_ratio,
                mb(MemClass::Kv),
                self.kv_ratio,
                mb(MemClass::Activations),
                mb(MemClass::Tables),
                mb(MemClass::Sync),
            ),
            "  most weight bytes read:".to_string(),
        ];
        lines.extend(
            self.top_ops
                .iter()
                .map(|(name, b)| format!("    {:.3} MB {name}", b / 1e6)),
        );
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_per_step_against_the_hand_count() {
        // Two launches; task 0 read 3000 weight bytes and 400 KV bytes, task 1 1000 weight bytes.
        let mut row0 = [0u64; 6];
        row0[MemClass::Weights.index()] = 3000;
        row0[MemClass::Kv.index()] = 400;
        let mut row1 = [0u64; 6];
        row1[MemClass::Weights.index()] = 1000;
        let bytes = TaskBytes {
            per_task: vec![row0, row1],
            launches: 2,
        };
        let by_op = vec![("a".to_string(), row0), ("b".to_string(), row1)];
        let mut counted = StepBytes::default();
        counted.parts.insert("attention weights", 1000.0);
        counted.parts.insert(KV_CACHE_PART, 100.0);
        let r = Reads::new(&bytes, by_op, &counted);
        assert_eq!(r.per_class[MemClass::Weights.index()], 2000.0);
        assert_eq!(r.weights_ratio, 2.0);
        assert_eq!(r.kv_ratio, 2.0);
        assert_eq!(
            r.top_ops,
            vec![("a".to_string(), 1500.0), ("b".to_string(), 500.0)]
        );
        let json = r.json();
        assert_eq!(json[0].1["weights"], 2000.0);
    }
}
