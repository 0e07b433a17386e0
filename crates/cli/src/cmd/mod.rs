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

/// `s` safe to print on a terminal: control characters (escape sequences, carriage returns,
/// newlines) and the bidirectional overrides are shown as `\u{..}` escapes, never sent raw.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let bad = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(bad) {
        return std::borrow::Cow::Borrowed(s);
    }
    std::borrow::Cow::Owned(
        s.chars().map(|c| if bad(c) { c.escape_unicode().to_string() } else { c.to_string() }).collect(),
    )
}
