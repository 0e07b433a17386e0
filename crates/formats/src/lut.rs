//! Non-uniform grids given as a sorted table of values: IQ4_NL's table, NUPES-style power
//! grids, and the tables that other families build (NF4, log2, BitMoD).

use crate::element::{Code, ElementCodec};
use crate::{FormatError, Result};

/// IQ4_NL's 16 values (llama.cpp `kvalues_iq4nl`), used as a grid with scale amax / 113.
pub const IQ4_NL_VALUES: [f32; 16] =
    [-127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0];

/// A grid of sorted values; code `i` is the i-th value.
#[derive(Clone, Debug, PartialEq)]
pub struct Lut {
    name: String,
    values: Vec<f32>,
    mids: Vec<f32>,
    bits: u32,
}

impl Lut {
    /// A grid from distinct finite values (sorted here), at most 256 of them.
    pub fn new(name: impl Into<String>, mut values: Vec<f32>) -> Result<Self> {
        let name = name.into();
        if values.is_empty() || values.len() > 256 || values.iter().any(|v| !v.is_finite()) {
            return Err(FormatError::Invalid(format!("grid {name}: needs 1-256 finite values")));
        }
        values.sort_by(|a, b| a.total_cmp(b));
        if values.windows(2).any(|w| w[0] == w[1]) {
            return Err(FormatError::Invalid(format!("grid {name}: values must be distinct")));
        }
        let mids = values.windows(2).map(|w| 0.5 * (w[0] + w[1])).collect();
        let bits = (usize::BITS - (values.len() - 1).leading_zeros()).max(1);
        Ok(Lut { name, values, mids, bits })
    }

    /// The sorted values.
    pub fn values(&self) -> &[f32] {
        &self.values
    }
    /// Name used in spec strings.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The midpoints padded with +∞ (never below a value) to 15, for tables of at most 16
    /// values (the short encoders').
    pub(crate) fn short_mids(&self) -> Option<[f32; SHORT]> {
        let mut mids = [f32::INFINITY; SHORT];
        mids.get_mut(..self.mids.len())?.copy_from_slice(&self.mids);
        Some(mids)
    }
}

/// IQ4_NL's table as a grid (`iq4nl_grid`); the ggml IQ4_NL block format is `iq4_nl`.
pub fn iq4_nl_grid() -> Lut {
    Lut::new("iq4nl_grid", IQ4_NL_VALUES.to_vec()).expect("constant table is valid")
}

/// Power grid in the spirit of NUPES: ±(i / q)^alpha for i = 0..=q, q = 2^(bits-1) - 1, so
/// alpha > 1 puts more levels near zero (where weights concentrate) and alpha = 1 is `int`.
pub fn power_grid(bits: u32, alpha: f32) -> Result<Lut> {
    if !(2..=8).contains(&bits) || !(alpha > 0.0 && alpha <= 8.0) {
        return Err(FormatError::Invalid(format!(
            "power grid pow{bits}:alpha={alpha}: bits must be 2-8 and alpha in (0, 8]"
        )));
    }
    let q = (1i32 << (bits - 1)) - 1;
    let mut v = Vec::with_capacity(2 * q as usize + 1);
    for i in -q..=q {
        let m = (i.abs() as f32 / q as f32).powf(alpha);
        v.push(if i < 0 { -m } else { m });
    }
    let name = if alpha == 1.5 { format!("pow{bits}") } else { format!("pow{bits}:alpha={alpha}") };
    Lut::new(name, v)
}

