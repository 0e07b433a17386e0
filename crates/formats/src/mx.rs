//! OCP Microscaling (MX) v1.0 block formats: 32-element blocks sharing an E8M0 scale
//! X = 2^(floor(log2(amax)) - emax_elem); elements are x / X cast to the element format with
//! saturation. Presets: `mxfp8_e4m3`, `mxfp8_e5m2`, `mxfp6_e3m2`, `mxfp6_e2m3`, `mxfp4`,
//! `mxint8` (element: 8-bit two's complement with 6 fraction bits, `fixed8.6`).

use crate::format::Format;
use crate::Result;

/// MX block size.
pub const BLOCK: usize = 32;

/// The MX presets by name.
pub const NAMES: [&str; 6] = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8"];

/// An MX format by preset name.
pub fn mx(name: &str) -> Result<Format> {
    Format::parse(name)
}

/// The E8M0 code a block would store and its scale, for a block's absmax and element format
/// (`emax_elem` from [`crate::element::ElementCodec::emax`]).
pub fn shared_scale(amax: f32, emax_elem: i32) -> (u8, f32) {
    let s = crate::scale::e8m0_scale(amax, emax_elem);
    (crate::scale::e8m0_code(s), s)
}
