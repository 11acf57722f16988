//! Weights to the device, in exactly the layout the kernel reads through `WeightRef`
//! (`mimo_compiler::abi::WeightRef`, `templates/common/weights.cuh`): each weight a row-major
//! `rows x cols` matrix along its reduction axis (rows = the product of all but the last
//! dimension, so stacked experts `[E, N, K]` are `E * N` rows), in its stored format:
//!
//! - f32 / bf16 / f16: the elements, little-endian;
//! - MXFP4: the packed E2M1 codes (two per byte, element 2j in the low nibble of byte j, `cols / 2`
//!   bytes per row) and, separately, one E8M0 byte per 32 elements of a row;
//! - NVFP4: the same codes, one E4M3 byte per 16 elements, and the f32 tensor scale in the
//!   `WeightRef` itself.
//!
//! That is [`WeightData`]'s own layout, so nothing is converted. The kernel's 16-byte vector
//! loads need every row to start 16-byte aligned: a row is `cols * bits / 8` bytes, a multiple of
//! 16 whenever the vector path applies (`cols % 32 == 0` for FP4, `% 8` for 16-bit, `% 4` for
//! f32; otherwise the kernel takes its scalar path), so aligning each tensor's start is enough.
//! Tensors start 256-byte aligned in one device pool (one allocation, however many weights).

use std::ops::Range;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use mimo_compiler::abi::{CStruct, WeightRef, format_code};
use mimo_ir::formats::WeightFormat;
use mimo_ir::weights::{Weight, WeightData, WeightStore};

use crate::device::{Device, DeviceBuffer, MemClass};

/// Alignment of every tensor (and scale table) in the pool: a whole DRAM sector group.
pub const ALIGN: usize = 256;

const _: () = assert!(
    cfg!(target_endian = "little"),
    "weights are uploaded as their in-memory bytes, which the GPU reads as little-endian"
);

/// Where one weight lives in the pool, and the rest of its `WeightRef`.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightSlot {
    pub name: String,
    pub format: WeightFormat,
    pub rows: u32,
    pub cols: u32,
    pub tensor_scale: f32,
    /// Byte range of the elements (or packed codes) in the pool.
    pub data: Range<usize>,
    /// Byte range of the block scales (FP4 formats).
    pub scales: Option<Range<usize>>,
}

/// Every weight of a program's weight table, placed.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightLayout {
    /// In weight-table order (`AbiTables::weights`).
    pub slots: Vec<WeightSlot>,
    /// Pool size in bytes.
    pub bytes: usize,
}

/// The stored bytes of a weight: its elements or codes, and its block scales.
pub fn stored_bytes(w: &Weight) -> (&[u8], Option<&[u8]>) {
    fn bytes_of<T>(v: &[T]) -> &[u8] {
        // SAFETY: only called with f32, bf16 and f16 slices: plain numbers with no padding and no
        // invalid bit patterns, so every byte is initialised; u8 has alignment 1, and the length
        // is exactly the slice's size in bytes, for the slice's own lifetime.
        unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
    }
    match &w.data {
        WeightData::F32(v) => (bytes_of(v), None),
        WeightData::Bf16(v) => (bytes_of(v), None),
        WeightData::F16(v) => (bytes_of(v), None),
        WeightData::Mxfp4(m) => (&m.codes, Some(&m.scales)),
        WeightData::Nvfp4(m) => (&m.codes, Some(&m.scales)),
    }
}

/// The NVFP4 per-tensor scale, 1 for every other format.
fn tensor_scale(w: &Weight) -> f32 {
    match &w.data {
        WeightData::Nvfp4(m) => m.tensor_scale,
        _ => 1.0,
    }
}

