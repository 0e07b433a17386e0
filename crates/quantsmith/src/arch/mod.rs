//! Architectures: what the blocks are and how a block runs forward. One file per family.

pub mod bert;
pub mod layers;
pub mod llama;
pub mod mpnet;
pub mod runtime;

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
        "bert" | "mpnet" => Some(ModelKind::Encoder),
        _ => None,
    }
}

/// The kind of network in `file`, or a clear error naming the unknown architecture.
pub fn model_kind(file: &ModelFile) -> Result<ModelKind> {
    let arch = file.architecture()?;
    kind_of(arch).ok_or_else(|| {
        let (path, key) = match file {
            ModelFile::Gguf(g) => (g.path().to_path_buf(), "general.architecture"),
            ModelFile::Hf(h) => (h.dir().join("config.json"), "model_type"),
        };
        Error::Config {
            path,
            key: key.into(),
            msg: format!(
                "architecture `{arch}` is not supported (decoders: llama, mistral, qwen2; encoders: bert, mpnet)"
            ),
        }
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
    load_decoder_while(file, |_| ()).map(|(d, ())| d)
}

/// [`load_decoder`], running `work` on the decoder's tokenizer on a second thread while the
/// weights are read and checked: the text to evaluate is tokenized meanwhile (for a whole
/// novel, a third of a second on one core). A load error comes first, then `work`'s result.
pub fn load_decoder_while<T: Send>(
    file: &ModelFile,
    work: impl FnOnce(&Tokenizer) -> T + Send,
) -> Result<(Decoder, T)> {
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
    let (model, out) = std::thread::scope(|s| {
        let worker = s.spawn(|| work(&tokenizer));
        let model = llama::Llama::load(file.source(), file.path(), cfg);
        (model, worker.join())
    });
    let out = out.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
    Ok((Decoder { model: model?, tokenizer }, out))
}

/// A group of linear layers that read one input, in the order a block runs them
/// (llm-compressor's mapping tables state the same facts): which normalised or intermediate
/// activation feeds which linears, and where a per-channel scale of that input can fold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearGroup {
    /// What feeds the group (`attn_norm`, `attention`, `ffn_norm`, `activation`).
    pub input: &'static str,
    /// The linears, by their name inside the block (`attn_q`, `ffn_down`, ...).
    pub linears: &'static [&'static str],
    /// The norm whose gain multiplies the input channel-wise (a scale folds into it), if any.
    pub norm: Option<&'static str>,
    /// The linear whose output rows are the input channels (a scale folds into its rows
    /// instead), when no norm precedes the group.
    pub producer: Option<&'static str>,
}

/// A dense layer `y = x Wᵀ + b` with `W` `[out, in]` as in PyTorch.
pub use layers::Linear;

/// The state of a batch of calibration sequences inside one block while it runs group by
/// group: the residual stream and what the last group produced for the next.
pub struct BlockState<'a> {
    /// The residual stream `[rows, d_model]`, updated in place.
    pub x: &'a mut [f32],
    /// Positions per sequence (`rows` is a multiple of it).
    pub seq_len: usize,
    /// Intermediate result carried from one group to the next (attention output, MLP
    /// activation), empty between stages that do not need one.
    pub carry: Vec<f32>,
}

/// One block of a network, as the generic pipeline sees it: its linear groups in
/// true-sequential order, its tensors, and a forward pass split at each group's input.
///
/// `forward` = for every group `g`: `let h = group_input(g, st); advance(g, st, h)`.
pub trait Block: Send + Sync {
    /// The linear groups in true-sequential order.
    fn groups(&self) -> &'static [LinearGroup];
    /// The linear named `name` (a name from [`LinearGroup::linears`]).
    fn linear(&self, name: &str) -> Option<&Linear>;
    /// Mutable access to a linear (to swap in quantized weights or fold a scale).
    fn linear_mut(&mut self, name: &str) -> Option<&mut Linear>;
    /// Mutable access to a norm's gain (to fold a scale).
    fn norm_mut(&mut self, name: &str) -> Option<&mut Vec<f32>>;
    /// Every tensor of the block as (canonical name, shape, values), in checkpoint order.
    fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])>;
    /// The canonical name of a linear's weight (`blk.3.attn_q.weight`).
    fn weight_name(&self, linear: &str) -> String;
    /// The input of group `g`, computed from `st` (may take `st.carry`).
    fn group_input(&self, g: usize, st: &mut BlockState) -> Vec<f32>;
    /// Runs group `g`'s linears on `input` (what [`Block::group_input`] returned) and moves
    /// `st` on to the next group's input.
    fn advance(&self, g: usize, st: &mut BlockState, input: Vec<f32>);
    /// Makes the block's attention add the attention each token receives to `probe` (or
    /// stops it, with `None`); `false` if the block has no such attention.
    fn set_attention_probe(&mut self, _probe: Option<layers::AttnProbe>) -> bool {
        false
    }
    /// How the block reads and writes the residual stream, when a rotation of that stream
    /// commutes with it (pre-RMSNorm blocks); `None` otherwise.
    fn rotation_map(&self) -> Option<RotationMap> {
        None
    }
    /// Runs the whole block over `x`.
    fn forward(&self, x: &mut [f32], seq_len: usize) {
        let mut st = BlockState { x, seq_len, carry: Vec::new() };
        for g in 0..self.groups().len() {
            let h = self.group_input(g, &mut st);
            self.advance(g, &mut st, h);
        }
    }
}

