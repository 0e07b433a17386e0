//! Property tests: quantize-dequantize lands on a nearest point of the group's scaled grid
//! (so within the format's error bound), is idempotent on representable values, monotone,
//! and never makes NaN from finite input.

use formats::element::{Element, ElementCodec};
use formats::{Format, Granularity};
use proptest::prelude::*;

const SPECS: [&str; 14] = [
    "int4:g32",
    "int3:g16:restricted",
    "uint4:g32",
    "int8:ch",
    "fp8_e4m3",
    "e2m1:g32",
    "e3m2:g32:scale=e8m0",
    "mxfp4",
    "mxint8",
    "nvfp4",
    "nf4",
    "log4:g32",
    "bitmod4:g32",
    "int4:g32:scale=f16",
];

fn row_strategy() -> impl Strategy<Value = Vec<f32>> {
    // Magnitudes from 1e-6 to 1e4, both signs, zeros included; 64 elements (2 MX blocks).
    prop::collection::vec(
        prop_oneof![Just(0.0f32), (-1.0f32..1.0), (-1.0e4f32..1.0e4), (-6.0f32..-1.0).prop_map(|e| 10f32.powf(e)),],
        64,
    )
}

/// Values of a group's scaled grid: (table value - zero) * scale.
fn scaled_grid(e: &Element, scale: f32, zero: f32) -> Vec<f32> {
    // Only codes the encoder can produce (a restricted grid leaves its most negative code unused).
    (0..1u32 << e.code_bits())
        .map(|c| e.decode(c as u16))
        .filter(|v| v.is_finite() && e.decode(e.encode(*v)) == *v)
        .map(|v| (v - zero) * scale)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn lands_on_a_nearest_grid_point(row in row_strategy(), which in 0usize..SPECS.len()) {
        let f = Format::parse(SPECS[which]).unwrap();
        let q = f.quantize_row(&row, None).unwrap();
        let back = f.dequantize(&q).unwrap();
        let g = f.group_len(row.len()).unwrap();
        for (k, (grp, out)) in row.chunks(g).zip(back.chunks(g)).enumerate() {
            let s = q.scales[k];
            let z = if f.asym { q.zeros[k] } else { 0.0 };
            let e = if q.choices.len() > k { &f.elements[q.choices[k] as usize] } else { &f.elements[0] };
            let grid = scaled_grid(e, s, z);
            for (&x, &y) in grp.iter().zip(out) {
                prop_assert!(y.is_finite(), "{}: {} -> {}", SPECS[which], x, y);
                let best = grid.iter().map(|&v| (x - v).abs()).fold(f32::INFINITY, f32::min);
                // Within rounding noise of the nearest scaled grid value.
                let tol = 1e-5 * (x.abs() + s);
                prop_assert!((x - y).abs() <= best + tol, "{}: {} -> {} but a grid point is {} away (scale {})", SPECS[which], x, y, best, s);
            }
        }
    }

    #[test]
    fn no_saturation_under_absmax_scaling(row in row_strategy(), which in 0usize..SPECS.len()) {
        // Everything but the E8M0 formats (whose floor rule may saturate by design) keeps every
        // element within one grid step: |x - y| <= the largest gap of the scaled grid.
        let f = Format::parse(SPECS[which]).unwrap();
        prop_assume!(f.scale != formats::ScaleStorage::E8m0);
        let q = f.quantize_row(&row, None).unwrap();
        let back = f.dequantize(&q).unwrap();
        let g = f.group_len(row.len()).unwrap();
        for (k, (grp, out)) in row.chunks(g).zip(back.chunks(g)).enumerate() {
            let s = q.scales[k];
            let z = if f.asym { q.zeros[k] } else { 0.0 };
            let e = if q.choices.len() > k { &f.elements[q.choices[k] as usize] } else { &f.elements[0] };
            let mut grid = scaled_grid(e, s, z);
            grid.sort_by(f32::total_cmp);
            let gap = grid.windows(2).map(|w| w[1] - w[0]).fold(0f32, f32::max);
            for (&x, &y) in grp.iter().zip(out) {
                prop_assert!((x - y).abs() <= gap * 0.5 * (1.0 + 1e-4) + 1e-6 * x.abs() + f32::MIN_POSITIVE,
                    "{}: {} -> {} (half gap {})", SPECS[which], x, y, gap * 0.5);
            }
        }
    }

    #[test]
    fn idempotent(row in row_strategy(), which in 0usize..SPECS.len()) {
        let f = Format::parse(SPECS[which]).unwrap();
        let once = f.fake_quantize_row(&row, None).unwrap();
        let twice = f.fake_quantize_row(&once, None).unwrap();
        for (a, b) in once.iter().zip(&twice) {
            prop_assert!((a - b).abs() <= 1e-5 * a.abs(), "{}: {} then {}", SPECS[which], a, b);
        }
    }

    #[test]
    fn monotone_within_a_group(mut row in row_strategy(), which in 0usize..SPECS.len()) {
        let f = Format::parse(SPECS[which]).unwrap();
        prop_assume!(f.elements.len() == 1);
        // With fixed group parameters, quantize_value is monotone in x.
        let p = f.group_params(&row[..f.group_len(row.len()).unwrap().min(row.len())], None, f.tensor_scale(&row));
        row.sort_by(f32::total_cmp);
        let out: Vec<f32> = row.iter().map(|&x| f.quantize_value(x, &p)).collect();
        for w in out.windows(2) {
            prop_assert!(w[0] <= w[1], "{}: {} > {}", SPECS[which], w[0], w[1]);
        }
    }

    #[test]
    fn raw_elements_round_trip_and_stay_monotone(x in -1.0e5f32..1.0e5, y in -1.0e5f32..1.0e5, e in 1u32..=8, m in 0u32..=7) {
        let f = Format::parse(&format!("e{e}m{m}")).unwrap();
        let f = Format { granularity: Granularity::None, ..f };
        let el = &f.elements[0];
        let (lo, hi) = if x <= y { (x, y) } else { (y, x) };
        let (a, b) = (el.decode(el.encode(lo)), el.decode(el.encode(hi)));
        prop_assert!(a <= b, "e{}m{}: {} -> {}, {} -> {}", e, m, lo, a, hi, b);
        prop_assert!(!a.is_nan() && !b.is_nan());
        prop_assert_eq!(el.decode(el.encode(a)), a);
    }
}
