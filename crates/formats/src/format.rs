//! A quantization format: an element grid plus orthogonal settings (granularity, scale
//! storage, zero point, rounding, clipping, per-group or per-tensor choice among grids), or a
//! ggml block type. Quantizes row-major `[rows, cols]` matrices with groups along the row.

use rayon::prelude::*;

use crate::element::{Element, ElementCodec};
use crate::ggml::{ErrorSums, GgmlType};
use crate::pack;
use crate::scale::{absmax_scale, e8m0_scale, quantize_uint_scales, ScaleStorage};
use crate::{FormatError, Result};

/// Which elements share one scale.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// No scale: the raw element grid (scale 1).
    None,
    /// One scale for the whole tensor.
    Tensor,
    /// One scale per row (output channel).
    Channel,
    /// One scale per group of this many consecutive elements of a row (input dimension).
    Group(usize),
}

/// How a scaled value is rounded to the grid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Rounding {
    /// Nearest (ties to even on uniform grids).
    Nearest,
    /// Stochastic rounding, reproducible from the seed (independent of thread count).
    Stochastic { seed: u64 },
}

/// How a group's scale is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Clip {
    /// Absmax (or min/max for asymmetric): nothing saturates.
    None,
    /// Search over clip ratios for the least (importance-weighted) squared error.
    Mse,
}

/// Where a choice among several candidate grids is made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Choice {
    /// Each group picks its grid (BitMoD); the index is stored per group.
    PerGroup,
    /// The whole tensor picks one grid (LLM-FP4's exponent/mantissa search).
    PerTensor,
}

/// The clip ratios `clip=mse` tries: 1.00, 0.99, ..., 0.30.
pub const CLIP_RATIOS: usize = 71;

/// A complete number format. Build one with [`Format::parse`].
#[derive(Clone, Debug, PartialEq)]
pub struct Format {
    /// Candidate element grids; more than one means a per-group or per-tensor choice.
    pub elements: Vec<Element>,
    /// Where the choice among `elements` is made (ignored for one element).
    pub choice: Choice,
    /// Scale sharing.
    pub granularity: Granularity,
    /// Scale storage.
    pub scale: ScaleStorage,
    /// Asymmetric: an integer zero point per scale group (unsigned integer grids).
    pub asym: bool,
    /// Rounding of elements.
    pub rounding: Rounding,
    /// Scale choice.
    pub clip: Clip,
    /// A ggml block type: when set, everything above is ignored.
    pub ggml: Option<GgmlType>,
    /// The preset name this format started from (`mxfp4`, `nvfp4`, `nf4`, ...), for naming.
    pub preset: Option<String>,
    /// Whether the spec named a granularity or scale setting (a bare element otherwise).
    pub explicit_scaling: bool,
}

/// The parameters of one scale group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    /// Scale (as stored, decoded to f32); 0 for an all-zero group.
    pub scale: f32,
    /// Zero point in grid units (0 for symmetric formats).
    pub zero: f32,
    /// Index into [`Format::elements`].
    pub choice: u8,
}

/// A quantized matrix.
#[derive(Clone, Debug, PartialEq)]
pub struct Quantized {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// Bits per element code.
    pub code_bits: u32,
    /// Element codes, bit-packed LSB-first, each row `row_bytes` long.
    pub codes: Vec<u8>,
    /// Bytes per row in `codes`.
    pub row_bytes: usize,
    /// Per scale group, in row-major group order: the scale as stored (decoded).
    pub scales: Vec<f32>,
    /// Per scale group: zero point (asymmetric formats), else empty.
    pub zeros: Vec<f32>,
    /// Per scale group (per-group choice) or one entry (per-tensor choice): the grid index.
    pub choices: Vec<u8>,
    /// Second-level scales of integer scale storage, per super block of groups.
    pub super_scales: Vec<f32>,
    /// Per-tensor second-level scale (E4M3 scale storage), else 1.
    pub tensor_scale: f32,
    /// ggml blocks, for ggml formats (everything above is then empty).
    pub ggml: Vec<u8>,
}

impl Quantized {
    /// A `[rows, cols]` matrix held as ggml blocks.
    fn of_ggml(rows: usize, cols: usize, ggml: Vec<u8>) -> Quantized {
        Quantized {
            rows,
            cols,
            code_bits: 0,
            codes: Vec::new(),
            row_bytes: 0,
            scales: Vec::new(),
            zeros: Vec::new(),
            choices: Vec::new(),
            super_scales: Vec::new(),
            tensor_scale: 1.0,
            ggml,
        }
    }
}

impl Format {
    /// Parses a spec string such as `int4:g128:asym` (grammar: [`crate::spec::GRAMMAR`]).
    pub fn parse(spec: &str) -> Result<Format> {
        crate::spec::parse(spec)
    }

    /// A format from one element with the given settings and defaults elsewhere.
    pub fn from_element(element: Element, granularity: Granularity, scale: ScaleStorage) -> Format {
        Format {
            elements: vec![element],
            choice: Choice::PerGroup,
            granularity,
            scale,
            asym: false,
            rounding: Rounding::Nearest,
            clip: Clip::None,
            ggml: None,
            preset: None,
            explicit_scaling: true,
        }
    }

    /// The canonical spec string (parses back to an equal format).
    pub fn spec(&self) -> String {
        crate::spec::to_spec(self)
    }

    /// One-line description for `formats list`.
    pub fn describe(&self) -> String {
        crate::spec::describe(self)
    }

    /// The same format without scaling (the raw element grid, scale 1) when the spec was a
    /// bare element such as `fp8_e4m3` or `int8`; unchanged otherwise (block formats keep
    /// their blocks). This is what `formats roundtrip` shows.
    pub fn raw_if_bare(&self) -> Format {
        let mut f = self.clone();
        if !f.explicit_scaling && f.preset.is_none() && f.ggml.is_none() && f.elements.len() == 1 && !f.asym {
            f.granularity = Granularity::None;
        }
        f
    }

    /// Bits of one element code.
    pub fn code_bits(&self) -> u32 {
        self.elements.iter().map(|e| e.code_bits()).max().unwrap_or(0)
    }

    fn choice_bits(&self) -> u32 {
        if self.elements.len() <= 1 {
            0
        } else {
            usize::BITS - (self.elements.len() - 1).leading_zeros()
        }
    }

    /// Number of elements sharing one scale in a row of `cols` (`cols` itself for per-channel,
    /// per-tensor and unscaled formats). Fails when a group size does not divide the row.
    pub fn group_len(&self, cols: usize) -> Result<usize> {
        if let Some(t) = self.ggml {
            let bs = t.block_size();
            if cols % bs != 0 {
                return Err(FormatError::Invalid(format!(
                    "{}: rows of {cols} elements are not a multiple of the block size {bs}",
                    t.name()
                )));
            }
            return Ok(bs);
        }
        match self.granularity {
            Granularity::Group(g) => {
                if g == 0 || cols % g != 0 {
                    Err(FormatError::Invalid(format!(
                        "group size {g} does not divide the row length {cols} (use a group size that divides it, or `ch`)"
                    )))
                } else {
                    Ok(g)
                }
            }
            _ => Ok(cols.max(1)),
        }
    }

    /// Bits of per-group metadata (scale, zero point, grid choice).
    fn group_meta_bits(&self) -> u64 {
        if self.granularity == Granularity::None {
            return 0;
        }
        let mut b = self.scale.bits() as u64;
        if self.asym {
            b += self.code_bits() as u64;
        }
        if self.choice == Choice::PerGroup {
            b += self.choice_bits() as u64;
        }
        b
    }

    /// Bits of per-tensor metadata (E4M3's f32 second-level scale, a per-tensor choice, and
    /// per-tensor scale and zero point).
    pub fn tensor_bits(&self) -> u64 {
        if self.ggml.is_some() {
            return 0;
        }
        let mut b = 0;
        if self.scale == ScaleStorage::E4m3 && self.granularity != Granularity::None {
            b += 32;
        }
        if self.choice == Choice::PerTensor && self.elements.len() > 1 {
            b += 8;
        }
        if self.granularity == Granularity::Tensor {
            b += self.group_meta_bits();
        }
        b
    }

    /// Exact bits one row of `cols` elements takes (codes padded to whole bytes, scales, zero
    /// points, choices, second-level scales), excluding per-tensor metadata.
    pub fn row_bits(&self, cols: usize) -> Result<u64> {
        let g = self.group_len(cols)?;
        if let Some(t) = self.ggml {
            return Ok(t.row_bytes(cols)? as u64 * 8);
        }
        let mut b = pack::row_bytes(cols, self.code_bits()) as u64 * 8;
        let groups = match self.granularity {
            Granularity::None | Granularity::Tensor => 0,
            Granularity::Channel => 1,
            Granularity::Group(_) => cols / g,
        } as u64;
        b += groups * self.group_meta_bits();
        if let ScaleStorage::UInt { super_groups, .. } = self.scale {
            b += groups.div_ceil(super_groups as u64) * 32;
        }
        Ok(b)
    }

