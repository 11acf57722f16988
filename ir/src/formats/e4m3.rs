//! fp8 E4M3, the OCP "E4M3FN" variant: the block scale of NVFP4.
//!
//! Bit 7 is the sign, bits 6..3 the exponent (bias 7), bits 2..0 the mantissa. The variant
//! trades Inf for range: only `S.1111.111` (0x7F, 0xFF) is NaN, so the largest finite value is
//! `1.75 * 2^8 = 448`. Exponent field 0 holds subnormals `m * 2^-9`.
//!
//! [`encode`] rounds to nearest, ties to even, and saturates ("satfinite"): a finite value or
//! infinity beyond ±448 becomes ±448. That is the convention the GPU conversion instructions
//! used for scales follow, and the only sensible one for a scale (an overflowing scale must
//! still describe its block as well as possible, not become NaN).

/// The canonical NaN code [`encode`] returns (0xFF is NaN too).
pub const NAN: u8 = 0x7F;

/// The largest finite value.
pub const MAX: f32 = 448.0;

/// The code of +448.
pub const MAX_CODE: u8 = 0x7E;

/// The smallest normal value, 2^-6; below it the quantum is the subnormal step 2^-9.
const MIN_NORMAL: f32 = 1.0 / 64.0;

/// The value of `code`; 0x7F and 0xFF are NaN, 0x80 is -0.0.
pub fn decode(code: u8) -> f32 {
    if code & 0x7F == NAN {
        return f32::NAN;
    }
    let sign = u32::from(code >> 7) << 31;
    let exp = u32::from((code >> 3) & 0xF);
    let man = u32::from(code & 0x7);
    let magnitude = if exp == 0 {
        // Subnormal: m * 2^-9, exact in f32 (a small integer times a power of two).
        man as f32 * (1.0 / 512.0)
    } else {
        // Normal: rebias the exponent (7 -> 127) and left-align the 3 mantissa bits.
        f32::from_bits(((exp + 127 - 7) << 23) | (man << 20))
    };
    f32::from_bits(magnitude.to_bits() | sign)
}

