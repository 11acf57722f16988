//! Weight tensors in their storage formats, and the store the builders' weight names resolve in.

use std::collections::BTreeMap;

use half::{bf16, f16};

use crate::formats::mxfp4::Mxfp4Matrix;
use crate::formats::nvfp4::Nvfp4Matrix;
use crate::formats::{FormatError, WeightFormat};

/// The stored elements of one weight tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum WeightData {
    F32(Vec<f32>),
    Bf16(Vec<bf16>),
    F16(Vec<f16>),
    /// Rows = product of all but the last dimension, columns = the last (reduction) dimension.
    Mxfp4(Mxfp4Matrix),
    Nvfp4(Nvfp4Matrix),
}

/// One weight tensor: its logical shape and its stored elements.
#[derive(Debug, Clone, PartialEq)]
pub struct Weight {
    pub shape: Vec<usize>,
    pub data: WeightData,
}

impl Weight {
    /// Stores `values` (row-major, `shape`) in `format`. Block-scaled formats quantise along the
    /// last dimension, which must be a multiple of the block size.
    pub fn from_f32(
        shape: Vec<usize>,
        values: &[f32],
        format: WeightFormat,
    ) -> Result<Self, FormatError> {
        let numel: usize = shape.iter().product();
        assert_eq!(
            numel,
            values.len(),
            "Weight::from_f32: shape {shape:?} does not match {} values",
            values.len()
        );
        let cols = shape.last().copied().unwrap_or(1);
        let rows = numel.checked_div(cols).unwrap_or(0);
        let data = match format {
            WeightFormat::F32 => WeightData::F32(values.to_vec()),
            WeightFormat::Bf16 => {
                WeightData::Bf16(values.iter().map(|&v| bf16::from_f32(v)).collect())
            }
            WeightFormat::F16 => {
                WeightData::F16(values.iter().map(|&v| f16::from_f32(v)).collect())
            }
            WeightFormat::Mxfp4 => WeightData::Mxfp4(Mxfp4Matrix::quantize(values, rows, cols)?),
            WeightFormat::Nvfp4 => WeightData::Nvfp4(Nvfp4Matrix::quantize(values, rows, cols)?),
        };
        Ok(Weight { shape, data })
    }

    pub fn format(&self) -> WeightFormat {
        match &self.data {
            WeightData::F32(_) => WeightFormat::F32,
            WeightData::Bf16(_) => WeightFormat::Bf16,
            WeightData::F16(_) => WeightFormat::F16,
            WeightData::Mxfp4(_) => WeightFormat::Mxfp4,
            WeightData::Nvfp4(_) => WeightFormat::Nvfp4,
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Bytes of the stored representation (codes and scales for the block formats).
    pub fn stored_bytes(&self) -> usize {
        match &self.data {
            WeightData::F32(v) => v.len() * 4,
            WeightData::Bf16(v) => v.len() * 2,
            WeightData::F16(v) => v.len() * 2,
            WeightData::Mxfp4(m) => m.stored_bytes(),
            WeightData::Nvfp4(m) => m.stored_bytes(),
        }
    }

    /// The values as f32, exactly as a kernel reading this format sees them.
    pub fn to_f32(&self) -> Vec<f32> {
        match &self.data {
            WeightData::F32(v) => v.clone(),
            WeightData::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            WeightData::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            WeightData::Mxfp4(m) => m.dequantize(),
            WeightData::Nvfp4(m) => m.dequantize(),
        }
    }
}

/// Weights by their IR name (see [`crate::model::names`]).
#[derive(Debug, Clone, Default)]
pub struct WeightStore {
    weights: BTreeMap<String, Weight>,
}

impl WeightStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, name: impl Into<String>, weight: Weight) {
        self.weights.insert(name.into(), weight);
    }
    pub fn get(&self, name: &str) -> Option<&Weight> {
        self.weights.get(name)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Weight)> {
        self.weights.iter().map(|(k, v)| (k.as_str(), v))
    }
    pub fn len(&self) -> usize {
        self.weights.len()
    }
    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
    }
    /// Bytes of every stored weight.
    pub fn stored_bytes(&self) -> usize {
        self.weights.values().map(Weight::stored_bytes).sum()
    }
}
