//! Crash consistency of kabar-storage.
//!
//! A child process (this test binary, re-executed on its own
//! [`crash_child`] test) sends messages in a loop as the node would: a real
//! ratchet step per message, the session, message record and outbox entry
//! committed together by `commit_outgoing` (batches of 1–8), with delivery
//! attempts and acknowledgements now and then, half the time inside one
//! commit group (`begin_group` … `end_group`). It reports each commit on
//! stdout only after the commit returned, or for a group after
//! `end_group` returned; an acknowledgement (not durable on its own, see
//! `ProfileStore::acknowledge`) only after a later durable commit. The parent SIGKILLs it at random
//! moments, many times over, and after every kill reopens the store and
//! checks it:
//! - every message the child reported committed is in the history exactly
//!   once, at its place, and nothing committed earlier changed or vanished;
//! - sequence numbers are contiguous `0..n`, every message id is unique and
//!   indexed, the conversation's next sequence number is `n`;
//! - the outbox matches the statuses: one entry per queued or sent message
//!   (with its envelope), none for delivered ones;
//! - the persisted ratchet session is the one after the last committed
//!   message: restored, its next message is number `n` of the chain.
//!
//! While a child runs, opening its profile from the parent must fail with
//! [`StoreError::InUse`] ("in use by another kabar node").
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kabar_crypto::{Envelope, IdentityKeyPair, PrekeyBundle, ProfileKind, Session, SignedPrekey};
use kabar_storage::*;
use rand::RngExt;

const PASS: &[u8] = b"crash test passphrase";
const PROFILE: &str = "crashy";
/// Set (to the data directory) only in the child process.
const CHILD_ENV: &str = "KABAR_CRASH_CHILD_DIR";
/// Name of the test function the child runs.
const CHILD_TEST: &str = "crash_child";
/// Marks the child's report lines (the test harness may print before them
/// on the same line).
const MARK: &str = "@kabar-crash@";
const BODY_PREFIX: &str = "crash message ";
const ROUNDS: usize = 30;
/// At most this many reported commits before a kill.
const MAX_COMMITS_BEFORE_KILL: usize = 40;

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn body(counter: u64) -> Vec<u8> {
    format!("{BODY_PREFIX}{counter}").into_bytes()
}

fn counter_of(body: &[u8]) -> u64 {
    std::str::from_utf8(body)
        .ok()
        .and_then(|text| text.strip_prefix(BODY_PREFIX))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a crash-test message: {:?}", String::from_utf8_lossy(body)))
}

fn hex(id: &[u8; 16]) -> String {
    kabar_crypto::hex::encode(id)
}

fn unhex(text: &str) -> [u8; 16] {
    kabar_crypto::hex::decode(text).and_then(|b| b.try_into().ok()).unwrap_or_else(|| panic!("bad id {text:?}"))
}

// ---- the child -----------------------------------------------------------------

/// The writer. Does nothing in a normal test run; in the child process (the
/// environment variable names the data directory) it sends messages until
/// it is killed.
#[test]
fn crash_child() {
    let Some(root) = std::env::var_os(CHILD_ENV) else { return };
    run_child(Path::new(&root));
}

