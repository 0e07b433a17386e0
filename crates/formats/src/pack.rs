//! Bit packing of element codes: LSB-first, each row starting on a byte boundary.

use crate::element::Code;

/// Bytes one row of `n` codes of `bits` bits occupies.
pub fn row_bytes(n: usize, bits: u32) -> usize {
    (n * bits as usize).div_ceil(8)
}

/// Packs `codes` (each < 2^bits) into `out` (exactly `row_bytes(codes.len(), bits)` bytes).
/// Inlined so it is compiled for the caller's target features (the AVX2 row encoder).
#[inline(always)]
pub fn pack<C: Code>(codes: &[C], bits: u32, out: &mut [u8]) {
    match bits {
        8 => {
            for (o, &c) in out.iter_mut().zip(codes) {
                *o = c.to_u32() as u8;
            }
        }
        4 => {
            let mut pairs = codes.chunks_exact(2);
            for (o, p) in out.iter_mut().zip(&mut pairs) {
                *o = ((p[0].to_u32() & 15) | (p[1].to_u32() << 4)) as u8;
            }
            if let [last] = pairs.remainder() {
                out[codes.len() / 2] = last.to_u32() as u8 & 15;
            }
        }
        16 => {
            for (o, &c) in out.chunks_exact_mut(2).zip(codes) {
                o.copy_from_slice(&(c.to_u32() as u16).to_le_bytes());
            }
        }
        _ => {
            let mask = (1u64 << bits) - 1;
            let mut acc = 0u64;
            let mut nacc = 0u32;
            let mut k = 0;
            for &c in codes {
                acc |= (c.to_u32() as u64 & mask) << nacc;
                nacc += bits;
                while nacc >= 8 {
                    out[k] = acc as u8;
                    k += 1;
                    acc >>= 8;
                    nacc -= 8;
                }
            }
            if nacc > 0 {
                out[k] = acc as u8;
            }
        }
    }
}

/// Unpacks `out.len()` codes of `bits` bits from `src`.
pub fn unpack(src: &[u8], bits: u32, out: &mut [u16]) {
    match bits {
        8 => {
            for (o, &b) in out.iter_mut().zip(src) {
                *o = b as u16;
            }
        }
        4 => {
            let n = out.len();
            let mut pairs = out.chunks_exact_mut(2);
            for (p, &b) in (&mut pairs).zip(src) {
                p[0] = (b & 15) as u16;
                p[1] = (b >> 4) as u16;
            }
            if let [last] = pairs.into_remainder() {
                *last = (src[n / 2] & 15) as u16;
            }
        }
        16 => {
            for (o, b) in out.iter_mut().zip(src.chunks_exact(2)) {
                *o = u16::from_le_bytes([b[0], b[1]]);
            }
        }
        _ => {
            let mask = (1u64 << bits) - 1;
            let b = bits as usize;
            // Eight codes of at most 8 bits fill `bits` whole bytes: read them as one
            // little-endian word while eight bytes remain, then the rest code by code.
            let mut done = 0;
            if bits <= 8 {
                for (k, eight) in out.chunks_exact_mut(8).enumerate() {
                    let Some(w) = src.get(k * b..k * b + 8) else { break };
                    let w = u64::from_le_bytes(w.try_into().expect("eight bytes"));
                    for (i, o) in eight.iter_mut().enumerate() {
                        *o = ((w >> (b * i)) & mask) as u16;
                    }
                    done += 8;
                }
            }
            let mut acc = 0u64;
            let mut nacc = 0u32;
            let mut k = done * b / 8;
            for o in out[done..].iter_mut() {
                while nacc < bits {
                    acc |= (src[k] as u64) << nacc;
                    k += 1;
                    nacc += 8;
                }
                *o = (acc & mask) as u16;
                acc >>= bits;
                nacc -= bits;
            }
        }
    }
}
