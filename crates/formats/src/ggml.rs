//! ggml block types (llama.cpp's quantized tensor layouts).

use crate::{FormatError, Result};

/// A ggml tensor type, numbered as in ggml.h's `enum ggml_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq4Nl,
    Iq4Xs,
    Bf16,
}

impl GgmlType {
    /// The type for a ggml type id, if quantsmith knows it.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            20 => Iq4Nl,
            23 => Iq4Xs,
            30 => Bf16,
            _ => return None,
        })
    }

    /// ggml's numeric id of this type.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            Iq4Nl => 20,
            Iq4Xs => 23,
            Bf16 => 30,
        }
    }

    /// Lower-case name as llama.cpp prints it (`q4_k`, `f32`, ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2K => "q2_k",
            Q3K => "q3_k",
            Q4K => "q4_k",
            Q5K => "q5_k",
            Q6K => "q6_k",
            Q8K => "q8_k",
            Iq4Nl => "iq4_nl",
            Iq4Xs => "iq4_xs",
            Bf16 => "bf16",
        }
    }

    /// Elements per block.
    pub fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | Bf16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | Iq4Nl => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K | Iq4Xs => 256,
        }
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | Bf16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
            Iq4Nl => 18,
            Iq4Xs => 136,
        }
    }

    /// Bytes needed for `n` elements (n must be a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let bs = self.block_size();
        if n % bs != 0 {
            return Err(FormatError::Invalid(format!(
                "{} elements is not a multiple of {}'s block size {}",
                n,
                self.name(),
                bs
            )));
        }
        Ok(n / bs * self.type_size())
    }
}

/// Dequantizes `src` (whole blocks of type `ty`) into `dst` (`dst.len()` elements).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let need = ty.row_bytes(dst.len())?;
    if src.len() != need {
        return Err(FormatError::Length { what: format!("{} data", ty.name()), expected: need, got: src.len() });
    }
    Err(FormatError::Invalid(format!("dequantizing {} is not implemented yet", ty.name())))
}
