//! ggml block types (llama.cpp's quantized tensor layouts), decoded and encoded
//! byte-identically to llama.cpp 0c1e570's ggml-quants.c.
//!
//! Layout: `blocks` holds the `#[repr(C)]` block structs; `legacy` (Q4_0..Q8_0), `kquants`
//! (Q2_K..Q6_K) and `iq4` (IQ4_NL, IQ4_XS) hold each family's decoder and encoders; `search`
//! the scale searches they share; `element` per-element access under fixed block scales.

use crate::{FormatError, Result};
use rayon::prelude::*;

pub mod blocks;
pub mod element;
pub mod grid;
mod iq4;
mod kquants;
mod legacy;
mod search;

use blocks::*;
pub use element::{element_code, element_grid, requantize_element, set_element_code, ElementGrid};

/// A block that can be decoded to `Block::ELEMS` f32 values, exactly as ggml's
/// `dequantize_row_*` computes them (same f32 operations in the same order).
pub(crate) trait Decode: Block {
    /// Writes the block's values into `y` (length `ELEMS`).
    fn decode(&self, y: &mut [f32]);
}

/// Blocks handled by one rayon task: large enough to amortise scheduling, small enough to
/// balance over cores (4096 elements of the 32-blocks, 32768 of the 256-blocks).
const BLOCKS_PER_TASK: usize = 128;
/// Below this many elements, decoding stays on the calling thread.
const PARALLEL_MIN_ELEMS: usize = 1 << 16;

// Each block struct must match ggml's block size and type size exactly.
macro_rules! check_layout {
    ($($b:ty => $t:expr),* $(,)?) => {
        $(const _: () = assert!(<$b as Block>::BYTES == $t.type_size() && <$b as Block>::ELEMS == $t.block_size());)*
    };
}
check_layout!(
    BlockQ4_0 => GgmlType::Q4_0, BlockQ4_1 => GgmlType::Q4_1, BlockQ5_0 => GgmlType::Q5_0,
    BlockQ5_1 => GgmlType::Q5_1, BlockQ8_0 => GgmlType::Q8_0, BlockQ8_1 => GgmlType::Q8_1,
    BlockQ2K => GgmlType::Q2K, BlockQ3K => GgmlType::Q3K, BlockQ4K => GgmlType::Q4K,
    BlockQ5K => GgmlType::Q5K, BlockQ6K => GgmlType::Q6K, BlockQ8K => GgmlType::Q8K,
    BlockIq4Nl => GgmlType::Iq4Nl, BlockIq4Xs => GgmlType::Iq4Xs,
);

/// Decodes whole blocks of `B`, in parallel over chunks of blocks when the input is large.
fn decode_blocks<B: Decode>(src: &[u8], dst: &mut [f32]) {
    let blocks = as_blocks::<B>(src);
    let run = |(bs, ys): (&[B], &mut [f32])| {
        for (b, y) in bs.iter().zip(ys.chunks_exact_mut(B::ELEMS)) {
            b.decode(y);
        }
    };
    if dst.len() < PARALLEL_MIN_ELEMS {
        run((blocks, dst));
    } else {
        blocks.par_chunks(BLOCKS_PER_TASK).zip(dst.par_chunks_mut(BLOCKS_PER_TASK * B::ELEMS)).for_each(run);
    }
}

/// A ggml tensor type, numbered as in ggml.h's `enum ggml_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    Iq4Nl,
    Iq4Xs,
    Bf16,
}

impl GgmlType {
    /// The type for a ggml type id, if quantsmith knows it.
    pub fn from_id(id: u32) -> Option<Self> {
        use GgmlType::*;
        Some(match id {
            0 => F32,
            1 => F16,
            2 => Q4_0,
            3 => Q4_1,
            6 => Q5_0,
            7 => Q5_1,
            8 => Q8_0,
            9 => Q8_1,
            10 => Q2K,
            11 => Q3K,
            12 => Q4K,
            13 => Q5K,
            14 => Q6K,
            15 => Q8K,
            20 => Iq4Nl,
            23 => Iq4Xs,
            30 => Bf16,
            _ => return None,
        })
    }

    /// ggml's numeric id of this type.
    pub fn id(self) -> u32 {
        use GgmlType::*;
        match self {
            F32 => 0,
            F16 => 1,
            Q4_0 => 2,
            Q4_1 => 3,
            Q5_0 => 6,
            Q5_1 => 7,
            Q8_0 => 8,
            Q8_1 => 9,
            Q2K => 10,
            Q3K => 11,
            Q4K => 12,
            Q5K => 13,
            Q6K => 14,
            Q8K => 15,
            Iq4Nl => 20,
            Iq4Xs => 23,
            Bf16 => 30,
        }
    }