    /// Exact storage of a `[rows, cols]` matrix in bits, all metadata included.
    pub fn storage_bits(&self, rows: usize, cols: usize) -> Result<u64> {
        Ok(rows as u64 * self.row_bits(cols)? + self.tensor_bits())
    }

    /// Bits per weight for rows of `cols` elements, metadata included (per-tensor metadata,
    /// at most a few dozen bits per tensor, is left out: see [`Format::storage_bits`]).
    pub fn bits_per_weight(&self, cols: usize) -> Result<f64> {
        Ok(self.row_bits(cols)? as f64 / cols as f64)
    }

    /// Shape and importance checks; non-finite values are found by [`check_finite`] (the grid
    /// path fuses that scan into its row loop, saving a pass over memory).
    fn check_input(&self, data: &[f32], rows: usize, cols: usize, importance: Option<&[f32]>) -> Result<()> {
        if data.len() != rows * cols {
            return Err(FormatError::Length {
                what: format!("{rows}x{cols} matrix"),
                expected: rows * cols,
                got: data.len(),
            });
        }
        if let Some(imp) = importance {
            if imp.len() != cols {
                return Err(FormatError::Length {
                    what: "importance (one per column)".into(),
                    expected: cols,
                    got: imp.len(),
                });
            }
            if let Some((i, &v)) = imp.iter().enumerate().find(|(_, v)| !(v.is_finite() && **v >= 0.0)) {
                return Err(FormatError::Invalid(format!("importance[{i}] = {v}: must be finite and non-negative")));
            }
        }
        Ok(())
    }

    /// The per-tensor second-level scale for `data` (1 unless scales are stored as E4M3).
    pub fn tensor_scale(&self, data: &[f32]) -> f32 {
        if self.scale != ScaleStorage::E4m3 || self.granularity == Granularity::None {
            return 1.0;
        }
        // The magnitudes' maximum (one group spanning the chunk); a chunk with NaN or
        // infinities takes min_max's NaN-skipping range instead (quantize then refuses it).
        let amax = data
            .par_chunks(1 << 16)
            .map(|c| {
                let mut a = [0.0];
                if group_absmax(c, c.len(), &mut a) {
                    return a[0];
                }
                let (lo, hi) = min_max(c);
                hi.max(-lo)
            })
            .reduce(|| 0.0, f32::max);
        let emax = self.elements.iter().map(|e| e.max_value()).fold(0.0f32, f32::max);
        self.scale.tensor_scale(amax, emax)
    }

    /// Parameters of one group (not for ggml formats, which choose their own): scale (rounded to its storage), zero point and grid choice,
    /// minimising the (importance-weighted) squared error when clipping or a choice is
    /// involved. `importance` is per element of `w`. Integer scale storage is applied later
    /// per super block, so here the scale is the ideal one.
    #[inline(always)]
    pub fn group_params(&self, w: &[f32], importance: Option<&[f32]>, tensor_scale: f32) -> GroupParams {
        let (mn, mx) = min_max(w);
        self.group_params_in(w, mn, mx, importance, tensor_scale)
    }

    /// [`Format::group_params`] given the group's (min(w, 0), max(w, 0)).
    #[inline(always)]
    fn group_params_in(
        &self,
        w: &[f32],
        mn: f32,
        mx: f32,
        importance: Option<&[f32]>,
        tensor_scale: f32,
    ) -> GroupParams {
        if self.elements.is_empty() {
            return GroupParams { scale: 0.0, zero: 0.0, choice: 0 };
        }
        let per_group_choice = self.elements.len() > 1 && self.choice == Choice::PerGroup;
        let candidates: &[Element] = if per_group_choice { &self.elements } else { &self.elements[..1] };
        let search = self.clip == Clip::Mse;
        let mut best = GroupParams { scale: 0.0, zero: 0.0, choice: 0 };
        let mut best_err = f64::INFINITY;
        for (ci, e) in candidates.iter().enumerate() {
            let n_ratios = if search { CLIP_RATIOS } else { 1 };
            for k in 0..n_ratios {
                let r = 1.0 - 0.01 * k as f32;
                let p = self.params_at(e, ci as u8, mn * r, mx * r, tensor_scale);
                if n_ratios == 1 && candidates.len() == 1 {
                    return p;
                }
                let err = group_error(e, w, importance, &p);
                if err < best_err {
                    best_err = err;
                    best = p;
                }
            }
        }
        best
    }

    /// Every group's parameters from its range alone, when that is all they depend on: one
    /// symmetric grid, absmax scales (no clip search, so no importance). The same arithmetic
    /// as [`Format::params_at`], with the grid's constants read once and the storage chosen
    /// once per row rather than per group. Returns false (and leaves `sc` alone) otherwise.
    #[inline(always)]
    fn absmax_params(&self, lo: &[f32], hi: &[f32], ts: f32, sc: &mut Vec<f32>) -> bool {
        if self.elements.len() != 1 || self.clip == Clip::Mse || self.asym {
            return false;
        }
        let e = &self.elements[0];
        let (up, down) = (e.max_value(), e.min_value());
        // absmax_scale(e, max, -min)
        let ideal = |l: f32, h: f32| {
            let u = if up > 0.0 { h / up } else { 0.0 };
            let d = if down < 0.0 { -l / -down } else { u };
            u.max(d)
        };
        // Scales into a flat buffer first: loops of f32 arithmetic that vectorise (written as
        // loops over slices, not `extend`, so that they are compiled inline, for AVX2).
        sc.clear();
        sc.resize(lo.len(), 0.0);
        let groups = sc.iter_mut().zip(lo.iter().zip(hi));
        match self.scale {
            ScaleStorage::E8m0 => {
                let emax = e.emax();
                for (s, (&l, &h)) in groups {
                    *s = e8m0_scale(h.max(-l), emax);
                }
            }
            ScaleStorage::E4m3 => {
                for (s, (&l, &h)) in groups {
                    let v = ideal(l, h);
                    *s = if v <= 0.0 { 0.0 } else { crate::scale::e4m3_round(v, ts) };
                }
            }
            ScaleStorage::F32 | ScaleStorage::UInt { .. } => {
                for (s, (&l, &h)) in groups {
                    let v = ideal(l, h);
                    *s = if v <= 0.0 { 0.0 } else { v };
                }
            }
            storage => {
                for (s, (&l, &h)) in groups {
                    *s = storage.round(ideal(l, h), ts);
                }
            }
        }
        true
    }

    /// Whether every group's scale is a function of its largest magnitude alone: one grid, no
    /// zero points, absmax scales (no clip search), and either E8M0 scales (the MX rule) or a
    /// grid symmetric about zero, where [`Format::absmax_params`]'s max(hi / top, -lo /
    /// -bottom) is max(hi, -lo) / top.
    #[inline(always)]
    fn absmax_only(&self) -> bool {
        let [e] = &self.elements[..] else { return false };
        !self.asym && self.clip != Clip::Mse && (self.scale == ScaleStorage::E8m0 || e.min_value() == -e.max_value())
    }

    /// [`Format::absmax_params`] for asymmetric formats: every group's scale and zero point
    /// from its range alone (one grid, no clip search), with [`Format::params_at`]'s
    /// arithmetic in one loop over the row's groups. Returns false (and leaves `sc` and `zp`
    /// alone) otherwise.
    #[inline(always)]
    fn asym_params(&self, lo: &[f32], hi: &[f32], ts: f32, sc: &mut Vec<f32>, zp: &mut Vec<f32>) -> bool {
        if self.elements.len() != 1 || self.clip == Clip::Mse || !self.asym {
            return false;
        }
        let qmax = self.elements[0].max_value();
        sc.clear();
        sc.resize(lo.len(), 0.0);
        zp.clear();
        zp.resize(lo.len(), 0.0);
        let storage = self.scale;
        let plain = matches!(storage, ScaleStorage::F32 | ScaleStorage::UInt { .. });
        for ((s, z), (&l, &h)) in sc.iter_mut().zip(zp.iter_mut()).zip(lo.iter().zip(hi)) {
            let v = (h - l) / qmax;
            // ScaleStorage::round: non-positive scales are 0, F32 (and UInt, rounded per
            // super block later) keep the value.
            let sv = if plain {
                if v <= 0.0 {
                    0.0
                } else {
                    v
                }
            } else {
                storage.round(v, ts)
            };
            *s = sv;
            *z = if sv > 0.0 { (-l / sv).round_ties_even().clamp(0.0, qmax) } else { 0.0 };
        }
        true
    }

