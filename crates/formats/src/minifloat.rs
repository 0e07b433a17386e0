//! Minifloats ExMy: any exponent width 1–8 and mantissa width 0–10, any bias, subnormals,
//! and the special-value conventions in use (IEEE-like, "fn", "fnuz", none).
//!
//! Two encoders with different overflow policies:
//! - [`Minifloat::cast`] follows the conventions of ml_dtypes / PyTorch casts: overflow goes to
//!   infinity (IEEE-like) or NaN (fn, fnuz); formats without special values saturate.
//! - [`Minifloat::encode`] is the quantizer: it always saturates to the largest finite value, as
//!   the weight-quantization literature does. Both round to nearest, ties to even.

use crate::element::{Code, ElementCodec};
use crate::{FormatError, Result};

/// Which bit patterns of a minifloat are special values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Special {
    /// IEEE 754-like: all-ones exponent is infinity (mantissa 0) or NaN.
    Ieee,
    /// "fn" (finite + NaN, as FP8 E4M3FN): only all-ones exponent and mantissa is NaN.
    Fn,
    /// "fnuz" (finite, unsigned zero): the negative-zero pattern is the only NaN.
    Fnuz,
    /// No special values at all (OCP FP6 / FP4): every pattern is a number.
    Finite,
}

impl Special {
    /// Lower-case name used in spec strings.
    pub fn name(self) -> &'static str {
        match self {
            Special::Ieee => "ieee",
            Special::Fn => "fn",
            Special::Fnuz => "fnuz",
            Special::Finite => "finite",
        }
    }
}

/// A minifloat element format: 1 sign bit, `exp_bits` exponent bits, `man_bits` mantissa bits.
#[derive(Clone, Debug, PartialEq)]
pub struct Minifloat {
    exp_bits: u32,
    man_bits: u32,
    bias: i32,
    special: Special,
    max: f32,
    min_normal: f32,
    max_code: u16,
}

impl Minifloat {
    /// The conventional bias: 2^(E-1)-1, or 2^(E-1) for fnuz (as ml_dtypes' *fnuz types).
    pub fn default_bias(exp_bits: u32, special: Special) -> i32 {
        let b = 1i32 << (exp_bits.saturating_sub(1));
        if special == Special::Fnuz {
            b
        } else {
            b - 1
        }
    }

    /// A minifloat; fails when the combination has no finite nonzero value or does not fit.
    pub fn new(exp_bits: u32, man_bits: u32, bias: i32, special: Special) -> Result<Self> {
        if !(1..=8).contains(&exp_bits) || man_bits > 10 || exp_bits + man_bits + 1 > 16 {
            return Err(FormatError::Invalid(format!(
                "minifloat e{exp_bits}m{man_bits}: exponent must be 1-8 bits and mantissa 0-10 bits"
            )));
        }
        // The f64 rounding trick and f32 decode need every value (and its rounding quantum) to be
        // an f32: the smallest normal exponent 1-bias must not go below f32's -126.
        if !(-127..=127).contains(&bias) {
            return Err(FormatError::Invalid(format!("minifloat bias {bias} outside -127..=127")));
        }
        if special == Special::Ieee && exp_bits < 2 {
            return Err(FormatError::Invalid(format!(
                "minifloat e{exp_bits}m{man_bits}: IEEE-like special values need at least 2 exponent bits"
            )));
        }
        let emask = (1u32 << exp_bits) - 1;
        let mmask = (1u32 << man_bits) - 1;
        let max_code = match special {
            Special::Ieee => ((emask - 1) << man_bits) | mmask,
            Special::Fn if man_bits == 0 => (emask - 1) << man_bits,
            Special::Fn => (emask << man_bits) | (mmask - 1),
            Special::Fnuz | Special::Finite => (emask << man_bits) | mmask,
        };
        if max_code == 0 {
            return Err(FormatError::Invalid(format!(
                "minifloat e{exp_bits}m{man_bits} ({}) has no nonzero finite value",
                special.name()
            )));
        }
        let mut f = Minifloat {
            exp_bits,
            man_bits,
            bias,
            special,
            max: 0.0,
            min_normal: pow2(1 - bias),
            max_code: max_code as u16,
        };
        f.max = f.decode_code(f.max_code);
        if !f.max.is_finite() {
            return Err(FormatError::Invalid(format!(
                "minifloat e{exp_bits}m{man_bits} bias {bias}: largest value does not fit an f32"
            )));
        }
        Ok(f)
    }

