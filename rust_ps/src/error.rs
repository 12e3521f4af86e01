//! The store's error type. Every message names the offending value and what is allowed.

use std::fmt;

#[derive(Debug, Clone, PartialEq)]
pub enum StoreError {
    /// A constructor or call argument is out of range or of the wrong kind.
    InvalidArgument(String),
    /// No segment with this name exists (or it is not a parameter store).
    NotFound(String),
    /// The store was closed (by its owner, or this handle was closed).
    Closed(String),
    /// The process that owns the store died while we were waiting on it.
    OwnerDied(String),
    /// A blocking call was interrupted (e.g. a signal is pending in Python).
    Interrupted,
    /// An operating-system call failed.
    Os(String),
}

impl StoreError {
    pub fn invalid(message: impl Into<String>) -> Self {
        StoreError::InvalidArgument(message.into())
    }

    /// Wrap the current `errno` with what we were doing.
    pub fn last_os(action: impl fmt::Display) -> Self {
        StoreError::Os(format!("{action}: {}", std::io::Error::last_os_error()))
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::InvalidArgument(m)
            | StoreError::NotFound(m)
            | StoreError::Closed(m)
            | StoreError::OwnerDied(m)
            | StoreError::Os(m) => f.write_str(m),
            StoreError::Interrupted => f.write_str("interrupted while waiting on the parameter store"),
        }
    }
}

impl std::error::Error for StoreError {}

pub type Result<T> = std::result::Result<T, StoreError>;