/// Where a rotation of the residual stream touches a block (QuaRot): the groups fed by a norm
/// read it (the norm's gain folds into their columns, which then rotate), `writers` add to it
/// (their rows rotate), and the value/output pair can take a rotation per head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RotationMap {
    /// Linears whose outputs are added to the residual stream.
    pub writers: &'static [&'static str],
    /// (value projection, attention output) whose heads can be rotated together.
    pub value_output: Option<(&'static str, &'static str)>,
    /// Width of one attention head.
    pub head_dim: usize,
}

/// Where a rotation of the residual stream touches the tensors outside the blocks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RotationGlobals {
    /// The token embedding (its rows rotate).
    pub embed: String,
    /// The final norm (its gain folds into the head, then becomes 1).
    pub out_norm: String,
    /// The output head's name when it is stored apart (a tied head is untied under it).
    pub head: String,
    /// Residual width.
    pub d_model: usize,
    /// Width of an attention head.
    pub head_dim: usize,
    /// Linears that may take an online Hadamard on their input, with their input width.
    pub online: Vec<(&'static str, usize)>,
}

/// The tensors outside the blocks (embeddings, final norm, output head), held in memory by
/// canonical name so that transforms can rewrite them and export writes what is there.
#[derive(Clone, Debug, Default)]
pub struct Globals {
    /// (shape, values) by canonical name.
    pub tensors: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Globals {
    /// Values of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.tensors.get(name).map(|(_, v)| v.as_slice())
    }
}

/// An architecture: how to read a checkpoint of one family into blocks and globals, and how
/// its tensors are named. One file per family implements it; [`arch_for`] is the registry.
pub trait Arch: Send + Sync {
    /// Family name (`llama`, `qwen2`, `bert`).
    fn family(&self) -> &str;
    /// Decoder or encoder.
    fn kind(&self) -> ModelKind;
    /// Number of blocks.
    fn n_blocks(&self) -> usize;
    /// Residual width.
    fn d_model(&self) -> usize;
    /// Rows of the token embedding.
    fn vocab(&self) -> usize;
    /// The longest sequence the model was made for, when the checkpoint says.
    fn max_len(&self) -> Option<usize> {
        None
    }
    /// Loads block `i` (f32 in memory), ready to run sequences of up to `max_len` positions.
    fn load_block(&self, i: usize, max_len: usize) -> Result<Box<dyn Block>>;
    /// Loads the tensors outside the blocks.
    fn load_globals(&self) -> Result<Globals>;
    /// The residual stream entering block 0 for `tokens` (sequences of `seq_len`).
    fn embed(&self, globals: &Globals, tokens: &[u32], seq_len: usize) -> Result<Vec<f32>>;
    /// The canonical name of the output head's weight (the tied embedding when the head is
    /// tied), if the network has a head.
    fn head_weight(&self, globals: &Globals) -> Option<String>;
    /// Whether the head shares its weight with the token embedding.
    fn head_tied(&self, _globals: &Globals) -> bool {
        false
    }
    /// The head's input for residual rows `x` (the final norm applied).
    fn head_input(&self, globals: &Globals, x: &[f32]) -> Vec<f32>;
    /// Canonical names of every tensor the checkpoint holds, in its order.
    fn tensor_names(&self) -> Vec<String>;
    /// The checkpoint's own name for canonical `name` (identity for GGUF files).
    fn source_name(&self, name: &str) -> String;
    /// The Hugging Face name of canonical `name`.
    fn hf_name(&self, name: &str) -> String;
    /// Whether the q/k rows of this checkpoint are in llama.cpp's interleaved RoPE order.
    fn qk_interleaved(&self) -> bool {
        false
    }
    /// Whether llama.cpp expects this family's q/k rows interleaved in a GGUF file.
    fn gguf_qk_interleaved(&self) -> bool {
        false
    }
    /// For a tensor whose rows are RoPE-paired per head (q and k weights and biases), the
    /// number of heads; `None` for every other tensor.
    fn rope_heads(&self, _name: &str) -> Option<usize> {
        None
    }
    /// Where a rotation of the residual stream applies, for families where it commutes with
    /// the blocks (pre-RMSNorm decoders); `None` otherwise.
    fn rotation_globals(&self) -> Option<RotationGlobals> {
        None
    }
    /// Sets what runs between the weights (activation / KV quantization, online rotations) in
    /// every block loaded from now on.
    fn set_runtime(&mut self, rt: runtime::Runtime) -> Result<()> {
        if rt.is_empty() {
            return Ok(());
        }
        Err(Error::Other(format!(
            "the {} architecture cannot run activation or KV-cache quantization or online rotations (decoders of the Llama family can)",
            self.family()
        )))
    }
}

