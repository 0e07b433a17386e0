//! The packed row encoder for x86-64 with AVX2: scaling, element encoding and bit packing of a
//! row fused in one pass, 64 values per step, for the grids most formats use (integers,
//! minifloats and tables of up to 16 values, 4 or 8 bits). Integers take the arithmetic of
//! [`crate::int::IntGrid::encode_slice`], one instruction for each of its operations.
//! Minifloats are rounded by one FPU addition for normal and subnormal results alike (see
//! [`PackedConsts`]) where the portable [`crate::minifloat::Minifloat::encode_slice`] computes
//! both and selects. Tables ([`crate::lut::Lut`]) count the midpoints below a value as the
//! portable encoder does, by a four-step binary search instead of fifteen compares. The codes
//! are the same bit for bit (the tests compare every packed byte with the scalar encoder);
//! what the fusion saves is the passes between the steps (scaled values and one-byte codes
//! stored and read back) and the narrowing of every eight codes through shuffles.

use std::arch::x86_64::*;
use std::mem::MaybeUninit;

use crate::element::{Element, ElementCodec};
use crate::int::{IntKind, MAGIC};
use crate::minifloat::PackedConsts;

/// An element grid the packed encoder handles, with the constants of its arithmetic.
#[derive(Clone, Copy)]
pub(crate) enum Kernel {
    /// Integers: clamp to `[lo, hi]`, round by adding 1.5 · 2^23, keep the low bits (`mask`).
    Int { lo: f32, hi: f32, mask: u32 },
    /// Minifloats, rounded by adding a power of two (see [`PackedConsts`]).
    Float(PackedConsts),
    /// Tables of at most 16 values: their midpoints, padded with +∞.
    Lut([f32; 15]),
}

impl Kernel {
    /// The kernel for codes of grid `e` packed at `bits` per code, if there is one: 4- or
    /// 8-bit packing, integer grids other than binary, minifloats whose branch-free constants
    /// exist and tables of at most 16 values; the last two only when `zero_points` is false
    /// (they go through the general encoder otherwise).
    pub(crate) fn of(e: &Element, bits: u32, zero_points: bool) -> Option<Kernel> {
        if bits != 4 && bits != 8 {
            return None;
        }
        match e {
            Element::Int(g) if g.kind() != IntKind::Binary && g.bits() <= bits => {
                Some(Kernel::Int { lo: g.qmin(), hi: g.qmax(), mask: (1u32 << g.bits()) - 1 })
            }
            Element::Float(f) if !zero_points => f.packed_consts().filter(|k| k.sign_shift < bits).map(Kernel::Float),
            Element::Lut(l) if !zero_points && l.code_bits() <= bits => l.short_mids().map(Kernel::Lut),
            _ => None,
        }
    }
}

/// The factors of a row's groups: the values `8v .. 8v + 8` are multiplied by
/// `inv[v >> shift]`, plus `zero[v >> shift]` when there are zero points. With groups of
/// `8 · 2^shift` values these are the groups' own entries; other lengths go through
/// [`per_vector`] and shift 0.
pub(crate) struct Factors<'a> {
    pub(crate) inv: &'a [f32],
    pub(crate) zero: Option<&'a [f32]>,
    pub(crate) shift: u32,
    /// Write the codes with non-temporal stores (past the caches, without reading the lines
    /// first): for outputs too large to be read back from cache.
    pub(crate) stream: bool,
}

