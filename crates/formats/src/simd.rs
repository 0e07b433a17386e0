//! The packed row encoder for x86-64 with AVX2: scaling, element encoding and bit packing of a
//! row fused in one pass, 64 values per step, for the grids most formats use (integers,
//! minifloats and tables of up to 16 values, 2 to 8 bits). Integers take the arithmetic of
//! [`crate::int::IntGrid::encode_slice`], one instruction for each of its operations.
//! Minifloats are rounded by one FPU addition for normal and subnormal results alike (see
//! [`PackedConsts`]) where the portable [`crate::minifloat::Minifloat::encode_slice`] computes
//! both and selects. Tables ([`crate::lut::Lut`]) count the midpoints below a value as the
//! portable encoder does, by a four-step binary search instead of fifteen compares. The codes
//! are the same bit for bit (the tests compare every packed byte with the scalar encoder);
//! what the fusion saves is the passes between the steps (scaled values and one-byte codes
//! stored and read back) and the narrowing of every eight codes through shuffles.
//!
//! On CPUs with AVX-512 (F, BW, DQ, VL) [`encode_packed_avx512`] does the same for integers and
//! minifloats lane for lane on sixteen values per instruction (tested byte for byte against
//! the AVX2 encoder). The kernel is bound by its instruction count; on a 2-core EPYC, which
//! splits 512-bit operations in two, that gains 1.0–1.2× (best of 5, one core, in cache).
//! Outputs too large for the caches are written with streaming stores ([`Factors::stream`]).

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
    /// The kernel for codes of grid `e` packed at `bits` per code, if there is one: packing of
    /// 2 to 8 bits, integer grids other than binary, minifloats whose branch-free constants
    /// exist and tables of at most 16 values; the last two only when `zero_points` is false
    /// (they go through the general encoder otherwise).
    pub(crate) fn of(e: &Element, bits: u32, zero_points: bool) -> Option<Kernel> {
        if !(2..=8).contains(&bits) {
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
    let (inv, zero, shift) = (f.inv, f.zero, f.shift);
    let entries = (n / 8).div_ceil(1 << shift);
    assert!(n.is_multiple_of(8) && inv.len() >= entries && zero.is_none_or(|z| z.len() >= entries));
    assert!((2..=8).contains(&bits) && out.len() == n * bits as usize / 8);
    let c = Consts::new(k, bits);
    // The lengths were checked above. Packing: 4 or 8 bits, or (0) any other width.
    let pack = if bits == 4 || bits == 8 { bits } else { 0 };
    match (k, zero.is_some(), pack) {
        (Kernel::Int { .. }, false, 8) => row_loop::<INT, false, 8>(&c, row, f, out, next),
        (Kernel::Int { .. }, false, 4) => row_loop::<INT, false, 4>(&c, row, f, out, next),
        (Kernel::Int { .. }, false, _) => row_loop::<INT, false, 0>(&c, row, f, out, next),
        (Kernel::Int { .. }, true, 8) => row_loop::<INT, true, 8>(&c, row, f, out, next),
        (Kernel::Int { .. }, true, 4) => row_loop::<INT, true, 4>(&c, row, f, out, next),
        (Kernel::Int { .. }, true, _) => row_loop::<INT, true, 0>(&c, row, f, out, next),
        (Kernel::Float(p), _, 8) if p.fnuz => row_loop::<FNUZ, false, 8>(&c, row, f, out, next),
        (Kernel::Float(p), _, 4) if p.fnuz => row_loop::<FNUZ, false, 4>(&c, row, f, out, next),
        (Kernel::Float(p), _, _) if p.fnuz => row_loop::<FNUZ, false, 0>(&c, row, f, out, next),
        (Kernel::Float(_), _, 8) => row_loop::<FLOAT, false, 8>(&c, row, f, out, next),
        (Kernel::Float(_), _, 4) => row_loop::<FLOAT, false, 4>(&c, row, f, out, next),
        (Kernel::Float(_), _, _) => row_loop::<FLOAT, false, 0>(&c, row, f, out, next),
        (Kernel::Lut(_), _, 8) => row_loop::<LUT, false, 8>(&c, row, f, out, next),
        (Kernel::Lut(_), _, 4) => row_loop::<LUT, false, 4>(&c, row, f, out, next),
        (Kernel::Lut(_), _, _) => row_loop::<LUT, false, 0>(&c, row, f, out, next),
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
    /// Packing of other widths than 4 and 8 ([`pack8`]): the bytes of eight codes, and the
    /// shifts that gather them into one 64-bit word.
    bytes8: usize,
    low32: __m256i,
    pair_shift: __m256i,
    quad_shift: __m256i,
    half_shift: __m128i,
}

impl Consts {
    /// The constants of kernel `k` packing `bits` per code.
    #[target_feature(enable = "avx2,fma")]
    fn new(k: &Kernel, bits: u32) -> Consts {
        let zs = _mm256_setzero_ps();
        let zi = _mm256_setzero_si256();
        let b = bits as i64;
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
            bytes8: bits as usize,
            low32: _mm256_set1_epi64x(0xffff_ffff),
            pair_shift: _mm256_set1_epi64x(32 - b),
            quad_shift: _mm256_setr_epi64x(0, 2 * b, 0, 2 * b),
            half_shift: _mm_set1_epi64x(4 * b),
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

/// Eight codes (32-bit lanes, each below 2^b for the b of [`Consts::bytes8`]) packed LSB first
/// into the low 8b bits of a word: code i at bit b·i, as [`crate::pack::pack`] packs them.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn pack8(c: &Consts, v: __m256i) -> u64 {
    // Each 64-bit lane (codes 2j and 2j + 1): the upper code moved down from bit 32 to bit b
    // (the lower one, below 2^b, shifts out); then the odd lanes up by 2b and folded onto the
    // even ones; then the upper half's word up by 4b onto the lower's.
    let p = _mm256_or_si256(_mm256_and_si256(v, c.low32), _mm256_srlv_epi64(v, c.pair_shift));
    let q = _mm256_sllv_epi64(p, c.quad_shift);
    let q = _mm256_or_si256(q, _mm256_srli_si256::<8>(q));
    let r = _mm_or_si128(_mm256_castsi256_si128(q), _mm_sllv_epi64(_mm256_extracti128_si256::<1>(q), c.half_shift));
    _mm_cvtsi128_si64(r) as u64
}

/// The loop of [`encode_packed_avx2`] for one kind of kernel, with or without zero points,
/// packing `PACK` = 4 or 8 bits, or (0) the width of [`Consts::bytes8`].
#[target_feature(enable = "avx2,fma")]
fn row_loop<const KIND: u8, const ZERO: bool, const PACK: u32>(
    c: &Consts,
    row: &[f32],
    f: &Factors,
    out: &mut [MaybeUninit<u8>],
    next: Option<&[f32]>,
) {
    let (inv, zero, shift) = (f.inv, f.zero.unwrap_or(&[]), f.shift);
    let n = row.len();
    let o = out.as_mut_ptr().cast::<u8>();
    // Streaming stores of 16 bytes need 16-byte alignment: every store below lands at a
    // multiple of 32 bytes from o.
    let stream = f.stream && (o as usize).is_multiple_of(16);
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
    if PACK == 0 {
        // Eight codes make b bytes: each word is stored whole (its upper bytes are
        // overwritten by the next word's) while it ends inside the row, byte by byte after.
        // Not streamed: the stores overlap.
        let b = c.bytes8;
        let len = out.len();
        for v in 0..n / 8 {
            if v % 8 == 0 {
                if let Some(nx) = next {
                    prefetch(nx, 8 * v);
                }
            }
            let word = pack8(c, vector(v)).to_le_bytes();
            let at = v * b;
            // SAFETY: at + 8 <= len, or at + b <= len (the row's packed length is (n / 8) · b).
            unsafe {
                if at + 8 <= len {
                    o.add(at).cast::<[u8; 8]>().write_unaligned(word);
                } else {
                    std::ptr::copy_nonoverlapping(word.as_ptr(), o.add(at), b);
                }
            }
        }
        return;
    }
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
            if PACK == 4 {
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
            if PACK == 4 {
                _mm256_storeu_si256(tmp.as_mut_ptr().cast(), nibbles(a, b));
            } else {
                _mm256_storeu_si256(tmp.as_mut_ptr().cast(), a);
                _mm256_storeu_si256(tmp.as_mut_ptr().add(32).cast(), b);
            }
        }
        let (at, len) = if PACK == 4 { (i / 2, (n - i) / 2) } else { (i, n - i) };
        // SAFETY: at + len is the row's packed length, out's length (checked by the caller).
        unsafe { std::ptr::copy_nonoverlapping(tmp.as_ptr(), o.add(at), len) };
    }
}

/// Whether this CPU runs [`encode_packed_avx512`] (checked once per call; std caches it).
pub(crate) fn has_avx512() -> bool {
    std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx512dq")
        && std::is_x86_feature_detected!("avx512vl")
}

/// [`encode_packed_avx2`] with 16 values to an instruction for integers and minifloats: the
/// same arithmetic lane for lane (so the same codes, bit for bit), codes narrowed by the
/// down-converting moves, and the row's last values through masked loads and stores. Tables
/// go to the AVX2 encoder.
///
/// # Safety
/// The CPU must have AVX-512 F, BW, DQ and VL ([`has_avx512`]) besides AVX2 and FMA.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
pub(crate) unsafe fn encode_packed_avx512(
    k: &Kernel,
    row: &[f32],
    f: &Factors,
    bits: u32,
    out: &mut [MaybeUninit<u8>],
    next: Option<&[f32]>,
) {
    if bits != 4 && bits != 8 {
        // Other widths pack eight codes to a 64-bit word, which the AVX2 encoder does.
        // SAFETY: the CPU has AVX2 and FMA (the caller's guarantee).
        return unsafe { encode_packed_avx2(k, row, f, bits, out, next) };
    }
    let n = row.len();
    let entries = (n / 8).div_ceil(1 << f.shift);
    assert!(n.is_multiple_of(8) && f.inv.len() >= entries && f.zero.is_none_or(|z| z.len() >= entries));
    assert!((bits == 4 || bits == 8) && out.len() == n * bits as usize / 8);
    let c = Consts512::new(k);
    let four = bits == 4;
    match (k, f.zero.is_some(), four) {
        (Kernel::Int { .. }, false, false) => loop512::<INT, false, false>(&c, row, f, out, next),
        (Kernel::Int { .. }, false, true) => loop512::<INT, false, true>(&c, row, f, out, next),
        (Kernel::Int { .. }, true, false) => loop512::<INT, true, false>(&c, row, f, out, next),
        (Kernel::Int { .. }, true, true) => loop512::<INT, true, true>(&c, row, f, out, next),
        (Kernel::Float(p), _, false) if p.fnuz => loop512::<FNUZ, false, false>(&c, row, f, out, next),
        (Kernel::Float(p), _, true) if p.fnuz => loop512::<FNUZ, false, true>(&c, row, f, out, next),
        (Kernel::Float(_), _, false) => loop512::<FLOAT, false, false>(&c, row, f, out, next),
        (Kernel::Float(_), _, true) => loop512::<FLOAT, false, true>(&c, row, f, out, next),
        // Tables stay on AVX2: their permutes cost as much on sixteen lanes as on eight here
        // (the EPYC splits 512-bit operations), so the wide search was no faster.
        // SAFETY: the CPU has AVX2 and FMA (the caller's guarantee).
        (Kernel::Lut(_), _, _) => unsafe { encode_packed_avx2(k, row, f, bits, out, next) },
    }
}

/// A kernel's constants in 512-bit registers (the unused ones are zero).
struct Consts512 {
    lo: __m512,
    hi: __m512,
    mask: __m512i,
    max: __m512,
    emin_bits: __m512i,
    t_offset: __m512i,
    shift: __m512i,
    bias_term: __m512i,
    sign_bit: __m512i,
}

impl Consts512 {
    #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
    fn new(k: &Kernel) -> Consts512 {
        let zs = _mm512_setzero_ps();
        let zi = _mm512_setzero_si512();
        let mut c = Consts512 {
            lo: zs,
            hi: zs,
            mask: zi,
            max: zs,
            emin_bits: zi,
            t_offset: zi,
            shift: zi,
            bias_term: zi,
            sign_bit: zi,
        };
        match *k {
            Kernel::Int { lo, hi, mask } => {
                c.lo = _mm512_set1_ps(lo);
                c.hi = _mm512_set1_ps(hi);
                c.mask = _mm512_set1_epi32(mask as i32);
            }
            Kernel::Float(p) => {
                c.max = _mm512_set1_ps(p.max);
                c.emin_bits = _mm512_set1_epi32(p.emin_bits as i32);
                c.t_offset = _mm512_set1_epi32(p.t_offset as i32);
                c.shift = _mm512_set1_epi32(p.shift as i32);
                c.bias_term = _mm512_set1_epi32(p.bias_term as i32);
                c.sign_bit = _mm512_set1_epi32(1 << p.sign_shift);
            }
            Kernel::Lut(_) => {}
        }
        c
    }
}

/// The codes of sixteen values `x` (scaled by `inv`, plus `zero` when `ZERO`), one per 32-bit
/// lane: [`codes8`]'s arithmetic on sixteen lanes.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[inline]
fn codes16<const KIND: u8, const ZERO: bool>(c: &Consts512, x: __m512, inv: __m512, zero: __m512) -> __m512i {
    let mut y = _mm512_mul_ps(x, inv);
    if ZERO {
        y = _mm512_add_ps(y, zero);
    }
    if KIND == INT {
        let v = _mm512_min_ps(_mm512_max_ps(y, c.lo), c.hi);
        return _mm512_and_si512(_mm512_castps_si512(_mm512_add_ps(v, _mm512_set1_ps(MAGIC))), c.mask);
    }
    // min(|y|, max) in one instruction (the smaller magnitude, sign cleared).
    let a = _mm512_range_ps::<0b1010>(y, c.max);
    let e = _mm512_max_epi32(_mm512_and_si512(_mm512_castps_si512(a), _mm512_set1_epi32(0x7f80_0000)), c.emin_bits);
    let t = _mm512_add_epi32(e, c.t_offset);
    let quanta = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(a, _mm512_castsi512_ps(t))), t);
    let mag = _mm512_add_epi32(quanta, _mm512_sub_epi32(_mm512_srlv_epi32(e, c.shift), c.bias_term));
    // The sign bit where y's is set (fnuz: and the magnitude is not zero).
    let mut neg = _mm512_movepi32_mask(_mm512_castps_si512(y));
    if KIND == FNUZ {
        neg = _mm512_mask_test_epi32_mask(neg, mag, mag);
    }
    _mm512_mask_or_epi32(mag, neg, mag, c.sign_bit)
}

