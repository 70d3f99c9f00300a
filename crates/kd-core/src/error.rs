//! One error type for the whole library.
//!
//! Bad input must end in one clear message naming the file, key or shape — never in a libtorch
//! panic. Every fallible public function returns [`Result`], and the messages are written for
//! the person who supplied the input.

use std::path::PathBuf;

/// Errors raised by kd-core and the method crates.
#[derive(Debug, thiserror::Error)]
pub enum KdError {
    /// Two tensors that must agree do not.
    #[error("shape mismatch in {op}: {left_name} has shape {left:?} but {right_name} has shape {right:?}")]
    Shape {
        /// The operation that checked the shapes.
        op: String,
        /// Name of the first operand.
        left_name: String,
        /// Shape of the first operand.
        left: Vec<i64>,
        /// Name of the second operand.
        right_name: String,
        /// Shape of the second operand.
        right: Vec<i64>,
    },
    /// A tensor has the wrong rank or an unexpected shape on its own.
    #[error("bad shape in {op}: {name} has shape {shape:?}, expected {expected}")]
    BadShape {
        /// The operation that checked the shape.
        op: String,
        /// Operand name.
        name: String,
        /// Its shape.
        shape: Vec<i64>,
        /// What was expected, in words.
        expected: String,
    },
    /// A file could not be read, or its content is malformed.
    #[error("{}: {msg}", path.display())]
    File {
        /// The offending file.
        path: PathBuf,
        /// What is wrong with it.
        msg: String,
    },
    /// A configuration file has an unknown key, a missing key or a bad value.
    #[error("config {}: {msg}", path.display())]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// The serde/toml message, which names the key.
        msg: String,
    },
    /// A training loss or gradient became NaN or infinite.
    #[error("non-finite {what} at epoch {epoch}, step {step}; the last good checkpoint is kept at {}", checkpoint.display())]
    NonFinite {
        /// Which quantity (e.g. the loss term's name).
        what: String,
        /// Epoch (0-based).
        epoch: usize,
        /// Global step.
        step: usize,
        /// The checkpoint that survives.
        checkpoint: PathBuf,
    },
    /// An argument is out of range or inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// An error reported by libtorch.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    /// An I/O error without a better context.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias used throughout kd-rs.
pub type Result<T> = std::result::Result<T, KdError>;

impl KdError {
    /// A [`KdError::File`] for `path` with the given message.
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        KdError::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }

    /// A [`KdError::Invalid`] with the given message.
    pub fn invalid(msg: impl std::fmt::Display) -> Self {
        KdError::Invalid(msg.to_string())
    }
}
