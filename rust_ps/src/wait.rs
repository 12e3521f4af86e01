//! Blocking on a 32-bit word in shared memory across processes ("bells").
//!
//! A waker changes the state a waiter checks, then bumps the bell and wakes everyone
//! waiting on it. A waiter reads the bell *before* checking its condition and sleeps
//! only while the bell still holds that value, so a wake-up between the check and the
//! sleep is never lost. On Linux this is a shared (non-private) futex, which works on
//! memory mapped by several processes; elsewhere it degrades to short sleeps.

use crate::sync::{AtomicU32, Ordering};
use std::time::Duration;

/// How long a waiter sleeps before re-checking liveness and interrupts.
pub const TICK: Duration = Duration::from_millis(50);

/// Spin iterations before sleeping: short, because the machine may have fewer cores
/// than workers and spinning then steals time from the thread we wait for.
const SPINS: u32 = 64;

/// Bump the bell and wake every waiter.
pub fn ring(bell: &AtomicU32) {
    bell.fetch_add(1, Ordering::SeqCst);
    wake_all(bell);
}

/// Wait until `ready()` holds, calling `tick()` about every [`TICK`] while asleep;
/// `tick` returns an error to abort the wait (store closed, owner died, interrupt).
pub fn wait_until<E>(
    bell: &AtomicU32,
    mut ready: impl FnMut() -> bool,
    mut tick: impl FnMut() -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    for _ in 0..SPINS {
        if ready() {
            return Ok(());
        }
        std::hint::spin_loop();
    }
    loop {
        let seen = bell.load(Ordering::SeqCst);
        if ready() {
            return Ok(());
        }
        sleep_while(bell, seen, TICK);
        if ready() {
            return Ok(());
        }
        tick()?;
    }
}

#[cfg(all(target_os = "linux", not(loom)))]
pub fn sleep_while(bell: &AtomicU32, seen: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `bell` is a valid, aligned 32-bit word for the duration of the call; a
    // shared futex only compares it with `seen` and sleeps, never writes it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            bell.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
        );
    }
}

#[cfg(all(target_os = "linux", not(loom)))]
pub fn wake_all(bell: &AtomicU32) {
    // SAFETY: as above; FUTEX_WAKE does not touch the word's memory.
    unsafe {
        libc::syscall(libc::SYS_futex, bell.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

#[cfg(not(all(target_os = "linux", not(loom))))]
pub fn sleep_while(bell: &AtomicU32, seen: u32, timeout: Duration) {
    let step = Duration::from_micros(200);
    let mut slept = Duration::ZERO;
    while bell.load(Ordering::SeqCst) == seen && slept < timeout {
        std::thread::sleep(step);
        slept += step;
    }
}

#[cfg(not(all(target_os = "linux", not(loom))))]
pub fn wake_all(_bell: &AtomicU32) {}
