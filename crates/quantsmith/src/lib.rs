//! quantsmith: quantize transformer language models on the CPU.
//!
//! The flow (see ARCHITECTURE.md): load a checkpoint (`io`), run it (`arch`), measure it
//! (`eval`).

pub mod arch;
pub mod bench;
pub mod calib;
pub mod dist;
pub mod error;
pub mod eval;
pub mod export;
pub mod fetch;
#[doc(hidden)]
pub mod fuzzing;
pub mod io;
pub mod linalg;
pub mod memory;
pub mod quantize;
pub mod solve;
pub mod tensor;
pub mod tokenizer;
pub mod transform;

pub use error::{Error, Result};
pub use formats;