fn run_child(root: &Path) -> ! {
    let mut rng = rand::rng();
    let store = DataDir::open(root, PASS).unwrap().open_profile(PROFILE).unwrap();
    let contacts = store.contacts().unwrap();
    assert_eq!(contacts.len(), 1, "the crash store has one contact");
    let (contact, peer) = contacts.into_iter().next().unwrap();
    let mut session = match store.session(&contact).unwrap() {
        Some(state) => Session::from_snapshot(state.current).unwrap(),
        None => {
            let bundle = PrekeyBundle {
                identity: peer.identity,
                signed_prekey: peer.signed_prekey.unwrap(),
                one_time_prekey: None,
            };
            Session::initiate(&store.identity().unwrap(), &bundle, &mut rng).unwrap()
        }
    };
    // The next counter: one past the newest stored message's.
    let mut next = store.history(&contact, 1, None).unwrap().last().map_or(0, |(_, m)| counter_of(&m.body) + 1);
    let mut outbox = store.outbox().unwrap();
    outbox.sort_by_key(|e| e.seq);
    let mut pending: VecDeque<[u8; 16]> = outbox.into_iter().map(|e| e.message_id).collect();
    let stdout = std::io::stdout();
    let report_now = |lines: &[String]| {
        let mut out = stdout.lock();
        for line in lines {
            writeln!(out, "{MARK} {line}").unwrap();
        }
        out.flush().unwrap();
    };

    // Acknowledgements recorded and not yet known durable: `acknowledge`
    // is not durable on its own; the next durable commit makes it so.
    let mut acks_waiting: Vec<String> = Vec::new();
    loop {
        // Half the iterations run as one commit group: their reports wait
        // for the group's durable commit, as the node's acknowledgements do.
        let grouped = rng.random_bool(0.5);
        let mut held: Vec<String> = Vec::new();
        if grouped {
            store.begin_group();
        }
        let mut report = |lines: &[String]| {
            if grouped {
                held.extend(lines.iter().cloned());
            } else {
                report_now(lines);
            }
        };
        let count = rng.random_range(1..=8u64);
        let mut batch = Vec::new();
        for counter in next..next + count {
            let text = body(counter);
            let envelope = session.encrypt(&text, &mut rng).unwrap();
            batch.push(OutgoingMessage {
                contact,
                session: Some(kabar_storage::SessionState::new(session.snapshot())),
                message: MessageRecord {
                    id: envelope.message_id().0,
                    direction: Direction::Outgoing,
                    sent_at_ms: now_ms(),
                    received_at_ms: None,
                    status: MessageStatus::Queued,
                    body: text,
                },
                envelope: envelope.encode(),
            });
        }
        store.commit_outgoing(&batch, now_ms()).unwrap();
        let mut lines: Vec<String> =
            (next..).zip(&batch).map(|(counter, m)| format!("committed {counter} {}", hex(&m.message.id))).collect();
        // Durable now (or with the group): so is every acknowledgement before.
        lines.append(&mut acks_waiting);
        report(&lines);
        next += count;
        pending.extend(batch.iter().map(|m| m.message.id));

        if rng.random_bool(0.3) && !pending.is_empty() {
            let id = pending[rng.random_range(0..pending.len())];
            store.record_attempts(&[(id, 1)], now_ms() + 1_000).unwrap();
            store.make_durable().unwrap();
            report(&[format!("sent {}", hex(&id))]);
        }
        if rng.random_bool(0.25) && pending.len() > 1 {
            // The oldest few, and sometimes one out of order.
            let oldest = rng.random_range(1..=pending.len() / 2);
            let mut ids: Vec<[u8; 16]> = pending.drain(..oldest).collect();
            if rng.random_bool(0.5) && !pending.is_empty() {
                let at = rng.random_range(0..pending.len());
                ids.extend(pending.remove(at));
            }
            store.acknowledge(&ids).unwrap();
            let lines: Vec<String> = ids.iter().map(|id| format!("acked {}", hex(id))).collect();
            if grouped {
                report(&lines);
            } else {
                acks_waiting.extend(lines);
            }
        }
        if grouped {
            store.end_group().unwrap();
            report_now(&held);
        }
    }
}

// ---- the parent ----------------------------------------------------------------

/// What the children reported, over all rounds.
#[derive(Default)]
struct Ledger {
    /// Counter → message id of every message reported committed.
    committed: BTreeMap<u64, [u8; 16]>,
    /// Messages reported attempted (status at least `Sent`).
    sent: HashSet<[u8; 16]>,
    /// Messages reported acknowledged (`Delivered`, no outbox entry).
    acked: HashSet<[u8; 16]>,
    /// The message ids by sequence number at the last check.
    history: Vec<[u8; 16]>,
}

impl Ledger {
    /// Records one report line; true if it reported a commit.
    fn record(&mut self, line: &str) -> bool {
        let Some((_, report)) = line.split_once(MARK) else { return false };
        let words: Vec<&str> = report.split_whitespace().collect();
        match words.as_slice() {
            ["committed", counter, id] => {
                let counter: u64 = counter.parse().unwrap();
                let id = unhex(id);
                if let Some(earlier) = self.committed.insert(counter, id) {
                    panic!(
                        "message {counter} reported committed twice (ids {} and {}): an earlier commit was lost",
                        hex(&earlier),
                        hex(&id)
                    );
                }
                true
            }
            ["sent", id] => {
                self.sent.insert(unhex(id));
                false
            }
            ["acked", id] => {
                self.acked.insert(unhex(id));
                false
            }
            _ => panic!("unexpected report from the child: {line:?}"),
        }
    }
}

