//! The owner side: creates the segment, runs the server that applies updates, and
//! removes the segment on close (or, for owners that died, at the next store's start).

use crate::error::{Result, StoreError};
use crate::layout::{is_active, Header, Layout, Shared, LAYOUT_VERSION, MAGIC};
use crate::options::{Mode, Rule, StoreOptions, CHUNK_FLOATS};
use crate::pool::ApplyPool;
use crate::rules::{self, Momentum, SgdParams};
use crate::shm::{self, Segment};
use crate::snapshot::Pinned;
use crate::sync::Ordering;
use crate::wait;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server has done, for benchmarks and the runtime's metrics.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Merges applied (updates in asp/ssp, rounds in bsp).
    pub applies: std::sync::atomic::AtomicU64,
    /// Time spent merging (the apply threads' parallel section), in nanoseconds.
    pub apply_nanos: std::sync::atomic::AtomicU64,
    /// Payload bytes read plus state bytes read and written by those merges.
    pub bytes_moved: std::sync::atomic::AtomicU64,
    /// Time spent waiting for readers to release the copy to be written.
    pub wait_nanos: std::sync::atomic::AtomicU64,
    /// Payloads refused as non-finite (`reject_non_finite`): the sum of the workers'
    /// `rejected`. A refused merge's time and bytes still count above; `applies` counts
    /// published merges only.
    pub rejected: std::sync::atomic::AtomicU64,
}

/// Per-worker counters, for progress displays and staleness metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStats {
    pub pushes: u64,
    /// Pushes merged into the state (consumed and not refused).
    pub applied: u64,
    /// Pushes refused as non-finite (`reject_non_finite`).
    pub rejected: u64,
    pub attached_pid: u32,
    pub departed: bool,
}

pub struct ParameterStore {
    shared: Shared,
    options: StoreOptions,
    name: String,
    apply_threads: usize,
    stop_server: Arc<AtomicBool>,
    server: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    stats: Arc<ServerStats>,
}

