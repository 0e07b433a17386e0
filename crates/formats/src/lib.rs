//! Number formats for quantization. Pure: no model knowledge.

pub mod ggml;

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
