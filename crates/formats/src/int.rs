//! Integer grids: signed b-bit (optionally restricted to a symmetric range), unsigned b-bit
//! (used with a zero point for asymmetric quantization), binary {-1, +1} and ternary {-1, 0, 1}.

use crate::element::{Code, ElementCodec};
use crate::{FormatError, Result};

/// Round to nearest, ties to even, for |x| <= 2^22: adding and subtracting 1.5 · 2^23 lets
/// the FPU round (f32::round_ties_even is a libm call without SSE4.1, and does not vectorise).
#[inline(always)]
pub(crate) fn round_even(x: f32) -> f32 {
    (x + MAGIC) - MAGIC
}

/// 1.5 · 2^23: f32s in [2^23, 2^24) have a unit quantum.
pub(crate) const MAGIC: f32 = 12_582_912.0;

impl IntGrid {
    /// Encodes `dst[i] = encode(src[i] * inv_scale + zero)` in a branch-free, vectorisable loop.
    #[inline(always)]
    pub fn encode_slice<C: Code>(&self, src: &[f32], inv_scale: f32, zero: f32, dst: &mut [C]) {
        if self.kind == IntKind::Binary {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = C::from_u32((x * inv_scale + zero >= 0.0) as u32);
            }
            return;
        }
        let (lo, hi) = (self.qmin, self.qmax);
        let mask = (1u32 << self.bits) - 1;
        for (d, &x) in dst.iter_mut().zip(src) {
            // After adding 1.5 · 2^23 the integer sits in the low mantissa bits, in two's
            // complement: masking them gives the code without a float-to-int conversion
            // (whose saturating semantics stop the loop from vectorising).
            let v = (x * inv_scale + zero).clamp(lo, hi) + MAGIC;
            *d = C::from_u32(v.to_bits() & mask);
        }
    }
}

/// Which integers a grid holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IntKind {
    /// Two's complement: -2^(b-1) ..= 2^(b-1)-1.
    Signed,
    /// Symmetric: -(2^(b-1)-1) ..= 2^(b-1)-1 (the most negative code unused). Ternary is int2 restricted.
    Restricted,
    /// 0 ..= 2^b-1, for asymmetric (zero-point) quantization.
    Unsigned,
    /// One bit: {-1, +1}.
    Binary,
}

/// An integer grid.
#[derive(Clone, Debug, PartialEq)]
pub struct IntGrid {
    bits: u32,
    kind: IntKind,
    qmin: f32,
    qmax: f32,
}

impl IntGrid {
    /// A grid of `bits` (1–8; a 1-bit signed grid is binary).
    pub fn new(bits: u32, kind: IntKind) -> Result<Self> {
        if !(1..=8).contains(&bits) {
            return Err(FormatError::Invalid(format!("integer width {bits} outside 1-8 bits")));
        }
        let kind = if bits == 1 && kind != IntKind::Unsigned { IntKind::Binary } else { kind };
        if kind == IntKind::Binary && bits != 1 {
            return Err(FormatError::Invalid("a binary grid has 1 bit".into()));
        }
        let half = (1i32 << (bits - 1)) as f32;
        let (qmin, qmax) = match kind {
            IntKind::Signed => (-half, half - 1.0),
            IntKind::Restricted => (-(half - 1.0), half - 1.0),
            IntKind::Unsigned => (0.0, ((1u32 << bits) - 1) as f32),
            IntKind::Binary => (-1.0, 1.0),
        };
        Ok(IntGrid { bits, kind, qmin, qmax })
    }

    /// Ternary {-1, 0, 1} in 2 bits.
    pub fn ternary() -> Self {
        IntGrid { bits: 2, kind: IntKind::Restricted, qmin: -1.0, qmax: 1.0 }
    }

    /// Bits per code.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// The kind of integers.
    pub fn kind(&self) -> IntKind {
        self.kind
    }
    /// Smallest integer.
    pub fn qmin(&self) -> f32 {
        self.qmin
    }
    /// Largest integer.
    pub fn qmax(&self) -> f32 {
        self.qmax
    }

    /// Spec name (`int4`, `uint4`, `ternary`, `int4:restricted`, `int1`).
    pub fn spec_name(&self) -> String {
        match self.kind {
            IntKind::Signed | IntKind::Binary => format!("int{}", self.bits),
            IntKind::Unsigned => format!("uint{}", self.bits),
            IntKind::Restricted if self.bits == 2 => "ternary".into(),
            IntKind::Restricted => format!("int{}:restricted", self.bits),
        }
    }
}

impl ElementCodec for IntGrid {
    fn code_bits(&self) -> u32 {
        self.bits
    }
    fn max_value(&self) -> f32 {
        self.qmax
    }
    fn min_value(&self) -> f32 {
        self.qmin
    }
    #[inline(always)]
    fn encode(&self, x: f32) -> u16 {
        if self.kind == IntKind::Binary {
            return (x >= 0.0) as u16;
        }
        let q = round_even(x.clamp(self.qmin, self.qmax)) as i32;
        (q as u32 & ((1u32 << self.bits) - 1)) as u16
    }
    #[inline(always)]
    fn encode_sr(&self, x: f32, u: f32) -> u16 {
        if self.kind == IntKind::Binary {
            // P(+1) = (x+1)/2 keeps the expectation equal to x inside [-1, 1].
            return (u < (x.clamp(-1.0, 1.0) + 1.0) * 0.5) as u16;
        }
        let q = (x + u).floor().clamp(self.qmin, self.qmax) as i32;
        (q as u32 & ((1u32 << self.bits) - 1)) as u16
    }
    fn decode(&self, code: u16) -> f32 {
        let c = code as u32 & ((1u32 << self.bits) - 1);
        match self.kind {
            IntKind::Binary => {
                if c == 1 {
                    1.0
                } else {
                    -1.0
                }
            }
            IntKind::Unsigned => c as f32,
            IntKind::Signed | IntKind::Restricted => {
                // Sign-extend the b-bit two's complement code.
                let shift = 32 - self.bits;
                ((c << shift) as i32 >> shift) as f32
            }
        }
    }
}
