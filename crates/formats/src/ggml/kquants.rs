//! The k-quants: 256-element super-blocks Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (and Q8_K's decoder).

// Index loops mirror ggml-quants.c line by line, which keeps them auditable against it.
#![allow(clippy::needless_range_loop)]

use super::blocks::*;
use super::search::*;
use super::Decode;

/// Unpacks the 6-bit (scale, min) pair `j` (0..8) of Q4_K / Q5_K's 12 packed scale bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// Unpacks Q3_K's 16 6-bit scales (stored biased by 32) from their 12 packed bytes.
pub(crate) fn q3k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 { packed[j] & 0x0F } else { packed[j - 8] >> 4 };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i32 - 32) as i8;
    }
    out
}

impl Decode for BlockQ2K {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        let mut is = 0;
        for n in 0..2 {
            let q = &self.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0x0F) as f32;
                    let ml = min * (sc >> 4) as f32;
                    let base = 128 * n + 32 * j + 16 * half;
                    for l in 0..16 {
                        y[base + l] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

impl Decode for BlockQ3K {
    fn decode(&self, y: &mut [f32]) {
        let d_all = f16_le(self.d);
        let scales = q3k_scales(&self.scales);
        let mut is = 0;
        let mut m: u8 = 1;
        for n in 0..2 {
            let q = &self.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let dl = d_all * scales[is] as f32;
                    is += 1;
                    let base = 128 * n + 32 * j + 16 * half;
                    for l in 0..16 {
                        let k = l + 16 * half;
                        let lo = ((q[k] >> shift) & 3) as i32;
                        let sub = if self.hmask[k] & m != 0 { 0 } else { 4 };
                        y[base + l] = dl * (lo - sub) as f32;
                    }
                }
                m <<= 1;
            }
        }
    }
}