    #[inline(always)]
    fn params_at(&self, e: &Element, choice: u8, mn: f32, mx: f32, ts: f32) -> GroupParams {
        if self.asym {
            let qmax = e.max_value();
            let s = self.scale.round((mx - mn) / qmax, ts);
            let zero = if s > 0.0 { (-mn / s).round_ties_even().clamp(0.0, qmax) } else { 0.0 };
            return GroupParams { scale: s, zero, choice };
        }
        let s = if self.scale == ScaleStorage::E8m0 {
            e8m0_scale(mx.max(-mn), e.emax())
        } else {
            self.scale.round(absmax_scale(e, mx, -mn), ts)
        };
        GroupParams { scale: s, zero: 0.0, choice }
    }

    /// Code of `x` in a group with parameters `p` (nearest rounding, saturating).
    pub fn encode_value(&self, x: f32, p: &GroupParams) -> u16 {
        let inv = if p.scale > 0.0 { 1.0 / p.scale } else { 0.0 };
        self.elements.get(p.choice as usize).map_or(0, |e| e.encode(x * inv + p.zero))
    }

    /// Value of a code in a group with parameters `p`.
    pub fn decode_value(&self, code: u16, p: &GroupParams) -> f32 {
        self.elements.get(p.choice as usize).map_or(0.0, |e| (e.decode(code) - p.zero) * p.scale)
    }

    /// Quantize-dequantize of one value given its group's parameters (GPTQ's inner step).
    pub fn quantize_value(&self, x: f32, p: &GroupParams) -> f32 {
        self.decode_value(self.encode_value(x, p), p)
    }

    /// Quantizes a row-major `[rows, cols]` matrix. `importance` (one non-negative weight per
    /// column, e.g. an imatrix) weights the error that clipping and choices minimise.
    /// Non-finite input is an error naming its index.
    pub fn quantize(&self, data: &[f32], rows: usize, cols: usize, importance: Option<&[f32]>) -> Result<Quantized> {
        if rows == 0 || cols == 0 {
            return Err(FormatError::Invalid(format!("cannot quantize an empty {rows}x{cols} matrix")));
        }
        self.check_input(data, rows, cols, importance)?;
        self.group_len(cols)?;
        if let Some(t) = self.ggml {
            // ggml::quantize rejects non-finite input itself.
            return Ok(Quantized::of_ggml(rows, cols, crate::ggml::quantize(t, data, cols, importance)?));
        }
        if self.elements.len() > 1 && self.choice == Choice::PerTensor {
            return self.quantize_choosing_tensor(data, rows, cols, importance);
        }
        Ok(self.quantize_grid(data, rows, cols, importance, false)?.0)
    }

    /// [`Format::quantize`], and what rounding did: Σ w² and Σ (w − ŵ)² (ŵ the decoded
    /// values), each row decoded and summed as soon as it is encoded, while it is in cache,
    /// instead of a dequantized copy of the whole matrix. The same codes and parameters as
    /// [`Format::quantize`]; the sums are summed per row in f64 and then over the rows in
    /// order, so they are the same on every run and thread count.
    pub fn quantize_measured(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<(Quantized, ErrorSums)> {
        if let Some(t) = self.ggml {
            if rows == 0 || cols == 0 {
                return Err(FormatError::Invalid(format!("cannot quantize an empty {rows}x{cols} matrix")));
            }
            self.check_input(data, rows, cols, importance)?;
            let (bytes, sums) = crate::ggml::quantize_measured(t, data, cols, importance)?;
            return Ok((Quantized::of_ggml(rows, cols, bytes), sums));
        }
        if rows == 0 || cols == 0 || self.elements.len() > 1 && self.choice == Choice::PerTensor {
            // Each grid is tried whole; the chosen one is decoded afterwards.
            let q = self.quantize(data, rows, cols, importance)?;
            let sums = ErrorSums::between(data, &self.dequantize(&q)?);
            return Ok((q, sums));
        }
        self.check_input(data, rows, cols, importance)?;
        self.group_len(cols)?;
        self.quantize_grid(data, rows, cols, importance, true)
    }

    fn quantize_choosing_tensor(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Quantized> {
        let mut best: Option<(f64, Quantized)> = None;
        for (i, e) in self.elements.iter().enumerate() {
            let mut single = self.clone();
            single.elements = vec![e.clone()];
            let mut q = single.quantize_grid(data, rows, cols, importance, false)?.0;
            let deq = single.dequantize(&q)?;
            let err = weighted_sq_error(data, &deq, cols, importance);
            if best.as_ref().map_or(true, |(b, _)| err < *b) {
                q.choices = vec![i as u8];
                best = Some((err, q));
            }
        }
        best.map(|(_, q)| q).ok_or_else(|| FormatError::Invalid("format has no element grid".into()))
    }

    /// The codes of a format of one grid or of grids chosen per group; with `measure`, also
    /// the error sums of [`Format::quantize_measured`] (zero otherwise).
    fn quantize_grid(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
        measure: bool,
    ) -> Result<(Quantized, ErrorSums)> {
        let g = self.group_len(cols)?;
        let bits = self.code_bits();
        let row_bytes = pack::row_bytes(cols, bits);
        let ts = self.tensor_scale(data);
        let gran = self.granularity;
        // Per-tensor scale: one group spanning the matrix (importance repeated per row).
        let tensor_params = if gran == Granularity::Tensor {
            let imp = importance.map(|imp| imp.iter().cycle().take(data.len()).copied().collect::<Vec<f32>>());
            Some(self.group_params(data, imp.as_deref(), ts))
        } else {
            None
        };
        let groups_per_row = match gran {
            Granularity::None | Granularity::Tensor => 0,
            Granularity::Channel => 1,
            Granularity::Group(_) => cols / g,
        };
        let n_codes = rows * row_bytes;
        let mut codes: Vec<u8> = Vec::with_capacity(n_codes);
        let per_group_choice = self.elements.len() > 1 && self.choice == Choice::PerGroup;
        let seed = match self.rounding {
            Rounding::Stochastic { seed } => Some(seed),
            Rounding::Nearest => None,
        };
        // Each row writes its codes and group parameters in place and returns its
        // second-level scales; rows are independent, so they run in parallel. Every row gets
        // at least one slot of each (a row without groups, or a format without zero points
        // or choices, gets one that is dropped afterwards). The outputs are allocated
        // without a serial zeroing pass: each row's task zeroes its own part (in cache, in
        // parallel) before filling it.
        let slots = groups_per_row.max(1);
        let zslots = if self.asym { slots } else { 1 };
        let cslots = if per_group_choice { slots } else { 1 };
        let (n_scales, n_zeros, n_choices) = (rows * slots, rows * zslots, rows * cslots);
        let mut scales: Vec<f32> = Vec::with_capacity(n_scales);
        let mut zeros: Vec<f32> = Vec::with_capacity(n_zeros);
        let mut choices: Vec<u8> = Vec::with_capacity(n_choices);
        let parts = codes.spare_capacity_mut()[..n_codes].par_chunks_mut(row_bytes).zip(
            scales.spare_capacity_mut()[..n_scales]
                .par_chunks_mut(slots)
                .zip(zeros.spare_capacity_mut()[..n_zeros].par_chunks_mut(zslots))
                .zip(choices.spare_capacity_mut()[..n_choices].par_chunks_mut(cslots)),
        );
        // Measured rows are decoded at once, so their codes had better stay in cache.
        let stream = n_codes >= STREAM_BYTES && !measure;
        let decoder = measure.then(|| RowDecoder::new(self, cols, g, 0));
        let metas: Vec<(Vec<f32>, bool, ErrorSums)> = data
            .par_chunks(cols)
            .zip(parts)
            .enumerate()
            .map_init(RowBufs::default, |buf: &mut RowBufs, (r, (row, (codes, ((scales, zeros), choices))))| {
                // The codes stay uninitialised here: the packed encoder writes every byte of
                // its rows, and the other paths zero theirs first.
                let (scales, zeros, choices) = (zeroed(scales), zeroed(zeros), zeroed(choices));
                let next = data.get((r + 1) * cols..(r + 2) * cols);
                let ctx = RowCtx {
                    cols,
                    g,
                    gran,
                    tensor_params,
                    ts,
                    importance,
                    seed,
                    bits,
                    groups_per_row,
                    per_group_choice,
                    next,
                    stream,
                };
                let out =
                    RowOut { codes: &mut *codes, scales: &mut *scales, zeros: &mut *zeros, choices: &mut *choices };
                let (supers, finite) = self.encode_row_dispatch(&ctx, r, row, out, buf);
                let mut sums = ErrorSums::default();
                if let (Some(dec), true) = (&decoder, finite) {
                    // SAFETY: a row that was finite had its codes written whole (the packed
                    // encoder writes every byte; the other paths zero then fill them).
                    let codes = unsafe { &*(codes as *const [std::mem::MaybeUninit<u8>] as *const [u8]) };
                    let (sc, zp, ch): (&[f32], &[f32], &[u8]) = match (tensor_params.as_ref(), groups_per_row) {
                        (Some(p), _) => (
                            std::slice::from_ref(&p.scale),
                            std::slice::from_ref(&p.zero),
                            std::slice::from_ref(&p.choice),
                        ),
                        // No scales (nor zero points); the row's one choice slot, as encoded.
                        (None, 0) => (&[], &[], choices),
                        (None, _) => (scales, zeros, choices),
                    };
                    buf.dec.resize(cols, 0.0);
                    dec.row(codes, sc, zp, ch, &mut buf.dec, &mut buf.b16);
                    sums = ErrorSums::between(row, &buf.dec);
                }
                (supers, finite, sums)
            })
            .collect();
        // SAFETY: the row tasks together initialised the first n_* elements of each vector
        // (codes written whole by the packed encoder or zeroed then filled, the rest zeroed
        // then filled): its chunks cover them exactly, and every chunk went to one task.
        unsafe {
            codes.set_len(n_codes);
            scales.set_len(n_scales);
            zeros.set_len(n_zeros);
            choices.set_len(n_choices);
        }
        if metas.iter().any(|m| !m.1) {
            check_finite(data)?;
        }
        let mut sums = ErrorSums::default();
        for m in &metas {
            sums.signal += m.2.signal;
            sums.error += m.2.error;
        }
        let supers: Vec<f32> = metas.into_iter().flat_map(|m| m.0).collect();
        if let Some(p) = tensor_params {
            scales = vec![p.scale];
            zeros = vec![p.zero];
            choices = vec![p.choice];
        } else if groups_per_row == 0 {
            // No scales and no zero points; one grid choice for the matrix (every row took the
            // first grid), as dequantize expects.
            scales.clear();
            zeros.clear();
            choices.truncate(1);
        }
        if !self.asym {
            zeros = Vec::new();
        }
        if !per_group_choice {
            choices = Vec::new();
        }
        let q = Quantized {
            rows,
            cols,
            code_bits: bits,
            codes,
            row_bytes,
            scales,
            zeros,
            choices,
            super_scales: supers,
            tensor_scale: ts,
            ggml: Vec::new(),
        };
        Ok((q, sums))
    }

    /// One row: group parameters, element codes (packed into `out`), second-level scales.
    /// Feature detection happens once per row; the body is compiled for AVX2 and baseline.
    fn encode_row_dispatch(
        &self,
        ctx: &RowCtx,
        r: usize,
        row: &[f32],
        out: RowOut,
        buf: &mut RowBufs,
    ) -> (Vec<f32>, bool) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU has the features the function was compiled for.
                return unsafe { self.encode_row_avx2(ctx, r, row, out, buf) };
            }
        }
        self.encode_row(ctx, r, row, out, buf)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn encode_row_avx2(
        &self,
        ctx: &RowCtx,
        r: usize,
        row: &[f32],
        out: RowOut,
        buf: &mut RowBufs,
    ) -> (Vec<f32>, bool) {
        self.encode_row(ctx, r, row, out, buf)
    }

