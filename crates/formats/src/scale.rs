//! Scale storage: how a group's scale is kept (f32, f16, bf16, E8M0 power of two, E4M3 with a
//! per-tensor f32 second level, or unsigned integers with an f32 second-level scale per super
//! block of groups, k-quant style).

use crate::element::ElementCodec;
use crate::minifloat::{pow2, Minifloat, Special};

/// How group scales are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleStorage {
    /// 32-bit float.
    F32,
    /// IEEE half.
    F16,
    /// bfloat16.
    Bf16,
    /// OCP E8M0: a power of two 2^(-127..=127), derived as the MX spec says.
    E8m0,
    /// FP8 E4M3 (FN) times an f32 per-tensor scale (NVFP4).
    E4m3,
    /// Unsigned `bits`-bit integers times an f32 scale per super block of `super_groups` groups.
    UInt { bits: u32, super_groups: usize },
}

impl ScaleStorage {
    /// Bits per group scale.
    pub fn bits(self) -> u32 {
        match self {
            ScaleStorage::F32 => 32,
            ScaleStorage::F16 | ScaleStorage::Bf16 => 16,
            ScaleStorage::E8m0 | ScaleStorage::E4m3 => 8,
            ScaleStorage::UInt { bits, .. } => bits,
        }
    }

    /// Spec-string value (`scale=...`), with the super-block size when not the default 8.
    pub fn spec_name(self) -> String {
        match self {
            ScaleStorage::F32 => "f32".into(),
            ScaleStorage::F16 => "f16".into(),
            ScaleStorage::Bf16 => "bf16".into(),
            ScaleStorage::E8m0 => "e8m0".into(),
            ScaleStorage::E4m3 => "e4m3".into(),
            ScaleStorage::UInt { bits, super_groups: 8 } => format!("u{bits}"),
            ScaleStorage::UInt { bits, super_groups } => format!("u{bits}:sg={super_groups}"),
        }
    }

    /// Rounds an ideal positive scale `s` to what this storage holds. E8M0 scales come from
    /// [`e8m0_scale`] instead, and integer scales are rounded per super block afterwards
    /// ([`quantize_uint_scales`]), so both pass `s` through here. Never returns 0 for s > 0.
    #[inline]
    pub fn round(self, s: f32, tensor_scale: f32) -> f32 {
        if s <= 0.0 {
            return 0.0;
        }
        match self {
            ScaleStorage::F32 | ScaleStorage::E8m0 | ScaleStorage::UInt { .. } => s,
            ScaleStorage::F16 => {
                let h = half::f16::from_f32(s);
                let h = if h.is_infinite() { half::f16::MAX } else { h };
                h.to_f32().max(half::f16::from_bits(1).to_f32())
            }
            ScaleStorage::Bf16 => {
                let h = half::bf16::from_f32(s);
                let h = if h.is_infinite() { half::bf16::MAX } else { h };
                h.to_f32().max(half::bf16::from_bits(1).to_f32())
            }
            ScaleStorage::E4m3 => e4m3_round(s, tensor_scale),
        }
    }

    /// The per-tensor second-level scale this storage needs given the tensor's absmax and the
    /// element's largest value (NVFP4: amax / (6 · 448)); 1 when there is none.
    pub fn tensor_scale(self, amax: f32, elem_max: f32) -> f32 {
        match self {
            ScaleStorage::E4m3 if amax > 0.0 => amax / (elem_max * e4m3().max()),
            _ => 1.0,
        }
    }
}

/// A scale rounded to E4M3 relative to the tensor scale (NVFP4's block scales); at least
/// E4M3's smallest subnormal. The E4M3FN constants are written out (bias 7, three mantissa
/// bits, largest 448, smallest subnormal 2^-9) so that this is a few f32 operations per group:
/// rounding at the value's quantum 2^(e-3) by adding and subtracting C = 2^(e+20), whose f32
/// ulp that quantum is (the FPU's round-to-nearest-even, as [`Minifloat::round_value`] does in
/// f64; the test compares the two). Values from 448 up all round to 448, so the input is
/// clamped there first, which keeps C a normal f32.
#[inline(always)]
pub(crate) fn e4m3_round(s: f32, tensor_scale: f32) -> f32 {
    const MAX: f32 = 448.0;
    const MIN_SUBNORMAL: f32 = 1.0 / 512.0;
    let a = (s / tensor_scale).min(MAX);
    let e = (((a.to_bits() >> 23) as i32) - 127).max(-6);
    let c = f32::from_bits(((e + 20 + 127) as u32) << 23);
    let v = ((a + c) - c).max(MIN_SUBNORMAL);
    v * tensor_scale
}

