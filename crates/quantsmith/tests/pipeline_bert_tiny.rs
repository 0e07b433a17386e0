//! The BERT encoder through the generic quantization pipeline, on a tiny random
//! sentence-transformers model (seconds, no download): the pipeline's block path is the
//! encoder's own forward pass, RTN and GPTQ into the fake-quant and compressed-tensors
//! layouts read back with `ModelFile::open`, and the refusals.

mod tiny_bert;

use std::path::Path;

use quantsmith::arch::bert::{Bert, BertArch, BertEncoder, Tokens, GROUPS};
use quantsmith::arch::{arch_for, Arch, ModelKind};
use quantsmith::calib::CalibOptions;
use quantsmith::eval::encoder::{cosine, evaluate_encoder};
use quantsmith::eval::perplexity::PerplexityOptions;
use quantsmith::io::ModelFile;
use quantsmith::quantize::pipeline::{ImatrixSource, PipelineOptions};
use quantsmith::quantize::recipe::Rule;
use quantsmith::quantize::{quantize, QuantizeOptions};
use quantsmith::solve::solver;

fn calib_text() -> (std::path::PathBuf, String) {
    let p = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/text/austen_emma.txt");
    let t = std::fs::read_to_string(&p).unwrap();
    (p.with_file_name("emma_head.txt"), t.chars().take(60_000).collect())
}

fn opts(out: &Path, method: &str, layout: &str, scheme: &str) -> QuantizeOptions {
    QuantizeOptions {
        preset: None,
        method: solver(method).unwrap(),
        rules: vec![Rule::parse_scheme(scheme).unwrap()],
        layout: layout.into(),
        transforms: vec![],
        act: None,
        kv: None,
        force: false,
        allow_requantize: false,
        max_shard_bytes: 0,
        pipeline: PipelineOptions {
            out: out.to_path_buf(),
            calib_texts: vec![calib_text()],
            calib: CalibOptions { samples: 24, len: 48, seed: 0, ..Default::default() },
            imatrix: ImatrixSource::None,
            batch_seqs: 5,
            resume: true,
            checkpoint_every: None,
        },
        eval_text: None,
        eval: PerplexityOptions::default(),
        budget: None,
    }
}

fn quiet(_: &str, _: usize, _: usize) {}

fn embeddings(dir: &Path, sentences: &[String]) -> Vec<Vec<f32>> {
    let m = Bert::from_model(&ModelFile::open(dir).unwrap()).unwrap();
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    m.embed(&texts).unwrap()
}

fn mean_cosine(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    a.iter().zip(b).map(|(x, y)| cosine(x, y)).sum::<f64>() / a.len() as f64
}

#[test]
fn names_follow_llama_cpp_and_map_back_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for prefix in ["", "bert."] {
        let src = tiny_bert::write_dir(dir.path(), &format!("m{prefix}"), 1, prefix);
        let file = ModelFile::open(&src).unwrap();
        let arch = arch_for(&file).unwrap();
        assert_eq!((arch.family(), arch.kind(), arch.n_blocks()), ("bert", ModelKind::Encoder, tiny_bert::LAYERS));
        let names = arch.tensor_names();
        // Every tensor of the checkpoint but the integer position_ids buffer.
        assert_eq!(names.len(), 5 + 16 * tiny_bert::LAYERS + 2);
        for (canonical, hf) in [
            ("token_embd.weight", "embeddings.word_embeddings.weight"),
            ("position_embd.weight", "embeddings.position_embeddings.weight"),
            ("token_types.weight", "embeddings.token_type_embeddings.weight"),
            ("token_embd_norm.bias", "embeddings.LayerNorm.bias"),
            ("blk.1.attn_q.weight", "encoder.layer.1.attention.self.query.weight"),
            ("blk.1.attn_k.bias", "encoder.layer.1.attention.self.key.bias"),
            ("blk.0.attn_v.weight", "encoder.layer.0.attention.self.value.weight"),
            ("blk.0.attn_output.weight", "encoder.layer.0.attention.output.dense.weight"),
            ("blk.0.attn_output_norm.weight", "encoder.layer.0.attention.output.LayerNorm.weight"),
            ("blk.0.ffn_up.weight", "encoder.layer.0.intermediate.dense.weight"),
            ("blk.0.ffn_down.bias", "encoder.layer.0.output.dense.bias"),
            ("blk.1.layer_output_norm.bias", "encoder.layer.1.output.LayerNorm.bias"),
            ("pooler.dense.weight", "pooler.dense.weight"),
        ] {
            assert!(names.iter().any(|n| n == canonical), "{canonical}");
            assert_eq!(arch.hf_name(canonical), format!("{prefix}{hf}"));
            assert_eq!(arch.source_name(canonical), format!("{prefix}{hf}"));
        }
        assert!(arch.head_weight(&arch.load_globals().unwrap()).is_none());
    }
    assert_eq!(GROUPS.iter().map(|g| g.linears.len()).sum::<usize>(), 6);
    assert!(GROUPS.iter().all(|g| g.norm.is_none()), "post-LN: no norm can take a scale");
}

