//! NVFP4: blocks of 16 E2M1 elements sharing one E4M3 scale, plus one f32 scale per tensor.
//!
//! Blocks run along the last (reduction) axis of a row-major `rows x cols` matrix; `cols` must
//! be a multiple of 16. The E4M3 block scale has 3 mantissa bits, so it tracks each block's
//! range more closely than MXFP4's power of two, but its own range (2^-9..448) is too narrow
//! for arbitrary tensors; the per-tensor f32 scale moves the whole tensor into that range.
//!
//! Quantisation (all arithmetic in f32, in this order, since GPU kernels are checked against
//! these bits):
//!
//! - `global = amax_tensor / (448 * 6)`: the tensor's largest magnitude maps to the largest
//!   block scale (448) times the largest element (6). If that is 0 (an all-zero tensor, or one
//!   so tiny, below about 2^-139, that the quotient underflows) `global = 1.0` instead, so that
//!   nothing divides by zero; such a tensor then quantises to (signed) zeros, which is also the
//!   nearest representable result.
//! - block scale code `e4m3::encode(amax_block / (6 * global))` (`6 * global` first), rounded
//!   to nearest even and saturating at 448; `bs = e4m3::decode(code)`.
//! - each element `e2m1::encode(v / (bs * global))` (`bs * global` first). If `bs * global` is
//!   0 (block scale code 0, i.e. the block is below the smallest E4M3 subnormal) every element
//!   is a zero that keeps its sign (code 0 or 8), like the rounding to zero of MXFP4.
//!
//! Dequantisation is `(e2m1::VALUES[code] * bs) * global` in f32, in that order: the first
//! product is exact (2 x 4 significant bits, within range), so only the multiplication by the
//! tensor scale rounds, once.

use rayon::prelude::*;

use super::blocks::{self, PartNames};
use super::{FormatError, WeightFormat, e2m1, e4m3};

/// Elements per scale block along the reduction axis.
pub const BLOCK: usize = 16;

const NAMES: PartNames = PartNames {
    values: "nvfp4 f32 input values",
    codes: "nvfp4 packed codes",
    scales: "nvfp4 e4m3 scales",
};

/// `448 * 6`: the largest block scale times the largest element.
const RANGE: f32 = e4m3::MAX * e2m1::MAX;

/// A block-scaled fp4 matrix in NVFP4.
///
/// Invariants (checked by [`Nvfp4Matrix::quantize`] and [`Nvfp4Matrix::from_parts`], assumed by
/// the other methods, which may panic if the public fields are set inconsistently by hand):
/// `cols % 16 == 0`, `codes.len() == rows * cols / 2`, `scales.len() == rows * cols / 16`.
#[derive(Debug, Clone, PartialEq)]
pub struct Nvfp4Matrix {
    pub rows: usize,
    pub cols: usize,
    /// E2M1 codes, row-major, packed two per byte as by [`e2m1::pack`] (element 2j in the low
    /// nibble of byte j).
    pub codes: Vec<u8>,
    /// One E4M3 code per block, row-major: block `b` of row `r` is `scales[r * cols / 16 + b]`.
    pub scales: Vec<u8>,
    /// The per-tensor scale `global` every block scale is multiplied by.
    pub tensor_scale: f32,
}

/// The per-tensor scale for a tensor whose largest magnitude is `amax`:
/// `amax / (448 * 6)`, or 1.0 where that is 0 (see the module docs).
pub fn tensor_scale_for(amax: f32) -> f32 {
    let global = amax / RANGE;
    if global == 0.0 { 1.0 } else { global }
}

/// Quantises one block of 16 values under the per-tensor scale `tensor_scale` (see the module
/// docs): returns the E4M3 block scale code and the 16 E2M1 codes (unpacked, in order).
///
/// The values should be finite and `tensor_scale` positive and finite, as
/// [`Nvfp4Matrix::quantize`] guarantees; other input gives unspecified codes but no panic.
///
/// # Panics
/// If `values.len() != 16`.
pub fn quantize_block(values: &[f32], tensor_scale: f32) -> (u8, [u8; BLOCK]) {
    assert_eq!(
        values.len(),
        BLOCK,
        "nvfp4::quantize_block takes exactly {BLOCK} values"
    );
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = e4m3::encode(amax / (e2m1::MAX * tensor_scale));
    let denom = e4m3::decode(scale) * tensor_scale;
    let mut codes = [0u8; BLOCK];
    for (c, &v) in codes.iter_mut().zip(values) {
        *c = if denom == 0.0 || denom.is_nan() {
            if v.is_sign_negative() { e2m1::SIGN } else { 0 }
        } else {
            e2m1::encode(v / denom)
        };
    }
    (scale, codes)
}