    /// Lower-case name as llama.cpp prints it (`q4_k`, `f32`, ...).
    pub fn name(self) -> &'static str {
        use GgmlType::*;
        match self {
            F32 => "f32",
            F16 => "f16",
            Q4_0 => "q4_0",
            Q4_1 => "q4_1",
            Q5_0 => "q5_0",
            Q5_1 => "q5_1",
            Q8_0 => "q8_0",
            Q8_1 => "q8_1",
            Q2K => "q2_k",
            Q3K => "q3_k",
            Q4K => "q4_k",
            Q5K => "q5_k",
            Q6K => "q6_k",
            Q8K => "q8_k",
            Iq4Nl => "iq4_nl",
            Iq4Xs => "iq4_xs",
            Bf16 => "bf16",
        }
    }

    /// Elements per block.
    pub const fn block_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 | F16 | Bf16 => 1,
            Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q8_1 | Iq4Nl => 32,
            Q2K | Q3K | Q4K | Q5K | Q6K | Q8K | Iq4Xs => 256,
        }
    }

    /// Bytes per block.
    pub const fn type_size(self) -> usize {
        use GgmlType::*;
        match self {
            F32 => 4,
            F16 | Bf16 => 2,
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            Q5_1 => 24,
            Q8_0 => 34,
            Q8_1 => 36,
            Q2K => 84,
            Q3K => 110,
            Q4K => 144,
            Q5K => 176,
            Q6K => 210,
            Q8K => 292,
            Iq4Nl => 18,
            Iq4Xs => 136,
        }
    }

    /// Bytes needed for `n` elements (n must be a multiple of the block size).
    pub fn row_bytes(self, n: usize) -> Result<usize> {
        let bs = self.block_size();
        if n % bs != 0 {
            return Err(FormatError::Invalid(format!(
                "{} elements is not a multiple of {}'s block size {}",
                n,
                self.name(),
                bs
            )));
        }
        Ok(n / bs * self.type_size())
    }
}

/// Dequantizes `src` (whole blocks of type `ty`) into `dst` (`dst.len()` elements).
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let need = ty.row_bytes(dst.len())?;
    if src.len() != need {
        return Err(FormatError::Length { what: format!("{} data", ty.name()), expected: need, got: src.len() });
    }
    use GgmlType::*;
    match ty {
        F32 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        F16 => {
            let run = |(ys, bs): (&mut [f32], &[u8])| {
                for (o, b) in ys.iter_mut().zip(bs.chunks_exact(2)) {
                    *o = f16_le([b[0], b[1]]);
                }
            };
            if dst.len() < PARALLEL_MIN_ELEMS {
                run((dst, src));
            } else {
                dst.par_chunks_mut(1 << 14).zip(src.par_chunks(2 << 14)).for_each(run);
            }
        }
        Bf16 => {
            for (o, b) in dst.iter_mut().zip(src.chunks_exact(2)) {
                // bf16 is the top half of an f32: widening is exact.
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        Q4_0 => decode_blocks::<BlockQ4_0>(src, dst),
        Q4_1 => decode_blocks::<BlockQ4_1>(src, dst),
        Q5_0 => decode_blocks::<BlockQ5_0>(src, dst),
        Q5_1 => decode_blocks::<BlockQ5_1>(src, dst),
        Q8_0 => decode_blocks::<BlockQ8_0>(src, dst),
        Q8_1 => decode_blocks::<BlockQ8_1>(src, dst),
        Q2K => decode_blocks::<BlockQ2K>(src, dst),
        Q3K => decode_blocks::<BlockQ3K>(src, dst),
        Q4K => decode_blocks::<BlockQ4K>(src, dst),
        Q5K => decode_blocks::<BlockQ5K>(src, dst),
        Q6K => decode_blocks::<BlockQ6K>(src, dst),
        Q8K => decode_blocks::<BlockQ8K>(src, dst),
        Iq4Nl => decode_blocks::<BlockIq4Nl>(src, dst),
        Iq4Xs => decode_blocks::<BlockIq4Xs>(src, dst),
    }
    Ok(())
}

/// Encodes one row (or, without importance, any run of whole blocks) of one type.
type RowEncoder = fn(GgmlType, &[f32], Option<&[f32]>, &mut [u8]);

/// Quantizes `src` (whole rows of `n_per_row` elements) into blocks of `ty`, byte-identical
/// to llama.cpp's `quantize_*`: with `importance` (one weight per column, llama.cpp's imatrix
/// meaning) the importance-weighted search, without it what llama.cpp does with no imatrix
/// (the `quantize_row_*_ref` reference for all types except IQ4_NL / IQ4_XS, whose unweighted
/// search uses x² as weights). Q8_0 ignores `importance`, as llama.cpp does.
pub fn quantize(ty: GgmlType, src: &[f32], n_per_row: usize, importance: Option<&[f32]>) -> Result<Vec<u8>> {
    quantize_impl(ty, src, n_per_row, importance, false).map(|(b, _)| b)
}

/// What rounding did to a tensor, summed as it was encoded: Σ w² and Σ (w − ŵ)² (f64, in a
/// fixed order of work units, so the same on every run and thread count).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ErrorSums {
    /// Σ w² over the input.
    pub signal: f64,
    /// Σ (w − ŵ)², ŵ the decoded value.
    pub error: f64,
}

