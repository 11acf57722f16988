//! Deterministic random weights for any [`ModelSpec`]: tests, benchmarks and the built-in model.

use crate::formats::FormatError;
use crate::math::Rng;
use crate::model::ModelSpec;
use crate::model::names::all_weights;
use crate::weights::{Weight, WeightStore};

/// Random weights in `spec.formats`. Norm weights are near 1; matrices have standard deviation
/// `std` scaled by 1/sqrt(fan-in), so activations keep their size through many layers and the
/// logits (and the routing) are decisive rather than near-uniform.
pub fn random_weights(spec: &ModelSpec, seed: u64) -> Result<WeightStore, FormatError> {
    let mut store = WeightStore::new();
    for (i, (name, shape, expert)) in all_weights(spec).into_iter().enumerate() {
        let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D));
        let numel: usize = shape.iter().product();
        let values: Vec<f32> = if shape.len() == 1 {
            (0..numel).map(|_| 1.0 + rng.normal(0.1)).collect()
        } else {
            let std = if name == crate::model::names::EMBED {
                1.0
            } else {
                2.0 / (*shape.last().unwrap() as f32).sqrt()
            };
            (0..numel).map(|_| rng.normal(std)).collect()
        };
        let format = if expert {
            spec.formats.experts
        } else {
            spec.formats.dense
        };
        store.insert(name, Weight::from_f32(shape, &values, format)?);
    }
    Ok(store)
}
