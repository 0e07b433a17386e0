//! The per-tensor types of llama.cpp's named presets.
//!
//! SmolLM2-135M: every preset, with and without an imatrix, against what `llama-quantize`
//! (llama.cpp 0c1e570) actually wrote for its dithered f32 base (testdata extracted from the
//! repository's data/golden by tools/preset_types_from_golden.py). Its 576-wide rows exercise
//! the row-length fallbacks; a synthetic 512-wide model, with expectations derived by hand from
//! llama.cpp's rules, exercises the paths where k-quants fit.

use std::collections::BTreeMap;
use std::path::PathBuf;

use formats::ggml::GgmlType;
use quantsmith::io::open_model;
use quantsmith::quantize::preset::{choose_types, file_type_name, Preset, PresetModelInfo, TensorChoice};
use quantsmith::tensor::{DType, TensorInfo};

/// Type names as the golden file writes them (llama.cpp's upper-case spelling).
fn golden_name(t: GgmlType) -> String {
    t.name().to_ascii_uppercase()
}

fn as_map(choices: &[TensorChoice]) -> BTreeMap<String, GgmlType> {
    choices.iter().map(|c| (c.name.clone(), c.ggml_type)).collect()
}

#[test]
fn smollm2_types_match_llama_cpp_for_every_preset() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/llamacpp_preset_types.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let golden: serde_json::Value = serde_json::from_str(&text).expect("golden JSON parses");
    let presets = golden["presets"].as_object().expect("`presets` object");
    assert!(presets.len() >= 14, "golden file lists {} presets", presets.len());

    let file = open_model("smollm2").expect("fetch smollm2");
    let quantsmith::io::ModelFile::Gguf(g) = &file else { panic!("smollm2 is a GGUF file") };
    // llama.cpp quantized the dithered base, which stores every tensor as f32 with the same
    // names and shapes as the shipped Q4_1 file; tensors it does not quantize keep f32.
    let tensors: Vec<TensorInfo> = file
        .source()
        .tensors()
        .into_iter()
        .map(|t| TensorInfo { n_bytes: t.numel() * 4, dtype: DType::Ggml(GgmlType::F32), ..t })
        .collect();
    assert_eq!(tensors.len(), 272);
    let info = PresetModelInfo::from_gguf(g).expect("model facts");
    assert_eq!((info.n_layer, info.n_head, info.n_head_kv, info.n_expert, info.n_gqa()), (30, 9, 3, 0, 3));
    assert!(!info.is_70b);

    let mut checked = 0;
    for (name, entry) in presets {
        let preset = Preset::parse(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(preset.name(), name);
        assert_eq!(Some(preset.file_type() as u64), entry["file_type"].as_u64(), "{name}: file type");
        assert_ne!(file_type_name(preset.file_type()), "unknown, may not work");
        for (mode, imatrix) in [("plain", false), ("imatrix", true)] {
            let want = entry[mode].as_object().unwrap_or_else(|| panic!("{name}.{mode}: types object"));
            let got = as_map(
                &choose_types(preset, &tensors, &info, imatrix).unwrap_or_else(|e| panic!("{name} {mode}: {e}")),
            );
            assert_eq!(got.len(), want.len(), "{name} {mode}: tensor count");
            let mut diffs = Vec::new();
            for (tensor, ty) in want {
                let want_ty = ty.as_str().expect("type name");
                match got.get(tensor) {
                    Some(t) if golden_name(*t) == want_ty => checked += 1,
                    Some(t) => diffs.push(format!("{tensor}: llama.cpp {want_ty}, ours {}", golden_name(*t))),
                    None => diffs.push(format!("{tensor}: missing from our choice")),
                }
            }
            assert!(diffs.is_empty(), "{name} {mode}: {} mismatches:\n{}", diffs.len(), diffs.join("\n"));
        }
    }
    assert_eq!(checked, presets.len() * 2 * 272);
}