impl Lut {
    /// Encodes `dst[i] = encode(src[i] * inv_scale + zero)`: the index is the number of
    /// midpoints below the value. A negative value that sits exactly on a midpoint goes to
    /// the smaller magnitude, i.e. counts the midpoint; that is "midpoint < next float up",
    /// so negative values are moved up one ulp and every comparison is one strict `<`. The
    /// loop over midpoints is the outer one so the comparisons vectorise across elements.
    #[inline(always)]
    pub fn encode_slice<C: Code>(&self, src: &[f32], inv_scale: f32, zero: f32, dst: &mut [C]) {
        if self.mids.len() <= SHORT {
            return self.encode_slice_short(src, inv_scale, zero, dst);
        }
        const CHUNK: usize = 64;
        let mut ys = [0f32; CHUNK];
        let mut counts = [0u32; CHUNK];
        for (s, d) in src.chunks(CHUNK).zip(dst.chunks_mut(CHUNK)) {
            let n = s.len();
            let (ys, counts) = (&mut ys[..n], &mut counts[..n]);
            for (y, &x) in ys.iter_mut().zip(s) {
                let v = x * inv_scale + zero;
                // Finite negative v: one ulp towards zero is the next float up.
                *y = if v < 0.0 { f32::from_bits(v.to_bits() - 1) } else { v };
            }
            counts.fill(0);
            for &m in &self.mids {
                for (c, &y) in counts.iter_mut().zip(ys.iter()) {
                    *c += (m < y) as u32;
                }
            }
            for (o, &c) in d.iter_mut().zip(counts.iter()) {
                *o = C::from_u32(c);
            }
        }
    }

    /// [`Lut::encode_slice`] for tables of at most 16 values (NF4, IQ4_NL's grid, 4-bit power
    /// grids): the midpoints padded with +∞ (never below a value) to a fixed count, so the
    /// comparisons unroll inside an element loop that vectorises, each midpoint broadcast
    /// once into a register.
    #[inline(always)]
    fn encode_slice_short<C: Code>(&self, src: &[f32], inv_scale: f32, zero: f32, dst: &mut [C]) {
        let mids = self.short_mids().expect("at most 15 midpoints");
        for (d, &x) in dst.iter_mut().zip(src) {
            let v = x * inv_scale + zero;
            // As in the general loop: a negative value moves one ulp towards zero.
            let y = if v < 0.0 { f32::from_bits(v.to_bits() - 1) } else { v };
            // Counted in f32 lanes (an integer count gets narrowed to the code's width after
            // every comparison); exact, at most 15.
            let mut c = 0f32;
            for m in mids {
                c += if m < y { 1.0 } else { 0.0 };
            }
            // The count's bits after adding 1.5 · 2^23 (a saturating conversion would not
            // vectorise).
            *d = C::from_u32((c + crate::int::MAGIC).to_bits() & 0xff);
        }
    }
}

/// Midpoints of the tables [`Lut::encode_slice_short`] takes.
const SHORT: usize = 15;

impl ElementCodec for Lut {
    fn code_bits(&self) -> u32 {
        self.bits
    }
    fn max_value(&self) -> f32 {
        self.values[self.values.len() - 1]
    }
    fn min_value(&self) -> f32 {
        self.values[0]
    }
    #[inline(always)]
    fn encode(&self, x: f32) -> u16 {
        // Index = number of midpoints below x; at an exact midpoint the value of smaller
        // magnitude wins (a midpoint equal to x counts as "below" only for negative x).
        let neg = x < 0.0;
        let mut i = 0u16;
        for &m in &self.mids {
            i += ((m < x) | (neg & (m == x))) as u16;
        }
        i
    }
    fn encode_sr(&self, x: f32, u: f32) -> u16 {
        let v = &self.values;
        if x <= v[0] {
            return 0;
        }
        if x >= v[v.len() - 1] {
            return (v.len() - 1) as u16;
        }
        let hi = v.partition_point(|&a| a <= x);
        let lo = hi - 1;
        let p = (x - v[lo]) / (v[hi] - v[lo]);
        if u < p {
            hi as u16
        } else {
            lo as u16
        }
    }
    fn decode(&self, code: u16) -> f32 {
        self.values[(code as usize).min(self.values.len() - 1)]
    }
}
