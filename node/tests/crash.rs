//! Crash consistency of the delivery engine's receive path.
//!
//! A child process (this test binary, re-executed on its own
//! [`engine_crash_child`] test) runs a business profile's engine as the
//! node would, without sockets, and is SIGKILLed at random moments, many
//! times over. In a loop, a new customer (a fresh identity: a stranger)
//! writes to the shop; the shop stores the message, greets the customer and
//! sends its away message (automations); half the time the shop owner reads
//! the message (a read receipt to the customer); the customer decrypts both
//! replies, most times acknowledges what the shop sent, and most times
//! sends a read receipt for the replies. The child reports each
//! step on stdout only after the engine returned. After every kill the
//! parent reopens the store and checks that each inbound request left all
//! of its changes or none:
//! - every contact came with its message: no stranger without the message
//!   that made it one, none stored twice, every one still pending as a
//!   stranger with exactly the bytes of its message counted;
//! - every stored customer message has its greeting, its away message, the
//!   "New customer" label and the away period recorded: never a message
//!   without its automations, never an automation twice;
//! - a receipt whose message was recorded as received has been applied (the
//!   replies are `read`), and one that was not has not; every outgoing
//!   message is in the outbox exactly while it is `queued` or `sent`, and
//!   what the customer acknowledged is at least `delivered`, except for
//!   the last customer's: an acknowledgement is not made durable on its own
//!   (`ProfileStore::acknowledge`), so the last one before the kill may be
//!   lost, its message back to `sent` (or `queued`) in the outbox, to be
//!   sent again and acknowledged as a duplicate;
//! - a customer message the shop read (`mark_read`) has its read receipt
//!   queued and is no longer counted unread; an unread one is counted;
//! - everything the child reported stored or applied is there.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kabar_crypto::{Envelope, IdentityKeyPair, ProfileKind, Session};
use kabar_node::content::{CONTENT_VERSION, Content, Message};
use kabar_node::engine::{Action, Engine, EngineConfig, NEW_CUSTOMER_LABEL};
use kabar_node::wire::Ack;
use kabar_storage::*;
use rand::RngExt;

const PASS: &[u8] = b"engine crash test passphrase";
const PROFILE: &str = "shop";
/// Set (to the data directory) only in the child process.
const CHILD_ENV: &str = "KABAR_ENGINE_CRASH_CHILD_DIR";
/// Name of the test function the child runs.
const CHILD_TEST: &str = "engine_crash_child";
/// Marks the child's report lines.
const MARK: &str = "@kabar-engine-crash@";
const GREETING: &str = "Welcome to the crash shop";
const AWAY: &str = "We are away";
const ROUNDS: usize = 30;
/// At most this many step reports before a kill.
const MAX_REPORTS_BEFORE_KILL: usize = 24;

