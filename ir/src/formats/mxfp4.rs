//! MXFP4 (OCP Microscaling Formats v1.0): blocks of 32 E2M1 elements sharing one E8M0 scale.
//!
//! Blocks run along the last (reduction, K) axis of a row-major `rows x cols` matrix, so a
//! dot-product kernel reads one scale per 32 consecutive weights of a row. `cols` must be a
//! multiple of 32: a block never straddles two rows.
//!
//! Quantisation follows the OCP rule exactly, because GPU kernels and other tools are checked
//! against these bits:
//!
//! - `amax = max |v|` over the block;
//! - `shared_exp = floor(log2(amax)) - 2`, read exactly from the f32 exponent bits (for an f32
//!   subnormal, from the position of its highest set bit). The `- 2` aligns `amax` with E2M1's
//!   largest binade `[4, 8)`, so the largest element lands on 4 or 6 (or saturates to 6);
//! - the scale code is `s = clamp(shared_exp + 127, 0, 254)`, and the clamped exponent
//!   `s - 127` is what elements are divided by (for `amax < 2^-125` the scale stays at 2^-127);
//! - each element is `e2m1::encode(v / 2^(s-127))`: round to nearest, ties to even, saturating
//!   at ±6. The power-of-two division is done exactly (in f64).
//!
//! An all-zero block gets scale code 0 (2^-127) and zero codes. Signs are kept everywhere:
//! `-0.0`, and a negative value that rounds to zero, get code 8 (-0.0), as in the OCP spec and
//! the numpy reference (`tests/fixtures/make_fixtures.py`).
//!
//! Dequantisation is `e2m1::VALUES[code] * 2^(s-127)` in f32, which is exact for every scale a
//! finite f32 block quantises to (codes 0..=252; at code 0, `0.5 * 2^-127` up to `1.5 * 2^-127`
//! are f32 subnormals, but with at most 2 significant bits they are still exact). Codes 253 and
//! 254 can only come from [`Mxfp4Matrix::from_parts`]; their larger products overflow f32 to
//! ±inf. Scale code 255 (NaN) dequantises to NaN.

use super::blocks::{self, PartNames};
use super::{FormatError, WeightFormat, e2m1, e8m0};

/// Elements per scale block along the reduction axis.
pub const BLOCK: usize = 32;

const NAMES: PartNames = PartNames {
    values: "mxfp4 f32 input values",
    codes: "mxfp4 packed codes",
    scales: "mxfp4 e8m0 scales",
};

/// A block-scaled fp4 matrix in MXFP4.
///
/// Invariants (checked by [`Mxfp4Matrix::quantize`] and [`Mxfp4Matrix::from_parts`], assumed by
/// the other methods, which may panic if the public fields are set inconsistently by hand):
/// `cols % 32 == 0`, `codes.len() == rows * cols / 2`, `scales.len() == rows * cols / 32`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mxfp4Matrix {
    pub rows: usize,
    pub cols: usize,
    /// E2M1 codes, row-major, packed two per byte as by [`e2m1::pack`] (element 2j in the low
    /// nibble of byte j).
    pub codes: Vec<u8>,
    /// One E8M0 code per block, row-major: block `b` of row `r` is `scales[r * cols / 32 + b]`.
    pub scales: Vec<u8>,
}

/// `floor(log2(a))` for a finite `a > 0`, exact: the unbiased exponent of a normal f32, or the
/// position of the leading mantissa bit of a subnormal (2^-149 is bit 0). Infinity gives 128.
fn floor_log2(a: f32) -> i32 {
    let bits = a.to_bits() & 0x7FFF_FFFF;
    let biased = (bits >> 23) as i32;
    if biased == 0 {
        // Subnormal: a = mantissa * 2^-149, mantissa != 0 since a > 0.
        -149 + (31 - bits.leading_zeros() as i32)
    } else {
        biased - 127
    }
}

/// `2^e` as f64, built from its bits so it is exact (|e| <= 127 here, well inside f64).
fn pow2_f64(e: i32) -> f64 {
    f64::from_bits(((1023 + e) as u64) << 52)
}

/// The E8M0 scale code the OCP rule picks for a block whose largest magnitude is `amax`
/// (0 for an all-zero block).
pub fn scale_code(amax: f32) -> u8 {
    if amax == 0.0 {
        return 0;
    }
    let shared_exp = floor_log2(amax) - 2;
    (shared_exp + e8m0::BIAS).clamp(0, 254) as u8
}

