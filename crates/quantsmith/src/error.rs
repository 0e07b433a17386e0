//! The library's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in the library; each variant names the file, tensor or key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file whose contents do not follow its format.
    #[error("{path}: {msg}")]
    Corrupt { path: PathBuf, msg: String },
    /// A tensor that is missing, misshapen or of an unexpected type.
    #[error("{path}: tensor `{tensor}`: {msg}")]
    Tensor { path: PathBuf, tensor: String, msg: String },
    /// A configuration / metadata key that is missing or invalid.
    #[error("{path}: key `{key}`: {msg}")]
    Config { path: PathBuf, key: String, msg: String },
    /// A tokenizer that cannot be built or does not match the model.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// Input text that cannot serve the requested evaluation.
    #[error("{path}: {msg}")]
    Text { path: PathBuf, msg: String },
    /// Fetching a model package failed.
    #[error("fetch {model}: {msg}")]
    Fetch { model: String, msg: String },
    /// A number-format error.
    #[error(transparent)]
    Format(#[from] formats::FormatError),
    /// Anything else, already phrased for the user.
    #[error("{0}")]
    Other(String),
}

/// Result alias of the library.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an io::Error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// A corrupt-file error.
    pub fn corrupt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Corrupt { path: path.into(), msg: msg.into() }
    }
}
