//! Orthogonal matrices for rotations: Hadamard matrices of the orders transformer widths have
//! (576 = 36·16, 1536 = 12·128, 4096 = 2¹², 11008 is not reached) and seeded random ones.
//!
//! **Construction.** An order `n` is written `m · 2ᵏ` where `2ᵏ` is a Sylvester (Walsh)
//! matrix and `m` is 1, 2, or the order of a Paley matrix over a prime field: Paley I gives
//! `q + 1` for a prime `q ≡ 3 (mod 4)`, Paley II gives `2(q + 1)` for a prime `q ≡ 1 (mod 4)`.
//! `H = H_m ⊗ H_{2ᵏ}`; the smallest `m` that works is taken (the dense part is the slow part).
//! Orders no such `m` reaches (e.g. 172 = 11008/64, or any order not a multiple of 4 past 2)
//! are refused with the list of the nearest ones that work.
//!
//! **Applying it.** `x ↦ x·H/√n` on a row costs `n·(m + log₂ 2ᵏ)` operations: a fast
//! Walsh–Hadamard transform of each of the `m` length-`2ᵏ` pieces, then the dense `m × m`
//! mix across pieces. Rows are carried in f64.

use crate::{Error, Result};

/// Whether `q` is prime.
fn is_prime(q: usize) -> bool {
    q >= 2 && (2..).take_while(|d| d * d <= q).all(|d| q % d != 0)
}

/// The quadratic character of `a` modulo the prime `q`: 0, 1 or −1.
fn chi(a: usize, q: usize) -> i32 {
    let a = a % q;
    if a == 0 {
        return 0;
    }
    // Euler's criterion: a^((q−1)/2) mod q.
    let (mut r, mut b, mut e) = (1u64, a as u64, (q - 1) / 2);
    while e > 0 {
        if e & 1 == 1 {
            r = r * b % q as u64;
        }
        b = b * b % q as u64;
        e >>= 1;
    }
    if r == 1 {
        1
    } else {
        -1
    }
}

/// The largest dense factor built (64 MiB of ±1 entries); larger orders are refused.
pub const MAX_DENSE: usize = 8192;

/// A ±1 Hadamard matrix of order `m` (row-major) for `m` ∈ {1, 2} or a Paley order, if the
/// constructions here reach it (and `m` ≤ [`MAX_DENSE`]).
fn dense_order(m: usize) -> Option<Vec<i8>> {
    match m {
        1 => return Some(vec![1]),
        2 => return Some(vec![1, 1, 1, -1]),
        _ => {}
    }
    if m % 4 != 0 || m > MAX_DENSE {
        return None;
    }
    // Paley I: q = m − 1 prime, q ≡ 3 (mod 4). H = I + S, S = [[0, 1ᵀ], [−1, Q]] with Q the
    // Jacobsthal matrix Q_ij = χ(j − i), skew-symmetric for such q.
    let q = m - 1;
    if is_prime(q) && q % 4 == 3 {
        let mut h = vec![0i8; m * m];
        for i in 0..m {
            for j in 0..m {
                let s = match (i, j) {
                    (0, 0) => 0,
                    (0, _) => 1,
                    (_, 0) => -1,
                    _ => chi(j + q - i, q),
                };
                h[i * m + j] = (s + if i == j { 1 } else { 0 }) as i8;
            }
        }
        return Some(h);
    }
    // Paley II: q = m/2 − 1 prime, q ≡ 1 (mod 4). C = [[0, 1ᵀ], [1, Q]] (symmetric conference
    // matrix), H = C ⊗ [[1, 1], [1, −1]] + I ⊗ [[1, −1], [−1, −1]].
    let q = m / 2 - 1;
    if is_prime(q) && q % 4 == 1 {
        let c = |i: usize, j: usize| -> i32 {
            match (i, j) {
                (0, 0) => 0,
                (0, _) | (_, 0) => 1,
                _ => chi(j + q - i, q),
            }
        };
        let k = q + 1;
        let mut h = vec![0i8; m * m];
        for i in 0..k {
            for j in 0..k {
                let cij = c(i, j);
                for (a, b, kron, eye) in [(0, 0, 1, 1), (0, 1, 1, -1), (1, 0, 1, -1), (1, 1, -1, -1)] {
                    let v = cij * kron + if i == j { eye } else { 0 };
                    h[(2 * i + a) * m + 2 * j + b] = v as i8;
                }
            }
        }
        return Some(h);
    }
    None
}

fn paley1(m: usize) -> bool {
    is_prime(m - 1) && (m - 1) % 4 == 3
}

