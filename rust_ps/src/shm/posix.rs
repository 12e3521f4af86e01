//! POSIX backend of `shm` (Linux, macOS): named segments from `shm_open` + `mmap`
//! (`/dev/shm/dblps-<name>` on Linux; on macOS also an entry in `$TMPDIR/dblps-shm/`,
//! since its shm names cannot be listed) and the liveness checks used to clean up after
//! owners that died without closing.

use super::{validate_name, Segment, SegmentEntry, PREFIX};
use crate::error::{Result, StoreError};
use std::ffi::CString;

/// Nothing beyond the mapping itself: the descriptor is closed right after `mmap`.
pub struct OsMapping;

/// Checks a user-given store name and returns the OS-level name (`/dblps-<name>`).
fn os_name(name: &str) -> Result<CString> {
    validate_name(name)?;
    Ok(CString::new(format!("/{PREFIX}{name}")).expect("validated name has no NUL"))
}

/// Create a new zero-filled segment of `len` bytes; fails if the name is taken.
pub fn create(name: &str, len: usize) -> Result<Segment> {
    let c_name = os_name(name)?;
    // SAFETY: `c_name` is a valid NUL-terminated string; flags are plain constants.
    let fd = unsafe {
        libc::shm_open(c_name.as_ptr(), libc::O_CREAT | libc::O_EXCL | libc::O_RDWR, 0o600)
    };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EEXIST) {
            return Err(StoreError::invalid(format!(
                "a parameter store named {name:?} already exists; choose another name, \
                 or run `dbl-ps cleanup` if its owner died"
            )));
        }
        return Err(StoreError::Os(format!("shm_open({name:?}) failed: {err}")));
    }
    // SAFETY: `fd` is the descriptor we just opened.
    let sized = unsafe { libc::ftruncate(fd, len as libc::off_t) };
    let reserved = if sized != 0 {
        Err(StoreError::last_os(format!(
            "could not size shared memory {name:?} to {len} bytes (is /dev/shm large enough?)"
        )))
    } else {
        reserve(fd, len)
    };
    if let Err(err) = reserved {
        // SAFETY: `fd` is ours; the name was created by us just now.
        unsafe {
            libc::close(fd);
            libc::shm_unlink(c_name.as_ptr());
        }
        return Err(err);
    }
    let segment = map(fd, len, name).inspect_err(|_| {
        // SAFETY: the name was created by us just now and is not yet published.
        unsafe { libc::shm_unlink(c_name.as_ptr()) };
    })?;
    register(name);
    Ok(segment)
}

/// Claim the segment's memory now (Linux). tmpfs sizes a segment lazily: without this, a
/// store larger than /dev/shm's free space (Docker's default /dev/shm is 64 MB) is created
/// fine and its first write past the free space kills the process with SIGBUS.
#[cfg(target_os = "linux")]
fn reserve(fd: libc::c_int, len: usize) -> Result<()> {
    let too_big = |free: Option<u64>| {
        let free = free.map_or("less".to_string(), |f| format!("only {} MB", f >> 20));
        StoreError::Os(format!(
            "the parameter store needs {} MB of shared memory and /dev/shm has {free} free: enlarge /dev/shm \
             (Docker: --shm-size, e.g. --shm-size=8g) or use fewer workers or queue slots",
            len.div_ceil(1 << 20)
        ))
    };
    let free = shm_free_bytes();
    if free.is_some_and(|f| (len as u64) > f) {
        return Err(too_big(free)); // refuse before taking any of it
    }
    // SAFETY: `fd` is an open shared-memory descriptor of size `len`; posix_fallocate only
    // allocates its pages (already zero) and returns an error number, never touching errno.
    match unsafe { libc::posix_fallocate(fd, 0, len as libc::off_t) } {
        0 => Ok(()),
        libc::ENOSPC => Err(too_big(shm_free_bytes())),
        // Filesystems without fallocate: the lazy sizing above is all there is.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        code => Err(StoreError::Os(format!(
            "could not reserve {len} bytes of shared memory: {}",
            std::io::Error::from_raw_os_error(code)
        ))),
    }
}

#[cfg(not(target_os = "linux"))]
fn reserve(_fd: libc::c_int, _len: usize) -> Result<()> {
    Ok(())
}

/// Free bytes of the filesystem behind /dev/shm, if it can be read.
#[cfg(target_os = "linux")]
fn shm_free_bytes() -> Option<u64> {
    // SAFETY: `statvfs` is plain old data; all-zero is a valid value to overwrite.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path literal and a valid out-pointer.
    let ok = unsafe { libc::statvfs(c"/dev/shm".as_ptr(), &mut stat) } == 0;
    ok.then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

/// Map an existing segment by name.
pub fn open(name: &str) -> Result<Segment> {
    let c_name = os_name(name)?;
    // SAFETY: valid NUL-terminated name.
    let fd = unsafe { libc::shm_open(c_name.as_ptr(), libc::O_RDWR, 0) };
    if fd < 0 {
        return Err(StoreError::NotFound(format!(
            "no parameter store named {name:?} (looked for shared memory /dev/shm/{PREFIX}{name}); \
             is the store's owner running and did you pass `store.name`?"
        )));
    }
    // SAFETY: `stat` is plain old data; fstat fills it for a valid `fd`.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `stat` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut stat) } != 0 {
        let err = StoreError::last_os(format!("fstat of store {name:?}"));
        // SAFETY: `fd` is ours.
        unsafe { libc::close(fd) };
        return Err(err);
    }
    map(fd, stat.st_size as usize, name)
}

