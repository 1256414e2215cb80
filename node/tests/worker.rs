//! The engine's thread (`kabar_node::worker`): its bounds and how it stops.
//! A profile's loop relies on each of these: refused work is said to be
//! refused, and a worker that stops says why before anything that depends
//! on the group it was running can leave.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::sync::mpsc;
use std::time::Duration;

use kabar_crypto::ProfileKind;
use kabar_node::engine::Engine;
use kabar_node::worker::{QUEUE_MAX, Report, Worker};
use kabar_storage::{DataDir, KdfParams};

/// Longest a test waits for a report.
const WAIT: Duration = Duration::from_secs(30);

fn engine(tmp: &tempfile::TempDir) -> Engine {
    let mut dir = DataDir::create(tmp.path(), b"pw", KdfParams::TESTNET).unwrap();
    let store = dir.create_profile("personal", ProfileKind::Personal, 1_700_000_000, &mut rand::rng()).unwrap();
    Engine::new(store, Default::default()).unwrap()
}

/// The next report that is not the counters, waiting at most [`WAIT`].
fn next(reports: &mut tokio::sync::mpsc::Receiver<Report<u32>>) -> Option<Report<u32>> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        match reports.try_recv() {
            Ok(Report::Counters { .. }) => continue,
            Ok(r) => return Some(r),
            Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => return None,
            Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                assert!(std::time::Instant::now() < deadline, "no report within {WAIT:?}");
                std::thread::yield_now();
            }
        }
    }
}

/// Queues a piece of work that holds the engine until `release` is sent
/// (or dropped), and returns once it has started.
fn hold(worker: &Worker<u32>) -> mpsc::Sender<()> {
    let (started_tx, started) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    assert!(worker.run(move |_, _| {
        started_tx.send(()).unwrap();
        let _ = released.recv();
        0
    }));
    started.recv_timeout(WAIT).unwrap();
    release
}

#[test]
fn a_full_queue_refuses_work_and_says_so_and_the_accepted_work_all_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let (worker, mut reports) = Worker::<u32>::start(engine(&tmp)).unwrap();
    let release = hold(&worker);
    for i in 0..QUEUE_MAX {
        assert!(worker.run(move |_, _| i as u32 + 1), "work {i} of {QUEUE_MAX} refused");
    }
    assert!(!worker.run(|_, _| u32::MAX), "work past the queue's bound is refused, and the caller told");
    drop(release);
    let mut done = Vec::new();
    while done.len() < QUEUE_MAX + 1 {
        match next(&mut reports) {
            Some(Report::Done(v)) => done.push(v),
            Some(Report::Failed(why)) => panic!("the worker failed: {why}"),
            Some(Report::Counters { .. }) | None => panic!("the worker stopped early"),
        }
    }
    assert_eq!(done, (0..=QUEUE_MAX as u32).collect::<Vec<_>>(), "every accepted piece, once, in order");
    assert!(!done.contains(&u32::MAX));
    assert!(worker.run(|_, _| 7), "room again");
    assert!(matches!(next(&mut reports), Some(Report::Done(7))));
}

#[test]
fn work_that_finds_the_store_broken_stops_the_worker_and_its_group_is_never_reported_done() {
    let tmp = tempfile::tempdir().unwrap();
    let (worker, mut reports) = Worker::<u32>::start(engine(&tmp)).unwrap();
    let release = hold(&worker);
    // One group: a write, then work that finds the store damaged. The
    // write's result must not come back: it depends on a group that is
    // never made durable.
    assert!(worker.run(|engine, _| {
        engine.store().set_listen_port("tcp", 4001).unwrap();
        1
    }));
    assert!(worker.run(|engine, _| {
        engine.store().mark_broken("table messages: a page does not read back");
        2
    }));
    assert!(worker.run(|_, _| 3));
    drop(release);
    assert!(matches!(next(&mut reports), Some(Report::Done(0))));
    match next(&mut reports) {
        Some(Report::Failed(why)) => assert!(why.contains("a page does not read back"), "{why}"),
        other => panic!("expected the worker to fail, got {}", describe(&other)),
    }
    assert!(next(&mut reports).is_none(), "nothing after the failure");
    assert!(!worker.run(|_, _| 4), "a stopped worker refuses work");
    worker.abandon();
}

#[test]
fn a_panic_in_a_piece_of_work_stops_the_worker_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (worker, mut reports) = Worker::<u32>::start(engine(&tmp)).unwrap();
    assert!(worker.run(|_, _| panic!("a page of the messages table is garbage")));
    match next(&mut reports) {
        Some(Report::Failed(why)) => {
            assert!(why.contains("personal.redb"), "names the file: {why}");
            assert!(why.contains("a page of the messages table is garbage"), "{why}");
        }
        other => panic!("expected the worker to fail, got {}", describe(&other)),
    }
    assert!(next(&mut reports).is_none());
    worker.abandon();
}

/// The next `n` results; anything else fails the test.
fn results(reports: &mut tokio::sync::mpsc::Receiver<Report<u32>>, n: usize) -> Vec<u32> {
    let mut done = Vec::new();
    while done.len() < n {
        match next(reports) {
            Some(Report::Done(v)) => done.push(v),
            other => panic!("expected results, got {}", describe(&other)),
        }
    }
    done
}

