//! Architectures: what the blocks are and how a block runs forward. One file per family.

pub mod bert;
pub mod llama;
