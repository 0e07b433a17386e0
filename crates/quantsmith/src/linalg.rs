//! Dense kernels over row-major f32 slices, on faer's GEMM.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};

fn par(parallel: bool) -> Par {
    if parallel {
        Par::rayon(0)
    } else {
        Par::Seq
    }
}

/// `c[m, n] = a[m, k] · b[n, k]ᵀ`, all row-major.
pub fn matmul_nt(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, c: &mut [f32], parallel: bool) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), n * k);
    debug_assert_eq!(c.len(), m * n);
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, n, k);
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    matmul(c, Accum::Replace, a, b.transpose(), 1.0f32, par(parallel));
}

/// `c[m, n] = a[m, k] · b[k, n]`, all row-major.
pub fn matmul_nn(a: &[f32], b: &[f32], m: usize, n: usize, k: usize, c: &mut [f32], parallel: bool) {
    debug_assert_eq!(a.len(), m * k);
    debug_assert_eq!(b.len(), k * n);
    debug_assert_eq!(c.len(), m * n);
    let a = MatRef::from_row_major_slice(a, m, k);
    let b = MatRef::from_row_major_slice(b, k, n);
    let c = MatMut::from_row_major_slice_mut(c, m, n);
    matmul(c, Accum::Replace, a, b, 1.0f32, par(parallel));
}

/// A pointer to a buffer that parallel tasks write at disjoint positions (the Hessian's packed
/// triangle, GPTQ's columns split by rows).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub(crate) *mut T);
// SAFETY: used only where each element is written by one task (said at each use).
unsafe impl<T> Send for SharedMut<T> {}
unsafe impl<T> Sync for SharedMut<T> {}
impl<T> SharedMut<T> {
    /// The element at `k` (a method, so closures capture the wrapper, not the raw pointer).
    pub(crate) fn at(self, k: usize) -> *mut T {
        // SAFETY: callers stay within the buffer.
        unsafe { self.0.add(k) }
    }
}

/// The dense layer lives with the other shared layers; re-exported for older paths.
pub use crate::arch::layers::Linear;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_nt_matches_naive() {
        let (m, n, k) = (7, 5, 11);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 37 % 17) as f32 - 8.0) / 3.0).collect();
        let b: Vec<f32> = (0..n * k).map(|i| ((i * 13 % 11) as f32 - 5.0) / 2.0).collect();
        let mut c = vec![0f32; m * n];
        matmul_nt(&a, &b, m, n, k, &mut c, true);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = (0..k).map(|t| a[i * k + t] * b[j * k + t]).sum();
                assert!((c[i * n + j] - want).abs() < 1e-4 * (1.0 + want.abs()), "{i},{j}");
            }
        }
        let bt: Vec<f32> = (0..k * n).map(|idx| b[(idx % n) * k + idx / n]).collect();
        let mut c2 = vec![0f32; m * n];
        matmul_nn(&a, &bt, m, n, k, &mut c2, false);
        for (x, y) in c.iter().zip(&c2) {
            assert!((x - y).abs() < 1e-4 * (1.0 + x.abs()));
        }
    }
}
