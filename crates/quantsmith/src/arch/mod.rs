//! Architectures: what the blocks are and how a block runs forward. One file per family.

pub mod bert;
pub mod llama;

use crate::io::ModelFile;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// What kind of network a checkpoint holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A causal language model (Llama family).
    Decoder,
    /// A sentence encoder (BERT).
    Encoder,
}

/// The kind of network an architecture name denotes (GGUF `general.architecture` or
/// config.json `model_type`).
pub fn kind_of(arch: &str) -> Option<ModelKind> {
    match arch {
        "llama" | "mistral" | "qwen2" => Some(ModelKind::Decoder),
        "bert" => Some(ModelKind::Encoder),
        _ => None,
    }
}

/// The kind of network in `file`, or a clear error naming the unknown architecture.
pub fn model_kind(file: &ModelFile) -> Result<ModelKind> {
    let arch = file.architecture()?;
    kind_of(arch).ok_or_else(|| {
        Error::Other(format!(
            "{}: architecture `{arch}` is not supported (decoders: llama, mistral, qwen2; encoders: bert)",
            file.path().display()
        ))
    })
}

/// A decoder with its tokenizer.
pub struct Decoder {
    /// The network, f32 in memory.
    pub model: llama::Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

/// Loads a Llama-family decoder and its tokenizer from a GGUF file or a Hugging Face directory.
pub fn load_decoder(file: &ModelFile) -> Result<Decoder> {
    let (cfg, tokenizer) = match file {
        ModelFile::Gguf(g) => (llama::LlamaConfig::from_gguf(g)?, Tokenizer::from_gguf(g)?),
        ModelFile::Hf(h) => {
            (llama::LlamaConfig::from_hf(h)?, Tokenizer::from_json_file(&h.dir().join("tokenizer.json"))?)
        }
    };
    if tokenizer.vocab_size() > cfg.vocab {
        return Err(Error::Tokenizer(format!(
            "{}: the tokenizer has {} tokens but the model's embedding has only {} rows",
            file.path().display(),
            tokenizer.vocab_size(),
            cfg.vocab
        )));
    }
    let model = llama::Llama::load(file.source(), file.path(), cfg)?;
    Ok(Decoder { model, tokenizer })
}