/// Sixteen codes (each < 16) as eight bytes of two codes each, the first in the low nibble
/// (in the low half of the result).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[inline]
fn nibbles16(v: __m512i) -> __m128i {
    // Each 64-bit lane: the odd code moved down beside the even one, then its low byte.
    _mm512_cvtepi64_epi8(_mm512_or_si512(v, _mm512_srli_epi64::<28>(v)))
}

/// The factors of values 16j .. 16j + 16 of a row of `n` (the second eight's entry only
/// where those values exist: a row may end after the first eight).
///
/// # Safety
/// 16j < n, and `t` holds the row's entries (checked by [`encode_packed_avx512`]).
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[inline]
unsafe fn factor16(t: &[f32], shift: u32, n: usize, j: usize) -> __m512 {
    // SAFETY: 2j < n / 8, so its entry exists; 2j + 1 is read only below n / 8.
    unsafe {
        let a = *t.get_unchecked((2 * j) >> shift);
        if shift > 0 || 16 * j + 8 >= n {
            _mm512_set1_ps(a)
        } else {
            let b = *t.get_unchecked(2 * j + 1);
            _mm512_insertf32x8::<1>(_mm512_castps256_ps512(_mm256_set1_ps(a)), _mm256_set1_ps(b))
        }
    }
}