/// Quantises one block of 32 values by the OCP rule (see the module docs): returns the E8M0
/// scale code and the 32 E2M1 codes (unpacked, in order).
///
/// The values should be finite ([`Mxfp4Matrix::quantize`] checks that and returns an error);
/// here a NaN is skipped when taking `amax` and encodes as [`e2m1::encode`] documents, and an
/// infinity picks scale code 253 and saturates, so that this never panics on odd input.
///
/// # Panics
/// If `values.len() != 32`.
pub fn quantize_block(values: &[f32]) -> (u8, [u8; BLOCK]) {
    assert_eq!(
        values.len(),
        BLOCK,
        "mxfp4::quantize_block takes exactly {BLOCK} values"
    );
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let s = scale_code(amax);
    // v / 2^(s-127) as v * 2^(127-s), in f64 where both the factor (2^-127..2^127) and the
    // product are exact. The product's cast to f32 is exact except for results below 2^-126,
    // far under the first rounding threshold 0.25, which keep their sign and encode to ±0.
    let inv_scale = pow2_f64(-e8m0::exponent(s));
    let mut codes = [0u8; BLOCK];
    for (c, &v) in codes.iter_mut().zip(values) {
        *c = e2m1::encode((f64::from(v) * inv_scale) as f32);
    }
    (s, codes)
}

/// The 32 values of one block: `VALUES[code] * 2^(s-127)` (see the module docs for exactness).
fn dequantize_block(scale: u8, packed: &[u8], out: &mut [f32]) {
    let s = e8m0::decode(scale);
    for (pair, &byte) in out.chunks_exact_mut(2).zip(packed) {
        pair[0] = e2m1::decode(byte) * s;
        pair[1] = e2m1::decode(byte >> 4) * s;
    }
}

impl Mxfp4Matrix {
    /// Quantises a row-major `rows x cols` matrix, blocks of 32 along each row.
    ///
    /// Errors: `cols % 32 != 0` ([`FormatError::NotBlockAligned`]), `values.len() !=
    /// rows * cols` ([`FormatError::Size`], counted in bytes of f32 input), a NaN or infinity
    /// ([`FormatError::NonFinite`] with the flat index of the first one: no scale could
    /// represent it, and silently saturating would corrupt a weight).
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Result<Self, FormatError> {
        blocks::check_input(WeightFormat::Mxfp4, &NAMES, values, rows, cols, BLOCK)?;
        let (codes, scales) = blocks::quantize_blocks(values, quantize_block);
        Ok(Self {
            rows,
            cols,
            codes,
            scales,
        })
    }

    /// Wraps stored codes and scales (e.g. read from a checkpoint) after checking the shape:
    /// `cols % 32 == 0`, `codes.len() == rows * cols / 2`, `scales.len() == rows * cols / 32`.
    /// Any code values are accepted (scale 255 dequantises to NaN).
    pub fn from_parts(
        rows: usize,
        cols: usize,
        codes: Vec<u8>,
        scales: Vec<u8>,
    ) -> Result<Self, FormatError> {
        blocks::check_parts(
            WeightFormat::Mxfp4,
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
            dequantize_block,
        );
    }

    /// Bytes of the stored representation: packed codes plus scales.
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
        e2m1::decode(e2m1::code_at(&self.codes, i)) * e8m0::decode(self.scales[i / BLOCK])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `m * 2^e` in f64, then to f32 (exact when the result is representable).
    fn ldexp(m: f64, e: i32) -> f32 {
        (m * 2f64.powi(e)) as f32
    }

