//! ggml blocks as fixed rounding grids, for solvers (GPTQ) that round weights one column at a
//! time after the block parameters have been chosen.
//!
//! [`BlockGrid::new`] encodes the original weights once with llama.cpp's quantizer (so the
//! scales, minimums and sub-block scales are exactly those llama.cpp would choose, with the
//! importance weights when given), then reads every sub-block's grid back from those bytes:
//! each representable value is `a·q + b` for an integer code `q` in `qmin..=qmax` (IQ4_NL: `d·T[q]`
//! for its table `T`). [`BlockGrid::round`] rounds any value onto the grid of its position and
//! [`BlockGrid::encode`] writes the codes of grid values into the original blocks, keeping
//! their parameter fields.

use super::blocks::f16_le;
use super::{quantize, GgmlType};
use crate::{FormatError, Result};

/// IQ4_NL's non-uniform 4-bit grid (ggml's `kvalues_iq4nl`).
const IQ4NL_TABLE: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// Fixed grids of every sub-block of a `[rows, cols]` matrix in a ggml type.
pub struct BlockGrid {
    ty: GgmlType,
    rows: usize,
    cols: usize,
    /// The encoding whose parameter fields define the grids.
    bytes: Vec<u8>,
    /// Elements per sub-block (one (a, b) pair each).
    sub: usize,
    a: Vec<f32>,
    b: Vec<f32>,
    qmin: i32,
    qmax: i32,
}

/// Elements sharing one (a, b) pair, and the code range, per type.
fn layout(ty: GgmlType) -> Result<(usize, i32, i32)> {
    use GgmlType::*;
    Ok(match ty {
        Q4_0 | Q4_1 => (32, 0, 15),
        Q5_0 | Q5_1 => (32, 0, 31),
        Q8_0 => (32, -128, 127),
        Iq4Nl => (32, 0, 15),
        Q2K => (16, 0, 3),
        Q3K => (16, 0, 7),
        Q4K => (32, 0, 15),
        Q5K => (32, 0, 31),
        Q6K => (16, 0, 63),
        other => {
            return Err(FormatError::Invalid(format!(
                "{} has no fixed-grid form for column-wise solvers",
                other.name()
            )))
        }
    })
}

