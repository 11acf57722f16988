//! Rotary position embedding, NeoX "rotate_half" style: dims i and i + hd/2 form a pair.

use std::ops::Range;

use mimo_macros::op;

use crate::math::axis_region;
use crate::op::{Access, Io, Op, expect_arity, whole};
use crate::{DType, Tensor, TensorType};

/// Rotates every head of `x` [tokens, heads, head_dim] by its token's absolute position. Tiles
/// split the heads. With a partial `rotary_dim` (MiMo-V2: 64 of 192) only the first
/// `rotary_dim` dims of a head rotate, as pairs i and i + rotary_dim/2; the rest pass through.
#[op(name = "rope", inputs(x, positions), outputs(y))]
pub struct Rope {
    pub theta: f64,
    /// Dims of a head that rotate (even); 0 for all of them.
    #[serde(default)]
    pub rotary_dim: usize,
}

impl Rope {
    /// `inv_freq[i] = theta^(-2i/d)` over the `d` rotating dims, computed in f32 the way
    /// transformers does, so that the angles (and hence the logits) agree with it to the last
    /// bits that matter.
    pub fn inv_freq(&self, rotary_dim: usize) -> Vec<f32> {
        (0..rotary_dim / 2)
            .map(|i| 1.0 / (self.theta as f32).powf((2 * i) as f32 / rotary_dim as f32))
            .collect()
    }

    /// The dims of a head of `head_dim` that rotate.
    pub fn rotating(&self, head_dim: usize) -> usize {
        match self.rotary_dim {
            0 => head_dim,
            d => d,
        }
    }
}

impl Op for Rope {
    fn infer(&self, inputs: &[TensorType]) -> Result<Vec<TensorType>, String> {
        expect_arity(self, inputs)?;
        let (x, pos) = (&inputs[Self::X], &inputs[Self::POSITIONS]);
        if x.rank() != 3 || x.dtype.is_int() || x.shape[2] % 2 != 0 {
            return Err(format!(
                "x must be float [tokens, heads, even head_dim], got {x}"
            ));
        }
        if pos.dtype != DType::I32 || pos.shape != [x.shape[0]] {
            return Err(format!("positions must be i32 [{}], got {pos}", x.shape[0]));
        }
        let rd = self.rotating(x.shape[2]);
        if !rd.is_multiple_of(2) || rd > x.shape[2] {
            return Err(format!(
                "rotary_dim must be even and at most head_dim {}, got {rd}",
                x.shape[2]
            ));
        }
        if !(self.theta.is_finite() && self.theta > 0.0) {
            return Err(format!("theta must be positive, got {}", self.theta));
        }
        Ok(vec![TensorType::f32(x.shape.clone())])
    }

    fn work_units(&self, io: Io<'_>) -> usize {
        io.outputs[Self::Y].shape[1]
    }

    fn access(&self, io: Io<'_>, units: Range<usize>) -> Access {
        Access {
            writes: vec![(Self::Y, axis_region(&io.outputs[Self::Y], 1, units.clone()))],
            reads: vec![
                (Self::X, axis_region(&io.inputs[Self::X], 1, units)),
                (Self::POSITIONS, whole(&io.inputs[Self::POSITIONS])),
            ],
        }
    }

    fn reference(&self, inputs: &[&Tensor], outputs: &mut [Tensor], units: Range<usize>) {
        let (x, pos) = (inputs[Self::X], inputs[Self::POSITIONS].i32());
        let (tokens, heads, hd) = (x.shape[0], x.shape[1], x.shape[2]);
        let rd = self.rotating(hd);
        let half = rd / 2;
        let inv_freq = self.inv_freq(rd);
        let (x, y) = (x.f32(), outputs[Self::Y].f32_mut());
        for (t, &p) in pos.iter().enumerate().take(tokens) {
            let angles: Vec<(f32, f32)> =
                inv_freq.iter().map(|f| (p as f32 * f).sin_cos()).collect();
            for h in units.clone() {
                let base = (t * heads + h) * hd;
                y[base + rd..base + hd].copy_from_slice(&x[base + rd..base + hd]);
                for (i, &(sin, cos)) in angles.iter().enumerate() {
                    let (a, b) = (x[base + i], x[base + i + half]);
                    y[base + i] = a * cos - b * sin;
                    y[base + i + half] = b * cos + a * sin;
                }
            }
        }
    }

    fn recompute_in_consumers(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::Rng;

    fn rope(op: &Rope, x: &Tensor, positions: &[i32]) -> Tensor {
        let pos = Tensor::from_i32([positions.len()], positions.to_vec());
        let ty = TensorType::f32(x.shape.clone());
        let mut out = vec![Tensor::zeros(&ty)];
        op.reference(&[x, &pos], &mut out, 0..x.shape[1]);
        out.remove(0)
    }

    #[test]
    fn partial_rotation_rotates_the_leading_dims_and_passes_the_rest() {
        let (t, h, hd, rd) = (2, 3, 12, 4);
        let mut rng = Rng::new(5);
        let data: Vec<f32> = (0..t * h * hd).map(|_| rng.normal(1.0)).collect();
        let x = Tensor::from_f32([t, h, hd], data);
        let theta = 10_000.0;
        let full = Rope {
            theta,
            rotary_dim: 0,
        };
        let explicit = Rope {
            theta,
            rotary_dim: hd,
        };
        assert_eq!(rope(&full, &x, &[3, 9]), rope(&explicit, &x, &[3, 9]));
        let partial = Rope {
            theta,
            rotary_dim: rd,
        };
        let y = rope(&partial, &x, &[3, 9]);
        // The leading dims alone, as heads of rd dims, rotated by a full rope of that size.
        let lead: Vec<f32> = x.f32().chunks(hd).flat_map(|c| c[..rd].to_vec()).collect();
        let want = rope(&full, &Tensor::from_f32([t, h, rd], lead), &[3, 9]);
        for (c, w) in y.f32().chunks(hd).zip(want.f32().chunks(rd)) {
            assert_eq!(&c[..rd], w);
        }
        for (c, xc) in y.f32().chunks(hd).zip(x.f32().chunks(hd)) {
            assert_eq!(&c[rd..], &xc[rd..]);
        }
        let odd = Rope {
            theta,
            rotary_dim: 5,
        };
        let err = odd
            .infer(&[TensorType::f32([t, h, hd]), TensorType::i32([t])])
            .unwrap_err();
        assert_eq!(
            err,
            "rotary_dim must be even and at most head_dim 12, got 5"
        );
    }
}