    #[inline(always)]
    fn encode_row(&self, ctx: &RowCtx, r: usize, row: &[f32], out: RowOut, buf: &mut RowBufs) -> (Vec<f32>, bool) {
        let RowCtx { cols, g, gran, tensor_params, ts, importance, seed, bits, groups_per_row, next, stream, .. } =
            *ctx;
        let mut supers = Vec::new();
        // The row's group parameters, flat: scales, zero points, grid choices. Non-finite
        // input is checked in the pass that reads each group for its range. `uniform`: known
        // to be one grid without zero points.
        let mut uniform = false;
        buf.sc.clear();
        buf.zp.clear();
        buf.ch.clear();
        match gran {
            Granularity::None | Granularity::Tensor => {
                if !min_max_finite(row).2 {
                    zeroed(out.codes);
                    return (Vec::new(), false);
                }
                let none = GroupParams { scale: 1.0, zero: 0.0, choice: 0 };
                let p = if gran == Granularity::Tensor { tensor_params.unwrap_or(none) } else { none };
                buf.sc.push(p.scale);
                buf.zp.push(p.zero);
                buf.ch.push(p.choice);
            }
            _ => {
                // Every group's range first (eight groups at a time), then the parameters.
                // Formats whose scale depends on the largest magnitude alone need only that:
                // (lo, hi) = (-amax, amax) gives them the same scales.
                let n = row.len() / g;
                buf.lo.resize(n, 0.0);
                buf.hi.resize(n, 0.0);
                let finite = if self.absmax_only() {
                    let ok = group_absmax(row, g, &mut buf.hi);
                    for (l, &h) in buf.lo.iter_mut().zip(&buf.hi) {
                        *l = -h;
                    }
                    ok
                } else {
                    group_ranges(row, g, &mut buf.lo, &mut buf.hi)
                };
                if !finite {
                    zeroed(out.codes);
                    return (Vec::new(), false);
                }
                if self.absmax_params(&buf.lo, &buf.hi, ts, &mut buf.sc) {
                    buf.zp.resize(n, 0.0);
                    buf.ch.resize(n, 0);
                    uniform = true;
                } else if self.asym_params(&buf.lo, &buf.hi, ts, &mut buf.sc, &mut buf.zp) {
                    buf.ch.resize(n, 0);
                } else {
                    for (k, grp) in row.chunks_exact(g).enumerate() {
                        let imp = importance.map(|imp| &imp[k * g..(k + 1) * g]);
                        let p = self.group_params_in(grp, buf.lo[k], buf.hi[k], imp, ts);
                        buf.sc.push(p.scale);
                        buf.zp.push(p.zero);
                        buf.ch.push(p.choice);
                    }
                }
                if let ScaleStorage::UInt { bits, super_groups } = self.scale {
                    supers = quantize_uint_scales(&mut buf.sc, bits, super_groups);
                }
            }
        }
        let glen = if buf.sc.len() == 1 { cols } else { g };
        let one_grid = uniform || buf.ch.iter().all(|&c| c == buf.ch[0]);
        // 1/scale of each group (0 for an all-zero group).
        buf.inv.clear();
        buf.inv.extend(buf.sc.iter().map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 }));
        match seed {
            // Codes of at most 8 bits go through bytes: 8-bit codes are written straight into
            // the output row, narrower ones packed from a byte buffer.
            None if bits <= 8 => 'enc: {
                let e = &self.elements[buf.ch[0] as usize];
                #[cfg(target_arch = "x86_64")]
                if one_grid
                    && glen.is_multiple_of(8)
                    && std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                {
                    // The usual grids, packed as they are encoded.
                    let zero_points = !uniform && buf.zp.iter().any(|&z| z != 0.0);
                    if let Some(k) = crate::simd::Kernel::of(e, bits, zero_points) {
                        // Groups of 8 · 2^s values index their entries by shifting; others
                        // are spread to one entry per eight values.
                        let (inv, zp, shift) = if (glen / 8).is_power_of_two() {
                            (&buf.inv[..], &buf.zp[..], (glen / 8).trailing_zeros())
                        } else {
                            crate::simd::per_vector(&buf.inv, glen, cols, &mut buf.inv8);
                            if zero_points {
                                crate::simd::per_vector(&buf.zp, glen, cols, &mut buf.zp8);
                            }
                            (&buf.inv8[..], &buf.zp8[..], 0)
                        };
                        let factors = crate::simd::Factors { inv, zero: zero_points.then_some(zp), shift, stream };
                        // SAFETY: the CPU has AVX2 and FMA (checked above), and AVX-512 F, BW,
                        // DQ and VL where `has_avx512` says so.
                        unsafe {
                            if crate::simd::has_avx512() {
                                crate::simd::encode_packed_avx512(&k, row, &factors, bits, out.codes, next);
                            } else {
                                crate::simd::encode_packed_avx2(&k, row, &factors, bits, out.codes, next);
                            }
                        }
                        break 'enc;
                    }
                }
                // (A loop, not a closure: closures are not compiled with the caller's AVX2.)
                let direct = bits == 8;
                let out_codes = zeroed(out.codes);
                if !direct {
                    buf.b8.resize(cols, 0);
                }
                let codes: &mut [u8] = if direct { &mut *out_codes } else { &mut buf.b8[..] };
                // The encoding works from cache; meanwhile the next row is prefetched piece by
                // piece, so its first (range) pass does not wait on memory.
                const PIECE: usize = 256;
                let mut at = 0;
                if glen < PIECE && one_grid {
                    // Short groups: scale the row group by group first, then encode it in one
                    // long loop (a group of 16 or 32 is too short for the vectorised loop of an
                    // element encoder, which would run its scalar remainder). x · inv, plus the
                    // zero point when there is one, is the value the encoder would compute; it
                    // then multiplies by one and adds zero, which changes nothing but -0's sign
                    // as it did before.
                    buf.ys.resize(cols, 0.0);
                    prescale(row, glen, &buf.inv, &buf.zp, &mut buf.ys);
                    for (s, d) in buf.ys.chunks(PIECE).zip(codes.chunks_mut(PIECE)) {
                        e.encode_slice_generic(s, 1.0, 0.0, d);
                        prefetch(next, at, s.len());
                        at += s.len();
                    }
                } else {
                    let groups = row.chunks(glen).zip(codes.chunks_mut(glen));
                    for ((src, dst), ((&inv, &zero), &choice)) in groups.zip(buf.inv.iter().zip(&buf.zp).zip(&buf.ch)) {
                        let e = &self.elements[choice as usize];
                        for (s, d) in src.chunks(PIECE).zip(dst.chunks_mut(PIECE)) {
                            e.encode_slice_generic(s, inv, zero, d);
                            prefetch(next, at, s.len());
                            at += s.len();
                        }
                    }
                }
                if !direct {
                    pack::pack(&buf.b8, bits, out_codes);
                }
            }
            _ => {
                let mut rng = seed.map(|s| SplitMix::new(s, r as u64));
                buf.b16.resize(cols, 0);
                let groups = row.chunks(glen).zip(buf.b16.chunks_mut(glen));
                for ((src, dst), ((&inv, &zero), &choice)) in groups.zip(buf.inv.iter().zip(&buf.zp).zip(&buf.ch)) {
                    let e = &self.elements[choice as usize];
                    match rng.as_mut() {
                        None => e.encode_slice_generic(src, inv, zero, dst),
                        Some(rng) => e.encode_slice_sr(src, inv, zero, dst, &mut || rng.uniform()),
                    }
                }
                pack::pack(&buf.b16, bits, zeroed(out.codes));
            }
        }
        if groups_per_row > 0 {
            out.scales.copy_from_slice(&buf.sc);
            if self.asym {
                out.zeros.copy_from_slice(&buf.zp);
            }
            if ctx.per_group_choice {
                out.choices.copy_from_slice(&buf.ch);
            }
        }
        (supers, true)
    }

    /// Dequantizes into a new row-major matrix.
    pub fn dequantize(&self, q: &Quantized) -> Result<Vec<f32>> {
        let mut out = vec![0f32; q.rows * q.cols];
        self.dequantize_into(q, &mut out)?;
        Ok(out)
    }

    /// Dequantizes into `out` (`rows * cols` values).
    pub fn dequantize_into(&self, q: &Quantized, out: &mut [f32]) -> Result<()> {
        let (rows, cols) = (q.rows, q.cols);
        if out.len() != rows * cols {
            return Err(FormatError::Length {
                what: "dequantize output".into(),
                expected: rows * cols,
                got: out.len(),
            });
        }
        if let Some(t) = self.ggml {
            return crate::ggml::dequantize(t, &q.ggml, out);
        }
        let g = self.group_len(cols)?;
        let bits = self.code_bits();
        if q.code_bits != bits || q.codes.len() != rows * q.row_bytes || q.row_bytes != pack::row_bytes(cols, bits) {
            return Err(FormatError::Invalid(format!("quantized data does not match format {}", self.spec())));
        }
        let n_tables = self.elements.len();
        let fixed_choice =
            if self.choice == Choice::PerTensor { q.choices.first().copied().unwrap_or(0) } else { 0 } as usize;
        let gran = self.granularity;
        let groups_per_row = match gran {
            Granularity::None | Granularity::Tensor => 0,
            Granularity::Channel => 1,
            Granularity::Group(_) => cols / g,
        };
        let expected_scales = match gran {
            Granularity::None => 0,
            Granularity::Tensor => 1,
            _ => rows * groups_per_row,
        };
        if q.scales.len() != expected_scales
            || (self.asym && q.zeros.len() != expected_scales)
            || fixed_choice >= n_tables
            || q.choices.iter().any(|&c| c as usize >= n_tables)
        {
            return Err(FormatError::Invalid(format!("quantized metadata does not match format {}", self.spec())));
        }
        let per_group_choice = self.elements.len() > 1 && self.choice == Choice::PerGroup;
        let needed_choices = match gran {
            Granularity::None | Granularity::Tensor => 1,
            _ => expected_scales,
        };
        if per_group_choice && q.choices.len() != needed_choices {
            return Err(FormatError::Invalid(format!(
                "{} grid choices for format {} ({needed_choices} expected)",
                q.choices.len(),
                self.spec()
            )));
        }
        let dec = RowDecoder::new(self, cols, g, fixed_choice);
        out.par_chunks_mut(cols.max(1)).enumerate().for_each_init(Vec::new, |buf: &mut Vec<u16>, (r, orow)| {
            let codes = &q.codes[r * q.row_bytes..(r + 1) * q.row_bytes];
            let (sc, zp, ch) = match gran {
                Granularity::None => (&[][..], &[][..], &q.choices[..]),
                Granularity::Tensor => (&q.scales[..], &q.zeros[..], &q.choices[..]),
                _ => {
                    let at = r * groups_per_row..(r + 1) * groups_per_row;
                    let ch = if per_group_choice { &q.choices[at.clone()] } else { &[][..] };
                    (&q.scales[at.clone()], if self.asym { &q.zeros[at] } else { &[][..] }, ch)
                }
            };
            dec.row(codes, sc, zp, ch, orow, buf);
        });
        Ok(())
    }

    /// Quantizes then dequantizes a `[rows, cols]` matrix.
    pub fn fake_quantize(
        &self,
        data: &[f32],
        rows: usize,
        cols: usize,
        importance: Option<&[f32]>,
    ) -> Result<Vec<f32>> {
        let q = self.quantize(data, rows, cols, importance)?;
        self.dequantize(&q)
    }

    /// Quantizes one row (a 1 x n matrix).
    pub fn quantize_row(&self, row: &[f32], importance: Option<&[f32]>) -> Result<Quantized> {
        self.quantize(row, 1, row.len(), importance)
    }

    /// Quantizes then dequantizes one row.
    pub fn fake_quantize_row(&self, row: &[f32], importance: Option<&[f32]>) -> Result<Vec<f32>> {
        self.fake_quantize(row, 1, row.len(), importance)
    }

    /// What `formats roundtrip` prints: one row of any length, grouped from its start (the
    /// last group may be short: it is padded with zeros, which every grid holds exactly, so
    /// padding changes no scale and no error). A raw minifloat grid (bare `fp8_e4m3`) casts
    /// as the format does, overflow to inf/NaN and NaN/inf passed through; everything else
    /// saturates and rejects non-finite input.
    pub fn roundtrip(&self, values: &[f32]) -> Result<Vec<f32>> {
        if self.granularity == Granularity::None && self.ggml.is_none() && self.elements.len() == 1 {
            if let Element::Float(f) = &self.elements[0] {
                return Ok(values.iter().map(|&x| f.decode_code(f.cast(x))).collect());
            }
        }
        let n = values.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        let unit = if let Some(t) = self.ggml {
            t.block_size()
        } else {
            match self.granularity {
                Granularity::Group(g) => g,
                _ => 1,
            }
        };
        let padded = n.div_ceil(unit) * unit;
        let mut row = values.to_vec();
        row.resize(padded, 0.0);
        let mut out = self.fake_quantize_row(&row, None)?;
        out.truncate(n);
        Ok(out)
    }
}

