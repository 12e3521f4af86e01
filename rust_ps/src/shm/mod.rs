//! Named shared-memory segments and owner-liveness checks, with one backend per OS:
//!
//! * `posix.rs` (Linux, macOS): `shm_open` + `mmap`. On Linux a segment is the file
//!   `/dev/shm/dblps-<name>`; macOS cannot list shm names, so each segment is also
//!   recorded in `$TMPDIR/dblps-shm/`. A segment outlives its processes until it is
//!   unlinked, so stores unlink on close and `cleanup_stale` removes those of owners
//!   that died.
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
use posix as backend;

#[cfg(any(windows, dblps_check_windows))]
mod windows;
#[cfg(any(windows, dblps_check_windows))]
use windows as backend;

pub use backend::{process_alive, process_start_time, segment_names, unlink_name};

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

/// A mapping of a named shared-memory segment into this process.
///
/// Invariant: `ptr..ptr+len` stays mapped (and `os`, the backend's handle, open) until
/// `Drop`; the bytes are shared with other processes, so every access goes through
/// atomics or is ordered by the store's protocols (see `protocol.rs`).
pub struct Segment {
    ptr: *mut u8,
    len: usize,
    name: String,
    os: backend::OsMapping,
}

// SAFETY: the mapping is plain memory valid for the life of `Segment` and the backend's
// handle (if any) is usable from any thread; all concurrent access to the bytes is
// synchronised by the atomics and protocols documented in `layout.rs` and
// `protocol.rs`, never by the `Segment` itself.
unsafe impl Send for Segment {}
// SAFETY: see `Send`; `&Segment` only hands out raw pointers whose use is synchronised.
unsafe impl Sync for Segment {}

impl Segment {
    /// Create a new zero-filled segment of at least `len` bytes; fails if the name is taken.
    pub fn create(name: &str, len: usize) -> Result<Segment> {
        backend::create(name, len)
    }

    /// Map an existing segment by name.
    pub fn open(name: &str) -> Result<Segment> {
        backend::open(name)
    }

    /// Wrap a fresh mapping made by the backend; it is unmapped when the `Segment` drops.
    fn from_raw(ptr: *mut u8, len: usize, name: &str, os: backend::OsMapping) -> Segment {
        Segment { ptr, len, name: name.to_string(), os }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Remove the name from the system so no new process can attach; mappings stay
    /// valid until unmapped (a no-op on Windows, where the name goes with the last handle).
    pub fn unlink(&self) {
        backend::unlink_name(&self.name);
    }
}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: `ptr..ptr+len` was mapped by the backend for this `Segment` alone and
        // nothing borrows it past the `Segment`'s life (views hold an `Arc<Segment>`).
        unsafe { backend::unmap(self.ptr, self.len, &self.os) };
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