    /// With the conventional bias.
    pub fn with_default_bias(exp_bits: u32, man_bits: u32, special: Special) -> Result<Self> {
        Self::new(exp_bits, man_bits, Self::default_bias(exp_bits, special), special)
    }

    /// Exponent bits.
    pub fn exp_bits(&self) -> u32 {
        self.exp_bits
    }
    /// Mantissa bits.
    pub fn man_bits(&self) -> u32 {
        self.man_bits
    }
    /// Exponent bias.
    pub fn bias(&self) -> i32 {
        self.bias
    }
    /// Special-value convention.
    pub fn special(&self) -> Special {
        self.special
    }
    /// Largest finite value.
    pub fn max(&self) -> f32 {
        self.max
    }
    /// Smallest positive normal value.
    pub fn min_normal(&self) -> f32 {
        self.min_normal
    }
    /// Smallest positive subnormal value (the quantum below the normal range).
    pub fn min_subnormal(&self) -> f32 {
        pow2(1 - self.bias - self.man_bits as i32)
    }
    /// Total bits of a code.
    pub fn bits(&self) -> u32 {
        1 + self.exp_bits + self.man_bits
    }
    /// Exponent of the largest finite value (floor(log2(max))), the MX spec's `emax_elem`.
    pub fn emax(&self) -> i32 {
        ((self.max.to_bits() >> 23) as i32) - 127
    }

    /// The NaN code this format uses, if it has one (canonical pattern, positive sign).
    pub fn nan_code(&self) -> Option<u16> {
        let m = self.man_bits;
        let emask = (1u16 << self.exp_bits) - 1;
        match self.special {
            Special::Ieee if m == 0 => None,
            Special::Ieee => Some((emask << m) | (1 << (m - 1))),
            Special::Fn => Some((emask << m) | ((1u16 << m) - 1)),
            Special::Fnuz => Some(1 << (self.exp_bits + m)),
            Special::Finite => None,
        }
    }

    /// The +infinity code, for IEEE-like formats.
    pub fn inf_code(&self) -> Option<u16> {
        (self.special == Special::Ieee).then(|| ((1u16 << self.exp_bits) - 1) << self.man_bits)
    }

    /// Decodes one code (bits above the format's width are ignored).
    pub fn decode_code(&self, code: u16) -> f32 {
        let m = self.man_bits;
        let e = self.exp_bits;
        let code = code as u32 & ((1u32 << (1 + e + m)) - 1);
        let sign = (code >> (e + m)) & 1;
        let ef = (code >> m) & ((1 << e) - 1);
        let mant = code & ((1 << m) - 1);
        let emask = (1 << e) - 1;
        match self.special {
            Special::Ieee if ef == emask => {
                let v = if mant == 0 { f32::INFINITY } else { f32::NAN };
                return if sign == 1 { -v } else { v };
            }
            Special::Fn if ef == emask && mant == (1 << m) - 1 => return f32::NAN,
            Special::Fnuz if sign == 1 && ef == 0 && mant == 0 => return f32::NAN,
            _ => {}
        }
        let mag = if ef == 0 {
            mant as f32 * pow2(1 - self.bias - m as i32)
        } else {
            // (2^m + mant) < 2^11 is exact in f32, and the power of two scales exactly.
            ((1u32 << m) + mant) as f32 * pow2(ef as i32 - self.bias - m as i32)
        };
        if sign == 1 {
            -mag
        } else {
            mag
        }
    }

    /// Rounds |a| (finite, non-negative) to the nearest representable magnitude (ties to even),
    /// ignoring overflow: the result may exceed `max`.
    #[inline(always)]
    fn round_mag(&self, a: f32) -> f32 {
        // Adding and subtracting C = 2^(e - M + 52) in f64 rounds a at quantum 2^(e-M) with the
        // FPU's own round-to-nearest-even: exact, branch-free, and valid for subnormals too
        // because e is clamped to the smallest normal exponent.
        let e = (((a.to_bits() >> 23) as i32) - 127).max(1 - self.bias);
        let c = f64::from_bits(((e - self.man_bits as i32 + 52 + 1023) as u64) << 52);
        ((a as f64 + c) - c) as f32
    }