/// The first non-finite value of `data`, as an error.
fn check_finite(data: &[f32]) -> Result<()> {
    match first_non_finite(data) {
        Some(i) => Err(FormatError::NonFinite { index: i, value: data[i] }),
        None => Ok(()),
    }
}

/// Index of the first NaN or infinity in `data`, if any. The common all-finite case is a
/// vectorised scan in parallel chunks; only a chunk that fails is searched element by element.
pub fn first_non_finite(data: &[f32]) -> Option<usize> {
    const CHUNK: usize = 1 << 16;
    let all_finite = |c: &[f32]| c.iter().fold(true, |ok, v| ok & v.is_finite());
    let c = if data.len() <= CHUNK {
        (!all_finite(data)).then_some(0)
    } else {
        data.par_chunks(CHUNK).position_first(|c| !all_finite(c))
    }?;
    let start = c * CHUNK;
    data[start..].iter().position(|v| !v.is_finite()).map(|i| start + i)
}

/// [`first_non_finite`] on one thread, for a slice a caller already works on in parallel:
/// a vectorised check of 64 values at a time, the position searched only in a failing run.
pub fn first_non_finite_seq(data: &[f32]) -> Option<usize> {
    let all_finite = |c: &[f32]| c.iter().fold(true, |ok, v| ok & v.is_finite());
    let c = data.chunks(64).position(|c| !all_finite(c))?;
    data[c * 64..].iter().position(|v| !v.is_finite()).map(|i| c * 64 + i)
}

