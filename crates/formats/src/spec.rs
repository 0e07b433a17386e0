//! Spec strings: an element format, then `:`-separated settings, lower case (`int4:g128`,
//! `e3m2:g32:scale=e8m0`, `nvfp4`, `q4_k`). Errors name the 1-based character where the
//! unexpected text starts and what was expected there.

use crate::element::Element;
use crate::fixed::Fixed;
use crate::format::{Choice, Clip, Format, Granularity, Rounding};
use crate::ggml::GgmlType;
use crate::int::{IntGrid, IntKind};
use crate::lut::{iq4_nl_grid, power_grid};
use crate::minifloat::{default_special, Minifloat, Special};
use crate::scale::ScaleStorage;
use crate::{bitmod, log2, nf4, FormatError, Result};

/// The grammar, as `formats list` prints it.
pub const GRAMMAR: &str = "\
spec     := element (':' setting)*
element  := intB | uintB | ternary | eXmY | fp8_e4m3 | fp8_e4m3fnuz | fp8_e5m2 | fp8_e5m2fnuz
          | fp6_e3m2 | fp6_e2m3 | fp4_e2m1 | bf16 | f16 | fpB | nf4 | fixedB.F | logB | powB
          | iq4nl_grid | bitmod3 | bitmod4
          | mxfp4 | mxfp6_e3m2 | mxfp6_e2m3 | mxfp8_e4m3 | mxfp8_e5m2 | mxint8 | nvfp4
          | q4_0 | q4_1 | q5_0 | q5_1 | q8_0 | q2_k | q3_k | q4_k | q5_k | q6_k | iq4_nl | iq4_xs
setting  := gN            group of N along the input dimension (must divide the row)
          | ch | t        one scale per output channel / per tensor
          | asym          integer grid with a zero point (same as uintB)
          | restricted    signed integers without -2^(B-1)
          | scale=S       S: f32 | f16 | bf16 | e8m0 | e4m3 | uN (N-bit ints, f32 per sg groups)
          | sg=N          groups per second-level scale of scale=uN (default 8)
          | dq            double quantization of the scales (scale=u8, sg=256, as QLoRA)
          | clip=mse | clip=none   search clip ratios 1.00..0.30 for least squared error
          | round=sr | round=nearest, seed=N   stochastic rounding, seeded
          | ieee | fn | fnuz | finite, bias=N  minifloat special values and exponent bias
          | alpha=X       exponent of a powB grid (default 1.5)
          | choose=group | choose=tensor   where a choice among grids is made
A bare element means one f32 scale per output channel (raw grid, scale 1, in `formats roundtrip`);
bf16, f16 and fixedB.F are unscaled unless a granularity is given. fpB searches the
exponent/mantissa split of B-bit minifloats per tensor (LLM-FP4); bitmodB picks a grid per group.";

/// Specs `formats list` shows, one per format family member.
pub const LISTED: &[&str] = &[
    "int8",
    "int4:g128",
    "int4:g128:asym",
    "uint4:g32",
    "int3:g64:clip=mse",
    "int2:g64",
    "ternary:g64",
    "int1:g128",
    "fp8_e4m3",
    "fp8_e5m2",
    "fp8_e4m3fnuz",
    "fp8_e5m2fnuz",
    "fp6_e3m2:g32",
    "fp6_e2m3:g32",
    "fp4_e2m1:g32",
    "e3m2:g32:scale=e8m0",
    "e2m2:g64",
    "fp4:g64",
    "bf16",
    "f16",
    "mxfp8_e4m3",
    "mxfp8_e5m2",
    "mxfp6_e3m2",
    "mxfp6_e2m3",
    "mxfp4",
    "mxint8",
    "nvfp4",
    "nf4",
    "nf4:dq",
    "iq4nl_grid:g32",
    "pow4:g64",
    "log4:g64",
    "bitmod4:g128",
    "bitmod3:g128",
    "fixed8.4",
    "fixed16.8",
    "int4:g32:scale=u6",
    "q4_0",
    "q4_1",
    "q5_0",
    "q5_1",
    "q8_0",
    "q2_k",
    "q3_k",
    "q4_k",
    "q5_k",
    "q6_k",
    "iq4_nl",
    "iq4_xs",
];