    /// Stochastic rounding of |a| between its two neighbours, `u` uniform in [0, 1).
    #[inline(always)]
    fn round_mag_sr(&self, a: f32, u: f32) -> f32 {
        let e = (((a.to_bits() >> 23) as i32) - 127).max(1 - self.bias);
        let q = f64::from_bits(((e - self.man_bits as i32 + 1023) as u64) << 52);
        (((a as f64 / q) + u as f64).floor() * q) as f32
    }

    /// Code of a representable finite magnitude `r` with the given sign.
    #[inline(always)]
    fn code_of(&self, r: f32, negative: bool) -> u16 {
        let m = self.man_bits;
        let mag = if r < self.min_normal {
            // r is a multiple of the subnormal quantum: the quotient is an exact integer.
            (r / self.min_subnormal()) as u32
        } else {
            let b = r.to_bits();
            let ef = ((b >> 23) as i32 - 127 + self.bias) as u32;
            (ef << m) | ((b >> (23 - m)) & ((1 << m) - 1))
        };
        let sign_ok = negative && !(self.special == Special::Fnuz && mag == 0);
        (mag | ((sign_ok as u32) << (self.exp_bits + m))) as u16
    }

    /// Quantizer encode: nearest (ties to even), saturating at ±max. `x` must not be NaN.
    #[inline(always)]
    pub fn encode(&self, x: f32) -> u16 {
        let r = self.round_mag(x.abs()).min(self.max);
        self.code_of(r, x.is_sign_negative())
    }

    /// decode(encode(x)) without building the code: nearest value, saturating.
    #[inline(always)]
    pub fn round_value(&self, x: f32) -> f32 {
        let r = self.round_mag(x.abs()).min(self.max);
        if self.special == Special::Fnuz && r == 0.0 {
            return 0.0; // fnuz has no negative zero
        }
        r.copysign(x)
    }