impl Decode for BlockQ4K {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        for j in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * j, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &self.qs[32 * j..32 * j + 32];
            let out = &mut y[64 * j..64 * j + 64];
            for l in 0..32 {
                out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

impl Decode for BlockQ5K {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        for j in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * j, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let q = &self.qs[32 * j..32 * j + 32];
            let out = &mut y[64 * j..64 * j + 64];
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                out[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
                out[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

impl Decode for BlockQ6K {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        for n in 0..2 {
            let ql = &self.ql[64 * n..64 * n + 64];
            let qh = &self.qh[32 * n..32 * n + 32];
            let sc = &self.scales[8 * n..8 * n + 8];
            let out = &mut y[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                // Same association as ggml: (d * scale) * q.
                out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

impl Decode for BlockQ8K {
    fn decode(&self, y: &mut [f32]) {
        let d = f32::from_le_bytes(self.d);
        for (o, &q) in y.iter_mut().zip(self.qs.iter()) {
            *o = d * (q as i8) as f32;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoders: `*_ref` mirror ggml's `quantize_row_*_ref`, `*_weighted` the importance-weighted
// `quantize_row_*_impl`. Each takes one 256-value super-block (`qw`: its 256 importances).

/// Packs four 2-bit code planes as Q2_K / Q3_K store them.
fn pack_2bit(l: &[u8; QK_K]) -> [u8; 64] {
    let mut qs = [0u8; 64];
    for j in (0..QK_K).step_by(128) {
        for i in 0..32 {
            qs[j / 4 + i] = l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
        }
    }
    qs
}

/// Requantizes Q2_K codes against the stored (f16-rounded) scales, as ggml does.
fn q2k_requantize(x: &[f32], y: &BlockQ2K, l: &mut [u8; QK_K]) {
    let dm = f16_le(y.d);
    let mm = f16_le(y.dmin);
    for j in 0..QK_K / 16 {
        let d = dm * (y.scales[j] & 0x0F) as f32;
        if d == 0.0 {
            continue;
        }
        let m = mm * (y.scales[j] >> 4) as f32;
        for ii in 0..16 {
            l[16 * j + ii] = nearest_int((x[16 * j + ii] + m) / d).clamp(0, 3) as u8;
        }
    }
}

pub(crate) fn q2k_ref(x: &[f32], y: &mut BlockQ2K) {
    let mut l = [0u8; QK_K];
    let mut mins = [0f32; 16];
    let mut scales = [0f32; 16];
    let q4scale = 15f32;
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let weights: [f32; 16] = std::array::from_fn(|i| xs[i].abs());
        let (s, m) = make_qkx_quants(xs, 3, &weights, &mut l[16 * j..16 * j + 16], -0.5, 0.1, 15, true, false);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    if max_scale > 0.0 {
        let iscale = q4scale / max_scale;
        for j in 0..16 {
            y.scales[j] = nearest_int(iscale * scales[j]) as u8;
        }
        y.d = to_f16_le(max_scale / q4scale);
    } else {
        y.scales = [0; 16];
        y.d = to_f16_le(0.0);
    }
    if max_min > 0.0 {
        let iscale = q4scale / max_min;
        for j in 0..16 {
            y.scales[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
        }
        y.dmin = to_f16_le(max_min / q4scale);
    } else {
        y.dmin = to_f16_le(0.0);
    }
    q2k_requantize(x, y, &mut l);
    y.qs = pack_2bit(&l);
}

pub(crate) fn q2k_weighted(x: &[f32], qw: &[f32], y: &mut BlockQ2K) {
    let mut l = [0u8; QK_K];
    let mut mins = [0f32; 16];
    let mut scales = [0f32; 16];
    let mut sw = [0f32; 16];
    let mut sumx2 = 0f32;
    for &v in &x[..QK_K] {
        sumx2 += v * v;
    }
    let sigma2 = sumx2 / QK_K as f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let weight: [f32; 16] = std::array::from_fn(|i| qw[16 * j + i] * (sigma2 + xs[i] * xs[i]).sqrt());
        for w in weight {
            sw[j] += w;
        }
        let (s, m) = make_qkx_quants(xs, 3, &weight, &mut l[16 * j..16 * j + 16], -0.9, 0.05, 36, false, true);
        scales[j] = s;
        mins[j] = m;
    }
    let mut ls = [0u8; 16];
    let mut lm = [0u8; 16];
    let dm = make_qp_quants(&scales, 15, &mut ls, &sw);
    let mm = make_qp_quants(&mins, 15, &mut lm, &sw);
    y.d = to_f16_le(dm);
    y.dmin = to_f16_le(mm);
    for j in 0..16 {
        y.scales[j] = ls[j] | (lm[j] << 4);
    }
    q2k_requantize(x, y, &mut l);
    y.qs = pack_2bit(&l);
}

/// Stores Q3_K's 16 6-bit scale codes (0..64) in its 12-byte packing.
fn q3k_pack_scales(codes: &[i32; 16]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for (j, &c) in codes.iter().enumerate() {
        let mut l = c;
        if j < 8 {
            s[j] = (l & 0x0F) as u8;
        } else {
            s[j - 8] |= ((l & 0x0F) << 4) as u8;
        }
        l >>= 4;
        s[j % 4 + 8] |= (l << (2 * (j / 4))) as u8;
    }
    s
}

/// Requantizes Q3_K codes against the stored scales, then splits off the high bits.
fn q3k_finish(x: &[f32], y: &mut BlockQ3K, l: &mut [i8; QK_K]) {
    let d_all = f16_le(y.d);
    let sc = q3k_scales(&y.scales);
    for j in 0..16 {
        let d = d_all * sc[j] as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-4, 3) + 4) as i8;
        }
    }
    y.hmask = [0; 32];
    let mut lu = [0u8; QK_K];
    for j in 0..QK_K {
        let mut v = l[j];
        if v > 3 {
            y.hmask[j % 32] |= 1 << (j / 32);
            v -= 4;
        }
        lu[j] = v as u8;
    }
    y.qs = pack_2bit(&lu);
}

pub(crate) fn q3k_ref(x: &[f32], y: &mut BlockQ3K) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let mut max_scale = 0f32;
    let mut amax = 0f32;
    for j in 0..16 {
        scales[j] = make_q3_quants(&x[16 * j..16 * j + 16], 4, &mut l[16 * j..16 * j + 16], true);
        let s = scales[j].abs();
        if s > amax {
            amax = s;
            max_scale = scales[j];
        }
    }
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        // ggml narrows to int8 before clamping.
        let codes: [i32; 16] =
            std::array::from_fn(|j| (nearest_int(iscale * scales[j]) as i8 as i32).clamp(-32, 31) + 32);
        y.scales = q3k_pack_scales(&codes);
        y.d = to_f16_le(1.0 / iscale);
    } else {
        y.scales = [0; 12];
        y.d = to_f16_le(0.0);
    }
    q3k_finish(x, y, &mut l);
}

pub(crate) fn q3k_weighted(x: &[f32], qw: &[f32], y: &mut BlockQ3K) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let mut sw = [0f32; 16];
    let mut sumx2 = 0f32;
    for &v in &x[..QK_K] {
        sumx2 += v * v;
    }
    let sigma2 = 2.0 * sumx2 / QK_K as f32;
    for j in 0..16 {
        let xs = &x[16 * j..16 * j + 16];
        let weight: [f32; 16] = std::array::from_fn(|i| qw[16 * j + i] * (sigma2 + xs[i] * xs[i]).sqrt());
        let mut sumw = 0f32;
        for w in weight {
            sumw += w;
        }
        sw[j] = sumw;
        scales[j] = make_qx_quants(xs, 4, &mut l[16 * j..16 * j + 16], 1, Some(&weight));
    }
    let mut ls = [0i8; 16];
    let d_block = make_qx_quants(&scales, 32, &mut ls, 1, Some(&sw));
    y.scales = q3k_pack_scales(&ls.map(|v| v as i32));
    y.d = to_f16_le(d_block);
    q3k_finish(x, y, &mut l);
}

/// Packs 8 (scale, min) 6-bit pairs into Q4_K / Q5_K's 12 bytes.
fn pack_scale_min_k4(ls: &[u8; 8], lm: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            s[j] = ls[j];
            s[j + 4] = lm[j];
        } else {
            s[j + 4] = (ls[j] & 0x0F) | ((lm[j] & 0x0F) << 4);
            s[j - 4] |= (ls[j] >> 4) << 6;
            s[j] |= (lm[j] >> 4) << 6;
        }
    }
    s
}

/// Requantizes Q4_K / Q5_K codes (0..=nmax) against the stored scales and mins.
fn k4_requantize(x: &[f32], d_all: f32, dmin_all: f32, scales: &[u8; 12], nmax: i32, l: &mut [u8; QK_K]) {
    for j in 0..8 {
        let (sc, m) = scale_min_k4(j, scales);
        let d = d_all * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = dmin_all * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / d).clamp(0, nmax) as u8;
        }
    }
}

/// Sub-block scales and mins of the reference Q4_K / Q5_K search, reduced to 6-bit codes
/// and super-block (d, dmin).
fn k4_ref_scales(x: &[f32], nmax: i32, rmin: f32, nstep: i32, l: &mut [u8; QK_K]) -> ([u8; 12], f32, f32) {
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let mut max_scale = 0f32;
    let mut max_min = 0f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = std::array::from_fn(|i| av_x + xs[i].abs());
        let (s, m) = make_qkx_quants(xs, nmax, &weights, &mut l[32 * j..32 * j + 32], rmin, 0.1, nstep, false, false);
        scales[j] = s;
        mins[j] = m;
        if s > max_scale {
            max_scale = s;
        }
        if m > max_min {
            max_min = m;
        }
    }
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    // ggml narrows to uint8 (wrapping) before clamping to 63.
    let ls: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    (pack_scale_min_k4(&ls, &lm), max_scale / 63.0, max_min / 63.0)
}

