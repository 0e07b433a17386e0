//! Fixed point Qm.n: a signed `bits`-bit two's complement integer k standing for k / 2^frac,
//! saturating. Used unscaled (integer-only pipelines); MXINT8's element is Q1.6 (`fixed8.6`).

use crate::element::ElementCodec;
use crate::minifloat::pow2;
use crate::{FormatError, Result};

/// Signed fixed point with `bits` total bits, `frac` of them fractional.
#[derive(Clone, Debug, PartialEq)]
pub struct Fixed {
    bits: u32,
    frac: u32,
    step: f32,
    inv_step: f32,
    kmin: f32,
    kmax: f32,
    restricted: bool,
}

impl Fixed {
    /// `fixed{bits}.{frac}`: bits 2–16, frac 0–bits+15 (a negative integer part is allowed).
    pub fn new(bits: u32, frac: u32) -> Result<Self> {
        if !(2..=16).contains(&bits) || frac > 31 {
            return Err(FormatError::Invalid(format!(
                "fixed point {bits}.{frac}: total bits must be 2-16 and fraction bits at most 31"
            )));
        }
        let half = (1i32 << (bits - 1)) as f32;
        Ok(Fixed {
            bits,
            frac,
            step: pow2(-(frac as i32)),
            inv_step: pow2(frac as i32),
            kmin: -half,
            kmax: half - 1.0,
            restricted: false,
        })
    }

    /// The same without the most negative code, so the range is symmetric (MXINT8 uses this:
    /// -2.0 would change a block's E8M0 scale on re-quantization).
    pub fn restricted(mut self) -> Self {
        self.kmin = -self.kmax;
        self.restricted = true;
        self
    }
    /// Total bits.
    pub fn bits(&self) -> u32 {
        self.bits
    }
    /// Fraction bits.
    pub fn frac(&self) -> u32 {
        self.frac
    }
    /// Spec name `fixedB.F`.
    pub fn spec_name(&self) -> String {
        let r = if self.restricted { ":restricted" } else { "" };
        format!("fixed{}.{}{r}", self.bits, self.frac)
    }
}

impl ElementCodec for Fixed {
    fn code_bits(&self) -> u32 {
        self.bits
    }
    fn max_value(&self) -> f32 {
        self.kmax * self.step
    }
    fn min_value(&self) -> f32 {
        self.kmin * self.step
    }
    #[inline(always)]
    fn encode(&self, x: f32) -> u16 {
        let k = crate::int::round_even((x * self.inv_step).clamp(self.kmin, self.kmax)) as i32;
        (k as u32 & ((1u32 << self.bits) - 1)) as u16
    }
    #[inline(always)]
    fn encode_sr(&self, x: f32, u: f32) -> u16 {
        let k = (x * self.inv_step + u).floor().clamp(self.kmin, self.kmax) as i32;
        (k as u32 & ((1u32 << self.bits) - 1)) as u16
    }
    fn decode(&self, code: u16) -> f32 {
        let shift = 32 - self.bits;
        let k = ((code as u32) << shift) as i32 >> shift;
        k as f32 * self.step
    }
}
