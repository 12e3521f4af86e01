//! A fixed team of threads that runs one closure over disjoint slices of the state.
//!
//! The coordinator (the server thread that owns the pool) publishes a job and a new
//! `generation`, unparks the helpers, runs part 0 itself, and parks until `remaining`
//! reaches zero. There is no mutex anywhere: the job pointer travels by release/acquire
//! on `generation`, completion by acquire/release on `remaining`, and sleeping uses
//! park/unpark, whose token makes a wake-up before the park harmless.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};

use crate::layout::CachePadded;

/// A job: called once per part with the part's index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct PoolShared {
    /// Incremented once per job; helpers run the job when they see a new value.
    generation: CachePadded<AtomicU64>,
    /// Helpers still running the current job.
    remaining: CachePadded<AtomicUsize>,
    /// Points at the coordinator's `Job` for the current generation (null between jobs).
    job: AtomicPtr<()>,
    shutdown: AtomicBool,
    coordinator: Thread,
}

pub struct ApplyPool {
    shared: Arc<PoolShared>,
    helpers: Vec<JoinHandle<()>>,
}

const SPINS: u32 = 256;

impl ApplyPool {
    /// A pool of `parts` parts: the calling thread (which must be the one that calls
    /// `run`) plus `parts - 1` helper threads.
    pub fn new(parts: usize) -> ApplyPool {
        let shared = Arc::new(PoolShared {
            generation: CachePadded(AtomicU64::new(0)),
            remaining: CachePadded(AtomicUsize::new(0)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            shutdown: AtomicBool::new(false),
            coordinator: thread::current(),
        });
        let helpers = (1..parts.max(1))
            .map(|part| {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("rust_ps-apply-{part}"))
                    .spawn(move || helper_loop(&shared, part))
                    .expect("spawn apply thread")
            })
            .collect();
        ApplyPool { shared, helpers }
    }

    pub fn parts(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Run `job(part)` for every part in parallel; returns when all parts are done.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.helpers.is_empty() {
            job(0);
            return;
        }
        let job_ref: Job<'_> = job;
        let shared = &self.shared;
        shared.job.store(&job_ref as *const Job<'_> as *mut (), Ordering::Release);
        shared.remaining.store(self.helpers.len(), Ordering::Release);
        shared.generation.fetch_add(1, Ordering::Release);
        for helper in &self.helpers {
            helper.thread().unpark();
        }
        job(0);
        let mut spins = 0;
        while shared.remaining.load(Ordering::Acquire) != 0 {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::park();
            }
        }
        // Helpers are done with `job_ref`; it must not be reachable after we return.
        shared.job.store(std::ptr::null_mut(), Ordering::Release);
    }
}

fn helper_loop(shared: &PoolShared, part: usize) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let generation = shared.generation.load(Ordering::Acquire);
            if generation != seen {
                seen = generation;
                break;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::park();
            }
        }
        let job = shared.job.load(Ordering::Acquire) as *const Job<'_>;
        // SAFETY: `run` stored a pointer to a live `Job` before bumping `generation`
        // (release, paired with our acquire) and does not return, so the job stays
        // alive, until `remaining` reaches zero, which happens only after this call.
        unsafe { (*job)(part) };
        if shared.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.coordinator.unpark();
        }
    }
}

impl Drop for ApplyPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for helper in self.helpers.drain(..) {
            helper.thread().unpark();
            let _ = helper.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64 as Counter;

    #[test]
    fn every_part_runs_exactly_once_per_job() {
        let pool = ApplyPool::new(4);
        let counts: Vec<Counter> = (0..4).map(|_| Counter::new(0)).collect();
        for _ in 0..2000 {
            pool.run(&|part| {
                counts[part].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 2000));
    }

    #[test]
    fn writes_of_all_parts_are_visible_after_run() {
        let pool = ApplyPool::new(3);
        let data: Vec<Counter> = (0..300).map(|_| Counter::new(0)).collect();
        for round in 1..=500u64 {
            pool.run(&|part| {
                for cell in &data[part * 100..(part + 1) * 100] {
                    cell.store(round, Ordering::Relaxed);
                }
            });
            assert!(data.iter().all(|c| c.load(Ordering::Relaxed) == round));
        }
    }
}
