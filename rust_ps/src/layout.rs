//! The shared-memory segment of one store, and typed access to it.
//!
//! ```text
//! [Header][WorkerBlock; W]  [state copy 0][state copy 1]  [momentum (x2)]  [queues: W x slots payloads]
//!  page-aligned regions; every payload, state copy and momentum copy is `num_params` f32
//! ```
//!
//! Rule sgd has a momentum buffer; with `reject_non_finite` and momentum > 0 it is
//! kept twice, copy `i` belonging to state copy `i`, so that a refused merge leaves
//! both the state and the momentum of the current copy untouched.
//!
//! Who writes what (the protocol; see also `protocol.rs`):
//! * The owner writes the header's configuration fields once, then sets `ready`.
//!   Clients refuse to attach before `ready`.
//! * Worker `i`'s client is the only producer of queue `i`: it writes payload slots,
//!   their weights and `published`. The server's coordinator thread is the only
//!   consumer: it reads slots and stores `consumed`.
//! * Only the server writes state copies (the one that is not `current`), `current`,
//!   `buffer_version`, `version`, the momentum buffer(s) and each worker's `rejected`.
//!   Readers (pulls, `read`) pin a copy through their group's pin counts and copy it
//!   out.
//! * `version_bell` is rung after anything a client may wait for changes (a version, a
//!   consumed slot, another worker's push or departure, closing); `server_bell` after
//!   anything the server waits for (a push, a departure, closing).

use crate::error::{Result, StoreError};
use crate::options::{Mode, Rule, StoreOptions, MAX_SLOTS};
use crate::protocol::{DoubleBuffer, Ring};
use crate::shm::Segment;
use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

pub const MAGIC: u64 = u64::from_le_bytes(*b"DBLPS\0v1");
/// 2: `reject_non_finite` in the header, `rejected` per worker, two momentum copies.
pub const LAYOUT_VERSION: u32 = 2;
const PAGE: usize = 4096;

/// Aligns a hot atomic to its own pair of cache lines (adjacent-line prefetch on x86),
/// so that counters written by different processes never share a line.
#[repr(C, align(128))]
pub struct CachePadded<T>(pub T);

impl<T> std::ops::Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

#[repr(C)]
pub struct Header {
    // Written once by the owner before `ready`; read-only afterwards.
    pub magic: u64,
    pub layout_version: u32,
    pub mode: u32,
    pub rule: u32,
    pub num_workers: u32,
    pub slots: u32,
    pub staleness: u32,
    pub nesterov: u32,
    pub owner_pid: u32,
    pub num_params: u64,
    pub owner_start_time: u64,
    pub momentum: f64,
    pub weight_decay: f64,
    pub total_len: u64,
    // Fields up to here keep the offsets they had in layout 1: `list_segments` and
    // `cleanup_stale` of every version read `magic`, `owner_pid` and `owner_start_time`
    // of any store on the machine, and a shifted field would make one version take
    // another's live store for a dead one and remove it. New fields go below.
    /// 1: merges that would write a NaN or an infinity are refused (see `StoreOptions`).
    pub reject_non_finite: u32,
    /// 0 while the owner initialises, 1 once clients may attach.
    pub ready: CachePadded<AtomicU32>,
    /// 1 once the owner closed the store; every waiting call then fails.
    pub closed: CachePadded<AtomicU32>,
    /// Updates (ASP/SSP) or rounds (BSP) applied so far; only the server increments it.
    pub version: CachePadded<AtomicU64>,
    /// Learning rate for rule `sgd`, as f64 bits; changed by the owner at run time.
    pub lr_bits: CachePadded<AtomicU64>,
    pub version_bell: CachePadded<AtomicU32>,
    pub server_bell: CachePadded<AtomicU32>,
    /// Index (0/1) of the state copy holding the latest version.
    pub current: CachePadded<AtomicU32>,
    /// The owner's pins of each state copy (its `read`s); workers keep theirs in
    /// their `WorkerControl`.
    pub owner_pins: CachePadded<[AtomicU32; 2]>,
    /// Rung when a group's pin count drops to zero; the server sleeps on it while it
    /// waits to write a copy.
    pub pin_bell: CachePadded<AtomicU32>,
    /// `version` of the state held by each copy.
    pub buffer_version: [CachePadded<AtomicU64>; 2],
}

#[repr(C)]
pub struct WorkerBlock {
    /// Payloads this worker has published (its SSP clock); only its client stores it.
    pub published: CachePadded<AtomicU64>,
    /// Payloads the server has consumed, applied or refused (their slots are free again).
    pub consumed: CachePadded<AtomicU64>,
    /// Payloads the server consumed without applying them (refused as non-finite,
    /// `reject_non_finite`). Only the server stores it, always *before* the `consumed`
    /// store that frees the payload's slot: a client that saw its push consumed (a
    /// pull returned) also sees it counted here.
    pub rejected: CachePadded<AtomicU64>,
    pub control: CachePadded<WorkerControl>,
}