    fn block_from_codes(s: u8, codes: &[u8; BLOCK]) -> Vec<f32> {
        let m = Mxfp4Matrix::from_parts(1, BLOCK, e2m1::pack(codes), vec![s]).unwrap();
        m.dequantize()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn floor_log2_is_exact() {
        for e in -149..=127 {
            let p = ldexp(1.0, e);
            assert_eq!(floor_log2(p), e, "2^{e}");
            let below_next = f32::from_bits(ldexp(2.0, e).to_bits().wrapping_sub(1));
            if e < 127 {
                assert_eq!(floor_log2(below_next), e, "just below 2^{}", e + 1);
            }
        }
        assert_eq!(floor_log2(f32::MAX), 127);
        assert_eq!(floor_log2(f32::from_bits(1)), -149);
        assert_eq!(floor_log2(f32::from_bits(0x7F_FFFF)), -127);
        assert_eq!(floor_log2(f32::INFINITY), 128);
    }

    #[test]
    fn scale_for_every_binade() {
        // amax in [2^E, 2^(E+1)) for every f32 binade, at its bottom, middle and top.
        let mut reached = [false; 256];
        for e in -149..=127 {
            let expected = (e - 2 + 127).clamp(0, 254) as u8;
            let lo = ldexp(1.0, e);
            let hi = if e == 127 {
                f32::MAX
            } else {
                f32::from_bits(ldexp(1.0, e + 1).to_bits() - 1)
            };
            let mid = f32::from_bits((lo.to_bits() + hi.to_bits()) / 2);
            for amax in [lo, mid, hi] {
                assert_eq!(floor_log2(amax), e);
                let mut block = [0.0f32; BLOCK];
                block[7] = -amax;
                block[3] = amax / 3.0;
                let (s, codes) = quantize_block(&block);
                assert_eq!(s, expected, "amax {amax:e}");
                reached[usize::from(s)] = true;
                let scale = f64::from(e8m0::decode(s));
                if s > 0 {
                    // The largest element sits in [4, 8) scale units: code 6 or 7.
                    assert!((4.0..8.0).contains(&(f64::from(amax) / scale)));
                    assert!(codes[7] == 14 || codes[7] == 15, "{amax:e}: {}", codes[7]);
                } else {
                    assert!(f64::from(amax) / scale < 8.0);
                }
                // Dequantise and requantise: a fixed point.
                let dq = block_from_codes(s, &codes);
                let (s2, codes2) = quantize_block(&dq);
                assert_eq!((s2, codes2), (s, codes), "amax {amax:e}");
            }
        }
        // Scale codes 0..=252 are reachable from finite f32; 253 and 254 are not.
        assert!(reached[..=252].iter().all(|&r| r));
        assert!(!reached[253] && !reached[254] && !reached[255]);
    }

    #[test]
    fn every_code_with_every_scale_round_trips() {
        // A block holding every code, anchored by a magnitude-6 or magnitude-4 element so that
        // the requantised amax falls in [4, 8) scale units and recovers the same scale.
        for anchor in [7u8, 15, 6, 14] {
            for s in 0..=252u8 {
                let codes: [u8; BLOCK] =
                    std::array::from_fn(|i| if i == 0 { anchor } else { ((i - 1) % 16) as u8 });
                let dq = block_from_codes(s, &codes);
                let scale = f64::from(e8m0::decode(s));
                for (i, &v) in dq.iter().enumerate() {
                    // Exact: the product of an E2M1 value and the scale, computed in f64.
                    let want = f64::from(e2m1::VALUES[usize::from(codes[i])]) * scale;
                    assert_eq!(f64::from(v), want, "s {s} i {i}");
                    assert_eq!(v.is_sign_negative(), codes[i] & 8 != 0);
                }
                let (s2, codes2) = quantize_block(&dq);
                assert_eq!(s2, s, "anchor {anchor} s {s}");
                assert_eq!(codes2, codes, "anchor {anchor} s {s}");
            }
        }
    }

    #[test]
    fn small_max_blocks_requantise_to_a_finer_scale_with_the_same_values() {
        // Largest magnitude code 5 (3.0) or below: at s >= 1 the requantised amax is below
        // 4 scale units, so the OCP rule picks a finer scale. The codes change but the values
        // do not, as every value is on the finer grid too. At s = 0 the scale cannot drop.
        for top in 1..=5u8 {
            for s in 0..=252u8 {
                let codes: [u8; BLOCK] = std::array::from_fn(|i| {
                    let m = (i % usize::from(top + 1)) as u8;
                    if i % 3 == 0 { m | 8 } else { m }
                });
                let dq = block_from_codes(s, &codes);
                let (s2, codes2) = quantize_block(&dq);
                assert_eq!(
                    bits(&block_from_codes(s2, &codes2)),
                    bits(&dq),
                    "top {top} s {s}"
                );
                let amax = e2m1::VALUES[usize::from(top)] * e8m0::decode(s);
                assert_eq!(s2, scale_code(amax));
                if s == 0 {
                    assert_eq!((s2, codes2), (s, codes));
                } else {
                    assert!(s2 < s, "top {top} s {s}");
                }
            }
        }
    }

    #[test]
    fn ties_round_to_even_codes() {
        for e in [-127, -100, -3, 0, 5, 100, 125] {
            let s = (e + 127) as u8;
            let ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0];
            let even = [0u8, 2, 2, 4, 4, 6, 6];
            let mut block = [0.0f32; BLOCK];
            block[0] = ldexp(6.0, e);
            for (i, &t) in ties.iter().enumerate() {
                block[1 + i] = ldexp(t, e);
                block[8 + i] = ldexp(-t, e);
            }
            let (s2, codes) = quantize_block(&block);
            assert_eq!(s2, s, "e {e}");
            assert_eq!(codes[0], 7);
            for i in 0..ties.len() {
                assert_eq!(codes[1 + i], even[i], "e {e} tie {}", ties[i]);
                assert_eq!(codes[8 + i], even[i] | 8, "e {e} tie -{}", ties[i]);
            }
        }
    }

