//! The whole quantization pipeline on a tiny random model (seconds, no download): GPTQ,
//! resume after a kill, a tied head, format-generic plans against the layout, a transform
//! that must leave the model's function unchanged, and bad input.

mod tiny;

use std::path::{Path, PathBuf};

use quantsmith::arch::load_decoder;
use quantsmith::calib::CalibOptions;
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::io::gguf::GgufFile;
use quantsmith::io::ModelFile;
use quantsmith::quantize::pipeline::{ImatrixSource, PipelineOptions};
use quantsmith::quantize::preset::Preset;
use quantsmith::quantize::recipe::Rule;
use quantsmith::quantize::{quantize, QuantizeOptions};
use quantsmith::solve::solver;
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
            resume: true,
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

fn tensor_f32(path: &Path, name: &str) -> Vec<f32> {
    use quantsmith::tensor::TensorSource;
    GgufFile::open(path).unwrap().load_f32(name).unwrap()
}

fn quiet(_: &str, _: usize, _: usize) {}

#[test]
fn gptq_beats_rtn_and_the_file_runs() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    let base = logits(&src);
    let mut errs = Vec::new();
    for method in ["rtn", "gptq"] {
        let out = dir.path().join(format!("{method}.gguf"));
        let r = quantize(src.to_str().unwrap(), &opts(&out, Some("Q4_0"), method, "gguf"), &quiet).unwrap();
        assert!(r.calib_tokens > 0 || method == "rtn");
        let g = GgufFile::open(&out).unwrap();
        assert_eq!(g.gguf_tensors().len(), GgufFile::open(&src).unwrap().gguf_tensors().len());
        let q = logits(&out);
        let rd = rel_diff(&base, &q);
        assert!(rd < 0.6 && rd > 0.0, "{method}: logits moved by {rd}");
        eprintln!("{method}: logits moved by {rd}");
        // GPTQ's proxy: the calibration output error it minimises, summed over linears.
        let d = load_decoder(&ModelFile::open(&out).unwrap()).unwrap();
        let b = &d.model.blocks[1].down.w;
        assert!(b.iter().all(|v| v.is_finite()));
        errs.push(rd);
    }
    assert!(errs[1] < errs[0], "GPTQ should move the logits less than RTN: {errs:?}");
}

#[test]
fn resume_after_a_kill_gives_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    let fresh = dir.path().join("fresh.gguf");
    quantize(src.to_str().unwrap(), &opts(&fresh, Some("Q4_K_M"), "gptq", "gguf"), &quiet).unwrap();

    let out = dir.path().join("resumed.gguf");
    let o = opts(&out, Some("Q4_K_M"), "gptq", "gguf");
    // "Kill" the run after the first block's checkpoint.
    let killed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        quantize(src.to_str().unwrap(), &o, &|phase, done, _| {
            if phase == "blocks" && done == 1 {
                panic!("killed");
            }
        })
    }));
    assert!(killed.is_err());
    assert!(!out.exists(), "no output after a kill");
    assert!(quantsmith::quantize::pipeline::partial_dir(&out).join("state.json").exists());
    let r = quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
    assert_eq!(r.resumed_blocks, 1);
    assert_eq!(std::fs::read(&fresh).unwrap(), std::fs::read(&out).unwrap());
    assert!(!quantsmith::quantize::pipeline::partial_dir(&out).exists());
}

#[test]
fn a_tied_head_is_quantized_once_with_head_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny { tied: true, ..Default::default() }.gguf_in(dir.path());
    let out = dir.path().join("t.gguf");
    let r = quantize(src.to_str().unwrap(), &opts(&out, Some("Q8_0"), "gptq", "gguf"), &quiet).unwrap();
    let embd = r.tensors.iter().find(|t| t.name == "token_embd.weight").unwrap();
    assert!(embd.note.as_deref().unwrap_or("").contains("tied"));
    assert_eq!(embd.solver, "gptq", "the tied head is solved with its input statistics");
    assert!(GgufFile::open(&out).unwrap().gguf_tensors().iter().all(|t| t.name != "output.weight"));
    assert!(rel_diff(&logits(&src), &logits(&out)) < 0.05);
}

#[test]
fn plans_are_format_generic_and_checked_against_the_layout() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    let out = dir.path().join("x.gguf");
    let mut o = opts(&out, Some("Q4_0"), "rtn", "gguf");
    o.rules = vec![Rule::parse_scheme("blk.*.ffn_*=int4:g64").unwrap()];
    let e = quantize(src.to_str().unwrap(), &o, &quiet).unwrap_err().to_string();
    assert!(e.contains("int4:g64") && e.contains("q4_k") && e.contains("q8_0"), "{e}");
    assert!(!out.exists());
}

