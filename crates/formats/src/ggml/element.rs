//! Element-level access to an encoded block with its scales held fixed: the hook GPTQ-style
//! solvers need. They fix a block's scale parameters first (by encoding the block's current
//! weights with [`super::quantize`]), then round column by column, each time choosing the code
//! of one element under those fixed scales and feeding the rounding error forward.

use super::blocks::*;
use super::kquants::{q3k_scales, scale_min_k4};
use super::GgmlType;
use crate::{FormatError, Result};

/// The codes one element of a block can take under the block's scales, and how they decode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ElementGrid {
    /// value = `scale * (code - offset)` (then `+ add` when present), code in `0..=max_code`.
    Linear {
        /// Step between adjacent codes (may be 0 or negative).
        scale: f32,
        /// Code that stands for zero before `add`.
        offset: i32,
        /// Largest code.
        max_code: u8,
        /// Constant added after scaling (the block minimum), if the format has one.
        add: Option<f32>,
    },
    /// value = `scale * KVALUES_IQ4NL[code]`, code in `0..16`.
    Iq4 {
        /// Multiplier of the table entry.
        scale: f32,
    },
}

impl ElementGrid {
    /// The value `code` decodes to, bit-exactly as the block decoder computes it.
    #[inline]
    pub fn value(&self, code: u8) -> f32 {
        match *self {
            ElementGrid::Linear { scale, offset, add, .. } => {
                let v = scale * (code as i32 - offset) as f32;
                match add {
                    Some(a) => v + a,
                    None => v,
                }
            }
            ElementGrid::Iq4 { scale } => scale * KVALUES_IQ4NL[(code & 0x0F) as usize] as f32,
        }
    }

    /// The code whose value is nearest to `x` (round to nearest, clamped to the code range).
    #[inline]
    pub fn nearest_code(&self, x: f32) -> u8 {
        match *self {
            ElementGrid::Linear { scale, offset, max_code, add } => {
                if scale == 0.0 {
                    return offset.clamp(0, max_code as i32) as u8;
                }
                let t = (x - add.unwrap_or(0.0)) / scale + offset as f32;
                t.round().clamp(0.0, max_code as f32) as u8
            }
            ElementGrid::Iq4 { scale } => {
                if scale == 0.0 {
                    return super::search::best_index_int8(&KVALUES_IQ4NL, 0.0) as u8;
                }
                super::search::best_index_int8(&KVALUES_IQ4NL, x / scale) as u8
            }
        }
    }
}

fn check(ty: GgmlType, block: &[u8], index: usize) -> Result<()> {
    if block.len() != ty.type_size() {
        return Err(FormatError::Length {
            what: format!("one {} block", ty.name()),
            expected: ty.type_size(),
            got: block.len(),
        });
    }
    if index >= ty.block_size() {
        return Err(FormatError::Invalid(format!(
            "element {index} is outside a {} block of {}",
            ty.name(),
            ty.block_size()
        )));
    }
    match ty {
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 | GgmlType::Q8_1 | GgmlType::Q8K => {
            Err(FormatError::Invalid(format!("{} has no fixed-scale element codes", ty.name())))
        }
        _ => Ok(()),
    }
}

fn block_ref<B: Block>(bytes: &[u8]) -> &B {
    &as_blocks::<B>(bytes)[0]
}

fn block_mut<B: Block>(bytes: &mut [u8]) -> &mut B {
    &mut as_blocks_mut::<B>(bytes)[0]
}

/// Sets nibble `hi` (0 = low, 1 = high) of `byte` to `v`.
#[inline]
fn set_nibble(byte: &mut u8, hi: usize, v: u8) {
    let shift = 4 * hi;
    *byte = (*byte & !(0x0F << shift)) | ((v & 0x0F) << shift);
}

