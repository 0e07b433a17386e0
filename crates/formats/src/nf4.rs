//! NF4 (QLoRA): the 16 normal-float values, used with 64-element absmax blocks; `nf4:dq` adds
//! QLoRA's double quantization of the absmax constants (here: 8-bit unsigned integers with
//! one f32 scale per 256 blocks, the same storage cost as QLoRA's 8-bit float constants).

use crate::lut::Lut;

/// The NF4 table from the QLoRA paper / bitsandbytes (`NF4` quantile values, ascending),
/// digits as published.
#[allow(clippy::excessive_precision)]
pub const NF4_VALUES: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_5,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// The NF4 grid.
pub fn nf4_grid() -> Lut {
    Lut::new("nf4", NF4_VALUES.to_vec()).expect("constant table is valid")
}
