//! Multi-threaded tests of the store through its public API (workers are threads here;
//! the Python suite repeats the key ones with real processes).

use rust_ps::{Mode, ParameterStore, Rule, StoreClient, StoreError, StoreOptions};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;

fn never() -> impl FnMut() -> bool {
    || false
}

fn options(num_params: usize, num_workers: usize, mode: Mode, rule: Rule) -> StoreOptions {
    StoreOptions { num_params, num_workers, mode, rule, ..StoreOptions::default() }
}

/// BSP rounds of known vectors: worker w pushes the constant (round * 10 + w) with
/// weight (w + 1); after each round every worker pulls exactly the weighted mean, and
/// the version counts rounds.
#[test]
fn bsp_rounds_give_the_exact_weighted_mean() {
    let workers = 4;
    let rounds = 50;
    let n = 800_000; // 4 chunks: enough to use several apply threads
    let mut opts = options(n, workers, Mode::Bsp, Rule::Average);
    opts.apply_threads = Some(3);
    let store = ParameterStore::create(opts, None).unwrap();
    assert_eq!(store.apply_threads(), 3);
    let name = store.name().to_string();
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let name = name.clone();
            thread::spawn(move || {
                let client = StoreClient::attach(&name, w).unwrap();
                let mut out = vec![0.0f32; n];
                for round in 0..rounds {
                    let update = vec![(round * 10 + w) as f32; n];
                    client.push(&update, (w + 1) as f64, &mut never()).unwrap();
                    let version = client.pull(&mut out, &mut never()).unwrap();
                    // weights 1..4 sum to 10: mean = round*10 + (0*1 + 1*2 + 2*3 + 3*4)/10 = round*10 + 2
                    let expected = (round * 10) as f32 + 2.0;
                    // The next round needs this worker's next push, so the pull sees exactly this one.
                    assert_eq!(version, round as u64 + 1);
                    assert!(out.iter().all(|&x| x == expected), "round {round}: {} != {expected}", out[0]);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.version(), rounds as u64);
    let mut out = vec![0.0f32; n];
    store.read(&mut out).unwrap();
    assert!(out.iter().all(|&x| x == ((rounds - 1) * 10) as f32 + 2.0));
}

/// Every push is applied exactly once: with rule sgd, lr = 1 and gradient -1 on a
/// worker-specific element, the final state counts the pushes of each worker exactly.
#[test]
fn asp_applies_every_push_exactly_once() {
    for mode in [Mode::Asp, Mode::Ssp] {
        let workers = 4;
        let pushes = 2000;
        let n = workers * 16;
        let mut opts = options(n, workers, mode, Rule::Sgd);
        opts.lr = 1.0;
        opts.staleness = if mode == Mode::Ssp { 2 } else { 0 };
        let store = ParameterStore::create(opts, None).unwrap();
        let name = store.name().to_string();
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let name = name.clone();
                thread::spawn(move || {
                    let client = StoreClient::attach(&name, w).unwrap();
                    let mut grad = vec![0.0f32; n];
                    grad[w * 16] = -1.0;
                    for _ in 0..pushes {
                        client.push(&grad, 1.0, &mut never()).unwrap();
                    }
                    let mut out = vec![0.0f32; n];
                    client.pull(&mut out, &mut never()).unwrap();
                    assert!(out[w * 16] >= pushes as f32); // read-your-writes
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let mut out = vec![0.0f32; n];
        let version = store.read(&mut out).unwrap();
        assert_eq!(version, (workers * pushes) as u64, "{mode:?}");
        for w in 0..workers {
            assert_eq!(out[w * 16], pushes as f32, "{mode:?} worker {w}");
        }
        assert_eq!(out.iter().sum::<f32>(), (workers * pushes) as f32);
    }
}

/// SSP: no worker ever publishes more than `staleness + 1` pushes ahead of the slowest.
#[test]
fn ssp_bounds_how_far_a_worker_runs_ahead() {
    let workers = 3;
    let staleness = 2u64;
    let mut opts = options(64, workers, Mode::Ssp, Rule::Blend);
    opts.staleness = staleness as u32;
    let store = ParameterStore::create(opts, None).unwrap();
    let name = store.name().to_string();
    let clocks: Arc<Vec<AtomicU64>> = Arc::new((0..workers).map(|_| AtomicU64::new(0)).collect());
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let name = name.clone();
            let clocks = Arc::clone(&clocks);
            thread::spawn(move || {
                let client = StoreClient::attach(&name, w).unwrap();
                let update = vec![1.0f32; 64];
                for step in 0..200u64 {
                    if w == 0 {
                        thread::sleep(std::time::Duration::from_micros(300)); // the slow one
                    }
                    client.push(&update, 1.0, &mut never()).unwrap();
                    clocks[w].store(step + 1, Ordering::SeqCst);
                    let slowest = clocks.iter().map(|c| c.load(Ordering::SeqCst)).min().unwrap();
                    // Our clock was published before the slowest's counter we just read
                    // may lag by one push in flight, hence +1 beyond the bound.
                    assert!(step < slowest + staleness + 2, "worker {w} at {} vs slowest {slowest}", step + 1);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let stats = store.worker_stats();
    assert!(stats.iter().all(|s| s.pushes == 200));
}

/// Readers never see a half-written state: every pull returns a constant vector.
#[test]
fn pulls_see_whole_versions_while_the_server_writes() {
    let n = 600_000; // 3 chunks, merged by 2 threads
    let mut opts = options(n, 2, Mode::Asp, Rule::Blend);
    opts.apply_threads = Some(2);
    let store = ParameterStore::create(opts, None).unwrap();
    let name = store.name().to_string();
    let writer = {
        let name = name.clone();
        thread::spawn(move || {
            let client = StoreClient::attach(&name, 0).unwrap();
            for k in 1..=300 {
                // blend with weight 1 of a constant onto a constant stays constant
                client.push(&vec![k as f32; n], 1.0, &mut never()).unwrap();
            }
        })
    };
    let reader = thread::spawn(move || {
        let client = StoreClient::attach(&name, 1).unwrap();
        let mut out = vec![0.0f32; n];
        for _ in 0..300 {
            client.pull(&mut out, &mut never()).unwrap();
            let first = out[0];
            assert!(out.iter().all(|&x| x == first), "torn read");
        }
    });
    writer.join().unwrap();
    reader.join().unwrap();
}

#[test]
fn closing_the_store_fails_blocked_and_later_calls() {
    let store = ParameterStore::create(options(8, 2, Mode::Bsp, Rule::Average), None).unwrap();
    let name = store.name().to_string();
    let blocked = {
        let name = name.clone();
        thread::spawn(move || {
            let client = StoreClient::attach(&name, 0).unwrap();
            client.push(&[1.0; 8], 1.0, &mut never()).unwrap();
            let mut out = [0.0f32; 8];
            client.pull(&mut out, &mut never()) // waits for worker 1, who never pushes
        })
    };
    thread::sleep(std::time::Duration::from_millis(100));
    store.close();
    match blocked.join().unwrap() {
        Err(StoreError::Closed(message)) => assert!(message.contains("closed"), "{message}"),
        other => panic!("expected Closed, got {other:?}"),
    }
    assert!(matches!(StoreClient::attach(&name, 1), Err(StoreError::NotFound(_))));
    assert!(matches!(store.read(&mut [0.0; 8]), Err(StoreError::Closed(_))));
}

#[test]
fn a_departed_worker_does_not_block_bsp_rounds() {
    let store = ParameterStore::create(options(4, 2, Mode::Bsp, Rule::Average), None).unwrap();
    let a = StoreClient::attach(store.name(), 0).unwrap();
    let b = StoreClient::attach(store.name(), 1).unwrap();
    b.close();
    a.push(&[2.0; 4], 1.0, &mut never()).unwrap();
    let mut out = [0.0f32; 4];
    assert_eq!(a.pull(&mut out, &mut never()).unwrap(), 1);
    assert_eq!(out, [2.0; 4]);
}

#[test]
fn bad_arguments_name_the_value_and_the_allowed_range() {
    let err = |opts: StoreOptions| match ParameterStore::create(opts, None) {
        Err(StoreError::InvalidArgument(m)) => m,
        Err(other) => panic!("unexpected error {other:?}"),
        Ok(_) => panic!("accepted bad options"),
    };
    assert!(err(options(0, 1, Mode::Asp, Rule::Blend)).contains("num_params=0"));
    assert!(err(options(4, 1, Mode::Bsp, Rule::Blend)).contains("rule='blend'"));
    assert!(err(options(4, 1, Mode::Asp, Rule::Average)).contains("mode='bsp'"));
    assert!(err(StoreOptions { slots: 1, ..options(4, 1, Mode::Asp, Rule::Blend) }).contains("slots=1"));
    assert!(err(StoreOptions { name: Some("a/b".into()), ..options(4, 1, Mode::Asp, Rule::Blend) }).contains("\"a/b\""));

    let store = ParameterStore::create(options(4, 2, Mode::Asp, Rule::Blend), None).unwrap();
    let message = |r: Result<StoreClient, StoreError>| r.err().map(|e| e.to_string()).unwrap();
    assert!(message(StoreClient::attach(store.name(), 2)).contains("worker_id=2 is out of range"));
    assert!(message(StoreClient::attach("no-such-store", 0)).contains("no parameter store named \"no-such-store\""));
    let client = StoreClient::attach(store.name(), 0).unwrap();
    assert!(message(StoreClient::attach(store.name(), 0)).contains("already attached"));
    let e = client.push(&[1.0; 3], 1.0, &mut never()).unwrap_err().to_string();
    assert!(e.contains("update has 3 values but the store holds num_params=4"), "{e}");
    let e = client.push(&[1.0; 4], -1.0, &mut never()).unwrap_err().to_string();
    assert!(e.contains("weight=-1"), "{e}");
    client.close();
    assert!(matches!(client.pull(&mut [0.0; 4], &mut never()), Err(StoreError::Closed(_))));
}

#[test]
fn interrupt_aborts_a_blocked_pull() {
    let store = ParameterStore::create(options(4, 2, Mode::Bsp, Rule::Average), None).unwrap();
    let client = StoreClient::attach(store.name(), 0).unwrap();
    client.push(&[1.0; 4], 1.0, &mut never()).unwrap();
    let mut calls = 0;
    let result = client.pull(&mut [0.0; 4], &mut || {
        calls += 1;
        calls >= 2
    });
    assert!(matches!(result, Err(StoreError::Interrupted)));
}

#[test]
fn zero_copy_reserve_and_commit() {
    let store = ParameterStore::create(options(4, 1, Mode::Asp, Rule::Blend), Some(&[0.0; 4])).unwrap();
    let client = StoreClient::attach(store.name(), 0).unwrap();
    let slot = client.reserve(&mut never()).unwrap();
    // SAFETY: `reserve` hands out a free slot of num_params floats until `commit`.
    unsafe { std::slice::from_raw_parts_mut(slot, 4) }.copy_from_slice(&[3.0; 4]);
    assert!(client.push(&[1.0; 4], 1.0, &mut never()).is_err(), "push while reserved");
    client.commit(0.5).unwrap(); // (0 + 0.5 * 3) / 1.5 = 1
    let pinned = client.pin(&mut never()).unwrap();
    assert_eq!(pinned.version(), 1);
    // SAFETY: the pinned copy holds num_params floats and is not written while pinned.
    assert_eq!(unsafe { std::slice::from_raw_parts(pinned.as_ptr(), 4) }, &[1.0; 4]);
}

// --- reject_non_finite ----------------------------------------------------------------

use rust_ps::rules::{self, Momentum, SgdParams};

/// A state of 3 chunks merged by 2 threads, so that a refused merge is seen by one
/// thread while the other may still be merging (or skipping) its chunks.
const N3: usize = 3 * (1 << 18) - 100;

fn rejecting(num_workers: usize, mode: Mode, rule: Rule) -> StoreOptions {
    let mut opts = options(N3, num_workers, mode, rule);
    opts.apply_threads = Some(2);
    opts.reject_non_finite = true;
    if rule == Rule::Sgd {
        (opts.lr, opts.momentum, opts.weight_decay, opts.nesterov) = (0.1, 0.9, 0.01, true);
    }
    opts
}

fn sgd_params(opts: &StoreOptions) -> SgdParams {
    SgdParams {
        lr: opts.lr as f32,
        momentum: opts.momentum as f32,
        weight_decay: opts.weight_decay as f32,
        nesterov: opts.nesterov,
    }
}

/// A finite payload that differs per element and per step.
fn payload(step: usize, worker: usize) -> Vec<f32> {
    (0..N3).map(|i| ((i * 7 + step * 13 + worker * 29) % 101) as f32 * 0.01 - 0.5).collect()
}

/// `good` with a NaN or an infinity at one element (in the last chunk, or the first).
fn poisoned(good: &[f32], bad: f32, at: usize) -> Vec<f32> {
    let mut v = good.to_vec();
    v[at] = bad;
    v
}

fn read_state(store: &ParameterStore) -> (u64, Vec<f32>) {
    let mut out = vec![0.0f32; N3];
    let version = store.read(&mut out).unwrap();
    (version, out)
}

/// ASP/SSP with rules blend and sgd (momentum, Nesterov, weight decay): a push holding
/// a NaN or an infinity is consumed but not applied; the pusher's pull returns, the
/// state, version and momentum stay as they were, and the refusal is counted; later
/// finite pushes merge exactly as if the refused ones had never been pushed.
#[test]
fn asp_and_ssp_refuse_non_finite_pushes_and_go_on_merging() {
    for mode in [Mode::Asp, Mode::Ssp] {
        for rule in [Rule::Blend, Rule::Sgd] {
            let opts = rejecting(1, mode, rule);
            let initial: Vec<f32> = (0..N3).map(|i| (i % 17) as f32 * 0.1).collect();
            let store = ParameterStore::create(opts.clone(), Some(&initial)).unwrap();
            let client = StoreClient::attach(store.name(), 0).unwrap();
            // The model: the same rule functions applied to the finite pushes only.
            let mut expected = initial.clone();
            let mut momentum = vec![0.0f32; N3];
            let mut apply = |expected: &mut Vec<f32>, update: &[f32], weight: f64| {
                let mut next = vec![0.0f32; N3];
                match rule {
                    Rule::Blend => rules::blend::<false>(&mut next, expected, update, weight),
                    _ => rules::sgd::<false>(
                        &mut next,
                        expected,
                        Some(Momentum::InPlace(&mut momentum)),
                        &[update],
                        &[weight],
                        sgd_params(&opts),
                    ),
                };
                *expected = next;
            };
            let mut out = vec![0.0f32; N3];
            let mut version = 0;
            let mut rejected = 0;
            let pushes = [
                (None, 0.5),
                (Some((f32::NAN, N3 - 1)), 0.5),
                (None, 1.0),
                (Some((f32::INFINITY, 0)), 0.7),
                (Some((f32::NEG_INFINITY, N3 / 2)), 0.7),
                (None, 0.3),
            ];
            for (step, &(bad, weight)) in pushes.iter().enumerate() {
                let good = payload(step, 0);
                let update = match bad {
                    Some((value, at)) => poisoned(&good, value, at),
                    None => good.clone(),
                };
                client.push(&update, weight, &mut never()).unwrap();
                let pulled = client.pull(&mut out, &mut never()).unwrap();
                match bad {
                    Some(_) => rejected += 1,
                    None => {
                        apply(&mut expected, &good, weight);
                        version += 1;
                    }
                }
                let what = format!("{mode:?}/{rule:?} step {step}");
                assert_eq!((pulled, client.rejected()), (version, rejected), "{what}");
                assert!(out == expected, "{what}: state differs from the merge of the finite pushes");
            }
            let stats = &store.worker_stats()[0];
            assert_eq!((stats.pushes, stats.applied, stats.rejected), (6, 3, 3));
            assert_eq!(store.server_stats().rejected.load(Ordering::SeqCst), 3);
            assert_eq!(store.server_stats().applies.load(Ordering::SeqCst), 3);
            assert_eq!(read_state(&store), (3, expected));
        }
    }
}

/// BSP with rules average and sgd: a round with some non-finite payloads is merged
/// from the finite ones (weights renormalised) and only the bad ones are counted; a
/// round with no finite payload is refused whole (version unchanged, each pusher
/// counted); every pull returns; later rounds merge normally.
#[test]
fn bsp_merges_a_round_from_its_finite_payloads() {
    let workers = 3;
    let weights = [1.0, 0.6, 0.25];
    // Per round, per worker: None = finite, Some(value) = that value at one element.
    let rounds: [[Option<f32>; 3]; 5] = [
        [None, None, None],
        [None, Some(f32::NAN), None],
        [Some(f32::INFINITY), None, Some(f32::NAN)],
        [Some(f32::NAN), Some(f32::NEG_INFINITY), Some(f32::INFINITY)],
        [None, None, None],
    ];
    for rule in [Rule::Average, Rule::Sgd] {
        let opts = rejecting(workers, Mode::Bsp, rule);
        let store = ParameterStore::create(opts.clone(), None).unwrap();
        let name = store.name().to_string();
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let name = name.clone();
                thread::spawn(move || {
                    let client = StoreClient::attach(&name, w).unwrap();
                    let mut seen = Vec::new();
                    for (round, bad) in rounds.iter().enumerate() {
                        let good = payload(round, w);
                        let update = match bad[w] {
                            Some(value) => poisoned(&good, value, (round * 1000 + w) % N3),
                            None => good,
                        };
                        client.push(&update, weights[w], &mut never()).unwrap();
                        let mut out = vec![0.0f32; N3];
                        let version = client.pull(&mut out, &mut never()).unwrap();
                        seen.push((version, client.rejected(), out));
                    }
                    seen
                })
            })
            .collect();
        let seen: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();

        let mut state = vec![0.0f32; N3];
        let mut momentum = vec![0.0f32; N3];
        let mut version = 0;
        let mut rejected = [0u64; 3];
        for (round, bad) in rounds.iter().enumerate() {
            let finite: Vec<usize> = (0..workers).filter(|&w| bad[w].is_none()).collect();
            for w in (0..workers).filter(|w| !finite.contains(w)) {
                rejected[w] += 1;
            }
            if !finite.is_empty() {
                let payloads: Vec<Vec<f32>> = finite.iter().map(|&w| payload(round, w)).collect();
                let sources: Vec<&[f32]> = payloads.iter().map(|p| p.as_slice()).collect();
                let total: f64 = finite.iter().map(|&w| weights[w]).sum();
                let coefficients: Vec<f64> = finite.iter().map(|&w| weights[w] / total).collect();
                let mut next = vec![0.0f32; N3];
                match rule {
                    Rule::Average => rules::weighted_sum::<false>(&mut next, &sources, &coefficients),
                    _ => rules::sgd::<false>(
                        &mut next,
                        &state,
                        Some(Momentum::InPlace(&mut momentum)),
                        &sources,
                        &coefficients,
                        sgd_params(&opts),
                    ),
                };
                state = next;
                version += 1;
            }
            for w in 0..workers {
                let (pulled, counted, out) = &seen[w][round];
                let what = format!("{rule:?} round {round} worker {w}");
                assert_eq!((*pulled, *counted), (version, rejected[w]), "{what}");
                assert!(*out == state, "{what}: state differs from the merge of the finite payloads");
            }
        }
        let stats = store.worker_stats();
        assert_eq!(stats.iter().map(|s| s.rejected).collect::<Vec<_>>(), rejected);
        assert_eq!(stats.iter().map(|s| s.applied).collect::<Vec<_>>(), rejected.map(|r| 5 - r));
        assert_eq!(store.server_stats().rejected.load(Ordering::SeqCst), rejected.iter().sum::<u64>());
        assert_eq!(read_state(&store), (4, state));
    }
}

/// The state stays finite even when only the result is not: a finite gradient whose
/// step overflows f32 is refused too (ASP, and a whole BSP round).
#[test]
fn a_merge_that_overflows_is_refused() {
    for mode in [Mode::Asp, Mode::Bsp] {
        let mut opts = options(64, 1, mode, Rule::Sgd);
        (opts.lr, opts.reject_non_finite) = (1e30, true);
        let store = ParameterStore::create(opts, Some(&[1.0; 64])).unwrap();
        let client = StoreClient::attach(store.name(), 0).unwrap();
        let mut out = [0.0f32; 64];
        client.push(&[1e30; 64], 1.0, &mut never()).unwrap();
        assert_eq!(client.pull(&mut out, &mut never()).unwrap(), 0, "{mode:?}");
        assert_eq!((out, client.rejected()), ([1.0; 64], 1), "{mode:?}");
        client.push(&[1e-30; 64], 1.0, &mut never()).unwrap();
        assert_eq!(client.pull(&mut out, &mut never()).unwrap(), 1, "{mode:?}");
        assert_eq!((out, client.rejected()), ([0.0; 64], 1), "{mode:?}"); // 1 - 1e30 * 1e-30
    }
}

/// Without the option nothing changes: a NaN goes into the state, nothing is counted.
#[test]
fn without_the_option_a_nan_goes_in_as_before() {
    for (mode, rule) in [(Mode::Asp, Rule::Blend), (Mode::Bsp, Rule::Average), (Mode::Asp, Rule::Sgd)] {
        let store = ParameterStore::create(options(N3, 1, mode, rule), None).unwrap();
        assert!(!store.options().reject_non_finite);
        let client = StoreClient::attach(store.name(), 0).unwrap();
        let update = poisoned(&payload(0, 0), f32::NAN, 5);
        client.push(&update, 1.0, &mut never()).unwrap();
        let mut out = vec![0.0f32; N3];
        assert_eq!(client.pull(&mut out, &mut never()).unwrap(), 1);
        assert!(out[5].is_nan() && out[6].is_finite(), "{mode:?}/{rule:?}");
        assert_eq!((client.rejected(), store.worker_stats()[0].rejected, store.worker_stats()[0].applied), (0, 0, 1));
    }
}

#[test]
fn reject_non_finite_needs_a_finite_initial_state() {
    let mut opts = options(4, 1, Mode::Asp, Rule::Blend);
    opts.reject_non_finite = true;
    match ParameterStore::create(opts.clone(), Some(&[0.0, 1.0, f32::NAN, 2.0])) {
        Err(StoreError::InvalidArgument(m)) => assert!(m.contains("initial[2]=NaN is not finite"), "{m}"),
        other => panic!("expected InvalidArgument, got {:?}", other.map(|s| s.name().to_string())),
    }
    opts.reject_non_finite = false; // as before: any initial values
    ParameterStore::create(opts, Some(&[0.0, 1.0, f32::NAN, 2.0])).unwrap();
}
