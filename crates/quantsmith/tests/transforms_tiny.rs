//! Rotations, SmoothQuant and AWQ on tiny random decoders (Llama with a tied and an untied
//! head, Qwen2 with q/k/v biases): every rewrite of the unquantized model keeps its logits to
//! 1e-4 relative; activation and KV-cache quantization are recorded in the output and applied
//! when it is loaded; what cannot be carried out is refused before any work.

#[allow(dead_code)]
mod common;
mod tiny;

use std::path::Path;

use quantsmith::arch::load_decoder;
use quantsmith::calib::CalibOptions;
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::io::ModelFile;
use quantsmith::quantize::pipeline::{ImatrixSource, PipelineOptions};
use quantsmith::quantize::preset::Preset;
use quantsmith::quantize::recipe::Rule;
use quantsmith::quantize::{quantize, QuantizeOptions};
use quantsmith::solve::solver;
use quantsmith::tensor::TensorSource;
use tiny::Tiny;

fn opts(out: &Path, preset: Option<&str>, method: &str, layout: &str) -> QuantizeOptions {
    QuantizeOptions {
        preset: preset.map(|p| Preset::parse(p).unwrap()),
        method: solver(method).unwrap(),
        rules: vec![],
        layout: layout.into(),
        transforms: vec![],
        act: None,
        kv: None,
        force: false,
        allow_requantize: false,
        max_shard_bytes: 0,
        pipeline: PipelineOptions {
            out: out.to_path_buf(),
            calib_texts: vec![tiny::text(0, 40_000)],
            calib: CalibOptions { samples: 8, len: 64, seed: 0, ..Default::default() },
            imatrix: ImatrixSource::None,
            batch_seqs: 3,
            resume: false,
            checkpoint_every: None,
        },
        eval_text: None,
        eval: PerplexityOptions { ctx: 64, max_chunks: Some(4), ..Default::default() },
        budget: None,
    }
}

fn logits(path: &Path) -> Vec<f32> {
    let f = ModelFile::open(path).unwrap();
    let d = load_decoder(&f).unwrap();
    let tokens: Vec<u32> = (0..64u32).map(|i| (i * 37 + 11) % 256).collect();
    d.model.logits(&tokens, 32, 0..32).unwrap()
}

fn rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn quiet(_: &str, _: usize, _: usize) {}

fn tensor(path: &Path, name: &str) -> Vec<f32> {
    let f = ModelFile::open(path).unwrap();
    f.source().load_f32(name).unwrap()
}

/// The three tiny models: Llama untied, Llama tied, Qwen2 (biases).
fn models(dir: &Path) -> Vec<(String, std::path::PathBuf)> {
    let mut v = Vec::new();
    for (name, t) in [
        ("llama", Tiny::default()),
        ("llama-tied", Tiny { tied: true, ..Default::default() }),
        ("qwen2", Tiny { qwen: true, ..Default::default() }),
    ] {
        let d = dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        v.push((name.to_string(), t.gguf_in(&d)));
    }
    v
}