/// Encodes `row` (a multiple of eight values) into `out` (`row.len() · bits / 8` bytes, all
/// written: it may start uninitialised), packed LSB first as [`crate::pack::pack`] packs, each
/// value scaled by its [`Factors`].
/// `next` (the row encoded after this one) is prefetched as this one is read.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn encode_packed_avx2(
    k: &Kernel,
    row: &[f32],
    f: &Factors,
    bits: u32,
    out: &mut [MaybeUninit<u8>],
    next: Option<&[f32]>,
) {
    let n = row.len();
    let (inv, zero, shift, stream) = (f.inv, f.zero, f.shift, f.stream);
    let entries = (n / 8).div_ceil(1 << shift);
    assert!(n.is_multiple_of(8) && inv.len() >= entries && zero.is_none_or(|z| z.len() >= entries));
    assert!((bits == 4 || bits == 8) && out.len() == n * bits as usize / 8);
    let c = Consts::new(k);
    let z = zero.unwrap_or(&[]);
    let four = bits == 4;
    // The lengths were checked above.
    match (k, zero.is_some(), four) {
        (Kernel::Int { .. }, false, false) => row_loop::<INT, false, false>(&c, row, inv, z, shift, out, next, stream),
        (Kernel::Int { .. }, false, true) => row_loop::<INT, false, true>(&c, row, inv, z, shift, out, next, stream),
        (Kernel::Int { .. }, true, false) => row_loop::<INT, true, false>(&c, row, inv, z, shift, out, next, stream),
        (Kernel::Int { .. }, true, true) => row_loop::<INT, true, true>(&c, row, inv, z, shift, out, next, stream),
        (Kernel::Float(f), _, false) if f.fnuz => {
            row_loop::<FNUZ, false, false>(&c, row, inv, z, shift, out, next, stream)
        }
        (Kernel::Float(f), _, true) if f.fnuz => {
            row_loop::<FNUZ, false, true>(&c, row, inv, z, shift, out, next, stream)
        }
        (Kernel::Float(_), _, false) => row_loop::<FLOAT, false, false>(&c, row, inv, z, shift, out, next, stream),
        (Kernel::Float(_), _, true) => row_loop::<FLOAT, false, true>(&c, row, inv, z, shift, out, next, stream),
        (Kernel::Lut(_), _, false) => row_loop::<LUT, false, false>(&c, row, inv, z, shift, out, next, stream),
        (Kernel::Lut(_), _, true) => row_loop::<LUT, false, true>(&c, row, inv, z, shift, out, next, stream),
    }
}

/// Per-group values (`glen` values to a group, a multiple of 8) as one entry per eight values
/// of a row of `n`, into `out`.
pub(crate) fn per_vector(groups: &[f32], glen: usize, n: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(n / 8, 0.0);
    for (d, &x) in out.chunks_mut(glen / 8).zip(groups) {
        d.fill(x);
    }
}

const INT: u8 = 0;
const FLOAT: u8 = 1;
const FNUZ: u8 = 2;
const LUT: u8 = 3;

/// A kernel's constants in registers (the unused ones are zero).
struct Consts {
    lo: __m256,
    hi: __m256,
    mask: __m256i,
    max: __m256,
    emin_bits: __m256i,
    t_offset: __m256i,
    /// Shift counts per lane (variable-count shifts by a vector are one instruction on more
    /// CPUs than shifts by a count in an xmm register).
    shift: __m256i,
    bias_term: __m256i,
    sign_bit: __m256i,
    /// The binary search's probes at each step, indexed by the count so far: midpoint 7;
    /// 3 and 11; 1, 5, 9 and 13; the even ones. Negative midpoints are stored one ulp lower
    /// (see [`codes8`]).
    m7: __m256,
    quarter2: __m256,
    odd4: __m256,
    even8: __m256,
}

impl Consts {
    #[target_feature(enable = "avx2,fma")]
    fn new(k: &Kernel) -> Consts {
        let zs = _mm256_setzero_ps();
        let zi = _mm256_setzero_si256();
        let mut c = Consts {
            lo: zs,
            hi: zs,
            mask: zi,
            max: zs,
            emin_bits: zi,
            t_offset: zi,
            shift: zi,
            bias_term: zi,
            sign_bit: zi,
            m7: zs,
            quarter2: zs,
            odd4: zs,
            even8: zs,
        };
        match *k {
            Kernel::Int { lo, hi, mask } => {
                c.lo = _mm256_set1_ps(lo);
                c.hi = _mm256_set1_ps(hi);
                c.mask = _mm256_set1_epi32(mask as i32);
            }
            Kernel::Float(f) => {
                c.max = _mm256_set1_ps(f.max);
                c.emin_bits = _mm256_set1_epi32(f.emin_bits as i32);
                c.t_offset = _mm256_set1_epi32(f.t_offset as i32);
                c.shift = _mm256_set1_epi32(f.shift as i32);
                c.bias_term = _mm256_set1_epi32(f.bias_term as i32);
                c.sign_bit = _mm256_set1_epi32(1 << f.sign_shift);
            }
            Kernel::Lut(mids) => {
                // "m < y" for a value y < 0 must also hold where y equals m (the portable
                // encoder moves such y one ulp towards zero first): for a negative m that
                // is "m - ulp < y". Non-negative midpoints and +∞ padding stay.
                let m = mids.map(|m| if m < 0.0 { f32::from_bits(m.to_bits() + 1) } else { m });
                c.m7 = _mm256_set1_ps(m[7]);
                c.quarter2 = _mm256_setr_ps(m[3], m[11], m[3], m[11], m[3], m[11], m[3], m[11]);
                c.odd4 = _mm256_setr_ps(m[1], m[5], m[9], m[13], m[1], m[5], m[9], m[13]);
                c.even8 = _mm256_setr_ps(m[0], m[2], m[4], m[6], m[8], m[10], m[12], m[14]);
            }
        }
        c
    }
}

