//! Formats no reference library implements, checked against their definitions: every code of
//! every ExMy shape decodes as the formula says, every value encodes to itself, every midpoint
//! goes to the even neighbour and the values beside it to the nearer one; NF4's table; the OCP
//! MX shared-scale rule; NVFP4's two-level scales.

use formats::element::{Element, ElementCodec};
use formats::int::{IntGrid, IntKind};
use formats::minifloat::{Minifloat, Special};
use formats::scale::{e4m3, e8m0_code, e8m0_scale};
use formats::{nf4, Format};

/// Value of a code from the definition, in f64.
fn reference_value(e: u32, m: u32, bias: i32, sp: Special, code: u32) -> f64 {
    let sign = (code >> (e + m)) & 1;
    let ef = (code >> m) & ((1 << e) - 1);
    let mant = code & ((1 << m) - 1);
    let all_e = (1 << e) - 1;
    let all_m = (1 << m) - 1;
    match sp {
        Special::Ieee if ef == all_e => {
            let v = if mant == 0 { f64::INFINITY } else { f64::NAN };
            return if sign == 1 { -v } else { v };
        }
        Special::Fn if ef == all_e && mant == all_m => return f64::NAN,
        Special::Fnuz if sign == 1 && ef == 0 && mant == 0 => return f64::NAN,
        _ => {}
    }
    let mag = if ef == 0 {
        mant as f64 / (1u64 << m) as f64 * 2f64.powi(1 - bias)
    } else {
        (1.0 + mant as f64 / (1u64 << m) as f64) * 2f64.powi(ef as i32 - bias)
    };
    if sign == 1 {
        -mag
    } else {
        mag
    }
}

fn all_shapes() -> Vec<Minifloat> {
    let mut v = Vec::new();
    for e in 1..=8 {
        for m in 0..=7 {
            for sp in [Special::Finite, Special::Fn, Special::Fnuz, Special::Ieee] {
                for bias in [Minifloat::default_bias(e, sp), Minifloat::default_bias(e, sp) + 2] {
                    if let Ok(f) = Minifloat::new(e, m, bias, sp) {
                        v.push(f);
                    }
                }
            }
        }
    }
    v
}

#[test]
fn every_exmy_code_decodes_as_defined() {
    let shapes = all_shapes();
    assert!(shapes.len() > 200, "{} shapes", shapes.len());
    for f in &shapes {
        for code in 0..(1u32 << f.bits()) {
            let want = reference_value(f.exp_bits(), f.man_bits(), f.bias(), f.special(), code);
            let got = f.decode_code(code as u16);
            if want.is_nan() {
                assert!(got.is_nan(), "{}: code {code:#x}", f.spec_name());
            } else {
                assert_eq!(got as f64, want, "{}: code {code:#x}", f.spec_name());
                assert_eq!(got.is_sign_negative(), want.is_sign_negative(), "{}: sign of {code:#x}", f.spec_name());
            }
        }
    }
}

/// Sorted distinct finite non-negative values with their codes.
fn positive_values(f: &Minifloat) -> Vec<(f32, u16)> {
    let mut v: Vec<(f32, u16)> = (0..(1u32 << (f.bits() - 1)))
        .map(|c| (f.decode_code(c as u16), c as u16))
        .filter(|(x, _)| x.is_finite())
        .collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    v
}

/// The next f32 toward +inf (x finite, nonzero).
fn next_up(x: f32) -> f32 {
    if x > 0.0 {
        f32::from_bits(x.to_bits() + 1)
    } else {
        f32::from_bits(x.to_bits() - 1)
    }
}
/// The next f32 toward -inf (x finite, nonzero).
fn next_down(x: f32) -> f32 {
    -next_up(-x)
}

