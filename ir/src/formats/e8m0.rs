//! E8M0: the unsigned power-of-two scale shared by a block of MXFP4 elements.
//!
//! Code `c` in `0..=254` stands for `2^(c - 127)`; code 255 is NaN. There is no sign, no zero
//! and no mantissa. Every value, including `2^-127` (an f32 subnormal), is exactly
//! representable in f32, so [`decode`] is exact.

/// The NaN code.
pub const NAN: u8 = 0xFF;

/// The exponent bias: code 127 is 2^0 = 1.
pub const BIAS: i32 = 127;

/// The smallest and largest exponents a finite code stands for.
pub const MIN_EXPONENT: i32 = -127;
pub const MAX_EXPONENT: i32 = 127;

/// `2^(code - 127)` as f32, exact; code 255 is NaN.
pub fn decode(code: u8) -> f32 {
    match code {
        NAN => f32::NAN,
        // 2^-127 is below the f32 normal range: it is the subnormal with only bit 22 set.
        0 => f32::from_bits(1 << 22),
        // Otherwise the code is exactly the f32 biased exponent field (both biases are 127).
        c => f32::from_bits(u32::from(c) << 23),
    }
}

/// The exponent `code - 127` the code stands for. Code 255 (NaN) has none; it returns 128,
/// one past [`MAX_EXPONENT`], so that it never equals a real scale's exponent.
pub fn exponent(code: u8) -> i32 {
    i32::from(code) - BIAS
}

/// The code of `2^e`, or `None` if `e` is outside `-127..=127`.
pub fn from_exponent(e: i32) -> Option<u8> {
    if (MIN_EXPONENT..=MAX_EXPONENT).contains(&e) {
        u8::try_from(e + BIAS).ok()
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_codes() {
        for c in 0..=255u8 {
            let v = decode(c);
            if c == 255 {
                assert!(v.is_nan());
                assert_eq!(from_exponent(exponent(c)), None);
                continue;
            }
            let e = exponent(c);
            assert_eq!(e, i32::from(c) - 127);
            // Independent check in f64, where every 2^e here is a normal number.
            assert_eq!(f64::from(v), 2f64.powi(e), "code {c}");
            assert!(v > 0.0 && v.is_finite());
            assert_eq!(from_exponent(e), Some(c));
        }
        assert_eq!(decode(127), 1.0);
        assert_eq!(decode(0), 2f32.powi(-127));
        assert!(decode(0).is_subnormal());
        assert!(decode(1).is_normal());
        assert_eq!(decode(254), 2f32.powi(127));
        assert_eq!(from_exponent(-128), None);
        assert_eq!(from_exponent(128), None);
        assert_eq!(from_exponent(i32::MIN), None);
        assert_eq!(from_exponent(i32::MAX), None);
    }
}
