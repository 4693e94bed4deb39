//! The client's exit codes: 0 ok, 1 failed, 2 the command line was wrong. A [`UsageError`]
//! anywhere in an error's chain means exit 2.

/// The user asked for something the command line cannot express (missing name, ...).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// `Err(UsageError)` as an `anyhow::Result`.
pub fn usage<T>(message: impl Into<String>) -> anyhow::Result<T> {
    Err(anyhow::Error::new(UsageError(message.into())))
}

pub const EXIT_FAILED: i32 = 1;
pub const EXIT_USAGE: i32 = 2;

/// The exit code for an error.
pub fn exit_code(err: &anyhow::Error) -> i32 {
    if err.downcast_ref::<UsageError>().is_some() {
        EXIT_USAGE
    } else {
        EXIT_FAILED
    }
}