/// A synthetic Llama-shaped model whose rows (512, 1536) are multiples of 256.
struct Synth {
    n_layer: usize,
    tied: bool,
}

impl Synth {
    fn tensors(&self) -> Vec<TensorInfo> {
        let t = |name: String, shape: Vec<usize>| TensorInfo {
            n_bytes: shape.iter().product::<usize>() * 4,
            name,
            shape,
            dtype: DType::F32,
        };
        let mut v = vec![t("token_embd.weight".into(), vec![1000, 512]), t("output_norm.weight".into(), vec![512])];
        if !self.tied {
            v.push(t("output.weight".into(), vec![1000, 512]));
        }
        // Listed from the last layer down: the rules must count in llama.cpp's loader order
        // (by layer number), not in file order.
        for i in (0..self.n_layer).rev() {
            let b = |s: &str| format!("blk.{i}.{s}");
            v.push(t(b("attn_norm.weight"), vec![512]));
            v.push(t(b("attn_q.weight"), vec![512, 512]));
            v.push(t(b("attn_k.weight"), vec![128, 512]));
            v.push(t(b("attn_v.weight"), vec![128, 512]));
            v.push(t(b("attn_output.weight"), vec![512, 512]));
            v.push(t(b("ffn_norm.weight"), vec![512]));
            v.push(t(b("ffn_gate.weight"), vec![1536, 512]));
            v.push(t(b("ffn_up.weight"), vec![1536, 512]));
            v.push(t(b("ffn_down.weight"), vec![512, 1536]));
        }
        v
    }
}

/// Expected types: per-role defaults plus per-layer values for attn_v and ffn_down.
struct Expect {
    base: GgmlType,
    output: GgmlType,
    token_embd: GgmlType,
    attn_output: GgmlType,
    attn_k: GgmlType,
    attn_v: Box<dyn Fn(usize) -> GgmlType>,
    ffn_down: Box<dyn Fn(usize) -> GgmlType>,
}

fn check(preset: Preset, synth: &Synth, info: &PresetModelInfo, imatrix: bool, e: &Expect) {
    let tensors = synth.tensors();
    let choices = choose_types(preset, &tensors, info, imatrix).unwrap_or_else(|err| panic!("{preset}: {err}"));
    // Same order as the input.
    let names: Vec<&str> = choices.iter().map(|c| c.name.as_str()).collect();
    let input: Vec<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, input);
    for c in &choices {
        let n = c.name.as_str();
        let layer = n.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|s| s.parse::<usize>().ok());
        let want = if n.ends_with("_norm.weight") {
            GgmlType::F32
        } else if n == "output.weight" {
            e.output
        } else if n == "token_embd.weight" {
            e.token_embd
        } else if n.ends_with("attn_v.weight") {
            (e.attn_v)(layer.expect("layer"))
        } else if n.ends_with("ffn_down.weight") {
            (e.ffn_down)(layer.expect("layer"))
        } else if n.ends_with("attn_output.weight") {
            e.attn_output
        } else if n.ends_with("attn_k.weight") {
            e.attn_k
        } else {
            e.base
        };
        assert_eq!(c.ggml_type, want, "{preset} imatrix={imatrix}: {n}");
        assert_eq!(c.quantizable, !n.ends_with("_norm.weight"), "{n}");
        assert_eq!(c.fallback_from, None, "{n}: 512/1536-wide rows need no fallback");
    }
}

fn simple(base: GgmlType, output: GgmlType) -> Expect {
    Expect {
        base,
        output,
        token_embd: base,
        attn_output: base,
        attn_k: base,
        attn_v: Box::new(move |_| base),
        ffn_down: Box::new(move |_| base),
    }
}

// 16 layers: n/8 = 2, 7n/8 = 14, n/16 = 1. use_more_bits: layers 0, 1, 14, 15 and
// 2 + 3k + 2 = 4, 7, 10, 13.
const MORE_BITS_16: [usize; 8] = [0, 1, 4, 7, 10, 13, 14, 15];