fn now_ms() -> u64 {
    u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

fn hex(bytes: &[u8]) -> String {
    kabar_crypto::hex::encode(bytes)
}

fn unhex(text: &str) -> [u8; 16] {
    kabar_crypto::hex::decode(text).unwrap().try_into().unwrap()
}

/// The engine as the node runs it, but with room for every stranger the
/// test makes (the eviction of old strangers is tested elsewhere; here it
/// would hide what a crash lost).
fn config() -> EngineConfig {
    EngineConfig {
        prekey_wait_ms: 0,
        strangers: StrangerLimits { max_count: 1_000_000, max_bytes: u64::MAX, max_bytes_each: u64::MAX },
        ..EngineConfig::default()
    }
}

fn customer_text(n: u64) -> String {
    format!("crash customer {n}")
}

// ---- the child -----------------------------------------------------------------

/// The shop. Does nothing in a normal test run; in the child process (the
/// environment variable names the data directory) it serves customers
/// until it is killed.
#[test]
fn engine_crash_child() {
    let Some(root) = std::env::var_os(CHILD_ENV) else { return };
    run_child(Path::new(&root));
}

fn run_child(root: &Path) -> ! {
    let rng = &mut rand::rng();
    let store = DataDir::open(root, PASS).unwrap().open_profile(PROFILE).unwrap();
    let bundle = store.prekey_bundle(false).unwrap();
    let mut shop = Engine::new(store, config()).unwrap();
    let stdout = std::io::stdout();
    let report = |line: String| {
        let mut out = stdout.lock();
        writeln!(out, "{MARK} {line}").unwrap();
        out.flush().unwrap();
    };
    loop {
        let n: u64 = rng.random();
        let customer = IdentityKeyPair::generate(ProfileKind::Personal, rng);
        let key = customer.public().signing;
        let mut session = Session::initiate(&customer, &bundle, rng).unwrap();
        let body =
            Message { v: CONTENT_VERSION, seq: 0, sent_at_ms: now_ms(), content: Content::text(customer_text(n)) };
        let envelope = session.encrypt(&body.encode(), rng).unwrap();
        let (acks, actions) = shop.on_request(&key, &[envelope.encode()], now_ms(), rng).unwrap();
        assert_eq!(acks, [Ack::Accepted]);
        report(format!("stored {n} {}", hex(&envelope.message_id().0)));

        // The replies, as the customer receives them.
        let mut replies = Vec::new();
        let mut sent = Vec::new();
        for action in &actions {
            if let Action::Transmit { peer, envelopes, message_ids, .. } = action {
                assert_eq!(*peer, key);
                sent.extend(message_ids.iter().copied());
                for bytes in envelopes {
                    let envelope = Envelope::decode(bytes).unwrap();
                    session.decrypt(&envelope).unwrap();
                    replies.push(hex(&envelope.message_id().0));
                }
            }
        }
        assert_eq!(replies.len(), 2, "a greeting and an away message");
        if rng.random_bool(0.5) {
            // The shop owner reads the customer's message: a read receipt
            // goes to the customer.
            let contact = shop.store().contact_id_for_key(&key);
            let actions = shop.mark_read(&contact, now_ms(), rng).unwrap();
            report(format!("read {n}"));
            for action in &actions {
                if let Action::Transmit { message_ids, .. } = action {
                    sent.extend(message_ids.iter().copied());
                }
            }
        }
        // Most transmissions are acknowledged (the rest stay queued, as
        // for a customer who went away).
        if rng.random_bool(0.9) {
            shop.on_acks(&key, &sent, &vec![Ack::Accepted; sent.len()], now_ms(), rng).unwrap();
            report(format!("acked {n}"));
        }
        if rng.random_bool(0.7) {
            let content = Content::Receipt { read: replies, delivered: Vec::new(), retry: Vec::new() };
            let body = Message { v: CONTENT_VERSION, seq: 1, sent_at_ms: now_ms(), content };
            let envelope = session.encrypt(&body.encode(), rng).unwrap();
            let id = hex(&envelope.message_id().0);
            report(format!("receipt-sending {n} {id}"));
            let (acks, _) = shop.on_request(&key, &[envelope.encode()], now_ms(), rng).unwrap();
            assert_eq!(acks, [Ack::Accepted]);
            report(format!("receipt {n} {id}"));
        }
    }
}

// ---- the parent ----------------------------------------------------------------

/// What the children reported, over all rounds.
#[derive(Default)]
struct Ledger {
    /// Customer number → the id of its message, reported stored.
    stored: BTreeMap<u64, [u8; 16]>,
    /// Customer number → the id of its receipt, about to be sent.
    receipts: HashMap<u64, [u8; 16]>,
    /// Receipts reported acknowledged.
    applied: HashSet<u64>,
    /// Conversations the shop reported read.
    read: HashSet<u64>,
    /// Customers whose transmissions were reported acknowledged.
    acked: HashSet<u64>,
    /// The customer of the last step reported (only its acknowledgement may
    /// be lost by a kill).
    last: Option<u64>,
    /// Acknowledgements a kill lost (their messages back to `sent`).
    lost_acks: usize,
}

impl Ledger {
    /// Records one report line; true if it reported a step.
    fn record(&mut self, line: &str) -> bool {
        let Some((_, report)) = line.split_once(MARK) else { return false };
        let words: Vec<&str> = report.split_whitespace().collect();
        if let Some(n) = words.get(1).and_then(|n| n.parse().ok()) {
            self.last = Some(n);
        }
        match words.as_slice() {
            ["stored", n, id] => {
                let n: u64 = n.parse().unwrap();
                assert!(self.stored.insert(n, unhex(id)).is_none(), "customer {n} reported twice");
            }
            ["receipt-sending", n, id] => {
                self.receipts.insert(n.parse().unwrap(), unhex(id));
            }
            ["receipt", n, _] => {
                self.applied.insert(n.parse().unwrap());
            }
            ["read", n] => {
                self.read.insert(n.parse().unwrap());
            }
            ["acked", n] => {
                self.acked.insert(n.parse().unwrap());
            }
            _ => panic!("unexpected report from the child: {line:?}"),
        }
        true
    }
}

/// The child's whole report lines, read on a thread; the channel ends with
/// its output (a line cut short by the kill is dropped: its step may or may
/// not have happened).
fn lines_of(stdout: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(n) if n > 0 && line.ends_with('\n') && tx.send(line).is_ok() => {}
                _ => return,
            }
        }
    });
    rx
}

/// Longest wait for the child's next report: a child that hangs fails the
/// test instead of holding it.
const REPORT_DEADLINE: Duration = Duration::from_secs(120);