/// Sub-block scales and mins of the importance-weighted Q4_K / Q5_K search.
fn k4_weighted_scales(x: &[f32], qw: &[f32], nmax: i32, clamp63: bool, l: &mut [u8; QK_K]) -> ([u8; 12], f32, f32) {
    let mut mins = [0f32; 8];
    let mut scales = [0f32; 8];
    let mut sw = [0f32; 8];
    let mut sum_x2 = 0f32;
    for &v in &x[..QK_K] {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let weights: [f32; 32] = std::array::from_fn(|i| qw[32 * j + i] * (sigma2 + xs[i] * xs[i]).sqrt());
        let mut sumw = 0f32;
        for w in weights {
            sumw += w;
        }
        sw[j] = sumw;
        let (s, m) = make_qkx_quants(xs, nmax, &weights, &mut l[32 * j..32 * j + 32], -0.9, 0.05, 36, false, true);
        scales[j] = s;
        mins[j] = m;
    }
    let mut ls = [0u8; 8];
    let mut lm = [0u8; 8];
    let d_block = make_qp_quants(&scales, 63, &mut ls, &sw);
    let m_block = make_qp_quants(&mins, 63, &mut lm, &sw);
    // ggml's Q5_K clamps the codes to 63 here and Q4_K does not: they differ only if a code
    // wrapped from a negative value, which is mirrored either way.
    if clamp63 {
        ls = ls.map(|v| v.min(63));
        lm = lm.map(|v| v.min(63));
    }
    (pack_scale_min_k4(&ls, &lm), d_block, m_block)
}