fn gqa4() -> PresetModelInfo {
    PresetModelInfo::dense("llama", 16, 8, 2)
}

#[test]
fn k_quants_where_rows_fit() {
    use GgmlType as T;
    let synth = Synth { n_layer: 16, tied: false };
    let info = gqa4();
    assert_eq!(info.n_gqa(), 4);
    for imatrix in [false, true] {
        let more = |hi: T, lo: T| move |i: usize| if MORE_BITS_16.contains(&i) { hi } else { lo };
        check(
            Preset::Q4_K_M,
            &synth,
            &info,
            imatrix,
            &Expect {
                attn_v: Box::new(more(T::Q6K, T::Q4K)),
                ffn_down: Box::new(more(T::Q6K, T::Q4K)),
                ..simple(T::Q4K, T::Q6K)
            },
        );
        check(
            Preset::Q5_K_M,
            &synth,
            &info,
            imatrix,
            &Expect {
                attn_v: Box::new(more(T::Q6K, T::Q5K)),
                ffn_down: Box::new(more(T::Q6K, T::Q5K)),
                ..simple(T::Q5K, T::Q6K)
            },
        );
        check(
            Preset::Q4_K_S,
            &synth,
            &info,
            imatrix,
            &Expect {
                attn_v: Box::new(|i| if i < 4 { T::Q5K } else { T::Q4K }),
                ffn_down: Box::new(|i| if i < 2 { T::Q5K } else { T::Q4K }),
                ..simple(T::Q4K, T::Q6K)
            },
        );
        check(
            Preset::Q3_K_M,
            &synth,
            &info,
            imatrix,
            &Expect {
                attn_output: T::Q4K,
                attn_v: Box::new(|i| if i < 2 { T::Q5K } else { T::Q4K }),
                ffn_down: Box::new(|i| if i < 1 { T::Q5K } else { T::Q4K }),
                ..simple(T::Q3K, T::Q6K)
            },
        );
        check(
            Preset::Q3_K_L,
            &synth,
            &info,
            imatrix,
            &Expect {
                attn_output: T::Q5K,
                attn_v: Box::new(|_| T::Q5K),
                ffn_down: Box::new(|_| T::Q5K),
                ..simple(T::Q3K, T::Q6K)
            },
        );
        check(Preset::Q3_K_S, &synth, &info, imatrix, &simple(T::Q3K, T::Q6K));
        // Q2_K with grouped-query attention (factor >= 4) gives attn_v Q4_K.
        check(
            Preset::Q2_K,
            &synth,
            &info,
            imatrix,
            &Expect {
                attn_output: T::Q3K,
                attn_v: Box::new(|_| T::Q4K),
                ffn_down: Box::new(|_| T::Q3K),
                ..simple(T::Q2K, T::Q6K)
            },
        );
        check(Preset::Q5_K_S, &synth, &info, imatrix, &simple(T::Q5K, T::Q6K));
        check(Preset::Q6_K, &synth, &info, imatrix, &simple(T::Q6K, T::Q6K));
        check(Preset::Q8_0, &synth, &info, imatrix, &simple(T::Q8_0, T::Q8_0));
        check(Preset::Q4_1, &synth, &info, imatrix, &simple(T::Q4_1, T::Q6K));
        check(Preset::Q5_1, &synth, &info, imatrix, &simple(T::Q5_1, T::Q6K));
        // IQ4: attn_v Q5_K under GQA >= 4; the first eighth of ffn_down Q5_K only without imatrix.
        for (preset, base) in [(Preset::IQ4_XS, T::Iq4Xs), (Preset::IQ4_NL, T::Iq4Nl)] {
            check(
                preset,
                &synth,
                &info,
                imatrix,
                &Expect {
                    attn_v: Box::new(|_| T::Q5K),
                    ffn_down: Box::new(move |i| if i < 2 && !imatrix { T::Q5K } else { base }),
                    ..simple(base, T::Q6K)
                },
            );
        }
        // Q4_0 / Q5_0: the first eighth of ffn_down moves to Q4_1 / Q5_1 only with an imatrix.
        for (preset, base, guard) in [(Preset::Q4_0, T::Q4_0, T::Q4_1), (Preset::Q5_0, T::Q5_0, T::Q5_1)] {
            check(
                preset,
                &synth,
                &info,
                imatrix,
                &Expect {
                    ffn_down: Box::new(move |i| if i < 2 && imatrix { guard } else { base }),
                    ..simple(base, T::Q6K)
                },
            );
        }
        // Not quantized formats: every 2-D weight takes the type itself, no head rule.
        check(Preset::F16, &synth, &info, imatrix, &simple(T::F16, T::F16));
        check(Preset::BF16, &synth, &info, imatrix, &simple(T::Bf16, T::Bf16));
    }
}