/// The codes of values 16j .. 16j + 16 (`x`) of a row of `n`, with their factors.
///
/// # Safety
/// As for [`factor16`].
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[inline]
unsafe fn chunk16<const KIND: u8, const ZERO: bool>(
    c: &Consts512,
    f: &Factors,
    n: usize,
    j: usize,
    x: __m512,
) -> __m512i {
    // SAFETY: the caller's.
    unsafe {
        let z = if ZERO { factor16(f.zero.unwrap_or(&[]), f.shift, n, j) } else { _mm512_setzero_ps() };
        codes16::<KIND, ZERO>(c, x, factor16(f.inv, f.shift, n, j), z)
    }
}

/// Stores 16 bytes at `p`, streamed (`p` 16-byte aligned) or not.
///
/// # Safety
/// `p .. p + 16` is writable.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
#[inline]
unsafe fn store16(p: *mut u8, v: __m128i, stream: bool) {
    // SAFETY: the caller's.
    unsafe {
        if stream {
            _mm_stream_si128(p.cast(), v);
        } else {
            _mm_storeu_si128(p.cast(), v);
        }
    }
}

/// The loop of [`encode_packed_avx512`] for one kind of kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
fn loop512<const KIND: u8, const ZERO: bool, const FOUR: bool>(
    c: &Consts512,
    row: &[f32],
    f: &Factors,
    out: &mut [MaybeUninit<u8>],
    next: Option<&[f32]>,
) {
    let n = row.len();
    let o = out.as_mut_ptr().cast::<u8>();
    let stream = f.stream && (o as usize).is_multiple_of(16);
    let p = row.as_ptr();
    let mut i = 0;
    while i + 64 <= n {
        if let Some(nx) = next {
            prefetch(nx, i);
        }
        let j = i / 16;
        // SAFETY: values i .. i + 64 lie in the row (so do their factors, checked by the
        // caller) and their codes' bytes in out.
        unsafe {
            let v0 = chunk16::<KIND, ZERO>(c, f, n, j, _mm512_loadu_ps(p.add(i)));
            let v1 = chunk16::<KIND, ZERO>(c, f, n, j + 1, _mm512_loadu_ps(p.add(i + 16)));
            let v2 = chunk16::<KIND, ZERO>(c, f, n, j + 2, _mm512_loadu_ps(p.add(i + 32)));
            let v3 = chunk16::<KIND, ZERO>(c, f, n, j + 3, _mm512_loadu_ps(p.add(i + 48)));
            if FOUR {
                store16(o.add(i / 2), _mm_unpacklo_epi64(nibbles16(v0), nibbles16(v1)), stream);
                store16(o.add(i / 2 + 16), _mm_unpacklo_epi64(nibbles16(v2), nibbles16(v3)), stream);
            } else {
                store16(o.add(i), _mm512_cvtepi32_epi8(v0), stream);
                store16(o.add(i + 16), _mm512_cvtepi32_epi8(v1), stream);
                store16(o.add(i + 32), _mm512_cvtepi32_epi8(v2), stream);
                store16(o.add(i + 48), _mm512_cvtepi32_epi8(v3), stream);
            }
        }
        i += 64;
    }
    if stream {
        _mm_sfence();
    }
    // The last 8–56 values, sixteen (or eight) at a time through masked loads and stores.
    while i < n {
        let len = (n - i).min(16);
        let m = ((1u32 << len) - 1) as __mmask16;
        // SAFETY: the mask covers values i .. i + len of the row and their bytes in out.
        unsafe {
            let v = chunk16::<KIND, ZERO>(c, f, n, i / 16, _mm512_maskz_loadu_ps(m, p.add(i)));
            if FOUR {
                _mm_mask_storeu_epi8(o.add(i / 2).cast(), ((1u32 << (len / 2)) - 1) as __mmask16, nibbles16(v));
            } else {
                _mm_mask_storeu_epi8(o.add(i).cast(), m, _mm512_cvtepi32_epi8(v));
            }
        }
        i += len;
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

    /// Packing at every width of 2 to 8 bits writes the bytes [`crate::pack::pack`] makes of the
    /// 8-bit codes (themselves tested against the scalar encoders): integer grids with and
    /// without zero points, minifloats, tables; rows of 8 to 328 values (the words stored
    /// whole, then byte by byte at the row's end); every byte of the row written and none past
    /// it.
    #[test]
    fn packed_codes_of_every_width_equal_pack() {
        use crate::element::Element;
        use crate::int::IntGrid;
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            return;
        }
        let mut grids: Vec<(Element, bool)> = Vec::new();
        for b in 2..=8 {
            for kind in [IntKind::Signed, IntKind::Unsigned] {
                let e = Element::Int(IntGrid::new(b, kind).unwrap());
                grids.push((e.clone(), false));
                grids.push((e, true));
            }
        }
        for (e, m) in [(2u32, 3u32), (3, 2), (2, 1), (1, 1), (4, 3), (2, 2)] {
            let f = Minifloat::new(e, m, Minifloat::default_bias(e, Special::Finite), Special::Finite).unwrap();
            grids.push((Element::Float(f), false));
        }
        grids.push((Element::Lut(crate::nf4::nf4_grid()), false));
        grids.push((Element::Lut(crate::lut::power_grid(3, 2.0).unwrap()), false));
        let mut widths_tested = [0usize; 9];
        for (e, zp) in &grids {
            let Some(k8) = Kernel::of(e, 8, *zp) else { panic!("no 8-bit kernel") };
            for n in [8usize, 16, 24, 40, 64, 72, 200, 328] {
                let row: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) * 0.21).collect();
                let inv: Vec<f32> = (0..n / 8).map(|v| 0.3 + 0.1 * (v % 5) as f32).collect();
                let zero: Vec<f32> = (0..n / 8).map(|v| (v % 4) as f32).collect();
                let f = Factors { inv: &inv, zero: zp.then_some(&zero[..]), shift: 0, stream: false };
                let mut bytes = vec![0u8; n];
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { encode_packed_avx2(&k8, &row, &f, 8, uninit(&mut bytes), None) };
                for bits in 2..=8u32 {
                    let Some(k) = Kernel::of(e, bits, *zp) else { continue };
                    widths_tested[bits as usize] += 1;
                    let len = n * bits as usize / 8;
                    let mut want = vec![0u8; len];
                    crate::pack::pack(&bytes, bits, &mut want);
                    let mut buf = vec![0xa5u8; len + 16];
                    let f = Factors { stream: true, ..f };
                    // SAFETY: as above.
                    unsafe { encode_packed_avx2(&k, &row, &f, bits, uninit(&mut buf[..len]), Some(&row)) };
                    assert_eq!(&buf[..len], &want[..], "n {n}, {bits} bits, zero points {zp}");
                    assert!(buf[len..].iter().all(|&b| b == 0xa5));
                }
            }
        }
        assert!(widths_tested[2..].iter().all(|&t| t >= 8), "{widths_tested:?}");
    }

    /// The AVX-512 encoder writes the AVX2 encoder's bytes: integer grids of 2–8 bits with and
    /// without zero points, every minifloat shape with packed constants, tables (handed to
    /// AVX2); 4- and 8-bit packing (other widths handed to AVX2); groups of 8, 16, 32, 64 and
    /// 128 values and per-vector factors (shift 0); rows ending on every multiple of eight past
    /// the last 64 values; values spread over and past each grid's range, exact zeros and both
    /// signs; streamed and stored.
    #[test]
    fn avx512_codes_equal_avx2_codes() {
        use crate::element::Element;
        use crate::int::IntGrid;
        use crate::minifloat::Minifloat;
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") && has_avx512()) {
            return;
        }
        // (kernel, zero points, packing)
        let mut kernels: Vec<(Kernel, bool, u32)> = Vec::new();
        let mut add = |e: &Element, zp: bool| {
            for pack in 2..=8 {
                kernels.extend(Kernel::of(e, pack, zp).map(|k| (k, zp, pack)));
            }
        };
        for b in 2..=8 {
            for kind in [IntKind::Signed, IntKind::Restricted, IntKind::Unsigned] {
                let e = Element::Int(IntGrid::new(b, kind).unwrap());
                add(&e, false);
                add(&e, true);
            }
        }
        for e in 1..=5u32 {
            for m in 0..=(7 - e) {
                for sp in [Special::Finite, Special::Fn, Special::Fnuz, Special::Ieee] {
                    let Ok(f) = Minifloat::new(e, m, Minifloat::default_bias(e, sp), sp) else { continue };
                    add(&Element::Float(f), false);
                }
            }
        }
        for l in [crate::nf4::nf4_grid(), crate::lut::iq4_nl_grid(), crate::lut::power_grid(3, 2.0).unwrap()] {
            add(&Element::Lut(l), false);
        }
        assert!(kernels.len() > 50, "{} kernels", kernels.len());
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 40) as f32 / (1u64 << 24) as f32
        };
        for &(ref k, zp, pack) in &kernels {
            {
                for n in [64usize, 72, 96, 120, 128, 200, 256, 328] {
                    let row: Vec<f32> =
                        (0..n)
                            .map(|i| {
                                if i % 13 == 0 {
                                    0.0
                                } else {
                                    (rnd() - 0.5) * 40.0 * if i % 7 == 0 { 10.0 } else { 1.0 }
                                }
                            })
                            .collect();
                    for shift in [0u32, 1, 2, 3, 4] {
                        let entries = (n / 8).div_ceil(1 << shift);
                        let inv: Vec<f32> = (0..entries).map(|_| 0.05 + rnd()).collect();
                        let zero: Vec<f32> = (0..entries).map(|_| (rnd() * 8.0).round()).collect();
                        let zero = zp.then_some(&zero[..]);
                        let len = n * pack as usize / 8;
                        let mut want = vec![0u8; len];
                        let mut got = vec![0u8; len];
                        for stream in [false, true] {
                            let f = Factors { inv: &inv, zero, shift, stream };
                            // SAFETY: the CPU has the features (checked above).
                            unsafe {
                                encode_packed_avx2(k, &row, &f, pack, uninit(&mut want), None);
                                encode_packed_avx512(k, &row, &f, pack, uninit(&mut got), Some(&row));
                            }
                            assert_eq!(
                                got, want,
                                "n {n}, shift {shift}, {pack} bits, zero points {zp}, stream {stream}"
                            );
                        }
                    }
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