/// The codes of eight values `x` (scaled by `inv`, plus `zero` when `ZERO`), one per 32-bit
/// lane.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn codes8<const KIND: u8, const ZERO: bool>(c: &Consts, x: __m256, inv: __m256, zero: __m256) -> __m256i {
    // Multiply, then add: the portable encoders do not fuse them.
    let mut y = _mm256_mul_ps(x, inv);
    if ZERO {
        y = _mm256_add_ps(y, zero);
    }
    if KIND == LUT {
        // The count of midpoints below y, one binary digit at a time from the top: the
        // midpoints are sorted, so "m[k] < y" holds for a prefix of k, and each probe is the
        // last midpoint of the half still open (+∞ padding is never below). A compare gives
        // -1 where the probe is below, so count · 2 - mask appends the digit, and the count
        // so far indexes the next probe. With negative midpoints one ulp lower, this counts
        // m < y for y ≥ 0 and m ≤ y for y < 0, as the portable encoder does (it moves a
        // negative y one ulp towards zero and counts m < y).
        let below = |m: __m256| _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LT_OQ>(m, y));
        let digit = |n: __m256i, m: __m256| _mm256_sub_epi32(_mm256_add_epi32(n, n), below(m));
        let n = _mm256_sub_epi32(_mm256_setzero_si256(), below(c.m7));
        let n = digit(n, _mm256_permutevar8x32_ps(c.quarter2, n));
        let n = digit(n, _mm256_permutevar8x32_ps(c.odd4, n));
        return digit(n, _mm256_permutevar8x32_ps(c.even8, n));
    }
    if KIND == INT {
        // clamp(lo, hi): max then min keep y unless it lies outside (y is finite).
        let v = _mm256_min_ps(_mm256_max_ps(y, c.lo), c.hi);
        return _mm256_and_si256(_mm256_castps_si256(_mm256_add_ps(v, _mm256_set1_ps(MAGIC))), c.mask);
    }
    let yb = _mm256_castps_si256(y);
    let a = _mm256_min_ps(_mm256_castsi256_ps(_mm256_and_si256(yb, _mm256_set1_epi32(0x7fff_ffff))), c.max);
    // The exponent (at least emin), T's bits, then the quanta of a + T (a ≥ 0, so the signed
    // maximum orders the bits).
    let e = _mm256_max_epi32(_mm256_and_si256(_mm256_castps_si256(a), _mm256_set1_epi32(0x7f80_0000)), c.emin_bits);
    let t = _mm256_add_epi32(e, c.t_offset);
    let quanta = _mm256_sub_epi32(_mm256_castps_si256(_mm256_add_ps(a, _mm256_castsi256_ps(t))), t);
    let mag = _mm256_add_epi32(quanta, _mm256_sub_epi32(_mm256_srlv_epi32(e, c.shift), c.bias_term));
    // The sign bit moved to the code's sign position: all ones where negative, masked.
    let mut neg = _mm256_and_si256(_mm256_srai_epi32::<31>(yb), c.sign_bit);
    if KIND == FNUZ {
        neg = _mm256_andnot_si256(_mm256_cmpeq_epi32(mag, _mm256_setzero_si256()), neg);
    }
    _mm256_or_si256(mag, neg)
}