fn describe(r: &Option<Report<u32>>) -> String {
    match r {
        None => "the end of the reports".into(),
        Some(Report::Done(v)) => format!("Done({v})"),
        Some(Report::Failed(w)) => format!("Failed({w})"),
        Some(Report::Counters { .. }) => "Counters".into(),
    }
}

/// An engine (in `tmp`) holding a contact, Bob (his profile in `other`),
/// and a worker over it whose group end flushes and reports its requests
/// as 1000 × requests + envelopes.
fn worker_with_bob(
    tmp: &tempfile::TempDir,
    other: &tempfile::TempDir,
) -> (Worker<u32>, tokio::sync::mpsc::Receiver<Report<u32>>, kabar_storage::ContactId) {
    let mut ours = DataDir::create(tmp.path(), b"pw", KdfParams::TESTNET).unwrap();
    let store = ours.create_profile("personal", ProfileKind::Personal, 1_700_000_000, &mut rand::rng()).unwrap();
    // A contact to send to: another profile's public keys.
    let mut dir = DataDir::create(other.path(), b"pw", KdfParams::TESTNET).unwrap();
    let bob = dir.create_profile("bob", ProfileKind::Personal, 1_700_000_000, &mut rand::rng()).unwrap();
    let identity = bob.identity().unwrap().public();
    let contact = kabar_storage::Contact::new(identity, Some(bob.current_signed_prekey().unwrap().public()), "Bob", 0);
    let (bob_id, _) = store.upsert_contact(contact).unwrap();
    // No waiting for Bob's one-time prekeys: there is no network here.
    let config = kabar_node::engine::EngineConfig { prekey_wait_ms: 0, ..Default::default() };
    let engine = Engine::new(store, config).unwrap();
    let end: kabar_node::worker::GroupEnd<u32> = Box::new(|engine| {
        let actions = engine.flush_deferred(1_700_000_000_000).unwrap();
        let sent: Vec<usize> = actions
            .iter()
            .filter_map(|a| match a {
                kabar_node::engine::Action::Transmit { envelopes, .. } => Some(envelopes.len()),
                _ => None,
            })
            .collect();
        (!sent.is_empty()).then(|| 1000 * sent.len() as u32 + sent.iter().sum::<usize>() as u32)
    });
    let (worker, reports) = Worker::<u32>::start_with(engine, end).unwrap();
    (worker, reports, bob_id)
}

/// A send of `text` to `to` that reports how many transmissions it made.
fn send(to: kabar_storage::ContactId, text: String) -> impl FnOnce(&mut Engine, &mut rand::rngs::StdRng) -> u32 {
    move |engine, rng| {
        let (_, actions) = engine.send(&to, kabar_node::content::Content::text(text), 1_700_000_000_000, rng).unwrap();
        actions.iter().filter(|a| matches!(a, kabar_node::engine::Action::Transmit { .. })).count() as u32
    }
}

#[test]
fn staged_sends_are_committed_before_any_other_work_reads_the_store() {
    let (tmp, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (worker, mut reports, bob) = worker_with_bob(&tmp, &other);
    let release = hold(&worker);
    // One group: four sends that may be staged (the first starts the
    // session, so it commits on its own), work that reads the history,
    // two more sends.
    for i in 0..4 {
        assert!(worker.run_job(true, send(bob, format!("m{i}"))));
    }
    assert!(worker.run(move |engine, _| {
        let staged = engine.staged() as u32;
        100 * staged + engine.store().history(&bob, 100, None).unwrap().len() as u32
    }));
    for i in 4..6 {
        assert!(worker.run_job(true, send(bob, format!("m{i}"))));
    }
    drop(release);
    let done = results(&mut reports, 9);
    assert_eq!(done[0], 0, "the hold");
    assert_eq!(&done[1..5], &[0; 4], "nothing leaves inside the group");
    assert_eq!(done[5], 4, "the reading work saw all four messages in the store, none still staged");
    assert_eq!(&done[6..8], &[0; 2]);
    assert_eq!(done[8], 1006, "the group's end committed the last two and sent all six in one request");
    assert!(worker.run(move |engine, _| engine.store().history(&bob, 100, None).unwrap().len() as u32));
    assert!(matches!(next(&mut reports), Some(Report::Done(6))));
}

#[test]
fn what_one_group_queues_for_a_peer_leaves_in_one_request_after_the_group() {
    let (tmp, other) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (worker, mut reports, bob_id) = worker_with_bob(&tmp, &other);
    let release = hold(&worker);
    for i in 0..16 {
        // Inside the group nothing leaves yet.
        assert!(worker.run(send(bob_id, format!("m{i}"))));
    }
    drop(release);
    let done = results(&mut reports, 18);
    // The hold ran alone (the first group; it flushed nothing); the 16
    // sends made the second group: none transmitted, and its end sent one
    // request of 16.
    assert_eq!(done[0], 0);
    assert_eq!(&done[1..17], &[0; 16]);
    assert_eq!(done[17], 1016);
}
