//! Errors of the service nodes, worded for the user who asked for the service.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("unknown service type '{0}'; known types: postgresql, mysql, redis, filesystem")]
    UnknownKind(String),
    #[error("'{0}' is not a valid service instance id (letters, digits and '-', at most 64)")]
    BadId(String),
    #[error("no service instance '{0}' on this node")]
    NotFound(String),
    #[error("service instance '{0}' already exists with a different plan")]
    Conflict(String),
    #[error("this node is at its capacity of {limit} instances; ask an operator to raise `{key}` or add a node")]
    Capacity { limit: u64, key: String },
    #[error("{program} failed ({status}): {stderr}")]
    Command {
        program: String,
        status: String,
        stderr: String,
    },
    #[error("the {server} server is not available: {reason}")]
    Unavailable { server: String, reason: String },
    #[error("{context} ({path}): {source}")]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl ServiceError {
    /// Wraps an I/O error with what was being done and to which path.
    pub fn io(context: &str, path: impl Into<PathBuf>, source: std::io::Error) -> ServiceError {
        ServiceError::Io {
            context: context.to_string(),
            path: path.into(),
            source,
        }
    }
}