/// The 16 values of one block: `(VALUES[code] * bs) * global`.
fn dequantize_block(scale: u8, global: f32, packed: &[u8], out: &mut [f32]) {
    let bs = e4m3::decode(scale);
    for (pair, &byte) in out.chunks_exact_mut(2).zip(packed) {
        pair[0] = (e2m1::decode(byte) * bs) * global;
        pair[1] = (e2m1::decode(byte >> 4) * bs) * global;
    }
}

impl Nvfp4Matrix {
    /// Quantises a row-major `rows x cols` matrix, blocks of 16 along each row, with one tensor
    /// scale for the whole matrix.
    ///
    /// Errors: `cols % 16 != 0` ([`FormatError::NotBlockAligned`]), `values.len() !=
    /// rows * cols` ([`FormatError::Size`], counted in bytes of f32 input), a NaN or infinity
    /// ([`FormatError::NonFinite`] with the flat index of the first one: it would poison the
    /// tensor scale and with it every block).
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Result<Self, FormatError> {
        blocks::check_input(WeightFormat::Nvfp4, &NAMES, values, rows, cols, BLOCK)?;
        let amax = values
            .par_iter()
            .map(|v| v.abs())
            .reduce(|| 0.0f32, f32::max);
        let global = tensor_scale_for(amax);
        let (codes, scales) =
            blocks::quantize_blocks(values, |block| quantize_block(block, global));
        Ok(Self {
            rows,
            cols,
            codes,
            scales,
            tensor_scale: global,
        })
    }

    /// Wraps stored codes, block scales and tensor scale (e.g. read from a checkpoint) after
    /// checking the shape: `cols % 16 == 0`, `codes.len() == rows * cols / 2`,
    /// `scales.len() == rows * cols / 16`. Any code values and tensor scale are accepted (a NaN
    /// block scale or tensor scale dequantises to NaN).
    pub fn from_parts(
        rows: usize,
        cols: usize,
        codes: Vec<u8>,
        scales: Vec<u8>,
        tensor_scale: f32,
    ) -> Result<Self, FormatError> {
        blocks::check_parts(
            WeightFormat::Nvfp4,
            &NAMES,
            rows,
            cols,
            BLOCK,
            &codes,
            &scales,
        )?;
        Ok(Self {
            rows,
            cols,
            codes,
            scales,
            tensor_scale,
        })
    }

    /// All values, row-major, exactly as a kernel reading this format sees them.
    pub fn dequantize(&self) -> Vec<f32> {
        blocks::dequantize_rows(self.rows, self.cols, |r, row| {
            self.dequantize_row_into(r, row)
        })
    }

    /// Row `row` into `out`.
    ///
    /// # Panics
    /// If `row >= self.rows` or `out.len() != self.cols`.
    pub fn dequantize_row_into(&self, row: usize, out: &mut [f32]) {
        blocks::dequantize_row(
            (self.rows, self.cols),
            BLOCK,
            &self.codes,
            &self.scales,
            row,
            out,
            |s, packed, out| dequantize_block(s, self.tensor_scale, packed, out),
        );
    }

    /// Bytes of the stored representation: packed codes plus block scales (the one f32 tensor
    /// scale is not counted, as [`WeightFormat::bytes_per_element`] does not count it).
    pub fn stored_bytes(&self) -> usize {
        self.codes.len() + self.scales.len()
    }

