//! Dyadic numbers (HAWQ-V3): a real multiplier m approximated as b / 2^c with an integer b of
//! limited width, so integer-only pipelines rescale with one multiply and one shift.

use crate::{FormatError, Result};

/// b / 2^c.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dyadic {
    /// Integer numerator.
    pub b: i64,
    /// Shift.
    pub c: u32,
}

impl Dyadic {
    /// The closest b / 2^c to `m` with |b| < 2^(bits-1) and c <= max_shift, taking the largest
    /// shift that fits (finest resolution). `bits` 2–63.
    pub fn approximate(m: f64, bits: u32, max_shift: u32) -> Result<Dyadic> {
        if !m.is_finite() || !(2..=63).contains(&bits) || max_shift > 62 {
            return Err(FormatError::Invalid(format!(
                "dyadic approximation of {m} with {bits}-bit numerator and shift <= {max_shift}: need finite m, bits 2-63, shift <= 62"
            )));
        }
        let limit = ((1u64 << (bits - 1)) - 1) as f64;
        for c in (0..=max_shift).rev() {
            let b = (m * (1u64 << c) as f64).round();
            if b.abs() <= limit {
                return Ok(Dyadic { b: b as i64, c });
            }
        }
        Err(FormatError::Invalid(format!("{m} does not fit a {bits}-bit dyadic numerator even without a shift")))
    }

    /// The value b / 2^c.
    pub fn value(self) -> f64 {
        self.b as f64 / (1u64 << self.c) as f64
    }

    /// x · b / 2^c in integers, rounding half away from zero.
    pub fn apply(self, x: i64) -> i64 {
        let p = x as i128 * self.b as i128;
        if self.c == 0 {
            return p as i64;
        }
        let half = 1i128 << (self.c - 1);
        let r = if p >= 0 { (p + half) >> self.c } else { -((-p + half) >> self.c) };
        r as i64
    }
}