#[test]
fn every_rewrite_keeps_the_unquantized_models_logits() {
    let dir = tempfile::tempdir().unwrap();
    for (name, src) in models(dir.path()) {
        let base = logits(&src);
        for (k, transforms, layout) in [
            ("hadamard", vec!["rotate:hadamard"], "gguf"),
            ("random", vec!["rotate:random:seed=5"], "gguf"),
            ("online", vec!["rotate:hadamard:online"], "fake-quant"),
            ("smoothquant", vec!["smoothquant:0.5:all"], "gguf"),
            ("awq", vec!["awq:grid=10:format=int3:g64"], "gguf"),
            ("rotate+smoothquant", vec!["rotate:hadamard", "smoothquant:0.8"], "gguf"),
        ] {
            let out = dir.path().join(format!("{name}-{k}{}", if layout == "gguf" { ".gguf" } else { "" }));
            let mut o = opts(&out, (layout == "gguf").then_some("F32"), "rtn", layout);
            o.transforms = transforms.iter().map(|s| s.to_string()).collect();
            quantize(src.to_str().unwrap(), &o, &quiet).unwrap_or_else(|e| panic!("{name} {k}: {e}"));
            let rd = rel_diff(&base, &logits(&out));
            eprintln!("{name} {k}: logits differ by {rd:.2e} relative");
            assert!(rd < 1e-4, "{name} {k}: an equivalent rewrite changed the logits by {rd}");
            // The file holds the rewritten weights, not the source's.
            let w = "blk.1.ffn_gate.weight";
            let hf = if layout == "gguf" { w } else { "model.layers.1.mlp.gate_proj.weight" };
            let (a, b) = (tensor(&src, w), tensor(&out, hf));
            let moved = a.iter().zip(&b).filter(|(x, y)| x != y).count();
            assert!(moved > a.len() / 2, "{name} {k}: {w} was not rewritten ({moved} of {} changed)", a.len());
        }
    }
}

#[test]
fn a_rotation_unties_a_tied_head_and_flattens_the_norms() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny { tied: true, ..Default::default() }.gguf_in(dir.path());
    let out = dir.path().join("rot.gguf");
    let mut o = opts(&out, Some("Q8_0"), "gptq", "gguf");
    o.transforms = vec!["rotate:hadamard".into()];
    let r = quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
    assert!(r.tensors.iter().any(|t| t.name == "output.weight"), "the head was not untied");
    let g = quantsmith::io::gguf::GgufFile::open(&out).unwrap();
    assert!(g.info("output.weight").is_some());
    for n in ["blk.0.attn_norm.weight", "blk.1.ffn_norm.weight", "output_norm.weight"] {
        assert!(tensor(&out, n).iter().all(|&v| v == 1.0), "{n} was not folded");
    }
    // Quantized, it still computes nearly the same function.
    let rd = rel_diff(&logits(&src), &logits(&out));
    assert!(rd < 0.1, "{rd}");
    // A directory layout says the head is untied.
    let dirout = dir.path().join("rot-dir");
    let mut o = opts(&dirout, None, "rtn", "fake-quant");
    o.transforms = vec!["rotate:hadamard".into()];
    quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(dirout.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["tie_word_embeddings"], serde_json::Value::Bool(false));
    let rd = rel_diff(&logits(&src), &logits(&dirout));
    assert!(rd < 1e-4, "{rd}");
}

#[test]
fn activation_and_kv_quantization_are_recorded_and_applied() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    let base = logits(&src);
    let mut errs = Vec::new();
    for (act, kv) in
        [(Some("int8"), None), (Some("int4"), None), (None, Some("int4")), (Some("fp8_e4m3"), Some("fp8_e4m3"))]
    {
        let out = dir.path().join(format!("a{act:?}-k{kv:?}").replace(['"', '(', ')'], ""));
        let mut o = opts(&out, None, "rtn", "fake-quant");
        o.act = act.map(str::to_string);
        o.kv = kv.map(str::to_string);
        quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
        let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
        let rt = &cfg["quantsmith_runtime"];
        assert_eq!(rt["act"].as_str(), act, "{cfg}");
        assert_eq!(rt["kv"].as_str(), kv, "{cfg}");
        let rd = rel_diff(&base, &logits(&out));
        eprintln!("act {act:?} kv {kv:?}: logits differ by {rd:.3e}");
        assert!(rd > 1e-6, "act {act:?} kv {kv:?}: the loaded model ignores its runtime");
        errs.push(rd);
    }
    assert!(errs[1] > errs[0], "int4 activations should cost more than int8: {errs:?}");
    // Static ranges: calibrated once per linear input, recorded, and applied on load.
    let out = dir.path().join("static");
    let mut o = opts(&out, None, "rtn", "fake-quant");
    o.act = Some("int8:static".into());
    let r = quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
    assert!(r.calib_tokens > 0, "static ranges need calibration");
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let ranges = cfg["quantsmith_runtime"]["act_scales"].as_object().unwrap();
    assert_eq!(ranges.len(), 7 * tiny::N_LAYER, "{cfg}");
    assert!(ranges.values().all(|v| v.as_f64().unwrap() > 0.0));
    // q, k and v read one input: one range.
    assert_eq!(ranges["blk.1.attn_q"], ranges["blk.1.attn_v"]);
    let rd = rel_diff(&base, &logits(&out));
    eprintln!("act int8:static: logits differ by {rd:.3e}");
    assert!(rd > 1e-6 && rd < 0.5, "{rd}");
    // With GPTQ the Hessians are taken on the quantized inputs; the run still works and rotation
    // with an online Hadamard composes with it.
    let out = dir.path().join("w4a4");
    let mut o = opts(&out, None, "gptq", "fake-quant");
    o.rules = vec![Rule::parse_scheme("blk.*=int4:g64").unwrap()];
    o.act = Some("int4".into());
    o.kv = Some("int4".into());
    o.transforms = vec!["rotate:hadamard:online".into()];
    quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
    let cfg: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["quantsmith_runtime"]["online_hadamard"][0], "ffn_down");
    assert!(rel_diff(&base, &logits(&out)).is_finite());
}

