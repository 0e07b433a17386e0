//! Logarithmic (power-of-two) grids: `logB` holds 0 and ±2^-k for k = 0 ..= 2^(B-1) - 2, so
//! one sign bit and B-1 bits for the exponent (the pattern "negative zero" is unused). With a
//! scale, the group's absmax maps to 2^0. Rounding is to the nearest value in the linear
//! domain (least squared error), not in the log domain.

use crate::lut::Lut;
use crate::minifloat::pow2;
use crate::{FormatError, Result};

/// The `logB` grid (B = 2–8).
pub fn log_grid(bits: u32) -> Result<Lut> {
    if !(2..=8).contains(&bits) {
        return Err(FormatError::Invalid(format!("log{bits}: width must be 2-8 bits")));
    }
    let kmax = (1i32 << (bits - 1)) - 2;
    let mut v = vec![0.0f32];
    for k in 0..=kmax {
        // 2^-kmax >= 2^-126 for bits <= 8, a normal f32.
        v.push(pow2(-k));
        v.push(-pow2(-k));
    }
    Lut::new(format!("log{bits}"), v)
}
