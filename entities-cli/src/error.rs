//! The CLI's error and its exit codes.

use std::process::ExitCode;

/// Exit codes, for scripts.
pub(crate) mod code {
    /// Any other failure (a server error, a store that cannot be read).
    pub(crate) const FAILURE: u8 = 1;
    /// Bad usage or bad input (the server answered 400).
    pub(crate) const USAGE: u8 = 2;
    /// The entity has no state, or the instance does not exist (404).
    pub(crate) const NOT_FOUND: u8 = 3;
    /// The operation failed with its own error (422).
    pub(crate) const OPERATION_FAILED: u8 = 4;
    /// The instance exists already, or is still running (409).
    pub(crate) const CONFLICT: u8 = 5;
    /// The token is missing or wrong (401).
    pub(crate) const UNAUTHORIZED: u8 = 6;
    /// The server cannot be reached, or the runtime is shut down (503).
    pub(crate) const UNAVAILABLE: u8 = 7;
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The server answered with an error.
    #[error("{message} (HTTP {status})")]
    Api { status: u16, message: String },
    /// The server could not be reached or answered something unreadable.
    #[error("cannot reach {url}: {source}")]
    Connect {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Bad usage or input.
    #[error("{0}")]
    Usage(String),
    /// An argument that should be JSON is not.
    #[error("`{text}` is not valid JSON (quote strings: '\"text\"'): {source}")]
    Json {
        text: String,
        #[source]
        source: serde_json::Error,
    },
    /// Not found, in a store read with `--db`.
    #[error("{0}")]
    NotFound(String),
    /// The store read with `--db` failed.
    #[error("{0}")]
    Store(#[from] entities_core::Error),
    /// A file or the editor failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl CliError {
    /// The exit code of this error.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Api { status, .. } => match status {
                400 | 413 => code::USAGE,
                401 | 403 => code::UNAUTHORIZED,
                404 => code::NOT_FOUND,
                409 => code::CONFLICT,
                422 => code::OPERATION_FAILED,
                503 => code::UNAVAILABLE,
                _ => code::FAILURE,
            },
            CliError::Connect { .. } => code::UNAVAILABLE,
            CliError::Usage(_) | CliError::Json { .. } => code::USAGE,
            CliError::NotFound(_) => code::NOT_FOUND,
            CliError::Store(entities_core::Error::InvalidEntityId(_)) => code::USAGE,
            CliError::Store(_) | CliError::Io { .. } => code::FAILURE,
        })
    }
}
