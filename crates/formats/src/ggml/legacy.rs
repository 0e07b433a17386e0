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

/// Value with the largest magnitude (the first one on ties), as the legacy encoders pick it
/// (ggml scans keeping the first strictly larger |v|; 0 when every value is zero). Computed as
/// the largest |v| in eight lanes (a maximum does not depend on the order), then the first
/// value that reaches it: the same value, and vectorisable.
#[inline(always)]
fn signed_absmax(x: &[f32]) -> f32 {
    let amax = abs_max(x);
    if amax == 0.0 {
        return 0.0;
    }
    x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0)
}

/// The largest |v| (0 for an empty slice), in eight lanes.
#[inline(always)]
fn abs_max(x: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            let a = c[k].abs();
            lanes[k] = if lanes[k] > a { lanes[k] } else { a };
        }
    }
    let mut m = 0f32;
    for a in lanes.into_iter().chain(chunks.remainder().iter().map(|v| v.abs())) {
        m = if m > a { m } else { a };
    }
    m
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
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
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
#[cfg_attr(all(target_arch = "x86_64", not(test)), allow(dead_code))]
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

/// `c_f32_to_i32((x[j] - sub) * mul + add)` for a block of 32 (without `sub` when it is
/// `None`), the f32 operations in that order. On x86-64 four lanes at a time with SSE2's
/// truncating conversion, which is `cvttss2si`'s own rule (i32::MIN for NaN and out-of-range
/// values), so the codes are those of the scalar expression; the saturating `as` of Rust does
/// not vectorise.
#[inline(always)]
fn trunc_affine(x: &[f32], sub: Option<f32>, mul: f32, add: f32) -> [i32; 32] {
    let x: &[f32; 32] = x.try_into().expect("a block of 32");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let mut out = [0i32; 32];
        // SAFETY: SSE2 is part of the x86-64 baseline; loads and stores are unaligned and in
        // bounds (eight groups of four within arrays of 32).
        unsafe {
            let (vm, va) = (_mm_set1_ps(mul), _mm_set1_ps(add));
            for k in 0..8 {
                let mut v = _mm_loadu_ps(x.as_ptr().add(4 * k));
                if let Some(s) = sub {
                    v = _mm_sub_ps(v, _mm_set1_ps(s));
                }
                let r = _mm_add_ps(_mm_mul_ps(v, vm), va);
                _mm_storeu_si128(out.as_mut_ptr().add(4 * k) as *mut __m128i, _mm_cvttps_epi32(r));
            }
        }
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::array::from_fn(|j| c_f32_to_i32(sub.map_or(x[j], |s| x[j] - s) * mul + add))
    }
}

/// `c_roundf_to_i32(x[j] * mul)` for a block of 32, four lanes at a time on x86-64 (see
/// [`trunc_affine`]; the rounding adjustment is [`c_roundf_to_i32`]'s, lane by lane).
#[inline(always)]
fn round_scaled(x: &[f32], mul: f32) -> [i32; 32] {
    let x: &[f32; 32] = x.try_into().expect("a block of 32");
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let mut out = [0i32; 32];
        // SAFETY: as in `trunc_affine`.
        unsafe {
            let vm = _mm_set1_ps(mul);
            let (half, neg_half) = (_mm_set1_ps(0.5), _mm_set1_ps(-0.5));
            let limit = _mm_set1_ps(8_388_608.0);
            let sign = _mm_set1_ps(-0.0);
            for k in 0..8 {
                let v = _mm_mul_ps(_mm_loadu_ps(x.as_ptr().add(4 * k)), vm);
                let t = _mm_cvttps_epi32(v);
                let frac = _mm_sub_ps(v, _mm_cvtepi32_ps(t));
                // Masks are -1 where true: adjust = (frac >= 0.5) - (frac <= -0.5).
                let up = _mm_castps_si128(_mm_cmpge_ps(frac, half));
                let down = _mm_castps_si128(_mm_cmple_ps(frac, neg_half));
                let adjust = _mm_sub_epi32(down, up);
                let small = _mm_castps_si128(_mm_cmplt_ps(_mm_andnot_ps(sign, v), limit));
                let r = _mm_add_epi32(t, _mm_and_si128(adjust, small));
                _mm_storeu_si128(out.as_mut_ptr().add(4 * k) as *mut __m128i, r);
            }
        }
        out
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        std::array::from_fn(|j| c_roundf_to_i32(x[j] * mul))
    }
}