#[repr(C)]
pub struct WorkerControl {
    /// Pid of the attached client process, 0 when none.
    pub attached_pid: AtomicU32,
    /// 1 once the worker closed or its process died: BSP rounds and SSP bounds stop
    /// waiting for it. A new attach clears it.
    pub departed: AtomicU32,
    pub attached_start_time: AtomicU64,
    /// This worker's pins of each state copy (see `protocol::DoubleBuffer`); reset by
    /// the server if the process dies holding one.
    pub pins: [AtomicU32; 2],
    /// Weight `f` of the payload in each slot, as f64 bits; written before `published`.
    pub weights: [AtomicU64; MAX_SLOTS],
}

/// Byte offsets of the regions, derived from the sizes alone.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub num_params: usize,
    pub num_workers: usize,
    pub slots: usize,
    pub workers: usize,
    pub states: [usize; 2],
    /// Offset of momentum copy 0 (rule sgd); copy `i` follows at `i * payload stride`.
    pub momentum: Option<usize>,
    /// Momentum copies: 0 (not sgd), 1 (updated in place) or 2 (one per state copy).
    pub momentum_copies: usize,
    pub queues: usize,
    pub total: usize,
}

fn align_up(value: usize, to: usize) -> usize {
    value.div_ceil(to) * to
}

impl Layout {
    pub fn new(num_params: usize, num_workers: usize, slots: usize, momentum_copies: usize) -> Layout {
        assert!(momentum_copies <= 2);
        let payload = align_up(num_params * 4, PAGE);
        let workers = align_up(std::mem::size_of::<Header>(), PAGE);
        let state0 = align_up(workers + num_workers * std::mem::size_of::<WorkerBlock>(), PAGE);
        let state1 = state0 + payload;
        let mut next = state1 + payload;
        let momentum = (momentum_copies > 0).then(|| {
            let at = next;
            next += momentum_copies * payload;
            at
        });
        let queues = next;
        let total = queues + num_workers * slots * payload;
        Layout {
            num_params,
            num_workers,
            slots,
            workers,
            states: [state0, state1],
            momentum,
            momentum_copies,
            queues,
            total,
        }
    }

    pub fn for_options(options: &StoreOptions) -> Layout {
        let copies = momentum_copies(options.rule, options.momentum, options.reject_non_finite);
        Layout::new(options.num_params, options.num_workers, options.slots, copies)
    }

    fn payload_stride(&self) -> usize {
        align_up(self.num_params * 4, PAGE)
    }
}

/// A mapped store segment with typed accessors. Cloning shares the mapping.
#[derive(Clone)]
pub struct Shared {
    segment: Arc<Segment>,
    pub layout: Layout,
}

impl Shared {
    /// Wrap a freshly created, zero-filled segment. The caller initialises the header.
    pub fn new(segment: Segment, layout: Layout) -> Shared {
        assert!(segment.len() >= layout.total, "segment smaller than its layout");
        Shared { segment: Arc::new(segment), layout }
    }

    /// Wrap an existing segment, checking that it is an initialised store.
    pub fn attach(segment: Segment) -> Result<Shared> {
        let name = segment.name().to_string();
        if segment.len() < std::mem::size_of::<Header>() {
            return Err(StoreError::NotFound(format!("shared memory {name:?} is not a parameter store (too small)")));
        }
        // SAFETY: the mapping is page-aligned and at least one header long; every bit
        // pattern is a valid `Header` (integers, floats and atomics only).
        let header = unsafe { &*(segment.as_ptr() as *const Header) };
        if header.ready.load(Ordering::SeqCst) != 1 {
            return Err(StoreError::NotFound(format!(
                "shared memory {name:?} is not a ready parameter store (still being created, or its owner died)"
            )));
        }
        if header.magic != MAGIC || header.layout_version != LAYOUT_VERSION {
            return Err(StoreError::NotFound(format!(
                "shared memory {name:?} is not a parameter store of this version (layout {} != {LAYOUT_VERSION})",
                header.layout_version
            )));
        }
        let copies = match Rule::from_u32(header.rule) {
            Some(rule) => momentum_copies(rule, header.momentum, header.reject_non_finite != 0),
            None => 0,
        };
        let layout =
            Layout::new(header.num_params as usize, header.num_workers as usize, header.slots as usize, copies);
        if layout.total as u64 != header.total_len || segment.len() < layout.total {
            return Err(StoreError::NotFound(format!("shared memory {name:?} does not match its header")));
        }
        Ok(Shared { segment: Arc::new(segment), layout })
    }

    pub fn segment(&self) -> &Arc<Segment> {
        &self.segment
    }