#[test]
fn every_exmy_value_and_midpoint_encodes_as_defined() {
    for f in &all_shapes() {
        let vals = positive_values(f);
        let name = f.spec_name();
        let mut inputs = Vec::new();
        let mut want = Vec::new();
        for &(v, c) in &vals {
            inputs.push(v);
            want.push(c);
        }
        for w in vals.windows(2) {
            let ((a, ca), (b, cb)) = (w[0], w[1]);
            let mid = a / 2.0 + b / 2.0; // exact: at most 9 significant bits
            assert_eq!(mid as f64, (a as f64 + b as f64) / 2.0);
            // Ties to even: of the two neighbours, the one that is an even multiple of the
            // quantum of a's binade (2^(max(e, emin) - M)); with M = 0 that is not the even code.
            let e = (a.max(f.min_normal()).log2().floor() as i32).max(1 - f.bias());
            let quantum = 2f64.powi(e - f.man_bits() as i32);
            let k = (a as f64 / quantum).round() as i64;
            let even = if k % 2 == 0 { ca } else { cb };
            inputs.extend([mid, next_down(mid), next_up(mid)]);
            want.extend([even, ca, cb]);
        }
        let (max, cmax) = vals[vals.len() - 1];
        inputs.extend([max * 1.5, max * 4.0, f32::MAX]);
        want.extend([cmax, cmax, cmax]);
        let sign = 1u16 << (f.bits() - 1);
        for (&x, &c) in inputs.iter().zip(&want) {
            assert_eq!(f.encode(x), c, "{name}: encode({x:e})");
            let neg = if c == 0 && f.special() == Special::Fnuz { 0 } else { c | sign };
            assert_eq!(f.encode(-x), neg, "{name}: encode(-{x:e})");
        }
        // The vectorised quantizer loop gives the same codes.
        let mut both: Vec<f32> = inputs.clone();
        both.extend(inputs.iter().map(|x| -x));
        let mut fast = vec![0u16; both.len()];
        f.encode_slice(&both, 1.0, &mut fast);
        for (i, &x) in both.iter().enumerate() {
            assert_eq!(fast[i], f.encode(x), "{name}: encode_slice vs encode at {x:e}");
        }
    }
}

#[test]
fn named_minifloat_maxima() {
    let max = |s: &str| match &Format::parse(s).unwrap().elements[0] {
        Element::Float(f) => f.max(),
        _ => panic!("{s} is not a minifloat"),
    };
    assert_eq!(max("fp8_e4m3"), 448.0);
    assert_eq!(max("fp8_e5m2"), 57344.0);
    assert_eq!(max("fp6_e3m2"), 28.0);
    assert_eq!(max("fp6_e2m3"), 7.5);
    assert_eq!(max("fp4_e2m1"), 6.0);
    assert_eq!(max("fp8_e4m3fnuz"), 240.0);
    assert_eq!(max("f16"), 65504.0);
    assert_eq!(max("bf16"), f32::from_bits(0x7f7f0000));
}

#[test]
fn integer_grids_follow_their_definition() {
    let g = IntGrid::new(4, IntKind::Signed).unwrap();
    let vals: Vec<f32> = (0..16).map(|c| g.decode(c)).collect();
    let mut sorted = vals.clone();
    sorted.sort_by(f32::total_cmp);
    assert_eq!(sorted, (-8..=7).map(|v| v as f32).collect::<Vec<_>>());
    for c in 0..16u16 {
        assert_eq!(g.encode(g.decode(c)), c);
    }
    assert_eq!(g.decode(g.encode(2.5)), 2.0, "ties to even");
    assert_eq!(g.decode(g.encode(-3.5)), -4.0, "ties to even");
    assert_eq!(g.decode(g.encode(100.0)), 7.0);
    assert_eq!(g.decode(g.encode(-100.0)), -8.0);
    let r = IntGrid::new(4, IntKind::Restricted).unwrap();
    assert_eq!(r.decode(r.encode(-100.0)), -7.0);
    let t = IntGrid::ternary();
    assert_eq!([t.decode(t.encode(-0.7)), t.decode(t.encode(0.2)), t.decode(t.encode(9.0))], [-1.0, 0.0, 1.0]);
    let b = IntGrid::new(1, IntKind::Signed).unwrap();
    assert_eq!([b.decode(b.encode(-0.1)), b.decode(b.encode(0.3))], [-1.0, 1.0]);
    let u = IntGrid::new(3, IntKind::Unsigned).unwrap();
    assert_eq!((0..8).map(|c| u.decode(c)).collect::<Vec<_>>(), (0..8).map(|v| v as f32).collect::<Vec<_>>());
}

