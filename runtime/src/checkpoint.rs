//! A Hugging Face safetensors checkpoint: one `model.safetensors`, or the shards listed by
//! `model.safetensors.index.json`, memory-mapped so that a tensor costs nothing until it is read.
//!
//! Headers are parsed (and validated against the file sizes) once, at open, so a truncated or
//! corrupt shard is reported before any weight is converted.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use half::f16;
use memmap2::Mmap;
use mimo_ir::formats::WeightFormat;
use rayon::prelude::*;
pub use safetensors::Dtype;
use safetensors::SafeTensors;
use serde_json::Value;

use crate::error::LoadError;

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// Elements converted per rayon task when reading a large tensor.
const CONVERT_CHUNK: usize = 1 << 16;

/// The tensors of a checkpoint directory, by name.
#[derive(Debug)]
pub struct Checkpoint {
    dir: PathBuf,
    shards: Vec<Shard>,
    tensors: BTreeMap<String, Entry>,
}

#[derive(Debug)]
struct Shard {
    path: PathBuf,
    mmap: Mmap,
}

#[derive(Debug)]
struct Entry {
    shard: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Absolute byte range in the shard's file.
    bytes: std::ops::Range<usize>,
}

impl Checkpoint {
    /// Opens `dir/model.safetensors`, or else the shards of `dir/model.safetensors.index.json`
    /// (the order transformers tries them in).
    pub fn open(dir: &Path) -> Result<Checkpoint, LoadError> {
        let single = dir.join(SINGLE_FILE);
        let index = dir.join(INDEX_FILE);
        let mut ckpt = Checkpoint {
            dir: dir.to_path_buf(),
            shards: Vec::new(),
            tensors: BTreeMap::new(),
        };
        if single.is_file() {
            ckpt.add_shard(&single, None)?;
        } else if index.is_file() {
            let weight_map = read_index(&index)?;
            let mut files: Vec<&String> = weight_map.values().collect();
            files.sort();
            files.dedup();
            for file in files {
                ckpt.add_shard(&dir.join(file), Some((&weight_map, file.as_str())))?;
            }
            for (name, file) in &weight_map {
                if !ckpt.tensors.contains_key(name) {
                    return Err(LoadError::invalid(
                        dir.join(file),
                        format!(
                            "tensor `{name}` is listed in {INDEX_FILE} but not stored in this file"
                        ),
                    ));
                }
            }
        } else {
            return Err(LoadError::invalid(
                dir,
                format!("no {SINGLE_FILE} or {INDEX_FILE} in this directory"),
            ));
        }
        Ok(ckpt)
    }

    /// Maps `path` and records its tensors; with an index, only those the index assigns to it.
    fn add_shard(
        &mut self,
        path: &Path,
        index: Option<(&HashMap<String, String>, &str)>,
    ) -> Result<(), LoadError> {
        let file = File::open(path).map_err(|e| LoadError::io(path, e))?;
        // SAFETY: the map is read-only and private to this process. It is undefined behaviour only
        // if another process truncates or rewrites the file while it is mapped; checkpoints are
        // immutable inputs (every safetensors loader, transformers' included, makes the same
        // assumption), and the alternative, reading tens of GB into memory up front, is worse.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| LoadError::io(path, e))?;
        let (header_len, metadata) =
            SafeTensors::read_metadata(&mmap).map_err(|e| LoadError::Safetensors {
                file: path.to_path_buf(),
                message: e.to_string(),
            })?;
        let data_start = 8 + header_len;
        let shard = self.shards.len();
        for (name, info) in metadata.tensors() {
            if let Some((weight_map, this_file)) = index
                && weight_map.get(&name).is_some_and(|f| f != this_file)
            {
                continue; // the index assigns this name to another shard
            }
            let (start, end) = info.data_offsets;
            let entry = Entry {
                shard,
                dtype: info.dtype,
                shape: info.shape.clone(),
                bytes: data_start + start..data_start + end,
            };
            if let Some(previous) = self.tensors.insert(name.clone(), entry) {
                return Err(LoadError::invalid(
                    path,
                    format!(
                        "tensor `{name}` is also stored in {}",
                        self.shards[previous.shard].path.display()
                    ),
                ));
            }
        }
        self.shards.push(Shard {
            path: path.to_path_buf(),
            mmap,
        });
        Ok(())
    }

    /// The checkpoint's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Every tensor name, sorted.
    pub fn tensor_names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// The dtype and shape of tensor `name`, if the checkpoint has it.
    pub fn info(&self, name: &str) -> Option<(Dtype, &[usize])> {
        self.tensors
            .get(name)
            .map(|e| (e.dtype, e.shape.as_slice()))
    }

    /// The file tensor `name` is stored in (for error messages); the directory when absent.
    pub fn file_of(&self, name: &str) -> &Path {
        self.tensors
            .get(name)
            .map_or(&self.dir, |e| &self.shards[e.shard].path)
    }

