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
