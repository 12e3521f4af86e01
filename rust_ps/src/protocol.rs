//! The two lock-free protocols the store is built on. They are written against
//! `crate::sync` atomics (loom's under `--cfg loom`), separate from the shared-memory
//! plumbing, so that `tests/loom_protocol.rs` checks exactly this code.
//!
//! 1. [`Ring`]: one update queue per worker, Lamport's single-producer/single-consumer
//!    bounded ring driven by two monotonically increasing counters.
//! 2. [`DoubleBuffer`]: the model state kept twice with a reader count per copy (a
//!    two-slot read-copy-update). The server writes the copy nobody reads and then
//!    flips `current`; readers never wait for the server, and the server waits at most
//!    for readers that pinned the old copy before the previous flip.

use crate::sync::{fence, AtomicU32, AtomicU64, Ordering};

/// Lamport's bounded SPSC queue over `capacity` payload slots.
///
/// Invariants (`p = published`, `c = consumed`, both only ever increase):
/// * `c <= p <= c + capacity`.
/// * Slot `s % capacity` for `c <= s < p` holds a complete payload that only the
///   consumer reads; slots for `p <= s < c + capacity` are free and only the producer
///   writes them.
/// * Only the producer stores `published`, only the consumer stores `consumed`.
///   The producer writes a slot *before* its `publish` (release), the consumer reads a
///   published slot after loading `published` (acquire) and *before* its `consume`
///   (release), so a slot's writes and reads never overlap.
pub struct Ring<'a> {
    pub published: &'a AtomicU64,
    pub consumed: &'a AtomicU64,
    pub capacity: u64,
}

impl Ring<'_> {
    /// Producer side: the sequence number of the next free slot, or `None` when all
    /// `capacity` slots hold unconsumed payloads.
    pub fn producer_next(&self) -> Option<u64> {
        let published = self.published.load(Ordering::Relaxed); // only we store it
        let consumed = self.consumed.load(Ordering::SeqCst);
        (published - consumed < self.capacity).then_some(published)
    }

    /// Producer side: make slot `seq` (from `producer_next`, fully written) visible.
    pub fn publish(&self, seq: u64) {
        self.published.store(seq + 1, Ordering::SeqCst);
    }

    /// Consumer side: the sequence number of the oldest published, unconsumed slot.
    pub fn consumer_next(&self) -> Option<u64> {
        let consumed = self.consumed.load(Ordering::Relaxed); // only we store it
        let published = self.published.load(Ordering::SeqCst);
        (published > consumed).then_some(consumed)
    }

    /// Consumer side: hand slot `seq` back to the producer (after reading it).
    pub fn consume(&self, seq: u64) {
        self.consumed.store(seq + 1, Ordering::SeqCst);
    }

    /// Payloads published but not yet consumed.
    pub fn pending(&self) -> u64 {
        self.published.load(Ordering::SeqCst) - self.consumed.load(Ordering::SeqCst)
    }
}

/// Two copies of the state, `current` naming the latest, and per reader *group* (one
/// per worker process, one for the owner) a pin count per copy. Counts are per group so
/// that the server can drop the pins of a process that died mid-read.
///
/// Invariants:
/// * Only the single writer (the server's coordinator thread) stores `current`, and
///   only the writer writes a copy's data, always the copy that is not `current`.
/// * The writer starts writing copy `t != current` only after observing every group's
///   `pins[t] == 0` *after* the flip that made `t` stale; a reader reads copy `i`'s
///   data only after incrementing its group's `pins[i]` and then re-observing
///   `current == i`. With a sequentially consistent fence between the two steps on
///   both sides (Dekker's pattern), either the reader sees the flip and backs off, or
///   the writer sees the reader's pin and waits, so a copy is never read while written.
pub struct DoubleBuffer<'a> {
    pub current: &'a AtomicU32,
}

impl DoubleBuffer<'_> {
    /// Reader side: pin the latest copy in `pins` (the reader's group) and return its
    /// index. Never blocks on the writer.
    pub fn pin(&self, pins: [&AtomicU32; 2]) -> usize {
        loop {
            let index = self.current.load(Ordering::SeqCst) as usize;
            pins[index].fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            if self.current.load(Ordering::SeqCst) as usize == index {
                return index;
            }
            // The writer flipped between our two loads: it may be about to write `index`.
            pins[index].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Reader side: release a pin. Returns true when the group's count for this copy
    /// reached zero (the caller then wakes a writer that may be waiting).
    pub fn unpin(&self, pins: [&AtomicU32; 2], index: usize) -> bool {
        pins[index].fetch_sub(1, Ordering::SeqCst) == 1
    }

    /// Writer side: the copy the next update must be written into.
    pub fn write_target(&self) -> usize {
        1 - self.current.load(Ordering::SeqCst) as usize
    }

    /// Writer side: whether copy `target` may be written now, given every group's pin
    /// count for that copy.
    pub fn may_write<'p>(&self, target_pins: impl IntoIterator<Item = &'p AtomicU32>) -> bool {
        fence(Ordering::SeqCst);
        target_pins.into_iter().all(|pins| pins.load(Ordering::SeqCst) == 0)
    }

    /// Writer side: publish copy `target` (fully written) as the latest.
    pub fn flip(&self, target: usize) {
        self.current.store(target as u32, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }
}
