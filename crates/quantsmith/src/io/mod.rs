//! Checkpoint readers and writers: GGUF, safetensors, Hugging Face directories.

pub mod gguf;
pub mod hf;