#[test]
fn a_scale_folding_transform_keeps_logits_and_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny { qwen: true, ..Default::default() }.gguf_in(dir.path());
    let out = dir.path().join("folded.gguf");
    let mut o = opts(&out, Some("F32"), "rtn", "gguf");
    o.transforms = vec!["scale-fold:seed=3,spread=4".into()];
    quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
    let rd = rel_diff(&logits(&src), &logits(&out));
    assert!(rd < 1e-5, "an equivalent rewrite changed the logits by {rd}");
    // The file carries the rewritten tensors, not the source's.
    let t = quantsmith::transform::scale_fold::ScaleFold::parse("seed=3,spread=4").unwrap();
    let s = t.scales(1, 2, tiny::D);
    let (a, b) = (tensor_f32(&src, "blk.1.ffn_norm.weight"), tensor_f32(&out, "blk.1.ffn_norm.weight"));
    for c in 0..tiny::D {
        assert_eq!(b[c], a[c] / s[c], "channel {c}");
    }
    let (a, b) = (tensor_f32(&src, "blk.1.ffn_up.weight"), tensor_f32(&out, "blk.1.ffn_up.weight"));
    assert_eq!(b[5], a[5] * s[5]);

    // With GPTQ the folded model still quantizes and runs.
    let out2 = dir.path().join("folded-gptq.gguf");
    let mut o = opts(&out2, Some("Q4_K_M"), "gptq", "gguf");
    o.transforms = vec!["scale-fold:seed=3".into()];
    quantize(src.to_str().unwrap(), &o, &quiet).unwrap();
    let rd = rel_diff(&logits(&src), &logits(&out2));
    eprintln!("folded gptq: {rd}");
    assert!(rd < 0.6, "{rd}");
}

#[test]
fn a_vocabulary_larger_than_the_embedding_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    // Rewrite the file with 200 embedding rows for 257 tokens.
    let g = GgufFile::open(&src).unwrap();
    let bad = dir.path().join("bad.gguf");
    let mut w = quantsmith::io::GgufWriter::new(&bad).unwrap();
    w.add_metadata_all(g.metadata().iter()).unwrap();
    for t in g.gguf_tensors() {
        let mut bytes = g.tensor_bytes(&t.name).unwrap().to_vec();
        let mut ne = t.ne.clone();
        if t.name == "token_embd.weight" || t.name == "output.weight" {
            ne[1] = 200;
            bytes.truncate(200 * tiny::D * 4);
        }
        w.add_tensor(&t.name, &ne, t.ty, &bytes).unwrap();
    }
    w.finish().unwrap();
    let out = dir.path().join("o.gguf");
    let e = quantize(bad.to_str().unwrap(), &opts(&out, Some("Q8_0"), "gptq", "gguf"), &quiet).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("bad.gguf") && msg.contains("257") && msg.contains("200"), "{msg}");
    assert!(!out.exists());
}

#[allow(dead_code)]
fn unused(_: PathBuf) {}

/// Quantizes `src` into a directory layout with the given rules.
fn to_dir(
    src: &Path,
    out: &Path,
    layout: &str,
    method: &str,
    rules: &[&str],
) -> quantsmith::quantize::report::QuantizeReport {
    let mut o = opts(out, None, method, layout);
    o.rules = rules.iter().map(|r| Rule::parse_scheme(r).unwrap()).collect();
    quantize(src.to_str().unwrap(), &o, &quiet).unwrap_or_else(|e| panic!("{layout}: {e}"))
}

#[test]
fn a_hugging_face_directory_quantizes_to_the_same_gguf_bytes() {
    for qwen in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let src = Tiny { qwen, ..Default::default() }.gguf_in(dir.path());
        // The GGUF written as a Hugging Face directory (plain f32 weights, q/k rows back in
        // the half-split order, tokenizer.json from the GGUF's vocabulary).
        let hf = dir.path().join("hf");
        to_dir(&src, &hf, "fake-quant:f32", "rtn", &[]);
        assert!(hf.join("config.json").is_file() && hf.join("tokenizer.json").is_file());
        let rd = rel_diff(&logits(&src), &logits(&hf));
        assert!(rd < 1e-5, "qwen={qwen}: the HF copy computes differently ({rd})");
        // Both quantized to GGUF by RTN: the same tensor bytes, the same metadata llama.cpp reads.
        let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
        for (input, out) in [(&src, &a), (&hf, &b)] {
            quantize(input.to_str().unwrap(), &opts(out, Some("Q4_0"), "rtn", "gguf"), &quiet).unwrap();
        }
        let (ga, gb) = (GgufFile::open(&a).unwrap(), GgufFile::open(&b).unwrap());
        let mut names: Vec<String> = ga.gguf_tensors().iter().map(|t| t.name.clone()).collect();
        let mut names_b: Vec<String> = gb.gguf_tensors().iter().map(|t| t.name.clone()).collect();
        names.sort();
        names_b.sort();
        assert_eq!(names, names_b);
        for n in &names {
            assert_eq!(ga.tensor_bytes(n).unwrap(), gb.tensor_bytes(n).unwrap(), "qwen={qwen}: tensor {n}");
        }
        for key in ["general.architecture", "tokenizer.ggml.tokens", "tokenizer.ggml.bos_token_id"] {
            assert_eq!(
                ga.metadata().iter().find(|(k, _)| k == key).map(|(_, v)| v),
                gb.metadata().iter().find(|(k, _)| k == key).map(|(_, v)| v),
                "qwen={qwen}: {key}"
            );
        }
        assert!(rel_diff(&logits(&a), &logits(&b)) < 1e-6);
    }
}