/// The architecture of `file` (the registry of families).
pub fn arch_for(file: &ModelFile) -> Result<Box<dyn Arch + '_>> {
    match model_kind(file)? {
        ModelKind::Decoder => Ok(Box::new(llama::LlamaArch::new(file)?)),
        ModelKind::Encoder if file.architecture()? == "mpnet" => Ok(Box::new(mpnet::MpnetArch::new(file)?)),
        ModelKind::Encoder => Ok(Box::new(bert::BertArch::new(file)?)),
    }
}

/// A sentence encoder as `eval` and `embed` use it: texts in, one vector per text out.
pub trait SentenceEncoder: Send + Sync {
    /// Length of a sentence vector.
    fn dim(&self) -> usize;
    /// Whether [`SentenceEncoder::embed_with_progress`] L2-normalises the pooled vectors.
    fn normalize(&self) -> bool;
    /// Token ids of each text as the model consumes them (special tokens, truncation).
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<bert::Tokens>>;
    /// Pooled vectors before normalisation, in input order; `progress(done, total)`.
    fn pooled_tokens(&self, tokens: &[bert::Tokens], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>>;
    /// As [`SentenceEncoder::pooled_tokens`], from texts.
    fn pooled(&self, texts: &[&str], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        self.pooled_tokens(&self.tokenize(texts)?, progress)
    }
    /// Sentence embeddings, pooled and normalised as the model's configuration says.
    fn embed_with_progress(&self, texts: &[&str], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        let mut v = self.pooled(texts, progress)?;
        if self.normalize() {
            v.iter_mut().for_each(|e| bert::l2_normalize(e));
        }
        Ok(v)
    }
}

impl SentenceEncoder for bert::Bert {
    fn dim(&self) -> usize {
        bert::Bert::dim(self)
    }
    fn normalize(&self) -> bool {
        self.normalize
    }
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<bert::Tokens>> {
        bert::Bert::tokenize(self, texts)
    }
    fn pooled_tokens(&self, tokens: &[bert::Tokens], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        bert::Bert::pooled_tokens(self, tokens, progress)
    }
}

impl SentenceEncoder for mpnet::Mpnet {
    fn dim(&self) -> usize {
        mpnet::Mpnet::dim(self)
    }
    fn normalize(&self) -> bool {
        self.normalize
    }
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<bert::Tokens>> {
        mpnet::Mpnet::tokenize(self, texts)
    }
    fn pooled_tokens(&self, tokens: &[bert::Tokens], progress: &dyn Fn(usize, usize)) -> Result<Vec<Vec<f32>>> {
        mpnet::Mpnet::pooled_tokens(self, tokens, progress)
    }
}

/// The sentence encoder in `file` with its tokenizer and sentence-transformers settings (the
/// registry of encoder families: BERT, MPNet).
pub fn load_encoder(file: &ModelFile) -> Result<Box<dyn SentenceEncoder>> {
    match file.architecture()? {
        "mpnet" => Ok(Box::new(mpnet::Mpnet::from_model(file)?)),
        "bert" => Ok(Box::new(bert::Bert::from_model(file)?)),
        other => Err(Error::Other(format!(
            "{}: architecture `{other}` is not a sentence encoder (encoders: bert, mpnet)",
            file.path().display()
        ))),
    }
}
