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

/// `flag`'s value must lie in `lo..=hi` (`what` says why the bounds are what they are).
pub fn check_range(flag: &str, v: usize, lo: usize, hi: usize, what: &str) -> quantsmith::Result<()> {
    if v < lo || v > hi {
        return Err(quantsmith::Error::Other(format!("{flag} {v}: {what} (from {lo} to {hi})")));
    }
    Ok(())
}

/// The largest sequence length any option accepts: far past every model's context, small
/// enough that its tables stay small.
pub const MAX_LEN: usize = 1 << 20;