fn err(spec: &str, pos: usize, msg: impl Into<String>) -> FormatError {
    FormatError::Spec { spec: spec.to_string(), pos: pos + 1, msg: msg.into() }
}

/// Parses an unsigned number that makes up the whole of `s`.
fn num(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 9 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Element kinds before settings are applied.
enum Base {
    Int { bits: u32, kind: IntKind },
    Float { e: u32, m: u32, special: Option<Special>, bias: Option<i32> },
    FloatSearch { bits: u32 },
    Fixed { bits: u32, frac: u32 },
    Log { bits: u32 },
    Pow { bits: u32 },
    Grid(Element),
    Bitmod { bits: u32 },
    Ggml(GgmlType),
}

struct Draft {
    base: Base,
    preset: Option<&'static str>,
    granularity: Granularity,
    scale: ScaleStorage,
    clip: Clip,
    asym: bool,
    explicit: bool,
    unscaled_default: bool,
}

fn parse_element(spec: &str, tok: &str, pos: usize) -> Result<Draft> {
    let mut d = Draft {
        base: Base::Int { bits: 8, kind: IntKind::Signed },
        preset: None,
        granularity: Granularity::Channel,
        scale: ScaleStorage::F32,
        clip: Clip::None,
        asym: false,
        explicit: false,
        unscaled_default: false,
    };
    let float = |e, m, special: Option<Special>| Base::Float { e, m, special, bias: None };
    let ggml = |t| Base::Ggml(t);
    let block = |d: &mut Draft, base: Base, name: &'static str, g: usize, scale: ScaleStorage| {
        d.base = base;
        d.preset = Some(name);
        d.granularity = Granularity::Group(g);
        d.scale = scale;
    };
    match tok {
        "ternary" => d.base = Base::Int { bits: 2, kind: IntKind::Restricted },
        "bf16" => {
            d.base = float(8, 7, Some(Special::Ieee));
            d.unscaled_default = true;
        }
        "f16" | "fp16" => {
            d.base = float(5, 10, Some(Special::Ieee));
            d.unscaled_default = true;
        }
        "fp8_e4m3" | "fp8_e4m3fn" => d.base = float(4, 3, Some(Special::Fn)),
        "fp8_e4m3fnuz" => d.base = float(4, 3, Some(Special::Fnuz)),
        "fp8_e5m2" => d.base = float(5, 2, Some(Special::Ieee)),
        "fp8_e5m2fnuz" => d.base = float(5, 2, Some(Special::Fnuz)),
        "fp6_e3m2" => d.base = float(3, 2, Some(Special::Finite)),
        "fp6_e2m3" => d.base = float(2, 3, Some(Special::Finite)),
        "fp4_e2m1" => d.base = float(2, 1, Some(Special::Finite)),
        "nf4" => block(&mut d, Base::Grid(Element::Lut(nf4::nf4_grid())), "nf4", 64, ScaleStorage::F32),
        "iq4nl_grid" => d.base = Base::Grid(Element::Lut(iq4_nl_grid())),
        "bitmod3" => d.base = Base::Bitmod { bits: 3 },
        "bitmod4" => d.base = Base::Bitmod { bits: 4 },
        "mxfp4" => block(&mut d, float(2, 1, Some(Special::Finite)), "mxfp4", 32, ScaleStorage::E8m0),
        "mxfp6_e3m2" => block(&mut d, float(3, 2, Some(Special::Finite)), "mxfp6_e3m2", 32, ScaleStorage::E8m0),
        "mxfp6_e2m3" => block(&mut d, float(2, 3, Some(Special::Finite)), "mxfp6_e2m3", 32, ScaleStorage::E8m0),
        "mxfp8_e4m3" => block(&mut d, float(4, 3, Some(Special::Fn)), "mxfp8_e4m3", 32, ScaleStorage::E8m0),
        "mxfp8_e5m2" => block(&mut d, float(5, 2, Some(Special::Ieee)), "mxfp8_e5m2", 32, ScaleStorage::E8m0),
        "mxint8" => block(&mut d, Base::Fixed { bits: 8, frac: 6 }, "mxint8", 32, ScaleStorage::E8m0),
        "nvfp4" => block(&mut d, float(2, 1, Some(Special::Finite)), "nvfp4", 16, ScaleStorage::E4m3),
        "q4_0" => d.base = ggml(GgmlType::Q4_0),
        "q4_1" => d.base = ggml(GgmlType::Q4_1),
        "q5_0" => d.base = ggml(GgmlType::Q5_0),
        "q5_1" => d.base = ggml(GgmlType::Q5_1),
        "q8_0" => d.base = ggml(GgmlType::Q8_0),
        "q2_k" => d.base = ggml(GgmlType::Q2K),
        "q3_k" => d.base = ggml(GgmlType::Q3K),
        "q4_k" => d.base = ggml(GgmlType::Q4K),
        "q5_k" => d.base = ggml(GgmlType::Q5K),
        "q6_k" => d.base = ggml(GgmlType::Q6K),
        "iq4_nl" => d.base = ggml(GgmlType::Iq4Nl),
        "iq4_xs" => d.base = ggml(GgmlType::Iq4Xs),
        _ => {
            let bits_after = |prefix: &str, lo: u32, hi: u32, what: &str| -> Result<Option<u32>> {
                match tok.strip_prefix(prefix) {
                    None => Ok(None),
                    Some(rest) => match num(rest) {
                        Some(b) if (lo..=hi).contains(&b) => Ok(Some(b)),
                        _ => {
                            Err(err(spec, pos + prefix.len(), format!("expected {what} ({lo}-{hi}) after `{prefix}`")))
                        }
                    },
                }
            };
            if let Some(b) = bits_after("uint", 1, 8, "a bit width")? {
                d.base = Base::Int { bits: b, kind: IntKind::Unsigned };
                d.asym = true;
            } else if let Some(b) = bits_after("int", 1, 8, "a bit width")? {
                d.base = Base::Int { bits: b, kind: IntKind::Signed };
            } else if let Some(b) = bits_after("log", 2, 8, "a bit width")? {
                d.base = Base::Log { bits: b };
            } else if let Some(b) = bits_after("pow", 2, 8, "a bit width")? {
                d.base = Base::Pow { bits: b };
            } else if let Some(rest) = tok.strip_prefix("fixed") {
                let (b, f) = rest.split_once('.').unwrap_or((rest, ""));
                match (num(b), num(f)) {
                    (Some(b), Some(f)) => {
                        d.base = Base::Fixed { bits: b, frac: f };
                        d.unscaled_default = true;
                    }
                    _ => {
                        return Err(err(
                            spec,
                            pos + 5,
                            "expected `B.F` (total bits, fraction bits) after `fixed`, as in fixed8.4",
                        ))
                    }
                }
            } else if let Some(b) = bits_after("fp", 3, 8, "a bit width")? {
                d.base = Base::FloatSearch { bits: b };
            } else if let Some(rest) = tok.strip_prefix('e') {
                let (e, m) = rest.split_once('m').unwrap_or((rest, ""));
                match (num(e), num(m)) {
                    (Some(e), Some(m)) => d.base = float(e, m, None),
                    (None, _) => return Err(err(spec, pos + 1, "expected the exponent width after `e`, as in e4m3")),
                    (Some(_), None) => {
                        return Err(err(spec, pos + 1 + e.len(), "expected `m` and the mantissa width, as in e4m3"))
                    }
                }
            } else {
                return Err(err(
                    spec,
                    pos,
                    format!("unknown element format `{tok}` (expected intB, uintB, eXmY, fp8_e4m3, nf4, mxfp4, nvfp4, q4_k, ... see `quantsmith formats list`)"),
                ));
            }
        }
    }
    Ok(d)
}

