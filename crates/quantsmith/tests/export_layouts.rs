//! The directory layouts (compressed-tensors, GPTQ, fake-quant) written from a tiny Llama whose
//! tensors are quantized here directly, then read back:
//!
//! * by quantsmith (`ModelFile::open`): every weight must equal what the exporter was given,
//!   dequantized (`QuantTensor::dequantize`, or the quantization of plain data), bit for bit,
//!   with the packed parts hidden;
//! * by the reference Python libraries (`python_libraries_read_the_same_weights`, in a venv
//!   made under target/pyenv/ by tests/common/pyenv.rs): compressed-tensors must decompress
//!   every compressed-tensors module to the same weights (compared at the dtype it returns),
//!   an independent numpy decoder of AutoGPTQ's layout must agree on the GPTQ directories, and
//!   transformers must load every config.json (and the compressed-tensors models themselves).
//!   The venv holds torch (about 5.6 GB from PyPI with its CUDA libraries; the first run
//!   installs it, 2-3 minutes on a fast link); set `QUANTSMITH_SKIP_TORCH_TESTS=1` to skip
//!   that one test (it says so on stderr).

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use quantsmith::export::hf_dir::{self, HfDirWriter, StDtype};
use quantsmith::export::{self, ExportModel, QuantTensor, Storage, TensorData};
use quantsmith::io::ModelFile;
use serde_json::json;

/// Pinned reference packages for the Python checker.
const PY_PACKAGES: &[&str] = &["compressed-tensors==0.20.1", "transformers==5.24.0", "torch==2.15.0"];

const D: usize = 64;
const KV: usize = 32;
const FF: usize = 128;
const VOCAB: usize = 64;

/// (canonical name, Hugging Face name, shape) of a one-block Llama.
fn layout() -> Vec<(&'static str, &'static str, Vec<usize>)> {
    vec![
        ("token_embd.weight", "model.embed_tokens.weight", vec![VOCAB, D]),
        ("blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight", vec![D]),
        ("blk.0.attn_q.weight", "model.layers.0.self_attn.q_proj.weight", vec![D, D]),
        ("blk.0.attn_k.weight", "model.layers.0.self_attn.k_proj.weight", vec![KV, D]),
        ("blk.0.attn_v.weight", "model.layers.0.self_attn.v_proj.weight", vec![KV, D]),
        ("blk.0.attn_output.weight", "model.layers.0.self_attn.o_proj.weight", vec![D, D]),
        ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight", vec![D]),
        ("blk.0.ffn_gate.weight", "model.layers.0.mlp.gate_proj.weight", vec![FF, D]),
        ("blk.0.ffn_up.weight", "model.layers.0.mlp.up_proj.weight", vec![FF, D]),
        ("blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight", vec![D, FF]),
        ("output_norm.weight", "model.norm.weight", vec![D]),
        ("output.weight", "lm_head.weight", vec![VOCAB, D]),
    ]
}

fn hf_config() -> serde_json::Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": D,
        "intermediate_size": FF,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "num_hidden_layers": 1,
        "vocab_size": VOCAB,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "bos_token_id": 1,
        "eos_token_id": 2,
    })
}

