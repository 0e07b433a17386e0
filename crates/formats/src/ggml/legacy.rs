//! The legacy 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (and Q8_1's decoder).

// Index loops mirror ggml-quants.c line by line, which keeps them auditable against it.
#![allow(clippy::needless_range_loop)]

use super::blocks::*;
use super::search::*;
use super::Decode;

impl Decode for BlockQ4_0 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl Decode for BlockQ4_1 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let m = f16_le(self.m);
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = (q & 0x0F) as f32 * d + m;
            y[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

impl Decode for BlockQ5_0 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for (j, &q) in self.qs.iter().enumerate() {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = (((q & 0x0F) | h0) as i32 - 16) as f32 * d;
            y[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

impl Decode for BlockQ5_1 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let m = f16_le(self.m);
        let qh = u32::from_le_bytes(self.qh);
        for (j, &q) in self.qs.iter().enumerate() {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = ((q & 0x0F) | h0) as f32 * d + m;
            y[j + 16] = ((q >> 4) | h1) as f32 * d + m;
        }
    }
}

impl Decode for BlockQ8_0 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        for (o, &q) in y.iter_mut().zip(self.qs.iter()) {
            *o = (q as i8) as f32 * d;
        }
    }
}

impl Decode for BlockQ8_1 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        for (o, &q) in y.iter_mut().zip(self.qs.iter()) {
            *o = (q as i8) as f32 * d;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoders. `*_ref` mirror ggml's `quantize_row_*_ref`; `*_weighted` mirror the
// importance-weighted `quantize_row_*_impl` (one call per row: sigma2 is a row statistic).

/// Value with the largest magnitude (the first one on ties), as the legacy encoders pick it.
#[inline]
fn signed_absmax(x: &[f32]) -> f32 {
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

#[inline]
fn min_max(x: &[f32]) -> (f32, f32) {
    let mut min = f32::MAX;
    let mut max = -f32::MAX;
    for &v in x {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
    }
    (min, max)
}

/// C's float-to-integer conversion as x86-64 compilers emit it (`cvttss2si`): truncation
/// toward zero, and i32::MIN for NaN and out-of-range values. ggml's reference encoders reach
/// that case (undefined behaviour in C) when a block's scale underflows so that 1/d is
/// infinite; mirroring it keeps the bytes identical even for such blocks. Narrowing the result
/// to 8 bits then keeps the low byte, as `as i8` / `as u8` do.
#[inline(always)]
fn c_f32_to_i32(x: f32) -> i32 {
    // Written as a select (false for NaN) so that the hot loops stay branch-free.
    let in_range = (-2_147_483_648.0..2_147_483_648.0).contains(&x);
    let t = x as i32;
    if in_range {
        t
    } else {
        i32::MIN
    }
}

/// C's `roundf` (ties away from zero) converted as [`c_f32_to_i32`] does, without a libm
/// call: for |x| < 2^23, x - trunc(x) is exact in f32, so comparing it with ±0.5 decides
/// exactly as `roundf` does; larger values (and inf/NaN) are already integral.
#[inline(always)]
fn c_roundf_to_i32(x: f32) -> i32 {
    let t = c_f32_to_i32(x);
    let frac = x - t as f32;
    let adjust = (frac >= 0.5) as i32 - (frac <= -0.5) as i32;
    if x.abs() < 8_388_608.0 {
        t + adjust
    } else {
        t
    }
}

/// Packs 32 codes (< 16) as ggml does: element j in the low nibble, j + 16 in the high one.
#[inline]
fn pack_nibbles(codes: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| (codes[j] & 0x0F) | ((codes[j + 16] & 0x0F) << 4))
}

/// Splits 32 5-bit codes into nibbles and the u32 of fifth bits.
#[inline]
fn pack_5bit(codes: &[u8; 32]) -> ([u8; 16], [u8; 4]) {
    let mut qh = 0u32;
    for (j, &c) in codes.iter().enumerate() {
        qh |= (((c & 0x10) >> 4) as u32) << j;
    }
    (pack_nibbles(codes), qh.to_le_bytes())
}

/// The per-row variance term of the importance-weighted legacy encoders.
fn row_sigma2(x: &[f32]) -> f32 {
    let mut sum_x2 = 0f32;
    for &v in x {
        sum_x2 += v * v;
    }
    sum_x2 / x.len() as f32
}

/// ggml's importance weights: qw * sqrt(sigma2 + x²).
#[inline]
fn imatrix_weights(x: &[f32], qw: &[f32], sigma2: f32) -> [f32; 32] {
    std::array::from_fn(|j| qw[j] * (sigma2 + x[j] * x[j]).sqrt())
}

/// Q4_0 scale of one block (ggml `quantize_row_q4_0_ref`): d = max / -8.
fn q4_0_scale(x: &[f32]) -> f32 {
    signed_absmax(x) / -8.0
}

pub(crate) fn q4_0_ref(x: &[f32], y: &mut BlockQ4_0) {
    let d = q4_0_scale(x);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    // The codes use the unrounded f32 scale, as ggml's reference does.
    let codes: [u8; 32] = std::array::from_fn(|j| (c_f32_to_i32(x[j] * id + 8.5) as i8).min(15) as u8);
    y.qs = pack_nibbles(&codes);
}

pub(crate) fn q4_1_ref(x: &[f32], y: &mut BlockQ4_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    y.m = to_f16_le(min);
    let codes: [u8; 32] = std::array::from_fn(|j| (c_f32_to_i32((x[j] - min) * id + 0.5) as i8).min(15) as u8);
    y.qs = pack_nibbles(&codes);
}

pub(crate) fn q5_0_ref(x: &[f32], y: &mut BlockQ5_0) {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    let codes: [u8; 32] = std::array::from_fn(|j| (c_f32_to_i32(x[j] * id + 16.5) as i8).min(31) as u8);
    (y.qs, y.qh) = pack_5bit(&codes);
}

pub(crate) fn q5_1_ref(x: &[f32], y: &mut BlockQ5_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    y.m = to_f16_le(min);
    let codes: [u8; 32] = std::array::from_fn(|j| c_f32_to_i32((x[j] - min) * id + 0.5) as u8);
    (y.qs, y.qh) = pack_5bit(&codes);
}

pub(crate) fn q8_0_ref(x: &[f32], y: &mut BlockQ8_0) {
    let mut amax = 0f32;
    for &v in x {
        amax = if amax > v.abs() { amax } else { v.abs() };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    for (q, &v) in y.qs.iter_mut().zip(x) {
        *q = (c_roundf_to_i32(v * id) as i8) as u8;
    }
}

pub(crate) fn q4_0_weighted(x: &[f32], qw: &[f32], sigma2: f32, y: &mut BlockQ4_0) {
    let w = imatrix_weights(x, qw, sigma2);
    let mut l = [0i8; 32];
    let d = make_qx_quants(x, 8, &mut l, 1, Some(&w));
    y.d = to_f16_le(d);
    y.qs = pack_nibbles(&l.map(|v| v as u8));
}

pub(crate) fn q4_1_weighted(x: &[f32], qw: &[f32], sigma2: f32, y: &mut BlockQ4_1) {
    let w = imatrix_weights(x, qw, sigma2);
    let mut l = [0u8; 32];
    let (d, min) = make_qkx_quants(x, 15, &w, &mut l, -0.9, 0.05, 36, false, true);
    y.d = to_f16_le(d);
    y.m = to_f16_le(-min);
    y.qs = pack_nibbles(&l);
}

pub(crate) fn q5_0_weighted(x: &[f32], qw: &[f32], sigma2: f32, y: &mut BlockQ5_0) {
    let w = imatrix_weights(x, qw, sigma2);
    let mut l = [0i8; 32];
    let d = make_qx_quants(x, 16, &mut l, 1, Some(&w));
    y.d = to_f16_le(d);
    (y.qs, y.qh) = pack_5bit(&l.map(|v| v as u8));
}

pub(crate) fn q5_1_weighted(x: &[f32], qw: &[f32], sigma2: f32, y: &mut BlockQ5_1) {
    let w = imatrix_weights(x, qw, sigma2);
    let mut l = [0u8; 32];
    let (d, min) = make_qkx_quants(x, 31, &w, &mut l, -0.9, 0.05, 36, false, true);
    y.d = to_f16_le(d);
    y.m = to_f16_le(-min);
    (y.qs, y.qh) = pack_5bit(&l);
}

/// Encodes one row of 32-element blocks; `importance` switches to the weighted search where
/// ggml has one (Q8_0 ignores it, as ggml's `quantize_q8_0` does).
pub(crate) fn quantize_row(ty: super::GgmlType, x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) {
    use super::GgmlType::*;
    let sigma2 = importance.map(|_| row_sigma2(x));
    macro_rules! run {
        ($blk:ty, $ref_fn:ident, $w_fn:ident) => {{
            let ys = as_blocks_mut::<$blk>(out);
            match (importance, sigma2) {
                (Some(qw), Some(s2)) => {
                    for (ib, (xb, y)) in x.chunks_exact(32).zip(ys.iter_mut()).enumerate() {
                        $w_fn(xb, &qw[32 * ib..32 * ib + 32], s2, y);
                    }
                }
                _ => {
                    for (xb, y) in x.chunks_exact(32).zip(ys.iter_mut()) {
                        $ref_fn(xb, y);
                    }
                }
            }
        }};
    }
    match ty {
        Q4_0 => run!(BlockQ4_0, q4_0_ref, q4_0_weighted),
        Q4_1 => run!(BlockQ4_1, q4_1_ref, q4_1_weighted),
        Q5_0 => run!(BlockQ5_0, q5_0_ref, q5_0_weighted),
        Q5_1 => run!(BlockQ5_1, q5_1_ref, q5_1_weighted),
        Q8_0 => {
            for (xb, y) in x.chunks_exact(32).zip(as_blocks_mut::<BlockQ8_0>(out).iter_mut()) {
                q8_0_ref(xb, y);
            }
        }
        _ => unreachable!("legacy::quantize_row called for {}", ty.name()),
    }
}