/// Parses a spec string.
pub fn parse(spec: &str) -> Result<Format> {
    if spec.trim().is_empty() {
        return Err(err(spec, 0, "empty format spec (expected an element format such as int4 or fp8_e4m3)"));
    }
    if let Some(p) = spec.find(|c: char| c.is_ascii_uppercase() || c.is_whitespace()) {
        return Err(err(spec, p, "spec strings are lower case without spaces"));
    }
    let mut toks = Vec::new();
    let mut pos = 0;
    for t in spec.split(':') {
        toks.push((t, pos));
        pos += t.chars().count() + 1;
    }
    let (etok, epos) = toks[0];
    let mut d = parse_element(spec, etok, epos)?;
    let mut rounding = Rounding::Nearest;
    let mut seed: Option<(u64, usize)> = None;
    let mut sr_pos = None;
    let mut restricted = None;
    let mut alpha: Option<(f32, usize)> = None;
    let mut super_groups: Option<(usize, usize)> = None;
    let mut choose: Option<(Choice, usize)> = None;
    for &(t, p) in &toks[1..] {
        let (key, val) = match t.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (t, None),
        };
        let vpos = p + key.len() + 1;
        let need_none = |d: &Draft| -> Result<()> {
            if let Base::Ggml(_) = d.base {
                Err(err(spec, p, format!("ggml block types take no settings (got `{t}`)")))
            } else {
                Ok(())
            }
        };
        match (key, val) {
            ("", None) => return Err(err(spec, p, "empty setting (expected gN, ch, t, asym, scale=..., clip=mse, round=sr, ...)")),
            ("ch", None) => {
                need_none(&d)?;
                d.granularity = Granularity::Channel;
                d.explicit = true;
            }
            ("t", None) => {
                need_none(&d)?;
                d.granularity = Granularity::Tensor;
                d.explicit = true;
            }
            ("asym", None) => match d.base {
                Base::Int { bits, .. } => {
                    d.base = Base::Int { bits, kind: IntKind::Unsigned };
                    d.asym = true;
                }
                _ => return Err(err(spec, p, "`asym` applies to integer formats only")),
            },
            ("restricted", None) => restricted = Some(p),
            ("dq", None) => {
                need_none(&d)?;
                d.scale = ScaleStorage::UInt { bits: 8, super_groups: 256 };
                d.explicit = true;
            }
            ("ieee" | "fn" | "fnuz" | "finite", None) => match &mut d.base {
                Base::Float { special, .. } => {
                    *special = Some(match key {
                        "ieee" => Special::Ieee,
                        "fn" => Special::Fn,
                        "fnuz" => Special::Fnuz,
                        _ => Special::Finite,
                    })
                }
                _ => return Err(err(spec, p, format!("`{key}` applies to minifloat (eXmY) formats only"))),
            },
            ("scale", Some(v)) => {
                need_none(&d)?;
                d.scale = match v {
                    "f32" => ScaleStorage::F32,
                    "f16" => ScaleStorage::F16,
                    "bf16" => ScaleStorage::Bf16,
                    "e8m0" => ScaleStorage::E8m0,
                    "e4m3" => ScaleStorage::E4m3,
                    _ => match v.strip_prefix('u').and_then(num) {
                        Some(b) if (2..=8).contains(&b) => ScaleStorage::UInt { bits: b, super_groups: 8 },
                        _ => return Err(err(spec, vpos, format!("expected f32, f16, bf16, e8m0, e4m3 or u2..u8 after `scale=`, got `{v}`"))),
                    },
                };
                d.explicit = true;
            }
            ("sg", Some(v)) => match num(v) {
                Some(n) if n >= 1 => super_groups = Some((n as usize, p)),
                _ => return Err(err(spec, vpos, "expected a positive number of groups after `sg=`")),
            },
            ("clip", Some("mse")) => d.clip = Clip::Mse,
            ("clip", Some("none")) => d.clip = Clip::None,
            ("clip", Some(_)) => return Err(err(spec, vpos, "expected `mse` or `none` after `clip=`")),
            ("round", Some("sr")) => {
                rounding = Rounding::Stochastic { seed: 0 };
                sr_pos = Some(p);
            }
            ("round", Some("nearest")) => rounding = Rounding::Nearest,
            ("round", Some(_)) => return Err(err(spec, vpos, "expected `sr` or `nearest` after `round=`")),
            ("seed", Some(v)) => match v.parse::<u64>() {
                Ok(s) if v.bytes().all(|b| b.is_ascii_digit()) => seed = Some((s, p)),
                _ => return Err(err(spec, vpos, "expected a non-negative integer after `seed=`")),
            },
            ("bias", Some(v)) => match (&mut d.base, v.parse::<i32>()) {
                (Base::Float { bias, .. }, Ok(b)) => *bias = Some(b),
                (Base::Float { .. }, Err(_)) => return Err(err(spec, vpos, "expected an integer after `bias=`")),
                _ => return Err(err(spec, p, "`bias=` applies to minifloat (eXmY) formats only")),
            },
            ("alpha", Some(v)) => match v.parse::<f32>() {
                Ok(a) if a.is_finite() && a > 0.0 => alpha = Some((a, p)),
                _ => return Err(err(spec, vpos, "expected a positive number after `alpha=`")),
            },
            ("choose", Some("group")) => choose = Some((Choice::PerGroup, p)),
            ("choose", Some("tensor")) => choose = Some((Choice::PerTensor, p)),
            ("choose", Some(_)) => return Err(err(spec, vpos, "expected `group` or `tensor` after `choose=`")),
            _ if key.starts_with('g') && val.is_none() => {
                need_none(&d)?;
                match num(&key[1..]) {
                    Some(g) if g >= 1 => {
                        d.granularity = Granularity::Group(g as usize);
                        d.explicit = true;
                    }
                    _ => return Err(err(spec, p + 1, "expected a positive group size after `g`, as in g128")),
                }
            }
            _ => {
                return Err(err(
                    spec,
                    p,
                    format!("unknown setting `{t}` (expected gN, ch, t, asym, restricted, scale=..., sg=N, dq, clip=mse, round=sr, seed=N, bias=N, ieee/fn/fnuz/finite, alpha=X, choose=...)"),
                ))
            }
        }
    }
    if let Some((s, p)) = seed {
        match rounding {
            Rounding::Stochastic { .. } => rounding = Rounding::Stochastic { seed: s },
            Rounding::Nearest => return Err(err(spec, p, "`seed=` needs `round=sr`")),
        }
    }
    let _ = sr_pos;
    if let Some((sg, p)) = super_groups {
        match &mut d.scale {
            ScaleStorage::UInt { super_groups, .. } => *super_groups = sg,
            _ => return Err(err(spec, p, "`sg=` needs integer scale storage (scale=uN)")),
        }
    }
    if let Some(p) = restricted {
        if !matches!(d.base, Base::Int { .. } | Base::Fixed { .. }) {
            return Err(err(spec, p, "`restricted` applies to signed integer and fixed-point formats only"));
        }
    }
    let mut choice = Choice::PerGroup;
    let (elements, ggml) = match d.base {
        Base::Ggml(t) => {
            if d.clip != Clip::None || rounding != Rounding::Nearest || restricted.is_some() {
                return Err(err(spec, toks.get(1).map_or(epos, |t| t.1), "ggml block types take no settings"));
            }
            return Ok(crate::ggml_format::ggml_format(t));
        }
        Base::Int { bits, kind } => {
            let kind = match (restricted, kind) {
                (Some(_), IntKind::Signed) => IntKind::Restricted,
                (Some(p), _) => return Err(err(spec, p, "`restricted` applies to signed integer formats only")),
                (None, k) => k,
            };
            (vec![Element::Int(IntGrid::new(bits, kind).map_err(|e| err(spec, epos, e.to_string()))?)], None)
        }
        Base::Float { e, m, special, bias } => {
            let special = special.unwrap_or_else(|| default_special(e, m));
            let bias = bias.unwrap_or_else(|| Minifloat::default_bias(e, special));
            let f = Minifloat::new(e, m, bias, special).map_err(|x| err(spec, epos, x.to_string()))?;
            (vec![Element::Float(f)], None)
        }
        Base::FloatSearch { bits } => {
            choice = Choice::PerTensor;
            let mut v = Vec::new();
            for e in 1..bits {
                let m = bits - 1 - e;
                if let Ok(f) = Minifloat::with_default_bias(e, m, Special::Finite) {
                    v.push(Element::Float(f));
                }
            }
            (v, None)
        }
        Base::Fixed { bits, frac } => {
            let mut x = Fixed::new(bits, frac).map_err(|x| err(spec, epos, x.to_string()))?;
            if restricted.is_some() || d.preset == Some("mxint8") {
                x = x.restricted();
            }
            (vec![Element::Fixed(x)], None)
        }
        Base::Log { bits } => {
            (vec![Element::Lut(log2::log_grid(bits).map_err(|x| err(spec, epos, x.to_string()))?)], None)
        }
        Base::Pow { bits } => {
            let a = alpha.map_or(1.5, |(a, _)| a);
            (vec![Element::Lut(power_grid(bits, a).map_err(|x| err(spec, epos, x.to_string()))?)], None)
        }
        Base::Grid(e) => (vec![e], None),
        Base::Bitmod { bits } => (bitmod::grids(bits).into_iter().map(Element::Lut).collect(), None),
    };
    if let Some((_, p)) = alpha {
        if !matches!(elements.first(), Some(Element::Lut(l)) if l.name().starts_with("pow")) {
            return Err(err(spec, p, "`alpha=` applies to powB grids only"));
        }
    }
    if let Some((c, p)) = choose {
        if elements.len() < 2 {
            return Err(err(spec, p, "`choose=` needs a format with several grids (bitmodB, fpB)"));
        }
        choice = c;
    }
    if !d.explicit && d.unscaled_default {
        d.granularity = Granularity::None;
    }
    if d.scale == ScaleStorage::E8m0 && d.asym {
        return Err(err(spec, epos, "asymmetric formats cannot use E8M0 scales (their scale is not a power of two)"));
    }
    Ok(Format {
        elements,
        choice,
        granularity: d.granularity,
        scale: d.scale,
        asym: d.asym,
        rounding,
        clip: d.clip,
        ggml,
        preset: d.preset.map(str::to_string),
        explicit_scaling: d.explicit,
    })
}