    /// The dequantised value at (`row`, `col`).
    ///
    /// # Panics
    /// If `row >= self.rows` or `col >= self.cols`.
    pub fn value(&self, row: usize, col: usize) -> f32 {
        assert!(
            row < self.rows && col < self.cols,
            "({row}, {col}) out of range of {} x {}",
            self.rows,
            self.cols
        );
        let i = row * self.cols + col;
        let bs = e4m3::decode(self.scales[i / BLOCK]);
        (e2m1::decode(e2m1::code_at(&self.codes, i)) * bs) * self.tensor_scale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Nearest E2M1 code to `t` by scanning the grid, ties to even, saturating; independent
    /// of `e2m1::encode`.
    fn nearest(t: f32) -> u8 {
        let a = f64::from(t.abs());
        let mut best = 0u8;
        for c in 1..8u8 {
            let d = (f64::from(e2m1::VALUES[usize::from(c)]) - a).abs();
            let db = (f64::from(e2m1::VALUES[usize::from(best)]) - a).abs();
            if d < db || (d == db && c & 1 == 0) {
                best = c;
            }
        }
        best | if t.is_sign_negative() { 8 } else { 0 }
    }

    #[test]
    fn block_scale_and_tensor_scale() {
        // amax_tensor = 2688 -> global exactly 1.
        let mut v = vec![0.0f32; 48];
        v[0] = 2688.0;
        v[16] = 3.0;
        v[17] = -1.0;
        v[18] = 0.3;
        v[32] = 1.0;
        v[33] = -0.5;
        let m = Nvfp4Matrix::quantize(&v, 1, 48).unwrap();
        assert_eq!(m.tensor_scale, 1.0);
        // Block 0: 2688 / 6 = 448 -> 0x7E; block 1: 3 / 6 = 0.5 -> 0x30;
        // block 2: 1 / 6 rounds (3 mantissa bits) to 1.375 * 2^-3 = 0.171875 -> 0x23.
        assert_eq!(m.scales, vec![0x7E, 0x30, 0x23]);
        assert_eq!(e4m3::decode(0x23), 0.171875);
        let c = e2m1::unpack(&m.codes, 48);
        assert_eq!(c[0], 7);
        assert_eq!(
            &c[16..19],
            &[7, 12, 1],
            "3/0.5 = 6, -1/0.5 = -2, 0.3/0.5 = 0.6 -> 0.5"
        );
        // 1 / 0.171875 = 5.82 -> 6; -0.5 / 0.171875 = -2.9 -> -3.
        assert_eq!(&c[32..34], &[7, 13]);
        let dq = m.dequantize();
        assert_eq!(dq[0], 2688.0);
        assert_eq!(&dq[16..19], &[3.0, -1.0, 0.25]);
        assert_eq!(&dq[32..34], &[1.03125, -0.515625]);
        // Zeros keep their sign.
        assert_eq!(c[1], 0);

        // A tensor scale that is not a power of two: global = 1 / 2688 rounded to f32.
        let mut v = vec![0.0f32; 16];
        v[0] = 1.0;
        v[1] = -0.25;
        let m = Nvfp4Matrix::quantize(&v, 1, 16).unwrap();
        assert_eq!(m.tensor_scale, 1.0f32 / 2688.0);
        assert_eq!(m.tensor_scale, tensor_scale_for(1.0));
        let want_scale = e4m3::encode(1.0 / (6.0 * m.tensor_scale));
        assert_eq!(m.scales, vec![want_scale]);
        assert_eq!(want_scale, 0x7E);
        let dq = m.dequantize();
        assert_eq!(dq[0], (6.0 * 448.0) * m.tensor_scale);
        assert!((dq[0] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn block_scale_divides_by_six_times_global() {
        // Found by search: here `amax / (6 * global)` and `amax / 6 / global` differ by an f32
        // ulp across an E4M3 tie, so this pins the documented order (the GPU does the same).
        let t = f32::from_bits(0x3f80_9aab);
        let a = f32::from_bits(0x3b1c_2987);
        let mut v = [0.0f32; 32];
        v[0] = t;
        v[16] = a;
        let m = Nvfp4Matrix::quantize(&v, 1, 32).unwrap();
        let g = m.tensor_scale;
        assert_eq!(g, t / 2688.0);
        assert_ne!(
            e4m3::encode(a / 6.0 / g),
            0x38,
            "the other order would differ"
        );
        assert_eq!(m.scales[1], 0x38);
    }

    #[test]
    fn zero_and_tiny_tensors() {
        let m = Nvfp4Matrix::quantize(&[0.0; 32], 2, 16).unwrap();
        assert_eq!(m.tensor_scale, 1.0);
        assert_eq!(m.scales, vec![0, 0]);
        assert!(m.codes.iter().all(|&b| b == 0));
        assert!(m.dequantize().iter().all(|v| v.to_bits() == 0));
        let m = Nvfp4Matrix::quantize(&[-0.0; 16], 1, 16).unwrap();
        assert!(m.codes.iter().all(|&b| b == 0x88));
        assert!(
            m.dequantize()
                .iter()
                .all(|v| *v == 0.0 && v.is_sign_negative())
        );
        // So tiny that amax / 2688 underflows: global falls back to 1 and all becomes zero.
        let mut v = [0.0f32; 16];
        v[0] = f32::from_bits(3);
        v[1] = -f32::from_bits(2);
        let m = Nvfp4Matrix::quantize(&v, 1, 16).unwrap();
        assert_eq!(m.tensor_scale, 1.0);
        assert_eq!(e2m1::unpack(&m.codes, 2), vec![0, 8]);
        // Tiny but representable: the tensor scale is an f32 subnormal and still works.
        let mut v = [0.0f32; 16];
        v[0] = 1e-40;
        v[1] = -5e-41;
        let m = Nvfp4Matrix::quantize(&v, 1, 16).unwrap();
        assert!(m.tensor_scale > 0.0 && m.tensor_scale.is_subnormal());
        let c = e2m1::unpack(&m.codes, 2);
        assert_eq!(c[0], 7);
        assert_eq!(c[1] & 8, 8);
        // A block far below the tensor's range gets block scale 0 and signed zeros.
        let mut v = [0.0f32; 32];
        v[0] = 1e6;
        v[16] = 1e-3;
        v[17] = -1e-3;
        let m = Nvfp4Matrix::quantize(&v, 1, 32).unwrap();
        assert_eq!(m.scales[1], 0);
        assert_eq!(e2m1::unpack(&m.codes, 32)[16..18], [0, 8]);
    }

    #[test]
    fn exact_round_trip_with_power_of_two_tensor_scale() {
        // One block per finite positive block scale (and a zero block), each anchored by a ±6
        // element, and one block at scale 448: then amax_tensor = 2688 * g, global = g exactly,
        // every block recovers its scale and every element its code.
        for k in [-100, -10, 0, 10, 100] {
            let g = 2f32.powi(k);
            let mut codes = Vec::new();
            let mut scales = Vec::new();
            for s in 0..=e4m3::MAX_CODE {
                for variant in 0..2u8 {
                    let block: Vec<u8> = if s == 0 {
                        vec![variant * 8; BLOCK]
                    } else {
                        std::iter::once(if variant == 0 { 7 } else { 15 })
                            .chain((0..15).map(|i| i + variant))
                            .collect()
                    };
                    codes.extend(block);
                    scales.push(s);
                }
            }
            let cols = scales.len() * BLOCK;
            let q = Nvfp4Matrix::from_parts(1, cols, e2m1::pack(&codes), scales, g).unwrap();
            let dq = q.dequantize();
            for (i, &v) in dq.iter().enumerate() {
                let bs = f64::from(e4m3::decode(q.scales[i / BLOCK]));
                let want = f64::from(e2m1::VALUES[usize::from(codes[i])]) * bs * f64::from(g);
                assert_eq!(f64::from(v), want, "exact dequant, k {k} i {i}");
            }
            let q2 = Nvfp4Matrix::quantize(&dq, 1, cols).unwrap();
            assert_eq!(q2, q, "k {k}");
        }
    }

    #[test]
    fn matrix_layout_and_accessors() {
        let (rows, cols) = (3, 48);
        let values: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.03)
            .collect();
        let m = Nvfp4Matrix::quantize(&values, rows, cols).unwrap();
        assert_eq!(m.codes.len(), rows * cols / 2);
        assert_eq!(m.scales.len(), rows * cols / 16);
        assert_eq!(m.stored_bytes(), rows * cols / 2 + rows * cols / 16);
        let all = m.dequantize();
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            m.dequantize_row_into(r, &mut row);
            assert_eq!(bits(&row), bits(&all[r * cols..(r + 1) * cols]));
            for c in 0..cols {
                assert_eq!(m.value(r, c).to_bits(), all[r * cols + c].to_bits());
            }
        }
        // Pack order: element 0 in the low nibble.
        assert_eq!(m.codes[0] & 0xF, e2m1::unpack(&m.codes, 1)[0]);
        let (s, c) = quantize_block(&values[..16], m.tensor_scale);
        assert_eq!(m.scales[0], s);
        assert_eq!(m.codes[0], c[0] | (c[1] << 4));
        let back = Nvfp4Matrix::from_parts(
            rows,
            cols,
            m.codes.clone(),
            m.scales.clone(),
            m.tensor_scale,
        )
        .unwrap();
        assert_eq!(back, m);
        let e = Nvfp4Matrix::quantize(&[], 0, 16).unwrap();
        assert!(e.dequantize().is_empty() && e.stored_bytes() == 0);
    }

    #[test]
    fn errors() {
        assert_eq!(
            Nvfp4Matrix::quantize(&[0.0; 24], 1, 24),
            Err(FormatError::NotBlockAligned {
                format: WeightFormat::Nvfp4,
                cols: 24,
                block: 16
            })
        );
        assert!(matches!(
            Nvfp4Matrix::quantize(&[0.0; 16], 2, 16),
            Err(FormatError::Size {
                expected: 128,
                got: 64,
                ..
            })
        ));
        let mut v = vec![1.0f32; 32];
        v[17] = f32::NEG_INFINITY;
        assert_eq!(
            Nvfp4Matrix::quantize(&v, 2, 16),
            Err(FormatError::NonFinite {
                format: WeightFormat::Nvfp4,
                index: 17
            })
        );
        v[17] = f32::NAN;
        assert!(matches!(
            Nvfp4Matrix::quantize(&v, 2, 16),
            Err(FormatError::NonFinite { index: 17, .. })
        ));
        assert!(matches!(
            Nvfp4Matrix::from_parts(1, 32, vec![0; 15], vec![0; 2], 1.0),
            Err(FormatError::Size {
                expected: 16,
                got: 15,
                ..
            })
        ));
        assert!(matches!(
            Nvfp4Matrix::from_parts(1, 32, vec![0; 16], vec![0; 1], 1.0),
            Err(FormatError::Size {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert!(matches!(
            Nvfp4Matrix::from_parts(1, 8, vec![0; 4], vec![], 1.0),
            Err(FormatError::NotBlockAligned { cols: 8, .. })
        ));
        assert!(matches!(
            Nvfp4Matrix::from_parts(usize::MAX, 32, vec![], vec![], 1.0),
            Err(FormatError::ShapeOverflow { .. })
        ));
        // NaN block scale code dequantises to NaN.
        let m = Nvfp4Matrix::from_parts(1, 16, vec![0x11; 8], vec![0x7F], 1.0).unwrap();
        assert!(m.dequantize().iter().all(|v| v.is_nan()));
    }

    fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
        (1usize..4, 1usize..5, -120i32..=90).prop_flat_map(|(rows, blocks, e0)| {
            let cols = blocks * BLOCK;
            // Blocks within 2^30 of each other, so some blocks use subnormal or zero scales.
            let block =
                (0i32..30, prop::collection::vec(-8.0f64..8.0, BLOCK)).prop_map(move |(de, ms)| {
                    ms.into_iter()
                        .enumerate()
                        .map(|(i, m)| {
                            if i % 7 == 3 {
                                -0.0
                            } else {
                                (m * 2f64.powi(e0 + de)) as f32
                            }
                        })
                        .collect::<Vec<f32>>()
                });
            prop::collection::vec(block, rows * blocks)
                .prop_map(move |bs| (rows, cols, bs.concat()))
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn codes_are_nearest_and_error_is_bounded((rows, cols, values) in matrix()) {
            let m = Nvfp4Matrix::quantize(&values, rows, cols).unwrap();
            let amax = values.iter().fold(0.0f32, |a, v| a.max(v.abs()));
            prop_assert_eq!(m.tensor_scale, tensor_scale_for(amax));
            let g = m.tensor_scale;
            let dq = m.dequantize();
            for (b, block) in values.chunks(BLOCK).enumerate() {
                let bamax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                prop_assert_eq!(m.scales[b], e4m3::encode(bamax / (6.0 * g)));
                let bs = e4m3::decode(m.scales[b]);
                let denom = bs * g;
                if m.scales[b] >= 0x08 {
                    // A normal block scale is within 1/16 of the ideal one, so the block's
                    // largest element overshoots 6 by at most 6/15.
                    prop_assert!(f64::from(bamax) / f64::from(denom) <= 6.4 + 1e-4);
                }
                for (j, &x) in block.iter().enumerate() {
                    let i = b * BLOCK + j;
                    let code = e2m1::code_at(&m.codes, i);
                    let want = if denom == 0.0 { nearest(x * 0.0) } else { nearest(x / denom) };
                    prop_assert_eq!(code, want, "i {} x {}", i, x);
                    let q = dq[i];
                    prop_assert_eq!(q.to_bits(), ((e2m1::VALUES[usize::from(code)] * bs) * g).to_bits());
                    prop_assert_eq!(q.is_sign_negative(), x.is_sign_negative());
                    // Rounding error at most half the largest grid gap (1 unit) unless the
                    // element saturated at 6 units; dequant rounding adds one f32 ulp.
                    let (xf, qf, d) = (f64::from(x), f64::from(q), f64::from(denom));
                    if denom > 0.0 && (xf / d).abs() <= 6.0 {
                        prop_assert!((xf - qf).abs() <= d * (1.0 + 1e-6) + qf.abs() * 1e-7 + 1e-44);
                    }
                }
            }
        }
    }
}