fn q4k_store(x: &[f32], y: &mut BlockQ4K, scales: [u8; 12], d: f32, dmin: f32, l: &mut [u8; QK_K]) {
    y.scales = scales;
    y.d = to_f16_le(d);
    y.dmin = to_f16_le(dmin);
    k4_requantize(x, f16_le(y.d), f16_le(y.dmin), &y.scales, 15, l);
    for j in 0..4 {
        for i in 0..32 {
            y.qs[32 * j + i] = l[64 * j + i] | (l[64 * j + i + 32] << 4);
        }
    }
}

fn q5k_store(x: &[f32], y: &mut BlockQ5K, scales: [u8; 12], d: f32, dmin: f32, l: &mut [u8; QK_K]) {
    y.scales = scales;
    y.d = to_f16_le(d);
    y.dmin = to_f16_le(dmin);
    k4_requantize(x, f16_le(y.d), f16_le(y.dmin), &y.scales, 31, l);
    y.qh = [0; 32];
    for n in 0..4 {
        let (m1, m2) = (1u8 << (2 * n), 2u8 << (2 * n));
        for j in 0..32 {
            let mut l1 = l[64 * n + j];
            if l1 > 15 {
                l1 -= 16;
                y.qh[j] |= m1;
            }
            let mut l2 = l[64 * n + j + 32];
            if l2 > 15 {
                l2 -= 16;
                y.qh[j] |= m2;
            }
            y.qs[32 * n + j] = l1 | (l2 << 4);
        }
    }
}

pub(crate) fn q4k_ref(x: &[f32], y: &mut BlockQ4K) {
    let mut l = [0u8; QK_K];
    let (scales, d, dmin) = k4_ref_scales(x, 15, -1.0, 20, &mut l);
    q4k_store(x, y, scales, d, dmin, &mut l);
}

pub(crate) fn q4k_weighted(x: &[f32], qw: &[f32], y: &mut BlockQ4K) {
    let mut l = [0u8; QK_K];
    let (scales, d, dmin) = k4_weighted_scales(x, qw, 15, false, &mut l);
    q4k_store(x, y, scales, d, dmin, &mut l);
}

pub(crate) fn q5k_ref(x: &[f32], y: &mut BlockQ5K) {
    let mut l = [0u8; QK_K];
    let (scales, d, dmin) = k4_ref_scales(x, 31, -0.5, 15, &mut l);
    q5k_store(x, y, scales, d, dmin, &mut l);
}