impl ErrorSums {
    /// Signal-to-quantization-noise ratio in dB (infinite when the error is zero).
    pub fn sqnr_db(&self) -> f64 {
        if self.error > 0.0 {
            10.0 * (self.signal / self.error).log10()
        } else {
            f64::INFINITY
        }
    }
}

/// [`quantize`], which also decodes each work unit while it is still in cache and sums the
/// error, instead of a dequantized copy of the whole tensor. Same bytes as [`quantize`].
pub fn quantize_measured(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    importance: Option<&[f32]>,
) -> Result<(Vec<u8>, ErrorSums)> {
    quantize_impl(ty, src, n_per_row, importance, true)
}

/// Error sums of one encoded work unit, decoded into `buf`.
fn unit_error(ty: GgmlType, x: &[f32], y: &[u8], buf: &mut Vec<f32>) -> Result<ErrorSums> {
    buf.resize(x.len(), 0.0);
    dequantize(ty, y, buf)?;
    Ok(ErrorSums::between(x, buf))
}

impl ErrorSums {
    /// Σ x² and Σ (x − x̂)² of `x` and its decoded values: f32 differences (as a dequantized
    /// copy gives), squares summed in f64 in eight lanes (a fixed order, so the same sums on
    /// every run), then the lanes.
    pub fn between(x: &[f32], xhat: &[f32]) -> ErrorSums {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2.
                return unsafe { Self::between_avx2(x, xhat) };
            }
        }
        Self::between_body(x, xhat)
    }

    /// [`ErrorSums::between`] compiled for AVX2: four f64 lanes to an instruction instead of
    /// SSE2's two, the same operations in the same order (no FMA), so the same sums. It was a
    /// tenth of an RTN Q8_0 run (the report's error, summed per work unit).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn between_avx2(x: &[f32], xhat: &[f32]) -> ErrorSums {
        Self::between_body(x, xhat)
    }

    #[inline(always)]
    fn between_body(x: &[f32], xhat: &[f32]) -> ErrorSums {
        let (mut signal, mut error) = (0f64, 0f64);
        let mut sl = [0f64; 8];
        let mut el = [0f64; 8];
        let mut xc = x.chunks_exact(8);
        let mut qc = xhat.chunks_exact(8);
        for (a, b) in (&mut xc).zip(&mut qc) {
            for k in 0..8 {
                let d = (a[k] - b[k]) as f64;
                sl[k] += a[k] as f64 * a[k] as f64;
                el[k] += d * d;
            }
        }
        for (&a, &b) in xc.remainder().iter().zip(qc.remainder()) {
            signal += a as f64 * a as f64;
            error += ((a - b) as f64) * ((a - b) as f64);
        }
        signal += sl.iter().sum::<f64>();
        error += el.iter().sum::<f64>();
        ErrorSums { signal, error }
    }
}

