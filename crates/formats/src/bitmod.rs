//! BitMoD's per-group mixture of datatypes (Chen et al., HPCA 2025), as we read the paper:
//! a sign-magnitude FP grid wastes one code on negative zero; BitMoD gives that code a
//! special value, and each group (with its own scale) picks the variant with least error:
//! - 4 bits: E2M1 {0, ±0.5, ±1, ±1.5, ±2, ±3, ±4, ±6} plus one of +5, -5 (extra
//!   resolution) or +8, -8 (extra asymmetry);
//! - 3 bits: E2M0 {0, ±1, ±2, ±4} plus one of +3, -3, +6, -6.
//! The choice costs 2 bits per group. Use `bitmodB:gN` (the format sets `choose=group`).

use crate::lut::Lut;

/// The candidate grids for `bits` (3 or 4; anything else gives the 4-bit set).
pub fn grids(bits: u32) -> Vec<Lut> {
    let (base, extras, tag): (&[f32], [f32; 4], &str) = if bits == 3 {
        (&[0.0, 1.0, 2.0, 4.0], [3.0, -3.0, 6.0, -6.0], "bitmod3")
    } else {
        (&[0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], [5.0, -5.0, 8.0, -8.0], "bitmod4")
    };
    extras
        .iter()
        .map(|&x| {
            let mut v: Vec<f32> = base.iter().flat_map(|&b| if b == 0.0 { vec![0.0] } else { vec![b, -b] }).collect();
            v.push(x);
            let name = format!("{tag}_{}{}", if x < 0.0 { "m" } else { "p" }, x.abs());
            Lut::new(name, v).expect("BitMoD grids have distinct finite values")
        })
        .collect()
}