#[test]
fn the_pipeline_block_path_is_the_encoders_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_bert::write_dir(dir.path(), "m", 2, "");
    let file = ModelFile::open(&src).unwrap();
    let arch = BertArch::new(&file).unwrap();
    assert_eq!(arch.frame(), Some((2, 3)), "[CLS] and [SEP] from the tokenizer's post-processor");
    let globals = arch.load_globals().unwrap();
    let seq_len = 20;
    // Two windows; embed frames them as [CLS] … [SEP].
    let tokens: Vec<u32> = (0..2 * seq_len as u32).map(|i| 5 + (i * 7) % 40).collect();
    let mut x = arch.embed(&globals, &tokens, seq_len).unwrap();
    for i in 0..arch.n_blocks() {
        arch.load_block(i, seq_len).unwrap().forward(&mut x, seq_len);
    }
    let cfg = arch.config().clone();
    let enc = BertEncoder::load(cfg, file.source(), &src).unwrap();
    let seqs: Vec<Tokens> = tokens
        .chunks(seq_len)
        .map(|w| {
            let mut ids = w.to_vec();
            ids[0] = 2;
            ids[seq_len - 1] = 3;
            Tokens { ids, type_ids: vec![0; seq_len] }
        })
        .collect();
    let want = enc.forward(&seqs).unwrap();
    assert_eq!(x, want, "the staged block and the encoder run the same operations");

    // Windows longer than the position table are refused, naming the limit.
    let long = vec![5u32; tiny_bert::POSITIONS + 1];
    let e = arch.embed(&globals, &long, tiny_bert::POSITIONS + 1).unwrap_err().to_string();
    assert!(e.contains(&tiny_bert::POSITIONS.to_string()), "{e}");
}

#[test]
fn quantized_encoders_round_trip_through_both_layouts() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_bert::write_dir(dir.path(), "m", 3, "");
    let sentences = tiny_bert::eval_sentences(120);
    let base = embeddings(&src, &sentences);
    let base_file = ModelFile::open(&src).unwrap();
    for (fmt, floor) in [("int8", 0.999), ("int4:g32", 0.95)] {
        let mut cos = Vec::new();
        for method in ["rtn", "gptq"] {
            let mut outs = Vec::new();
            for layout in ["fake-quant", "compressed-tensors"] {
                let out = dir.path().join(format!("{method}-{}-{layout}", fmt.replace(':', "_")));
                let r = quantize(src.to_str().unwrap(), &opts(&out, method, layout, &format!("blk.*={fmt}")), &quiet)
                    .unwrap();
                assert_eq!(r.calib_tokens > 0, method == "gptq");
                for t in &r.tensors {
                    let solved = t.name.starts_with("blk.") && t.name.ends_with(".weight") && t.shape.len() == 2;
                    assert_eq!(t.format == fmt, solved, "{}: {}", t.name, t.format);
                    assert_eq!(t.solver != "copy", solved, "{}: {}", t.name, t.solver);
                }
                // The sentence-transformers files came along.
                for f in ["tokenizer.json", "modules.json", "1_Pooling/config.json", "sentence_bert_config.json"] {
                    assert!(out.join(f).is_file(), "{layout}: {f}");
                }
                outs.push(out);
            }
            // Both layouts hold the same dequantized weights, under the checkpoint's names;
            // the tensors kept as they were are the input's.
            let (a, b) = (ModelFile::open(&outs[0]).unwrap(), ModelFile::open(&outs[1]).unwrap());
            for t in base_file.source().tensors() {
                let va = a.source().load_f32(&t.name).unwrap();
                assert_eq!(va, b.source().load_f32(&t.name).unwrap(), "{}", t.name);
                if !(t.name.starts_with("encoder.") && t.name.ends_with(".weight") && t.shape.len() == 2) {
                    assert_eq!(va, base_file.source().load_f32(&t.name).unwrap(), "{} kept", t.name);
                }
            }
            let q = embeddings(&outs[1], &sentences);
            assert_eq!(q, embeddings(&outs[0], &sentences));
            let c = mean_cosine(&q, &base);
            eprintln!("{fmt} {method}: mean cosine {c:.6}");
            assert!(c >= floor && c < 1.0, "{fmt} {method}: mean cosine {c}");
            cos.push(c);
        }
        if fmt == "int4:g32" {
            assert!(cos[1] > cos[0], "GPTQ should beat RTN at {fmt}: {cos:?}");
        }
    }

    // evaluate_encoder reports retrieval agreement against the base.
    let out = dir.path().join("rtn-int4_g32-compressed-tensors");
    let text = sentences.join("\n\n");
    let (m, b) = (Bert::from_model(&ModelFile::open(&out).unwrap()).unwrap(), Bert::from_model(&base_file).unwrap());
    let r = evaluate_encoder(&m, Some(&b), &text, &|_, _| {}).unwrap();
    let agree = r.retrieval_agreement.unwrap();
    assert!(agree > 0.3 && agree <= 1.0, "{agree}");
    let same = evaluate_encoder(&b, Some(&b), &text, &|_, _| {}).unwrap();
    assert_eq!(same.retrieval_agreement, Some(1.0));
}

