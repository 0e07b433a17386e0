//! The quantize pipeline on SmolLM2's dithered base (DESIGN.md), against llama.cpp's
//! llama-quantize (commit 0c1e570) as recorded in data/golden.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use quantsmith::calib::CalibOptions;
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::io::gguf::GgufFile;
use quantsmith::quantize::pipeline::{ImatrixSource, PipelineOptions};
use quantsmith::quantize::preset::Preset;
use quantsmith::quantize::{quantize, QuantizeOptions};
use quantsmith::solve::{solver, Method};
use sha2::{Digest, Sha256};

fn options(
    out: PathBuf,
    preset: Preset,
    method: Method,
    imatrix: ImatrixSource,
    samples: usize,
    len: usize,
) -> QuantizeOptions {
    QuantizeOptions {
        preset: Some(preset),
        method,
        rules: vec![],
        layout: "gguf".into(),
        transforms: vec![],
        act: None,
        kv: None,
        force: false,
        allow_requantize: false,
        max_shard_bytes: 0,
        pipeline: PipelineOptions {
            out,
            calib_texts: vec![common::repo_text("austen_emma.txt")],
            calib: CalibOptions { samples, len, seed: 0, ..Default::default() },
            imatrix,
            batch_seqs: 8,
            resume: true,
            checkpoint_every: None,
        },
        eval_text: None,
        eval: PerplexityOptions { ctx: 512, max_chunks: Some(2), ..Default::default() },
        budget: None,
    }
}