/// Packs 32 codes (< 16) as ggml does: element j in the low nibble, j + 16 in the high one.
#[inline(always)]
fn pack_nibbles(codes: &[u8; 32]) -> [u8; 16] {
    std::array::from_fn(|j| (codes[j] & 0x0F) | ((codes[j + 16] & 0x0F) << 4))
}

/// Splits 32 5-bit codes into nibbles and the u32 of fifth bits.
#[inline(always)]
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
#[inline(always)]
fn q4_0_scale(x: &[f32]) -> f32 {
    signed_absmax(x) / -8.0
}

#[inline(always)]
pub(crate) fn q4_0_ref(x: &[f32], y: &mut BlockQ4_0) {
    let d = q4_0_scale(x);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    // The codes use the unrounded f32 scale, as ggml's reference does.
    let t = trunc_affine(x, None, id, 8.5);
    let codes: [u8; 32] = std::array::from_fn(|j| (t[j] as i8).min(15) as u8);
    y.qs = pack_nibbles(&codes);
}

#[inline(always)]
pub(crate) fn q4_1_ref(x: &[f32], y: &mut BlockQ4_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 15.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    y.m = to_f16_le(min);
    let t = trunc_affine(x, Some(min), id, 0.5);
    let codes: [u8; 32] = std::array::from_fn(|j| (t[j] as i8).min(15) as u8);
    y.qs = pack_nibbles(&codes);
}

#[inline(always)]
pub(crate) fn q5_0_ref(x: &[f32], y: &mut BlockQ5_0) {
    let d = signed_absmax(x) / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    let t = trunc_affine(x, None, id, 16.5);
    let codes: [u8; 32] = std::array::from_fn(|j| (t[j] as i8).min(31) as u8);
    (y.qs, y.qh) = pack_5bit(&codes);
}

#[inline(always)]
pub(crate) fn q5_1_ref(x: &[f32], y: &mut BlockQ5_1) {
    let (min, max) = min_max(x);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    y.m = to_f16_le(min);
    let t = trunc_affine(x, Some(min), id, 0.5);
    let codes: [u8; 32] = std::array::from_fn(|j| t[j] as u8);
    (y.qs, y.qh) = pack_5bit(&codes);
}

#[inline(always)]
pub(crate) fn q8_0_ref(x: &[f32], y: &mut BlockQ8_0) {
    // The maximum of |v| (inputs are finite), whatever the order of comparisons.
    let amax = abs_max(x);
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    y.d = to_f16_le(d);
    let r = round_scaled(x, id);
    for (q, &v) in y.qs.iter_mut().zip(&r) {
        *q = (v as i8) as u8;
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
    #[cfg(target_arch = "x86_64")]
    {
        if ty == super::GgmlType::Q8_0 && q8_0_fused() {
            q8_0_row_fused(x, out);
            return;
        }
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has the feature the function was compiled for.
            return unsafe { quantize_row_avx2(ty, x, importance, out) };
        }
    }
    quantize_row_body(ty, x, importance, out)
}

/// The same code compiled for AVX2, so that the per-block loops vectorise. The arithmetic is
/// the scalar f32 operations in the same order (Rust never fuses a multiply and an add), so
/// the bytes do not depend on the path taken.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_row_avx2(ty: super::GgmlType, x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) {
    quantize_row_body(ty, x, importance, out)
}

