//! Tokenizers for decoder models, built with the `tokenizers` crate from GGUF metadata
//! (`tokenizer.ggml.*`) or from a Hugging Face `tokenizer.json`.
//!
//! Special-token text in the input is never parsed as special tokens (llama-perplexity's
//! `parse_special = false`): the GGUF-built tokenizer registers no added tokens, so
//! `<|im_start|>` in a novel is tokenized as ordinary text.

use std::path::Path;

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

use crate::io::gguf::GgufFile;
use crate::{Error, Result};

/// GPT-2's byte-level split (also the second stage of the `smollm` family's split).
const GPT2_SPLIT: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's split: case-insensitive contractions, numbers in groups of up to three.
const LLAMA3_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: as Llama 3's but digits one by one.
const QWEN2_SPLIT: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A text → token-id encoder with the model's BOS/EOS conventions.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<u32>,
    add_bos: bool,
    vocab_size: usize,
    /// True when `inner`'s post-processor already adds the special tokens (tokenizer.json).
    post_adds_specials: bool,
}

impl Tokenizer {
    /// Builds the tokenizer that a GGUF file's `tokenizer.ggml.*` metadata describes.
    pub fn from_gguf(g: &GgufFile) -> Result<Tokenizer> {
        let path = g.path().to_path_buf();
        let cfg_err = |key: &str, msg: String| Error::Config { path: path.clone(), key: key.into(), msg };
        let model = g.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(cfg_err(
                "tokenizer.ggml.model",
                format!("tokenizer model `{model}` is not supported (quantsmith reads byte-level BPE, `gpt2`)"),
            ));
        }
        let pre = g.opt_str("tokenizer.ggml.pre")?.unwrap_or("default").to_string();
        let splits: Vec<(&str, bool)> = match pre.as_str() {
            // (regex, whether it runs inside ByteLevel) — order matters.
            "default" | "gpt-2" | "gpt2" | "olmo" | "jais" => vec![(GPT2_SPLIT, true)],
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
                vec![(r"\p{N}", false), (GPT2_SPLIT, true)]
            }
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => vec![(LLAMA3_SPLIT, false)],
            "qwen2" | "deepseek-r1-qwen" => vec![(QWEN2_SPLIT, false)],
            other => {
                return Err(cfg_err(
                    "tokenizer.ggml.pre",
                    format!(
                        "unknown pre-tokenizer `{other}`; known: default, gpt-2, smollm, starcoder, llama-bpe, qwen2"
                    ),
                ))
            }
        };
        let tokens = g.get_str_array("tokenizer.ggml.tokens")?;
        let merges_raw = g.get_str_array("tokenizer.ggml.merges")?;
        let vocab_size = tokens.len();
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let mut merges = Vec::with_capacity(merges_raw.len());
        for (i, m) in merges_raw.iter().enumerate() {
            let Some((a, b)) = m.split_once(' ') else {
                return Err(cfg_err("tokenizer.ggml.merges", format!("merge {i} `{m}` is not two tokens")));
            };
            merges.push((a.to_string(), b.to_string()));
        }
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| cfg_err("tokenizer.ggml.merges", e.to_string()))?;
        let mut stages: Vec<PreTokenizerWrapper> = Vec::new();
        let mut byte_level_regex = false;
        for (re, in_byte_level) in splits {
            if in_byte_level {
                // ByteLevel's own regex is GPT-2's split.
                byte_level_regex = true;
            } else {
                let split = Split::new(SplitPattern::Regex(re.to_string()), SplitDelimiterBehavior::Isolated, false)
                    .map_err(|e| Error::Tokenizer(e.to_string()))?;
                stages.push(PreTokenizerWrapper::Split(split));
            }
        }
        stages.push(PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, false, byte_level_regex)));
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(Sequence::new(stages)));
        inner.with_decoder(Some(ByteLevel::default()));
        let bos = g.opt_u32("tokenizer.ggml.bos_token_id")?;
        let add_bos = g.opt_bool("tokenizer.ggml.add_bos_token")?.unwrap_or(false);
        if add_bos && bos.is_none() {
            return Err(cfg_err("tokenizer.ggml.bos_token_id", "add_bos_token is set but no BOS id is given".into()));
        }
        if let Some(b) = bos {
            if b as usize >= vocab_size {
                return Err(cfg_err(
                    "tokenizer.ggml.bos_token_id",
                    format!("{b} is outside the vocabulary ({vocab_size})"),
                ));
            }
        }
        Ok(Tokenizer { inner, bos, add_bos, vocab_size, post_adds_specials: false })
    }

    /// Loads a Hugging Face `tokenizer.json`; `tokenizer_config.json` beside it says whether
    /// a BOS token is added.
    pub fn from_json_file(path: &Path) -> Result<Tokenizer> {
        let mut inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        // Padding and truncation are batching settings (MiniLM's pads and cuts at 128 tokens):
        // a whole text is encoded here, as it is.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let vocab_size = inner.get_vocab_size(true);
        // Whether the post-processor adds a BOS: encode nothing with specials and look.
        let probe = inner.encode("", true).map_err(|e| Error::Tokenizer(format!("{}: {e}", path.display())))?;
        let bos = probe.get_ids().first().copied();
        Ok(Tokenizer { inner, bos, add_bos: bos.is_some(), vocab_size, post_adds_specials: true })
    }

    /// Token ids of `text`; with `add_special`, the BOS the vocabulary asks for.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special && self.post_adds_specials)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let ids = enc.get_ids();
        let mut out = Vec::with_capacity(ids.len() + 1);
        if add_special && self.add_bos && !self.post_adds_specials {
            out.extend(self.bos);
        }
        out.extend_from_slice(ids);
        Ok(out)
    }

    /// The ids [`Tokenizer::encode`] gives `text`, tokenized in pieces on all threads; with
    /// `need`, only as many pieces as give at least that many ids (a prefix of encode's ids,
    /// or all of them): perplexity over a few chunks of a novel reads its first pages.
    ///
    /// Pieces end just before an ASCII letter that starts a line after a line that does not
    /// end in whitespace: a place every pre-tokenizer here splits at, whatever follows. A cut
    /// is used only where the text around it (from a neighbouring cut at least 256 bytes and
    /// at most 16 KiB away on each side) tokenizes as its two halves do, concatenated; that
    /// check catches a tokenizer that would add a prefix space to each piece. Special tokens
    /// go around the whole text, not around the pieces. With no such place, the text is one
    /// piece.
    pub fn encode_long(&self, text: &str, add_special: bool, need: Option<usize>) -> Result<Vec<u32>> {
        use rayon::prelude::*;
        let threads = rayon::current_num_threads().max(1);
        // About 4 bytes of English per token; a lazy piece asks for half again as many.
        let piece = match need {
            Some(n) => (n.saturating_mul(6) / threads).max(4096),
            None => (text.len() / (2 * threads)).max(1 << 15),
        };
        if need.is_none() && text.len() <= 2 * piece {
            return self.encode(text, add_special);
        }
        // The pieces are encoded without special tokens; those the whole text would get go
        // before the first piece and after the last (the one at the end only when the whole
        // text is read).
        let (prefix, suffix) = if add_special {
            match self.special_affixes() {
                Some(a) => a,
                None => return self.encode(text, add_special),
            }
        } else {
            (Vec::new(), Vec::new())
        };
        let mut out = prefix;
        let mut start = 0;
        while start < text.len() {
            // The next round: up to one piece per thread.
            let mut bounds = Vec::with_capacity(threads);
            let mut at = start;
            while bounds.len() < threads && at < text.len() {
                let end = self.verified_cut(text, at + piece).unwrap_or(text.len());
                bounds.push((at, end));
                at = end;
            }
            let parts: Vec<Result<Vec<u32>>> =
                bounds.par_iter().map(|&(a, b)| self.encode(&text[a..b], false)).collect();
            for p in parts {
                out.extend(p?);
            }
            start = at;
            if need.is_some_and(|n| out.len() >= n) {
                break;
            }
        }
        if start >= text.len() {
            out.extend(suffix);
        }
        Ok(out)
    }

    /// The special tokens `encode(…, true)` puts before and after a text's own ids (BOS,
    /// and an EOS where a post-processor adds one), found by encoding a probe both ways; None
    /// if the ids without them do not appear whole inside the ids with them.
    fn special_affixes(&self) -> Option<(Vec<u32>, Vec<u32>)> {
        let probe = "The probe";
        let with = self.encode(probe, true).ok()?;
        let without = self.encode(probe, false).ok()?;
        let at = (0..=with.len().checked_sub(without.len())?).find(|&i| with[i..i + without.len()] == without[..])?;
        Some((with[..at].to_vec(), with[at + without.len()..].to_vec()))
    }

    /// The first cut at or after `from` (see [`Tokenizer::encode_long`]) whose surroundings
    /// tokenize as their halves do; None if none is found among the next few candidates. The
    /// window checked runs from a cut at least 256 bytes before to one at least 256 bytes
    /// after (or the text's ends), and at most 16 KiB either side: a cut without such
    /// neighbours is passed over.
    fn verified_cut(&self, text: &str, from: usize) -> Option<usize> {
        const SIDE: usize = 256;
        const REACH: usize = 1 << 14;
        let mut at = from;
        for _ in 0..8 {
            let p = line_start_cut(text, at)?;
            at = p + 1;
            let floor = p.saturating_sub(REACH);
            let q = match last_line_start_cut(text, floor, p.saturating_sub(SIDE)) {
                Some(q) => q,
                None if floor == 0 => 0,
                None => continue,
            };
            let r = match line_start_cut(text, p + SIDE) {
                Some(r) if r - p <= REACH => r,
                None if text.len() - p <= REACH => text.len(),
                _ => continue,
            };
            let joined = self.encode(&text[q..r], false).ok()?;
            let mut halves = self.encode(&text[q..p], false).ok()?;
            halves.extend(self.encode(&text[p..r], false).ok()?);
            if joined == halves {
                return Some(p);
            }
        }
        None
    }

    /// The text of token ids (for display).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The BOS id, if the vocabulary has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether the vocabulary asks for a BOS at the start of a text.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }
}