fn paley2(m: usize) -> bool {
    m >= 4 && is_prime(m / 2 - 1) && (m / 2 - 1) % 4 == 1
}

/// A Hadamard matrix `H_m ⊗ H_{2ᵏ}` of order `n`, applied by a fast transform.
#[derive(Clone, Debug, PartialEq)]
pub struct Hadamard {
    n: usize,
    m: usize,
    dense: Vec<i8>,
}

impl Hadamard {
    /// The Hadamard matrix of order `n`, or an error saying which orders are reachable.
    pub fn new(n: usize) -> Result<Hadamard> {
        let mut p = 1;
        let mut best = None;
        while n % p == 0 && p <= n {
            if let Some(d) = dense_order(n / p) {
                best = Some((n / p, d));
            }
            p *= 2;
        }
        match best {
            Some((m, dense)) => Ok(Hadamard { n, m, dense }),
            None => {
                let span = n / 8 + 8;
                let near: Vec<String> = (n.saturating_sub(span).max(1)..=n + span)
                    .filter(|&k| Hadamard::reachable(k))
                    .map(|k| k.to_string())
                    .collect();
                Err(Error::Other(format!(
                    "no Hadamard matrix of order {n} is built here (orders 2ᵏ·m with m = 1, 2, p + 1 for a prime p ≡ 3 mod 4, or 2(p + 1) for a prime p ≡ 1 mod 4, m ≤ {MAX_DENSE}){}; use --rotate random for this width",
                    if near.is_empty() { String::new() } else { format!("; nearby orders that work: {}", near.join(", ")) }
                )))
            }
        }
    }

    /// Whether [`Hadamard::new`] reaches order `n`.
    pub fn reachable(n: usize) -> bool {
        let mut p = 1;
        while p <= n && n % p == 0 {
            let m = n / p;
            if m <= 2 || (m % 4 == 0 && m <= MAX_DENSE && (paley1(m) || paley2(m))) {
                return true;
            }
            p *= 2;
        }
        false
    }

    /// Order.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The dense factor's order `m` (`n = m · 2ᵏ`).
    pub fn dense_order(&self) -> usize {
        self.m
    }

    /// How it is built, for reports: `Paley 36 ⊗ Walsh 16`.
    pub fn describe(&self) -> String {
        let p = self.n / self.m;
        let dense = match self.m {
            1 => return format!("Walsh {p}"),
            2 => "Walsh 2".to_string(),
            m if is_prime(m - 1) && (m - 1) % 4 == 3 => format!("Paley I {m}"),
            m => format!("Paley II {m}"),
        };
        if p == 1 {
            dense
        } else {
            format!("{dense} ⊗ Walsh {p}")
        }
    }

    /// `x ← x·H/√n` for one row (length `n`).
    pub fn apply_row(&self, x: &mut [f64]) {
        debug_assert_eq!(x.len(), self.n);
        let p = self.n / self.m;
        // Walsh–Hadamard butterflies within each piece (Sylvester's matrix is symmetric).
        for piece in x.chunks_exact_mut(p) {
            let mut h = 1;
            while h < p {
                for i in (0..p).step_by(2 * h) {
                    for j in i..i + h {
                        let (a, b) = (piece[j], piece[j + h]);
                        piece[j] = a + b;
                        piece[j + h] = a - b;
                    }
                }
                h *= 2;
            }
        }
        // Across pieces: y[c] = Σ_a H_m[a, c] · x[a].
        if self.m > 1 {
            let m = self.m;
            let mut y = vec![0f64; self.n];
            for a in 0..m {
                let xa = &x[a * p..(a + 1) * p];
                for c in 0..m {
                    let s = self.dense[a * m + c] as f64;
                    let yc = &mut y[c * p..(c + 1) * p];
                    for (o, v) in yc.iter_mut().zip(xa) {
                        *o += s * v;
                    }
                }
            }
            x.copy_from_slice(&y);
        }
        let norm = 1.0 / (self.n as f64).sqrt();
        x.iter_mut().for_each(|v| *v *= norm);
    }
}

/// An orthogonal matrix `Q` of order `n`, applied to rows: `x ← x·Q`.
#[derive(Clone, Debug, PartialEq)]
pub enum Orthogonal {
    /// `diag(signs) · H/√n` (QuaRot's randomized Hadamard; all signs +1 for the plain one).
    Hadamard {
        /// The Hadamard matrix.
        h: Hadamard,
        /// ±1 per input channel.
        signs: Vec<f64>,
    },
    /// A dense orthogonal matrix, row-major (Haar-random from a seed).
    Dense {
        /// Order.
        n: usize,
        /// `[n, n]`.
        q: Vec<f64>,
    },
}