fn quantize_impl(
    ty: GgmlType,
    src: &[f32],
    n_per_row: usize,
    importance: Option<&[f32]>,
    measure: bool,
) -> Result<(Vec<u8>, ErrorSums)> {
    use GgmlType::*;
    let row_bytes = ty.row_bytes(n_per_row)?;
    if n_per_row == 0 {
        return Err(FormatError::Invalid(format!("{}: rows of 0 elements", ty.name())));
    }
    if src.len() % n_per_row != 0 {
        return Err(FormatError::Invalid(format!(
            "{}: {} values are not whole rows of {}",
            ty.name(),
            src.len(),
            n_per_row
        )));
    }
    if let Some(w) = importance {
        if w.len() != n_per_row {
            return Err(FormatError::Length {
                what: format!("{} importance (one per column)", ty.name()),
                expected: n_per_row,
                got: w.len(),
            });
        }
        if let Some(i) = w.iter().position(|v| !v.is_finite()) {
            return Err(FormatError::Invalid(format!(
                "{}: importance value {} at column {} is not finite",
                ty.name(),
                w[i],
                i
            )));
        }
    }
    // The float types are checked here; the block types check each work unit just before
    // encoding it (while it comes into cache), not in a pass of their own over the tensor.
    if matches!(ty, F32 | F16 | Bf16) {
        if let Some(index) = crate::format::first_non_finite(src) {
            return Err(FormatError::NonFinite { index, value: src[index] });
        }
    }
    let nrows = src.len() / n_per_row;
    let mut out = vec![0u8; nrows * row_bytes];
    let float_sums = |out: &[u8]| {
        let mut buf = Vec::new();
        let (x_unit, y_unit) = (1usize << 14, (1usize << 14) * ty.type_size());
        let mut sums = ErrorSums::default();
        if measure {
            for (x, y) in src.chunks(x_unit).zip(out.chunks(y_unit)) {
                let e = unit_error(ty, x, y, &mut buf)?;
                sums.signal += e.signal;
                sums.error += e.error;
            }
        }
        Ok::<_, FormatError>(sums)
    };
    match ty {
        F32 => {
            for (o, v) in out.chunks_exact_mut(4).zip(src) {
                o.copy_from_slice(&v.to_le_bytes());
            }
            let sums = float_sums(&out)?;
            return Ok((out, sums));
        }
        F16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&to_f16_le(v));
            }
            let sums = float_sums(&out)?;
            return Ok((out, sums));
        }
        Bf16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(src) {
                o.copy_from_slice(&half::bf16::from_f32(v).to_bits().to_le_bytes());
            }
            let sums = float_sums(&out)?;
            return Ok((out, sums));
        }
        Q8_1 | Q8K => {
            return Err(FormatError::Invalid(format!(
                "{} is an activation type; quantizing weights to it is not supported",
                ty.name()
            )))
        }
        _ => {}
    }
    let row_fn: RowEncoder = match ty {
        Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 => legacy::quantize_row,
        Q2K | Q3K | Q4K | Q5K | Q6K => kquants::quantize_row,
        Iq4Nl | Iq4Xs => iq4::quantize_row,
        F32 | F16 | Bf16 | Q8_1 | Q8K => unreachable!("handled above"),
    };
    let (bs, ts) = (ty.block_size(), ty.type_size());
    // The weighted legacy encoders use a whole-row statistic, so with importance the unit of
    // work is a row; without it every encoder is block-local and any run of blocks will do.
    let (x_unit, y_unit) = match importance {
        Some(_) => (n_per_row, row_bytes),
        None => {
            let blocks = (1usize << 14) / bs;
            (blocks * bs, blocks * ts)
        }
    };
    // Non-finite input is refused; units are reported in order, so the error names the first
    // such value of the tensor. The vector Q8_0 encoder checks in the pass that encodes; the
    // others are given only finite units.
    let fused_q8_0 = ty == Q8_0 && legacy::q8_0_fused();
    let work = |buf: &mut Vec<f32>, (u, (x, y)): (usize, (&[f32], &mut [u8]))| {
        let non_finite = |x: &[f32]| {
            crate::format::first_non_finite_seq(x)
                .map(|i| FormatError::NonFinite { index: u * x_unit + i, value: x[i] })
        };
        if fused_q8_0 {
            if !legacy::q8_0_row_fused(x, y) {
                return Err(non_finite(x).unwrap_or(FormatError::Invalid("Q8_0: non-finite input".into())));
            }
        } else {
            if let Some(e) = non_finite(x) {
                return Err(e);
            }
            row_fn(ty, x, importance, y);
        }
        if measure {
            unit_error(ty, x, y, buf)
        } else {
            Ok(ErrorSums::default())
        }
    };
    // Per-unit sums, added in unit order: the same total on any thread count.
    let units: Vec<Result<ErrorSums>> = if src.len() < PARALLEL_MIN_ELEMS / 4 {
        let mut buf = Vec::new();
        src.chunks(x_unit).zip(out.chunks_mut(y_unit)).enumerate().map(|u| work(&mut buf, u)).collect()
    } else {
        src.par_chunks(x_unit).zip(out.par_chunks_mut(y_unit)).enumerate().map_init(Vec::new, work).collect()
    };
    let mut sums = ErrorSums::default();
    for u in units {
        let u = u?;
        sums.signal += u.signal;
        sums.error += u.error;
    }
    Ok((out, sums))
}