#[test]
fn a_prefixed_checkpoint_keeps_its_names() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_bert::write_dir(dir.path(), "m", 4, "bert.");
    let out = dir.path().join("q");
    quantize(src.to_str().unwrap(), &opts(&out, "gptq", "compressed-tensors", "blk.*.ffn_*=int4:g32"), &quiet).unwrap();
    let q = ModelFile::open(&out).unwrap();
    assert!(q.source().info("bert.encoder.layer.1.output.dense.weight").is_some());
    let sentences = tiny_bert::eval_sentences(40);
    let c = mean_cosine(&embeddings(&out, &sentences), &embeddings(&src, &sentences));
    assert!(c > 0.9, "{c}");
}

#[test]
fn gguf_output_and_decoder_evaluation_are_refused_for_encoders() {
    let dir = tempfile::tempdir().unwrap();
    let src = tiny_bert::write_dir(dir.path(), "m", 5, "");
    let out = dir.path().join("q.gguf");
    let mut o = opts(&out, "rtn", "gguf", "blk.*=q8_0");
    let e = quantize(src.to_str().unwrap(), &o, &quiet).unwrap_err().to_string();
    assert!(e.contains("GGUF") && e.contains("compressed-tensors") && e.contains("fake-quant"), "{e}");
    o.preset = Some(quantsmith::quantize::preset::Preset::parse("Q8_0").unwrap());
    o.rules.clear();
    assert!(quantize(src.to_str().unwrap(), &o, &quiet).unwrap_err().to_string().contains("GGUF"));
    assert!(!out.exists());

    let out = dir.path().join("q");
    let mut o = opts(&out, "rtn", "fake-quant", "blk.*=int8");
    o.eval_text = Some(tiny_bert::eval_sentences(3).join(" ")).map(|t| (dir.path().join("e.txt"), t));
    let e = quantize(src.to_str().unwrap(), &o, &quiet).unwrap_err().to_string();
    assert!(e.contains("quantsmith eval"), "{e}");
    assert!(!out.exists());

    // Calibration windows longer than the position table: a clear error, no output.
    let mut o = opts(&out, "gptq", "fake-quant", "blk.*=int8");
    o.pipeline.calib.len = tiny_bert::POSITIONS + 1;
    let e = quantize(src.to_str().unwrap(), &o, &quiet).unwrap_err().to_string();
    assert!(e.contains("positions"), "{e}");
    assert!(!out.exists());
    // A post-LN encoder has no rotation map, and no hooks for activation / KV quantization.
    let mut o = opts(&out, "rtn", "fake-quant", "blk.*=int8");
    o.transforms = vec!["rotate:hadamard".into()];
    let e = quantize(src.to_str().unwrap(), &o, &quiet).unwrap_err().to_string();
    assert!(e.contains("no rotation map") && e.contains("bert"), "{e}");
    let mut o = opts(&out, "rtn", "fake-quant", "blk.*=int8");
    o.act = Some("int8".into());
    let e = quantize(src.to_str().unwrap(), &o, &quiet).unwrap_err().to_string();
    assert!(e.contains("cannot run activation"), "{e}");
    assert!(!out.exists());
}
