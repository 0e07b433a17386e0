//! Encoder evaluation: how faithfully a (quantized) sentence encoder reproduces its base
//! model's embeddings, sentence by sentence, over a text.

use std::time::Instant;

use serde::Serialize;

use crate::arch::SentenceEncoder;
use crate::linalg::matmul_nt;
use crate::{Error, Result};

/// What `evaluate_encoder` measured. Keys that do not apply are left out of the JSON.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct EncoderReport {
    /// Sentences embedded.
    pub sentences: usize,
    /// Tokens the model ran (special tokens included, after truncation).
    pub tokens: usize,
    /// Length of a sentence vector.
    pub dim: usize,
    /// Mean cosine similarity between the model's and the base's embedding of each sentence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine_mean: Option<f64>,
    /// Smallest such cosine similarity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cosine_min: Option<f64>,
    /// Retrieval agreement: the fraction of sentences whose nearest neighbour among the
    /// text's other sentences (by cosine) is the same sentence under the model as under the
    /// base (identical sentence texts count as the same neighbour).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval_agreement: Option<f64>,
    /// Mean Euclidean norm of the pooled vectors before normalisation.
    pub norm_mean: f64,
    /// Mean cosine similarity between the embeddings of two different sentences: how much of
    /// the space the model uses (near 0: spread out; near 1: collapsed onto one direction).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairwise_cosine_mean: Option<f64>,
    /// Wall time of the whole evaluation (both models), seconds.
    pub seconds: f64,
    /// Throughput of the evaluated model alone (tokenizing included).
    pub sentences_per_second: f64,
}

/// Splits a text into sentences: wrapped lines are joined into paragraphs (a blank line ends
/// a paragraph), and a paragraph is cut after `.`, `!` or `?` when whitespace follows.
pub fn split_sentences(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut para = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            split_paragraph(&para, &mut out);
            para.clear();
        } else {
            if !para.is_empty() {
                para.push(' ');
            }
            para.push_str(line);
        }
    }
    split_paragraph(&para, &mut out);
    out
}

fn split_paragraph(para: &str, out: &mut Vec<String>) {
    let mut start = 0;
    let mut chars = para.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if matches!(c, '.' | '!' | '?') && chars.peek().is_some_and(|&(_, n)| n.is_whitespace()) {
            let end = i + c.len_utf8();
            push_trimmed(&para[start..end], out);
            start = end;
        }
    }
    push_trimmed(&para[start..], out);
}

fn push_trimmed(s: &str, out: &mut Vec<String>) {
    let s = s.trim();
    if !s.is_empty() {
        out.push(s.to_string());
    }
}

fn norm(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt()
}

/// Cosine similarity in f64; 0 when either vector is zero.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let d = norm(a) * norm(b);
    if d > 0.0 {
        dot / d
    } else {
        0.0
    }
}

/// Embeds every sentence of `text` with `model` (and `base`, when given) and compares them.
///
/// `progress(done, total)` is called after each batch; `total` counts the sentences of both
/// models when there is a base.
pub fn evaluate_encoder<E: SentenceEncoder + ?Sized>(
    model: &E,
    base: Option<&E>,
    text: &str,
    progress: &dyn Fn(usize, usize),
) -> Result<EncoderReport> {
    let start = Instant::now();
    let sentences = split_sentences(text);
    if sentences.is_empty() {
        return Err(Error::Other("the text holds no sentences to embed".into()));
    }
    if let Some(b) = base {
        if b.dim() != model.dim() {
            return Err(Error::Other(format!(
                "the base model's embeddings have {} dimensions, the model's {}",
                b.dim(),
                model.dim()
            )));
        }
    }
    let n = sentences.len();
    let total = if base.is_some() { 2 * n } else { n };
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();

    let t_model = Instant::now();
    let tokens = model.tokenize(&texts)?;
    let n_tokens = tokens.iter().map(|t| t.ids.len()).sum();
    let pooled = model.pooled_tokens(&tokens, &|done, _| progress(done, total))?;
    let model_seconds = t_model.elapsed().as_secs_f64();

    let norms: Vec<f64> = pooled.iter().map(|v| norm(v)).collect();
    let norm_mean = norms.iter().sum::<f64>() / n as f64;
    // Mean cosine over pairs i ≠ j from the sum of unit vectors: |Σu|² = Σ|u|² + Σ_{i≠j} uᵢ·uⱼ.
    let pairwise_cosine_mean = (n >= 2).then(|| {
        let dim = model.dim();
        let mut sum = vec![0.0f64; dim];
        let mut self_dots = 0.0;
        for (v, &nv) in pooled.iter().zip(&norms) {
            if nv > 0.0 {
                sum.iter_mut().zip(v).for_each(|(s, &x)| *s += x as f64 / nv);
                self_dots += 1.0;
            }
        }
        let total_sq: f64 = sum.iter().map(|s| s * s).sum();
        (total_sq - self_dots) / (n as f64 * (n as f64 - 1.0))
    });

    let (cosine_mean, cosine_min, retrieval_agreement) = match base {
        None => (None, None, None),
        Some(b) => {
            let base_pooled = b.pooled(&texts, &|done, _| progress(n + done, total))?;
            let cos: Vec<f64> = pooled.iter().zip(&base_pooled).map(|(m, r)| cosine(m, r)).collect();
            let mean = cos.iter().sum::<f64>() / n as f64;
            let min = cos.iter().copied().fold(f64::INFINITY, f64::min);
            (Some(mean), Some(min), retrieval_agreement(&pooled, &base_pooled, &sentences))
        }
    };

    Ok(EncoderReport {
        sentences: n,
        tokens: n_tokens,
        dim: model.dim(),
        cosine_mean,
        cosine_min,
        retrieval_agreement,
        norm_mean,
        pairwise_cosine_mean,
        seconds: start.elapsed().as_secs_f64(),
        sentences_per_second: n as f64 / model_seconds.max(1e-9),
    })
}

