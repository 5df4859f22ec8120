//! The errors that reach the user, and the exit code each one maps to.
//!
//! DESIGN.md fixes the codes: 0 success, 1 the job ran and something failed,
//! 2 bad usage or bad input, 3 denied by policy. Subsystems keep their own typed
//! errors; this type is where they meet, so `app::main` can print one message
//! and pick one code. An error that is the user's input must say which input.

use std::path::PathBuf;

use crate::yaml::Diagnostics;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag, an argument or a name the user gave does not make sense.
    #[error("{0}")]
    Usage(String),

    /// One or more problems in YAML input (blueprints, plans, nova.yaml).
    #[error("{0}")]
    Invalid(Diagnostics),

    /// The store cannot be used as it is (not a database, too new, corrupt).
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),

    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The job ran and something in it failed.
    #[error("{0}")]
    Failed(String),

    /// A run ended with work left (tasks not done, failed or skipped): the
    /// job's own result, not a fault of nova, so it is printed as a plain
    /// summary with the next step instead of under `error:`.
    #[error("{0}")]
    Unfinished(String),

    /// The policy engine denied the action.
    #[error("{0}")]
    Denied(String),

    /// Stopped by SIGINT or SIGTERM; exits 128 + the signal (130 for Ctrl-C).
    #[error("{0}")]
    Interrupted(String),
}

impl Error {
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage(message.into())
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The process exit code DESIGN.md assigns to this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Invalid(_) => 2,
            Error::Store(e) if e.is_bad_input() => 2,
            Error::Store(_) | Error::Io { .. } | Error::Failed(_) | Error::Unfinished(_) => 1,
            Error::Denied(_) => 3,
            Error::Interrupted(_) => 130,
        }
    }
}

impl From<crate::files::FileError> for Error {
    fn from(e: crate::files::FileError) -> Self {
        match e {
            crate::files::FileError::Bad(message) => Error::Usage(message),
            crate::files::FileError::Io { path, source } => Error::Io { path, source },
        }
    }
}

impl From<Diagnostics> for Error {
    fn from(d: Diagnostics) -> Self {
        Error::Invalid(d)
    }
}