/// 32 codes (four vectors of eight 32-bit lanes, each < 256) as 32 bytes in order.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn narrow32(v: &[__m256i]) -> __m256i {
    // Per 128-bit half: words a0-3 b0-3 | a4-7 b4-7, then bytes a0-3 b0-3 c0-3 d0-3 | a4-7 …;
    // the dword permutation puts the eight groups of four in order.
    let ab = _mm256_packus_epi32(v[0], v[1]);
    let cd = _mm256_packus_epi32(v[2], v[3]);
    let bytes = _mm256_packus_epi16(ab, cd);
    _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// 64 one-byte codes (each < 16) as 32 bytes of two codes each, the first in the low nibble.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn nibbles(a: __m256i, b: __m256i) -> __m256i {
    // Bytes a0-7 b0-7 | a8-15 b8-15 (in quads), put in order.
    _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packus_epi16(fold_pairs(a), fold_pairs(b)))
}

/// Each 16-bit lane's two byte codes (each < 16) as one byte: the upper code moved down into
/// the lower one's high nibble.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn fold_pairs(v: __m256i) -> __m256i {
    let lo = _mm256_and_si256(v, _mm256_set1_epi16(0x000f));
    _mm256_or_si256(lo, _mm256_and_si256(_mm256_srli_epi16::<4>(v), _mm256_set1_epi16(0x00f0)))
}

/// The loop of [`encode_packed_avx2`] for one kind of kernel, with or without zero points,
/// packing 4 or 8 bits.
#[target_feature(enable = "avx2,fma")]
fn row_loop<const KIND: u8, const ZERO: bool, const FOUR: bool>(
    c: &Consts,
    row: &[f32],
    inv: &[f32],
    zero: &[f32],
    shift: u32,
    out: &mut [MaybeUninit<u8>],
    next: Option<&[f32]>,
    stream: bool,
) {
    let n = row.len();
    let o = out.as_mut_ptr().cast::<u8>();
    // Streaming stores of 16 bytes need 16-byte alignment: every store below lands at a
    // multiple of 32 bytes from o.
    let stream = stream && (o as usize).is_multiple_of(16);
    // SAFETY (the stores): p + 32 <= out's end.
    let store = |p: *mut u8, v: __m256i| unsafe {
        if stream {
            _mm_stream_si128(p.cast(), _mm256_castsi256_si128(v));
            _mm_stream_si128(p.add(16).cast(), _mm256_extracti128_si256::<1>(v));
        } else {
            _mm256_storeu_si256(p.cast(), v);
        }
    };
    let zs = _mm256_setzero_ps();
    // SAFETY (the loads): v < n / 8, so v >> shift < inv.len() (and zero.len() when ZERO),
    // and values 8v .. 8v + 8 lie in the row.
    let vector = |v: usize| unsafe {
        let x = _mm256_loadu_ps(row.as_ptr().add(8 * v));
        let s = _mm256_broadcast_ss(inv.get_unchecked(v >> shift));
        let z = if ZERO { _mm256_broadcast_ss(zero.get_unchecked(v >> shift)) } else { zs };
        codes8::<KIND, ZERO>(c, x, s, z)
    };
    let mut i = 0;
    while i + 64 <= n {
        if let Some(nx) = next {
            prefetch(nx, i);
        }
        let q = i / 8;
        let a = narrow32(&[vector(q), vector(q + 1), vector(q + 2), vector(q + 3)]);
        let b = narrow32(&[vector(q + 4), vector(q + 5), vector(q + 6), vector(q + 7)]);
        // SAFETY: out holds the packed row, n / 2 or n bytes, and i + 64 <= n.
        unsafe {
            if FOUR {
                store(o.add(i / 2), nibbles(a, b));
            } else {
                store(o.add(i), a);
                store(o.add(i + 32), b);
            }
        }
        i += 64;
    }
    if stream {
        // Streaming stores are weakly ordered: fence them before the row is handed on.
        _mm_sfence();
    }
    if i < n {
        // The row's last 8–56 values, through a buffer.
        let q = i / 8;
        let rest = (n - i) / 8;
        let v: [__m256i; 8] = std::array::from_fn(|j| if j < rest { vector(q + j) } else { _mm256_setzero_si256() });
        let (a, b) = (narrow32(&v[..4]), narrow32(&v[4..]));
        let mut tmp = [0u8; 64];
        // SAFETY: tmp holds 64 bytes.
        unsafe {
            if FOUR {
                _mm256_storeu_si256(tmp.as_mut_ptr().cast(), nibbles(a, b));
            } else {
                _mm256_storeu_si256(tmp.as_mut_ptr().cast(), a);
                _mm256_storeu_si256(tmp.as_mut_ptr().add(32).cast(), b);
            }
        }
        let (at, len) = if FOUR { (i / 2, (n - i) / 2) } else { (i, n - i) };
        // SAFETY: at + len is the row's packed length, out's length (checked by the caller).
        unsafe { std::ptr::copy_nonoverlapping(tmp.as_ptr(), o.add(at), len) };
    }
}