/// Rounds `x` to the nearest E4M3 value (ties to even mantissa), saturating to ±448 for finite
/// overflow and for ±inf; NaN gives [`NAN`] (0x7F). The sign is kept, also for values that
/// round to zero (-1e-9 -> 0x80).
pub fn encode(x: f32) -> u8 {
    if x.is_nan() {
        return NAN;
    }
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = x.abs();
    if a >= MAX {
        return sign | MAX_CODE;
    }
    if a < MIN_NORMAL {
        // Quantum 2^-9. `a * 512` is exact: scaling up by a power of two never loses bits
        // (even an f32 subnormal `a` only moves up the exponent range). The rounded result q
        // in 0..=8 is the code itself; q == 8 is 2^-6, code 0x08, the smallest normal.
        let q = (a * 512.0).round_ties_even();
        return sign | q as u8;
    }
    // Normal: a in [2^E, 2^(E+1)) with E in -6..=8, quantum 2^(E-3). a / quantum is in [8, 16)
    // and exact (power-of-two scaling within the normal range); q = 16 carries into the next
    // binade, which the code arithmetic below handles since (E+7)<<3 + 8 == (E+8)<<3.
    let e = ((a.to_bits() >> 23) & 0xFF) as i32 - 127;
    let scaled = a * f32::from_bits(((127 - (e - 3)) as u32) << 23);
    let q = scaled.round_ties_even() as i32;
    // a < 448 = 14 * 2^5 implies q <= 14 at E = 8, so this never reaches the NaN code.
    let code = ((e + 7) << 3) + (q - 8);
    sign | code as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of a code by the textbook formula, in f64, independent of [`decode`].
    fn formula(code: u8) -> f64 {
        let s = if code & 0x80 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((code >> 3) & 0xF);
        let m = f64::from(code & 7);
        if e == 0 {
            s * 2f64.powi(-6) * (m / 8.0)
        } else {
            s * 2f64.powi(e - 7) * (1.0 + m / 8.0)
        }
    }

    /// The 127 non-negative finite values (codes 0x00..=0x7E), ascending, by the formula.
    fn positives() -> Vec<(u8, f64)> {
        (0..=MAX_CODE).map(|c| (c, formula(c))).collect()
    }

    /// Brute force: nearest of all finite values by scanning them, ties to the even code,
    /// beyond 448 saturate.
    fn reference(x: f32, table: &[(u8, f64)]) -> u8 {
        if x.is_nan() {
            return NAN;
        }
        let sign = if x.is_sign_negative() { 0x80 } else { 0 };
        let a = f64::from(x.abs());
        if a >= 448.0 {
            return sign | MAX_CODE;
        }
        let mut best = (0u8, f64::INFINITY);
        for &(c, v) in table {
            let d = (v - a).abs();
            if d < best.1 || (d == best.1 && c & 1 == 0) {
                best = (c, d);
            }
        }
        sign | best.0
    }

    #[test]
    fn all_codes_decode() {
        for c in 0..=255u8 {
            let v = decode(c);
            if c & 0x7F == 0x7F {
                assert!(v.is_nan(), "code {c:#x}");
                continue;
            }
            assert_eq!(f64::from(v), formula(c), "code {c:#x}");
            assert_eq!(v.is_sign_negative(), c & 0x80 != 0, "code {c:#x}");
        }
        assert_eq!(decode(0x7E), 448.0);
        assert_eq!(decode(0xFE), -448.0);
        assert_eq!(decode(0x01), 2f32.powi(-9));
        assert_eq!(decode(0x08), 2f32.powi(-6));
        assert_eq!(decode(0x38), 1.0);
        // Strictly increasing over the positive codes: the code order is the value order.
        let p = positives();
        assert!(p.windows(2).all(|w| w[0].1 < w[1].1));
    }

    #[test]
    fn encode_decode_round_trips_every_code() {
        for c in 0..=255u8 {
            if c & 0x7F == 0x7F {
                continue;
            }
            assert_eq!(encode(decode(c)), c, "code {c:#x}");
        }
        assert_eq!(encode(-0.0), 0x80);
        assert_eq!(encode(0.0), 0x00);
    }

    #[test]
    fn midpoints_round_to_even() {
        let p = positives();
        for w in p.windows(2) {
            let (lo, hi) = (w[0], w[1]);
            let mid = (lo.1 + hi.1) / 2.0;
            let m = mid as f32;
            assert_eq!(f64::from(m), mid, "midpoints are exact in f32");
            let even = if lo.0 & 1 == 0 { lo.0 } else { hi.0 };
            assert_eq!(encode(m), even, "tie {mid}");
            assert_eq!(encode(-m), even | 0x80, "tie -{mid}");
            // Just above and just below leave the tie.
            let up = f32::from_bits(m.to_bits() + 1);
            let dn = f32::from_bits(m.to_bits() - 1);
            assert_eq!(encode(up), hi.0, "above {mid}");
            assert_eq!(encode(dn), lo.0, "below {mid}");
            assert_eq!(encode(-up), hi.0 | 0x80);
            assert_eq!(encode(-dn), lo.0 | 0x80);
        }
    }

    #[test]
    fn sweep_matches_brute_force() {
        let table = positives();
        let mut n = 0;
        // Every f32 bit pattern with a prime stride: all signs, exponents, NaNs and infs.
        for bits in (0..=u32::MAX).step_by(4099) {
            let x = f32::from_bits(bits);
            assert_eq!(encode(x), reference(x, &table), "{x:e} ({bits:#x})");
            n += 1;
        }
        // Densely across the whole E4M3 range (2^-12 .. 2^10).
        let (lo, hi) = (2f32.powi(-12).to_bits(), 1024f32.to_bits());
        for bits in (lo..=hi).step_by(31) {
            let x = f32::from_bits(bits);
            assert_eq!(encode(x), reference(x, &table), "{x:e}");
            assert_eq!(encode(-x), reference(-x, &table), "{:e}", -x);
            n += 2;
        }
        // Around every midpoint, a few ulps either way.
        for w in table.windows(2) {
            let m = ((w[0].1 + w[1].1) / 2.0) as f32;
            for d in -3i32..=3 {
                let x = f32::from_bits(m.to_bits().wrapping_add_signed(d));
                assert_eq!(encode(x), reference(x, &table), "{x:e}");
                n += 1;
            }
        }
        assert!(n > 10_000_000);
    }

    #[test]
    fn saturation() {
        for x in [
            448.0f32,
            448.0001,
            464.0,
            479.0,
            480.0,
            1e10,
            f32::MAX,
            f32::INFINITY,
        ] {
            assert_eq!(encode(x), MAX_CODE, "{x}");
            assert_eq!(encode(-x), MAX_CODE | 0x80, "-{x}");
        }
        // Just below 448 still rounds to 448 (the neighbour below is 416).
        assert_eq!(encode(433.0), MAX_CODE);
        assert_eq!(
            encode(432.0),
            MAX_CODE,
            "tie 416/448 goes to even 448 (0x7E)"
        );
        assert_eq!(encode(431.0), 0x7D);
        assert_eq!(encode(f32::NAN), NAN);
        assert_eq!(encode(-f32::NAN), NAN);
    }

    #[test]
    fn subnormals() {
        let q = 2f32.powi(-9);
        for m in 0..8u8 {
            assert_eq!(encode(f32::from(m) * q), m);
            assert_eq!(decode(m), f32::from(m) * q);
        }
        // Half the smallest subnormal is a tie to zero; anything above rounds up.
        assert_eq!(encode(q / 2.0), 0);
        assert_eq!(encode(-q / 2.0), 0x80);
        assert_eq!(encode(f32::from_bits((q / 2.0).to_bits() + 1)), 1);
        assert_eq!(encode(1.5 * q), 2, "tie 1/2 goes to even 2");
        assert_eq!(encode(2.5 * q), 2, "tie 2/3 goes to even 2");
        assert_eq!(encode(7.5 * q), 8, "tie rounds up into the normal range");
        assert_eq!(encode(f32::from_bits(1)), 0);
        assert_eq!(encode(-1e-9), 0x80);
    }
}
