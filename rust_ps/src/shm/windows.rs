//! Windows backend of `shm`: a pagefile-backed named file mapping `Local\dblps-<name>`
//! (the object Windows offers for named shared memory; `multiprocessing.shared_memory`
//! uses the same), and process liveness from process handles.
//!
//! Lifetime differs from POSIX: the kernel frees the mapping when the last handle to it
//! closes, which includes every process that held it exiting or crashing. So `unlink`
//! has nothing to do and nothing can go stale; `segment_names` is empty.
//!
//! Bells (`wait.rs`) fall back to short sleeps here: `WaitOnAddress` only wakes threads
//! of the same process, and the store's waiters live in other processes.
//!
//! Only portable `std` and `windows-sys` are used, so that `--cfg dblps_check_windows`
//! type-checks this file on Linux (see `mod.rs`).

use super::{validate_name, Segment, SegmentEntry, PREFIX};
use crate::error::{Result, StoreError};
use windows_sys::Win32::Foundation::{
    CloseHandle, GetLastError, ERROR_ACCESS_DENIED, ERROR_ALREADY_EXISTS, FILETIME, HANDLE, INVALID_HANDLE_VALUE,
    STILL_ACTIVE,
};
use windows_sys::Win32::System::Memory::{
    CreateFileMappingW, MapViewOfFile, OpenFileMappingW, UnmapViewOfFile, VirtualQuery, FILE_MAP_ALL_ACCESS,
    MEMORY_BASIC_INFORMATION, MEMORY_MAPPED_VIEW_ADDRESS, PAGE_READWRITE,
};
use windows_sys::Win32::System::Threading::{
    GetExitCodeProcess, GetProcessTimes, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION,
};

/// The file-mapping handle, kept open as long as the view (a kernel handle is usable
/// from any thread); closed by `unmap`.
pub struct OsMapping(HANDLE);

/// Checks a user-given store name and returns the object name, NUL-terminated UTF-16.
/// `Local\` keeps it in this logon session's namespace (no privilege needed).
fn os_name(name: &str) -> Result<Vec<u16>> {
    validate_name(name)?;
    Ok(format!("Local\\{PREFIX}{name}").encode_utf16().chain(std::iter::once(0)).collect())
}

fn os_error(code: u32) -> std::io::Error {
    std::io::Error::from_raw_os_error(code as i32)
}

/// Create a new zero-filled segment of `len` bytes; fails if the name is taken.
pub fn create(name: &str, len: usize) -> Result<Segment> {
    let wide = os_name(name)?;
    let size = len as u64;
    // SAFETY: INVALID_HANDLE_VALUE asks for a mapping backed by the paging file
    // (zero-filled); a null security descriptor means the default; `wide` is a
    // NUL-terminated UTF-16 string that outlives the call.
    let mapping = unsafe {
        CreateFileMappingW(
            INVALID_HANDLE_VALUE,
            std::ptr::null(),
            PAGE_READWRITE,
            (size >> 32) as u32,
            size as u32,
            wide.as_ptr(),
        )
    };
    // SAFETY: reads this thread's last-error value; no arguments.
    let code = unsafe { GetLastError() };
    if mapping.is_null() {
        return Err(StoreError::Os(format!(
            "CreateFileMappingW({name:?}, {len} bytes) failed: {} (is the paging file large enough?)",
            os_error(code)
        )));
    }
    if code == ERROR_ALREADY_EXISTS {
        // SAFETY: `mapping` is a handle we own (to the existing object); closing it
        // leaves the other owner's mapping untouched.
        unsafe { CloseHandle(mapping) };
        return Err(StoreError::invalid(format!(
            "a parameter store named {name:?} already exists; choose another name"
        )));
    }
    map(mapping, len, name)
}

/// Map an existing segment by name.
pub fn open(name: &str) -> Result<Segment> {
    let wide = os_name(name)?;
    // SAFETY: `wide` is NUL-terminated UTF-16; the handle is not inheritable (0).
    let mapping = unsafe { OpenFileMappingW(FILE_MAP_ALL_ACCESS, 0, wide.as_ptr()) };
    if mapping.is_null() {
        return Err(StoreError::NotFound(format!(
            "no parameter store named {name:?} (looked for the file mapping Local\\{PREFIX}{name}); \
             is the store's owner running and did you pass `store.name`?"
        )));
    }
    map(mapping, 0, name)
}