/// Asks for the four cache lines of `v[at..at + 64]` that exist (a hint).
#[inline(always)]
fn prefetch(v: &[f32], at: usize) {
    let end = (at + 64).min(v.len());
    let mut p = at;
    while p < end {
        // SAFETY: p < v.len(); prefetching never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(p) as *const i8) };
        p += 16;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::minifloat::{Minifloat, Special};

    /// Bytes as the encoder's output (which writes only bytes into them).
    fn uninit(b: &mut [u8]) -> &mut [MaybeUninit<u8>] {
        // SAFETY: MaybeUninit<u8> has u8's layout, and the encoder stores only bytes.
        unsafe { &mut *(b as *mut [u8] as *mut [MaybeUninit<u8>]) }
    }

    /// Every minifloat of at most 8 bits with packed constants, at every value, every midpoint
    /// between neighbours and the f32s either side of it, f32 subnormals, zeros and values past
    /// the largest, both signs: the packed encoder's codes equal [`Minifloat::encode`]'s.
    #[test]
    fn packed_minifloat_codes_equal_encode_everywhere() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let ulp = |x: f32, up: bool| f32::from_bits(if up { x.to_bits() + 1 } else { x.to_bits() - 1 });
        let mut shapes = 0;
        for e in 1..=7u32 {
            for m in 0..=(7 - e) {
                for sp in [Special::Finite, Special::Fn, Special::Fnuz, Special::Ieee] {
                    let d = Minifloat::default_bias(e, sp);
                    for bias in [d, d + 2, d - 3, -100, 120] {
                        let Ok(f) = Minifloat::new(e, m, bias, sp) else { continue };
                        let Some(k) = f.packed_consts() else { continue };
                        shapes += 1;
                        let mut vals: Vec<f32> = (0..1u16 << (e + m))
                            .map(|c| f.decode_code(c))
                            .filter(|v| v.is_finite() && *v <= f.max_value())
                            .collect();
                        vals.sort_by(f32::total_cmp);
                        vals.dedup();
                        let mut xs = vec![0.0, 1e-45, 1e-40, f32::MIN_POSITIVE, f.max_value() * 1.5, f32::MAX];
                        for w in vals.windows(2) {
                            let mid = w[0] / 2.0 + w[1] / 2.0;
                            xs.extend([w[0], mid, ulp(mid, false), ulp(mid, true)]);
                        }
                        xs.extend(vals.last());
                        let mut row: Vec<f32> = xs.iter().flat_map(|&x| [x, -x]).collect();
                        row.resize(row.len().next_multiple_of(8), 0.0);
                        let mut out = vec![0u8; row.len()];
                        let inv = vec![1.0f32; row.len() / 8];
                        let fac = Factors { inv: &inv, zero: None, shift: 0, stream: false };
                        // SAFETY: the CPU has AVX2 and FMA (checked above).
                        unsafe { encode_packed_avx2(&Kernel::Float(k), &row, &fac, 8, uninit(&mut out), None) };
                        for (&x, &c) in row.iter().zip(&out) {
                            assert_eq!(c as u16, f.encode(x), "e{e}m{m} bias {bias} {sp:?}: {x:e}");
                        }
                    }
                }
            }
        }
        assert!(shapes > 60, "{shapes} shapes");
    }

    /// Streaming stores write the bytes ordinary ones write: 4- and 8-bit codes, rows with and
    /// without a tail past the last 64 values, at a 16-byte aligned start and at odd starts
    /// (which fall back to ordinary stores), bytes around the row untouched.
    #[test]
    fn streamed_codes_equal_stored_codes() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let k = Kernel::Int { lo: -8.0, hi: 7.0, mask: 15 };
        for n in [64, 128, 200, 1024, 1048] {
            let row: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.17).collect();
            let inv = vec![0.9f32; n / 8];
            for bits in [4u32, 8] {
                let len = n * bits as usize / 8;
                let mut want = vec![0u8; len];
                let plain = Factors { inv: &inv, zero: None, shift: 0, stream: false };
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { encode_packed_avx2(&k, &row, &plain, bits, uninit(&mut want), None) };
                // A 64-byte aligned buffer, written from offsets 0 (aligned), 16 and 3.
                let mut buf = vec![0u128; len.div_ceil(16) + 8];
                let base = buf.as_mut_ptr().cast::<u8>();
                for at in [0usize, 16, 3] {
                    // SAFETY: the buffer holds len + 128 bytes; at + len fits.
                    let bytes = unsafe { std::slice::from_raw_parts_mut(base, len + 128) };
                    bytes.fill(0xa5);
                    let streamed = Factors { inv: &inv, zero: None, shift: 0, stream: true };
                    // SAFETY: as above.
                    unsafe { encode_packed_avx2(&k, &row, &streamed, bits, uninit(&mut bytes[at..at + len]), None) };
                    assert_eq!(&bytes[at..at + len], &want[..], "n {n}, {bits} bits, offset {at}");
                    assert!(bytes[..at].iter().chain(&bytes[at + len..]).all(|&b| b == 0xa5));
                }
            }
        }
    }

    /// Tables of up to 16 values (NF4, IQ4_NL's grid, power and log grids, and ones with
    /// midpoints that are exact, negative and zero), at every value, every midpoint and the
    /// f32s either side of it, zeros, tiny and huge values, both signs: the packed encoder's
    /// 4-bit codes equal [`crate::lut::Lut`]'s `encode`.
    #[test]
    fn packed_table_codes_equal_encode_everywhere() {
        use crate::element::ElementCodec;
        use crate::lut::{power_grid, Lut};
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let ulp = |x: f32, up: bool| {
            let b = x.to_bits();
            f32::from_bits(if (x >= 0.0) == up {
                b + 1
            } else if x == 0.0 {
                0x8000_0001
            } else {
                b - 1
            })
        };
        let tables = vec![
            crate::nf4::nf4_grid(),
            crate::lut::iq4_nl_grid(),
            power_grid(4, 1.5).unwrap(),
            power_grid(3, 2.0).unwrap(),
            crate::log2::log_grid(4).unwrap(),
            Lut::new("exact", vec![-3.0, -1.0, 0.0, 1.0, 3.0]).unwrap(),
            Lut::new("zero-mid", vec![-2.0, -0.5, 0.5, 2.0, 4.0, 6.0, 8.0, 10.0]).unwrap(),
            Lut::new("one", vec![1.0]).unwrap(),
        ];
        for t in &tables {
            let Some(mids) = t.short_mids() else { panic!("{}: no short midpoints", t.name()) };
            let mut xs = vec![0.0, -0.0, 1e-45, -1e-45, 1e30, -1e30, f32::MAX, f32::MIN];
            for &m in mids.iter().filter(|m| m.is_finite()) {
                xs.extend([m, ulp(m, true), ulp(m, false)]);
            }
            xs.extend(t.values());
            let mut row: Vec<f32> = xs.iter().flat_map(|&x| [x, -x]).collect();
            row.resize(row.len().next_multiple_of(8), 0.0);
            let mut out = vec![0u8; row.len() / 2];
            let inv = vec![1.0f32; row.len() / 8];
            let fac = Factors { inv: &inv, zero: None, shift: 0, stream: false };
            // SAFETY: the CPU has AVX2 and FMA (checked above).
            unsafe { encode_packed_avx2(&Kernel::Lut(mids), &row, &fac, 4, uninit(&mut out), None) };
            for (i, &x) in row.iter().enumerate() {
                let code = (out[i / 2] >> (4 * (i % 2))) & 15;
                assert_eq!(code as u16, t.encode(x), "{}: {x:e}", t.name());
            }
        }
    }
}