    pub fn header(&self) -> &Header {
        // SAFETY: `new`/`attach` checked the segment holds a header at offset 0; see
        // `attach` for why any bit pattern is valid.
        unsafe { &*(self.segment.as_ptr() as *const Header) }
    }

    pub fn worker(&self, index: usize) -> &WorkerBlock {
        assert!(index < self.layout.num_workers);
        // SAFETY: worker blocks lie inside the segment at `workers` (checked by the
        // layout), page-aligned base plus multiples of the 128-aligned block size.
        unsafe {
            &*(self.segment.as_ptr().add(self.layout.workers) as *const WorkerBlock).add(index)
        }
    }

    pub fn mode(&self) -> Mode {
        Mode::from_u32(self.header().mode).unwrap_or(Mode::Asp)
    }

    pub fn rule(&self) -> Rule {
        Rule::from_u32(self.header().rule).unwrap_or(Rule::Blend)
    }

    pub fn ring(&self, worker: usize) -> Ring<'_> {
        let block = self.worker(worker);
        Ring { published: &block.published, consumed: &block.consumed, capacity: self.layout.slots as u64 }
    }

    pub fn double_buffer(&self) -> DoubleBuffer<'_> {
        DoubleBuffer { current: &self.header().current }
    }

    /// Pin counters of a reader group: `Some(worker)` or `None` for the owner.
    pub fn pins(&self, group: Option<usize>) -> [&AtomicU32; 2] {
        let pins = match group {
            Some(worker) => &self.worker(worker).control.pins,
            None => &self.header().owner_pins.0,
        };
        [&pins[0], &pins[1]]
    }

    /// Every group's pin counter for state copy `index`.
    pub fn all_pins(&self, index: usize) -> impl Iterator<Item = &AtomicU32> + '_ {
        std::iter::once(&self.header().owner_pins.0[index])
            .chain((0..self.layout.num_workers).map(move |w| &self.worker(w).control.pins[index]))
    }

    /// Start of state copy `index` (`num_params` f32).
    pub fn state_ptr(&self, index: usize) -> *mut f32 {
        // SAFETY: in bounds by construction of the layout.
        unsafe { self.segment.as_ptr().add(self.layout.states[index]) as *mut f32 }
    }

    /// Start of momentum copy `copy` (`num_params` f32), `None` for rules without one.
    pub fn momentum_ptr(&self, copy: usize) -> Option<*mut f32> {
        assert!(self.layout.momentum.is_none() || copy < self.layout.momentum_copies);
        let at = self.layout.momentum? + copy * self.layout.payload_stride();
        // SAFETY: in bounds by construction of the layout (`copy < momentum_copies`).
        Some(unsafe { self.segment.as_ptr().add(at) as *mut f32 })
    }

    /// Start of payload slot `seq % slots` of `worker`'s queue.
    pub fn slot_ptr(&self, worker: usize, seq: u64) -> *mut f32 {
        let slot = (seq % self.layout.slots as u64) as usize;
        let at = self.layout.queues + (worker * self.layout.slots + slot) * self.layout.payload_stride();
        // SAFETY: in bounds by construction of the layout.
        unsafe { self.segment.as_ptr().add(at) as *mut f32 }
    }

    pub fn slot_weight(&self, worker: usize, seq: u64) -> &AtomicU64 {
        &self.worker(worker).control.weights[(seq % self.layout.slots as u64) as usize]
    }
}

/// Momentum copies a store keeps: rule sgd has one, updated in place, or, when it may
/// refuse a merge and momentum is used, two (one per state copy).
pub fn momentum_copies(rule: Rule, momentum: f64, reject_non_finite: bool) -> usize {
    match rule {
        Rule::Sgd if reject_non_finite && momentum != 0.0 => 2,
        Rule::Sgd => 1,
        _ => 0,
    }
}

/// Is this worker still expected to push (attached or not yet arrived)?
pub fn is_active(block: &WorkerBlock) -> bool {
    block.control.departed.load(Ordering::SeqCst) == 0
}

// The owner fields sit where layout 1 put them (see `Header`), so that stores of other
// versions on the machine are judged alive or stale correctly.
const _: () = assert!(std::mem::offset_of!(Header, magic) == 0);
const _: () = assert!(std::mem::offset_of!(Header, layout_version) == 8);
const _: () = assert!(std::mem::offset_of!(Header, owner_pid) == 36);
const _: () = assert!(std::mem::offset_of!(Header, owner_start_time) == 48);
const _: () = assert!(std::mem::offset_of!(Header, ready) == 128);

// The layout relies on atomics being plain 4- and 8-byte words.
const _: () = assert!(std::mem::size_of::<AtomicU32>() == 4);
const _: () = assert!(std::mem::size_of::<AtomicU64>() == 8);
