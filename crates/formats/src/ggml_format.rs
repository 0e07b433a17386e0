//! ggml block types through the [`crate::Format`] interface: `Format::parse("q4_k")` gives a
//! format whose quantize/dequantize call the ggml codecs in [`crate::ggml`].

use crate::ggml::GgmlType;
use crate::Format;

/// ggml types exposed as formats, by spec name.
pub const TYPES: [GgmlType; 12] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Iq4Nl,
    GgmlType::Iq4Xs,
];

/// The format for a ggml type.
pub fn ggml_format(t: GgmlType) -> Format {
    Format {
        elements: Vec::new(),
        choice: crate::Choice::PerGroup,
        granularity: crate::Granularity::Group(t.block_size()),
        scale: crate::ScaleStorage::F16,
        asym: false,
        rounding: crate::Rounding::Nearest,
        clip: crate::Clip::None,
        ggml: Some(t),
        preset: None,
        explicit_scaling: false,
    }
}

/// The ggml type of a format, if it is one.
pub fn ggml_type(f: &Format) -> Option<GgmlType> {
    f.ggml
}
