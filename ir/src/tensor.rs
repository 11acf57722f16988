//! Host tensors of the reference interpreter: row-major f32 (every float type) or i32.

use crate::types::{DType, TensorType};

#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

/// A dense host tensor.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl Tensor {
    /// A zero tensor holding a value of type `ty` (f32 storage for every float type).
    pub fn zeros(ty: &TensorType) -> Self {
        let n = ty.numel();
        let data = if ty.dtype == DType::I32 {
            TensorData::I32(vec![0; n])
        } else {
            TensorData::F32(vec![0.0; n])
        };
        Tensor {
            shape: ty.shape.clone(),
            data,
        }
    }

    pub fn from_f32(shape: impl Into<Vec<usize>>, data: Vec<f32>) -> Self {
        let shape = shape.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} vs {} elements",
            data.len()
        );
        Tensor {
            shape,
            data: TensorData::F32(data),
        }
    }

    pub fn from_i32(shape: impl Into<Vec<usize>>, data: Vec<i32>) -> Self {
        let shape = shape.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            data.len(),
            "shape {shape:?} vs {} elements",
            data.len()
        );
        Tensor {
            shape,
            data: TensorData::I32(data),
        }
    }

    /// An empty placeholder (the slot of an operand that an op updates in place).
    pub fn empty() -> Self {
        Tensor {
            shape: vec![0],
            data: TensorData::F32(Vec::new()),
        }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The f32 elements. Panics on an i32 tensor: graph validation guarantees the types, so a
    /// mismatch here is a bug in an op, not bad input.
    pub fn f32(&self) -> &[f32] {
        match &self.data {
            TensorData::F32(v) => v,
            TensorData::I32(_) => panic!("expected an f32 tensor, found i32 {:?}", self.shape),
        }
    }

    pub fn f32_mut(&mut self) -> &mut [f32] {
        match &mut self.data {
            TensorData::F32(v) => v,
            TensorData::I32(_) => panic!("expected an f32 tensor, found i32 {:?}", self.shape),
        }
    }

    pub fn i32(&self) -> &[i32] {
        match &self.data {
            TensorData::I32(v) => v,
            TensorData::F32(_) => panic!("expected an i32 tensor, found f32 {:?}", self.shape),
        }
    }

    pub fn i32_mut(&mut self) -> &mut [i32] {
        match &mut self.data {
            TensorData::I32(v) => v,
            TensorData::F32(_) => panic!("expected an i32 tensor, found f32 {:?}", self.shape),
        }
    }

    pub fn is_i32(&self) -> bool {
        matches!(self.data, TensorData::I32(_))
    }
}