#[test]
fn every_directory_layout_reads_back_as_its_dequantized_weights() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    let base = logits(&src);
    for (k, (layout, rules)) in [
        ("fake-quant", vec!["blk.*=int4:g64", "output=int8"]),
        ("compressed-tensors", vec!["blk.*=int4:g64"]),
        ("compressed-tensors", vec!["blk.*.ffn_*=fp8_e4m3", "blk.*=int8"]),
        ("compressed-tensors", vec!["blk.*=nvfp4"]),
        ("gptq", vec!["blk.*=int4:g64:scale=f16"]),
    ]
    .into_iter()
    .enumerate()
    {
        for method in ["rtn", "gptq"] {
            let out = dir.path().join(format!("{k}-{layout}-{method}"));
            let r = to_dir(&src, &out, layout, method, &rules);
            let rd = rel_diff(&base, &logits(&out));
            assert!(rd > 0.0 && rd < 0.6, "{layout} {rules:?} {method}: {rd}");
            // What the runtime reads is exactly what the solver left.
            let f = ModelFile::open(&out).unwrap();
            let w = f.source().load_f32("model.layers.0.mlp.up_proj.weight").unwrap();
            assert_eq!(w.len(), tiny::FF * tiny::D);
            assert!(r.tensors.iter().any(|t| t.name == "blk.0.ffn_up.weight" && t.solver.starts_with(method)));
        }
    }
}

#[test]
fn a_failed_run_leaves_no_checkpoint_and_no_output() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    // A NaN in block 1's down projection: found after block 0 was checkpointed.
    let g = GgufFile::open(&src).unwrap();
    let bad = dir.path().join("nan.gguf");
    let mut w = quantsmith::io::GgufWriter::new(&bad).unwrap();
    w.add_metadata_all(g.metadata().iter()).unwrap();
    for t in g.gguf_tensors() {
        let mut bytes = g.tensor_bytes(&t.name).unwrap().to_vec();
        if t.name == "blk.1.ffn_down.weight" {
            bytes[40..44].copy_from_slice(&f32::NAN.to_le_bytes());
        }
        w.add_tensor(&t.name, &t.ne, t.ty, &bytes).unwrap();
    }
    w.finish().unwrap();
    let out = dir.path().join("o.gguf");
    let e = quantize(bad.to_str().unwrap(), &opts(&out, Some("Q4_0"), "gptq", "gguf"), &quiet).unwrap_err();
    assert!(e.to_string().contains("blk.1.ffn_down.weight"), "{e}");
    assert!(!out.exists());
    assert!(!quantsmith::quantize::pipeline::partial_dir(&out).exists(), "a failed run left its checkpoint");
}

/// Evaluation progress moves with the work: tokens through each model, updated block by
/// block (not once per batch of chunks), rising to the total.
#[test]
fn eval_progress_moves_block_by_block() {
    let dir = tempfile::tempdir().unwrap();
    let src = Tiny::default().gguf_in(dir.path());
    let f = ModelFile::open(&src).unwrap();
    let d = load_decoder(&f).unwrap();
    let (path, text) = tiny::text(50_000, 6_000);
    let opts = PerplexityOptions { ctx: 64, max_chunks: Some(4), batch: 4 };
    let calls = std::sync::Mutex::new(Vec::new());
    quantsmith::eval::perplexity::evaluate_decoder(
        &d.model,
        Some(&d.model),
        &d.tokenizer,
        &text,
        &path,
        &opts,
        &|a, b| calls.lock().unwrap().push((a, b)),
    )
    .unwrap();
    let calls = calls.into_inner().unwrap();
    let total = 4 * 64 * 2;
    assert!(calls.iter().all(|&(_, t)| t == total), "{calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0), "{calls:?}");
    assert_eq!(calls.last().unwrap().0, total);
    // One batch of 4 chunks, two models, N_LAYER blocks each: an update per block.
    let distinct: std::collections::BTreeSet<usize> = calls.iter().map(|c| c.0).collect();
    assert!(distinct.len() > 2 * tiny::N_LAYER, "{calls:?}");
}