/// FP8 E4M3FN, the NVFP4 block-scale format (built once: scales are rounded per group).
pub fn e4m3() -> &'static Minifloat {
    static E4M3: std::sync::OnceLock<Minifloat> = std::sync::OnceLock::new();
    E4M3.get_or_init(|| Minifloat::with_default_bias(4, 3, Special::Fn).expect("E4M3FN is a valid minifloat"))
}

/// OCP MX v1.0 shared scale: 2^(floor(log2(amax)) - emax_elem), clamped to E8M0's range
/// 2^-127 ..= 2^127; an all-zero block gets 2^-127.
#[inline]
pub fn e8m0_scale(amax: f32, emax_elem: i32) -> f32 {
    if !(amax > 0.0) {
        return pow2(-127);
    }
    let e = if amax >= f32::MIN_POSITIVE {
        ((amax.to_bits() >> 23) as i32) - 127
    } else {
        // Subnormal amax: floor(log2) from the position of the highest set bit.
        -149 + (31 - amax.to_bits().leading_zeros() as i32)
    };
    pow2((e - emax_elem).clamp(-127, 127))
}

/// E8M0 code (biased exponent, 0..=254) of a power-of-two scale.
pub fn e8m0_code(scale: f32) -> u8 {
    let b = scale.to_bits();
    if b >> 23 == 0 {
        // 2^-127 is an f32 subnormal with bit 22 set.
        return 0;
    }
    ((b >> 23) as i32).clamp(0, 254) as u8
}

/// Value of an E8M0 code: 2^(code - 127); 255 is NaN.
pub fn e8m0_decode(code: u8) -> f32 {
    if code == 255 {
        f32::NAN
    } else {
        pow2(code as i32 - 127)
    }
}

/// Rounds a row's scales to unsigned `bits`-bit integers per super block of `super_groups`,
/// returning each block's f32 second-level scale. A nonzero scale never rounds to 0.
pub fn quantize_uint_scales(scales: &mut [f32], bits: u32, super_groups: usize) -> Vec<f32> {
    let qmax = ((1u32 << bits) - 1) as f32;
    let mut supers = Vec::with_capacity(scales.len().div_ceil(super_groups.max(1)));
    for blk in scales.chunks_mut(super_groups.max(1)) {
        let smax = blk.iter().fold(0.0f32, |m, &s| m.max(s));
        let ss = smax / qmax;
        supers.push(ss);
        if ss > 0.0 {
            for s in blk.iter_mut() {
                let q = (*s / ss).round_ties_even().clamp(if *s > 0.0 { 1.0 } else { 0.0 }, qmax);
                *s = q * ss;
            }
        }
    }
    supers
}

/// Shared by the element encoders: the ideal absmax scale that maps a group into the grid
/// without saturating either side.
#[inline(always)]
pub(crate) fn absmax_scale<E: ElementCodec>(e: &E, pos: f32, neg: f32) -> f32 {
    let up = if e.max_value() > 0.0 { pos / e.max_value() } else { 0.0 };
    let down = if e.min_value() < 0.0 { neg / -e.min_value() } else { up };
    up.max(down)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The written-out E4M3 rounding equals the generic minifloat's on every f32 from below the
    /// smallest subnormal to past the largest value (each exponent, many mantissas), ties
    /// included, for several tensor scales.
    #[test]
    fn e4m3_round_matches_the_generic_minifloat() {
        let f = e4m3();
        let generic = |s: f32, ts: f32| f.round_value(s / ts).max(f.min_subnormal()) * ts;
        let mut n = 0;
        for ts in [1.0f32, 0.37, 3.0e-5, 2.5e3] {
            for exp in -14i32..=12 {
                for m in
                    (0u32..1 << 23).step_by(997).chain([0, 1 << 19, 3 << 19, (1 << 20) - 1, 1 << 20, (1 << 20) + 1])
                {
                    let a = f32::from_bits((((exp + 127) as u32) << 23) | m);
                    let s = a * ts;
                    assert_eq!(e4m3_round(s, ts).to_bits(), generic(s, ts).to_bits(), "s = {s:e}, ts = {ts:e}");
                    n += 1;
                }
            }
            for s in [f32::MIN_POSITIVE, 1e-30, 447.9, 448.0, 463.9, 464.0, 480.0, 1e30, f32::MAX] {
                assert_eq!(e4m3_round(s * ts, ts).to_bits(), generic(s * ts, ts).to_bits(), "s = {s:e}");
            }
        }
        assert!(n > 100_000);
    }
}
