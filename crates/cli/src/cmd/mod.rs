//! One file per subcommand.

pub mod bench;
pub mod embed;
pub mod eval;
pub mod fetch;
pub mod formats;
pub mod inspect;
pub mod plan;
pub mod progress;
pub mod quantize;
