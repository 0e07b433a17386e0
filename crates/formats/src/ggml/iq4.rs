//! The non-linear 4-bit blocks IQ4_NL (32 elements) and IQ4_XS (256 elements).

use super::blocks::*;
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