/// The grid of element `index` of `block` (one block of `ty`), from its fixed scales.
pub fn element_grid(ty: GgmlType, block: &[u8], index: usize) -> Result<ElementGrid> {
    check(ty, block, index)?;
    let lin =
        |scale: f32, offset: i32, max_code: u8, add: Option<f32>| ElementGrid::Linear { scale, offset, max_code, add };
    Ok(match ty {
        GgmlType::Q4_0 => lin(f16_le(block_ref::<BlockQ4_0>(block).d), 8, 15, None),
        GgmlType::Q4_1 => {
            let b = block_ref::<BlockQ4_1>(block);
            lin(f16_le(b.d), 0, 15, Some(f16_le(b.m)))
        }
        GgmlType::Q5_0 => lin(f16_le(block_ref::<BlockQ5_0>(block).d), 16, 31, None),
        GgmlType::Q5_1 => {
            let b = block_ref::<BlockQ5_1>(block);
            lin(f16_le(b.d), 0, 31, Some(f16_le(b.m)))
        }
        GgmlType::Q8_0 => lin(f16_le(block_ref::<BlockQ8_0>(block).d), 128, 255, None),
        GgmlType::Q2K => {
            let b = block_ref::<BlockQ2K>(block);
            let (n, r) = (index / 128, index % 128);
            let sc = b.scales[8 * n + 2 * (r / 32) + (r % 32) / 16];
            let dl = f16_le(b.d) * (sc & 0x0F) as f32;
            let ml = f16_le(b.dmin) * (sc >> 4) as f32;
            // ggml computes dl*q - ml; adding the negation is the same IEEE operation.
            lin(dl, 0, 3, Some(-ml))
        }
        GgmlType::Q3K => {
            let b = block_ref::<BlockQ3K>(block);
            let (n, r) = (index / 128, index % 128);
            let sc = q3k_scales(&b.scales)[8 * n + 2 * (r / 32) + (r % 32) / 16];
            lin(f16_le(b.d) * sc as f32, 4, 7, None)
        }
        GgmlType::Q4K | GgmlType::Q5K => {
            let (d, dmin, scales) = if ty == GgmlType::Q4K {
                let b = block_ref::<BlockQ4K>(block);
                (b.d, b.dmin, b.scales)
            } else {
                let b = block_ref::<BlockQ5K>(block);
                (b.d, b.dmin, b.scales)
            };
            let (sc, m) = scale_min_k4(index / 32, &scales);
            let max = if ty == GgmlType::Q4K { 15 } else { 31 };
            lin(f16_le(d) * sc as f32, 0, max, Some(-(f16_le(dmin) * m as f32)))
        }
        GgmlType::Q6K => {
            let b = block_ref::<BlockQ6K>(block);
            let (n, r) = (index / 128, index % 128);
            let sc = b.scales[8 * n + (r % 32) / 16 + 2 * (r / 32)] as i8;
            lin(f16_le(b.d) * sc as f32, 32, 63, None)
        }
        GgmlType::Iq4Nl => ElementGrid::Iq4 { scale: f16_le(block_ref::<BlockIq4Nl>(block).d) },
        GgmlType::Iq4Xs => {
            let b = block_ref::<BlockIq4Xs>(block);
            let ib = index / 32;
            let scales_h = u16::from_le_bytes(b.scales_h);
            let ls =
                ((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) as i32 | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
            ElementGrid::Iq4 { scale: f16_le(b.d) * (ls - 32) as f32 }
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 | GgmlType::Q8_1 | GgmlType::Q8K => {
            unreachable!("rejected by check")
        }
    })
}

/// The code stored for element `index` of `block`.
pub fn element_code(ty: GgmlType, block: &[u8], index: usize) -> Result<u8> {
    check(ty, block, index)?;
    let i = index;
    Ok(match ty {
        GgmlType::Q4_0 | GgmlType::Iq4Nl => (block_ref::<BlockQ4_0>(block).qs[i % 16] >> (4 * (i / 16))) & 0x0F,
        GgmlType::Q4_1 => (block_ref::<BlockQ4_1>(block).qs[i % 16] >> (4 * (i / 16))) & 0x0F,
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (qs, qh) = if ty == GgmlType::Q5_0 {
                let b = block_ref::<BlockQ5_0>(block);
                (b.qs, b.qh)
            } else {
                let b = block_ref::<BlockQ5_1>(block);
                (b.qs, b.qh)
            };
            let low = (qs[i % 16] >> (4 * (i / 16))) & 0x0F;
            low | ((((u32::from_le_bytes(qh) >> i) & 1) as u8) << 4)
        }
        GgmlType::Q8_0 => (block_ref::<BlockQ8_0>(block).qs[i] as i8 as i32 + 128) as u8,
        GgmlType::Q2K | GgmlType::Q3K => {
            let (n, r) = (i / 128, i % 128);
            let (j, half, l) = (r / 32, (r % 32) / 16, r % 16);
            let k = 32 * n + 16 * half + l;
            if ty == GgmlType::Q2K {
                (block_ref::<BlockQ2K>(block).qs[k] >> (2 * j)) & 3
            } else {
                let b = block_ref::<BlockQ3K>(block);
                let lo = (b.qs[k] >> (2 * j)) & 3;
                let hi = (b.hmask[16 * half + l] >> (4 * n + j)) & 1;
                lo | (hi << 2)
            }
        }
        GgmlType::Q4K => {
            let b = block_ref::<BlockQ4K>(block);
            (b.qs[32 * (i / 64) + i % 32] >> (4 * ((i % 64) / 32))) & 0x0F
        }
        GgmlType::Q5K => {
            let b = block_ref::<BlockQ5K>(block);
            let (j, hi, l) = (i / 64, (i % 64) / 32, i % 32);
            let low = (b.qs[32 * j + l] >> (4 * hi)) & 0x0F;
            low | (((b.qh[l] >> (2 * j + hi)) & 1) << 4)
        }
        GgmlType::Q6K => {
            let b = block_ref::<BlockQ6K>(block);
            let (n, r) = (i / 128, i % 128);
            let (quarter, l) = (r / 32, r % 32);
            let low = (b.ql[64 * n + l + 32 * (quarter % 2)] >> (4 * (quarter / 2))) & 0x0F;
            low | (((b.qh[32 * n + l] >> (2 * quarter)) & 3) << 4)
        }
        GgmlType::Iq4Xs => {
            let b = block_ref::<BlockIq4Xs>(block);
            (b.qs[16 * (i / 32) + i % 16] >> (4 * ((i % 32) / 16))) & 0x0F
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 | GgmlType::Q8_1 | GgmlType::Q8K => {
            unreachable!("rejected by check")
        }
    })
}

/// Stores `code` (in the range of [`element_grid`]) for element `index` of `block`.
pub fn set_element_code(ty: GgmlType, block: &mut [u8], index: usize, code: u8) -> Result<()> {
    check(ty, block, index)?;
    let max = match element_grid(ty, block, index)? {
        ElementGrid::Linear { max_code, .. } => max_code,
        ElementGrid::Iq4 { .. } => 15,
    };
    if code > max {
        return Err(FormatError::Invalid(format!("code {code} is outside {}'s 0..={max}", ty.name())));
    }
    let i = index;
    match ty {
        GgmlType::Q4_0 | GgmlType::Iq4Nl => set_nibble(&mut block_mut::<BlockQ4_0>(block).qs[i % 16], i / 16, code),
        GgmlType::Q4_1 => set_nibble(&mut block_mut::<BlockQ4_1>(block).qs[i % 16], i / 16, code),
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let (qs, qh) = if ty == GgmlType::Q5_0 {
                let b = block_mut::<BlockQ5_0>(block);
                (&mut b.qs, &mut b.qh)
            } else {
                let b = block_mut::<BlockQ5_1>(block);
                (&mut b.qs, &mut b.qh)
            };
            set_nibble(&mut qs[i % 16], i / 16, code);
            let h = (u32::from_le_bytes(*qh) & !(1 << i)) | (((code >> 4) as u32 & 1) << i);
            *qh = h.to_le_bytes();
        }
        GgmlType::Q8_0 => block_mut::<BlockQ8_0>(block).qs[i] = (code as i32 - 128) as i8 as u8,
        GgmlType::Q2K | GgmlType::Q3K => {
            let (n, r) = (i / 128, i % 128);
            let (j, half, l) = (r / 32, (r % 32) / 16, r % 16);
            let k = 32 * n + 16 * half + l;
            let qs = if ty == GgmlType::Q2K {
                &mut block_mut::<BlockQ2K>(block).qs
            } else {
                let b = block_mut::<BlockQ3K>(block);
                let bit = 1u8 << (4 * n + j);
                let hm = &mut b.hmask[16 * half + l];
                *hm = if code & 4 != 0 { *hm | bit } else { *hm & !bit };
                &mut b.qs
            };
            qs[k] = (qs[k] & !(3 << (2 * j))) | ((code & 3) << (2 * j));
        }
        GgmlType::Q4K => {
            let b = block_mut::<BlockQ4K>(block);
            set_nibble(&mut b.qs[32 * (i / 64) + i % 32], (i % 64) / 32, code);
        }
        GgmlType::Q5K => {
            let b = block_mut::<BlockQ5K>(block);
            let (j, hi, l) = (i / 64, (i % 64) / 32, i % 32);
            set_nibble(&mut b.qs[32 * j + l], hi, code);
            let bit = 1u8 << (2 * j + hi);
            b.qh[l] = if code & 0x10 != 0 { b.qh[l] | bit } else { b.qh[l] & !bit };
        }
        GgmlType::Q6K => {
            let b = block_mut::<BlockQ6K>(block);
            let (n, r) = (i / 128, i % 128);
            let (quarter, l) = (r / 32, r % 32);
            set_nibble(&mut b.ql[64 * n + l + 32 * (quarter % 2)], quarter / 2, code);
            let shift = 2 * quarter;
            let qh = &mut b.qh[32 * n + l];
            *qh = (*qh & !(3 << shift)) | (((code >> 4) & 3) << shift);
        }
        GgmlType::Iq4Xs => {
            let b = block_mut::<BlockIq4Xs>(block);
            set_nibble(&mut b.qs[16 * (i / 32) + i % 16], (i % 32) / 16, code);
        }
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 | GgmlType::Q8_1 | GgmlType::Q8K => {
            unreachable!("rejected by check")
        }
    }
    Ok(())
}

/// Re-encodes element `index` of `block` to the code nearest `x` under the block's fixed
/// scales and returns the value it now decodes to (bit-exactly what `dequantize` gives).
pub fn requantize_element(ty: GgmlType, block: &mut [u8], index: usize, x: f32) -> Result<f32> {
    if !x.is_finite() {
        return Err(FormatError::NonFinite { index, value: x });
    }
    let grid = element_grid(ty, block, index)?;
    let code = grid.nearest_code(x);
    set_element_code(ty, block, index, code)?;
    Ok(grid.value(code))
}
