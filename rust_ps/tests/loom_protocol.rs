//! Exhaustive interleaving checks (loom) of the two lock-free protocols in
//! `src/protocol.rs`. Run with: `RUSTFLAGS="--cfg loom" cargo test --release --test loom_protocol`
//! (the Makefile's `test-rust` does). The payload memory is modelled with loom's
//! `UnsafeCell`, which fails the test on any unsynchronised read/write overlap.
#![cfg(loom)]

use loom::cell::UnsafeCell;
use loom::sync::atomic::{AtomicU32, AtomicU64};
use loom::sync::Arc;
use loom::thread;
use rust_ps::protocol::{DoubleBuffer, Ring};

/// Producer publishes 3 payloads through a 2-slot ring; the consumer sees each once, in
/// order, complete, and slot reuse never overlaps a read.
#[test]
fn ring_delivers_each_payload_once_in_order() {
    loom::model(|| {
        struct Shared {
            published: AtomicU64,
            consumed: AtomicU64,
            slots: [UnsafeCell<(u64, u64)>; 2],
        }
        let shared = Arc::new(Shared {
            published: AtomicU64::new(0),
            consumed: AtomicU64::new(0),
            slots: [UnsafeCell::new((0, 0)), UnsafeCell::new((0, 0))],
        });
        const ITEMS: u64 = 3;
        let producer = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let ring = Ring { published: &shared.published, consumed: &shared.consumed, capacity: 2 };
                let mut item = 0;
                while item < ITEMS {
                    if let Some(seq) = ring.producer_next() {
                        // a two-word payload: a torn read would show mismatched halves
                        shared.slots[(seq % 2) as usize].with_mut(|p| unsafe { *p = (item + 1, (item + 1) * 10) });
                        ring.publish(seq);
                        item += 1;
                    } else {
                        thread::yield_now();
                    }
                }
            })
        };
        let ring = Ring { published: &shared.published, consumed: &shared.consumed, capacity: 2 };
        let mut expected = 1;
        while expected <= ITEMS {
            if let Some(seq) = ring.consumer_next() {
                let (a, b) = shared.slots[(seq % 2) as usize].with(|p| unsafe { *p });
                assert_eq!((a, b), (expected, expected * 10));
                ring.consume(seq);
                expected += 1;
            } else {
                thread::yield_now();
            }
        }
        producer.join().unwrap();
    });
}

/// A writer publishes two versions into the double buffer while a reader pins and reads
/// twice: the reader always sees a whole version (both halves equal) and never a
/// version older than one it saw before.
#[test]
fn double_buffer_readers_never_see_a_copy_being_written() {
    loom::model(|| {
        struct Shared {
            current: AtomicU32,
            pins: [AtomicU32; 2],
            copies: [UnsafeCell<(u32, u32)>; 2],
        }
        let shared = Arc::new(Shared {
            current: AtomicU32::new(0),
            pins: [AtomicU32::new(0), AtomicU32::new(0)],
            copies: [UnsafeCell::new((0, 0)), UnsafeCell::new((0, 0))],
        });
        let writer = {
            let shared = Arc::clone(&shared);
            thread::spawn(move || {
                let buffers = DoubleBuffer { current: &shared.current };
                for version in 1..=2u32 {
                    let target = buffers.write_target();
                    while !buffers.may_write([&shared.pins[target]]) {
                        thread::yield_now();
                    }
                    shared.copies[target].with_mut(|p| unsafe { *p = (version, version) });
                    buffers.flip(target);
                }
            })
        };
        let buffers = DoubleBuffer { current: &shared.current };
        let mut last = 0;
        for _ in 0..2 {
            let index = buffers.pin([&shared.pins[0], &shared.pins[1]]);
            let (a, b) = shared.copies[index].with(|p| unsafe { *p });
            buffers.unpin([&shared.pins[0], &shared.pins[1]], index);
            assert_eq!(a, b, "torn read");
            assert!(a >= last, "went back in time: {a} after {last}");
            last = a;
        }
        writer.join().unwrap();
    });
}
