//! The input statistics of one linear layer: H = Σ x xᵀ (f64) and per-channel moments.

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

/// Rows per f32 GEMM before the product is folded into the f64 sum: small enough that f32
/// accumulation loses nothing that matters, large enough for GEMM speed.
const BATCH_ROWS: usize = 2048;

/// Second moments of a linear layer's input over the calibration tokens.
#[derive(Clone, Debug)]
pub struct Hessian {
    /// Input width.
    pub n: usize,
    /// Σ x xᵀ, `n × n` row-major (symmetric), f64.
    pub sum_xxt: Vec<f64>,
    /// Σ |x| per channel.
    pub sum_abs: Vec<f64>,
    /// max |x| per channel.
    pub max_abs: Vec<f32>,
    /// Number of input rows (tokens) seen.
    pub count: usize,
}

impl Hessian {
    /// Empty statistics for inputs of width `n`.
    pub fn new(n: usize) -> Hessian {
        Hessian { n, sum_xxt: vec![0.0; n * n], sum_abs: vec![0.0; n], max_abs: vec![0.0; n], count: 0 }
    }

    /// Adds `rows` input rows `x` (`[rows, n]`, row-major).
    pub fn add(&mut self, x: &[f32], rows: usize) {
        let n = self.n;
        debug_assert_eq!(x.len(), rows * n);
        let mut g = Mat::<f32>::zeros(n, n);
        for chunk in x.chunks(BATCH_ROWS * n) {
            let r = chunk.len() / n;
            let xm = MatRef::from_row_major_slice(chunk, r, n);
            // XᵀX is symmetric: compute its lower triangle only (half the work of a GEMM).
            matmul(
                g.as_mut(),
                BlockStructure::TriangularLower,
                Accum::Replace,
                xm.transpose(),
                BlockStructure::Rectangular,
                xm,
                BlockStructure::Rectangular,
                1.0f32,
                Par::rayon(0),
            );
            for i in 0..n {
                for j in 0..=i {
                    let v = g[(i, j)] as f64;
                    self.sum_xxt[i * n + j] += v;
                    if i != j {
                        self.sum_xxt[j * n + i] += v;
                    }
                }
            }
        }
        for row in x.chunks_exact(n) {
            for ((s, m), &v) in self.sum_abs.iter_mut().zip(self.max_abs.iter_mut()).zip(row) {
                *s += v.abs() as f64;
                *m = m.max(v.abs());
            }
        }
        self.count += rows;
    }

    /// llama.cpp's importance matrix: per input column, the mean of x² over the tokens.
    pub fn imatrix(&self) -> Vec<f32> {
        let c = self.count.max(1) as f64;
        (0..self.n).map(|i| (self.sum_xxt[i * self.n + i] / c) as f32).collect()
    }

    /// H = Σ x xᵀ / count (the mean; GPTQ's scale does not matter, damping is relative).
    pub fn mean(&self) -> Vec<f64> {
        let c = self.count.max(1) as f64;
        self.sum_xxt.iter().map(|v| v / c).collect()
    }

    /// The statistics of the input divided channel-wise by `s` (x' = x / s): H' = S⁻¹ H S⁻¹,
    /// what a transform that folds `s` into the input's producer leaves the layer seeing.
    pub fn divide_channels(&mut self, s: &[f32]) {
        let n = self.n;
        debug_assert_eq!(s.len(), n);
        for i in 0..n {
            for j in 0..n {
                self.sum_xxt[i * n + j] /= s[i] as f64 * s[j] as f64;
            }
            self.sum_abs[i] /= s[i].abs() as f64;
            self.max_abs[i] /= s[i].abs();
        }
    }

    /// Folds another layer-input's statistics of the same width into this one.
    pub fn merge(&mut self, other: &Hessian) {
        for (a, b) in self.sum_xxt.iter_mut().zip(&other.sum_xxt) {
            *a += b;
        }
        for (a, b) in self.sum_abs.iter_mut().zip(&other.sum_abs) {
            *a += b;
        }
        for (a, b) in self.max_abs.iter_mut().zip(&other.max_abs) {
            *a = a.max(*b);
        }
        self.count += other.count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_naive_sum() {
        let (rows, n) = (5000, 7);
        let x: Vec<f32> = (0..rows * n).map(|i| (((i * 7919) % 1000) as f32 - 500.0) / 250.0).collect();
        let mut h = Hessian::new(n);
        h.add(&x[..3000 * n], 3000);
        h.add(&x[3000 * n..], 2000);
        assert_eq!(h.count, rows);
        for i in 0..n {
            for j in 0..n {
                let want: f64 = (0..rows).map(|r| x[r * n + i] as f64 * x[r * n + j] as f64).sum();
                let got = h.sum_xxt[i * n + j];
                assert!((got - want).abs() < 1e-4 * want.abs().max(1.0), "{i},{j}: {got} vs {want}");
            }
        }
        let im = h.imatrix();
        assert!((im[3] as f64 - h.sum_xxt[3 * n + 3] / rows as f64).abs() < 1e-5);
    }
}
