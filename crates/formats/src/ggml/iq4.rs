//! The non-linear 4-bit blocks IQ4_NL (32 elements) and IQ4_XS (256 elements).

// Index loops mirror ggml-quants.c line by line, which keeps them auditable against it.
#![allow(clippy::needless_range_loop)]

use super::blocks::*;
use super::search::*;
use super::Decode;

impl Decode for BlockIq4Nl {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = d * KVALUES_IQ4NL[(q & 0x0F) as usize] as f32;
            y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
        }
    }
}

impl Decode for BlockIq4Xs {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let scales_h = u16::from_le_bytes(self.scales_h);
        for ib in 0..8 {
            let ls = ((self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0x0F) as i32
                | ((((scales_h >> (2 * ib)) & 3) as i32) << 4);
            let dl = d * (ls - 32) as f32;
            let qs = &self.qs[16 * ib..16 * ib + 16];
            let out = &mut y[32 * ib..32 * ib + 32];
            for j in 0..16 {
                out[j] = dl * KVALUES_IQ4NL[(qs[j] & 0x0F) as usize] as f32;
                out[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Encoders, mirroring ggml's `quantize_row_iq4_nl_impl` for one super-block of `x.len()`
// values in sub-blocks of 32 (IQ4_NL: one block of 32, IQ4_XS: 256 in 8 sub-blocks).

/// Sub-block scale search of the IQ4 encoders: returns the scale and leaves the codes in `lb`
/// (untouched for an all-zero sub-block, whose scale is 0).
fn iq4_block_scale(xb: &[f32], weight: &[f32; 32], lb: &mut [u8], ntry: i32) -> f32 {
    let values = &KVALUES_IQ4NL;
    let mut amax = 0f32;
    let mut max = 0f32;
    for &v in xb {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let v0 = values[0] as f32;
    let mut d = if ntry > 0 { -max / v0 } else { max / v0 };
    let mut id = 1.0 / d;
    let mut sumqx = 0f32;
    let mut sumq2 = 0f32;
    for j in 0..32 {
        let l = best_index_int8(values, id * xb[j]);
        lb[j] = l as u8;
        let q = values[l] as f32;
        let w = weight[j];
        sumqx += w * q * xb[j];
        sumq2 += w * q * q;
    }
    d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
    let mut best = d * sumqx;
    for itry in -ntry..=ntry {
        id = (itry + values[0] as i32) as f32 / max;
        sumqx = 0.0;
        sumq2 = 0.0;
        for j in 0..32 {
            let l = best_index_int8(values, id * xb[j]);
            let q = values[l] as f32;
            let w = weight[j];
            sumqx += w * q * xb[j];
            sumq2 += w * q * q;
        }
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Weights of the IQ4 searches: x² without importance, qw·sqrt(sigma2 + x²) with it.
fn iq4_weights(xb: &[f32], qw: Option<&[f32]>, sigma2: f32) -> [f32; 32] {
    match qw {
        Some(q) => std::array::from_fn(|j| q[j] * (sigma2 + xb[j] * xb[j]).sqrt()),
        None => std::array::from_fn(|j| xb[j] * xb[j]),
    }
}

fn iq4_sigma2(x: &[f32]) -> f32 {
    let mut s = 0f32;
    for &v in x {
        s += v * v;
    }
    s * (2.0 / x.len() as f32)
}

/// IQ4_NL block as ggml's `quantize_iq4_nl` encodes it (ntry = 7, with or without importance).
/// `l` carries the codes between blocks: ggml reuses one buffer, which matters only for
/// ggml's `_ref` variant (ntry = -1) on all-zero blocks.
fn iq4_nl_block(x: &[f32], qw: Option<&[f32]>, ntry: i32, l: &mut [u8; 32], y: &mut BlockIq4Nl) {
    let sigma2 = iq4_sigma2(x);
    let weight = iq4_weights(x, qw, sigma2);
    let scale = iq4_block_scale(x, &weight, l, ntry);
    y.d = to_f16_le(scale);
    if ntry > 0 {
        let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
        for j in 0..32 {
            l[j] = best_index_int8(&KVALUES_IQ4NL, id * x[j]) as u8;
        }
    }
    for j in 0..16 {
        y.qs[j] = l[j] | (l[16 + j] << 4);
    }
}

fn iq4_xs_block(x: &[f32], qw: Option<&[f32]>, y: &mut BlockIq4Xs) {
    let ntry = 7;
    let sigma2 = iq4_sigma2(x);
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 8];
    let mut max_scale = 0f32;
    let mut amax_scale = 0f32;
    for ib in 0..8 {
        let xb = &x[32 * ib..32 * ib + 32];
        let weight = iq4_weights(xb, qw.map(|q| &q[32 * ib..32 * ib + 32]), sigma2);
        let d = iq4_block_scale(xb, &weight, &mut l[32 * ib..32 * ib + 32], ntry);
        scales[ib] = d;
        if d.abs() > amax_scale {
            amax_scale = d.abs();
            max_scale = d;
        }
    }
    let d = -max_scale / 32.0;
    y.d = to_f16_le(d);
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut scales_h = 0u16;
    y.scales_l = [0; 4];
    for ib in 0..8 {
        let mut ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        for j in 0..32 {
            l[32 * ib + j] = best_index_int8(&KVALUES_IQ4NL, idl * x[32 * ib + j]) as u8;
        }
        ls += 32;
        let (l_l, l_h) = ((ls & 0x0F) as u8, (ls >> 4) as u16);
        if ib % 2 == 0 {
            y.scales_l[ib / 2] = l_l;
        } else {
            y.scales_l[ib / 2] |= l_l << 4;
        }
        scales_h |= l_h << (2 * (ib % 8));
    }
    y.scales_h = scales_h.to_le_bytes();
    for i in 0..8 {
        for j in 0..16 {
            y.qs[16 * i + j] = l[32 * i + j] | (l[32 * i + 16 + j] << 4);
        }
    }
}

/// Encodes one row of IQ4_NL or IQ4_XS blocks as ggml's `quantize_iq4_*` does.
pub(crate) fn quantize_row(ty: super::GgmlType, x: &[f32], importance: Option<&[f32]>, out: &mut [u8]) {
    match ty {
        super::GgmlType::Iq4Nl => {
            let mut l = [0u8; 32];
            for (ib, (xb, y)) in x.chunks_exact(32).zip(as_blocks_mut::<BlockIq4Nl>(out)).enumerate() {
                iq4_nl_block(xb, importance.map(|q| &q[32 * ib..32 * ib + 32]), 7, &mut l, y);
            }
        }
        super::GgmlType::Iq4Xs => {
            for (ib, (xb, y)) in x.chunks_exact(QK_K).zip(as_blocks_mut::<BlockIq4Xs>(out)).enumerate() {
                iq4_xs_block(xb, importance.map(|q| &q[QK_K * ib..QK_K * ib + QK_K]), y);
            }
        }
        _ => unreachable!("iq4::quantize_row called for {}", ty.name()),
    }
}