    /// Encodes `dst[i] = encode(src[i] * inv_scale)`: the quantizer's hot loop, written with
    /// f32/u32 operations only and no branches so that it vectorises. Same results as
    /// [`Minifloat::encode`] (the tests compare them).
    ///
    /// The magnitude is saturated first (max is representable, so rounding stays at or below
    /// it). A normal result is rounded on the f32 bits: adding 2^(S-1) - 1 plus the lowest
    /// kept bit (S = 23 - M dropped bits) rounds to nearest, ties to even (for M = 0, ties up),
    /// and a carry moves
    /// into the exponent as it should; the code is then the bits shifted down, re-biased. A
    /// subnormal result is rounded by the FPU: C = 2^(emin - M + 23) has the subnormal
    /// quantum as its ulp, and a + C - C's bits count quanta (reaching 2^M is min_normal's
    /// code). Both are computed and one is selected.
    #[inline(always)]
    pub fn encode_slice<C: Code>(&self, src: &[f32], inv_scale: f32, dst: &mut [C]) {
        let Some(k) = self.slice_consts() else {
            // No bits to drop, or C is not a normal f32: the general path.
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = C::from_u32(self.encode(x * inv_scale) as u32);
            }
            return;
        };
        // Two copies of the loop, so the one without fnuz's "no negative zero" rule has no
        // compare for it.
        if self.special == Special::Fnuz {
            encode_loop::<C, true>(src, inv_scale, dst, &k)
        } else {
            encode_loop::<C, false>(src, inv_scale, dst, &k)
        }
    }

    /// The constants of the branch-free encoder, or None when it does not apply (no mantissa
    /// bits to drop, or the subnormal rounding constant C would not be a normal f32).
    pub(crate) fn slice_consts(&self) -> Option<SliceConsts> {
        let m = self.man_bits as i32;
        let emin = 1 - self.bias;
        let c_exp = emin - m + 23 + 127;
        if m >= 23 || !(1..=254).contains(&c_exp) {
            return None;
        }
        let shift = 23 - self.man_bits;
        // With no mantissa bits the neighbours are 2^e and 2^(e+1), and the even multiple of
        // the quantum 2^e is always the upper one: ties round up, whatever the code's parity.
        let (half, lsb) = if m == 0 { (1u32 << (shift - 1), 0) } else { ((1u32 << (shift - 1)) - 1, 1) };
        let c = f32::from_bits((c_exp as u32) << 23);
        Some(SliceConsts {
            max: self.max,
            min_normal: self.min_normal,
            shift,
            half,
            lsb,
            rebias: ((127 - self.bias) << self.man_bits) as u32,
            c,
            c_bits: c.to_bits(),
            sign_shift: self.exp_bits + self.man_bits,
        })
    }

    /// The constants of the packed encoder's arithmetic ([`PackedConsts`]), or None when it
    /// does not apply: fewer than two spare mantissa bits in f32, or emin's exponent or the
    /// rounding term T at emin or at the largest exponent is not a normal f32 (formats with
    /// eight exponent bits, whose codes are never packed at 4 or 8 bits anyway).
    pub(crate) fn packed_consts(&self) -> Option<PackedConsts> {
        let m = self.man_bits as i32;
        let emin = 1 - self.bias;
        // T's exponent, biased for f32, at emin and at the largest exponent.
        let (t_lo, t_hi) = (emin + 23 - m + 127, self.emax() + 23 - m + 127);
        if m > 21 || !(1..=254).contains(&(emin + 127)) || t_lo < 1 || t_hi > 254 {
            return None;
        }
        let shift = 23 - self.man_bits;
        let emin_bits = ((emin + 127) as u32) << 23;
        Some(PackedConsts {
            max: self.max,
            emin_bits,
            t_offset: ((23 - m) as u32) << 23,
            shift,
            bias_term: emin_bits >> shift,
            sign_shift: self.exp_bits + self.man_bits,
            fnuz: self.special == Special::Fnuz,
        })
    }

    /// Cast with the conventional overflow behaviour (see the module docs). NaN maps to NaN;
    /// formats without NaN get the negative-zero pattern, as ml_dtypes does.
    pub fn cast(&self, x: f32) -> u16 {
        if x.is_nan() {
            return self.nan_code().unwrap_or(1 << (self.exp_bits + self.man_bits));
        }
        let r = self.round_mag(x.abs());
        if r > self.max {
            match self.special {
                Special::Ieee => {
                    let inf = self.inf_code().unwrap_or(0);
                    return inf | ((x.is_sign_negative() as u16) << (self.exp_bits + self.man_bits));
                }
                Special::Fn | Special::Fnuz => return self.nan_code().unwrap_or(0),
                Special::Finite => return self.code_of(self.max, x.is_sign_negative()),
            }
        }
        self.code_of(r, x.is_sign_negative())
    }

    /// Spec name `eXmY`, with the convention and bias when they are not this shape's default.
    pub fn spec_name(&self) -> String {
        match (self.exp_bits, self.man_bits, self.bias, self.special) {
            (8, 7, 127, Special::Ieee) => return "bf16".into(),
            (5, 10, 15, Special::Ieee) => return "f16".into(),
            _ => {}
        }
        let mut s = format!("e{}m{}", self.exp_bits, self.man_bits);
        let default_special = default_special(self.exp_bits, self.man_bits);
        if self.special != default_special {
            s.push(':');
            s.push_str(self.special.name());
        }
        if self.bias != Self::default_bias(self.exp_bits, self.special) {
            s.push_str(&format!(":bias={}", self.bias));
        }
        s
    }
}

/// The convention a bare `eXmY` gets: E4M3 is the FN variant (OCP FP8), E5M2 and wider
/// exponents are IEEE-like (OCP FP8 E5M2, f16, bf16), everything else has no special values
/// (OCP FP6/FP4 and the LLM-FP4 formats).
pub fn default_special(exp_bits: u32, man_bits: u32) -> Special {
    match (exp_bits, man_bits) {
        (4, 3) => Special::Fn,
        (e, _) if e >= 5 => Special::Ieee,
        _ => Special::Finite,
    }
}

/// 2^e as f32 for e in f32's normal and subnormal range.
pub(crate) fn pow2(e: i32) -> f32 {
    if e >= -126 {
        f32::from_bits(((e + 127) as u32) << 23)
    } else {
        f32::from_bits(1u32 << (e + 149))
    }
}