/// Elements per scale group in a row.
fn glen_of(gran: Granularity, cols: usize, g: usize) -> usize {
    match gran {
        Granularity::None | Granularity::Tensor => cols,
        _ => g,
    }
}

/// Decodes rows of a grid format's codes: [`Format::dequantize_into`]'s body, which the
/// measured encoder also runs on each row as soon as it is encoded.
struct RowDecoder {
    tables: Vec<Vec<f32>>,
    /// The tables padded to 256 entries, for codes of at most 8 bits.
    small: Vec<[f32; 256]>,
    gran: Granularity,
    cols: usize,
    glen: usize,
    bits: u32,
    asym: bool,
    per_group_choice: bool,
    /// The grid of every group when it is not chosen per group.
    fixed_choice: usize,
}

impl RowDecoder {
    fn new(f: &Format, cols: usize, g: usize, fixed_choice: usize) -> RowDecoder {
        let tables: Vec<Vec<f32>> = f.elements.iter().map(|e| e.decode_table()).collect();
        let bits = f.code_bits();
        let small = if bits <= 8 {
            tables
                .iter()
                .map(|t| {
                    let mut a = [0f32; 256];
                    a[..t.len()].copy_from_slice(t);
                    a
                })
                .collect()
        } else {
            Vec::new()
        };
        RowDecoder {
            tables,
            small,
            gran: f.granularity,
            cols,
            glen: glen_of(f.granularity, cols, g),
            bits,
            asym: f.asym,
            per_group_choice: f.elements.len() > 1 && f.choice == Choice::PerGroup,
            fixed_choice,
        }
    }

    /// One row's values into `orow` from its packed `codes` and its groups' parameters: `sc`
    /// the scales (per-tensor granularity: the tensor's one; none: unused), `zp` the zero
    /// points (read only by asymmetric formats), `ch` the grid choices (read only when chosen
    /// per group). The caller has checked that codes and parameters match the format.
    #[inline]
    fn row(&self, codes: &[u8], sc: &[f32], zp: &[f32], ch: &[u8], orow: &mut [f32], buf: &mut Vec<u16>) {
        let (bits, glen) = (self.bits, self.glen);
        // 4- and 8-bit codes are read straight from the packed bytes through 256-entry tables
        // (a u8 index needs no bounds check); other widths are unpacked first.
        let direct = (bits == 4 && glen % 2 == 0) || bits == 8;
        if !direct {
            buf.resize(self.cols, 0);
            pack::unpack(codes, bits, buf);
        }
        for (k, dst) in orow.chunks_mut(glen).enumerate() {
            let (s, z) = match self.gran {
                Granularity::None => (1.0, 0.0),
                _ => (sc[k], if self.asym { zp[k] } else { 0.0 }),
            };
            let ti = if self.per_group_choice { ch[k] as usize } else { self.fixed_choice };
            if let Some(t) = self.small.get(ti) {
                if bits == 4 && direct {
                    let bytes = &codes[k * glen / 2..(k + 1) * glen / 2];
                    for (d, &b) in dst.chunks_exact_mut(2).zip(bytes) {
                        d[0] = (t[(b & 15) as usize] - z) * s;
                        d[1] = (t[(b >> 4) as usize] - z) * s;
                    }
                } else if bits == 8 {
                    let bytes = &codes[k * glen..(k + 1) * glen];
                    for (d, &b) in dst.iter_mut().zip(bytes) {
                        *d = (t[b as usize] - z) * s;
                    }
                } else {
                    for (d, &c) in dst.iter_mut().zip(&buf[k * glen..(k + 1) * glen]) {
                        *d = (t[(c & 0xff) as usize] - z) * s;
                    }
                }
            } else {
                let t = &self.tables[ti];
                for (d, &c) in dst.iter_mut().zip(&buf[k * glen..(k + 1) * glen]) {
                    *d = (t[c as usize] - z) * s;
                }
            }
        }
    }
}

/// Per-thread scratch of the row encoder: codes before packing.
#[derive(Default)]
struct RowBufs {
    b8: Vec<u8>,
    /// A measured row's decoded values.
    dec: Vec<f32>,
    b16: Vec<u16>,
    ys: Vec<f32>,
    /// Each group's (min(w, 0), max(w, 0)).
    lo: Vec<f32>,
    hi: Vec<f32>,
    /// Each group's scale, its inverse (0 for a zero scale), zero point and grid choice.
    sc: Vec<f32>,
    inv: Vec<f32>,
    zp: Vec<f32>,
    ch: Vec<u8>,
    /// Scale inverses and zero points per eight values (the packed encoder's).
    inv8: Vec<f32>,
    zp8: Vec<f32>,
}

/// `ys = x · inv (+ zero)` group by group: the scaled values the element encoders take.
#[inline(always)]
fn prescale(row: &[f32], glen: usize, inv: &[f32], zero: &[f32], ys: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if glen.is_multiple_of(8) && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { prescale_avx2(row, glen, inv, zero, ys) };
        }
    }
    prescale_generic(row, glen, inv, zero, ys)
}

/// [`prescale`] for groups of a multiple of eight: one vector multiply (and add) per eight
/// values, whatever the group length.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn prescale_avx2(row: &[f32], glen: usize, inv: &[f32], zero: &[f32], ys: &mut [f32]) {
    use std::arch::x86_64::*;
    for ((src, dst), (&i, &z)) in row.chunks_exact(glen).zip(ys.chunks_exact_mut(glen)).zip(inv.iter().zip(zero)) {
        let inv = _mm256_set1_ps(i);
        let zero = _mm256_set1_ps(z);
        let with_zero = z != 0.0;
        for (s8, d8) in src.chunks_exact(8).zip(dst.chunks_exact_mut(8)) {
            // SAFETY: both chunks hold eight floats. Multiply then add, as the scalar form
            // rounds (no fused multiply-add).
            let mut y = _mm256_mul_ps(_mm256_loadu_ps(s8.as_ptr()), inv);
            if with_zero {
                y = _mm256_add_ps(y, zero);
            }
            _mm256_storeu_ps(d8.as_mut_ptr(), y);
        }
    }
}

#[inline(always)]
fn prescale_generic(row: &[f32], glen: usize, inv: &[f32], zero: &[f32], ys: &mut [f32]) {
    for ((src, dst), (&inv, &zero)) in row.chunks(glen).zip(ys.chunks_mut(glen)).zip(inv.iter().zip(zero)) {
        if zero != 0.0 {
            for (y, &x) in dst.iter_mut().zip(src) {
                *y = x * inv + zero;
            }
        } else {
            for (y, &x) in dst.iter_mut().zip(src) {
                *y = x * inv;
            }
        }
    }
}

/// Codes of at least this many bytes are written with streaming stores: an output this large
/// leaves the caches before it is read again, and ordinary stores would first read every line
/// they fill (int8 codes of a 4096 × 4096 matrix encode 1.09× faster streamed on a 2-core
/// EPYC; 4-bit codes, half the bytes, gain nothing measurable, and lose nothing).
const STREAM_BYTES: usize = 8 << 20;

/// Zeroes `c` and returns it as initialised.
fn zeroed<T: Copy + Default>(c: &mut [std::mem::MaybeUninit<T>]) -> &mut [T] {
    for x in c.iter_mut() {
        x.write(T::default());
    }
    // SAFETY: every element was just written; MaybeUninit<T> has T's layout.
    unsafe { &mut *(c as *mut [std::mem::MaybeUninit<T>] as *mut [T]) }
}

/// Per-row constants of [`Format::quantize`].
#[derive(Clone, Copy)]
struct RowCtx<'a> {
    cols: usize,
    g: usize,
    gran: Granularity,
    tensor_params: Option<GroupParams>,
    ts: f32,
    importance: Option<&'a [f32]>,
    seed: Option<u64>,
    bits: u32,
    groups_per_row: usize,
    /// Whether each group chooses its grid (choices are stored per group).
    per_group_choice: bool,
    /// The row after this one, if any (prefetched while this one is encoded).
    next: Option<&'a [f32]>,
    /// Write the codes past the caches (see [`STREAM_BYTES`]).
    stream: bool,
}