/// The 6-bit scale and min of sub-block `j` of a Q4_K/Q5_K block's 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Q3_K's sixteen 6-bit scales (stored biased by 32) from its 12 packed bytes.
fn q3k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
        let high = (s[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

impl BlockGrid {
    /// Chooses the block parameters of `w` (`[rows, cols]`) in `ty` as llama.cpp would.
    pub fn new(ty: GgmlType, w: &[f32], rows: usize, cols: usize, importance: Option<&[f32]>) -> Result<BlockGrid> {
        let (sub, qmin, qmax) = layout(ty)?;
        if w.len() != rows * cols {
            return Err(FormatError::Length { what: "weights".into(), expected: rows * cols, got: w.len() });
        }
        let bytes = quantize(ty, w, cols, importance)?;
        let bs = ty.block_size();
        let ts = ty.type_size();
        let n_blocks = bytes.len() / ts;
        let per_block = bs / sub;
        let mut a = vec![0f32; n_blocks * per_block];
        let mut b = vec![0f32; n_blocks * per_block];
        for (k, blk) in bytes.chunks_exact(ts).enumerate() {
            let (a, b) = (&mut a[k * per_block..(k + 1) * per_block], &mut b[k * per_block..(k + 1) * per_block]);
            let h = |o: usize| f16_le([blk[o], blk[o + 1]]);
            match ty {
                GgmlType::Q4_0 => {
                    a[0] = h(0);
                    b[0] = -8.0 * a[0];
                }
                GgmlType::Q5_0 => {
                    a[0] = h(0);
                    b[0] = -16.0 * a[0];
                }
                GgmlType::Q4_1 | GgmlType::Q5_1 => {
                    a[0] = h(0);
                    b[0] = h(2);
                }
                GgmlType::Q8_0 | GgmlType::Iq4Nl => {
                    a[0] = h(0);
                }
                GgmlType::Q2K => {
                    // scales[16], qs[64], d, dmin
                    let (d, dmin) = (h(80), h(82));
                    for j in 0..16 {
                        let sc = blk[j];
                        a[j] = d * (sc & 0xF) as f32;
                        b[j] = -(dmin * (sc >> 4) as f32);
                    }
                }
                GgmlType::Q3K => {
                    // hmask[32], qs[64], scales[12], d
                    let d = h(108);
                    let sc = q3k_scales(&blk[96..108]);
                    for j in 0..16 {
                        a[j] = d * sc[j] as f32;
                        b[j] = -4.0 * a[j];
                    }
                }
                GgmlType::Q4K | GgmlType::Q5K => {
                    // d, dmin, scales[12], ...
                    let (d, dmin) = (h(0), h(2));
                    for j in 0..8 {
                        let (sc, m) = scale_min_k4(j, &blk[4..16]);
                        a[j] = d * sc as f32;
                        b[j] = -(dmin * m as f32);
                    }
                }
                GgmlType::Q6K => {
                    // ql[128], qh[64], scales[16] (i8), d
                    let d = h(208);
                    for j in 0..16 {
                        a[j] = d * (blk[192 + j] as i8) as f32;
                        b[j] = -32.0 * a[j];
                    }
                }
                _ => unreachable!("layout() admits only the types above"),
            }
        }
        Ok(BlockGrid { ty, rows, cols, bytes, sub, a, b, qmin, qmax })
    }

    /// The ggml type.
    pub fn ty(&self) -> GgmlType {
        self.ty
    }

    /// Index of the (a, b) pair of element (`row`, `col`).
    #[inline]
    fn sub_index(&self, row: usize, col: usize) -> usize {
        (row * self.cols + col) / self.sub
    }

    /// Code of `x` on the grid of (`row`, `col`).
    #[inline]
    fn code(&self, row: usize, col: usize, x: f32) -> i32 {
        let s = self.sub_index(row, col);
        let (a, b) = (self.a[s], self.b[s]);
        if self.ty == GgmlType::Iq4Nl {
            let mut best = 0;
            let mut best_err = f32::INFINITY;
            for (q, &t) in IQ4NL_TABLE.iter().enumerate() {
                let e = (a * t as f32 - x).abs();
                if e < best_err {
                    best_err = e;
                    best = q as i32;
                }
            }
            return best;
        }
        if a == 0.0 {
            // Every code gives b; pick the one closest to zero offset.
            return self.qmin.max(0).min(self.qmax);
        }
        let q = ((x - b) / a).round();
        if q.is_nan() {
            return self.qmin.max(0).min(self.qmax);
        }
        (q as i32).clamp(self.qmin, self.qmax)
    }

    /// Value of code `q` at (`row`, `col`).
    #[inline]
    fn value(&self, row: usize, col: usize, q: i32) -> f32 {
        let s = self.sub_index(row, col);
        if self.ty == GgmlType::Iq4Nl {
            return self.a[s] * IQ4NL_TABLE[q as usize] as f32;
        }
        self.a[s] * q as f32 + self.b[s]
    }

    /// The grid value nearest to `x` at (`row`, `col`).
    pub fn round(&self, row: usize, col: usize, x: f32) -> f32 {
        self.value(row, col, self.code(row, col, x))
    }

    /// Encodes `q` (`[rows, cols]`, values on the grid — others are rounded onto it) into
    /// blocks that keep the chosen parameters.
    pub fn encode(&self, q: &[f32]) -> Result<Vec<u8>> {
        if q.len() != self.rows * self.cols {
            return Err(FormatError::Length { what: "values".into(), expected: self.rows * self.cols, got: q.len() });
        }
        let mut out = self.bytes.clone();
        let bs = self.ty.block_size();
        let ts = self.ty.type_size();
        for (k, blk) in out.chunks_exact_mut(ts).enumerate() {
            let first = k * bs;
            let (row, col0) = (first / self.cols, first % self.cols);
            clear_codes(self.ty, blk);
            for e in 0..bs {
                let code = self.code(row, col0 + e, q[first + e]);
                set_code(self.ty, blk, e, code);
            }
        }
        Ok(out)
    }
}

/// Zeroes every code bit of a block (parameter fields untouched).
fn clear_codes(ty: GgmlType, blk: &mut [u8]) {
    use GgmlType::*;
    let ranges: &[(usize, usize)] = match ty {
        Q4_0 | Iq4Nl => &[(2, 18)],
        Q4_1 => &[(4, 20)],
        Q5_0 => &[(2, 22)],
        Q5_1 => &[(4, 24)],
        Q8_0 => &[(2, 34)],
        Q2K => &[(16, 80)],
        Q3K => &[(0, 96)],
        Q4K => &[(16, 144)],
        Q5K => &[(16, 176)],
        Q6K => &[(0, 192)],
        _ => &[],
    };
    for &(s, e) in ranges {
        blk[s..e].fill(0);
    }
}

/// Writes code `q` of element `e` into a block whose code bits are clear.
fn set_code(ty: GgmlType, blk: &mut [u8], e: usize, q: i32) {
    use GgmlType::*;
    match ty {
        Q4_0 | Iq4Nl | Q4_1 => {
            let off = if ty == Q4_1 { 4 } else { 2 };
            let u = q as u8 & 0xF;
            if e < 16 {
                blk[off + e] |= u;
            } else {
                blk[off + e - 16] |= u << 4;
            }
        }
        Q5_0 | Q5_1 => {
            let (qh, qs) = if ty == Q5_1 { (4, 8) } else { (2, 6) };
            let u = q as u8;
            let j = e % 16;
            if e < 16 {
                blk[qs + j] |= u & 0xF;
            } else {
                blk[qs + j] |= (u & 0xF) << 4;
            }
            if u & 0x10 != 0 {
                blk[qh + e / 8] |= 1 << (e % 8);
            }
        }
        Q8_0 => blk[2 + e] = q as i8 as u8,
        Q2K => {
            let (n, w) = (e / 128, e % 128);
            let (j, l) = (w / 32, w % 32);
            blk[16 + n * 32 + l] |= ((q as u8) & 3) << (2 * j);
        }
        Q3K => {
            let u = q as u8;
            let (n, w) = (e / 128, e % 128);
            let (j, l) = (w / 32, w % 32);
            blk[32 + n * 32 + l] |= (u & 3) << (2 * j);
            if u & 4 != 0 {
                blk[l] |= 1 << (n * 4 + j);
            }
        }
        Q4K => {
            let (c, w) = (e / 64, e % 64);
            let u = q as u8 & 0xF;
            blk[16 + c * 32 + w % 32] |= if w < 32 { u } else { u << 4 };
        }
        Q5K => {
            let (c, w) = (e / 64, e % 64);
            let u = q as u8;
            let l = w % 32;
            blk[48 + c * 32 + l] |= if w < 32 { u & 0xF } else { (u & 0xF) << 4 };
            if u & 0x10 != 0 {
                blk[16 + l] |= 1 << (2 * c + (w >= 32) as usize);
            }
        }
        Q6K => {
            let u = q as u8;
            let (n, w) = (e / 128, e % 128);
            let (k, l) = (w / 32, w % 32);
            let ql = n * 64 + l + if k % 2 == 1 { 32 } else { 0 };
            blk[ql] |= if k < 2 { u & 0xF } else { (u & 0xF) << 4 };
            blk[128 + n * 32 + l] |= ((u >> 4) & 3) << (2 * k);
        }
        _ => {}
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
                    assert!((a - b).abs() <= 1e-6 * a.abs().max(1e-3), "{}: rounded element {i}: {a} vs {b}", ty.name());
                }
            }
        }
    }

    #[test]
    fn types_without_a_grid_are_an_error() {
        assert!(BlockGrid::new(GgmlType::F16, &[0.0; 32], 1, 32, None).is_err());
    }
}
