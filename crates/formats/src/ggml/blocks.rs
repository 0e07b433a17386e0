//! `#[repr(C)]` layouts of ggml's quantized blocks (ggml-common.h), with every field a byte
//! array so the structs have alignment 1 and can be viewed in place inside any byte buffer.

use half::f16;

/// Elements per super-block of the k-quants and IQ4_XS.
pub const QK_K: usize = 256;

/// Reads a little-endian f16 stored as two bytes and widens it to f32.
#[inline(always)]
pub fn f16_le(b: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// Rounds an f32 to f16 (round-to-nearest-even, as GGML_FP32_TO_FP16) as two LE bytes.
#[inline(always)]
pub fn to_f16_le(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// A ggml block: a fixed-size byte layout holding `ELEMS` values.
///
/// # Safety
/// Implementors must be `#[repr(C)]`, contain only `u8` arrays (alignment 1, no padding, every
/// bit pattern valid) and have `size_of::<Self>() == BYTES`.
pub unsafe trait Block: Copy + Send + Sync + 'static {
    /// Values per block.
    const ELEMS: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// A block of all-zero bytes.
    const ZERO: Self;
}

/// Views whole blocks stored in `bytes` (whose length must be a multiple of `B::BYTES`).
pub fn as_blocks<B: Block>(bytes: &[u8]) -> &[B] {
    debug_assert_eq!(bytes.len() % B::BYTES, 0);
    let n = bytes.len() / B::BYTES;
    // SAFETY: `Block` guarantees alignment 1, size BYTES and no invalid bit patterns, and the
    // slice covers n * BYTES <= bytes.len() initialised bytes borrowed for the same lifetime.
    unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<B>(), n) }
}

/// Mutable view of whole blocks stored in `bytes`.
pub fn as_blocks_mut<B: Block>(bytes: &mut [u8]) -> &mut [B] {
    debug_assert_eq!(bytes.len() % B::BYTES, 0);
    let n = bytes.len() / B::BYTES;
    // SAFETY: as in `as_blocks`; the exclusive borrow is carried over.
    unsafe { std::slice::from_raw_parts_mut(bytes.as_mut_ptr().cast::<B>(), n) }
}

macro_rules! block {
    ($(#[$doc:meta])* $name:ident, $elems:expr, $bytes:expr, { $($field:ident : [u8; $n:expr]),* $(,)? }) => {
        $(#[$doc])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name {
            $(pub $field: [u8; $n]),*
        }
        // Compile-time check that the layout matches ggml's type size.
        const _: () = assert!(std::mem::size_of::<$name>() == $bytes);
        const _: () = assert!(std::mem::align_of::<$name>() == 1);
        // SAFETY: repr(C), only u8 arrays, size checked above.
        unsafe impl Block for $name {
            const ELEMS: usize = $elems;
            const BYTES: usize = $bytes;
            const ZERO: Self = Self { $($field: [0; $n]),* };
        }
    };
}

block!(
    /// Q4_0: scale d, 32 4-bit codes (low nibbles = first 16 values), value = (q - 8) * d.
    BlockQ4_0, 32, 18, { d: [u8; 2], qs: [u8; 16] }
);
block!(
    /// Q4_1: scale d, minimum m, 32 4-bit codes, value = q * d + m.
    BlockQ4_1, 32, 20, { d: [u8; 2], m: [u8; 2], qs: [u8; 16] }
);
block!(
    /// Q5_0: scale d, the 5th bits (u32 LE), 32 low nibbles, value = (q - 16) * d.
    BlockQ5_0, 32, 22, { d: [u8; 2], qh: [u8; 4], qs: [u8; 16] }
);
block!(
    /// Q5_1: scale d, minimum m, the 5th bits, 32 low nibbles, value = q * d + m.
    BlockQ5_1, 32, 24, { d: [u8; 2], m: [u8; 2], qh: [u8; 4], qs: [u8; 16] }
);
block!(
    /// Q8_0: scale d, 32 signed bytes, value = q * d.
    BlockQ8_0, 32, 34, { d: [u8; 2], qs: [u8; 32] }
);
block!(
    /// Q8_1: scale d, d * sum(q), 32 signed bytes.
    BlockQ8_1, 32, 36, { d: [u8; 2], s: [u8; 2], qs: [u8; 32] }
);
block!(
    /// Q2_K: 16 sub-blocks of 16 with 4-bit scale and min, 2-bit codes.
    BlockQ2K, QK_K, 84, { scales: [u8; 16], qs: [u8; 64], d: [u8; 2], dmin: [u8; 2] }
);
block!(
    /// Q3_K: 16 sub-blocks of 16 with 6-bit scales, 2 low bits + 1 high bit per code.
    BlockQ3K, QK_K, 110, { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: [u8; 2] }
);
block!(
    /// Q4_K: 8 sub-blocks of 32 with 6-bit scale and min, 4-bit codes.
    BlockQ4K, QK_K, 144, { d: [u8; 2], dmin: [u8; 2], scales: [u8; 12], qs: [u8; 128] }
);
block!(
    /// Q5_K: 8 sub-blocks of 32 with 6-bit scale and min, 4 low bits + 1 high bit per code.
    BlockQ5K, QK_K, 176, { d: [u8; 2], dmin: [u8; 2], scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }
);
block!(
    /// Q6_K: 16 sub-blocks of 16 with 8-bit signed scales, 4 low bits + 2 high bits per code.
    BlockQ6K, QK_K, 210, { ql: [u8; 128], qh: [u8; 64], scales: [u8; 16], d: [u8; 2] }
);
block!(
    /// Q8_K: f32 scale, 256 signed bytes, sums of each 16 codes (i16 LE).
    BlockQ8K, QK_K, 292, { d: [u8; 4], qs: [u8; 256], bsums: [u8; 32] }
);
block!(
    /// IQ4_NL: scale d, 32 4-bit indices into the non-linear table `KVALUES_IQ4NL`.
    BlockIq4Nl, 32, 18, { d: [u8; 2], qs: [u8; 16] }
);
block!(
    /// IQ4_XS: super-block scale, 8 6-bit sub-block scales (split low/high), 4-bit indices.
    BlockIq4Xs, QK_K, 136, { d: [u8; 2], scales_h: [u8; 2], scales_l: [u8; 4], qs: [u8; 128] }
);

/// The 16 values of the IQ4_NL / IQ4_XS non-linear grid.
pub const KVALUES_IQ4NL: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];