/// One row's share of [`Format::quantize`]'s outputs.
struct RowOut<'a> {
    /// Packed codes, uninitialised: the packed encoder writes all of them, other paths zero
    /// them before packing into them.
    codes: &'a mut [std::mem::MaybeUninit<u8>],
    /// Group scales, zero points and choices (one slot each when the row has no groups).
    scales: &'a mut [f32],
    zeros: &'a mut [f32],
    choices: &'a mut [u8],
}

/// Asks for the cache lines of `v[at..at + len]` (a hint; no effect off x86-64).
#[inline(always)]
fn prefetch(v: Option<&[f32]>, at: usize, len: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(v) = v {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        let end = (at + len).min(v.len());
        let mut i = at;
        while i < end {
            // SAFETY: i < v.len(); prefetching never faults.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(v.as_ptr().add(i) as *const i8) };
            i += 16;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (v, at, len);
}

/// (min(w, 0), max(w, 0)); NaN values are skipped.
#[inline(always)]
pub fn min_max(w: &[f32]) -> (f32, f32) {
    let (lo, hi, _) = min_max_finite(w);
    (lo, hi)
}

/// (min(w, 0), max(w, 0), every value finite) in one pass: the encoders' first look at a
/// group. NaN and infinities leave min and max meaningless; callers check the flag first.
#[inline(always)]
pub fn min_max_finite(w: &[f32]) -> (f32, f32, bool) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { min_max_finite_avx2(w) };
        }
    }
    // Eight independent lanes so the loop vectorises.
    let mut lo = [0f32; 8];
    let mut hi = [0f32; 8];
    let mut mag = [0u32; 8];
    let mut chunks = w.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            lo[i] = if c[i] < lo[i] { c[i] } else { lo[i] };
            hi[i] = if c[i] > hi[i] { c[i] } else { hi[i] };
            mag[i] = mag[i].max(c[i].to_bits() & 0x7fff_ffff);
        }
    }
    for &v in chunks.remainder() {
        lo[0] = if v < lo[0] { v } else { lo[0] };
        hi[0] = if v > hi[0] { v } else { hi[0] };
        mag[0] = mag[0].max(v.to_bits() & 0x7fff_ffff);
    }
    let lo = lo.iter().fold(0f32, |a, &b| a.min(b));
    let hi = hi.iter().fold(0f32, |a, &b| a.max(b));
    (lo, hi, mag.iter().all(|&m| m < 0x7f80_0000))
}

/// [`min_max_finite`] with two independent accumulators of eight lanes each (one would be
/// bound by the latency of min/max), finiteness from the largest magnitude's bits (an
/// unsigned compare: at least the infinity pattern means infinite or NaN).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn min_max_finite_avx2(w: &[f32]) -> (f32, f32, bool) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let (mut lo0, mut lo1, mut hi0, mut hi1) = (z, z, z, z);
    let (mut m0, mut m1) = (_mm256_setzero_si256(), _mm256_setzero_si256());
    let abs = _mm256_set1_epi32(0x7fff_ffff);
    let mut chunks = w.chunks_exact(16);
    for c in &mut chunks {
        // SAFETY: c holds 16 floats.
        let a = _mm256_loadu_ps(c.as_ptr());
        let b = _mm256_loadu_ps(c.as_ptr().add(8));
        // min_ps(x, acc) keeps acc when x is NaN; the magnitude lanes catch it.
        lo0 = _mm256_min_ps(a, lo0);
        lo1 = _mm256_min_ps(b, lo1);
        hi0 = _mm256_max_ps(a, hi0);
        hi1 = _mm256_max_ps(b, hi1);
        m0 = _mm256_max_epu32(m0, _mm256_and_si256(_mm256_castps_si256(a), abs));
        m1 = _mm256_max_epu32(m1, _mm256_and_si256(_mm256_castps_si256(b), abs));
    }
    // Horizontal reductions by halving (groups of 16 or 32 make these a visible share).
    let lo = _mm256_min_ps(lo0, lo1);
    let hi = _mm256_max_ps(hi0, hi1);
    let mg = _mm256_max_epu32(m0, m1);
    let lo = _mm_min_ps(_mm256_castps256_ps128(lo), _mm256_extractf128_ps(lo, 1));
    let hi = _mm_max_ps(_mm256_castps256_ps128(hi), _mm256_extractf128_ps(hi, 1));
    let mg = _mm_max_epu32(_mm256_castsi256_si128(mg), _mm256_extracti128_si256(mg, 1));
    let lo = _mm_min_ps(lo, _mm_movehl_ps(lo, lo));
    let hi = _mm_max_ps(hi, _mm_movehl_ps(hi, hi));
    let mg = _mm_max_epu32(mg, _mm_unpackhi_epi64(mg, mg));
    let lo = _mm_min_ss(lo, _mm_shuffle_ps(lo, lo, 1));
    let hi = _mm_max_ss(hi, _mm_shuffle_ps(hi, hi, 1));
    let mg = _mm_max_epu32(mg, _mm_shuffle_epi32(mg, 1));
    let (mut l, mut h, mut m) = (_mm_cvtss_f32(lo), _mm_cvtss_f32(hi), _mm_cvtsi128_si32(mg) as u32);
    for &x in chunks.remainder() {
        l = if x < l { x } else { l };
        h = if x > h { x } else { h };
        m = m.max(x.to_bits() & 0x7fff_ffff);
    }
    (l, h, m < 0x7f80_0000)
}

/// Each `g`-long group's (min(w, 0), max(w, 0)) of `row` into `lo` and `hi` (as
/// [`min_max_finite`] gives them), and whether every value is finite.
#[inline(always)]
fn group_ranges(row: &[f32], g: usize, lo: &mut [f32], hi: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if g.is_multiple_of(8) && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { group_ranges_avx2(row, g, lo, hi) };
        }
    }
    let mut finite = true;
    for ((grp, l), h) in row.chunks_exact(g).zip(lo.iter_mut()).zip(hi.iter_mut()) {
        let (mn, mx, ok) = min_max_finite(grp);
        (*l, *h) = (mn, mx);
        finite &= ok;
    }
    finite
}

/// [`group_ranges`] for groups of a multiple of eight. Eight groups at a time: each keeps an
/// eight-lane minimum and maximum, and the eight are then reduced together by a transpose
/// (three rounds of shuffles for eight results, where reducing each group alone would take
/// three rounds per group). Finiteness is one row-wide magnitude maximum. `min_ps(x, acc)`
/// keeps `acc` when they are equal, so -0 never replaces the starting +0, as in
/// [`min_max_finite`]; with that, minima and maxima do not depend on the order of reduction.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn group_ranges_avx2(row: &[f32], g: usize, lo: &mut [f32], hi: &mut [f32]) -> bool {
    use std::arch::x86_64::*;
    /// Lane i of the result: the minimum (`max` false) or maximum of `v[i]`'s eight lanes.
    #[inline(always)]
    unsafe fn reduce8(v: &[__m256; 8], max: bool) -> __m256 {
        let op = |a: __m256, b: __m256| if max { _mm256_max_ps(a, b) } else { _mm256_min_ps(a, b) };
        // Per 128-bit half: pairs interleaved, then quads, then the halves folded.
        let p = |a: __m256, b: __m256| op(_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
        let (t01, t23, t45, t67) = (p(v[0], v[1]), p(v[2], v[3]), p(v[4], v[5]), p(v[6], v[7]));
        let q = |a: __m256, b: __m256| {
            op(_mm256_shuffle_ps::<0b01_00_01_00>(a, b), _mm256_shuffle_ps::<0b11_10_11_10>(a, b))
        };
        let (u0, u1) = (q(t01, t23), q(t45, t67));
        op(_mm256_permute2f128_ps::<0x20>(u0, u1), _mm256_permute2f128_ps::<0x31>(u0, u1))
    }
    let n = row.len() / g;
    let abs = _mm256_set1_epi32(0x7fff_ffff);
    let mut mag = _mm256_setzero_si256();
    let z = _mm256_setzero_ps();
    let mut k = 0;
    while k + 8 <= n {
        let mut l = [z; 8];
        let mut h = [z; 8];
        for j in 0..8 {
            let grp = &row[(k + j) * g..(k + j + 1) * g];
            for c in grp.chunks_exact(8) {
                // SAFETY: c holds eight floats.
                let x = _mm256_loadu_ps(c.as_ptr());
                l[j] = _mm256_min_ps(x, l[j]);
                h[j] = _mm256_max_ps(x, h[j]);
                mag = _mm256_max_epu32(mag, _mm256_and_si256(_mm256_castps_si256(x), abs));
            }
        }
        // SAFETY: k + 8 <= n = lo.len() = hi.len().
        _mm256_storeu_ps(lo.as_mut_ptr().add(k), reduce8(&l, false));
        _mm256_storeu_ps(hi.as_mut_ptr().add(k), reduce8(&h, true));
        k += 8;
    }
    let mut m = [0u32; 8];
    _mm256_storeu_si256(m.as_mut_ptr().cast(), mag);
    let mut finite = m.iter().all(|&m| m < 0x7f80_0000);
    while k < n {
        let (mn, mx, ok) = min_max_finite_avx2(&row[k * g..(k + 1) * g]);
        (lo[k], hi[k]) = (mn, mx);
        finite &= ok;
        k += 1;
    }
    finite
}