    #[test]
    fn saturation_in_the_top_binade() {
        for e in [-127, -20, 0, 7, 125] {
            let vals = [7.9, -7.5, 6.5, -6.01, 5.01, -5.99, 5.0, 7.0];
            let mut block = [0.0f32; BLOCK];
            for (b, &v) in block.iter_mut().zip(&vals) {
                *b = ldexp(v, e);
            }
            let (s, codes) = quantize_block(&block);
            assert_eq!(e8m0::exponent(s), e);
            assert_eq!(&codes[..8], &[7, 15, 7, 15, 7, 15, 6, 7], "e {e}");
        }
        // The largest f32: shared exponent 125, f32::MAX / 2^125 is just under 8 -> 6.
        let mut block = [0.0f32; BLOCK];
        block[0] = f32::MAX;
        block[1] = -f32::MAX;
        let (s, codes) = quantize_block(&block);
        assert_eq!(s, 252);
        assert_eq!(&codes[..2], &[7, 15]);
        assert_eq!(block_from_codes(s, &codes)[0], 6.0 * 2f32.powi(125));
    }

    #[test]
    fn zero_and_tiny_blocks() {
        let (s, codes) = quantize_block(&[0.0; BLOCK]);
        assert_eq!((s, codes), (0, [0; BLOCK]));
        // Negative zeros keep their sign bit.
        let (s, codes) = quantize_block(&[-0.0; BLOCK]);
        assert_eq!((s, codes), (0, [8; BLOCK]));
        assert!(
            block_from_codes(s, &codes)
                .iter()
                .all(|v| *v == 0.0 && v.is_sign_negative())
        );
        // Negative values that round to zero give -0.0.
        let mut block = [0.0f32; BLOCK];
        block[0] = 1.0;
        block[1] = -0.05;
        block[2] = 0.05;
        let (s, codes) = quantize_block(&block);
        assert_eq!(s, 125, "scale 2^-2: -0.05 is -0.2 units, rounding to -0");
        assert_eq!(&codes[..3], &[6, 8, 0]);
        // Subnormal amax: the scale clamps at 2^-127 and the elements stay exact.
        let mut block = [0.0f32; BLOCK];
        block[0] = f32::from_bits(1); // 2^-149 -> 2^-22 scale units -> 0
        let (s, codes) = quantize_block(&block);
        assert_eq!((s, codes[0]), (0, 0));
        let mut block = [0.0f32; BLOCK];
        block[0] = ldexp(4.0, -127); // 2^-125: shared exponent -127, exactly at the clamp
        block[1] = ldexp(-3.0, -127);
        block[2] = ldexp(0.5, -127); // 2^-128, an f32 subnormal
        block[3] = ldexp(0.25, -127); // a tie -> 0
        block[4] = ldexp(7.0, -127); // saturates
        block[5] = ldexp(1.5, -127); // an f32 subnormal
        let (s, codes) = quantize_block(&block);
        assert_eq!(s, 0);
        assert_eq!(&codes[..6], &[6, 13, 1, 0, 7, 3]);
        let dq = block_from_codes(s, &codes);
        let want = [4.0, -3.0, 0.5, 0.0, 6.0, 1.5].map(|m| ldexp(m, -127));
        assert_eq!(bits(&dq[..6]), bits(&want));
        assert!(want[2].is_subnormal() && want[5].is_subnormal());
        // One binade up the scale leaves the clamp.
        let mut block = [0.0f32; BLOCK];
        block[0] = ldexp(1.0, -124);
        assert_eq!(quantize_block(&block).0, 1);
    }

