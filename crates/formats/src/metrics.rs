//! How well a format fits some weights: signal-to-quantization-noise ratio and relative MSE.

use rayon::prelude::*;

use crate::{Format, Result};

/// Error of a format on one matrix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Fit {
    /// 10 · log10(Σ x² / Σ (x - x̂)²); infinite when the format is exact.
    pub sqnr_db: f64,
    /// Σ (x - x̂)² / Σ x² (0 for an all-zero matrix).
    pub rel_mse: f64,
    /// Exact bits per weight of the matrix, metadata included.
    pub bits_per_weight: f64,
}

/// Quantizes and dequantizes a `[rows, cols]` matrix and measures the error.
pub fn fit(format: &Format, data: &[f32], rows: usize, cols: usize, importance: Option<&[f32]>) -> Result<Fit> {
    let back = format.fake_quantize(data, rows, cols, importance)?;
    let (signal, noise) = data
        .par_chunks(1 << 14)
        .zip(back.par_chunks(1 << 14))
        .map(|(a, b)| {
            let mut s = 0.0f64;
            let mut n = 0.0f64;
            for (&x, &y) in a.iter().zip(b) {
                s += (x as f64) * (x as f64);
                n += ((x - y) as f64) * ((x - y) as f64);
            }
            (s, n)
        })
        .reduce(|| (0.0, 0.0), |p, q| (p.0 + q.0, p.1 + q.1));
    let rel_mse = if signal > 0.0 { noise / signal } else { 0.0 };
    let sqnr_db = if noise > 0.0 { 10.0 * (signal / noise).log10() } else { f64::INFINITY };
    let bits_per_weight = format.storage_bits(rows, cols)? as f64 / (rows * cols) as f64;
    Ok(Fit { sqnr_db, rel_mse, bits_per_weight })
}