#[test]
fn q2_k_s_needs_an_imatrix() {
    use GgmlType as T;
    let synth = Synth { n_layer: 16, tied: false };
    let err = choose_types(Preset::Q2_K_S, &synth.tensors(), &gqa4(), false).unwrap_err().to_string();
    assert!(err.contains("imatrix"), "{err}");
    check(
        Preset::Q2_K_S,
        &synth,
        &gqa4(),
        true,
        &Expect {
            attn_v: Box::new(|_| T::Q4K),
            ffn_down: Box::new(|i| if i < 2 { T::Q4K } else { T::Q2K }),
            ..simple(T::Q2K, T::Q6K)
        },
    );
}

#[test]
fn tied_embedding_takes_the_head_rule() {
    use GgmlType as T;
    let synth = Synth { n_layer: 16, tied: true };
    let info = gqa4();
    check(Preset::Q4_0, &synth, &info, false, &Expect { token_embd: T::Q6K, ..simple(T::Q4_0, T::Q6K) });
    check(Preset::Q8_0, &synth, &info, false, &simple(T::Q8_0, T::Q8_0));
    // Without GQA >= 4, Q2_K's attn_v is Q3_K.
    let mha = PresetModelInfo::dense("llama", 16, 8, 8);
    check(
        Preset::Q2_K,
        &synth,
        &mha,
        false,
        &Expect {
            token_embd: T::Q6K,
            attn_output: T::Q3K,
            attn_v: Box::new(|_| T::Q3K),
            ffn_down: Box::new(|_| T::Q3K),
            ..simple(T::Q2K, T::Q6K)
        },
    );
}

#[test]
fn falcon_70b_and_moe_rules() {
    use GgmlType as T;
    let synth = Synth { n_layer: 16, tied: false };
    // Falcon: the head is always Q8_0; Q4_K_M's ffn_down is Q6_K / Q5_K / Q4_K by position.
    let falcon = PresetModelInfo::dense("falcon", 16, 8, 2);
    check(
        Preset::Q4_K_M,
        &synth,
        &falcon,
        false,
        &Expect {
            attn_v: Box::new(|i| if MORE_BITS_16.contains(&i) { T::Q6K } else { T::Q4K }),
            ffn_down: Box::new(|i| {
                if i < 1 {
                    T::Q6K
                } else if MORE_BITS_16.contains(&i) {
                    T::Q5K
                } else {
                    T::Q4K
                }
            }),
            ..simple(T::Q4K, T::Q8_0)
        },
    );
    // A 70B-class model lifts Q3_K / Q4_K attn_v to Q5_K.
    assert!(PresetModelInfo::dense("llama", 80, 64, 8).is_70b);
    assert!(!PresetModelInfo::dense("llama", 80, 64, 64).is_70b);
    let big = PresetModelInfo { is_70b: true, ..gqa4() };
    check(
        Preset::Q3_K_M,
        &synth,
        &big,
        false,
        &Expect {
            attn_output: T::Q4K,
            attn_v: Box::new(|_| T::Q5K),
            ffn_down: Box::new(|i| if i < 1 { T::Q5K } else { T::Q4K }),
            ..simple(T::Q3K, T::Q6K)
        },
    );
    // 8 experts: attn_v and attn_k Q8_0, attn_output Q5_K; ffn_down layers come from names.
    let moe = PresetModelInfo { n_expert: 8, ..gqa4() };
    check(
        Preset::Q4_K_M,
        &synth,
        &moe,
        false,
        &Expect {
            attn_output: T::Q5K,
            attn_k: T::Q8_0,
            attn_v: Box::new(|_| T::Q8_0),
            ffn_down: Box::new(|i| if MORE_BITS_16.contains(&i) { T::Q6K } else { T::Q4K }),
            ..simple(T::Q4K, T::Q6K)
        },
    );
    // A MoE FFN tensor whose layer cannot be read is an error naming it.
    let mut tensors = synth.tensors();
    tensors.push(TensorInfo {
        name: "extra.ffn_down.weight".into(),
        shape: vec![512, 1536],
        dtype: DType::F32,
        n_bytes: 512 * 1536 * 4,
    });
    let err = choose_types(Preset::Q4_K_M, &tensors, &moe, false).unwrap_err().to_string();
    assert!(err.contains("extra.ffn_down.weight"), "{err}");
}

