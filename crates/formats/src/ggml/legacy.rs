//! The legacy 32-element blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 (and Q8_1's decoder).

use super::blocks::*;
use super::Decode;

impl Decode for BlockQ4_0 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }
}

impl Decode for BlockQ4_1 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let m = f16_le(self.m);
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = (q & 0x0F) as f32 * d + m;
            y[j + 16] = (q >> 4) as f32 * d + m;
        }
    }
}

impl Decode for BlockQ5_0 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let qh = u32::from_le_bytes(self.qh);
        for (j, &q) in self.qs.iter().enumerate() {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = (((q & 0x0F) | h0) as i32 - 16) as f32 * d;
            y[j + 16] = (((q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

impl Decode for BlockQ5_1 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        let m = f16_le(self.m);
        let qh = u32::from_le_bytes(self.qh);
        for (j, &q) in self.qs.iter().enumerate() {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            y[j] = ((q & 0x0F) | h0) as f32 * d + m;
            y[j + 16] = ((q >> 4) | h1) as f32 * d + m;
        }
    }
}

impl Decode for BlockQ8_0 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        for (o, &q) in y.iter_mut().zip(self.qs.iter()) {
            *o = (q as i8) as f32 * d;
        }
    }
}

impl Decode for BlockQ8_1 {
    fn decode(&self, y: &mut [f32]) {
        let d = f16_le(self.d);
        for (o, &q) in y.iter_mut().zip(self.qs.iter()) {
            *o = (q as i8) as f32 * d;
        }
    }
}