/// Places the weights `names` (in weight-table order) of `store` in one pool.
pub fn plan_layout(names: &[String], store: &WeightStore) -> Result<WeightLayout> {
    let mut slots = Vec::with_capacity(names.len());
    let mut end = 0usize;
    let mut place = |len: usize| {
        let start = end.next_multiple_of(ALIGN);
        end = start + len;
        start..end
    };
    for name in names {
        let w = store
            .get(name)
            .with_context(|| format!("the weights have no `{name}`, which the kernel reads"))?;
        let cols = w.shape.last().copied().unwrap_or(1);
        let rows = w.numel().checked_div(cols).unwrap_or(0);
        let (Ok(rows32), Ok(cols32)) = (u32::try_from(rows), u32::try_from(cols)) else {
            bail!("weight `{name}` ({rows} x {cols}) is too large for the kernel's 32-bit sizes");
        };
        let (format, tensor_scale) = (w.format(), tensor_scale(w));
        let (data, scales) = stored_bytes(w);
        slots.push(WeightSlot {
            name: name.clone(),
            format,
            rows: rows32,
            cols: cols32,
            tensor_scale,
            data: place(data.len()),
            scales: scales.map(|s| place(s.len())),
        });
    }
    Ok(WeightLayout {
        slots,
        bytes: end.next_multiple_of(ALIGN),
    })
}

/// The `WeightRef` of `slot` in a pool at device address `base`, as words.
pub fn weight_ref_words(slot: &WeightSlot, base: u64) -> Vec<u32> {
    WeightRef {
        data: base + slot.data.start as u64,
        scales: slot.scales.as_ref().map_or(0, |s| base + s.start as u64),
        tensor_scale: slot.tensor_scale,
        format: format_code(slot.format),
        rows: slot.rows,
        cols: slot.cols,
    }
    .to_words()
}

/// The `WeightRef` words of `names` (in that order) in `layout`'s pool at `base`: a program's
/// weight table over a pool laid out for any superset of its weights.
pub fn table_words(layout: &WeightLayout, names: &[String], base: u64) -> Result<Vec<u32>> {
    let mut words = Vec::with_capacity(names.len() * WeightRef::WORDS);
    for name in names {
        let slot = layout
            .slots
            .iter()
            .find(|s| s.name == *name)
            .with_context(|| {
                format!("the weights on the device have no `{name}`, which the program reads")
            })?;
        words.extend(weight_ref_words(slot, base));
    }
    Ok(words)
}

/// The weights on the device: the pool and the `WeightRef` table pointing into it.
pub struct DeviceWeights {
    pub layout: WeightLayout,
    pool: DeviceBuffer,
    table: DeviceBuffer,
}

impl DeviceWeights {
    /// Uploads `layout`'s weights from `store` (one allocation, one copy per tensor).
    pub fn upload(
        device: &Arc<dyn Device>,
        layout: WeightLayout,
        store: &WeightStore,
    ) -> Result<Self> {
        let pool = DeviceBuffer::zeroed(
            device,
            layout.bytes.max(ALIGN),
            MemClass::Weights,
            &format!(
                "weights ({:.2} GB of device memory)",
                layout.bytes as f64 / 1e9
            ),
        )?;
        for slot in &layout.slots {
            let w = store
                .get(&slot.name)
                .with_context(|| format!("weight `{}` vanished", slot.name))?;
            let (data, scales) = stored_bytes(w);
            let what = || format!("copying weight `{}` to the device", slot.name);
            pool.write(slot.data.start, data).with_context(what)?;
            if let (Some(bytes), Some(range)) = (scales, &slot.scales) {
                pool.write(range.start, bytes).with_context(what)?;
            }
        }
        let words: Vec<u32> = layout
            .slots
            .iter()
            .flat_map(|s| weight_ref_words(s, pool.ptr()))
            .collect();
        let table = DeviceBuffer::from_words(device, &words, MemClass::Tables, "weight table")?;
        Ok(DeviceWeights {
            layout,
            pool,
            table,
        })
    }

    /// A `WeightRef` table for a program that reads `names` (its weight-table order) from this
    /// pool: every program of a model (decode, verify, draft) points into the one upload, so the
    /// weights are on the device once however many programs run.
    pub fn table_for(&self, device: &Arc<dyn Device>, names: &[String]) -> Result<DeviceBuffer> {
        let words = table_words(&self.layout, names, self.pool.ptr())?;
        DeviceBuffer::from_words(device, &words, MemClass::Tables, "weight table")
    }

    /// Device address of the `WeightRef` table.
    pub fn table_ptr(&self) -> u64 {
        self.table.ptr()
    }

