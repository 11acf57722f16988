//! fp4 E2M1: the element type of MXFP4 and NVFP4.
//!
//! A code is 4 bits: bit 3 is the sign, bits 2..1 the exponent (bias 1) and bit 0 the mantissa.
//! There is no Inf and no NaN, so the 16 codes are exactly the 8 magnitudes
//! `0, 0.5, 1, 1.5, 2, 3, 4, 6` with either sign (code 8 is -0.0).
//!
//! Codes are stored two per byte ([`pack`]): element `2j` in the low nibble of byte `j` and
//! element `2j + 1` in the high nibble. This is the order the OCP MX spec and the GPU fp4
//! instructions use, so a kernel can feed the bytes straight to the hardware.

/// The value of every code, indexed by the code. Codes 8..15 are the negatives of 0..7.
pub const VALUES: [f32; 16] = [
    0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
];

/// The sign bit of a code.
pub const SIGN: u8 = 0x8;

/// The largest magnitude, reached by codes 7 and 15.
pub const MAX: f32 = 6.0;

/// The value of the low 4 bits of `code` (the high bits are ignored, so a packed byte's low
/// nibble can be passed as is).
pub fn decode(code: u8) -> f32 {
    VALUES[usize::from(code & 0xF)]
}

/// Rounds `x` to the nearest E2M1 value and returns its code.
///
/// - Ties go to the code whose mantissa bit is 0 ("ties to even", as IEEE and the OCP MX spec
///   round): 0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4.
/// - |x| > 6, including ±inf, saturates to ±6: E2M1 has no Inf, and saturating is what the MX
///   quantisers want (the scale is chosen so that only the rounding excess of the largest
///   element can overflow).
/// - The sign is always kept, also for values that round to zero (-0.1 -> code 8, -0.0),
///   as the OCP spec does; dequantised weights then keep the sign of the original.
/// - NaN has no encoding. `encode` is total, so it maps NaN to +6 (code 7, the positive
///   maximum) rather than to a zero that would hide it; callers that must not lose a NaN
///   check first, as the MXFP4/NVFP4 quantisers do (they return
///   [`FormatError::NonFinite`](super::FormatError::NonFinite)).
pub fn encode(x: f32) -> u8 {
    if x.is_nan() {
        return 7;
    }
    let sign = if x.is_sign_negative() { SIGN } else { 0 };
    let a = x.abs();
    // The decision points are the midpoints between neighbouring magnitudes. At a midpoint
    // the comparison sends the value to the even code (mantissa bit 0), hence `<=` towards an
    // even code below and `<` where the code below is odd.
    let magnitude = if a <= 0.25 {
        0 // 0.0, even
    } else if a < 0.75 {
        1 // 0.5, odd: the tie 0.75 goes up to 1.0
    } else if a <= 1.25 {
        2 // 1.0, even
    } else if a < 1.75 {
        3 // 1.5
    } else if a <= 2.5 {
        4 // 2.0
    } else if a < 3.5 {
        5 // 3.0
    } else if a <= 5.0 {
        6 // 4.0
    } else {
        7 // 6.0, and saturation
    };
    sign | magnitude
}

/// Packs 4-bit codes two per byte: byte `j` holds `codes[2j]` in its low nibble and
/// `codes[2j + 1]` in its high nibble. An odd-length input leaves the last high nibble 0.
/// Only the low 4 bits of each code are used.
pub fn pack(codes: &[u8]) -> Vec<u8> {
    codes
        .chunks(2)
        .map(|pair| {
            let lo = pair[0] & 0xF;
            let hi = pair.get(1).map_or(0, |c| c & 0xF);
            lo | (hi << 4)
        })
        .collect()
}

/// The first `n` codes of `bytes` (packed as by [`pack`]).
///
/// # Panics
/// If `bytes` holds fewer than `n` codes (`bytes.len() < n.div_ceil(2)`).
pub fn unpack(bytes: &[u8], n: usize) -> Vec<u8> {
    assert!(
        bytes.len() >= n.div_ceil(2),
        "e2m1::unpack: {} bytes hold fewer than {n} codes",
        bytes.len()
    );
    (0..n).map(|i| code_at(bytes, i)).collect()
}

