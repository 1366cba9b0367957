//! The crate-wide error type. Every variant carries enough context (field,
//! byte offset, tensor name, expected vs found) to act on without a debugger.

use std::fmt;

use crate::gguf::GgufError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// I/O on a path (open, map, read).
    Io { path: String, source: std::io::Error },
    /// The GGUF file is malformed; see [`GgufError`] for field and offset.
    Gguf(GgufError),
    /// A tensor type the operation does not handle.
    UnsupportedType { what: String },
    /// Tokenizer metadata is missing or inconsistent.
    Tokenizer(String),
    /// The model uses an architecture, layout or option this build lacks.
    Unsupported(String),
    /// The file parses, but its metadata contradicts itself or its tensors
    /// (a layer count the tensor table cannot hold, a NaN epsilon, ...).
    InvalidModel(String),
    /// The sequence would run past the session's context size.
    ContextFull(String),
    /// An allocation failed.
    OutOfMemory(String),
    /// The KV block pool has no room for a step.
    KvExhausted(String),
    /// A callback asked to stop.
    Cancelled,
    /// A caller passed an invalid argument.
    InvalidArgument(String),
    /// The feature (backend) was not compiled into this build.
    NotCompiled { feature: &'static str },
    /// The backend is compiled in but cannot run here (no device, no runtime,
    /// or not implemented yet).
    BackendUnavailable(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { path, source } => write!(f, "{path}: {source}"),
            Error::Gguf(e) => write!(f, "{e}"),
            Error::UnsupportedType { what } => write!(f, "unsupported tensor type: {what}"),
            Error::Tokenizer(m) => write!(f, "tokenizer: {m}"),
            Error::Unsupported(m) => write!(f, "unsupported model: {m}"),
            Error::InvalidModel(m) => write!(f, "invalid model: {m}"),
            Error::ContextFull(m) => write!(f, "context full: {m}"),
            Error::OutOfMemory(m) => write!(f, "out of memory: {m}"),
            Error::KvExhausted(m) => write!(f, "KV cache exhausted: {m}"),
            Error::Cancelled => write!(f, "cancelled by the callback"),
            Error::InvalidArgument(m) => write!(f, "invalid argument: {m}"),
            Error::BackendUnavailable(m) => write!(f, "backend unavailable: {m}"),
            Error::NotCompiled { feature } => write!(
                f,
                "backend not compiled in: rebuild with `cargo build --features {feature}`"
            ),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Gguf(e) => Some(e),
            _ => None,
        }
    }
}

impl From<GgufError> for Error {
    fn from(e: GgufError) -> Self {
        Error::Gguf(e)
    }
}