#[test]
fn what_cannot_be_done_is_refused_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    let out = dir.path().join("x.gguf");
    let cases: Vec<(QuantizeOptions, &str)> = vec![
        (
            {
                let mut o = opts(&out, Some("Q4_0"), "rtn", "gguf");
                o.act = Some("int8".into());
                o
            },
            "GGUF cannot carry activation quantization",
        ),
        (
            {
                let mut o = opts(&out, Some("Q4_0"), "rtn", "gguf");
                o.kv = Some("int4".into());
                o
            },
            "KV-cache quantization",
        ),
        (
            {
                let mut o = opts(&out, Some("Q4_0"), "rtn", "gguf");
                o.transforms = vec!["rotate:hadamard:online".into()];
                o
            },
            "online Hadamard",
        ),
        (
            {
                let mut o = opts(&dir.path().join("d"), None, "rtn", "fake-quant");
                o.act = Some("q4_k".into());
                o
            },
            "ggml block type",
        ),
        (
            {
                let mut o = opts(&dir.path().join("d"), None, "rtn", "fake-quant");
                o.kv = Some("int4:g48".into());
                o
            },
            "--kv",
        ),
        (
            {
                let mut o = opts(&out, Some("Q4_0"), "rtn", "gguf");
                o.transforms = vec!["rotate:spiral".into()];
                o
            },
            "not a rotation",
        ),
        (
            {
                let mut o = opts(&out, Some("Q4_0"), "rtn", "gguf");
                o.transforms = vec!["smoothquant:1.5".into()];
                o
            },
            "migration strength",
        ),
    ];
    for (o, want) in cases {
        let e = quantize(src.to_str().unwrap(), &o, &quiet).unwrap_err().to_string();
        assert!(e.contains(want), "expected `{want}` in: {e}");
        assert!(!out.exists() && !dir.path().join("d").exists(), "{want}: something was written");
    }
}

/// Mean of `lin`'s output over the rows of `x`, per output channel.
fn mean_output(lin: &quantsmith::arch::Linear, x: &[f32]) -> Vec<f64> {
    let rows = x.len() / lin.inp;
    let y = lin.forward(x, rows);
    let mut m = vec![0f64; lin.out];
    for row in y.chunks_exact(lin.out) {
        m.iter_mut().zip(row).for_each(|(m, v)| *m += *v as f64 / rows as f64);
    }
    m
}