pub(crate) fn q5k_weighted(x: &[f32], qw: &[f32], y: &mut BlockQ5K) {
    let mut l = [0u8; QK_K];
    let (scales, d, dmin) = k4_weighted_scales(x, qw, 31, true, &mut l);
    q5k_store(x, y, scales, d, dmin, &mut l);
}

/// Q6_K reference and weighted paths differ only in the weights given to `make_qx_quants`.
fn q6k_impl(x: &[f32], qw: Option<&[f32]>, y: &mut BlockQ6K) {
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; 16];
    let mut max_scale = 0f32;
    let mut max_abs_scale = 0f32;
    for ib in 0..16 {
        let w = qw.map(|q| &q[16 * ib..16 * ib + 16]);
        let scale = make_qx_quants(&x[16 * ib..16 * ib + 16], 32, &mut l[16 * ib..16 * ib + 16], 1, w);
        scales[ib] = scale;
        if scale.abs() > max_abs_scale {
            max_abs_scale = scale.abs();
            max_scale = scale;
        }
    }
    if max_abs_scale < GROUP_MAX_EPS {
        *y = BlockQ6K::ZERO;
        return;
    }
    let iscale = -128.0 / max_scale;
    y.d = to_f16_le(1.0 / iscale);
    for ib in 0..16 {
        y.scales[ib] = nearest_int(iscale * scales[ib]).min(127) as i8 as u8;
    }
    let d_all = f16_le(y.d);
    for j in 0..16 {
        let d = d_all * (y.scales[j] as i8) as f32;
        if d == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / d).clamp(-32, 31) + 32) as i8;
        }
    }
    let l = l.map(|v| v as u8);
    for n in 0..2 {
        let (j, ql, qh) = (128 * n, 64 * n, 32 * n);
        for i in 0..32 {
            let q1 = l[j + i] & 0x0F;
            let q2 = l[j + i + 32] & 0x0F;
            let q3 = l[j + i + 64] & 0x0F;
            let q4 = l[j + i + 96] & 0x0F;
            y.ql[ql + i] = q1 | (q3 << 4);
            y.ql[ql + i + 32] = q2 | (q4 << 4);
            y.qh[qh + i] = (l[j + i] >> 4)
                | ((l[j + i + 32] >> 4) << 2)
                | ((l[j + i + 64] >> 4) << 4)
                | ((l[j + i + 96] >> 4) << 6);
        }
    }
}

pub(crate) fn q6k_ref(x: &[f32], y: &mut BlockQ6K) {
    q6k_impl(x, None, y);
}

pub(crate) fn q6k_weighted(x: &[f32], qw: &[f32], y: &mut BlockQ6K) {
    q6k_impl(x, Some(qw), y);
}

/// Encodes one row of super-blocks (`importance`: one weight per column of the row).
pub(crate) fn quantize_row(ty: super::GgmlType, x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) {
    use super::GgmlType::*;
    macro_rules! run {
        ($blk:ty, $ref_fn:ident, $w_fn:ident) => {{
            let ys = as_blocks_mut::<$blk>(out);
            for (ib, (xb, y)) in x.chunks_exact(QK_K).zip(ys.iter_mut()).enumerate() {
                match importance {
                    Some(qw) => $w_fn(xb, &qw[QK_K * ib..QK_K * ib + QK_K], y),
                    None => $ref_fn(xb, y),
                }
            }
        }};
    }
    match ty {
        Q2K => run!(BlockQ2K, q2k_ref, q2k_weighted),
        Q3K => run!(BlockQ3K, q3k_ref, q3k_weighted),
        Q4K => run!(BlockQ4K, q4k_ref, q4k_weighted),
        Q5K => run!(BlockQ5K, q5k_ref, q5k_weighted),
        Q6K => run!(BlockQ6K, q6k_ref, q6k_weighted),
        _ => unreachable!("kquants::quantize_row called for {}", ty.name()),
    }
}