/// Whether [`q8_0_row_fused`] can run here (it checks finiteness in its own pass).
pub(crate) fn q8_0_fused() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Q8_0 blocks of `x` into `out`, and whether every value was finite (the blocks are
/// meaningless when not). Only where [`q8_0_fused`] says so.
pub(crate) fn q8_0_row_fused(x: &[f32], out: &mut [u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        assert!(q8_0_fused(), "q8_0_row_fused needs AVX2");
        // SAFETY: the CPU has AVX2 (asserted).
        unsafe { q8_0_row_avx2(x, out) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, out);
        unreachable!("q8_0_row_fused needs AVX2")
    }
}

/// Q8_0 rows in eight-lane registers: the same operations as [`q8_0_ref`] on each value
/// (|x| maximum, d = amax / 127, x · (1 / d), rounded half away from zero as C's `roundf`),
/// so the same bytes; the low bytes of the 32 codes are narrowed with two unsigned packs and
/// put back in order with one permute.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn q8_0_row_avx2(x: &[f32], out: &mut [u8]) -> bool {
    use std::arch::x86_64::*;
    let abs = _mm256_set1_epi32(0x7fff_ffff);
    let mut finite = true;
    let (half, neg_half, one) = (_mm256_set1_ps(0.5), _mm256_set1_ps(-0.5), _mm256_set1_ps(1.0));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let low = _mm256_set1_epi32(0xff);
    for (xb, y) in x.chunks_exact(32).zip(as_blocks_mut::<BlockQ8_0>(out).iter_mut()) {
        let p = xb.as_ptr();
        // SAFETY: xb holds 32 floats.
        let v = [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)), _mm256_loadu_ps(p.add(16)), _mm256_loadu_ps(p.add(24))];
        // |x| as integers: for finite values their order is the floats' order, and a maximum
        // at or above the infinity pattern means the block holds an infinity or a NaN.
        let a0 = _mm256_and_si256(_mm256_castps_si256(v[0]), abs);
        let a1 = _mm256_and_si256(_mm256_castps_si256(v[1]), abs);
        let a2 = _mm256_and_si256(_mm256_castps_si256(v[2]), abs);
        let a3 = _mm256_and_si256(_mm256_castps_si256(v[3]), abs);
        let m = _mm256_max_epu32(_mm256_max_epu32(a0, a1), _mm256_max_epu32(a2, a3));
        let m = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
        let m = _mm_max_epu32(m, _mm_unpackhi_epi64(m, m));
        let bits = _mm_cvtsi128_si32(_mm_max_epu32(m, _mm_shuffle_epi32(m, 1))) as u32;
        finite &= bits < 0x7f80_0000;
        let amax = f32::from_bits(bits);
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        y.d = to_f16_le(d);
        let vid = _mm256_set1_ps(id);
        // (A loop, not a closure: a closure is not compiled with this function's AVX2.)
        let mut q = [_mm256_setzero_si256(); 4];
        for k in 0..4 {
            let v = _mm256_mul_ps(v[k], vid);
            let t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            let frac = _mm256_sub_ps(v, t);
            let up = _mm256_and_ps(_mm256_cmp_ps(frac, half, _CMP_GE_OQ), one);
            let down = _mm256_and_ps(_mm256_cmp_ps(frac, neg_half, _CMP_LE_OQ), one);
            // The low byte, as the reference's `as i8` keeps it (an infinite or NaN product,
            // from a subnormal d, converts to i32::MIN, whose low byte is 0).
            q[k] = _mm256_and_si256(_mm256_cvttps_epi32(_mm256_sub_ps(_mm256_add_ps(t, up), down)), low);
        }
        let w = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]), _mm256_packus_epi32(q[2], q[3]));
        let w = _mm256_permutevar8x32_epi32(w, order);
        _mm256_storeu_si256(y.qs.as_mut_ptr() as *mut __m256i, w);
    }
    finite
}