/// The element/preset part of the canonical spec.
fn base_name(f: &Format) -> String {
    if let Some(t) = f.ggml {
        return t.name().to_string();
    }
    if let Some(p) = &f.preset {
        return p.clone();
    }
    if f.elements.len() > 1 {
        if let Element::Float(fl) = &f.elements[0] {
            return format!("fp{}", fl.bits());
        }
        if let Element::Lut(l) = &f.elements[0] {
            return l.name().split(['_', ':']).next().unwrap_or("bitmod").to_string();
        }
    }
    match &f.elements[0] {
        Element::Int(g) if g.kind() == IntKind::Unsigned => format!("uint{}", g.bits()),
        e => e.spec_name(),
    }
}

/// The canonical spec of a format: its base name plus the settings that differ from the
/// base's defaults.
pub fn to_spec(f: &Format) -> String {
    let base = base_name(f);
    let mut s = base.clone();
    let Ok(b) = parse(&base) else { return s };
    if f.ggml.is_some() {
        return s;
    }
    if f.granularity != b.granularity {
        s.push_str(&match f.granularity {
            // Only raw copies (`raw_if_bare`) are unscaled where their base is not: no spec says so.
            Granularity::None => String::new(),
            Granularity::Tensor => ":t".into(),
            Granularity::Channel => ":ch".into(),
            Granularity::Group(g) => format!(":g{g}"),
        });
    }
    if f.scale != b.scale {
        match f.scale {
            ScaleStorage::UInt { bits: 8, super_groups: 256 } => s.push_str(":dq"),
            sc => {
                s.push_str(":scale=");
                s.push_str(&sc.spec_name());
            }
        }
    }
    if f.asym && !b.asym {
        s.push_str(":asym");
    }
    if f.clip == Clip::Mse {
        s.push_str(":clip=mse");
    }
    if let Rounding::Stochastic { seed } = f.rounding {
        s.push_str(&format!(":round=sr:seed={seed}"));
    }
    if f.choice != b.choice && f.elements.len() > 1 {
        s.push_str(match f.choice {
            Choice::PerGroup => ":choose=group",
            Choice::PerTensor => ":choose=tensor",
        });
    }
    s
}

