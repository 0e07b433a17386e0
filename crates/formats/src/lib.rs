//! Number formats for quantization. Pure: no model knowledge.
//!
//! A [`Format`] is an element grid ([`Element`]: integers, minifloats, fixed point, lookup
//! grids) plus orthogonal settings ([`Granularity`], [`ScaleStorage`], zero point,
//! [`Rounding`], [`Clip`], a per-group or per-tensor [`Choice`] among grids), or a ggml block
//! type. Build one from a spec string with [`Format::parse`] (`int4:g128`, `mxfp4`, `q4_k`).

pub mod bitmod;
pub mod dyadic;
pub mod element;
pub mod fixed;
pub mod format;
pub mod ggml;
pub mod ggml_format;
pub mod int;
pub mod log2;
pub mod lut;
pub mod metrics;
pub mod minifloat;
pub mod mx;
pub mod nf4;
pub mod nvfp4;
pub mod pack;
pub mod scale;
#[cfg(target_arch = "x86_64")]
mod simd;
pub mod spec;

pub use element::{Element, ElementCodec};
pub use format::{Choice, Clip, Format, Granularity, GroupParams, Quantized, Rounding};
pub use minifloat::{Minifloat, Special};
pub use scale::ScaleStorage;

/// Errors of the formats crate.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A buffer whose length does not fit the format's block layout.
    #[error("{what}: expected {expected} bytes/values, got {got}")]
    Length { what: String, expected: usize, got: usize },
    /// A format spec string that could not be parsed.
    #[error("format spec `{spec}`: at character {pos}: {msg}")]
    Spec { spec: String, pos: usize, msg: String },
    /// A setting that does not fit the data (group size not dividing a row, ...).
    #[error("{0}")]
    Invalid(String),
    /// Input that contains NaN or infinity.
    #[error("non-finite value {value} at index {index}")]
    NonFinite { index: usize, value: f32 },
}

/// Result alias of the formats crate.
pub type Result<T> = std::result::Result<T, FormatError>;

/// The unit tests' seeded xorshift64 generator: each call gives the next 64-bit state.
#[cfg(test)]
pub(crate) fn xorshift(mut s: u64) -> impl FnMut() -> u64 {
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}
