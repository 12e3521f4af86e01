//! Named shared-memory segments and owner-liveness checks, with one backend per OS:
//!
//! * `posix.rs` (Linux, macOS): `shm_open` + `mmap`. On Linux a segment is the file
//!   `/dev/shm/dblps-<name>`; a segment outlives its processes until it is unlinked, so
//!   stores unlink on close and `cleanup_stale` removes those of owners that died.
//! * `windows.rs`: a pagefile-backed named file mapping `Local\dblps-<name>`. Windows
//!   reference-counts it and frees it when the last process holding it exits (also after
//!   a crash), so there is never anything stale to remove.
//!
//! Both backends give the same [`Segment`]: zero-filled on `create`, mapped shared and
//! read-write, valid until dropped, `len()` at least the size asked for at creation.
//!
//! `--cfg dblps_check_windows` compiles the Windows backend on any host (windows-sys
//! declares its functions everywhere), so `cargo check` on Linux type-checks it; such a
//! build is never run or linked (`make check-windows`).

#[cfg(all(unix, not(dblps_check_windows)))]
mod posix;
#[cfg(all(unix, not(dblps_check_windows)))]
pub use posix::{process_alive, process_start_time, segment_names, unlink_name, Segment};

#[cfg(any(windows, dblps_check_windows))]
mod windows;
#[cfg(any(windows, dblps_check_windows))]
pub use windows::{process_alive, process_start_time, segment_names, unlink_name, Segment};

#[cfg(not(any(unix, windows, dblps_check_windows)))]
compile_error!("rust_ps has shared-memory backends for Unix (POSIX shm) and Windows only");

use crate::error::{Result, StoreError};
use std::time::Duration;

/// Every segment this crate creates starts with this prefix, so cleanup only ever
/// looks at our own segments.
pub const PREFIX: &str = "dblps-";

/// Longest store name: macOS limits POSIX shm names to 31 bytes (`PSHMNAMLEN`),
/// `/dblps-` included; elsewhere 200 keeps the OS name well inside every limit.
pub const MAX_NAME_LEN: usize = if cfg!(target_os = "macos") { 31 - 1 - PREFIX.len() } else { 200 };

/// Checks a user-given store name: 1..=MAX_NAME_LEN characters from `A-Z a-z 0-9 - _ .`
/// (safe in a file name, a POSIX shm name and a Windows object name alike).
pub fn validate_name(name: &str) -> Result<()> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(StoreError::invalid(format!(
            "store name {name:?} is not allowed: use 1-{MAX_NAME_LEN} characters from A-Z a-z 0-9 - _ ."
        )))
    }
}

/// One of our segments as the OS lists it (see [`segment_names`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentEntry {
    /// The store name (without [`PREFIX`]).
    pub name: String,
    /// Time since the segment was last modified, where the OS tells.
    pub age: Option<Duration>,
}

/// This process's id.
pub fn current_pid() -> u32 {
    std::process::id()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_any_os_call() {
        assert!(validate_name("run-1_a.b").is_ok());
        for bad in ["", "a/b", "a b", "é", &"x".repeat(MAX_NAME_LEN + 1)] {
            let err = validate_name(bad).unwrap_err().to_string();
            assert!(err.contains("is not allowed") && err.contains("A-Z a-z 0-9"), "{err}");
        }
    }
}