/// A number for a description: exact when short (448, 0.015625), else in scientific notation
/// with enough digits to tell formats apart (3.3895314e38, not 39 digits).
fn magnitude(v: f64) -> String {
    if v != 0.0 && !(1e-4..1e7).contains(&v.abs()) {
        let s = format!("{v:.7e}");
        // 3.3895314e38; trailing zeros of the mantissa dropped (5.7344000e4 → 5.7344e4).
        match s.split_once('e') {
            Some((m, e)) => format!("{}e{e}", m.trim_end_matches('0').trim_end_matches('.')),
            None => s,
        }
    } else {
        format!("{v}")
    }
}

fn element_words(e: &Element) -> String {
    match e {
        Element::Int(g) => match g.kind() {
            IntKind::Signed => format!("{}-bit signed integers", g.bits()),
            IntKind::Restricted if g.bits() == 2 => "ternary {-1, 0, 1}".into(),
            IntKind::Restricted => format!("{}-bit symmetric integers", g.bits()),
            IntKind::Unsigned => format!("{}-bit unsigned integers with a zero point", g.bits()),
            IntKind::Binary => "binary {-1, +1}".into(),
        },
        Element::Float(f) => format!(
            "E{}M{} minifloat (bias {}, {}, max {})",
            f.exp_bits(),
            f.man_bits(),
            f.bias(),
            match f.special() {
                Special::Ieee => "inf/NaN",
                Special::Fn => "NaN only",
                Special::Fnuz => "NaN only, no -0",
                Special::Finite => "no inf/NaN",
            },
            magnitude(f.max() as f64)
        ),
        Element::Fixed(x) => format!(
            "fixed point Q{}.{} (sign + {} bits, saturating, step 2^-{})",
            x.bits() as i32 - x.frac() as i32 - 1,
            x.frac(),
            x.bits() - 1,
            x.frac()
        ),
        Element::Lut(l) => format!("{}-value grid {}", l.values().len(), l.name()),
    }
}