/// mmap `fd` shared and read-write, then close the descriptor (the mapping stays).
fn map(fd: libc::c_int, len: usize, name: &str) -> Result<Segment> {
    if len == 0 {
        // SAFETY: `fd` is ours.
        unsafe { libc::close(fd) };
        return Err(StoreError::NotFound(format!(
            "shared memory {name:?} is empty: its owner is still creating it or died while doing so"
        )));
    }
    // SAFETY: a fresh shared mapping of `len` bytes of an open descriptor; the
    // kernel picks the address, so no existing memory is affected.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    // SAFETY: `fd` is ours; a mapping outlives its descriptor.
    unsafe { libc::close(fd) };
    if ptr == libc::MAP_FAILED {
        return Err(StoreError::last_os(format!("mmap of store {name:?} ({len} bytes)")));
    }
    Ok(Segment::from_raw(ptr.cast(), len, name, OsMapping))
}

/// Remove the segment `name` from the system (mappings stay valid until unmapped);
/// an absent or invalid name is ignored.
pub fn unlink_name(name: &str) {
    if let Ok(c_name) = os_name(name) {
        // SAFETY: valid NUL-terminated name; unlinking an absent name is harmless.
        unsafe { libc::shm_unlink(c_name.as_ptr()) };
        if let Some(dir) = registry_dir() {
            unregister_in(&dir, name);
        }
    }
}

/// Our segments on this machine: Linux lists them in `/dev/shm`; elsewhere (macOS) POSIX
/// shm names cannot be enumerated, so `create` also records each one in a registry
/// directory, with the same file names, and that is listed instead.
pub fn segment_names() -> Vec<SegmentEntry> {
    match registry_dir() {
        Some(dir) => list_dir(&dir),
        None => list_dir(std::path::Path::new("/dev/shm")),
    }
}

/// `$TMPDIR/dblps-shm` where /dev/shm does not list segments (macOS); `None` on Linux.
fn registry_dir() -> Option<std::path::PathBuf> {
    (!cfg!(target_os = "linux")).then(|| std::env::temp_dir().join("dblps-shm"))
}

/// Record a new segment where the OS cannot list it. Best effort: a store whose entry
/// cannot be written still works, only `dbl-ps cleanup` will not see it after a crash.
fn register(name: &str) {
    if let Some(dir) = registry_dir() {
        let _ = register_in(&dir, name);
    }
}

fn register_in(dir: &std::path::Path, name: &str) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(format!("{PREFIX}{name}")), b"")
}

fn unregister_in(dir: &std::path::Path, name: &str) {
    let _ = std::fs::remove_file(dir.join(format!("{PREFIX}{name}")));
}

/// The `dblps-*` entries of `dir` as segments (a missing directory lists nothing).
fn list_dir(dir: &std::path::Path) -> Vec<SegmentEntry> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let name = file_name.strip_prefix(PREFIX)?.to_string();
            let age = entry.metadata().and_then(|m| m.modified()).ok().map(|t| t.elapsed().unwrap_or_default());
            Some(SegmentEntry { name, age })
        })
        .collect()
}

/// Unmap a segment's view (called once, by `Segment::drop`).
///
/// # Safety
/// `ptr..ptr+len` must be a mapping made by `map` that nothing uses afterwards.
pub unsafe fn unmap(ptr: *mut u8, len: usize, _os: &OsMapping) {
    // SAFETY: the caller guarantees `ptr..ptr+len` is our mapping and no longer used.
    unsafe { libc::munmap(ptr.cast(), len) };
}

/// Start time of a process (clock ticks since boot, `/proc/PID/stat` field 22), which
/// together with the pid identifies a process even if the pid is later reused.
/// `None` where /proc is unavailable or the process does not exist.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

/// Whether the process `pid` that started at `start_time` (0 = unknown) still runs.
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match (start_time, process_start_time(pid)) {
        (0, _) | (_, None) => true,
        // A zombie (killed, not yet reaped) still has a /proc entry; treat it as dead.
        (expected, Some(actual)) => expected == actual && !is_zombie(pid),
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rfind(')').map(|i| s[i + 1..].trim_start().starts_with('Z')))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The registry that stands in for /dev/shm on macOS, exercised in a scratch directory.
    #[test]
    fn registry_lists_what_was_registered_until_it_is_removed() {
        let dir = std::env::temp_dir().join(format!("dblps-registry-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(list_dir(&dir).is_empty(), "a missing registry lists nothing");
        register_in(&dir, "run-a").unwrap();
        register_in(&dir, "run-b").unwrap();
        std::fs::write(dir.join("someone-else"), b"").unwrap(); // not ours: ignored
        let mut names: Vec<_> = list_dir(&dir).into_iter().map(|e| (e.name, e.age.is_some())).collect();
        names.sort();
        assert_eq!(names, vec![("run-a".to_string(), true), ("run-b".to_string(), true)]);
        unregister_in(&dir, "run-a");
        unregister_in(&dir, "never-registered"); // harmless
        assert_eq!(list_dir(&dir).into_iter().map(|e| e.name).collect::<Vec<_>>(), vec!["run-b".to_string()]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
