//! A fixed team of threads that runs one job over many chunks of the state, claimed
//! dynamically, so a merge finishes with whichever threads are actually running.
//!
//! Why dynamic: on a CPU node the server shares cores with the training workers, so a
//! helper thread may be descheduled for a whole time slice; with a static split the
//! merge would wait for it. Here the coordinator (the server thread that owns the pool)
//! and the helpers claim chunk indices from `next_chunk`; a helper that wakes late
//! finds nothing left and goes back to sleep.
//!
//! The job is borrowed from the coordinator's stack, so it must not be touched after
//! `run` returns. Protocol (no mutex anywhere):
//! * coordinator: store job, reset `next_chunk`, clear `closed`, bump `generation`
//!   (release), unpark helpers; claim chunks until none are left; set `closed`; wait
//!   until `active == 0`; clear the job pointer.
//! * helper: on a new generation, `active += 1`, then (SeqCst, Dekker-style against the
//!   coordinator's `closed` then `active` check) re-check `closed`: if set, leave
//!   without touching the job; else claim chunks, then `active -= 1`.
//!   Either the coordinator sees the helper's `active` increment and waits for it, or
//!   the helper sees `closed` and never dereferences the job.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle, Thread};

use crate::layout::CachePadded;

/// A job: called once per chunk with the chunk's index.
type Job<'a> = &'a (dyn Fn(usize) + Sync);

struct PoolShared {
    /// Incremented once per job; helpers look for work when they see a new value.
    generation: CachePadded<AtomicU64>,
    /// Next chunk index to claim; chunks `>= chunks` mean the job is exhausted.
    next_chunk: CachePadded<AtomicUsize>,
    chunks: AtomicUsize,
    /// Set by the coordinator once every chunk is claimed: late helpers must not start.
    closed: CachePadded<AtomicBool>,
    /// Helpers currently inside the job.
    active: CachePadded<AtomicUsize>,
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
    /// A pool of `threads` threads: the calling thread (which must be the one that
    /// calls `run`) plus `threads - 1` helpers.
    pub fn new(threads: usize) -> ApplyPool {
        let shared = Arc::new(PoolShared {
            generation: CachePadded(AtomicU64::new(0)),
            next_chunk: CachePadded(AtomicUsize::new(0)),
            chunks: AtomicUsize::new(0),
            closed: CachePadded(AtomicBool::new(true)),
            active: CachePadded(AtomicUsize::new(0)),
            job: AtomicPtr::new(std::ptr::null_mut()),
            shutdown: AtomicBool::new(false),
            coordinator: thread::current(),
        });
        let helpers = (1..threads.max(1))
            .map(|index| {
                let shared = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("rust_ps-apply-{index}"))
                    .spawn(move || helper_loop(&shared))
                    .expect("spawn apply thread")
            })
            .collect();
        ApplyPool { shared, helpers }
    }

    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Run `job(chunk)` for every chunk in `0..chunks`, each exactly once, on the pool's
    /// threads; returns when all are done.
    pub fn run(&self, chunks: usize, job: &(dyn Fn(usize) + Sync)) {
        if self.helpers.is_empty() || chunks <= 1 {
            (0..chunks).for_each(job);
            return;
        }
        let shared = &self.shared;
        let job_ref: Job<'_> = job;
        shared.job.store(&job_ref as *const Job<'_> as *mut (), Ordering::SeqCst);
        shared.chunks.store(chunks, Ordering::SeqCst);
        shared.next_chunk.store(0, Ordering::SeqCst);
        shared.closed.store(false, Ordering::SeqCst);
        shared.generation.fetch_add(1, Ordering::SeqCst);
        for helper in &self.helpers {
            helper.thread().unpark();
        }
        claim_chunks(shared, job);
        shared.closed.store(true, Ordering::SeqCst);
        let mut spins = 0;
        while shared.active.load(Ordering::SeqCst) != 0 {
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                thread::park();
            }
        }
        // No helper is inside the job and none will enter it: it may go out of scope.
        shared.job.store(std::ptr::null_mut(), Ordering::SeqCst);
    }
}

/// Claim and run chunks until none are left.
fn claim_chunks(shared: &PoolShared, job: &(dyn Fn(usize) + Sync)) {
    let chunks = shared.chunks.load(Ordering::SeqCst);
    loop {
        let chunk = shared.next_chunk.fetch_add(1, Ordering::SeqCst);
        if chunk >= chunks {
            return;
        }
        job(chunk);
    }
}

fn helper_loop(shared: &PoolShared) {
    let mut seen = 0u64;
    loop {
        let mut spins = 0;
        loop {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            let generation = shared.generation.load(Ordering::SeqCst);
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
        shared.active.fetch_add(1, Ordering::SeqCst);
        if !shared.closed.load(Ordering::SeqCst) {
            let job = shared.job.load(Ordering::SeqCst) as *const Job<'_>;
            // SAFETY: `closed` was false after we registered in `active`, so the
            // coordinator had not yet finished its `closed`-then-`active` check and will
            // wait for our `active` decrement before letting the job go out of scope;
            // the pointer was stored before `generation` was bumped.
            claim_chunks(shared, unsafe { *job });
        }
        if shared.active.fetch_sub(1, Ordering::SeqCst) == 1 {
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
    fn every_chunk_runs_exactly_once_per_job() {
        let pool = ApplyPool::new(4);
        let counts: Vec<Counter> = (0..37).map(|_| Counter::new(0)).collect();
        for _ in 0..2000 {
            pool.run(counts.len(), &|chunk| {
                counts[chunk].fetch_add(1, Ordering::Relaxed);
            });
        }
        assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 2000));
    }

    #[test]
    fn writes_of_all_chunks_are_visible_after_run() {
        let pool = ApplyPool::new(3);
        let data: Vec<Counter> = (0..300).map(|_| Counter::new(0)).collect();
        for round in 1..=500u64 {
            pool.run(30, &|chunk| {
                for cell in &data[chunk * 10..(chunk + 1) * 10] {
                    cell.store(round, Ordering::Relaxed);
                }
            });
            assert!(data.iter().all(|c| c.load(Ordering::Relaxed) == round));
        }
    }

    #[test]
    fn a_slow_thread_does_not_hold_the_others_back() {
        // One chunk sleeps; with dynamic claiming the other chunks are done by the
        // remaining threads meanwhile, so the job takes about one sleep, not more.
        let pool = ApplyPool::new(2);
        let started = std::time::Instant::now();
        pool.run(20, &|chunk| {
            if chunk == 0 {
                thread::sleep(std::time::Duration::from_millis(50));
            }
        });
        assert!(started.elapsed() < std::time::Duration::from_millis(500));
    }
}