#[test]
fn odd_rows_fall_back_and_small_tensors_stay() {
    use GgmlType as T;
    let t = |name: &str, shape: Vec<usize>| TensorInfo {
        n_bytes: shape.iter().product::<usize>() * 4,
        name: name.into(),
        shape,
        dtype: DType::F32,
    };
    let tensors = vec![
        t("token_embd.weight", vec![100, 576]),
        t("blk.0.attn_q.weight", vec![576, 576]),
        t("blk.0.attn_k.weight", vec![64, 100]),
        t("blk.0.ffn_up.weight", vec![1, 576]),
        t("blk.0.ffn_gate_inp.weight", vec![8, 576]),
        t("blk.0.attn_q.bias", vec![4, 576]),
    ];
    let info = PresetModelInfo::dense("llama", 1, 4, 4);
    let got = choose_types(Preset::Q4_K_M, &tensors, &info, false).unwrap();
    let by: BTreeMap<&str, &TensorChoice> = got.iter().map(|c| (c.name.as_str(), c)).collect();
    // Tied head, 576 % 256 != 0: Q8_0 directly (the head rule, not the fallback).
    assert_eq!((by["token_embd.weight"].ggml_type, by["token_embd.weight"].fallback_from), (T::Q8_0, None));
    assert_eq!((by["blk.0.attn_q.weight"].ggml_type, by["blk.0.attn_q.weight"].fallback_from), (T::Q5_0, Some(T::Q4K)));
    // 100-wide rows fit no block: F16.
    assert_eq!((by["blk.0.attn_k.weight"].ggml_type, by["blk.0.attn_k.weight"].fallback_from), (T::F16, Some(T::Q4K)));
    // [1, 576] is 1-D to ggml; the MoE router and biases are never quantized.
    for n in ["blk.0.ffn_up.weight", "blk.0.ffn_gate_inp.weight", "blk.0.attn_q.bias"] {
        assert_eq!((by[n].ggml_type, by[n].quantizable), (T::F32, false), "{n}");
    }
    // Untouched tensors keep their input type, whatever it is.
    let f16 = vec![TensorInfo { dtype: DType::F16, ..t("output_norm.weight", vec![576]) }];
    assert_eq!(choose_types(Preset::Q4_0, &f16, &info, false).unwrap()[0].ggml_type, T::F16);
    // Duplicate names are refused.
    let dup = vec![t("blk.0.attn_q.weight", vec![576, 576]), t("blk.0.attn_q.weight", vec![576, 576])];
    assert!(choose_types(Preset::Q4_0, &dup, &info, false).is_err());
}