#[test]
fn nf4_table_codes_and_midpoints() {
    let g = nf4::nf4_grid();
    let v = nf4::NF4_VALUES;
    assert_eq!(v[7], 0.0);
    assert_eq!((v[0], v[15]), (-1.0, 1.0));
    for (i, &x) in v.iter().enumerate() {
        assert_eq!(g.encode(x) as usize, i, "value {x}");
        assert_eq!(g.decode(i as u16), x);
    }
    for i in 0..15 {
        let mid = 0.5 * (v[i] + v[i + 1]);
        // Exact midpoints go to the value of smaller magnitude.
        let small = if v[i].abs() <= v[i + 1].abs() { i } else { i + 1 };
        assert_eq!(g.encode(mid) as usize, small, "midpoint {mid}");
        assert_eq!(g.encode(next_down(mid)) as usize, i);
        assert_eq!(g.encode(next_up(mid)) as usize, i + 1);
    }
    // nf4 blocks: scale = absmax of each 64-block, the absmax element exact.
    let f = Format::parse("nf4").unwrap();
    let row: Vec<f32> = (0..128).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
    let q = f.quantize_row(&row, None).unwrap();
    for (k, blk) in row.chunks(64).enumerate() {
        let amax = blk.iter().fold(0f32, |m, x| m.max(x.abs()));
        assert_eq!(q.scales[k], amax);
    }
    let back = f.dequantize(&q).unwrap();
    let imax = row[..64].iter().enumerate().max_by(|a, b| a.1.abs().total_cmp(&b.1.abs())).unwrap().0;
    assert_eq!(back[imax], row[imax]);
}

#[test]
fn mx_shared_scale_follows_the_ocp_rule() {
    // X = 2^(floor(log2(amax)) - emax_elem); elements x / X cast with saturation.
    let e2m1 = Minifloat::with_default_bias(2, 1, Special::Finite).unwrap();
    assert_eq!(e2m1.emax(), 2);
    assert_eq!(e8m0_scale(6.0, 2), 1.0);
    assert_eq!(e8m0_scale(7.99, 2), 1.0, "floor, not round-to-nearest");
    assert_eq!(e8m0_scale(8.0, 2), 2.0);
    assert_eq!(e8m0_scale(0.75, 2), 0.125);
    assert_eq!(e8m0_code(1.0), 127);
    assert_eq!(e8m0_code(e8m0_scale(0.0, 2)), 0, "all-zero block gets the smallest scale");
    assert_eq!(e8m0_scale(f32::MAX, 0), 2f32.powi(127));
    let cases: [(&str, Vec<f32>, Vec<f32>); 4] = [
        // amax 7: X = 2^(2-2) = 1, 7 saturates to 6, 5 is a tie between 4 and 6 -> 4 (even).
        ("mxfp4", vec![7.0, 5.0, -0.25, 0.3], vec![6.0, 4.0, -0.0, 0.5]),
        // amax 1000: X = 2^(9-8) = 2; 1000/2 = 500 saturates to 448 -> 896.
        ("mxfp8_e4m3", vec![1000.0, 3.0, -1.0, 0.01], vec![896.0, 3.0, -1.0, 0.01171875]),
        // mxint8 elements are Q1.6: amax 1.5 -> X = 1, 1.5 = 96/64.
        ("mxint8", vec![1.5, -1.0, 0.01, 0.0078125], vec![1.5, -1.0, 0.015625, 0.0]),
        // amax 20: X = 2^(4-4) = 1 for E3M2 (max 28).
        ("mxfp6_e3m2", vec![20.0, 9.0, -0.1, 0.0], vec![20.0, 8.0, -0.125, 0.0]),
    ];
    for (spec, head, want) in cases {
        let f = Format::parse(spec).unwrap();
        let mut row = head.clone();
        row.resize(32, 0.0);
        let q = f.quantize_row(&row, None).unwrap();
        let back = f.dequantize(&q).unwrap();
        for (i, w) in want.iter().enumerate() {
            assert_eq!(back[i], *w, "{spec}: element {i} ({})", row[i]);
        }
        assert_eq!(f.bits_per_weight(32).unwrap(), f.code_bits() as f64 + 8.0 / 32.0);
    }
}

