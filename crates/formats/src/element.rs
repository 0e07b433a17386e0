//! The element grid: how one scaled number is stored. Each format family implements
//! [`ElementCodec`]; [`Element`] gathers them so a format can hold any of them.

use crate::fixed::Fixed;
use crate::int::IntGrid;
use crate::lut::Lut;
use crate::minifloat::Minifloat;

/// One family of element grids: encode a (pre-scaled) number to a code and back.
pub trait ElementCodec {
    /// Bits of one code.
    fn code_bits(&self) -> u32;
    /// Largest positive value of the grid (absmax scaling maps a group's absmax here).
    fn max_value(&self) -> f32;
    /// Most negative value of the grid.
    fn min_value(&self) -> f32;
    /// Nearest code, saturating at the grid's ends. `x` is finite.
    fn encode(&self, x: f32) -> u16;
    /// Stochastic rounding between the two neighbouring grid values; `u` uniform in [0, 1).
    fn encode_sr(&self, x: f32, u: f32) -> u16;
    /// Value of a code.
    fn decode(&self, code: u16) -> f32;
    /// floor(log2(max_value)): the element's `emax` in the OCP MX scale rule (MXINT8's
    /// two's complement -2 does not count: its emax is 0).
    fn emax(&self) -> i32 {
        ((self.max_value().to_bits() >> 23) as i32) - 127
    }
}

/// Storage of one element code in the encoders' output: `u8` for grids of at most 8 bits
/// (packed bytes are written straight from it, and the lanes are narrower), `u16` otherwise.
pub trait Code: Copy + Default + Send + 'static {
    /// The code from its value (the value fits the type).
    fn from_u32(v: u32) -> Self;
    /// The code's value.
    fn to_u32(self) -> u32;
}

impl Code for u8 {
    #[inline(always)]
    fn from_u32(v: u32) -> Self {
        v as u8
    }
    #[inline(always)]
    fn to_u32(self) -> u32 {
        self as u32
    }
}

impl Code for u16 {
    #[inline(always)]
    fn from_u32(v: u32) -> Self {
        v as u16
    }
    #[inline(always)]
    fn to_u32(self) -> u32 {
        self as u32
    }
}

/// Any element grid quantsmith knows.
#[derive(Clone, Debug, PartialEq)]
pub enum Element {
    /// Integers (signed, unsigned for asymmetric, binary, ternary).
    Int(IntGrid),
    /// Minifloats ExMy (and f16 / bf16).
    Float(Minifloat),
    /// Fixed point Qm.n.
    Fixed(Fixed),
    /// A sorted table of values (NF4, IQ4_NL's grid, log2, power grids, BitMoD grids).
    Lut(Lut),
}

macro_rules! each {
    ($self:ident, $g:ident => $e:expr) => {
        match $self {
            Element::Int($g) => $e,
            Element::Float($g) => $e,
            Element::Fixed($g) => $e,
            Element::Lut($g) => $e,
        }
    };
}

impl Element {
    /// Encodes `dst[i] = code(src[i] * inv_scale + zero)`; one dispatch per slice so the loop
    /// inlines the family's encoder.
    pub fn encode_slice<C: Code>(&self, src: &[f32], inv_scale: f32, zero: f32, dst: &mut [C]) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the function was compiled for.
                return unsafe { self.encode_slice_avx2(src, inv_scale, zero, dst) };
            }
        }
        self.encode_slice_generic(src, inv_scale, zero, dst)
    }

    /// The same loop compiled for AVX2 (8 lanes instead of SSE2's 4).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn encode_slice_avx2<C: Code>(&self, src: &[f32], inv_scale: f32, zero: f32, dst: &mut [C]) {
        self.encode_slice_generic(src, inv_scale, zero, dst)
    }

    /// [`Element::encode_slice`] without the feature dispatch, for callers that dispatch once.
    #[inline(always)]
    pub(crate) fn encode_slice_generic<C: Code>(&self, src: &[f32], inv_scale: f32, zero: f32, dst: &mut [C]) {
        match self {
            Element::Int(g) => g.encode_slice(src, inv_scale, zero, dst),
            Element::Float(f) if zero == 0.0 => f.encode_slice(src, inv_scale, dst),
            Element::Lut(l) => l.encode_slice(src, inv_scale, zero, dst),
            _ => each!(self, g => encode_nearest(g, src, inv_scale, zero, dst)),
        }
    }

    /// As [`Element::encode_slice`] with stochastic rounding; `uniform` yields numbers in [0, 1).
    pub fn encode_slice_sr(
        &self,
        src: &[f32],
        inv_scale: f32,
        zero: f32,
        dst: &mut [u16],
        uniform: &mut impl FnMut() -> f32,
    ) {
        each!(self, g => {
            for (d, &x) in dst.iter_mut().zip(src) {
                *d = g.encode_sr(x * inv_scale + zero, uniform());
            }
        })
    }

    /// Decode table: entry `c` is the value of code `c` (2^code_bits entries).
    pub fn decode_table(&self) -> Vec<f32> {
        let n = 1usize << self.code_bits();
        (0..n).map(|c| self.decode(c as u16)).collect()
    }

    /// Spec-string name of the element.
    pub fn spec_name(&self) -> String {
        match self {
            Element::Int(g) => g.spec_name(),
            Element::Float(f) => f.spec_name(),
            Element::Fixed(f) => f.spec_name(),
            Element::Lut(l) => l.name().to_string(),
        }
    }
}

#[inline(always)]
fn encode_nearest<E: ElementCodec, C: Code>(g: &E, src: &[f32], inv: f32, zero: f32, dst: &mut [C]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = C::from_u32(g.encode(x * inv + zero) as u32);
    }
}

impl ElementCodec for Element {
    fn code_bits(&self) -> u32 {
        each!(self, g => g.code_bits())
    }
    fn max_value(&self) -> f32 {
        each!(self, g => g.max_value())
    }
    fn min_value(&self) -> f32 {
        each!(self, g => g.min_value())
    }
    fn encode(&self, x: f32) -> u16 {
        each!(self, g => g.encode(x))
    }
    fn encode_sr(&self, x: f32, u: f32) -> u16 {
        each!(self, g => g.encode_sr(x, u))
    }
    fn decode(&self, code: u16) -> f32 {
        each!(self, g => g.decode(code))
    }
    fn emax(&self) -> i32 {
        each!(self, g => g.emax())
    }
}
