//! The worker side: attach to a store by name from any process on the node, pull the
//! latest state, push updates through this worker's queue.

use crate::error::{Result, StoreError};
use crate::layout::{is_active, Shared};
use crate::options::Mode;
use crate::shm::{self, Segment};
use crate::snapshot::Pinned;
use crate::sync::Ordering;
use crate::wait;
use std::sync::atomic::AtomicBool;

/// Called about every [`wait::TICK`] while a call blocks; returning true aborts the
/// call with [`StoreError::Interrupted`] (Python passes a signal check).
pub type Interrupt<'a> = &'a mut dyn FnMut() -> bool;

pub struct StoreClient {
    shared: Shared,
    worker: usize,
    name: String,
    closed: AtomicBool,
    /// Sequence number of a slot handed out by `reserve` and not yet committed.
    reserved: std::sync::Mutex<Option<u64>>,
}

impl StoreClient {
    /// Attach as worker `worker` (0-based) to the store called `name`.
    pub fn attach(name: &str, worker: usize) -> Result<StoreClient> {
        let shared = Shared::attach(Segment::open(name)?)?;
        let header = shared.header();
        if header.closed.load(Ordering::SeqCst) != 0 {
            return Err(StoreError::Closed(format!("parameter store {name:?} is closed")));
        }
        let workers = shared.layout.num_workers;
        if worker >= workers {
            return Err(StoreError::invalid(format!(
                "worker_id={worker} is out of range: store {name:?} has {workers} workers (ids 0..={})",
                workers - 1
            )));
        }
        let control = &shared.worker(worker).control;
        let own = shm::current_pid();
        let previous = control.attached_pid.load(Ordering::SeqCst);
        if previous != 0 {
            let previous_start = control.attached_start_time.load(Ordering::SeqCst);
            if previous == own || shm::process_alive(previous, previous_start) {
                return Err(StoreError::invalid(format!(
                    "worker_id={worker} of store {name:?} is already attached by process {previous}; \
                     close that client first"
                )));
            }
        }
        if control.attached_pid.compare_exchange(previous, own, Ordering::SeqCst, Ordering::SeqCst).is_err() {
            return Err(StoreError::invalid(format!(
                "worker_id={worker} of store {name:?} was attached by another process at the same moment"
            )));
        }
        if previous != 0 {
            // The previous client's process died: drop any pins it held.
            control.pins[0].store(0, Ordering::SeqCst);
            control.pins[1].store(0, Ordering::SeqCst);
        }
        control.attached_start_time.store(shm::process_start_time(own).unwrap_or(0), Ordering::SeqCst);
        control.departed.store(0, Ordering::SeqCst);
        wait::ring(&header.server_bell);
        Ok(StoreClient {
            shared,
            worker,
            name: name.to_string(),
            closed: AtomicBool::new(false),
            reserved: std::sync::Mutex::new(None),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn worker(&self) -> usize {
        self.worker
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn num_params(&self) -> usize {
        self.shared.layout.num_params
    }

    pub fn version(&self) -> u64 {
        self.shared.header().version.load(Ordering::SeqCst)
    }

    /// Pushes this worker has published so far (its clock in SSP).
    pub fn pushes(&self) -> u64 {
        self.shared.worker(self.worker).published.load(Ordering::SeqCst)
    }

    /// This worker's pushes that the store refused as non-finite (`reject_non_finite`).
    /// After a `pull` (or `pin`) returns, every push it waited for is counted, so a rise
    /// since the previous pull means one of the pushes in between was refused.
    pub fn rejected(&self) -> u64 {
        self.shared.worker(self.worker).rejected.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(StoreError::Closed(format!(
                "this client of store {:?} (worker {}) is closed",
                self.name, self.worker
            )));
        }
        let header = self.shared.header();
        if header.closed.load(Ordering::SeqCst) != 0 {
            return Err(StoreError::Closed(format!("parameter store {:?} was closed by its owner", self.name)));
        }
        Ok(())
    }

    /// Between waits: fail if the store closed or its owner died, or on interrupt.
    fn tick(&self, interrupt: &mut Interrupt<'_>) -> Result<()> {
        self.check_open()?;
        let header = self.shared.header();
        if !shm::process_alive(header.owner_pid, header.owner_start_time) {
            return Err(StoreError::OwnerDied(format!(
                "the process that owns parameter store {:?} (pid {}) died",
                self.name, header.owner_pid
            )));
        }
        if interrupt() {
            return Err(StoreError::Interrupted);
        }
        Ok(())
    }

    fn check_len(&self, what: &str, len: usize) -> Result<()> {
        if len != self.num_params() {
            return Err(StoreError::invalid(format!(
                "{what} has {len} values but the store holds num_params={}",
                self.num_params()
            )));
        }
        Ok(())
    }

    /// Wait until this worker's own pushes are applied (in BSP: until the round they
    /// belong to is complete), then pin the latest state.
    pub fn pin(&self, interrupt: Interrupt<'_>) -> Result<Pinned> {
        self.check_open()?;
        let mut interrupt = interrupt;
        let ring = self.shared.ring(self.worker);
        wait::wait_until(&self.shared.header().version_bell, || ring.pending() == 0, || self.tick(&mut interrupt))?;
        Ok(Pinned::new(&self.shared, Some(self.worker)))
    }

    /// Copy the latest state (including this worker's own pushes) into `out`; returns
    /// its version.
    pub fn pull(&self, out: &mut [f32], interrupt: Interrupt<'_>) -> Result<u64> {
        self.check_len("out", out.len())?;
        let pinned = self.pin(interrupt)?;
        pinned.copy_to(out);
        Ok(pinned.version())
    }

    /// SSP: may this worker publish another payload? (At most `staleness` pushes
    /// ahead of the slowest worker still expected to push.)
    fn within_staleness(&self) -> bool {
        let header = self.shared.header();
        if self.shared.mode() != Mode::Ssp {
            return true;
        }
        let mine = self.shared.worker(self.worker).published.load(Ordering::SeqCst);
        let slowest = (0..self.shared.layout.num_workers)
            .map(|w| self.shared.worker(w))
            .filter(|b| is_active(b))
            .map(|b| b.published.load(Ordering::SeqCst))
            .min()
            .unwrap_or(mine);
        mine.saturating_sub(slowest) <= header.staleness as u64
    }

    /// Block until a slot is free (and, in SSP, the staleness bound allows a push).
    fn wait_for_slot(&self, interrupt: Interrupt<'_>) -> Result<u64> {
        self.check_open()?;
        let mut interrupt = interrupt;
        let ring = self.shared.ring(self.worker);
        let mut seq = None;
        wait::wait_until(
            &self.shared.header().version_bell,
            || {
                seq = if self.within_staleness() { ring.producer_next() } else { None };
                seq.is_some()
            },
            || self.tick(&mut interrupt),
        )?;
        Ok(seq.expect("wait_until returned with a slot"))
    }

    fn publish(&self, seq: u64, weight: f64) -> u64 {
        self.shared.slot_weight(self.worker, seq).store(weight.to_bits(), Ordering::SeqCst);
        self.shared.ring(self.worker).publish(seq);
        let header = self.shared.header();
        wait::ring(&header.server_bell);
        if self.shared.mode() == Mode::Ssp {
            wait::ring(&header.version_bell); // our clock moved: SSP waiters re-check
        }
        self.version()
    }

    fn check_weight(weight: f64) -> Result<()> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(StoreError::invalid(format!("weight={weight} must be a finite number > 0")));
        }
        Ok(())
    }

    /// Queue `update` (weights, or a gradient for rule `sgd`) with merge weight
    /// `weight`; returns the store version when it was queued. Blocks only while this
    /// worker's queue is full (or, in SSP, while it is too far ahead).
    pub fn push(&self, update: &[f32], weight: f64, interrupt: Interrupt<'_>) -> Result<u64> {
        self.check_len("update", update.len())?;
        Self::check_weight(weight)?;
        if self.reserved.lock().expect("reserved").is_some() {
            return Err(StoreError::invalid("push() while a reserved slot is not committed; call commit() first"));
        }
        let seq = self.wait_for_slot(interrupt)?;
        // SAFETY: slot `seq` is free (producer_next) and only this producer writes it
        // until `publish`; it is `num_params` floats inside the mapping, distinct from
        // `update`.
        unsafe {
            std::ptr::copy_nonoverlapping(update.as_ptr(), self.shared.slot_ptr(self.worker, seq), update.len())
        };
        Ok(self.publish(seq, weight))
    }

    /// Zero-copy push, part one: wait for a free slot and return a pointer to it for
    /// the caller to fill (`num_params` floats); then call [`StoreClient::commit`].
    pub fn reserve(&self, interrupt: Interrupt<'_>) -> Result<*mut f32> {
        let mut reserved = self.reserved.lock().expect("reserved");
        if reserved.is_some() {
            return Err(StoreError::invalid("reserve() called twice without commit()"));
        }
        let seq = self.wait_for_slot(interrupt)?;
        *reserved = Some(seq);
        Ok(self.shared.slot_ptr(self.worker, seq))
    }

    /// Zero-copy push, part two: publish the reserved slot with merge weight `weight`.
    pub fn commit(&self, weight: f64) -> Result<u64> {
        self.check_open()?;
        Self::check_weight(weight)?;
        let seq = self
            .reserved
            .lock()
            .expect("reserved")
            .take()
            .ok_or_else(|| StoreError::invalid("commit() without a reserved slot; call reserve() first"))?;
        Ok(self.publish(seq, weight))
    }

    /// Leave the store: BSP rounds and SSP bounds stop waiting for this worker. Pushes
    /// already queued are still applied. Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        self.reserved.lock().expect("reserved").take();
        let control = &self.shared.worker(self.worker).control;
        control.departed.store(1, Ordering::SeqCst);
        let _ = control.attached_pid.compare_exchange(shm::current_pid(), 0, Ordering::SeqCst, Ordering::SeqCst);
        let header = self.shared.header();
        wait::ring(&header.server_bell);
        wait::ring(&header.version_bell);
    }
}

impl Drop for StoreClient {
    fn drop(&mut self) {
        self.close();
    }
}