#[inline(always)]
fn quantize_row_body(ty: super::GgmlType, x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 Q8_0 rows give the scalar reference's bytes, ties and all-zero blocks included.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn q8_0_vector_rows_match_the_reference() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut x: Vec<f32> = (0..32 * 64).map(|_| next() * 3.0).collect();
        // A block whose values sit on half-steps of d = 127 / 127 = 1: every one a tie.
        for (j, v) in x[32..64].iter_mut().enumerate() {
            *v = if j == 0 { 127.0 } else { (j as f32 - 16.0) + 0.5 };
        }
        x[64..96].fill(0.0);
        x[96..128].iter_mut().for_each(|v| *v *= 1e-30);
        // A subnormal d: 1 / d is infinite and the products infinite or NaN.
        x[128..160].iter_mut().enumerate().for_each(|(j, v)| *v = if j % 3 == 0 { 0.0 } else { 1e-44 * j as f32 });
        let mut want = vec![0u8; 64 * 34];
        for (xb, y) in x.chunks_exact(32).zip(as_blocks_mut::<BlockQ8_0>(&mut want).iter_mut()) {
            q8_0_ref(xb, y);
        }
        let mut got = vec![0u8; 64 * 34];
        // SAFETY: the CPU has AVX2 (checked above).
        assert!(unsafe { q8_0_row_avx2(&x, &mut got) });
        assert_eq!(got, want);
        for bad in [f32::NAN, f32::INFINITY, -f32::INFINITY] {
            let mut y = x.clone();
            y[1000] = bad;
            // SAFETY: as above.
            assert!(!unsafe { q8_0_row_avx2(&y, &mut got) });
        }
    }

    /// ggml's scan, as written in `quantize_row_q4_0_ref`.
    fn scan_signed_absmax(x: &[f32]) -> f32 {
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in x {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        max
    }

    fn scan_abs_max(x: &[f32]) -> f32 {
        let mut amax = 0f32;
        for &v in x {
            amax = if amax > v.abs() { amax } else { v.abs() };
        }
        amax
    }

    #[test]
    fn lane_conversions_give_the_scalar_codes() {
        let mut next = crate::xorshift(0x9E3779B97F4A7C15u64);
        let specials =
            [0.0f32, -0.0, 0.5, -0.5, 1.5, -1.5, 2.5, 8388607.5, -8388608.0, 3.0e9, -3.0e9, f32::INFINITY, f32::NAN];
        for _ in 0..50_000 {
            let x: [f32; 32] = std::array::from_fn(|_| {
                let r = next();
                if r % 4 == 0 {
                    specials[(r >> 8) as usize % specials.len()]
                } else {
                    ((r >> 11) as f32 / (1u64 << 53) as f32 - 0.5) * 70.0
                }
            });
            let r = next();
            let mul = [1.0f32, 0.37, 16.0, f32::INFINITY, 1e-3, -2.0][(r % 6) as usize];
            let add = [0.5f32, 8.5, 16.5, 0.0][((r >> 8) % 4) as usize];
            let sub = [None, Some(0.25f32), Some(-3.0)][((r >> 16) % 3) as usize];
            let want: [i32; 32] = std::array::from_fn(|j| c_f32_to_i32(sub.map_or(x[j], |s| x[j] - s) * mul + add));
            assert_eq!(trunc_affine(&x, sub, mul, add), want, "{x:?} {sub:?} {mul} {add}");
            let want: [i32; 32] = std::array::from_fn(|j| c_roundf_to_i32(x[j] * mul));
            assert_eq!(round_scaled(&x, mul), want, "{x:?} {mul}");
        }
    }

    #[test]
    fn lane_maxima_pick_what_the_scans_pick() {
        let mut next = crate::xorshift(0x2545F4914F6CDD1Du64);
        let specials = [0.0f32, -0.0, 1.0, -1.0, 0.5, -0.5, 1e-40, -1e-40, 3.0e38, -3.0e38];
        for len in [1usize, 7, 8, 9, 31, 32, 33] {
            for _ in 0..20_000 {
                let x: Vec<f32> = (0..len)
                    .map(|_| {
                        let r = next();
                        if r % 3 == 0 {
                            specials[(r >> 8) as usize % specials.len()]
                        } else {
                            ((r >> 11) as f32 / (1u64 << 53) as f32 - 0.5) * 4.0
                        }
                    })
                    .collect();
                assert_eq!(signed_absmax(&x).to_bits(), scan_signed_absmax(&x).to_bits(), "{x:?}");
                assert_eq!(abs_max(&x).to_bits(), scan_abs_max(&x).to_bits(), "{x:?}");
            }
        }
    }
}