    /// Bytes stored per dtype, over every tensor.
    pub fn dtype_summary(&self) -> BTreeMap<Dtype, usize> {
        let mut out = BTreeMap::new();
        for e in self.tensors.values() {
            *out.entry(e.dtype).or_insert(0) += e.bytes.len();
        }
        out
    }

    /// The float format holding the most bytes: the checkpoint's dtype, which weights are stored in
    /// unless the user asks for another. `None` when no tensor is F32, BF16 or F16.
    pub fn float_format(&self) -> Option<WeightFormat> {
        self.dtype_summary()
            .into_iter()
            .filter_map(|(dtype, bytes)| float_format(dtype).map(|f| (bytes, f)))
            .max_by_key(|&(bytes, _)| bytes)
            .map(|(_, f)| f)
    }

    /// Tensor `name` as f32, with its shape. F32, BF16 and F16 convert exactly.
    pub fn read_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), LoadError> {
        let entry = self.entry(name)?;
        let mut out = vec![0.0; entry.shape.iter().product()];
        self.read_f32_into(name, &mut out)?;
        Ok((entry.shape.clone(), out))
    }

    /// Converts tensor `name` into `out`, which must hold exactly its number of elements.
    pub fn read_f32_into(&self, name: &str, out: &mut [f32]) -> Result<(), LoadError> {
        let entry = self.entry(name)?;
        let path = &self.shards[entry.shard].path;
        let numel: usize = entry.shape.iter().product();
        if out.len() != numel {
            return Err(LoadError::invalid(
                path,
                format!(
                    "tensor `{name}` has {numel} elements, {} were expected",
                    out.len()
                ),
            ));
        }
        let bytes = &self.shards[entry.shard].mmap[entry.bytes.clone()];
        // The data offsets of a safetensors file need not be aligned, so decode from bytes.
        match entry.dtype {
            Dtype::F32 => convert(bytes, out, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Dtype::BF16 => convert(bytes, out, |b| {
                f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16)
            }),
            Dtype::F16 => convert(bytes, out, |b| {
                f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
            }),
            other => {
                return Err(LoadError::Dtype {
                    name: name.to_string(),
                    file: path.clone(),
                    dtype: format!("{other:?}"),
                });
            }
        }
        Ok(())
    }

    /// Tensor `name`'s bytes exactly as stored, with its dtype and shape: how pre-quantised
    /// tensors (U8 FP4 codes and block scales) are read without any conversion.
    pub fn raw(&self, name: &str) -> Result<(Dtype, &[usize], &[u8]), LoadError> {
        let entry = self.entry(name)?;
        let bytes = &self.shards[entry.shard].mmap[entry.bytes.clone()];
        Ok((entry.dtype, &entry.shape, bytes))
    }

    fn entry(&self, name: &str) -> Result<&Entry, LoadError> {
        self.tensors
            .get(name)
            .ok_or_else(|| LoadError::MissingTensor {
                name: name.to_string(),
                dir: self.dir.clone(),
                alternatives: String::new(),
            })
    }
}

/// The weight format of a float safetensors dtype.
pub fn float_format(dtype: Dtype) -> Option<WeightFormat> {
    match dtype {
        Dtype::F32 => Some(WeightFormat::F32),
        Dtype::BF16 => Some(WeightFormat::Bf16),
        Dtype::F16 => Some(WeightFormat::F16),
        _ => None,
    }
}

/// Decodes little-endian elements of `bytes` into `out` in parallel; `bytes.len()` is
/// `out.len() * size` because the header was validated against the data at open.
fn convert(bytes: &[u8], out: &mut [f32], decode: impl Fn(&[u8]) -> f32 + Sync) {
    if out.is_empty() {
        return;
    }
    let size = bytes.len() / out.len();
    out.par_chunks_mut(CONVERT_CHUNK)
        .zip(bytes.par_chunks(CONVERT_CHUNK * size))
        .for_each(|(dst, src)| {
            for (d, s) in dst.iter_mut().zip(src.chunks_exact(size)) {
                *d = decode(s);
            }
        });
}

/// The `weight_map` of a sharded checkpoint's index: tensor name -> shard file name.
fn read_index(path: &Path) -> Result<HashMap<String, String>, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|e| LoadError::io(path, e))?;
    let value: Value = serde_json::from_str(&text)
        .map_err(|e| LoadError::invalid(path, format!("malformed JSON: {e}")))?;
    let Some(Value::Object(map)) = value.get("weight_map") else {
        return Err(LoadError::invalid(
            path,
            "field `weight_map`: missing, or not an object of tensor name -> file",
        ));
    };
    map.iter()
        .map(|(name, file)| match file.as_str() {
            Some(f) => Ok((name.clone(), f.to_string())),
            None => Err(LoadError::invalid(
                path,
                format!("field `weight_map.{name}`: expected a file name, got {file}"),
            )),
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod test_checkpoints;
#[cfg(test)]
mod tests;