    #[test]
    fn matrix_layout_pack_order_and_accessors() {
        let (rows, cols) = (3, 64);
        let mut values = vec![0.0f32; rows * cols];
        for (i, v) in values.iter_mut().enumerate() {
            *v = e2m1::VALUES[i % 16] * (1 + i / 32) as f32;
        }
        values[0] = 1.0; // code 2
        values[1] = 6.0; // code 7
        let m = Mxfp4Matrix::quantize(&values, rows, cols).unwrap();
        assert_eq!(m.codes.len(), rows * cols / 2);
        assert_eq!(m.scales.len(), rows * cols / 32);
        assert_eq!(m.stored_bytes(), rows * cols / 2 + rows * cols / 32);
        assert_eq!(m.codes[0], 0x72, "element 0 in the low nibble");
        let all = m.dequantize();
        assert_eq!(all.len(), rows * cols);
        let mut row = vec![0.0f32; cols];
        for r in 0..rows {
            m.dequantize_row_into(r, &mut row);
            assert_eq!(bits(&row), bits(&all[r * cols..(r + 1) * cols]));
            for c in 0..cols {
                assert_eq!(m.value(r, c).to_bits(), all[r * cols + c].to_bits());
                let (s, codes) = quantize_block(&values[(r * cols + c) / 32 * 32..][..32]);
                assert_eq!(m.scales[(r * cols + c) / 32], s);
                assert_eq!(e2m1::code_at(&m.codes, r * cols + c), codes[c % 32]);
            }
        }
        let back = Mxfp4Matrix::from_parts(rows, cols, m.codes.clone(), m.scales.clone()).unwrap();
        assert_eq!(back, m);
        // Empty matrices are fine.
        let e = Mxfp4Matrix::quantize(&[], 0, 64).unwrap();
        assert!(e.dequantize().is_empty() && e.stored_bytes() == 0);
        let e = Mxfp4Matrix::quantize(&[], 5, 0).unwrap();
        assert!(e.dequantize().is_empty());
    }

    #[test]
    fn nan_scale_dequantises_to_nan_and_huge_scales_overflow() {
        let m = Mxfp4Matrix::from_parts(1, 32, vec![0x72; 16], vec![255]).unwrap();
        assert!(m.dequantize().iter().all(|v| v.is_nan()));
        let m = Mxfp4Matrix::from_parts(1, 32, vec![0x75; 16], vec![253]).unwrap();
        let dq = m.dequantize();
        assert_eq!(dq[0], 3.0 * 2f32.powi(126));
        assert_eq!(dq[1], f32::INFINITY, "6 * 2^126 overflows f32");
    }

    #[test]
    fn errors() {
        assert_eq!(
            Mxfp4Matrix::quantize(&[0.0; 48], 1, 48),
            Err(FormatError::NotBlockAligned {
                format: WeightFormat::Mxfp4,
                cols: 48,
                block: 32
            })
        );
        assert!(matches!(
            Mxfp4Matrix::quantize(&[0.0; 64], 1, 32),
            Err(FormatError::Size {
                expected: 128,
                got: 256,
                ..
            })
        ));
        let mut v = vec![1.0f32; 64];
        v[40] = f32::NAN;
        v[50] = f32::INFINITY;
        assert_eq!(
            Mxfp4Matrix::quantize(&v, 2, 32),
            Err(FormatError::NonFinite {
                format: WeightFormat::Mxfp4,
                index: 40
            })
        );
        v[40] = 0.0;
        assert_eq!(
            Mxfp4Matrix::quantize(&v, 2, 32),
            Err(FormatError::NonFinite {
                format: WeightFormat::Mxfp4,
                index: 50
            })
        );
        v[50] = f32::NEG_INFINITY;
        assert!(Mxfp4Matrix::quantize(&v, 2, 32).is_err());
        assert!(matches!(
            Mxfp4Matrix::from_parts(2, 32, vec![0; 31], vec![0; 2]),
            Err(FormatError::Size {
                expected: 32,
                got: 31,
                ..
            })
        ));
        assert!(matches!(
            Mxfp4Matrix::from_parts(2, 32, vec![0; 32], vec![0; 3]),
            Err(FormatError::Size {
                expected: 2,
                got: 3,
                ..
            })
        ));
        assert!(matches!(
            Mxfp4Matrix::from_parts(2, 33, vec![], vec![]),
            Err(FormatError::NotBlockAligned { cols: 33, .. })
        ));
        assert_eq!(
            Mxfp4Matrix::from_parts(usize::MAX, 64, vec![], vec![]),
            Err(FormatError::ShapeOverflow {
                rows: usize::MAX,
                cols: 64
            })
        );
    }

    #[derive(serde::Deserialize)]
    struct Vectors {
        blocks: Vec<VectorBlock>,
    }

    #[derive(serde::Deserialize)]
    struct VectorBlock {
        values: Vec<f64>,
        scale_code: u8,
        codes: Vec<u8>,
        dequant: Vec<f64>,
    }

