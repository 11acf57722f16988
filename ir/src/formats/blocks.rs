//! What MXFP4 and NVFP4 share: a row-major matrix of E2M1 codes packed two per byte, one 8-bit
//! scale per block of `B` values along a row. The formats differ only in `B` and in how a block's
//! scale is chosen and read, which they pass in as functions of one block.

use rayon::prelude::*;

use super::{FormatError, WeightFormat, block_matrix_len, check_finite};

/// How a format names its parts in size errors.
pub(super) struct PartNames {
    pub values: &'static str,
    pub codes: &'static str,
    pub scales: &'static str,
}

/// Checks `values` as the row-major `rows x cols` input of a quantiser: whole blocks per row,
/// one value per element, all finite.
pub(super) fn check_input(
    format: WeightFormat,
    names: &PartNames,
    values: &[f32],
    rows: usize,
    cols: usize,
    block: usize,
) -> Result<(), FormatError> {
    let n = block_matrix_len(format, rows, cols, block)?;
    if values.len() != n {
        return Err(FormatError::Size {
            what: names.values,
            expected: n.saturating_mul(4),
            got: values.len().saturating_mul(4),
        });
    }
    check_finite(format, values)
}

/// Quantises `values` block by block in parallel: (packed codes, one scale per block).
pub(super) fn quantize_blocks<const B: usize>(
    values: &[f32],
    quantize_block: impl Fn(&[f32]) -> (u8, [u8; B]) + Sync,
) -> (Vec<u8>, Vec<u8>) {
    let mut codes = vec![0u8; values.len() / 2];
    let mut scales = vec![0u8; values.len() / B];
    codes
        .par_chunks_mut(B / 2)
        .zip(scales.par_iter_mut())
        .zip(values.par_chunks(B))
        .for_each(|((packed, scale), block)| {
            let (s, c) = quantize_block(block);
            *scale = s;
            for (byte, pair) in packed.iter_mut().zip(c.chunks_exact(2)) {
                *byte = pair[0] | (pair[1] << 4);
            }
        });
    (codes, scales)
}

/// Checks stored parts (read from a checkpoint) against the shape: whole blocks per row, half
/// a byte of codes per element, one scale per block.
pub(super) fn check_parts(
    format: WeightFormat,
    names: &PartNames,
    rows: usize,
    cols: usize,
    block: usize,
    codes: &[u8],
    scales: &[u8],
) -> Result<(), FormatError> {
    let n = block_matrix_len(format, rows, cols, block)?;
    for (what, expected, got) in [
        (names.codes, n / 2, codes.len()),
        (names.scales, n / block, scales.len()),
    ] {
        if got != expected {
            return Err(FormatError::Size {
                what,
                expected,
                got,
            });
        }
    }
    Ok(())
}

/// Every row of a `rows x cols` matrix, row-major, each filled by `row_into` in parallel.
pub(super) fn dequantize_rows(
    rows: usize,
    cols: usize,
    row_into: impl Fn(usize, &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0.0f32; rows * cols];
    if cols > 0 {
        out.par_chunks_mut(cols)
            .enumerate()
            .for_each(|(r, row)| row_into(r, row));
    }
    out
}

/// Row `row` of a `rows x cols` matrix's `codes` and `scales` into `out`, block by block through
/// `decode(scale, packed codes, out)`.
///
/// # Panics
/// If `row >= rows` or `out.len() != cols`.
pub(super) fn dequantize_row(
    (rows, cols): (usize, usize),
    block: usize,
    codes: &[u8],
    scales: &[u8],
    row: usize,
    out: &mut [f32],
    decode: impl Fn(u8, &[u8], &mut [f32]),
) {
    assert!(row < rows, "row {row} out of range of {rows} rows");
    assert_eq!(out.len(), cols, "output length must equal cols");
    let blocks = cols / block;
    let scales = &scales[row * blocks..(row + 1) * blocks];
    let codes = &codes[row * cols / 2..(row + 1) * cols / 2];
    for ((out, packed), &s) in out
        .chunks_exact_mut(block)
        .zip(codes.chunks_exact(block / 2))
        .zip(scales)
    {
        decode(s, packed, out);
    }
}
