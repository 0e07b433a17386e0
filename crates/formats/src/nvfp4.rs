//! NVFP4: 16-element blocks of E2M1 with an FP8 E4M3 block scale and an f32 per-tensor
//! scale. The tensor scale is amax / (6 · 448), so that the largest block scale is E4M3's
//! largest value; each block stores e4m3(amax_block / 6 / tensor_scale) (nearest, ties to
//! even), and elements are x / (block_scale · tensor_scale) rounded to E2M1 with saturation.
//! Cost: 4 + 8/16 = 4.5 bits per weight plus 32 bits per tensor.

/// NVFP4 block size.
pub const BLOCK: usize = 16;

/// The per-tensor scale NVFP4 uses for a tensor whose absmax is `amax` (1 for an all-zero one).
pub fn tensor_scale(amax: f32) -> f32 {
    crate::scale::ScaleStorage::E4m3.tensor_scale(amax, 6.0)
}