/// A whole line from the child, or `None` at its end (a line cut short by
/// the kill is dropped: its commit may or may not have happened).
fn read_line(reader: &mut BufReader<ChildStdout>) -> Option<String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => None,
        Ok(_) if line.ends_with('\n') => Some(line),
        Ok(_) => None,
        Err(e) => panic!("reading the child's output: {e}"),
    }
}

fn setup(root: &Path) {
    let mut rng = rand::rng();
    let now = now_ms() / 1_000;
    let mut dir = DataDir::create(root, PASS, KdfParams::TESTNET).unwrap();
    let store = dir.create_profile(PROFILE, ProfileKind::Personal, now, &mut rng).unwrap();
    let bob = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let spk = SignedPrekey::generate(&bob, 1, now, &mut rng);
    store
        .upsert_contact(Contact {
            peer_id: bob.public().signing.to_vec(),
            identity: bob.public(),
            signed_prekey: Some(spk.public()),
            one_time_prekey: None,
            addresses: vec![],
            display_name: "Bob".into(),
            verified: false,
            blocked: false,
            identity_change: None,
            added_at_ms: now_ms(),
            request: false,
        })
        .unwrap();
}

/// Opening the profile while the child holds it must be refused, clearly.
fn assert_in_use(root: &Path) {
    let dir = DataDir::open(root, PASS).unwrap();
    match dir.open_profile(PROFILE) {
        Err(e @ StoreError::InUse(_)) => {
            let text = e.to_string();
            assert!(text.contains("in use by another kabar node"), "unclear message: {text}");
        }
        Err(other) => panic!("expected InUse while the child holds the database, got: {other}"),
        Ok(store) => panic!("opened {store:?} while another process holds it"),
    }
}

/// Reopens the store and checks every invariant against what the children
/// reported. Returns the number of messages and of outbox entries.
fn verify(root: &Path, ledger: &mut Ledger) -> (usize, usize) {
    let store = DataDir::open(root, PASS)
        .unwrap()
        .open_profile(PROFILE)
        .unwrap_or_else(|e| panic!("reopening after a kill failed: {e}"));
    let contacts = store.contacts().unwrap();
    assert_eq!(contacts.len(), 1);
    let contact = contacts[0].0;

    // History: contiguous sequence numbers, one message per counter, in order.
    let history = store.history(&contact, usize::MAX, None).unwrap();
    let n = history.len();
    let mut by_id: HashMap<[u8; 16], (u64, &MessageRecord)> = HashMap::new();
    for (i, (seq, message)) in history.iter().enumerate() {
        assert_eq!(*seq, i as u64, "sequence numbers are not contiguous");
        assert_eq!(counter_of(&message.body), *seq, "message at seq {seq} is out of place (or a duplicate)");
        assert_eq!(message.direction, Direction::Outgoing);
        if let Some((other, _)) = by_id.insert(message.id, (*seq, message)) {
            panic!("message id {} stored twice (seq {other} and {seq})", hex(&message.id));
        }
        let (at_contact, at_seq, record) = store.message(&message.id).unwrap().expect("every message is indexed");
        assert_eq!((at_contact, at_seq, &record), (contact, *seq, message), "the message index disagrees");
    }
    assert_eq!(store.conversation(&contact).unwrap().next_seq, n as u64, "conversation next_seq");

    // Nothing committed before changed or vanished.
    let ids: Vec<[u8; 16]> = history.iter().map(|(_, m)| m.id).collect();
    assert!(n >= ledger.history.len(), "messages vanished: {} before, {n} now", ledger.history.len());
    assert!(ids.starts_with(&ledger.history), "earlier messages changed");

    // Everything reported committed is there, exactly once, at its counter.
    for (counter, id) in &ledger.committed {
        let Some((seq, _)) = by_id.get(id) else {
            panic!("message {counter} ({}) was reported committed but is missing ({n} messages)", hex(id));
        };
        assert_eq!(seq, counter, "message {counter} stored at seq {seq}");
    }

    // The outbox matches the statuses.
    let outbox = store.outbox().unwrap();
    let mut entries: HashMap<[u8; 16], usize> = HashMap::new();
    for entry in &outbox {
        assert_eq!(entry.contact, contact);
        let Some((seq, message)) = by_id.get(&entry.message_id) else {
            panic!("outbox entry {} has no message", hex(&entry.message_id));
        };
        assert_eq!(entry.seq, *seq, "outbox entry {} has the wrong seq", hex(&entry.message_id));
        assert!(
            matches!(message.status, MessageStatus::Queued | MessageStatus::Sent),
            "outbox entry for a message with status {:?}",
            message.status
        );
        let envelope = Envelope::decode(&entry.envelope).expect("the queued envelope decodes");
        assert_eq!(envelope.message_id().0, entry.message_id, "the queued envelope is another message's");
        *entries.entry(entry.message_id).or_default() += 1;
    }
    for (seq, message) in &history {
        let count = entries.get(&message.id).copied().unwrap_or(0);
        match message.status {
            MessageStatus::Queued | MessageStatus::Sent => {
                assert_eq!(count, 1, "message {seq} is {:?} with {count} outbox entries", message.status);
            }
            MessageStatus::Delivered => assert_eq!(count, 0, "delivered message {seq} is still in the outbox"),
            other => panic!("message {seq} has status {other:?}, which nothing set"),
        }
    }
    for id in &ledger.acked {
        let status = by_id.get(id).map(|(_, m)| m.status);
        assert_eq!(status, Some(MessageStatus::Delivered), "message {} was reported acknowledged", hex(id));
    }
    for id in &ledger.sent {
        let status = by_id.get(id).map(|(_, m)| m.status);
        assert!(status >= Some(MessageStatus::Sent), "message {} was reported sent but is {status:?}", hex(id));
    }

    // The session is the one after the last committed message.
    match store.session(&contact).unwrap() {
        None => assert_eq!(n, 0, "{n} messages committed but no session"),
        Some(snapshot) => {
            assert!(n > 0, "a session without messages");
            let mut session = Session::from_snapshot(snapshot.current).expect("the persisted session restores");
            let envelope = session.encrypt(b"after the crash", &mut rand::rng()).expect("and still encrypts");
            assert_eq!(
                u64::from(envelope.header.counter),
                n as u64,
                "the persisted session is not the one after the last committed message"
            );
            assert!(!by_id.contains_key(&envelope.message_id().0), "the next message would reuse an id");
        }
    }

    ledger.history = ids;
    (n, outbox.len())
}