    /// Bytes of device memory the weights take.
    pub fn bytes(&self) -> usize {
        self.pool.bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mimo_ir::formats::WeightFormat;

    #[test]
    fn layout_keeps_stored_bytes_and_aligns_every_tensor() {
        let mut store = WeightStore::new();
        let values: Vec<f32> = (0..3 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        store.insert(
            "mx",
            Weight::from_f32(vec![3, 1, 64], &values, WeightFormat::Mxfp4).unwrap(),
        );
        store.insert(
            "bf",
            Weight::from_f32(vec![5], &values[..5], WeightFormat::Bf16).unwrap(),
        );
        store.insert(
            "nv",
            Weight::from_f32(vec![2, 96], &values[..192], WeightFormat::Nvfp4).unwrap(),
        );
        let names: Vec<String> = ["bf", "mx", "nv"].map(String::from).to_vec();
        let layout = plan_layout(&names, &store).unwrap();
        let [bf, mx, nv] = &layout.slots[..] else {
            panic!("{layout:?}")
        };
        assert_eq!((bf.format, bf.rows, bf.cols), (WeightFormat::Bf16, 1, 5));
        assert_eq!(bf.data.len(), 10);
        assert_eq!((mx.format, mx.rows, mx.cols), (WeightFormat::Mxfp4, 3, 64));
        assert_eq!(mx.data.len(), 3 * 32);
        assert_eq!(mx.scales.as_ref().unwrap().len(), 3 * 2);
        assert_eq!((nv.format, nv.rows, nv.cols), (WeightFormat::Nvfp4, 2, 96));
        assert_eq!(nv.scales.as_ref().unwrap().len(), 2 * 6);
        let Some(WeightData::Nvfp4(m)) = store.get("nv").map(|w| &w.data) else {
            unreachable!()
        };
        assert_eq!(nv.tensor_scale, m.tensor_scale);
        for s in &layout.slots {
            assert_eq!(s.data.start % ALIGN, 0);
            assert!(s.scales.as_ref().is_none_or(|r| r.start % ALIGN == 0));
        }
        assert!(layout.bytes >= nv.scales.as_ref().unwrap().end);
        // The stored bytes are the store's own (bf16 little-endian).
        let (bytes, _) = stored_bytes(store.get("bf").unwrap());
        let Some(WeightData::Bf16(v)) = store.get("bf").map(|w| &w.data) else {
            unreachable!()
        };
        assert_eq!(&bytes[2..4], &v[1].to_le_bytes());
        // WeightRef words: pointers split low/high, then scale, format, rows, cols.
        let w = weight_ref_words(mx, 0x1_0000_0000);
        assert_eq!(
            w[0] as u64 | (w[1] as u64) << 32,
            0x1_0000_0000 + mx.data.start as u64
        );
        assert_eq!(
            w[2] as u64 | (w[3] as u64) << 32,
            0x1_0000_0000 + mx.scales.as_ref().unwrap().start as u64
        );
        assert_eq!(
            &w[4..],
            &[1f32.to_bits(), format_code(WeightFormat::Mxfp4), 3, 64]
        );
        assert_eq!(weight_ref_words(bf, 0)[2..4], [0, 0]);
    }

    #[test]
    fn a_program_table_points_into_a_shared_pool_by_name() {
        let mut store = WeightStore::new();
        for (name, n) in [("a", 4), ("b", 8), ("c", 16)] {
            let v = vec![1.0f32; n];
            store.insert(
                name,
                Weight::from_f32(vec![n], &v, WeightFormat::F32).unwrap(),
            );
        }
        let all: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let layout = plan_layout(&all, &store).unwrap();
        let base = 1 << 40;
        // A program reading c then a gets exactly the pool's slots for c and a, in its order.
        let words = table_words(&layout, &["c".into(), "a".into()], base).unwrap();
        let mut want = weight_ref_words(&layout.slots[2], base);
        want.extend(weight_ref_words(&layout.slots[0], base));
        assert_eq!(words, want);
        let err = table_words(&layout, &["d".into()], base).unwrap_err();
        assert!(
            err.to_string().contains("no `d`, which the program reads"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_weight_is_named() {
        let err = plan_layout(&["layers.0.wq".to_string()], &WeightStore::new()).unwrap_err();
        assert!(err.to_string().contains("`layers.0.wq`"), "{err}");
    }
}
