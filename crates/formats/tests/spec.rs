//! Spec strings: every listed format parses, canonical specs parse back to the same format,
//! errors point at the offending character.

use formats::{spec, Clip, Format, FormatError, Granularity, Rounding, ScaleStorage};

fn spec_err(s: &str) -> (usize, String) {
    match Format::parse(s) {
        Err(FormatError::Spec { pos, msg, .. }) => (pos, msg),
        Err(e) => panic!("{s}: expected a spec error, got {e}"),
        Ok(f) => panic!("{s}: expected a spec error, parsed as {}", f.spec()),
    }
}

#[test]
fn every_listed_spec_parses_and_round_trips() {
    for s in spec::LISTED {
        let f = Format::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let canon = f.spec();
        let g = Format::parse(&canon).unwrap_or_else(|e| panic!("{s} -> {canon}: {e}"));
        assert_eq!(f, g, "{s} -> {canon} parses to a different format");
        assert!(!f.describe().is_empty());
        let bpw = f.bits_per_weight(4096).unwrap_or_else(|e| panic!("{s}: {e}"));
        assert!(bpw > 0.9 && bpw <= 33.0, "{s}: {bpw} bits per weight");
    }
}

#[test]
fn settings_round_trip() {
    for s in [
        "int4:g128:asym",
        "int3:g64:clip=mse",
        "e3m2:g32:scale=e8m0",
        "int4:g32:round=sr:seed=7",
        "e4m3:ieee:bias=8:g64",
        "int4:g64:scale=u6:sg=4",
        "nf4:dq",
        "bitmod4:g64:choose=tensor",
        "fp6:g32",
        "pow4:alpha=2:g32",
        "int8:t",
        "mxfp4:g64",
        "nvfp4:clip=mse",
        "int5:restricted:g32",
        "fixed8.4:g32",
    ] {
        let f = Format::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        let g = Format::parse(&f.spec()).unwrap_or_else(|e| panic!("{s} -> {}: {e}", f.spec()));
        assert_eq!(f, g, "{s} -> {}", f.spec());
    }
}

#[test]
fn parsed_settings() {
    let f = Format::parse("int4:g128:asym").unwrap();
    assert_eq!(f.granularity, Granularity::Group(128));
    assert!(f.asym);
    assert_eq!(f.spec(), "uint4:g128");
    let f = Format::parse("e3m2:g32:scale=e8m0").unwrap();
    assert_eq!(f.scale, ScaleStorage::E8m0);
    let f = Format::parse("int3:g64:clip=mse").unwrap();
    assert_eq!(f.clip, Clip::Mse);
    let f = Format::parse("int4:round=sr:seed=9").unwrap();
    assert_eq!(f.rounding, Rounding::Stochastic { seed: 9 });
    assert_eq!(Format::parse("int4").unwrap().granularity, Granularity::Channel);
    assert_eq!(Format::parse("int4").unwrap().raw_if_bare().granularity, Granularity::None);
    assert_eq!(Format::parse("mxfp4").unwrap().raw_if_bare().granularity, Granularity::Group(32));
    assert_eq!(Format::parse("bf16").unwrap().granularity, Granularity::None);
    assert_eq!(Format::parse("fp8_e4m3").unwrap(), Format::parse("e4m3").unwrap());
    assert_eq!(Format::parse("fp4_e2m1").unwrap(), Format::parse("e2m1").unwrap());
    assert_eq!(Format::parse("q4_k").unwrap().ggml, Some(formats::ggml::GgmlType::Q4K));
}

#[test]
fn errors_name_the_character() {
    assert_eq!(spec_err("int4:g12x").0, 7, "after the g");
    assert_eq!(spec_err("int4:foo").0, 6);
    assert_eq!(spec_err("int9").0, 4);
    assert_eq!(spec_err("e4").0, 3);
    assert_eq!(spec_err("float4").0, 1);
    assert_eq!(spec_err("int4:scale=f8").0, 12);
    assert_eq!(spec_err("int4:g128:").0, 11);
    assert_eq!(spec_err("nf4:asym").0, 5);
    assert_eq!(spec_err("q4_k:g32").0, 6);
    assert_eq!(spec_err("int4:seed=3").0, 6, "seed without round=sr");
    assert_eq!(spec_err("Int4").0, 1);
    assert!(spec_err("").1.contains("empty"));
    assert!(spec_err("e4").1.contains("mantissa"));
    assert!(spec_err("int4:scale=f8").1.contains("e8m0"));
    // The message names the expected alternatives.
    let msg = Format::parse("int4:foo").unwrap_err().to_string();
    assert!(msg.contains("at character 6") && msg.contains("gN"), "{msg}");
}

#[test]
fn invalid_combinations_are_rejected() {
    assert!(Format::parse("e9m2").is_err());
    assert!(Format::parse("e1m0:ieee").is_err());
    assert!(Format::parse("e4m3:bias=300").is_err());
    assert!(Format::parse("uint4:scale=e8m0").is_err());
    assert!(Format::parse("int4:alpha=2").is_err());
    assert!(Format::parse("int4:sg=4").is_err());
    assert!(Format::parse("int4:choose=group").is_err());
    assert!(Format::parse("int4:g0").is_err());
}

#[test]
fn group_size_must_divide_the_row() {
    let f = Format::parse("int4:g128").unwrap();
    let err = f.quantize(&vec![0.5; 200], 2, 100, None).unwrap_err().to_string();
    assert!(err.contains("group size 128") && err.contains("100"), "{err}");
    assert!(f.bits_per_weight(100).is_err());
    assert!(Format::parse("q4_k").unwrap().bits_per_weight(100).is_err());
}

#[test]
fn descriptions_print_large_maxima_in_scientific_notation() {
    let d = Format::parse("bf16").unwrap().describe();
    assert!(d.contains("max 3.3895314e38"), "{d}");
    assert!(!d.contains("338953138925153547590470800371487866880"), "{d}");
    let d = Format::parse("fp8_e4m3").unwrap().describe();
    assert!(d.contains("max 448"), "{d}");
    let d = Format::parse("fp8_e5m2").unwrap().describe();
    assert!(d.contains("max 57344"), "{d}");
}

/// Found by the `format_spec` fuzz target: a per-group choice among grids without groups
/// (a bare element, or one scale per tensor) indexed an empty choice list on dequantization.
#[test]
fn grid_choices_without_groups_round_trip() {
    let data: Vec<f32> = (0..512).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 250.0).collect();
    for spec in [
        "bitmod4",
        "bitmod3",
        "bitmod4:t",
        "bitmod3:ch",
        "fp4",
        "fp4:t",
        "fp6:ch",
        "bitmod4:choose=group",
        "fp4:choose=group:t",
    ] {
        let Ok(f) = formats::spec::parse(spec) else { continue };
        let r = std::panic::catch_unwind(|| {
            let q = f.quantize(&data, 2, 256, None).unwrap();
            f.dequantize(&q).unwrap()
        });
        assert!(r.is_ok(), "{spec} panicked");
        let d = r.unwrap();
        assert!(d.iter().all(|v| v.is_finite()), "{spec}");
    }
}