#[test]
fn killed_writer_leaves_a_consistent_store() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    setup(&root);
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut ledger = Ledger::default();
    let started = Instant::now();
    let mut in_use_checks = 0;
    // How fast the children report commits (time, reports), to spread the
    // kills over a whole send-loop iteration.
    let mut pace = (Duration::ZERO, 0u32);

    for round in 0..ROUNDS {
        let check_in_use = round % 10 == 1;
        let mut target = rng.random_range(0..MAX_COMMITS_BEFORE_KILL);
        if check_in_use {
            target = target.max(1);
        }
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());

        // The child's report lines are the only synchronisation.
        let mut seen = 0;
        let mut first_report = None;
        while seen < target {
            let Some(line) = read_line(&mut reader) else {
                let status = child.wait().unwrap();
                panic!("round {round}: the child ended ({status}) after {seen} commits; its stderr is above");
            };
            if ledger.record(&line) {
                seen += 1;
                first_report.get_or_insert_with(Instant::now);
                if check_in_use && seen == 1 {
                    assert_in_use(&root);
                    in_use_checks += 1;
                }
            }
        }
        if let Some(first) = first_report
            && seen > 1
        {
            pace.0 += first.elapsed();
            pace.1 += u32::try_from(seen - 1).unwrap();
        }
        // Not synchronisation: a random delay of up to about two iterations
        // of the child's loop (a batch averages 4.5 messages), so the kill
        // lands anywhere in it, not just after a report.
        let per_report = if pace.1 == 0 { Duration::from_millis(1) } else { pace.0 / pace.1 };
        let iteration = per_report * 9 / 2;
        std::thread::sleep(iteration * 2 * rng.random_range(0..=1_000u32) / 1_000);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "round {round}: the child was not killed but ended ({status})");
        }
        #[cfg(not(unix))]
        assert!(!status.success());
        // Lines written before the kill that we had not read yet.
        while let Some(line) = read_line(&mut reader) {
            ledger.record(&line);
        }

        let (messages, queued) = verify(&root, &mut ledger);
        println!(
            "round {round:2}: killed after {seen:2} read reports; {messages} messages, {queued} in the outbox, \
             {} reported committed",
            ledger.committed.len()
        );
    }

    assert!(in_use_checks > 0);
    assert!(!ledger.committed.is_empty(), "no child ever committed anything");
    println!("{ROUNDS} kills in {:.1?}", started.elapsed());
}
