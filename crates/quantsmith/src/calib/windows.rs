//! Calibration samples: `n` windows of `len` tokens drawn (seeded) from the tokens of texts.

use std::path::PathBuf;

use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// How calibration windows are drawn.
#[derive(Clone, Debug)]
pub struct CalibOptions {
    /// Number of windows.
    pub samples: usize,
    /// Tokens per window.
    pub len: usize,
    /// Seed of the window positions.
    pub seed: u64,
    /// How much each token counts in the input statistics.
    pub weighting: TokenWeighting,
}

impl Default for CalibOptions {
    fn default() -> Self {
        CalibOptions { samples: 128, len: 512, seed: 0, weighting: TokenWeighting::Uniform }
    }
}

/// How much each calibration token counts in a layer's input statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TokenWeighting {
    /// Every token alike.
    #[default]
    Uniform,
    /// RSQ's attention concentration: in each block, a token counts in proportion to the
    /// attention it receives in that block (over queries and heads, on the block as it is
    /// before its solve), relative to the mean, clipped to [1/20, 20] so that an attention sink
    /// does not take the whole Hessian.
    AttnCon,
}

impl TokenWeighting {
    /// Parses `uniform` or `rsq` (also `attncon`).
    pub fn parse(s: &str) -> Option<TokenWeighting> {
        match s {
            "uniform" | "none" => Some(TokenWeighting::Uniform),
            "rsq" | "attncon" => Some(TokenWeighting::AttnCon),
            _ => None,
        }
    }
}

/// A small deterministic generator (SplitMix64) for window offsets.
pub(crate) struct SplitMix(pub u64);

impl SplitMix {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Tokenizes `texts` and draws `opts.samples` windows of `opts.len` tokens, concatenated.
///
/// The texts' tokens are cut into non-overlapping windows; when there are more windows than
/// samples, a seeded choice without replacement picks which (in text order). Where the
/// vocabulary adds BOS, each window starts with it, as in evaluation.
pub fn calibration_windows(tok: &Tokenizer, texts: &[(PathBuf, String)], opts: &CalibOptions) -> Result<Vec<u32>> {
    if opts.samples == 0 || opts.len < 2 {
        return Err(Error::Other(format!(
            "calibration needs at least one sample of at least 2 tokens (got {} × {})",
            opts.samples, opts.len
        )));
    }
    let mut windows: Vec<Vec<u32>> = Vec::new();
    let mut total = 0usize;
    for (_, text) in texts {
        let toks = tok.encode_long(text.strip_suffix('\n').unwrap_or(text), false, None)?;
        total += toks.len();
        for w in toks.chunks_exact(opts.len) {
            windows.push(w.to_vec());
        }
    }
    if windows.len() < opts.samples {
        let names: Vec<String> = texts.iter().map(|(p, _)| p.display().to_string()).collect();
        return Err(Error::Text {
            path: PathBuf::from(names.join(", ")),
            msg: format!(
                "{total} tokens give only {} windows of {} tokens, but {} calibration samples were requested",
                windows.len(),
                opts.len,
                opts.samples
            ),
        });
    }
    // Partial Fisher-Yates over window indices, then keep text order for locality.
    let mut idx: Vec<usize> = (0..windows.len()).collect();
    let mut rng = SplitMix(opts.seed);
    for i in 0..opts.samples {
        let j = i + rng.below(idx.len() - i);
        idx.swap(i, j);
    }
    let mut chosen = idx[..opts.samples].to_vec();
    chosen.sort_unstable();
    let mut out = Vec::with_capacity(opts.samples * opts.len);
    for i in chosen {
        let w = &mut windows[i];
        if tok.add_bos() {
            if let Some(b) = tok.bos() {
                w[0] = b;
            }
        }
        out.extend_from_slice(w);
    }
    Ok(out)
}