/// Code `i` of packed `bytes`.
///
/// # Panics
/// If `i / 2` is out of range of `bytes`.
pub fn code_at(bytes: &[u8], i: usize) -> u8 {
    // Even elements sit in the low nibble, odd ones in the high nibble.
    let shift = (i % 2) * 4;
    (bytes[i / 2] >> shift) & 0xF
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The magnitudes, written independently of [`VALUES`]: `2^(e-1) * (1 + m/2)` for
    /// exponent field `e >= 1`, `m/2` for `e == 0`.
    fn formula(code: u8) -> f32 {
        let sign = if code & 8 != 0 { -1.0 } else { 1.0 };
        let e = i32::from((code >> 1) & 3);
        let m = f64::from(code & 1);
        let mag = if e == 0 {
            m * 0.5
        } else {
            2f64.powi(e - 1) * (1.0 + m / 2.0)
        };
        (sign * mag) as f32
    }

    /// Brute-force nearest by scanning the 8 magnitudes; a tie picks the even code. Saturates.
    fn reference(x: f32) -> u8 {
        let a = f64::from(x.abs());
        let mut best = 0u8;
        for c in 1..8u8 {
            let d = (f64::from(VALUES[usize::from(c)]) - a).abs();
            let db = (f64::from(VALUES[usize::from(best)]) - a).abs();
            if d < db || (d == db && c & 1 == 0) {
                best = c;
            }
        }
        best | if x.is_sign_negative() { 8 } else { 0 }
    }

    #[test]
    fn all_codes_decode() {
        for c in 0..16u8 {
            let v = decode(c);
            assert_eq!(v.to_bits(), formula(c).to_bits(), "code {c}");
            // High bits are ignored.
            assert_eq!(decode(c | 0xF0).to_bits(), v.to_bits());
        }
        assert!(decode(8).is_sign_negative() && decode(8) == 0.0);
        assert_eq!(decode(7), 6.0);
        assert_eq!(decode(15), -6.0);
    }

    #[test]
    fn encode_decode_round_trips_every_code() {
        for c in 0..16u8 {
            assert_eq!(encode(decode(c)), c, "code {c}");
        }
        assert_eq!(encode(-0.0), 8);
        assert_eq!(encode(0.0), 0);
    }

    #[test]
    fn ties_go_to_even() {
        let cases = [
            (0.25, 0),
            (0.75, 2),
            (1.25, 2),
            (1.75, 4),
            (2.5, 4),
            (3.5, 6),
            (5.0, 6),
        ];
        for (x, c) in cases {
            assert_eq!(encode(x), c, "{x}");
            assert_eq!(encode(-x), c | 8, "-{x}");
            assert_eq!(reference(x), c, "reference {x}");
            // One ulp either side of the tie leaves it.
            let up = f32::from_bits(x.to_bits() + 1);
            let dn = f32::from_bits(x.to_bits() - 1);
            assert_eq!(encode(up), reference(up));
            assert_eq!(encode(dn), reference(dn));
            assert_ne!(encode(up), encode(dn), "{x}");
        }
    }

    #[test]
    fn dense_sweep_matches_brute_force() {
        // Every f32 in [-8, 8] with a stride in the bit pattern, plus every bit pattern near
        // the decision points.
        let limit = 8.0f32.to_bits();
        let mut n = 0;
        for bits in (0..=limit).step_by(97) {
            for x in [f32::from_bits(bits), -f32::from_bits(bits)] {
                assert_eq!(encode(x), reference(x), "{x:e}");
                n += 1;
            }
        }
        for mid in [0.25f32, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0] {
            for d in -64i32..=64 {
                let x = f32::from_bits(mid.to_bits().wrapping_add_signed(d));
                assert_eq!(encode(x), reference(x), "{x:e}");
                assert_eq!(encode(-x), reference(-x), "{:e}", -x);
            }
        }
        assert!(n > 20_000_000);
    }

    #[test]
    fn saturation_and_specials() {
        for x in [6.0001f32, 7.0, 8.0, 1e30, f32::MAX, f32::INFINITY] {
            assert_eq!(encode(x), 7, "{x}");
            assert_eq!(encode(-x), 15, "-{x}");
        }
        assert_eq!(encode(-0.1), 8);
        assert_eq!(encode(f32::from_bits(1)), 0);
        assert_eq!(encode(-f32::from_bits(1)), 8);
        assert_eq!(encode(f32::NAN), 7);
        assert_eq!(encode(-f32::NAN), 7);
    }

    #[test]
    fn pack_order_and_round_trip() {
        assert_eq!(pack(&[0x1, 0x2]), vec![0x21]);
        assert_eq!(pack(&[0x1, 0x2, 0xF]), vec![0x21, 0x0F]);
        assert_eq!(pack(&[]), Vec::<u8>::new());
        // High bits of the inputs are dropped.
        assert_eq!(pack(&[0xF3, 0xA4]), vec![0x43]);
        let codes: Vec<u8> = (0..37u8).map(|i| (i * 7) % 16).collect();
        let bytes = pack(&codes);
        assert_eq!(bytes.len(), 19);
        assert_eq!(unpack(&bytes, codes.len()), codes);
        for (i, &c) in codes.iter().enumerate() {
            assert_eq!(code_at(&bytes, i), c);
        }
        assert_eq!(code_at(&bytes, 37), 0, "padding nibble");
    }

    #[test]
    #[should_panic]
    fn unpack_too_short_panics() {
        unpack(&[0], 3);
    }
}
