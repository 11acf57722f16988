//! Number formats: the element types mimo stores weights in, with exact encode/decode.
//!
//! - [`e2m1`]: the 4-bit float of MXFP4/NVFP4 (16 codes, no Inf/NaN), packed two per byte;
//! - [`e4m3`]: fp8 e4m3 (OCP "fn" variant: no Inf, NaN = 0x7f/0xff, max 448);
//! - [`e8m0`]: the power-of-two scale of MXFP4;
//! - [`mxfp4`] / [`nvfp4`]: block-scaled fp4 matrices, quantised by the OCP rule.
//!
//! bf16 and f16 come from the `half` crate.

mod blocks;
pub mod e2m1;
pub mod e4m3;
pub mod e8m0;
pub mod mxfp4;
pub mod nvfp4;

pub use half::{bf16, f16};

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A storage format for a weight tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    F32,
    Bf16,
    F16,
    /// Blocks of 32 E2M1 codes along the reduction axis sharing one E8M0 scale.
    Mxfp4,
    /// Blocks of 16 E2M1 codes sharing one E4M3 scale, plus one f32 scale per tensor.
    Nvfp4,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 5] = [
        WeightFormat::F32,
        WeightFormat::Bf16,
        WeightFormat::F16,
        WeightFormat::Mxfp4,
        WeightFormat::Nvfp4,
    ];

    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::F16 => "f16",
            WeightFormat::Mxfp4 => "mxfp4",
            WeightFormat::Nvfp4 => "nvfp4",
        }
    }

    /// Elements per scale block along the reduction axis, for the block-scaled formats.
    pub fn block_size(self) -> Option<usize> {
        match self {
            WeightFormat::Mxfp4 => Some(mxfp4::BLOCK),
            WeightFormat::Nvfp4 => Some(nvfp4::BLOCK),
            _ => None,
        }
    }

    /// Bytes one stored element takes on average, scales included (per-tensor scales ignored).
    pub fn bytes_per_element(self) -> f64 {
        match self {
            WeightFormat::F32 => 4.0,
            WeightFormat::Bf16 | WeightFormat::F16 => 2.0,
            WeightFormat::Mxfp4 => 0.5 + 1.0 / mxfp4::BLOCK as f64,
            WeightFormat::Nvfp4 => 0.5 + 1.0 / nvfp4::BLOCK as f64,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WeightFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        WeightFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                format!("unknown weight format `{s}` (expected f32, bf16, f16, mxfp4 or nvfp4)")
            })
    }
}

/// Why a tensor could not be put into (or read from) a format.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FormatError {
    #[error("reduction dimension {cols} is not divisible by the {format} block size {block}")]
    NotBlockAligned {
        format: WeightFormat,
        cols: usize,
        block: usize,
    },
    #[error("{what}: expected {expected} bytes, got {got}")]
    Size {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// A quantiser met a NaN or infinity, which no block scale can represent faithfully.
    #[error("{format} cannot quantise the non-finite value at flat index {index}")]
    NonFinite { format: WeightFormat, index: usize },
    /// `rows * cols` does not fit in `usize`.
    #[error("a {rows} x {cols} matrix has more elements than usize can count")]
    ShapeOverflow { rows: usize, cols: usize },
}

/// The element count `rows * cols` of a block-scaled matrix, after checking that the rows split
/// into whole blocks (a block never straddles two rows, so a kernel can stream a row's blocks
/// with one scale each) and that the count does not overflow.
fn block_matrix_len(
    format: WeightFormat,
    rows: usize,
    cols: usize,
    block: usize,
) -> Result<usize, FormatError> {
    // `checked_rem` also turns a (never used) block size of 0 into an error, not a panic.
    if cols.checked_rem(block) != Some(0) {
        return Err(FormatError::NotBlockAligned {
            format,
            cols,
            block,
        });
    }
    rows.checked_mul(cols)
        .ok_or(FormatError::ShapeOverflow { rows, cols })
}

/// The index of the first NaN or infinity in `values`, as the quantisers' error.
fn check_finite(format: WeightFormat, values: &[f32]) -> Result<(), FormatError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(FormatError::NonFinite { format, index }),
        None => Ok(()),
    }
}
