//! Value types of the IR: an element type and a static shape.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::formats::WeightFormat;

/// Element type of an IR value.
///
/// Activations are declared in the precision a kernel stores them in; the reference interpreter
/// computes every float type in f32 (the oracle every backend is held to) and integer types as
/// i32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    F32,
    Bf16,
    F16,
    I32,
    Mxfp4,
    Nvfp4,
}

impl DType {
    pub fn is_int(self) -> bool {
        self == DType::I32
    }
    pub fn is_float(self) -> bool {
        !self.is_int()
    }
    /// Average bytes per element as stored (block scales included).
    pub fn bytes_per_element(self) -> f64 {
        match self {
            DType::F32 | DType::I32 => 4.0,
            DType::Bf16 => WeightFormat::Bf16.bytes_per_element(),
            DType::F16 => WeightFormat::F16.bytes_per_element(),
            DType::Mxfp4 => WeightFormat::Mxfp4.bytes_per_element(),
            DType::Nvfp4 => WeightFormat::Nvfp4.bytes_per_element(),
        }
    }
}

impl From<WeightFormat> for DType {
    fn from(f: WeightFormat) -> Self {
        match f {
            WeightFormat::F32 => DType::F32,
            WeightFormat::Bf16 => DType::Bf16,
            WeightFormat::F16 => DType::F16,
            WeightFormat::Mxfp4 => DType::Mxfp4,
            WeightFormat::Nvfp4 => DType::Nvfp4,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned));
        f.write_str(s.as_deref().unwrap_or("?"))
    }
}

/// The type of an IR value: element type and static shape (row-major).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TensorType {
    pub shape: Vec<usize>,
    pub dtype: DType,
}

impl TensorType {
    pub fn new(shape: impl Into<Vec<usize>>, dtype: DType) -> Self {
        TensorType {
            shape: shape.into(),
            dtype,
        }
    }
    pub fn f32(shape: impl Into<Vec<usize>>) -> Self {
        Self::new(shape, DType::F32)
    }
    pub fn i32(shape: impl Into<Vec<usize>>) -> Self {
        Self::new(shape, DType::I32)
    }
    pub fn rank(&self) -> usize {
        self.shape.len()
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The size of the last axis (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }
    /// The number of rows when the last axis is the row (product of the leading axes).
    pub fn rows(&self) -> usize {
        self.shape[..self.rank().saturating_sub(1)].iter().product()
    }
    /// Bytes the value takes as stored.
    pub fn bytes(&self) -> f64 {
        self.numel() as f64 * self.dtype.bytes_per_element()
    }
}

impl fmt::Display for TensorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:?}", self.dtype, self.shape)
    }
}