/// Whether byte `i` of `b` starts a line with an ASCII letter after a line that ends in
/// something other than whitespace ("…x\nY").
fn is_line_start_cut(b: &[u8], i: usize) -> bool {
    i >= 2 && i < b.len() && b[i - 1] == b'\n' && b[i].is_ascii_alphabetic() && !b[i - 2].is_ascii_whitespace()
}

/// The first such line start at or after `from`.
fn line_start_cut(text: &str, from: usize) -> Option<usize> {
    let b = text.as_bytes();
    (from.max(2)..b.len()).find(|&i| is_line_start_cut(b, i))
}

/// The last such line start in `lo..=hi`, if any.
fn last_line_start_cut(text: &str, lo: usize, hi: usize) -> Option<usize> {
    let b = text.as_bytes();
    (lo.max(2)..=hi.min(b.len().saturating_sub(1))).rev().find(|&i| is_line_start_cut(b, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tokenizer of a tokenizer.json text (written to a scratch directory and loaded).
    fn json_tokenizer(json: &str) -> Tokenizer {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        Tokenizer::from_json_file(&path).unwrap()
    }

    /// A word-level vocabulary behind a pre-tokenizer that puts "▁" before every text it
    /// gets: tokenized in pieces, a piece would start with a word the whole text never has.
    /// The seam check refuses every cut, so the long encoder gives the same ids.
    #[test]
    fn long_texts_encode_as_one_even_where_pieces_would_not() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[],"normalizer":null,
            "pre_tokenizer":{"type":"Metaspace","replacement":"\u2581","prepend_scheme":"always","split":true},
            "post_processor":null,"decoder":null,
            "model":{"type":"WordLevel","vocab":{"\u2581a":0,"\u2581b":1,"\u2581b\n":2,"\u2581b\nb":3,"[UNK]":4},"unk_token":"[UNK]"}}"#;
        let tok = json_tokenizer(json);
        let text = "a b\nb a\n".repeat(20_000);
        let whole = tok.encode(&text, false).unwrap();
        assert!(whole.contains(&3), "the whole text has the word across lines");
        assert_eq!(tok.encode_long(&text, false, None).unwrap(), whole);
        let some = tok.encode_long(&text, false, Some(1000)).unwrap();
        assert!(some.len() >= 1000 && whole.starts_with(&some), "{} ids", some.len());
    }

    /// A post-processor that adds BOS and EOS: the long encoder puts them around the whole
    /// text, not around each piece, and leaves EOS off a first-pages prefix.
    #[test]
    fn long_texts_keep_special_tokens_at_the_ends() {
        let json = r#"{"version":"1.0","truncation":null,"padding":null,
            "added_tokens":[{"id":3,"content":"<s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true},
                            {"id":4,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],
            "normalizer":null,"pre_tokenizer":{"type":"Whitespace"},
            "post_processor":{"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},{"Sequence":{"id":"A","type_id":0}},{"SpecialToken":{"id":"</s>","type_id":0}}],
                "pair":[{"Sequence":{"id":"A","type_id":0}},{"Sequence":{"id":"B","type_id":1}}],
                "special_tokens":{"<s>":{"id":"<s>","ids":[3],"tokens":["<s>"]},"</s>":{"id":"</s>","ids":[4],"tokens":["</s>"]}}},
            "decoder":null,
            "model":{"type":"WordLevel","vocab":{"a":0,"b":1,"[UNK]":2,"<s>":3,"</s>":4},"unk_token":"[UNK]"}}"#;
        let tok = json_tokenizer(json);
        let text = "a b\nb a\n".repeat(20_000);
        let whole = tok.encode(&text, true).unwrap();
        assert_eq!((whole[0], whole[whole.len() - 1]), (3, 4));
        assert_eq!(tok.encode_long(&text, true, None).unwrap(), whole);
        assert_eq!(tok.encode_long(&text, false, None).unwrap(), tok.encode(&text, false).unwrap());
        let some = tok.encode_long(&text, true, Some(1000)).unwrap();
        assert!(some.len() >= 1000 && some.len() < whole.len() && whole.starts_with(&some), "{} ids", some.len());
    }

    #[test]
    fn cuts_are_line_starts_after_a_non_blank_line_end() {
        let t = "ab\n\nCd e\nFg\n hi\nj";
        let b = t.as_bytes();
        let cuts: Vec<usize> = (0..b.len()).filter(|&i| is_line_start_cut(b, i)).collect();
        // "\n\nC" follows a blank line, "\n h" starts with a space: only F and j.
        assert_eq!(cuts.iter().map(|&i| &t[i..i + 1]).collect::<Vec<_>>(), ["F", "j"]);
        assert_eq!(line_start_cut(t, 0), Some(cuts[0]));
        assert_eq!(line_start_cut(t, cuts[0] + 1), Some(cuts[1]));
        assert_eq!(line_start_cut(t, cuts[1] + 1), None);
        assert_eq!(last_line_start_cut(t, 0, cuts[1] - 1), Some(cuts[0]));
        assert_eq!(last_line_start_cut(t, 0, cuts[1]), Some(cuts[1]));
        assert_eq!(last_line_start_cut(t, 0, cuts[0] - 1), None);
        assert_eq!(last_line_start_cut(t, cuts[0] + 1, cuts[1] - 1), None);
    }
}