impl ElementCodec for Minifloat {
    fn code_bits(&self) -> u32 {
        self.bits()
    }
    fn max_value(&self) -> f32 {
        self.max
    }
    fn min_value(&self) -> f32 {
        -self.max
    }
    #[inline(always)]
    fn encode(&self, x: f32) -> u16 {
        Minifloat::encode(self, x)
    }
    #[inline(always)]
    fn encode_sr(&self, x: f32, u: f32) -> u16 {
        let r = self.round_mag_sr(x.abs(), u).min(self.max);
        self.code_of(r, x.is_sign_negative())
    }
    fn decode(&self, code: u16) -> f32 {
        self.decode_code(code)
    }
    fn emax(&self) -> i32 {
        Minifloat::emax(self)
    }
}

/// Constants of [`Minifloat::encode_slice`]'s loop (and of the packed encoder's): the code
/// of a magnitude `a` (saturated at `max`) is its f32 bits rounded to `man_bits` (add `half`
/// plus the kept LSB, shift right by `shift`) less the exponent rebias; below `min_normal`
/// it is the bits of `a + c` less `c`'s bits, where `c`'s quantum is the subnormal step.
#[derive(Clone, Copy)]
pub(crate) struct SliceConsts {
    pub(crate) max: f32,
    pub(crate) min_normal: f32,
    pub(crate) shift: u32,
    pub(crate) half: u32,
    pub(crate) lsb: u32,
    pub(crate) rebias: u32,
    pub(crate) c: f32,
    pub(crate) c_bits: u32,
    pub(crate) sign_shift: u32,
}

/// Constants of the packed encoder's minifloat arithmetic ([`crate::simd`]): one path for
/// normal and subnormal results, rounded by the FPU. The magnitude `a` is saturated at `max`
/// (representable, so rounding stays at or below it); with `b` its f32 bits, `e = max(b &
/// 0x7f80_0000, emin_bits)` is its exponent raised to at least emin (subnormals share emin's
/// quantum 2^(emin - M)), and `t = e + t_offset` the bits of T = 2^(E + 23 - M), whose ulp is
/// the quantum of a's binade. The bits of a + T less `t` count quanta, nearest, ties to even:
/// the count's parity is the code's, as E's part of the code is a multiple of 2^M (with M = 0
/// ties go up, to the even multiple of the quantum, as [`Minifloat::encode`] rounds). The
/// code's magnitude is that count plus `(e >> shift) - bias_term` = (E - emin) · 2^M: a
/// count reaching 2^(M+1) carries into the exponent, and a subnormal one reaching 2^M is
/// min_normal's code. The sign goes to bit `sign_shift` (never on code 0 for fnuz).
#[derive(Clone, Copy)]
pub(crate) struct PackedConsts {
    pub(crate) max: f32,
    /// emin's f32 exponent field, in place.
    pub(crate) emin_bits: u32,
    /// 23 - M in the exponent field.
    pub(crate) t_offset: u32,
    /// 23 - M.
    pub(crate) shift: u32,
    /// `emin_bits >> shift`.
    pub(crate) bias_term: u32,
    pub(crate) sign_shift: u32,
    /// fnuz: no negative zero (a magnitude of code 0 keeps a clear sign bit).
    pub(crate) fnuz: bool,
}

/// The loop of [`Minifloat::encode_slice`] (a function, not a closure, so that it inlines
/// into and is compiled for the AVX2 callers).
#[inline(always)]
fn encode_loop<C: Code, const FNUZ: bool>(src: &[f32], inv_scale: f32, dst: &mut [C], k: &SliceConsts) {
    for (d, &x) in dst.iter_mut().zip(src) {
        let y = x * inv_scale;
        let y_abs = y.abs();
        // A compare-select: f32::min's NaN rule would cost two more instructions.
        let a = if y_abs < k.max { y_abs } else { k.max };
        let b = a.to_bits();
        let normal = (b.wrapping_add(k.half + ((b >> k.shift) & k.lsb)) >> k.shift).wrapping_sub(k.rebias);
        let sub = (a + k.c).to_bits().wrapping_sub(k.c_bits);
        let mag = if a < k.min_normal { sub } else { normal };
        let neg = if FNUZ { (y.to_bits() >> 31) & !((mag == 0) as u32) } else { y.to_bits() >> 31 };
        *d = C::from_u32(mag | (neg << k.sign_shift));
    }
}