#[test]
fn bias_correction_restores_each_linears_mean_output() {
    use quantsmith::calib::{Cross, Hessian};
    use quantsmith::transform::{transform, SolvedGroup};
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    let f = ModelFile::open(&src).unwrap();
    let arch = quantsmith::arch::arch_for(&f).unwrap();
    // The quantized model's input of the attention group (x_q), and the float model's (x_f,
    // shifted and scaled from it as upstream quantization error would).
    let rows = 300;
    let xq = tiny::Rng(7).vec(rows * tiny::D, 1.0);
    let xf: Vec<f32> =
        xq.iter().enumerate().map(|(k, v)| v * 1.05 + 0.02 * ((k % tiny::D) as f32 / 50.0 - 2.0)).collect();
    for (spec, float_input) in [("bias-correct:local", &xq), ("bias-correct", &xf)] {
        let t = transform(spec).unwrap();
        let mut blk = arch.load_block(1, 64).unwrap();
        let grp = &blk.groups()[0];
        let mut float_w: BTreeMap<&str, quantsmith::tensor::Weights> = BTreeMap::new();
        let mut want = Vec::new();
        for &l in grp.linears {
            let lin = blk.linear_mut(l).unwrap();
            assert!(lin.b.is_none());
            float_w.insert(l, lin.w.clone());
            want.push(mean_output(lin, float_input));
            // A coarse quantization: the output means move.
            lin.w.iter_mut().for_each(|w| *w = (*w * 8.0).round() / 8.0);
        }
        let mut h = Hessian::diagonal(tiny::D);
        h.add(&xq, rows);
        let mut c = Cross::new(tiny::D);
        c.add(&xf, &xq, rows);
        t.after_group(&mut SolvedGroup {
            block_index: 1,
            group: grp,
            block: &mut *blk,
            float_weights: &float_w,
            hessian: &h,
            cross: Some(&c),
        })
        .unwrap();
        for (&l, want) in grp.linears.iter().zip(&want) {
            let lin = blk.linear(l).unwrap();
            assert!(lin.b.is_some(), "{spec}: {l} got no bias");
            let got = mean_output(lin, &xq);
            let scale = want.iter().fold(0f64, |m, v| m.max(v.abs()));
            let err = got.iter().zip(want).fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            eprintln!("{spec} {l}: mean output off by {err:.2e} (scale {scale:.2e})");
            assert!(err < 1e-4 * scale.max(1.0), "{spec} {l}: mean output off by {err} (scale {scale})");
        }
    }
}