impl ParameterStore {
    /// Create a store and start its server. `initial` (length `num_params`) seeds the
    /// state; otherwise it starts at zero. Segments of owners that died are removed first.
    pub fn create(options: StoreOptions, initial: Option<&[f32]>) -> Result<ParameterStore> {
        options.validate()?;
        if let Some(values) = initial {
            if values.len() != options.num_params {
                return Err(StoreError::invalid(format!(
                    "initial has {} values but num_params={}",
                    values.len(),
                    options.num_params
                )));
            }
            if options.reject_non_finite {
                if let Some(at) = values.iter().position(|x| !x.is_finite()) {
                    return Err(StoreError::invalid(format!(
                        "initial[{at}]={} is not finite; with reject_non_finite=True the state must start finite",
                        values[at]
                    )));
                }
            }
        }
        cleanup_stale();
        let name = options.name.clone().unwrap_or_else(unique_name);
        let layout = Layout::for_options(&options);
        let shared = Shared::new(Segment::create(&name, layout.total)?, layout);
        // SAFETY: we just created the segment (O_EXCL) and have not set `ready`, so no
        // other process reads the header's plain fields yet (attach refuses before
        // `ready`); the pointer is the page-aligned start of a mapping larger than a Header.
        unsafe {
            let h = shared.segment().as_ptr() as *mut Header;
            (*h).magic = MAGIC;
            (*h).layout_version = LAYOUT_VERSION;
            (*h).mode = options.mode as u32;
            (*h).rule = options.rule as u32;
            (*h).num_workers = options.num_workers as u32;
            (*h).slots = options.slots as u32;
            (*h).staleness = options.staleness;
            (*h).nesterov = options.nesterov as u32;
            (*h).reject_non_finite = options.reject_non_finite as u32;
            (*h).owner_pid = shm::current_pid();
            (*h).num_params = options.num_params as u64;
            (*h).owner_start_time = shm::process_start_time(shm::current_pid()).unwrap_or(0);
            (*h).momentum = options.momentum;
            (*h).weight_decay = options.weight_decay;
            (*h).total_len = layout.total as u64;
        }
        if let Some(values) = initial {
            // SAFETY: copy 0 is `num_params` floats inside the mapping; nobody reads it
            // before `ready`.
            unsafe {
                std::ptr::copy_nonoverlapping(values.as_ptr(), shared.state_ptr(0), values.len())
            };
        }
        let header = shared.header();
        header.lr_bits.store(options.lr.to_bits(), Ordering::SeqCst);
        header.ready.store(1, Ordering::SeqCst);

        let apply_threads = options.effective_apply_threads();
        let stop_server = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ServerStats::default());
        let server = {
            let shared = shared.clone();
            let stop = Arc::clone(&stop_server);
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("rust_ps-server".into())
                .spawn(move || Server::new(shared, apply_threads, stats).run(&stop))
                .map_err(|e| StoreError::Os(format!("could not start the server thread: {e}")))?
        };
        Ok(ParameterStore {
            shared,
            options,
            name,
            apply_threads,
            stop_server,
            server: Mutex::new(Some(server)),
            closed: AtomicBool::new(false),
            stats,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn options(&self) -> &StoreOptions {
        &self.options
    }

    pub fn apply_threads(&self) -> usize {
        self.apply_threads
    }

    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn version(&self) -> u64 {
        self.shared.header().version.load(Ordering::SeqCst)
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    fn check_open(&self) -> Result<()> {
        if self.is_closed() {
            return Err(StoreError::Closed(format!("parameter store {:?} is closed", self.name)));
        }
        Ok(())
    }

    /// Change the learning rate of rule `sgd`; takes effect at the next applied update.
    pub fn set_lr(&self, lr: f64) -> Result<()> {
        self.check_open()?;
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(StoreError::invalid(format!("lr={lr} must be a finite number >= 0")));
        }
        self.shared.header().lr_bits.store(lr.to_bits(), Ordering::SeqCst);
        Ok(())
    }

    pub fn lr(&self) -> f64 {
        f64::from_bits(self.shared.header().lr_bits.load(Ordering::SeqCst))
    }

    /// Copy the latest state into `out`; returns its version.
    pub fn read(&self, out: &mut [f32]) -> Result<u64> {
        let pinned = self.pin()?;
        if out.len() != pinned.len() {
            return Err(StoreError::invalid(format!(
                "out has {} values but the store holds num_params={}",
                out.len(),
                pinned.len()
            )));
        }
        pinned.copy_to(out);
        Ok(pinned.version())
    }

    /// Pin the latest state for zero-copy reading (see [`Pinned`]).
    pub fn pin(&self) -> Result<Pinned> {
        self.check_open()?;
        Ok(Pinned::new(&self.shared, None))
    }

    pub fn server_stats(&self) -> &ServerStats {
        &self.stats
    }

    pub fn worker_stats(&self) -> Vec<WorkerStats> {
        (0..self.shared.layout.num_workers)
            .map(|w| {
                let block = self.shared.worker(w);
                // `consumed` first: the server counts a refusal in `rejected` before it
                // consumes the payload, so every refusal included in `consumed` is in
                // `rejected` too and `applied` never counts a refused push (a refusal
                // in progress may make it lag by one).
                let consumed = block.consumed.load(Ordering::SeqCst);
                let rejected = block.rejected.load(Ordering::SeqCst);
                WorkerStats {
                    pushes: block.published.load(Ordering::SeqCst),
                    applied: consumed.saturating_sub(rejected),
                    rejected,
                    attached_pid: block.control.attached_pid.load(Ordering::SeqCst),
                    departed: !is_active(block),
                }
            })
            .collect()
    }

    /// Stop the server, fail every waiting client, and remove the segment's name.
    /// Mappings (clients, zero-copy views) stay valid until they are dropped.
    /// Idempotent.
    pub fn close(&self) {
        if self.closed.swap(true, Ordering::SeqCst) {
            return;
        }
        // Unlink first: whoever sees `closed` also finds the name gone (POSIX; on Windows
        // the name lives while a handle does, and a late `attach` reads `closed` instead).
        self.shared.segment().unlink();
        let header = self.shared.header();
        header.closed.store(1, Ordering::SeqCst);
        self.stop_server.store(true, Ordering::SeqCst);
        wait::ring(&header.server_bell);
        wait::ring(&header.version_bell);
        wait::ring(&header.pin_bell);
        if let Some(server) = self.server.lock().expect("server handle").take() {
            let _ = server.join();
        }
    }
}

impl Drop for ParameterStore {
    fn drop(&mut self) {
        self.close();
    }
}

fn unique_name() -> String {
    use std::sync::atomic::AtomicU64;
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{}-{}-{:x}", shm::current_pid(), COUNTER.fetch_add(1, Ordering::SeqCst), nanos)
}

/// A raw pointer that may cross into the apply threads. Each thread derives a slice of
/// a range disjoint from every other thread's (see `rules::slice_range`).
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to build disjoint per-thread slices of shared-memory regions
// that the server alone writes during an apply (see `Server::apply`).
unsafe impl Send for SendPtr {}
// SAFETY: as for `Send`.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Through a method, so closures capture the whole (Sync) wrapper, not the field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// One payload to merge: its slot and its normalised coefficient.
#[derive(Clone, Copy)]
struct Source {
    worker: usize,
    seq: u64,
    coefficient: f64,
}

/// The server: a coordinator thread (this) plus an [`ApplyPool`]. It alone consumes
/// queues and writes the state.
struct Server {
    shared: Shared,
    pool: ApplyPool,
    mode: Mode,
    rule: Rule,
    /// `reject_non_finite`: merges report whether they wrote only finite values, and
    /// one that did not is not published (see `apply`). Fixed for the store's life.
    check: bool,
    next_worker: usize,
    last_liveness_check: Instant,
    stats: Arc<ServerStats>,
}

impl Server {
    fn new(shared: Shared, apply_threads: usize, stats: Arc<ServerStats>) -> Server {
        let (mode, rule) = (shared.mode(), shared.rule());
        let check = shared.header().reject_non_finite != 0;
        Server {
            shared,
            pool: ApplyPool::new(apply_threads),
            mode,
            rule,
            check,
            next_worker: 0,
            last_liveness_check: Instant::now(),
            stats,
        }
    }

    fn run(mut self, stop: &AtomicBool) {
        let shared = self.shared.clone();
        let header = shared.header();
        while !stop.load(Ordering::SeqCst) {
            let seen = header.server_bell.load(Ordering::SeqCst);
            let worked = match self.mode {
                Mode::Bsp => self.try_round(stop),
                Mode::Asp | Mode::Ssp => self.try_apply_one(stop),
            };
            if worked {
                continue;
            }
            self.check_liveness(Duration::from_millis(200));
            wait::sleep_while(&header.server_bell, seen, wait::TICK);
        }
    }

    /// ASP/SSP: apply the oldest payload of the next worker (round robin) that has one.
    fn try_apply_one(&mut self, stop: &AtomicBool) -> bool {
        let workers = self.shared.layout.num_workers;
        for k in 0..workers {
            let worker = (self.next_worker + k) % workers;
            if let Some(seq) = self.shared.ring(worker).consumer_next() {
                let weight = f64::from_bits(self.shared.slot_weight(worker, seq).load(Ordering::SeqCst));
                let sources = [Source { worker, seq, coefficient: weight }];
                if self.apply(&sources, stop) {
                    self.next_worker = (worker + 1) % workers;
                }
                return true;
            }
        }
        false
    }

    /// BSP: once every active worker has a payload queued, merge one from each (plus
    /// any left by workers that have departed since pushing).
    fn try_round(&mut self, stop: &AtomicBool) -> bool {
        let mut sources = Vec::new();
        for worker in 0..self.shared.layout.num_workers {
            match self.shared.ring(worker).consumer_next() {
                Some(seq) => sources.push(Source { worker, seq, coefficient: 0.0 }),
                None if is_active(self.shared.worker(worker)) => return false,
                None => {}
            }
        }
        if sources.is_empty() {
            return false;
        }
        self.normalise(&mut sources);
        self.apply(&sources, stop);
        true
    }

    /// BSP: coefficients `f_i / sum f` over `sources`, from their slots' weights.
    fn normalise(&self, sources: &mut [Source]) {
        let weights: Vec<f64> = sources
            .iter()
            .map(|s| f64::from_bits(self.shared.slot_weight(s.worker, s.seq).load(Ordering::SeqCst)))
            .collect();
        let total: f64 = weights.iter().sum();
        for (source, weight) in sources.iter_mut().zip(weights) {
            source.coefficient = weight / total;
        }
    }

    /// The payload in `source`'s slot (published, not yet consumed).
    fn payload(&self, source: &Source) -> &[f32] {
        // SAFETY: the slot is published and not consumed, so its producer does not write
        // it until we consume it (ring invariant); it is `num_params` floats inside the
        // mapping, which `self.shared` keeps alive.
        unsafe {
            std::slice::from_raw_parts(self.shared.slot_ptr(source.worker, source.seq), self.shared.layout.num_params)
        }
    }

    /// Merge `sources` into the stale state copy, publish it, free the slots.
    /// Returns false only if asked to stop while waiting for readers.
    ///
    /// With `reject_non_finite` a merge that wrote a NaN or an infinity is not
    /// published (the stale copy it wrote is simply written again next time) and its
    /// payloads count as rejected. In BSP the round is first merged again without the
    /// payloads that hold a non-finite value, found by one more pass over the round's
    /// payloads, on this rare path only; if none is left, or that merge is not finite
    /// either (an overflow), the whole round is refused. Either way every slot is
    /// consumed and `version_bell` rung, so the pushers' pulls return; the version
    /// counts published merges only.
    fn apply(&mut self, sources: &[Source], stop: &AtomicBool) -> bool {
        let shared = self.shared.clone();
        let header = shared.header();
        let buffers = shared.double_buffer();
        let target = buffers.write_target();
        let waiting = Instant::now();
        loop {
            let seen = header.pin_bell.load(Ordering::SeqCst);
            if buffers.may_write(self.shared.all_pins(target)) {
                break;
            }
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            wait::sleep_while(&header.pin_bell, seen, wait::TICK);
            self.check_liveness(wait::TICK);
        }

        let applying = Instant::now();
        let mut floats = self.merge_floats(sources.len());
        let mut refused: Vec<Source> = Vec::new();
        let mut published = self.merge(sources, target);
        if !published {
            refused = sources.to_vec();
            if self.mode == Mode::Bsp && sources.len() > 1 {
                let (mut finite, bad): (Vec<Source>, Vec<Source>) =
                    sources.iter().copied().partition(|s| rules::all_finite(self.payload(s)));
                floats += sources.len();
                if !finite.is_empty() && !bad.is_empty() {
                    self.normalise(&mut finite);
                    floats += self.merge_floats(finite.len());
                    if self.merge(&finite, target) {
                        published = true;
                        refused = bad;
                    }
                }
            }
        }

        let n = self.shared.layout.num_params;
        let stats = &self.stats;
        stats.wait_nanos.fetch_add((applying - waiting).as_nanos() as u64, Ordering::Relaxed);
        stats.apply_nanos.fetch_add(applying.elapsed().as_nanos() as u64, Ordering::Relaxed);
        stats.bytes_moved.fetch_add((floats * n * 4) as u64, Ordering::Relaxed);
        if published {
            stats.applies.fetch_add(1, Ordering::Relaxed);
            let version = header.version.load(Ordering::SeqCst) + 1;
            header.buffer_version[target].store(version, Ordering::SeqCst);
            buffers.flip(target);
            header.version.store(version, Ordering::SeqCst);
        }
        // Counted before the slots are consumed: a pull that returns sees its refusal.
        for source in &refused {
            self.shared.worker(source.worker).rejected.fetch_add(1, Ordering::SeqCst);
        }
        stats.rejected.fetch_add(refused.len() as u64, Ordering::Relaxed);
        for source in sources {
            self.shared.ring(source.worker).consume(source.seq);
        }
        wait::ring(&header.version_bell);
        true
    }

    /// Floats one merge of `sources` payloads reads (payloads, plus state and momentum
    /// where used) and writes (out, momentum), for `bytes_moved`.
    fn merge_floats(&self, sources: usize) -> usize {
        match (self.rule, self.shared.layout.momentum.is_some()) {
            (Rule::Average, _) => sources + 1,
            (Rule::Blend, _) | (Rule::Sgd, false) => sources + 2,
            (Rule::Sgd, true) => sources + 4,
        }
    }

    /// Run the merge rule over `sources`, out of place from the current state copy into
    /// copy `target`, on the pool's threads. Returns whether every value written is
    /// finite (always true without `reject_non_finite`).
    fn merge(&self, sources: &[Source], target: usize) -> bool {
        let header = self.shared.header();
        let n = self.shared.layout.num_params;
        let out = SendPtr(self.shared.state_ptr(target));
        let state = SendPtr(self.shared.state_ptr(1 - target));
        // (written, read): one copy updated in place, or, with two, the copy of the
        // current state read and the copy of `target` written.
        let momentum: Option<(SendPtr, Option<SendPtr>)> = match self.shared.layout.momentum_copies {
            0 => None,
            1 => self.shared.momentum_ptr(0).map(|m| (SendPtr(m), None)),
            _ => {
                let (to, from) = (self.shared.momentum_ptr(target), self.shared.momentum_ptr(1 - target));
                to.zip(from).map(|(to, from)| (SendPtr(to), Some(SendPtr(from))))
            }
        };
        let payloads: Vec<SendPtr> = sources.iter().map(|s| SendPtr(self.shared.slot_ptr(s.worker, s.seq))).collect();
        let coefficients: Vec<f64> = sources.iter().map(|s| s.coefficient).collect();
        let lr = f64::from_bits(header.lr_bits.load(Ordering::SeqCst));
        let sgd = SgdParams {
            lr: lr as f32,
            momentum: header.momentum as f32,
            weight_decay: header.weight_decay as f32,
            nesterov: header.nesterov != 0,
        };
        let (rule, check) = (self.rule, self.check);
        let finite = AtomicBool::new(true);
        let chunks = n.div_ceil(CHUNK_FLOATS);
        self.pool.run(chunks, &|chunk| {
            if check && !finite.load(Ordering::Relaxed) {
                return; // a chunk wrote a non-finite value: this merge is not published as is
            }
            let range = rules::slice_range(n, chunks, chunk);
            let len = range.len();
            // SAFETY: `out` is the copy no reader holds (checked by `apply`) and that only
            // this server writes; `state`, the momentum copies and the payload slots
            // are each `n` floats inside the mapping. Every chunk runs once (pool
            // contract) on its own `range`, disjoint from the others, so the `&mut`
            // slices never alias; with two momentum copies the one read (the current
            // state's) is not the one written (`target`'s), which only the server
            // writes; published payload slots are not written by their producer until
            // `apply` consumes them.
            let (out, state, momentum, payloads) = unsafe {
                (
                    std::slice::from_raw_parts_mut(out.get().add(range.start), len),
                    std::slice::from_raw_parts(state.get().add(range.start), len),
                    momentum.map(|(to, from)| {
                        let to = std::slice::from_raw_parts_mut(to.get().add(range.start), len);
                        match from {
                            None => Momentum::InPlace(to),
                            Some(from) => Momentum::Copy {
                                from: std::slice::from_raw_parts(from.get().add(range.start), len),
                                to,
                            },
                        }
                    }),
                    payloads
                        .iter()
                        .map(|p| std::slice::from_raw_parts(p.get().add(range.start), len))
                        .collect::<Vec<&[f32]>>(),
                )
            };
            let ok = if check {
                merge_chunk::<true>(rule, out, state, momentum, &payloads, &coefficients, sgd)
            } else {
                merge_chunk::<false>(rule, out, state, momentum, &payloads, &coefficients, sgd)
            };
            if !ok {
                finite.store(false, Ordering::Relaxed);
            }
        });
        // `pool.run` returned after every chunk (its SeqCst `active` handshake orders
        // the helpers' stores before this load).
        finite.load(Ordering::Relaxed)
    }

    /// Mark workers whose process died as departed, dropping any pins they held, so
    /// that BSP rounds, SSP bounds and state writes stop waiting for them.
    fn check_liveness(&mut self, every: Duration) {
        if self.last_liveness_check.elapsed() < every {
            return;
        }
        self.last_liveness_check = Instant::now();
        let own = shm::current_pid();
        let mut changed = false;
        for worker in 0..self.shared.layout.num_workers {
            let control = &self.shared.worker(worker).control;
            let pid = control.attached_pid.load(Ordering::SeqCst);
            if pid == 0 || pid == own {
                continue;
            }
            let start = control.attached_start_time.load(Ordering::SeqCst);
            if !shm::process_alive(pid, start)
                && control.attached_pid.compare_exchange(pid, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok()
            {
                control.pins[0].store(0, Ordering::SeqCst);
                control.pins[1].store(0, Ordering::SeqCst);
                control.departed.store(1, Ordering::SeqCst);
                changed = true;
            }
        }
        if changed {
            let header = self.shared.header();
            wait::ring(&header.version_bell);
            wait::ring(&header.pin_bell);
        }
    }
}

/// One chunk of a merge with `rule`; returns whether every value written to `out` is
/// finite (always true unless `CHECK`).
fn merge_chunk<const CHECK: bool>(
    rule: Rule,
    out: &mut [f32],
    state: &[f32],
    momentum: Option<Momentum<'_>>,
    payloads: &[&[f32]],
    coefficients: &[f64],
    sgd: SgdParams,
) -> bool {
    match rule {
        Rule::Average => rules::weighted_sum::<CHECK>(out, payloads, coefficients),
        Rule::Blend => rules::blend::<CHECK>(out, state, payloads[0], coefficients[0]),
        Rule::Sgd => rules::sgd::<CHECK>(out, state, momentum, payloads, coefficients, sgd),
    }
}

/// One of this crate's segments on the machine, as `list_segments` sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentInfo {
    pub name: String,
    /// 0 when the header is unreadable (half-created, or not a store of this version).
    pub owner_pid: u32,
    /// Whether the owner process still runs (false for unreadable headers).
    pub owner_alive: bool,
    /// Dead owner, or half-created more than a minute ago: `cleanup_stale` removes it.
    pub stale: bool,
}

/// Every `dblps-*` segment on the machine with its owner and whether it is stale.
pub fn list_segments() -> Vec<SegmentInfo> {
    let mut found = Vec::new();
    for entry in shm::segment_names() {
        let owner = match Segment::open(&entry.name) {
            Ok(segment) if segment.len() >= std::mem::size_of::<Header>() => {
                // SAFETY: page-aligned mapping at least a header long; any bit pattern
                // is a valid `Header`.
                let header = unsafe { &*(segment.as_ptr() as *const Header) };
                (header.magic == MAGIC && header.owner_pid != 0)
                    .then(|| (header.owner_pid, shm::process_alive(header.owner_pid, header.owner_start_time)))
            }
            _ => None,
        };
        let (owner_pid, owner_alive) = owner.unwrap_or((0, false));
        let stale = match owner {
            Some((_, alive)) => !alive,
            None => entry.age.is_some_and(|age| age > Duration::from_secs(60)),
        };
        found.push(SegmentInfo { name: entry.name, owner_pid, owner_alive, stale });
    }
    found
}

/// Remove segments whose owner process is gone (e.g. killed with SIGKILL), and
/// segments left half-created more than a minute ago. Returns the names removed.
pub fn cleanup_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for segment in list_segments().into_iter().filter(|s| s.stale) {
        shm::unlink_name(&segment.name);
        removed.push(segment.name);
    }
    removed
}