/// Map the whole of `mapping` read-write (`len` 0: as large as the mapping), taking
/// ownership of the handle (closed on failure or on drop).
fn map(mapping: HANDLE, len: usize, name: &str) -> Result<Segment> {
    // SAFETY: `mapping` is an open file-mapping handle; offset 0 and `len` (0 = all)
    // stay inside it; the kernel picks the address, so no existing memory is affected.
    let view = unsafe { MapViewOfFile(mapping, FILE_MAP_ALL_ACCESS, 0, 0, len) };
    if view.Value.is_null() {
        let err = StoreError::last_os(format!("MapViewOfFile of store {name:?}"));
        // SAFETY: we own `mapping` and nothing else refers to it.
        unsafe { CloseHandle(mapping) };
        return Err(err);
    }
    let mut len = len;
    if len == 0 {
        // SAFETY: MEMORY_BASIC_INFORMATION is plain old data; all-zero is valid.
        let mut info: MEMORY_BASIC_INFORMATION = unsafe { std::mem::zeroed() };
        // SAFETY: `view.Value` is the base of the view we just mapped and `info` a
        // valid out-pointer of the size we pass.
        let filled = unsafe {
            VirtualQuery(view.Value, &mut info, std::mem::size_of::<MEMORY_BASIC_INFORMATION>())
        };
        // The view's size, rounded up to whole pages (the store checks its layout fits).
        len = if filled == 0 { 0 } else { info.RegionSize };
    }
    // From here on the Segment owns the view and the handle (dropping it unmaps both).
    let segment = Segment::from_raw(view.Value.cast(), len, name, OsMapping(mapping));
    if segment.is_empty() {
        return Err(StoreError::last_os(format!("VirtualQuery of store {name:?}")));
    }
    Ok(segment)
}

/// Unmap a segment's view and close its mapping handle (called once, by `Segment::drop`).
///
/// # Safety
/// `ptr` must be the base of a view made by `map` that nothing uses afterwards.
pub unsafe fn unmap(ptr: *mut u8, _len: usize, os: &OsMapping) {
    // SAFETY: the caller guarantees `ptr` is our view's base and no longer used; the
    // handle is ours and closed only here.
    unsafe {
        UnmapViewOfFile(MEMORY_MAPPED_VIEW_ADDRESS { Value: ptr.cast() });
        CloseHandle(os.0);
    }
}

/// Nothing to do on Windows (see the module docs).
pub fn unlink_name(_name: &str) {}

/// Always empty on Windows: mappings are freed with their last process, so there is
/// never a stale one to list or remove.
pub fn segment_names() -> Vec<SegmentEntry> {
    Vec::new()
}

/// A process handle closed on drop.
struct ProcessHandle(HANDLE);

impl ProcessHandle {
    /// Open `pid` for querying; `Err(code)` with the Windows error if that fails.
    fn open(pid: u32) -> std::result::Result<ProcessHandle, u32> {
        // SAFETY: plain arguments; a null result means failure (checked below).
        let handle = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if handle.is_null() {
            // SAFETY: reads this thread's last-error value.
            Err(unsafe { GetLastError() })
        } else {
            Ok(ProcessHandle(handle))
        }
    }

    /// Creation time in 100 ns ticks since 1601.
    fn creation_time(&self) -> Option<u64> {
        let zero = FILETIME { dwLowDateTime: 0, dwHighDateTime: 0 };
        let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
        // SAFETY: `self.0` is an open process handle with query rights and the four
        // out-pointers are valid FILETIMEs.
        let ok = unsafe { GetProcessTimes(self.0, &mut created, &mut exited, &mut kernel, &mut user) };
        (ok != 0).then(|| (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime))
    }

    fn still_active(&self) -> bool {
        let mut code = 0u32;
        // SAFETY: `self.0` is an open process handle with query rights; `code` is a
        // valid out-pointer.
        let ok = unsafe { GetExitCodeProcess(self.0, &mut code) };
        ok != 0 && code == STILL_ACTIVE as u32
    }
}

impl Drop for ProcessHandle {
    fn drop(&mut self) {
        // SAFETY: we own the handle.
        unsafe { CloseHandle(self.0) };
    }
}

/// Creation time of a process (100 ns ticks since 1601), which together with the pid
/// identifies a process even if the pid is later reused. `None` if it cannot be read.
pub fn process_start_time(pid: u32) -> Option<u64> {
    ProcessHandle::open(pid).ok()?.creation_time()
}

/// Whether the process `pid` that started at `start_time` (0 = unknown) still runs.
pub fn process_alive(pid: u32, start_time: u64) -> bool {
    if pid == 0 {
        return false;
    }
    match ProcessHandle::open(pid) {
        // It exists but belongs to someone we may not query: count it as alive.
        Err(code) => code == ERROR_ACCESS_DENIED,
        Ok(process) => {
            process.still_active()
                && match (start_time, process.creation_time()) {
                    (0, _) | (_, None) => true,
                    (expected, Some(actual)) => expected == actual,
                }
        }
    }
}