fn setup(root: &Path) {
    let mut dir = DataDir::create(root, PASS, KdfParams::TESTNET).unwrap();
    let store = dir.create_profile(PROFILE, ProfileKind::Business, now_ms() / 1_000, &mut rand::rng()).unwrap();
    store
        .set_automations(&Automations {
            greeting: Some(GREETING.into()),
            away_message: Some(AWAY.into()),
            away_schedule: AwaySchedule::Always,
        })
        .unwrap();
}

/// The content of a stored message.
fn content_of(record: &MessageRecord) -> Content {
    Message::decode(&record.body).expect("a stored message decodes").content
}

/// The text and automatic mark of a stored text message.
fn text_of(record: &MessageRecord) -> (String, Option<String>) {
    match content_of(record) {
        Content::Text { text, automatic } => (text, automatic),
        other => panic!("unexpected content stored: {other:?}"),
    }
}

/// An outgoing message is in the outbox exactly while it is queued or sent.
fn queued_as_status(n: u64, message: &MessageRecord, outbox: &HashSet<[u8; 16]>, queued: &mut usize) {
    let waiting = matches!(message.status, MessageStatus::Queued | MessageStatus::Sent);
    assert_eq!(
        outbox.contains(&message.id),
        waiting,
        "customer {n}: a {:?} message and the outbox disagree",
        message.status
    );
    *queued += usize::from(waiting);
}

/// Reopens the store and checks every invariant against what the children
/// reported. Returns the number of customers stored.
fn verify(root: &Path, ledger: &mut Ledger) -> usize {
    let store = DataDir::open(root, PASS)
        .unwrap()
        .open_profile(PROFILE)
        .unwrap_or_else(|e| panic!("reopening after a kill failed: {e}"));
    let contacts = store.contacts().unwrap();
    let strangers: HashMap<ContactId, u64> = store.strangers().unwrap().into_iter().collect();
    assert_eq!(strangers.len(), contacts.len(), "every customer is a pending stranger, and only they are");
    assert_eq!(store.strangers_evicted().unwrap(), 0);
    let label = store.labels().unwrap().into_iter().find(|l| l.name == NEW_CUSTOMER_LABEL).map(|l| l.id);
    let outbox: HashSet<[u8; 16]> = store.outbox().unwrap().into_iter().map(|e| e.message_id).collect();
    let mut queued = 0;
    let mut lost_acks = 0;
    let mut customers: HashMap<u64, ContactId> = HashMap::new();
    for (contact, _) in &contacts {
        let history = store.history(contact, usize::MAX, None).unwrap();
        let incoming: Vec<&MessageRecord> =
            history.iter().map(|(_, m)| m).filter(|m| m.direction == Direction::Incoming).collect();
        assert_eq!(incoming.len(), 1, "a stranger stored without its message, or with it twice");
        let (text, _) = text_of(incoming[0]);
        let n: u64 = text.strip_prefix("crash customer ").and_then(|n| n.parse().ok()).expect("a customer's text");
        assert!(customers.insert(n, *contact).is_none(), "customer {n} stored as two contacts");
        assert_eq!(strangers.get(contact), Some(&(incoming[0].body.len() as u64)), "customer {n}'s bytes counted");

        // Read by the shop: the message is read, nothing is unread, and a
        // read receipt naming it is queued; or none of it.
        let conversation = store.conversation(contact).unwrap();
        let receipts: Vec<&MessageRecord> = history
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.direction == Direction::Outgoing && matches!(content_of(m), Content::Receipt { .. }))
            .collect();
        let receipt_names_it = receipts
            .iter()
            .any(|m| matches!(content_of(m), Content::Receipt { read, .. } if read == [hex(&incoming[0].id)]));
        if incoming[0].status == MessageStatus::Read {
            assert!(receipt_names_it, "customer {n}: read by the shop, but no read receipt queued");
            assert_eq!(conversation.unread, 0, "customer {n}: read, yet counted unread");
        } else {
            assert_eq!(conversation.unread, 1, "customer {n}: unread, yet not counted");
            assert!(!ledger.read.contains(&n), "customer {n}: reported read but is not");
        }
        assert!(receipts.len() <= 1, "customer {n}: more than one read receipt");
        for receipt in &receipts {
            queued_as_status(n, receipt, &outbox, &mut queued);
        }

        // The automations came with the message, once each.
        let replies: Vec<&MessageRecord> = history
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.direction == Direction::Outgoing && matches!(content_of(m), Content::Text { .. }))
            .collect();
        let kinds: Vec<Option<String>> = replies.iter().map(|m| text_of(m).1).collect();
        assert_eq!(
            kinds,
            [Some("greeting".to_string()), Some("away".to_string())],
            "customer {n}: its message without its automatic replies, or with them twice"
        );
        assert!(conversation.away_sent_for_ms.is_some(), "customer {n}: the away message's period not recorded");
        assert_eq!(conversation.labels, [label.expect("the label exists")], "customer {n} not labelled");
        assert!(store.session(contact).unwrap().is_some(), "customer {n} without a session");

        // A receipt recorded as received was applied; one not received was not.
        let received = ledger.receipts.get(&n).is_some_and(|id| store.is_received(id).unwrap());
        for reply in &replies {
            if received {
                assert_eq!(reply.status, MessageStatus::Read, "customer {n}: a receipt received but not applied");
            } else {
                assert_ne!(reply.status, MessageStatus::Read, "customer {n}: a reply read without its receipt");
            }
            if ledger.acked.contains(&n) && reply.status < MessageStatus::Delivered {
                // Only the last step's acknowledgement can be lost: any
                // later step committed durably, and so made it durable.
                assert_eq!(Some(n), ledger.last, "customer {n}: acknowledged, yet {:?}", reply.status);
                // Back to `sent`, or `queued` (the record of the attempt is
                // not made durable on its own either): in the outbox, to be
                // sent again (`queued_as_status` checks it is there).
                assert!(
                    matches!(reply.status, MessageStatus::Sent | MessageStatus::Queued),
                    "customer {n}: an acknowledgement lost, and its message {:?}",
                    reply.status
                );
                lost_acks += 1;
            }
            queued_as_status(n, reply, &outbox, &mut queued);
        }
        if ledger.applied.contains(&n) {
            assert!(received, "customer {n}: a receipt acknowledged but not recorded");
        }
    }
    assert_eq!(outbox.len(), queued, "outbox entries that belong to nothing");
    if lost_acks > 0 {
        // Its messages stay `sent` (this test's customer never sends them
        // again): from now on they are not acknowledged.
        if let Some(last) = ledger.last {
            ledger.acked.remove(&last);
        }
        ledger.lost_acks += 1;
    }
    for (n, id) in &ledger.stored {
        assert!(customers.contains_key(n), "customer {n} was acknowledged but is missing");
        assert!(store.is_received(id).unwrap(), "customer {n}'s message id not recorded as received");
    }
    contacts.len()
}