    /// Cross-check against the independent numpy implementation's vectors.
    #[test]
    fn matches_numpy_reference_vectors() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/mxfp4_vectors.json"
        );
        let text = std::fs::read_to_string(path).unwrap_or_else(|e| {
            panic!("{path}: {e} (generate it with tests/fixtures/make_fixtures.py)")
        });
        let vectors: Vectors = serde_json::from_str(&text).expect("mxfp4_vectors.json");
        assert!(
            vectors.blocks.len() >= 10,
            "too few vectors to mean anything"
        );
        for (b, block) in vectors.blocks.iter().enumerate() {
            assert_eq!(block.values.len(), BLOCK);
            // The numbers are f32 values printed in full. serde_json (without its
            // float_roundtrip feature) may parse them up to an f64 ulp off, but an f32 is never
            // near the midpoint of two f32s, so casting recovers it exactly.
            let values: Vec<f32> = block.values.iter().map(|&v| v as f32).collect();
            for (&v32, &v64) in values.iter().zip(&block.values) {
                assert!(
                    (f64::from(v32) - v64).abs() <= v64.abs() * 1e-15,
                    "block {b}: {v64}"
                );
            }
            let m = Mxfp4Matrix::quantize(&values, 1, BLOCK).unwrap();
            assert_eq!(m.scales, vec![block.scale_code], "block {b} scale");
            assert_eq!(
                e2m1::unpack(&m.codes, BLOCK),
                block.codes,
                "block {b} codes"
            );
            let want: Vec<f32> = block.dequant.iter().map(|&v| v as f32).collect();
            assert_eq!(bits(&m.dequantize()), bits(&want), "block {b} dequant");
        }
    }

    /// A matrix of `rows x blocks*32` values, each block with its own magnitude range (so
    /// scales vary from the clamp at 2^-127 to the top of f32), plus a few exact zeros.
    fn matrix() -> impl Strategy<Value = (usize, usize, Vec<f32>)> {
        (1usize..4, 1usize..4).prop_flat_map(|(rows, blocks)| {
            let cols = blocks * BLOCK;
            let block =
                (-155i32..=124, prop::collection::vec(-8.0f64..8.0, BLOCK)).prop_map(|(e, ms)| {
                    ms.into_iter()
                        .enumerate()
                        .map(|(i, m)| {
                            if i % 11 == 5 {
                                0.0
                            } else {
                                (m * 2f64.powi(e)) as f32
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
        fn error_is_at_most_half_a_grid_step((rows, cols, values) in matrix()) {
            let m = Mxfp4Matrix::quantize(&values, rows, cols).unwrap();
            let dq = m.dequantize();
            for (i, (&x, &q)) in values.iter().zip(&dq).enumerate() {
                let scale = f64::from(e8m0::decode(m.scales[i / BLOCK]));
                let (x, q) = (f64::from(x), f64::from(q));
                let t = x.abs() / scale;
                if t >= 6.0 {
                    // Saturation.
                    prop_assert_eq!(q, 6.0 * scale * x.signum());
                } else {
                    // Half the gap between the grid values around |x|.
                    let grid = &e2m1::VALUES[..8];
                    let k = grid.iter().rposition(|&g| f64::from(g) <= t).unwrap();
                    let gap = f64::from(grid[k + 1] - grid[k]);
                    prop_assert!((x - q).abs() <= 0.5 * gap * scale, "i {} x {} q {}", i, x, q);
                }
                prop_assert_eq!(q.is_sign_negative(), x.is_sign_negative());
            }
            // The chosen scale puts each block's amax in [4, 8) units unless clamped at 0.
            for (b, block) in values.chunks(BLOCK).enumerate() {
                let amax = block.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let scale = f64::from(e8m0::decode(m.scales[b]));
                let t = f64::from(amax) / scale;
                prop_assert!(t < 8.0);
                prop_assert!(m.scales[b] == 0 || t >= 4.0);
            }
        }

        #[test]
        fn quantisation_is_idempotent((rows, cols, values) in matrix()) {
            let q = Mxfp4Matrix::quantize(&values, rows, cols).unwrap();
            let dq = q.dequantize();
            let q2 = Mxfp4Matrix::quantize(&dq, rows, cols).unwrap();
            // Not only the values: the codes and scales themselves are a fixed point.
            prop_assert_eq!(&q2, &q);
            prop_assert_eq!(bits(&q2.dequantize()), bits(&dq));
        }
    }
}