/// Deterministic values in ±scale (xorshift).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A tensor of the tiny model stored as `spec` (a format, a ggml type, or f32/f16/bf16),
/// quantized here as the solver would hand it over.
fn tensor(i: usize, canonical: &str, shape: &[usize], spec: &str) -> QuantTensor {
    let n: usize = shape.iter().product();
    let cols = *shape.last().unwrap();
    let rows = n / cols;
    let mut data = values(n, i as u64 + 7, 0.6);
    let storage = match spec {
        "f32" => Storage::Ggml(quantsmith::formats::ggml::GgmlType::F32),
        "f16" => Storage::Ggml(quantsmith::formats::ggml::GgmlType::F16),
        "bf16" => Storage::Ggml(quantsmith::formats::ggml::GgmlType::Bf16),
        s => Storage::parse(s).unwrap(),
    };
    // NVFP4 with a power-of-two tensor scale: absmax 2688 · 2^-12 makes amax / (6 · 448)
    // exactly 2^-12, so every reader's arithmetic is exact (see compressed_tensors.rs).
    if spec == "nvfp4" {
        data[5] = 2688.0 / 4096.0;
    }
    let data_of = match &storage {
        Storage::Ggml(t) if t.block_size() == 1 => {
            let dt = hf_dir::FloatDtype::of_ggml(*t).unwrap();
            let rounded = dt.encode(&data);
            let v: Vec<f32> = match dt {
                hf_dir::FloatDtype::F32 => data.clone(),
                hf_dir::FloatDtype::F16 => {
                    rounded.chunks(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
                hf_dir::FloatDtype::Bf16 => {
                    rounded.chunks(2).map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
                }
            };
            TensorData::Float(v)
        }
        Storage::Ggml(t) => TensorData::Ggml(quantsmith::formats::ggml::quantize(*t, &data, cols, None).unwrap()),
        Storage::Format(f) => TensorData::Codes(f.quantize(&data, rows, cols, None).unwrap()),
    };
    QuantTensor { name: canonical.to_string(), shape: shape.to_vec(), storage, data: data_of }
}

/// The tiny model with per-tensor specs (`None`: f32).
fn model(specs: &BTreeMap<&str, &str>) -> (ExportModel, Vec<QuantTensor>) {
    let mut m = ExportModel {
        hf_config: hf_config(),
        side_files: vec![("tokenizer_config.json".into(), b"{\"model_max_length\": 128}\n".to_vec())],
        recipe: json!({"test": "export_layouts"}),
        ..Default::default()
    };
    let mut ts = Vec::new();
    for (i, (c, hf, shape)) in layout().into_iter().enumerate() {
        m.hf_names.insert(c.to_string(), hf.to_string());
        ts.push(tensor(i, c, &shape, specs.get(c).copied().unwrap_or("f32")));
    }
    (m, ts)
}

/// What the runtime computes with, per Hugging Face name.
fn expected(m: &ExportModel, ts: &[QuantTensor]) -> BTreeMap<String, (Vec<usize>, Vec<f32>)> {
    ts.iter().map(|t| (m.hf_names[&t.name].clone(), (t.shape.clone(), hf_dir::runtime_values(t).unwrap()))).collect()
}

/// One export case: a layout, a recipe, and what the Python checker should expect.
struct Case {
    name: &'static str,
    layout: &'static str,
    specs: Vec<(&'static str, &'static str)>,
    max_shard: u64,
}

fn linears() -> [&'static str; 7] {
    [
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.attn_v.weight",
        "blk.0.attn_output.weight",
        "blk.0.ffn_gate.weight",
        "blk.0.ffn_up.weight",
        "blk.0.ffn_down.weight",
    ]
}

fn all_linears(spec: &'static str) -> Vec<(&'static str, &'static str)> {
    linears().into_iter().map(|l| (l, spec)).collect()
}

fn cases() -> Vec<Case> {
    let mut v = vec![
        Case { name: "ct-w4a16", layout: "compressed-tensors", specs: all_linears("int4:g32"), max_shard: 0 },
        Case {
            name: "ct-int-mixed",
            layout: "compressed-tensors",
            specs: vec![
                ("blk.0.attn_q.weight", "int4:g32:restricted"),
                ("blk.0.attn_k.weight", "int6:g32"),
                ("blk.0.attn_v.weight", "int8"),
                ("blk.0.attn_output.weight", "int3:g64"),
                ("blk.0.ffn_gate.weight", "int2:g16:scale=f16"),
                ("blk.0.ffn_up.weight", "int7:ch:scale=bf16"),
                ("blk.0.ffn_down.weight", "ternary:g32"),
                ("output.weight", "int5:g32"),
                ("token_embd.weight", "bf16"),
                ("output_norm.weight", "f16"),
            ],
            max_shard: 12_000,
        },
        Case {
            name: "ct-int-asym",
            layout: "compressed-tensors",
            specs: vec![
                ("blk.0.attn_q.weight", "int4:g32:asym"),
                ("blk.0.attn_k.weight", "int4:g32:asym"),
                ("blk.0.attn_v.weight", "uint3:g16"),
                ("blk.0.ffn_up.weight", "uint8:ch:scale=bf16"),
                ("blk.0.ffn_down.weight", "int2:g64:asym:scale=f16"),
            ],
            max_shard: 0,
        },
        Case { name: "ct-fp8", layout: "compressed-tensors", specs: all_linears("fp8_e4m3"), max_shard: 0 },
        Case {
            name: "ct-fp8-tensor",
            layout: "compressed-tensors",
            specs: all_linears("fp8_e4m3:t:scale=f16"),
            max_shard: 0,
        },
        Case { name: "ct-nvfp4", layout: "compressed-tensors", specs: all_linears("nvfp4"), max_shard: 0 },
        Case { name: "ct-mxfp4", layout: "compressed-tensors", specs: all_linears("mxfp4"), max_shard: 0 },
        Case {
            name: "ct-mixed",
            layout: "compressed-tensors",
            specs: vec![
                ("blk.0.attn_q.weight", "nvfp4"),
                ("blk.0.attn_k.weight", "nvfp4"),
                ("blk.0.attn_v.weight", "nvfp4"),
                ("blk.0.attn_output.weight", "fp8_e4m3"),
                ("blk.0.ffn_gate.weight", "int4:g32"),
                ("blk.0.ffn_up.weight", "int4:g32"),
                ("blk.0.ffn_down.weight", "mxfp4"),
            ],
            max_shard: 10_000,
        },
        Case { name: "gptq-4bit", layout: "gptq", specs: all_linears("int4:g32:scale=f16"), max_shard: 0 },
        Case { name: "gptq-4bit-asym", layout: "gptq", specs: all_linears("int4:g16:asym:scale=f16"), max_shard: 0 },
        Case { name: "gptq-3bit", layout: "gptq", specs: all_linears("int3:g32:scale=f16"), max_shard: 0 },
        Case {
            name: "gptq-2bit-asym-v2",
            layout: "gptq-v2",
            specs: all_linears("int2:g32:asym:scale=f16"),
            max_shard: 0,
        },
        Case {
            name: "gptq-8bit-channel-lm-head",
            layout: "gptq",
            specs: {
                let mut s = all_linears("int8:ch:scale=f16");
                s.push(("output.weight", "int8:ch:scale=f16"));
                s
            },
            max_shard: 0,
        },
        Case {
            name: "fake-quant",
            layout: "fake-quant",
            specs: vec![
                ("blk.0.attn_q.weight", "q4_0"),
                ("blk.0.attn_k.weight", "nf4"),
                ("blk.0.attn_v.weight", "bitmod4:g32"),
                ("blk.0.attn_output.weight", "mxfp6_e2m3"),
                ("blk.0.ffn_gate.weight", "int4:g32:dq"),
                ("blk.0.ffn_up.weight", "nvfp4"),
                ("blk.0.ffn_down.weight", "q8_0"),
                ("output.weight", "fp4:g64"),
            ],
            max_shard: 0,
        },
    ];
    // The generic NVFP4 case: a tensor scale that is not a power of two.
    v.push(Case { name: "ct-nvfp4-generic", layout: "compressed-tensors", specs: all_linears("nvfp4"), max_shard: 0 });
    v
}

/// Writes every case under `root`: `<case>/` (the model) and `<case>.expected/` (the weights
/// the runtime should compute with, f32 under Hugging Face names); returns them.
fn write_cases(root: &Path) -> Vec<(String, PathBuf, BTreeMap<String, (Vec<usize>, Vec<f32>)>)> {
    if root.exists() {
        std::fs::remove_dir_all(root).unwrap();
    }
    std::fs::create_dir_all(root).unwrap();
    let mut out = Vec::new();
    for case in cases() {
        let specs: BTreeMap<&str, &str> = case.specs.iter().copied().collect();
        let (mut m, mut ts) = model(&specs);
        if case.name == "ct-nvfp4-generic" {
            // Re-quantize with an absmax that gives a tensor scale off the powers of two.
            for t in ts.iter_mut().filter(|t| matches!(t.storage, Storage::Format(_))) {
                let (rows, cols) = t.matrix();
                let mut data = values(rows * cols, 99, 0.6);
                data[3] = 0.61234;
                let Storage::Format(f) = &t.storage else { unreachable!() };
                let q = f.quantize(&data, rows, cols, None).unwrap();
                assert!((q.tensor_scale.log2()).fract() != 0.0);
                t.data = TensorData::Codes(q);
            }
        }
        m.max_shard_bytes = case.max_shard;
        let exp = expected(&m, &ts);
        let dir = root.join(case.name);
        let ex = export::exporter(case.layout).unwrap();
        for t in &ts {
            ex.check(&t.name, &t.shape, &t.storage).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        }
        let bytes = ex.write(&dir, &m, &mut ts.into_iter().map(Ok)).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert!(bytes > 0);
        // The reference weights for the Python checker.
        let mut w = HfDirWriter::create(&root.join(format!("{}.expected", case.name)), false, 0).unwrap();
        for (name, (shape, v)) in &exp {
            w.add(name, StDtype::F32, shape, &hf_dir::f32_bytes(v)).unwrap();
        }
        w.finish(&json!({"layout": case.layout}), None, &[], &[]).unwrap();
        out.push((case.name.to_string(), dir, exp));
    }
    out
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| if x.to_bits() == y.to_bits() { 0.0 } else { (x - y).abs().max(f32::MIN_POSITIVE) })
        .fold(0.0, f32::max)
}

fn root(name: &str) -> PathBuf {
    common::pyenv::target_dir().join("export-layouts").join(name)
}

#[test]
fn quantsmith_reads_back_every_layout_exactly() {
    let cases = write_cases(&root("readback"));
    for (name, dir, exp) in &cases {
        let mf = ModelFile::open(dir).unwrap_or_else(|e| panic!("{name}: {e}"));
        let src = mf.source();
        let listed: Vec<String> = src.tensors().into_iter().map(|t| t.name).collect();
        let mut sorted = listed.clone();
        sorted.sort();
        let want: Vec<String> = exp.keys().cloned().collect();
        assert_eq!(sorted, want, "{name}: tensors seen through quantsmith (packed parts hidden)");
        for (hf, (shape, v)) in exp {
            let info = src.info(hf).unwrap();
            assert_eq!(&info.shape, shape, "{name}: {hf}");
            let got = src.load_f32(hf).unwrap_or_else(|e| panic!("{name}: {hf}: {e}"));
            assert_eq!(max_abs_diff(&got, v), 0.0, "{name}: {hf} differs from the dequantized tensor");
        }
        let inv = mf.inventory().unwrap();
        assert_eq!(inv.architecture, "llama");
        assert!(inv.other.is_empty(), "{name}: packed parts listed as other tensors: {:?}", inv.other);
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
        assert_eq!(cfg["quantsmith"]["recipe"], json!({"test": "export_layouts"}), "{name}");
        assert!(dir.join("tokenizer_config.json").exists());
        if name.starts_with("ct-") || name.starts_with("gptq") {
            assert!(
                inv.format.contains(cfg["quantization_config"]["quant_method"].as_str().unwrap()),
                "{}",
                inv.format
            );
            // Quantized weights cost what their parts take.
            let q = inv.tensors.iter().find(|t| t.name == "model.layers.0.mlp.up_proj.weight").unwrap();
            assert!(q.n_bytes < FF * D * 2, "{name}: {} bytes", q.n_bytes);
        }
    }
    let by_name = |n: &str| cases.iter().find(|c| c.0 == n).unwrap().1.clone();
    // Sharded outputs have an index; the NVFP4 tensor scale travels in its shard's metadata.
    assert!(by_name("ct-mixed").join("model.safetensors.index.json").exists());
    assert!(by_name("ct-int-mixed").join("model.safetensors.index.json").exists());
    let mixed: serde_json::Value =
        serde_json::from_slice(&std::fs::read(by_name("ct-mixed").join("config.json")).unwrap()).unwrap();
    let qc = &mixed["quantization_config"];
    assert_eq!(qc["format"], json!("mixed-precision"));
    assert_eq!(qc["config_groups"].as_object().unwrap().len(), 4);
    assert_eq!(qc["ignore"], json!(["lm_head"]));
    assert_eq!(
        qc["config_groups"]["group_0"]["targets"],
        json!([
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.k_proj",
            "model.layers.0.self_attn.v_proj"
        ])
    );
    let gptq: serde_json::Value =
        serde_json::from_slice(&std::fs::read(by_name("gptq-3bit").join("quantize_config.json")).unwrap()).unwrap();
    assert_eq!(
        (gptq["bits"].as_u64(), gptq["group_size"].as_i64(), gptq["checkpoint_format"].as_str()),
        (Some(3), Some(32), Some("gptq"))
    );
    let fq: serde_json::Value =
        serde_json::from_slice(&std::fs::read(by_name("fake-quant").join("config.json")).unwrap()).unwrap();
    assert!(fq.get("quantization_config").is_none());
    assert_eq!(fq["quantsmith"]["formats"]["model.layers.0.self_attn.q_proj.weight"], json!("q4_0"));
}

#[test]
fn layouts_refuse_what_they_cannot_store() {
    let ct = export::exporter("compressed-tensors").unwrap();
    let e = ct.check("blk.0.attn_q.weight", &[64, 64], &Storage::parse("q4_k").unwrap()).unwrap_err().to_string();
    assert!(e.contains("int2..int8") && e.contains("fp8_e4m3") && e.contains("nvfp4"), "{e}");
    let gptq = export::exporter("gptq").unwrap();
    let e = gptq.check("blk.0.attn_q.weight", &[64, 64], &Storage::parse("int4:g32").unwrap()).unwrap_err().to_string();
    assert!(e.contains("scale=f16"), "{e}");
    let e = export::exporter("onnx").err().unwrap().to_string();
    assert!(e.contains("compressed-tensors") && e.contains("gptq") && e.contains("fake-quant"), "{e}");
    assert!(export::exporter("fake-quant:bf16").is_ok());

    // GPTQ: one format per model.
    let tmp = tempfile::tempdir().unwrap();
    let mut specs: BTreeMap<&str, &str> = all_linears("int4:g32:scale=f16").into_iter().collect();
    specs.insert("blk.0.ffn_up.weight", "int8:g32:scale=f16");
    let (m, ts) = model(&specs);
    let e = gptq.write(&tmp.path().join("g"), &m, &mut ts.into_iter().map(Ok)).unwrap_err().to_string();
    assert!(e.contains("one format"), "{e}");
    assert!(!tmp.path().join("g").exists());
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0, "temporary directory left behind");

    // GPTQ v1 cannot store a zero point of 0 (an all-positive asymmetric group); v2 can.
    let specs: BTreeMap<&str, &str> = all_linears("int4:g32:asym:scale=f16").into_iter().collect();
    let (m, mut ts) = model(&specs);
    for t in ts.iter_mut().filter(|t| t.name == "blk.0.attn_q.weight") {
        let Storage::Format(f) = &t.storage else { unreachable!() };
        let data: Vec<f32> = values(D * D, 3, 0.6).into_iter().map(f32::abs).collect();
        t.data = TensorData::Codes(f.quantize(&data, D, D, None).unwrap());
    }
    let e = gptq.write(&tmp.path().join("g1"), &m, &mut ts.clone().into_iter().map(Ok)).unwrap_err().to_string();
    assert!(e.contains("zero point 0") && e.contains("gptq-v2"), "{e}");
    let v2 = export::exporter("gptq-v2").unwrap();
    v2.write(&tmp.path().join("g2"), &m, &mut ts.clone().into_iter().map(Ok)).unwrap();
    let back = ModelFile::open(&tmp.path().join("g2")).unwrap();
    let q = ts.iter().find(|t| t.name == "blk.0.attn_q.weight").unwrap();
    let got = back.source().load_f32("model.layers.0.self_attn.q_proj.weight").unwrap();
    assert_eq!(max_abs_diff(&got, &q.dequantize().unwrap()), 0.0);

    // An existing non-empty directory needs force; force replaces it.
    let dir = tmp.path().join("g2");
    let e = v2.write(&dir, &m, &mut ts.clone().into_iter().map(Ok)).unwrap_err().to_string();
    assert!(e.contains("--force"), "{e}");
    let forced = ExportModel { force: true, ..m.clone() };
    v2.write(&dir, &forced, &mut ts.into_iter().map(Ok)).unwrap();
    assert!(ModelFile::open(&dir).is_ok());
}

#[test]
fn python_libraries_read_the_same_weights() {
    if std::env::var_os("QUANTSMITH_SKIP_TORCH_TESTS").is_some() {
        eprintln!("QUANTSMITH_SKIP_TORCH_TESTS is set: compressed-tensors/transformers cross-check NOT run");
        return;
    }
    let root = root("python");
    write_cases(&root);
    let python = common::pyenv::python_with(PY_PACKAGES);
    let script = common::repo().join("crates/quantsmith/tests/py/check_export_layouts.py");
    let out = std::process::Command::new(&python)
        .arg(&script)
        .arg(&root)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .env("TOKENIZERS_PARALLELISM", "false")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}");
    assert!(out.status.success(), "{} failed:\n{stdout}\n{stderr}", script.display());
    assert!(stdout.contains("ALL OK"), "{stdout}");
}
