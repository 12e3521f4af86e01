//! Atomics used by the lock-free protocols: `std`'s normally, loom's under `--cfg loom`
//! so that `tests/loom_protocol.rs` can explore every interleaving of `protocol.rs`.

#[cfg(loom)]
pub use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

#[cfg(not(loom))]
pub use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
