//! The k-quants: 256-element super-blocks Q2_K, Q3_K, Q4_K, Q5_K, Q6_K (and Q8_K's decoder).

use super::blocks::*;
use super::Decode;

/// Unpacks the 6-bit (scale, min) pair `j` (0..8) of Q4_K / Q5_K's 12 packed scale bytes.
#[inline(always)]
pub(crate) fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Unpacks Q3_K's 16 6-bit scales (stored biased by 32) from their 12 packed bytes.
pub(crate) fn q3k_scales(packed: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (j, o) in out.iter_mut().enumerate() {
        let low = if j < 8 {
            packed[j] & 0x0F
        } else {
            packed[j - 8] >> 4
        };
        let high = (packed[8 + j % 4] >> (2 * (j / 4))) & 3;
        *o = ((low | (high << 4)) as i32 - 32) as i8;
    }
    out
}

impl Decode for BlockQ2K {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        let mut is = 0;
        for n in 0..2 {
            let q = &self.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0x0F) as f32;
                    let ml = min * (sc >> 4) as f32;
                    let base = 128 * n + 32 * j + 16 * half;
                    for l in 0..16 {
                        y[base + l] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                    }
                }
            }
        }
    }
}

impl Decode for BlockQ3K {
    fn decode(&self, y: &mut [f32]) {
        let d_all = f16_le(self.d);
        let scales = q3k_scales(&self.scales);
        let mut is = 0;
        let mut m: u8 = 1;
        for n in 0..2 {
            let q = &self.qs[32 * n..32 * n + 32];
            for j in 0..4 {
                let shift = 2 * j;
                for half in 0..2 {
                    let dl = d_all * scales[is] as f32;
                    is += 1;
                    let base = 128 * n + 32 * j + 16 * half;
                    for l in 0..16 {
                        let k = l + 16 * half;
                        let lo = ((q[k] >> shift) & 3) as i32;
                        let sub = if self.hmask[k] & m != 0 { 0 } else { 4 };
                        y[base + l] = dl * (lo - sub) as f32;
                    }
                }
                m <<= 1;
            }
        }
    }
}

impl Decode for BlockQ4K {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        for j in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * j, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &self.qs[32 * j..32 * j + 32];
            let out = &mut y[64 * j..64 * j + 64];
            for l in 0..32 {
                out[l] = d1 * (q[l] & 0x0F) as f32 - m1;
                out[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

impl Decode for BlockQ5K {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let min = f16_le(self.dmin);
        for j in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * j, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * j + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let (u1, u2) = (1u8 << (2 * j), 2u8 << (2 * j));
            let q = &self.qs[32 * j..32 * j + 32];
            let out = &mut y[64 * j..64 * j + 64];
            for l in 0..32 {
                let h1 = if self.qh[l] & u1 != 0 { 16 } else { 0 };
                let h2 = if self.qh[l] & u2 != 0 { 16 } else { 0 };
                out[l] = d1 * ((q[l] & 0x0F) + h1) as f32 - m1;
                out[l + 32] = d2 * ((q[l] >> 4) + h2) as f32 - m2;
            }
        }
    }
}

impl Decode for BlockQ6K {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        for n in 0..2 {
            let ql = &self.ql[64 * n..64 * n + 64];
            let qh = &self.qh[32 * n..32 * n + 32];
            let sc = &self.scales[8 * n..8 * n + 8];
            let out = &mut y[128 * n..128 * n + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                // Same association as ggml: (d * scale) * q.
                out[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                out[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                out[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                out[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
            }
        }
    }
}

impl Decode for BlockQ8K {
    fn decode(&self, y: &mut [f32]) {
        let d = f32::from_le_bytes(self.d);
        for (o, &q) in y.iter_mut().zip(self.qs.iter()) {
            *o = d * (q as i8) as f32;
        }
    }
}