/// One-line human description.
pub fn describe(f: &Format) -> String {
    if let Some(t) = f.ggml {
        return format!(
            "ggml {} blocks of {} weights ({} bytes each), llama.cpp-compatible",
            t.name().to_uppercase(),
            t.block_size(),
            t.type_size()
        );
    }
    let what = match f.preset.as_deref() {
        Some("nvfp4") => "NVFP4: E2M1 in 16-blocks, E4M3 block scale, f32 tensor scale".to_string(),
        Some("nf4") => "NF4 (QLoRA normal-float table), absmax blocks".to_string(),
        Some(p) if p.starts_with("mx") => {
            format!("OCP MX {}: {}, E8M0 shared scale", p.to_uppercase(), element_words(&f.elements[0]))
        }
        _ if f.elements.len() > 1 => format!(
            "{} grids ({}), chosen per {}",
            f.elements.len(),
            f.elements.iter().map(|e| e.spec_name()).collect::<Vec<_>>().join(", "),
            if f.choice == Choice::PerGroup { "group (BitMoD)" } else { "tensor (LLM-FP4 search)" }
        ),
        _ => element_words(&f.elements[0]),
    };
    let gran = match f.granularity {
        Granularity::None => "unscaled".to_string(),
        Granularity::Tensor => "one scale per tensor".into(),
        Granularity::Channel => "one scale per output channel".into(),
        Granularity::Group(g) => format!("groups of {g}"),
    };
    let mut s = format!("{what}; {gran}");
    if f.granularity != Granularity::None {
        s.push_str(&format!(", {} scales", f.scale.spec_name()));
    }
    if f.clip == Clip::Mse {
        s.push_str(", MSE clip search");
    }
    if let Rounding::Stochastic { seed } = f.rounding {
        s.push_str(&format!(", stochastic rounding (seed {seed})"));
    }
    s
}