/// splitmix64 stream from a seed.
struct Splitmix(u64);
impl Splitmix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn uniform(&mut self) -> f64 {
        ((self.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

impl Orthogonal {
    /// The plain Hadamard rotation of order `n` (what online rotations use).
    pub fn hadamard(n: usize) -> Result<Orthogonal> {
        Ok(Orthogonal::Hadamard { h: Hadamard::new(n)?, signs: vec![1.0; n] })
    }

    /// A Hadamard rotation with seeded random signs on its input channels.
    pub fn random_hadamard(n: usize, seed: u64) -> Result<Orthogonal> {
        let h = Hadamard::new(n)?;
        let mut r = Splitmix(seed ^ 0x5151_7e7e_a5a5_0f0f);
        let signs = (0..n).map(|_| if r.next() >> 63 == 1 { -1.0 } else { 1.0 }).collect();
        Ok(Orthogonal::Hadamard { h, signs })
    }

    /// A Haar-random orthogonal matrix of order `n` from a seed: Gaussian entries, Gram–Schmidt
    /// twice (numerically orthogonal to ~1e-15), which is Q of the QR with R's diagonal positive.
    pub fn random(n: usize, seed: u64) -> Orthogonal {
        let mut r = Splitmix(seed ^ 0x0dd0_c0de_1234_5678);
        let mut q: Vec<f64> = (0..n * n).map(|_| r.normal()).collect();
        for i in 0..n {
            for _ in 0..2 {
                for j in 0..i {
                    let dot: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
                    for k in 0..n {
                        q[i * n + k] -= dot * q[j * n + k];
                    }
                }
            }
            let norm = (0..n).map(|k| q[i * n + k] * q[i * n + k]).sum::<f64>().sqrt();
            (0..n).for_each(|k| q[i * n + k] /= norm);
        }
        Orthogonal::Dense { n, q }
    }

    /// Order.
    pub fn n(&self) -> usize {
        match self {
            Orthogonal::Hadamard { h, .. } => h.n,
            Orthogonal::Dense { n, .. } => *n,
        }
    }

    /// What it is, for reports.
    pub fn describe(&self) -> String {
        match self {
            Orthogonal::Hadamard { h, signs } if signs.iter().all(|&s| s > 0.0) => {
                format!("Hadamard ({})", h.describe())
            }
            Orthogonal::Hadamard { h, .. } => format!("randomized Hadamard ({}, seeded signs)", h.describe()),
            Orthogonal::Dense { n, .. } => format!("random orthogonal {n}×{n} (seeded)"),
        }
    }

    /// `x ← x·Q` for one row of f64.
    pub fn apply_row64(&self, x: &mut [f64]) {
        match self {
            Orthogonal::Hadamard { h, signs } => {
                x.iter_mut().zip(signs).for_each(|(v, s)| *v *= s);
                h.apply_row(x);
            }
            Orthogonal::Dense { n, q } => {
                let mut y = vec![0f64; *n];
                for (k, &xk) in x.iter().enumerate() {
                    for (o, qv) in y.iter_mut().zip(&q[k * n..(k + 1) * n]) {
                        *o += xk * qv;
                    }
                }
                x.copy_from_slice(&y);
            }
        }
    }

    /// `x ← x·Q` for every row of `data` (rows of length `n`), in parallel.
    pub fn apply_rows(&self, data: &mut [f32]) {
        use rayon::prelude::*;
        let n = self.n();
        debug_assert_eq!(data.len() % n, 0);
        data.par_chunks_mut(n).for_each_init(
            || vec![0f64; n],
            |buf, row| {
                buf.iter_mut().zip(row.iter()).for_each(|(b, &v)| *b = v as f64);
                self.apply_row64(buf);
                row.iter_mut().zip(buf.iter()).for_each(|(v, &b)| *v = b as f32);
            },
        );
    }

    /// `W ← Qᵀ·W` for `w` `[n, cols]` row-major (a layer whose *output* is rotated).
    pub fn apply_left_transposed(&self, w: &mut [f32], cols: usize) {
        let n = self.n();
        debug_assert_eq!(w.len(), n * cols);
        let mut t = vec![0f32; w.len()];
        for r in 0..n {
            for c in 0..cols {
                t[c * n + r] = w[r * cols + c];
            }
        }
        self.apply_rows(&mut t);
        for r in 0..n {
            for c in 0..cols {
                w[r * cols + c] = t[c * n + r];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dense_of(o: &Orthogonal) -> Vec<f64> {
        let n = o.n();
        let mut m = vec![0f64; n * n];
        for i in 0..n {
            let mut row = vec![0f64; n];
            row[i] = 1.0;
            o.apply_row64(&mut row);
            m[i * n..(i + 1) * n].copy_from_slice(&row);
        }
        m
    }

    fn max_off_identity(o: &Orthogonal) -> f64 {
        let n = o.n();
        let q = dense_of(o);
        let mut worst = 0f64;
        for i in 0..n {
            for j in 0..n {
                let d: f64 = (0..n).map(|k| q[i * n + k] * q[j * n + k]).sum();
                worst = worst.max((d - if i == j { 1.0 } else { 0.0 }).abs());
            }
        }
        worst
    }

    #[test]
    fn dense_factors_are_hadamard_matrices() {
        // Paley I (q = 3, 7, 11, 19, 23, 31, 43, 47, 59, 67, 71) and II (q = 5, 13, 17, 29, 37).
        for m in [4, 8, 12, 20, 24, 32, 44, 48, 60, 68, 72, 12, 28, 36, 60, 76] {
            let h = dense_order(m).unwrap_or_else(|| panic!("order {m} not built"));
            for i in 0..m {
                for j in 0..m {
                    let d: i32 = (0..m).map(|k| h[i * m + k] as i32 * h[j * m + k] as i32).sum();
                    assert_eq!(d, if i == j { m as i32 } else { 0 }, "order {m}, rows {i} and {j}");
                }
            }
            assert!(h.iter().all(|&v| v == 1 || v == -1), "order {m} has entries other than ±1");
        }
    }

    #[test]
    fn transformer_widths_are_reached_and_orthogonal() {
        for (n, m) in [(64, 1), (576, 36), (1536, 12), (192, 12), (96, 12), (2048, 1), (768, 12), (3072, 12)] {
            let h = Hadamard::new(n).unwrap();
            assert_eq!(h.dense_order(), m, "order {n}");
            let o = Orthogonal::Hadamard { h, signs: vec![1.0; n] };
            if n <= 1536 {
                assert!(max_off_identity(&o) < 1e-12, "order {n}");
            }
        }
        let o = Orthogonal::random_hadamard(576, 7).unwrap();
        assert!(max_off_identity(&o) < 1e-12);
        let o = Orthogonal::random(96, 7);
        assert!(max_off_identity(&o) < 1e-12);
        assert_eq!(Hadamard::new(576).unwrap().describe(), "Paley II 36 ⊗ Walsh 16");
        assert_eq!(Hadamard::new(1536).unwrap().describe(), "Paley I 12 ⊗ Walsh 128");
    }

    #[test]
    fn unreachable_orders_are_refused_with_neighbours() {
        for n in [9, 6, 100, 18] {
            let e = Hadamard::new(n).unwrap_err().to_string();
            assert!(e.contains(&format!("order {n}")), "{e}");
            assert!(e.contains("nearby orders that work"), "{e}");
        }
        // LLaMA's 11008 = 2 · 5504, 5503 a prime ≡ 3 mod 4: reached, with a large dense factor.
        assert_eq!(Hadamard::new(11008).unwrap().dense_order(), 5504);
        // A dense factor past the limit is refused, not allocated (p = 1048571 is prime, ≡ 3 mod 4).
        assert!(!Hadamard::reachable(1048572));
        assert!(Hadamard::new(1048572).is_err());
        for n in 1..400 {
            assert_eq!(Hadamard::reachable(n), Hadamard::new(n).is_ok(), "order {n}");
        }
    }

    #[test]
    fn transposed_application_is_the_inverse_side() {
        // x·(QᵀW)ᵀ = (x·Wᵀ)·Q: rotating a layer's output rows equals rotating its output.
        let o = Orthogonal::random_hadamard(12, 3).unwrap();
        let cols = 5;
        let w: Vec<f32> = (0..12 * cols).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        let x: Vec<f32> = (0..cols).map(|i| i as f32 - 2.0).collect();
        let y: Vec<f32> = (0..12).map(|r| (0..cols).map(|c| w[r * cols + c] * x[c]).sum()).collect();
        let mut yq = y.clone();
        o.apply_rows(&mut yq);
        let mut w2 = w.clone();
        o.apply_left_transposed(&mut w2, cols);
        let y2: Vec<f32> = (0..12).map(|r| (0..cols).map(|c| w2[r * cols + c] * x[c]).sum()).collect();
        for (a, b) in yq.iter().zip(&y2) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
    }
}
