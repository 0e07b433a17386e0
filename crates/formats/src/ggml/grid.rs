//! ggml blocks as fixed rounding grids, for solvers (GPTQ) that round weights one column at a
//! time after the block parameters have been chosen.
//!
//! [`BlockGrid::new`] encodes the original weights once with llama.cpp's quantizer (so the
//! scales, minimums and sub-block scales are exactly those llama.cpp would choose, with the
//! importance weights when given) and reads every element's grid back from those bytes
//! ([`super::element`]). [`BlockGrid::round`] rounds any value onto the grid of its position
//! and [`BlockGrid::encode`] writes the codes of grid values into the original blocks, keeping
//! their parameter fields.

use super::element::{element_grid, set_element_code, ElementGrid};
use super::{quantize, GgmlType};
use crate::{FormatError, Result};

/// Fixed grids of every element of a `[rows, cols]` matrix in a ggml type.
pub struct BlockGrid {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// The encoding whose parameter fields define the grids.
    bytes: Vec<u8>,
    /// Elements sharing one grid (a sub-block).
    span: usize,
    /// One grid per sub-block, row-major.
    grids: Vec<ElementGrid>,
}

/// Elements that share one set of parameters (scale, minimum) in a block of `ty`.
fn grid_span(ty: GgmlType) -> usize {
    match ty {
        GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q6K => 16,
        GgmlType::Iq4Xs => 32,
        // The 32-element blocks, and Q4_K/Q5_K's 32-element sub-blocks.
        _ => 32.min(ty.block_size()),
    }
}

impl BlockGrid {
    /// Chooses the block parameters of `w` (`[rows, cols]`) in `ty` as llama.cpp would.
    pub fn new(ty: GgmlType, w: &[f32], rows: usize, cols: usize, importance: Option<&[f32]>) -> Result<BlockGrid> {
        if w.len() != rows * cols {
            return Err(FormatError::Length { what: "weights".into(), expected: rows * cols, got: w.len() });
        }
        if ty.block_size() == 1 {
            return Err(FormatError::Invalid(format!("{} has no block grid", ty.name())));
        }
        let bytes = quantize(ty, w, cols, importance)?;
        let (bs, ts) = (ty.block_size(), ty.type_size());
        let span = grid_span(ty);
        let mut grids = Vec::with_capacity(rows * cols / span);
        for blk in bytes.chunks_exact(ts) {
            for e in (0..bs).step_by(span) {
                grids.push(element_grid(ty, blk, e)?);
            }
        }
        Ok(BlockGrid { ty, rows, cols, bytes, span, grids })
    }

    /// The ggml type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// The grid value nearest to `x` at (`row`, `col`).
    pub fn round(&self, row: usize, col: usize, x: f32) -> f32 {
        let g = &self.grids[(row * self.cols + col) / self.span];
        g.value(g.nearest_code(x))
    }

    /// Encodes `q` (`[rows, cols]`, values on the grid — others are rounded onto it) into
    /// blocks that keep the chosen parameters.
    pub fn encode(&self, q: &[f32]) -> Result<Vec<u8>> {
        if q.len() != self.rows * self.cols {
            return Err(FormatError::Length { what: "values".into(), expected: self.rows * self.cols, got: q.len() });
        }
        let mut out = self.bytes.clone();
        let (bs, ts) = (self.ty.block_size(), self.ty.type_size());
        for (k, blk) in out.chunks_exact_mut(ts).enumerate() {
            for e in 0..bs {
                let i = k * bs + e;
                set_element_code(self.ty, blk, e, self.grids[i / self.span].nearest_code(q[i]))?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ggml::dequantize;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|i| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                let u = (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                if i % 97 == 0 {
                    u * 8.0
                } else {
                    u
                }
            })
            .collect()
    }

    /// The grid read back from the bytes must contain llama.cpp's own rounding of every
    /// weight, and encoding grid values must decode to exactly them.
    #[test]
    fn grids_agree_with_the_decoder() {
        use GgmlType::*;
        for ty in [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Iq4Nl, Q2K, Q3K, Q4K, Q5K, Q6K] {
            let (rows, cols) = (3, 512);
            let w = data(rows * cols, ty.id() as u64 + 1);
            for imp in [None, Some(data(cols, 99).iter().map(|v| v.abs() + 0.1).collect::<Vec<f32>>())] {
                let g = BlockGrid::new(ty, &w, rows, cols, imp.as_deref()).unwrap();
                let mut rtn = vec![0f32; rows * cols];
                dequantize(ty, &g.bytes, &mut rtn).unwrap();
                // llama.cpp's values are on the grid ...
                for r in 0..rows {
                    for c in 0..cols {
                        let v = rtn[r * cols + c];
                        let on = g.round(r, c, v);
                        assert!((on - v).abs() <= 1e-6 * v.abs().max(1e-3), "{}: ({r},{c}) {v} → {on}", ty.name());
                    }
                }
                // ... and re-encoding them gives back the same values.
                let bytes = g.encode(&rtn).unwrap();
                let mut back = vec![0f32; rows * cols];
                dequantize(ty, &bytes, &mut back).unwrap();
                for (i, (a, b)) in rtn.iter().zip(&back).enumerate() {
                    assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-3), "{}: element {i}: {a} vs {b}", ty.name());
                }
                // Rounding arbitrary values gives decodable grid values.
                let other = data(rows * cols, 1234);
                let q: Vec<f32> = (0..rows * cols).map(|i| g.round(i / cols, i % cols, other[i])).collect();
                let bytes = g.encode(&q).unwrap();
                dequantize(ty, &bytes, &mut back).unwrap();
                for (i, (a, b)) in q.iter().zip(&back).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-6 * a.abs().max(1e-3),
                        "{}: rounded element {i}: {a} vs {b}",
                        ty.name()
                    );
                }
            }
        }
    }

    #[test]
    fn types_without_a_grid_are_an_error() {
        assert!(BlockGrid::new(GgmlType::F16, &[0.0; 32], 1, 32, None).is_err());
    }
}