/// For every vector, the index of its nearest neighbour among the others by cosine (`None`
/// for a lone vector). Scores come from one GEMM per block of rows over unit vectors.
pub fn nearest_neighbours(vectors: &[Vec<f32>]) -> Vec<Option<usize>> {
    let n = vectors.len();
    let dim = vectors.first().map_or(0, Vec::len);
    let mut unit = Vec::with_capacity(n * dim);
    for v in vectors {
        let nv = norm(v);
        let inv = if nv > 0.0 { 1.0 / nv } else { 0.0 };
        unit.extend(v.iter().map(|&x| (x as f64 * inv) as f32));
    }
    // Rows in blocks, so the score matrix stays small for long texts.
    const BLOCK: usize = 256;
    let mut out = Vec::with_capacity(n);
    let mut scores = vec![0f32; BLOCK * n];
    for start in (0..n).step_by(BLOCK) {
        let rows = BLOCK.min(n - start);
        let s = &mut scores[..rows * n];
        matmul_nt(&unit[start * dim..(start + rows) * dim], &unit, rows, n, dim, s, true);
        for (r, row) in s.chunks_exact(n).enumerate() {
            let i = start + r;
            let best =
                row.iter().enumerate().filter(|&(j, _)| j != i).fold(None, |best: Option<(usize, f32)>, (j, &c)| {
                    match best {
                        Some((_, b)) if b >= c => best,
                        _ => Some((j, c)),
                    }
                });
            out.push(best.map(|(j, _)| j));
        }
    }
    out
}

/// The fraction of sentences whose nearest neighbour under `model` is the one under `base`;
/// a neighbour with the same text as the base's counts as the same (a novel repeats short
/// sentences, and their embeddings tie). `None` for fewer than two sentences.
pub fn retrieval_agreement(model: &[Vec<f32>], base: &[Vec<f32>], sentences: &[String]) -> Option<f64> {
    if sentences.len() < 2 {
        return None;
    }
    let (m, b) = (nearest_neighbours(model), nearest_neighbours(base));
    let same = m
        .iter()
        .zip(&b)
        .filter(|(x, y)| match (x, y) {
            (Some(x), Some(y)) => sentences[*x] == sentences[*y],
            _ => false,
        })
        .count();
    Some(same as f64 / sentences.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_join_wrapped_lines_and_split_on_punctuation() {
        let text = "It is a truth universally\nacknowledged, that a man.  Is it?\n\nYes!\"Said\" she. Mr. Darcy\r\nleft.\n\n\n   \nThe end";
        assert_eq!(
            split_sentences(text),
            vec![
                "It is a truth universally acknowledged, that a man.",
                "Is it?",
                "Yes!\"Said\" she.",
                "Mr.",
                "Darcy left.",
                "The end"
            ]
        );
        assert!(split_sentences("\n \n").is_empty());
        // A paragraph break ends a sentence even without punctuation.
        assert_eq!(split_sentences("one\n\ntwo"), vec!["one", "two"]);
        // Non-ASCII text around the split points.
        assert_eq!(split_sentences("Café. Naïve? «Oui»"), vec!["Café.", "Naïve?", "«Oui»"]);
    }

    #[test]
    fn cosine_in_f64() {
        assert!((cosine(&[1.0, 0.0], &[1.0, 1.0]) - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-12);
        assert_eq!(cosine(&[0.0, 0.0], &[1.0, 1.0]), 0.0);
        assert!((cosine(&[2.0, -3.0], &[-4.0, 6.0]) + 1.0).abs() < 1e-12);
    }

    #[test]
    fn nearest_neighbours_and_agreement() {
        let v = vec![vec![1.0, 0.0], vec![0.9, 0.1], vec![0.0, 1.0], vec![0.1, 1.0], vec![-1.0, 0.05]];
        assert_eq!(nearest_neighbours(&v), vec![Some(1), Some(0), Some(3), Some(2), Some(2)]);
        assert_eq!(nearest_neighbours(&v[..1]), vec![None]);
        let s: Vec<String> = ["a", "b", "c", "d", "e"].iter().map(|x| x.to_string()).collect();
        assert_eq!(retrieval_agreement(&v, &v, &s), Some(1.0));
        // Sentence 4 now lies nearest to 0 instead of 2: one of five disagrees.
        let mut w = v.clone();
        w[4] = vec![1.0, -0.5];
        assert_eq!(retrieval_agreement(&w, &v, &s), Some(0.8));
        // ... unless sentences 0 and 2 have the same text.
        let mut s2 = s.clone();
        s2[2] = "a".into();
        assert_eq!(retrieval_agreement(&w, &v, &s2), Some(1.0));
    }
}