/// Each `g`-long group's largest magnitude of `row` into `amax` (+0 for a group of zeros), and
/// whether every value is finite: [`group_ranges`] for formats that need only max(hi, -lo).
#[inline(always)]
fn group_absmax(row: &[f32], g: usize, amax: &mut [f32]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if g.is_multiple_of(8) && std::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { group_absmax_avx2(row, g, amax) };
        }
    }
    let mut finite = true;
    for (grp, a) in row.chunks_exact(g).zip(amax.iter_mut()) {
        let (mn, mx, ok) = min_max_finite(grp);
        *a = if -mn > mx { -mn } else { mx };
        finite &= ok;
    }
    finite
}

/// [`group_absmax`] for groups of a multiple of eight: the magnitudes' bits (sign cleared)
/// ordered as unsigned integers, which orders finite values as floats and puts infinities and
/// NaN above them all. Groups of up to 256 values go eight at a time, reduced together by a
/// transpose as in [`group_ranges_avx2`]; longer ones one at a time with four accumulators.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn group_absmax_avx2(row: &[f32], g: usize, amax: &mut [f32]) -> bool {
    use std::arch::x86_64::*;
    let n = row.len() / g;
    let abs = _mm256_set1_epi32(0x7fff_ffff);
    let zi = _mm256_setzero_si256();
    // SAFETY (every call below): `p` points at eight floats of a chunk of eight or more.
    let mag = |p: *const f32| _mm256_and_si256(_mm256_castps_si256(_mm256_loadu_ps(p)), abs);
    let mut all = zi;
    let mut k = 0;
    if g <= 256 {
        while k + 8 <= n {
            let mut h = [zi; 8];
            for (j, h) in h.iter_mut().enumerate() {
                for c in row[(k + j) * g..(k + j + 1) * g].chunks_exact(8) {
                    *h = _mm256_max_epu32(*h, mag(c.as_ptr()));
                }
            }
            // Lane j: the maximum of h[j]'s lanes (pairs, quads, then halves).
            let m = |a: __m256i, b: __m256i| _mm256_max_epu32(a, b);
            let p = |a: __m256i, b: __m256i| m(_mm256_unpacklo_epi32(a, b), _mm256_unpackhi_epi32(a, b));
            let (t01, t23, t45, t67) = (p(h[0], h[1]), p(h[2], h[3]), p(h[4], h[5]), p(h[6], h[7]));
            let q = |a: __m256i, b: __m256i| m(_mm256_unpacklo_epi64(a, b), _mm256_unpackhi_epi64(a, b));
            let (u0, u1) = (q(t01, t23), q(t45, t67));
            let r = m(_mm256_permute2x128_si256::<0x20>(u0, u1), _mm256_permute2x128_si256::<0x31>(u0, u1));
            all = _mm256_max_epu32(all, r);
            // SAFETY: k + 8 <= n = amax.len().
            _mm256_storeu_si256(amax.as_mut_ptr().add(k).cast(), r);
            k += 8;
        }
    }
    let mut rest = 0u32;
    while k < n {
        let grp = &row[k * g..(k + 1) * g];
        let mut a = [zi; 4];
        let mut chunks = grp.chunks_exact(32);
        for c in &mut chunks {
            // c holds 32 floats: four loads of eight.
            for (i, a) in a.iter_mut().enumerate() {
                *a = _mm256_max_epu32(*a, mag(c.as_ptr().add(8 * i)));
            }
        }
        for c in chunks.remainder().chunks_exact(8) {
            a[0] = _mm256_max_epu32(a[0], mag(c.as_ptr()));
        }
        let v = _mm256_max_epu32(_mm256_max_epu32(a[0], a[1]), _mm256_max_epu32(a[2], a[3]));
        let v = _mm_max_epu32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let v = _mm_max_epu32(v, _mm_unpackhi_epi64(v, v));
        let v = _mm_max_epu32(v, _mm_shuffle_epi32::<1>(v));
        let b = _mm_cvtsi128_si32(v) as u32;
        amax[k] = f32::from_bits(b);
        rest = rest.max(b);
        k += 1;
    }
    let mut m = [0u32; 8];
    _mm256_storeu_si256(m.as_mut_ptr().cast(), all);
    rest < 0x7f80_0000 && m.iter().all(|&m| m < 0x7f80_0000)
}

/// Weighted squared error of one group under parameters `p` (nearest rounding).
fn group_error(e: &Element, w: &[f32], importance: Option<&[f32]>, p: &GroupParams) -> f64 {
    let inv = if p.scale > 0.0 { 1.0 / p.scale } else { 0.0 };
    let mut err = 0.0f64;
    for (i, &x) in w.iter().enumerate() {
        let d = x - (e.decode(e.encode(x * inv + p.zero)) - p.zero) * p.scale;
        let wt = importance.map_or(1.0, |imp| imp[i]);
        err += (wt * d * d) as f64;
    }
    err
}

/// Σ importance[col] · (a - b)² over a matrix.
pub fn weighted_sq_error(a: &[f32], b: &[f32], cols: usize, importance: Option<&[f32]>) -> f64 {
    a.par_chunks(cols.max(1))
        .zip(b.par_chunks(cols.max(1)))
        .map(|(ra, rb)| {
            let mut s = 0.0f64;
            for (j, (&x, &y)) in ra.iter().zip(rb).enumerate() {
                let d = (x - y) as f64;
                s += importance.map_or(1.0, |imp| imp[j] as f64) * d * d;
            }
            s
        })
        .sum()
}

/// A tiny seeded generator (SplitMix64), one stream per row so results do not depend on
/// how rayon schedules rows.
struct SplitMix(u64);

impl SplitMix {
    fn new(seed: u64, row: u64) -> Self {
        let mut s = SplitMix(seed ^ row.wrapping_mul(0xD1B5_4A32_D192_ED03));
        s.next();
        s
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1) with 24 random bits.
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 * (1.0 / 16_777_216.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The eight-groups-at-a-time ranges equal [`min_max_finite`] group by group, bit for bit
    /// (signed zeros included), with and without a remainder of groups, and the finiteness flag
    /// catches a NaN or infinity in any group.
    #[test]
    fn group_ranges_equal_per_group_min_max() {
        let mut bits = crate::xorshift(0x1234_5678);
        let mut next = || ((bits() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0;
        for g in [8usize, 16, 24, 32, 40, 64, 72, 128] {
            for n_groups in [1usize, 7, 8, 9, 16, 19] {
                let mut row: Vec<f32> = (0..g * n_groups).map(|_| next()).collect();
                // Groups of only positive, only negative, all-zero and signed-zero values.
                for (k, grp) in row.chunks_mut(g).enumerate() {
                    match k % 5 {
                        1 => grp.iter_mut().for_each(|x| *x = x.abs()),
                        2 => grp.iter_mut().for_each(|x| *x = -x.abs()),
                        3 => grp.iter_mut().for_each(|x| *x = 0.0),
                        4 => grp.iter_mut().for_each(|x| *x = -0.0),
                        _ => {}
                    }
                }
                let (mut lo, mut hi) = (vec![9.0; n_groups], vec![9.0; n_groups]);
                assert!(group_ranges(&row, g, &mut lo, &mut hi));
                for (k, grp) in row.chunks(g).enumerate() {
                    let (l, h, ok) = min_max_finite(grp);
                    assert!(ok);
                    assert_eq!((lo[k].to_bits(), hi[k].to_bits()), (l.to_bits(), h.to_bits()), "g {g}, group {k}");
                }
                // The magnitudes alone: max(hi, -lo), +0 for groups of zeros of either sign.
                let mut amax = vec![9.0; n_groups];
                assert!(group_absmax(&row, g, &mut amax));
                for k in 0..n_groups {
                    assert_eq!(amax[k].to_bits(), hi[k].max(-lo[k]).max(0.0).to_bits(), "g {g}, group {k}");
                }
                for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                    for at in [0, row.len() / 2, row.len() - 1] {
                        let mut r = row.clone();
                        r[at] = bad;
                        assert!(!group_ranges(&r, g, &mut lo, &mut hi), "g {g}, {bad} at {at}");
                        assert!(!group_absmax(&r, g, &mut amax), "g {g}, {bad} at {at}");
                    }
                }
            }
        }
    }
}