#[test]
fn a_killed_shop_keeps_each_inbound_request_whole_strangers_receipts_and_automations() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    setup(&root);
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::rng();
    let mut ledger = Ledger::default();
    let started = Instant::now();
    // How fast the children report steps, to spread the kills over a whole
    // iteration of the child's loop.
    let mut pace = (Duration::ZERO, 0u32);

    for round in 0..ROUNDS {
        let target = rng.random_range(0..MAX_REPORTS_BEFORE_KILL);
        let mut child = Command::new(&exe)
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        // The child's report lines are the only synchronisation.
        let mut seen = 0;
        let mut first_report = None;
        while seen < target {
            let line = match lines.recv_timeout(REPORT_DEADLINE) {
                Ok(line) => line,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("round {round}: no report from the child in {REPORT_DEADLINE:?}");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().unwrap();
                    panic!("round {round}: the child ended ({status}) after {seen} reports; its stderr is above");
                }
            };
            if ledger.record(&line) {
                seen += 1;
                first_report.get_or_insert_with(Instant::now);
            }
        }
        if let Some(first) = first_report
            && seen > 1
        {
            pace.0 += first.elapsed();
            pace.1 += u32::try_from(seen - 1).unwrap();
        }
        // Not synchronisation: a random delay of up to about two iterations
        // of the child's loop (about three reports each), so the kill lands
        // anywhere in it, not just after a report.
        let per_report = if pace.1 == 0 { Duration::from_millis(1) } else { pace.0 / pace.1 };
        std::thread::sleep(per_report * 6 * rng.random_range(0..=1_000u32) / 1_000);
        child.kill().unwrap();
        let status = child.wait().unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(status.signal(), Some(9), "round {round}: the child was not killed but ended ({status})");
        }
        // Lines written before the kill that we had not read yet.
        for line in lines.iter() {
            ledger.record(&line);
        }
        let customers = verify(&root, &mut ledger);
        println!(
            "round {round:2}: killed after {seen:2} read reports; {customers} customers, {} reported stored, {} receipts applied",
            ledger.stored.len(),
            ledger.applied.len()
        );
    }
    assert!(!ledger.stored.is_empty(), "no child ever stored anything");
    assert!(!ledger.applied.is_empty(), "no child ever applied a receipt");
    println!("{ROUNDS} kills in {:.1?}; {} lost the last acknowledgement", started.elapsed(), ledger.lost_acks);
}
