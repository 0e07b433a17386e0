//! Measuring models: perplexity and KL-divergence for decoders, embedding fidelity for encoders.

pub mod encoder;
pub mod perplexity;