/// Round-to-nearest without calibration reproduces llama-quantize byte for byte: every
/// tensor's bytes, every type, and the file size, for every preset in the golden file.
#[test]
fn plain_presets_are_byte_identical_to_llama_quantize() {
    let base = common::dithered_base();
    let golden = common::golden();
    let dir = tempfile::tempdir().unwrap();
    let presets = golden["presets"].as_object().unwrap();
    assert!(presets.len() >= 14);
    for (name, p) in presets {
        let preset = Preset::parse(name).unwrap();
        let out = dir.path().join(format!("{name}.gguf"));
        let opts = options(out.clone(), preset, solver("rtn").unwrap(), ImatrixSource::None, 1, 16);
        let r = quantize(base.to_str().unwrap(), &opts, &|_, _, _| {}).unwrap();
        let plain = &p["plain"];
        assert_eq!(r.file_bytes, plain["file_bytes"].as_u64().unwrap(), "{name}: file size");
        assert_eq!(r.calib_tokens, 0, "{name}: no calibration without an imatrix or GPTQ");
        let g = GgufFile::open(&out).unwrap();
        let want: HashMap<String, String> = plain["sha256"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
            .collect();
        assert_eq!(g.gguf_tensors().len(), want.len(), "{name}: tensor count");
        for t in g.gguf_tensors() {
            let bytes = g.tensor_bytes(&t.name).unwrap();
            let got: String = Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(&got, &want[&t.name], "{name}: tensor {} differs from llama-quantize", t.name);
            assert_eq!(
                t.info().dtype.name().to_uppercase(),
                plain["types"][&t.name].as_str().unwrap().to_uppercase(),
                "{name}: type of {}",
                t.name
            );
        }
        std::fs::remove_file(&out).unwrap();
    }
}

/// GPTQ into the preset's ggml types, at the same file size, diverges less from the base
/// than round-to-nearest with or without importance weighting (held-out text).
#[test]
fn gptq_beats_rtn_into_ggml_blocks() {
    let base = common::dithered_base();
    let dir = tempfile::tempdir().unwrap();
    let (ppath, ptext) = common::repo_text("austen_prideprejudice.txt");
    let mut kld = Vec::new();
    for (label, method, imatrix) in [
        ("rtn", solver("rtn").unwrap(), ImatrixSource::None),
        ("rtn+imatrix", solver("rtn").unwrap(), ImatrixSource::Calibrate),
        ("gptq", solver("gptq").unwrap(), ImatrixSource::Calibrate),
    ] {
        let out = dir.path().join(format!("{label}.gguf"));
        let mut opts = options(out, Preset::Q4_0, method, imatrix, 16, 256);
        opts.eval_text = Some((ppath.clone(), ptext.clone()));
        let r = quantize(base.to_str().unwrap(), &opts, &|_, _, _| {}).unwrap();
        let e = r.eval.unwrap();
        eprintln!("{label}: {} bytes, PPL {:.3}, KLD {:.5}", r.file_bytes, e.ppl, e.kld_mean.unwrap());
        assert!(r.tensors.iter().filter(|t| t.solver != "copy").all(|t| t.sqnr_db.unwrap() > 10.0));
        kld.push((label, r.file_bytes, e.kld_mean.unwrap()));
    }
    let (rtn, rtn_im, gptq) = (kld[0], kld[1], kld[2]);
    // With an imatrix llama.cpp's Q4_0 picks other types for a few tensors: compare GPTQ
    // with the run of the same types.
    assert_eq!(gptq.1, rtn_im.1, "GPTQ and RTN+imatrix files should be the same size");
    assert!(rtn_im.2 < rtn.2, "importance weighting should help: {rtn_im:?} vs {rtn:?}");
    assert!(gptq.2 < 0.8 * rtn_im.2, "GPTQ {gptq:?} should clearly beat RTN+imatrix {rtn_im:?}");
}

/// With an imatrix, the types follow llama.cpp's imatrix-dependent choices.
#[test]
fn imatrix_presets_choose_llama_cpp_types() {
    let base = common::dithered_base();
    let golden = common::golden();
    let dir = tempfile::tempdir().unwrap();
    for name in ["Q2_K", "Q3_K_M"] {
        let out = dir.path().join(format!("{name}.gguf"));
        let opts = options(
            out.clone(),
            Preset::parse(name).unwrap(),
            solver("rtn").unwrap(),
            ImatrixSource::Calibrate,
            4,
            128,
        );
        quantize(base.to_str().unwrap(), &opts, &|_, _, _| {}).unwrap();
        let g = GgufFile::open(&out).unwrap();
        for t in g.gguf_tensors() {
            assert_eq!(
                t.info().dtype.name().to_uppercase(),
                golden["presets"][name]["imatrix"]["types"][&t.name].as_str().unwrap().to_uppercase(),
                "{name}: type of {}",
                t.name
            );
        }
        assert!(g.get("quantize.imatrix.entries_count").is_some());
    }
}

/// The dithered base written as a Hugging Face directory (f32 safetensors, q/k rows back in
/// the half-split order, tokenizer.json and config.json from the GGUF) and quantized to GGUF
/// in one command gives the same tensor bytes as quantizing the GGUF itself, and the
/// metadata llama.cpp reads.
#[test]
fn hugging_face_directory_to_gguf_matches_the_gguf_path() {
    let base = common::dithered_base();
    let dir = tempfile::tempdir().unwrap();
    let hf = dir.path().join("smollm2-hf");
    let mut o = options(hf.clone(), Preset::Q4_0, solver("rtn").unwrap(), ImatrixSource::None, 1, 16);
    o.preset = None;
    o.layout = "fake-quant:f32".into();
    quantize(base.to_str().unwrap(), &o, &|_, _, _| {}).unwrap();
    let (a, b) = (dir.path().join("from-gguf.gguf"), dir.path().join("from-hf.gguf"));
    for (input, out) in [(&base, &a), (&hf, &b)] {
        let o = options(out.clone(), Preset::Q4_0, solver("rtn").unwrap(), ImatrixSource::None, 1, 16);
        quantize(input.to_str().unwrap(), &o, &|_, _, _| {}).unwrap();
    }
    let (ga, gb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
    assert_eq!(ga.gguf_tensors().len(), gb.gguf_tensors().len());
    for t in ga.gguf_tensors() {
        assert_eq!(ga.tensor_bytes(&t.name).unwrap(), gb.tensor_bytes(&t.name).unwrap(), "tensor {}", t.name);
    }
    for (k, v) in ga.metadata() {
        if k.starts_with("tokenizer.") || k.starts_with("llama.") || k == "general.architecture" {
            assert_eq!(gb.metadata().iter().find(|(kb, _)| kb == k).map(|(_, v)| v), Some(v), "metadata {k}");
        }
    }
}

/// Every rewrite of issue 8 keeps SmolLM2's function: its widths are not powers of two (576 =
/// Paley II 36 ⊗ Walsh 16, 1536 = Paley I 12 ⊗ Walsh 128), its head is tied (the rotation unties
/// it) and its attention is grouped-query (SmoothQuant/AWQ leave attn_output alone).
#[test]
fn rotations_and_scalings_keep_smollm2s_logits() {
    use quantsmith::arch::load_decoder;
    use quantsmith::io::ModelFile;
    let base = common::dithered_base();
    let dir = tempfile::tempdir().unwrap();
    let logits = |p: &std::path::Path| {
        let f = ModelFile::open(p).unwrap();
        let d = load_decoder(&f).unwrap();
        let tokens = d.tokenizer.encode("It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.", false).unwrap();
        d.model.logits(&tokens, tokens.len(), 0..tokens.len()).unwrap()
    };
    let want = logits(&base);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (k, transforms) in [
        ("hadamard-online", vec!["rotate:hadamard:online"]),
        ("random", vec!["rotate:random:seed=1"]),
        ("smoothquant+awq", vec!["smoothquant:0.5:all", "awq:grid=4:format=int3:g64"]),
    ] {
        let out = dir.path().join(k);
        let mut o =
            options(out.clone(), Preset::parse("F32").unwrap(), solver("rtn").unwrap(), ImatrixSource::None, 4, 128);
        o.preset = None;
        o.layout = "fake-quant".into();
        o.transforms = transforms.iter().map(|s| s.to_string()).collect();
        quantize(base.to_str().unwrap(), &o, &|_, _, _| {}).unwrap_or_else(|e| panic!("{k}: {e}"));
        let got = logits(&out);
        let rd = want.iter().zip(&got).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        eprintln!("{k}: logits differ by {rd:.2e} relative");
        assert!(rd < 1e-4, "{k}: an equivalent rewrite changed SmolLM2's logits by {rd}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}