#[test]
fn bias_correction_is_written_read_back_and_refused_where_it_cannot_be_held() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    let base = logits(&src);
    // Unquantized, the correction is zero: the model keeps its function.
    let out = dir.path().join("f32.gguf");
    let mut o = opts(&out, Some("F32"), "rtn", "gguf");
    o.transforms = vec!["bias-correct".into()];
    quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
    let rd = rel_diff(&base, &logits(&out));
    assert!(rd < 1e-4, "an unquantized model's correction changed its logits by {rd}");
    assert!(tensor(&out, "blk.0.ffn_down.bias").iter().all(|v| v.abs() < 1e-5));
    // Quantized: every block linear gets a bias, in GGUF and in a directory layout whose
    // config says so (transformers' Llama reads them under attention_bias / mlp_bias).
    let plain = dir.path().join("plain.gguf");
    quantize(src.to_str().unwrap(), &opts(&plain, Some("Q4_0"), "rtn", "gguf"), &quiet).unwrap();
    for (layout, method) in [("gguf", "rtn"), ("gguf", "gptq"), ("fake-quant", "gptq")] {
        let out = dir.path().join(format!("bc-{layout}-{method}{}", if layout == "gguf" { ".gguf" } else { "" }));
        let mut o = opts(&out, (layout == "gguf").then_some("Q4_0"), method, layout);
        if layout != "gguf" {
            o.rules = vec![Rule::parse_scheme("blk.*=int4:g64").unwrap()];
        }
        o.transforms = vec!["bias-correct".into()];
        let r = quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
        assert!(r.calib_tokens > 0, "bias correction needs calibration");
        let f = ModelFile::open(&out).unwrap();
        for i in 0..tiny::N_LAYER {
            for l in quantsmith::arch::llama::LINEAR_NAMES {
                let name = if layout == "gguf" {
                    format!("blk.{i}.{l}.bias")
                } else {
                    quantsmith::arch::arch_for(&f).unwrap().hf_name(&format!("blk.{i}.{l}.bias"))
                };
                let b = f.source().load_f32(&name).unwrap_or_else(|e| panic!("{layout} {method}: {name}: {e}"));
                assert!(b.iter().any(|v| *v != 0.0), "{layout} {method}: {name} is all zero");
            }
        }
        if layout != "gguf" {
            let cfg: serde_json::Value =
                serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
            assert_eq!(cfg["attention_bias"], true, "{cfg}");
            assert_eq!(cfg["mlp_bias"], true, "{cfg}");
        }
        if layout != "gguf" {
            transformers_agrees(&out);
        }
        // Loaded back, the biases are applied.
        let rd = rel_diff(&logits(&plain), &logits(&out));
        eprintln!("{layout} {method}: logits moved by {rd:.3e} from the uncorrected Q4_0 file");
        if method == "rtn" {
            assert!(rd > 1e-6, "the corrected file computes what the uncorrected one does");
        }
    }
    // What cannot hold it, or a bad option: refused before any work.
    std::fs::create_dir_all(dir.path().join("q")).unwrap();
    let qwen = Tiny { qwen: true, ..Default::default() }.gguf_in(&dir.path().join("q"));
    let out = dir.path().join("bad.gguf");
    let mut o = opts(&out, Some("Q4_0"), "rtn", "gguf");
    o.transforms = vec!["bias-correct".into()];
    let e = quantize(qwen.to_str().unwrap(), &o, &quiet).unwrap_err().to_string();
    assert!(e.contains("bias-correct") && e.contains("qwen2"), "{e}");
    o.transforms = vec!["bias-correct:global".into()];
    let e = quantize(src.to_str().unwrap(), &o, &quiet).unwrap_err().to_string();
    assert!(e.contains("bias-correct:local"), "{e}");
    assert!(!out.exists());
}

/// transformers loads the directory `out` (every tensor used, none missing) and computes the
/// logits quantsmith computes from it, to 1e-4 relative.
fn transformers_agrees(out: &Path) {
    if std::env::var_os("QUANTSMITH_SKIP_TORCH_TESTS").is_some() {
        eprintln!("QUANTSMITH_SKIP_TORCH_TESTS is set: transformers cross-check NOT run");
        return;
    }
    const PY_PACKAGES: &[&str] = &["compressed-tensors==0.20.1", "transformers==5.24.0", "torch==2.15.0"];
    let python = common::pyenv::python_with(PY_PACKAGES);
    let script = common::repo().join("crates/quantsmith/tests/py/llama_logits.py");
    let tokens: Vec<u32> = (0..64u32).map(|i| (i * 37 + 11) % 256).collect();
    let tok_path = out.with_extension("tokens");
    let logits_path = out.with_extension("logits");
    std::fs::write(&tok_path, tokens.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let o = std::process::Command::new(&python)
        .arg(&script)
        .arg(out)
        .arg(&tok_path)
        .arg("2")
        .arg(&logits_path)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", python.display()));
    assert!(
        o.status.success(),
        "{} failed:\n{}\n{}",
        script.display(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let theirs: Vec<f32> = std::fs::read(&logits_path)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let ours = logits(out);
    assert_eq!(theirs.len(), ours.len());
    let rd = rel_diff(&ours, &theirs);
    eprintln!("{}: transformers' logits differ from ours by {rd:.2e} relative", out.display());
    assert!(rd < 1e-4, "{}: transformers computes other logits ({rd} relative)", out.display());
}