#[test]
fn nvfp4_two_level_scales() {
    let f = Format::parse("nvfp4").unwrap();
    let row: Vec<f32> = (0..64).map(|i| ((i * 29 % 61) as f32 - 30.0) * if i < 16 { 10.0 } else { 0.37 }).collect();
    let q = f.quantize_row(&row, None).unwrap();
    let amax = row.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert_eq!(q.tensor_scale, amax / (6.0 * 448.0));
    let fp8 = e4m3();
    let e2m1 = Minifloat::with_default_bias(2, 1, Special::Finite).unwrap();
    let back = f.dequantize(&q).unwrap();
    for (k, blk) in row.chunks(16).enumerate() {
        let bmax = blk.iter().fold(0f32, |m, x| m.max(x.abs()));
        let s = fp8.decode_code(fp8.encode(bmax / 6.0 / q.tensor_scale)) * q.tensor_scale;
        assert_eq!(q.scales[k], s, "block {k}");
        for (i, &x) in blk.iter().enumerate() {
            let want = e2m1.decode_code(e2m1.encode(x * (1.0 / s))) * s;
            assert_eq!(back[k * 16 + i], want, "block {k} element {i}");
        }
    }
    assert_eq!(f.storage_bits(1, 64).unwrap(), 64 * 4 + 4 * 8 + 32);
}

#[test]
fn log_and_power_grids() {
    let f = Format::parse("log4:g8").unwrap();
    let Element::Lut(l) = &f.elements[0] else { panic!("log4 is a grid") };
    let mut want: Vec<f32> = (0..=6).flat_map(|k| [2f32.powi(-k), -(2f32.powi(-k))]).collect();
    want.push(0.0);
    want.sort_by(f32::total_cmp);
    assert_eq!(l.values(), &want[..]);
    let f = Format::parse("pow3:alpha=2:g8").unwrap();
    let Element::Lut(l) = &f.elements[0] else { panic!("pow3 is a grid") };
    let want = [-1.0, -4.0 / 9.0, -1.0 / 9.0, 0.0, 1.0 / 9.0, 4.0 / 9.0, 1.0];
    for (a, b) in l.values().iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
}

/// The byte and 16-bit encoder loops against the scalar encoder on pseudo-random values of
/// every magnitude (f32 subnormals to overflow), with scales other than one, for every ExMy
/// shape and the non-uniform tables.
#[test]
fn slice_encoders_agree_with_the_scalar_encoder_on_random_values() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Random sign, exponent over the whole f32 range, random mantissa.
    let xs: Vec<f32> = (0..4096)
        .map(|_| {
            let r = next();
            f32::from_bits(((r as u32) & 0x807f_ffff) | (((r >> 32) as u32 % 255) << 23))
        })
        .collect();
    let mut elements: Vec<Element> = all_shapes().into_iter().map(Element::Float).collect();
    elements.push(Element::Lut(nf4::nf4_grid()));
    elements.push(Element::Lut(formats::lut::iq4_nl_grid()));
    for e in &elements {
        for inv in [1.0f32, 0.37, 3.1e4, 2.5e-30] {
            let want: Vec<u16> = xs.iter().map(|&x| e.encode(x * inv)).collect();
            let mut wide = vec![0u16; xs.len()];
            e.encode_slice(&xs, inv, 0.0, &mut wide);
            assert_eq!(wide, want, "{}: u16 codes at inv_scale {inv:e}", e.spec_name());
            if e.code_bits() <= 8 {
                let mut narrow = vec![0u8; xs.len()];
                e.encode_slice(&xs, inv, 0.0, &mut narrow);
                let narrow: Vec<u16> = narrow.into_iter().map(u16::from).collect();
                assert_eq!(narrow, want, "{}: u8 codes at inv_scale {inv:e}", e.spec_name());
            }
        }
    }
}
