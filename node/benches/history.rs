//! Does sending and receiving one message cost the same on a store holding a
//! long history as on an empty one? Two engines, Alice and Bob, wired by
//! hand as in `node/tests/engine.rs` (no sockets), 1 KiB texts from Alice to
//! Bob, each part timed on its own:
//!
//! - **send**: [`Engine::send`] (one text; `send_many` of 64 in the batched
//!   mode): encrypt, the durable commit (ratchet step + message + outbox
//!   entry), and the flush it returns (the outbox entries read back, the
//!   attempt recorded, the `Transmit`).
//! - **receive**: Bob's [`Engine::on_request`] of that request: decrypt and
//!   the durable commit (message + ratchet state + received id).
//! - **ack**: Alice's [`Engine::on_acks`] of Bob's acknowledgements: outbox
//!   entries removed, status `Delivered` (a commit that is NOT durable on its
//!   own: `ProfileStore::acknowledge`).
//!
//! Modes: [`ONE_BY_ONE`] messages one at a time (each its own request and
//! its own durable commit at each end, like a user sending one message),
//! and [`BATCHES`] requests of [`BATCH`] texts (`send_many`, one request of
//! 64, one commit at each end). Figures are µs per message: per round the
//! mean over the round's requests (divided by 64 when batched), then the
//! median over the rounds; the p50 columns are the median of every
//! request's figure, all rounds pooled (robust to other processes' noise).
//!
//! Cases:
//!
//! - **A, empty**: both profiles fresh (a new pair in a new temporary
//!   directory each round), each knowing only the other.
//! - **B, history**: both profiles first filled with [`CONTACTS`] other
//!   contacts (each with a real ratchet session) and `KABAR_HISTORY_MESSAGES`
//!   messages (default 1,000,000) spread evenly over them (100 each),
//!   written through the storage API directly: contacts in one commit group,
//!   messages in durable commits of [`FILL_BATCH`] (one message for each of
//!   1,000 contacts, round after round, so the writes scatter over the key
//!   space as real traffic does), alternately incoming (`commit_incoming`)
//!   and outgoing (`commit_outgoing`, then `acknowledge`d); one contact in
//!   [`QUEUED_EVERY`] keeps its last outgoing message queued in the outbox.
//!   Filler bodies are [`FILL_BODY`] bytes (not 1 KiB), filler envelopes are
//!   real envelopes of a 100-byte message. Built once per process (timed and
//!   reported with the file sizes), then used by every round.
//!
//! Caches: after building (both cases), every store is closed, the kernel's
//! page cache of its file dropped (`dd iflag=nocache count=0`, which
//! `posix_fadvise(DONTNEED)`s that one file only; nothing system-wide) and the
//! store opened again, so the first round starts with a cold redb cache and a
//! cold file. Later rounds of case B run on the same (by then warm) store:
//! the per-round figures are printed so the difference shows.
//!
//! Before the clock starts each pair exchanges one message each way, so the
//! timed messages are ordinary ratchet messages (no session start). The
//! clock (`now_ms`) moves [`STEP_MS`] per request, so the sender's pacing
//! never holds a request back.
//!
//! The floor beside it: bare redb (one `&[u8] → &[u8]` table keyed
//! conversation ‖ seq) doing the same number of durable commits of the same
//! number of 1 KiB values, empty and holding the same number of 100-byte
//! rows over 10,000 conversations (built in commits of 10,000, then closed,
//! cache dropped, reopened). It shows what redb and the disk alone do as
//! the file grows.
//!
//! Run: `cargo bench -p kabar-node --bench history` (medians of 3 rounds;
//! `KABAR_BENCH_ROUNDS` changes the count, `KABAR_HISTORY_MESSAGES` the
//! history size, e.g. 100000 for a quick check).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kabar_crypto::{IdentityKeyPair, IdentityPublic, PrekeyBundle, ProfileKind, Session, SignedPrekeyPublic};
use kabar_node::content::Content;
use kabar_node::engine::{Action, Engine, EngineConfig, PeerKey};
use kabar_node::wire::Ack;
use kabar_storage::{
    Contact, ContactId, DataDir, Direction, IncomingMessage, KdfParams, MessageRecord, MessageStatus, OutgoingMessage,
    ProfileStore, SessionState,
};
use redb::{Database, Durability, TableDefinition};
use tempfile::TempDir;

/// A fixed "now" (Unix ms) the pairs start at.
const T0: u64 = 1_764_000_000_000;
/// Other contacts in a filled store.
const CONTACTS: usize = 10_000;
/// Messages in a filled store unless `KABAR_HISTORY_MESSAGES` says otherwise.
const DEFAULT_MESSAGES: usize = 1_000_000;
/// Filler messages per durable commit.
const FILL_BATCH: usize = 1_000;
/// Filler message body length.
const FILL_BODY: usize = 100;
/// One filler contact in this many keeps its last outgoing message queued.
const QUEUED_EVERY: usize = 10;
/// The measured text length.
const TEXT_LEN: usize = 1024;
/// Messages of the one-at-a-time mode, per round.
const ONE_BY_ONE: usize = 2_000;
/// Texts per request in the batched mode.
const BATCH: usize = 64;
/// Requests of the batched mode, per round (2,048 messages).
const BATCHES: usize = 32;
/// Clock step per request.
const STEP_MS: u64 = 1_000;
/// Rows per commit while building the bare redb floor.
const BARE_FILL_BATCH: usize = 10_000;
/// The ratio the issue asks for.
const TARGET: f64 = 1.2;

fn rounds() -> usize {
    std::env::var("KABAR_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).max(1)
}

fn history_messages() -> usize {
    std::env::var("KABAR_HISTORY_MESSAGES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_MESSAGES)
}

fn config() -> EngineConfig {
    EngineConfig { prekey_wait_ms: 0, ..EngineConfig::default() }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Drops the kernel's page cache of one (closed) file, and only that file.
fn drop_file_cache(path: &Path) {
    let status = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .expect("running dd (coreutils)");
    assert!(status.success(), "dd iflag=nocache failed on {}", path.display());
}

// ---------------------------------------------------------------------------
// The pair.

struct Party {
    _tmp: TempDir,
    dir: DataDir,
    name: &'static str,
    engine: Option<Engine>,
}

impl Party {
    fn new(name: &'static str) -> Party {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = DataDir::create(tmp.path(), b"pw", KdfParams::TESTNET).unwrap();
        let store = dir.create_profile(name, ProfileKind::Personal, T0 / 1000, &mut rand::rng()).unwrap();
        let engine = Engine::new(store, config()).unwrap();
        Party { _tmp: tmp, dir, name, engine: Some(engine) }
    }

    fn e(&mut self) -> &mut Engine {
        self.engine.as_mut().unwrap()
    }

    fn store(&self) -> &ProfileStore {
        self.engine.as_ref().unwrap().store()
    }

    fn key(&self) -> PeerKey {
        self.engine.as_ref().unwrap().peer_key()
    }

    /// Adds `other` as a contact from its card data.
    fn knows(&self, other: &Party, as_name: &str) -> ContactId {
        let identity = other.store().identity().unwrap().public();
        let spk = other.store().current_signed_prekey().unwrap().public();
        self.store().upsert_contact(contact(identity, spk, as_name)).unwrap().0
    }

    /// Closes the store, drops its file from the page cache, opens it again.
    fn reopen(&mut self) {
        let path = self.store().path().to_path_buf();
        drop(self.engine.take());
        drop_file_cache(&path);
        let store = self.dir.open_profile(self.name).unwrap();
        self.engine = Some(Engine::new(store, config()).unwrap());
    }

    fn file_size(&self) -> u64 {
        std::fs::metadata(self.store().path()).unwrap().len()
    }
}

fn contact(identity: IdentityPublic, spk: SignedPrekeyPublic, name: &str) -> Contact {
    Contact::new(identity, Some(spk), name, T0)
}

struct Pair {
    alice: Party,
    bob: Party,
    /// Alice's id of Bob.
    a_bob: ContactId,
    now: u64,
}

impl Pair {
    fn new() -> Pair {
        let alice = Party::new("alice");
        let bob = Party::new("bob");
        let a_bob = alice.knows(&bob, "Bob");
        bob.knows(&alice, "Alice");
        Pair { alice, bob, a_bob, now: T0 }
    }

    fn reopen(&mut self) {
        self.alice.reopen();
        self.bob.reopen();
    }

    /// One message each way (untimed): the sessions exist on both sides and
    /// Alice's next messages are ordinary ratchet messages.
    fn warm_up(&mut self) {
        let mut rng = rand::rng();
        self.now += STEP_MS;
        let (_, actions) = self.alice.e().send(&self.a_bob, Content::text("hello"), self.now, &mut rng).unwrap();
        deliver(&mut self.alice, &mut self.bob, actions, self.now);
        let b_alice = self.bob.store().contact_id_for_key(&self.alice.key());
        self.now += STEP_MS;
        let (_, actions) = self.bob.e().send(&b_alice, Content::text("hi"), self.now, &mut rng).unwrap();
        deliver(&mut self.bob, &mut self.alice, actions, self.now);
    }

    /// `requests` requests of `per_request` texts from Alice to Bob, each
    /// part timed; µs per message, one figure per request.
    fn run(&mut self, per_request: usize, requests: usize) -> Parts {
        let text = "k".repeat(TEXT_LEN);
        let (a_key, b_key) = (self.alice.key(), self.bob.key());
        let mut rng = rand::rng();
        let mut parts = Parts::default();
        let n = per_request as f64;
        for _ in 0..requests {
            self.now += STEP_MS;
            let now = self.now;
            let mut contents: Vec<Content> = (0..per_request).map(|_| Content::text(text.clone())).collect();

            let started = Instant::now();
            let actions = if per_request == 1 {
                self.alice.e().send(&self.a_bob, contents.pop().unwrap(), now, &mut rng).unwrap().1
            } else {
                self.alice.e().send_many(&self.a_bob, contents, now, &mut rng).unwrap().1
            };
            let send = started.elapsed();

            let (peer, ids, envelopes) = only_transmit(actions);
            assert_eq!(peer, b_key);
            assert_eq!(envelopes.len(), per_request);

            let started = Instant::now();
            let (acks, _) = self.bob.e().on_request(&a_key, &envelopes, now, &mut rng).unwrap();
            let receive = started.elapsed();
            assert!(acks.iter().all(|a| *a == Ack::Accepted), "{acks:?}");

            let started = Instant::now();
            let more = self.alice.e().on_acks(&b_key, &ids, &acks, now, &mut rng).unwrap();
            let ack = started.elapsed();
            assert!(!more.iter().any(|a| matches!(a, Action::Transmit { .. })));

            parts.send.push(micros(send) / n);
            parts.receive.push(micros(receive) / n);
            parts.ack.push(micros(ack) / n);
        }
        // Nothing left queued for Bob; the engine's outbox index agrees with the store.
        let outbox = self.alice.store().outbox().unwrap();
        assert!(outbox.iter().all(|e| e.contact != self.a_bob));
        assert_eq!(self.alice.e().queued(), outbox.len());
        parts
    }
}

fn only_transmit(actions: Vec<Action>) -> (PeerKey, Vec<[u8; 16]>, Vec<Vec<u8>>) {
    let mut found: Vec<_> = actions
        .into_iter()
        .filter_map(|a| match a {
            Action::Transmit { peer, message_ids, envelopes, .. } => Some((peer, message_ids, envelopes)),
            _ => None,
        })
        .collect();
    assert_eq!(found.len(), 1, "one transmission expected");
    found.remove(0)
}

/// Delivers the one transmission in `actions` and its acknowledgements.
fn deliver(from: &mut Party, to: &mut Party, actions: Vec<Action>, now: u64) {
    let mut rng = rand::rng();
    let (_, ids, envelopes) = only_transmit(actions);
    let (acks, _) = to.e().on_request(&from.key(), &envelopes, now, &mut rng).unwrap();
    assert!(acks.iter().all(|a| *a == Ack::Accepted), "{acks:?}");
    from.e().on_acks(&to.key(), &ids, &acks, now, &mut rng).unwrap();
}

/// µs per message, one figure per request.
#[derive(Default, Clone)]
struct Parts {
    send: Vec<f64>,
    receive: Vec<f64>,
    ack: Vec<f64>,
}

impl Parts {
    fn total(&self) -> Vec<f64> {
        (0..self.send.len()).map(|i| self.send[i] + self.receive[i] + self.ack[i]).collect()
    }
}

// ---------------------------------------------------------------------------
// The history.

/// A filler contact: its card, a real session with it, and a real envelope
/// of a 100-byte message (for the outbox entries).
struct Filler {
    identity: IdentityPublic,
    spk: SignedPrekeyPublic,
    session: SessionState,
    envelope: Vec<u8>,
}

fn fillers() -> Vec<Filler> {
    let mut rng = rand::rng();
    let me = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    (0..CONTACTS)
        .map(|_| {
            let peer = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
            let spk = kabar_crypto::SignedPrekey::generate(&peer, 1, T0 / 1000, &mut rng);
            let bundle = PrekeyBundle { identity: peer.public(), signed_prekey: spk.public(), one_time_prekey: None };
            let mut session = Session::initiate(&me, &bundle, &mut rng).unwrap();
            let envelope = session.encrypt(&[0x5a; FILL_BODY], &mut rng).unwrap().encode();
            Filler {
                identity: peer.public(),
                spk: spk.public(),
                session: SessionState::new(session.snapshot()),
                envelope,
            }
        })
        .collect()
}

fn filler_record(direction: Direction, at: u64) -> MessageRecord {
    let incoming = direction == Direction::Incoming;
    MessageRecord {
        id: rand::random(),
        direction,
        sent_at_ms: at,
        received_at_ms: incoming.then_some(at),
        status: if incoming { MessageStatus::Delivered } else { MessageStatus::Queued },
        body: vec![0x5a; FILL_BODY],
    }
}

/// Fills `store` with the filler contacts and `messages` messages over them
/// (see the module doc).
fn fill(store: &ProfileStore, fillers: &[Filler], messages: usize) {
    store.begin_group();
    let ids: Vec<ContactId> = fillers
        .iter()
        .enumerate()
        .map(|(i, f)| store.upsert_contact(contact(f.identity, f.spk, &format!("filler {i}"))).unwrap().0)
        .collect();
    store.end_group().unwrap();
    let per_contact = messages / CONTACTS;
    let last_outgoing = (0..per_contact).rev().find(|r| r % 2 == 1);
    for round in 0..per_contact {
        // Older than anything the pair sends.
        let at = T0 - (per_contact - round) as u64 * 60_000;
        for first in (0..CONTACTS).step_by(FILL_BATCH) {
            let range = first..(first + FILL_BATCH).min(CONTACTS);
            if round % 2 == 0 {
                let batch: Vec<IncomingMessage> = range
                    .map(|c| {
                        let message = filler_record(Direction::Incoming, at);
                        IncomingMessage {
                            contact: ids[c],
                            session: Some(fillers[c].session.clone()),
                            received_id: message.id,
                            message: Some(message),
                            consumed_one_time_prekey: None,
                        }
                    })
                    .collect();
                store.commit_incoming(&batch, at).unwrap();
            } else {
                let batch: Vec<(usize, OutgoingMessage)> = range
                    .map(|c| {
                        (
                            c,
                            OutgoingMessage {
                                contact: ids[c],
                                session: Some(fillers[c].session.clone()),
                                message: filler_record(Direction::Outgoing, at),
                                envelope: fillers[c].envelope.clone(),
                            },
                        )
                    })
                    .collect();
                let items: Vec<OutgoingMessage> = batch.iter().map(|(_, m)| m.clone()).collect();
                store.commit_outgoing(&items, at).unwrap();
                let delivered: Vec<[u8; 16]> = batch
                    .iter()
                    .filter(|(c, _)| Some(round) != last_outgoing || c % QUEUED_EVERY != 0)
                    .map(|(_, m)| m.message.id)
                    .collect();
                // Not durable on its own: the next durable commit makes it so.
                store.acknowledge(&delivered).unwrap();
            }
        }
    }
    store.make_durable().unwrap();
}

// ---------------------------------------------------------------------------
// The floor: bare redb.

const BARE: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("messages");

fn bare_key(conversation: u64, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&conversation.to_be_bytes());
    key[8..16].copy_from_slice(&[0x42; 8]);
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

struct Bare {
    db: Option<Database>,
    path: std::path::PathBuf,
    /// Next seq of the measured conversation.
    next: u64,
    _dir: TempDir,
}

impl Bare {
    fn new() -> Bare {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bare.redb");
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(BARE).unwrap();
        tx.commit().unwrap();
        Bare { db: Some(db), path, next: 0, _dir: dir }
    }

    /// `messages` 100-byte rows over [`CONTACTS`] conversations, round
    /// after round.
    fn fill(&mut self, messages: usize) {
        let db = self.db.as_ref().unwrap();
        let value = [0x5au8; FILL_BODY];
        let per_contact = messages / CONTACTS;
        let mut pending = 0;
        let mut tx = db.begin_write().unwrap();
        for round in 0..per_contact {
            for c in 0..CONTACTS {
                tx.open_table(BARE)
                    .unwrap()
                    .insert(bare_key(c as u64 + 1, round as u64).as_slice(), value.as_slice())
                    .unwrap();
                pending += 1;
                if pending == BARE_FILL_BATCH {
                    tx.commit().unwrap();
                    tx = db.begin_write().unwrap();
                    pending = 0;
                }
            }
        }
        tx.commit().unwrap();
    }

    fn reopen(&mut self) {
        drop(self.db.take());
        drop_file_cache(&self.path);
        self.db = Some(Database::create(&self.path).unwrap());
    }

    /// `requests` durable commits of `per_commit` 1 KiB values into
    /// conversation 0; µs per value, one figure per commit.
    fn run(&mut self, per_commit: usize, requests: usize) -> Vec<f64> {
        let db = self.db.as_ref().unwrap();
        let value = vec![0x6bu8; TEXT_LEN];
        let mut out = Vec::with_capacity(requests);
        for _ in 0..requests {
            let started = Instant::now();
            let mut tx = db.begin_write().unwrap();
            tx.set_durability(Durability::Immediate).unwrap();
            {
                let mut table = tx.open_table(BARE).unwrap();
                for _ in 0..per_commit {
                    table.insert(bare_key(0, self.next).as_slice(), value.as_slice()).unwrap();
                    self.next += 1;
                }
            }
            tx.commit().unwrap();
            out.push(micros(started.elapsed()) / per_commit as f64);
        }
        out
    }

    fn file_size(&self) -> u64 {
        std::fs::metadata(&self.path).unwrap().len()
    }
}

// ---------------------------------------------------------------------------
// Report.

/// One case's figures: per round the mean, and every request's figure.
#[derive(Default)]
struct Series {
    round_means: Vec<f64>,
    all: Vec<f64>,
}

impl Series {
    fn add(&mut self, values: &[f64]) {
        self.round_means.push(mean(values));
        self.all.extend_from_slice(values);
    }
}

struct Row {
    part: &'static str,
    mode: String,
    a: Series,
    b: Series,
}

impl Row {
    fn new(part: &'static str, mode: String) -> Row {
        Row { part, mode, a: Series::default(), b: Series::default() }
    }
}

/// Rows per mode: send, receive, ack, the three together.
fn engine_rows(mode: &str) -> Vec<Row> {
    ["send", "receive", "ack", "send + receive + ack"].into_iter().map(|p| Row::new(p, mode.to_string())).collect()
}

fn add_parts(rows: &mut [Row], parts: &Parts, case_b: bool) {
    let total = parts.total();
    let series = [&parts.send, &parts.receive, &parts.ack, &total];
    for (row, values) in rows.iter_mut().zip(series) {
        if case_b { row.b.add(values) } else { row.a.add(values) }
    }
}

// ---------------------------------------------------------------------------
// Sub-steps (`KABAR_HISTORY_STEPS=1`): the store calls the engine makes,
// timed one by one on Alice's store, empty and filled.

/// Bytes this process has caused to be written to disk so far.
fn disk_writes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines().find_map(|l| l.strip_prefix("write_bytes: ")).unwrap().trim().parse().unwrap()
}

/// Median µs of `op` over `n` calls, and disk bytes written per call.
fn probe(n: usize, mut op: impl FnMut(usize)) -> (f64, f64) {
    let before = disk_writes();
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        op(i);
        times.push(micros(started.elapsed()));
    }
    (median(&times), (disk_writes() - before) as f64 / n as f64)
}

fn steps(store: &ProfileStore, filler: &Filler) -> Vec<(&'static str, (f64, f64))> {
    const N: usize = 300;
    let (probe_contact, _) = store.upsert_contact(contact(filler.identity, filler.spk, "probe")).unwrap();
    let envelope = vec![0x33u8; TEXT_LEN + 100];
    let outgoing = || OutgoingMessage {
        contact: probe_contact,
        session: Some(filler.session.clone()),
        message: MessageRecord {
            id: rand::random(),
            direction: Direction::Outgoing,
            sent_at_ms: T0,
            received_at_ms: None,
            status: MessageStatus::Queued,
            body: vec![0x6b; TEXT_LEN],
        },
        envelope: envelope.clone(),
    };
    let mut out = Vec::new();
    out.push(("contact() read", probe(N, |_| drop(store.contact(&probe_contact).unwrap()))));
    out.push(("session() read", probe(N, |_| drop(store.session(&probe_contact).unwrap()))));
    out.push(("conversation() read", probe(N, |_| drop(store.conversation(&probe_contact).unwrap()))));
    out.push(("is_received(random id)", probe(N, |_| assert!(!store.is_received(&rand::random()).unwrap()))));
    out.push((
        "empty durable commit (begin_group + end_group)",
        probe(N, |_| {
            store.begin_group();
            store.end_group().unwrap();
        }),
    ));
    let mut ids = Vec::new();
    out.push((
        "commit_outgoing(1 × 1 KiB), durable",
        probe(N, |_| {
            let m = outgoing();
            ids.push(m.message.id);
            store.commit_outgoing(&[m], T0).unwrap();
        }),
    ));
    store.begin_group();
    out.push((
        "commit_outgoing(1 × 1 KiB), no fsync (in a group)",
        probe(N, |_| {
            let m = outgoing();
            ids.push(m.message.id);
            store.commit_outgoing(&[m], T0).unwrap();
        }),
    ));
    store.end_group().unwrap();
    out.push(("outbox_entries(1 id)", probe(N, |i| assert_eq!(store.outbox_entries(&ids[i..=i]).unwrap().len(), 1))));
    out.push((
        "record_attempts(1 id, a first attempt), no fsync",
        probe(N, |i| drop(store.record_attempts(&[(ids[i], 1)], T0).unwrap())),
    ));
    out.push(("acknowledge(1 id), no fsync", probe(N, |i| store.acknowledge(&ids[i..=i]).unwrap())));
    store.make_durable().unwrap();
    let incoming = || {
        let id: [u8; 16] = rand::random();
        IncomingMessage {
            contact: probe_contact,
            session: Some(filler.session.clone()),
            message: Some(MessageRecord {
                id,
                direction: Direction::Incoming,
                sent_at_ms: T0,
                received_at_ms: Some(T0),
                status: MessageStatus::Delivered,
                body: vec![0x6b; TEXT_LEN],
            }),
            consumed_one_time_prekey: None,
            received_id: id,
        }
    };
    out.push((
        "commit_incoming(1 × 1 KiB), durable",
        probe(N, |_| drop(store.commit_incoming(&[incoming()], T0).unwrap())),
    ));
    store.begin_group();
    out.push((
        "commit_incoming(1 × 1 KiB), no fsync (in a group)",
        probe(N, |_| drop(store.commit_incoming(&[incoming()], T0).unwrap())),
    ));
    store.end_group().unwrap();
    out
}

fn print_steps(empty: &ProfileStore, filled: &ProfileStore, filler: &Filler) {
    let a = steps(empty, filler);
    let b = steps(filled, filler);
    println!();
    println!("Sub-steps on Alice's store (median µs of 300 calls; disk bytes written per call from /proc/self/io):");
    println!();
    println!("| call | A: empty µs | B: history µs | B/A | A bytes written | B bytes written |");
    println!("|---|---|---|---|---|---|");
    for ((name, (ta, wa)), (_, (tb, wb))) in a.iter().zip(&b) {
        println!("| {name} | {ta:.1} | {tb:.1} | {:.2}× | {wa:.0} | {wb:.0} |", tb / ta);
    }
}

fn main() {
    let rounds = rounds();
    let messages = history_messages();
    let began = Instant::now();
    eprintln!("history: {messages} messages over {CONTACTS} contacts, {rounds} rounds");

    // Case B's pair, filled once.
    let started = Instant::now();
    let fillers = fillers();
    let fillers_made = started.elapsed();
    eprintln!("{CONTACTS} filler contacts with sessions made in {fillers_made:.1?}");
    let mut filled = Pair::new();
    let started = Instant::now();
    fill(filled.alice.store(), &fillers, messages);
    let alice_fill = started.elapsed();
    eprintln!("alice filled in {alice_fill:.1?}");
    let started = Instant::now();
    fill(filled.bob.store(), &fillers, messages);
    let bob_fill = started.elapsed();
    eprintln!("bob filled in {bob_fill:.1?}");
    let queued = filled.alice.store().outbox().unwrap().len();
    let sizes = (filled.alice.file_size(), filled.bob.file_size());
    filled.reopen();
    filled.warm_up();

    let mut bare_filled = Bare::new();
    let started = Instant::now();
    bare_filled.fill(messages);
    let bare_fill = started.elapsed();
    let bare_size = bare_filled.file_size();
    bare_filled.reopen();

    let mut one = engine_rows(&format!("one at a time ({ONE_BY_ONE} requests of 1)"));
    let mut batched = engine_rows(&format!("batched ({BATCHES} requests of {BATCH})"));
    let mut floor_one = Row::new("floor: bare redb", format!("{ONE_BY_ONE} durable commits of 1 × 1 KiB"));
    let mut floor_batched = Row::new("floor: bare redb", format!("{BATCHES} durable commits of {BATCH} × 1 KiB"));

    for round in 0..rounds {
        eprintln!("round {} of {rounds} ({:.0?} so far)", round + 1, began.elapsed());
        // Case A: a fresh pair each round.
        let mut empty = Pair::new();
        empty.reopen();
        empty.warm_up();
        add_parts(&mut one, &empty.run(1, ONE_BY_ONE), false);
        add_parts(&mut batched, &empty.run(BATCH, BATCHES), false);
        drop(empty);
        // Case B: the filled pair.
        add_parts(&mut one, &filled.run(1, ONE_BY_ONE), true);
        add_parts(&mut batched, &filled.run(BATCH, BATCHES), true);
        // The floor.
        let mut bare_empty = Bare::new();
        bare_empty.reopen();
        floor_one.a.add(&bare_empty.run(1, ONE_BY_ONE));
        floor_batched.a.add(&bare_empty.run(BATCH, BATCHES));
        floor_one.b.add(&bare_filled.run(1, ONE_BY_ONE));
        floor_batched.b.add(&bare_filled.run(BATCH, BATCHES));
    }

    println!();
    println!(
        "Send + receive cost, 1 KiB texts, Alice → Bob: A = empty stores, B = both stores holding {messages} messages \
         over {CONTACTS} other contacts; µs per message, median of {rounds} rounds (of each round's mean); p50: \
         median of every request, rounds pooled. Target: B/A ≤ {TARGET}×."
    );
    println!();
    println!("| part | mode | A: empty | B: history | B/A | p50 A | p50 B | p50 B/A | ≤ {TARGET}× |");
    println!("|---|---|---|---|---|---|---|---|---|");
    let all_rows: Vec<&Row> = one.iter().chain(&batched).chain([&floor_one, &floor_batched]).collect();
    for r in &all_rows {
        let (a, b) = (median(&r.a.round_means), median(&r.b.round_means));
        let (pa, pb) = (median(&r.a.all), median(&r.b.all));
        let ok = if b / a <= TARGET { "yes" } else { "**no**" };
        println!(
            "| {} | {} | {a:.1} | {b:.1} | {:.2}× | {pa:.1} | {pb:.1} | {:.2}× | {ok} |",
            r.part,
            r.mode,
            b / a,
            pb / pa
        );
    }
    println!();
    println!("per round (means, µs per message), A / B:");
    for r in &all_rows {
        let fmt = |v: &[f64]| v.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(" / ");
        println!("  {} — {}: A {}; B {}", r.part, r.mode, fmt(&r.a.round_means), fmt(&r.b.round_means));
    }
    println!();
    println!(
        "History (case B), built once, not timed in the table: {CONTACTS} filler contacts with sessions made in \
         {fillers_made:.1?}; Alice's store filled in {alice_fill:.1?}, Bob's in {bob_fill:.1?} ({messages} messages \
         of {FILL_BODY} bytes each, half incoming, half outgoing, durable commits of {FILL_BATCH}; {queued} left \
         queued in Alice's outbox); file sizes: Alice {}, Bob {}. Bare redb floor: {messages} rows of {FILL_BODY} \
         bytes in {bare_fill:.1?}, {}.",
        mib(sizes.0),
        mib(sizes.1),
        mib(bare_size)
    );
    println!(
        "Sizes after the rounds: Alice {}, Bob {}. Caches: each store closed, its file dropped from the page cache \
         (dd iflag=nocache), reopened before round 1; later rounds of B run warm.",
        mib(filled.alice.file_size()),
        mib(filled.bob.file_size())
    );
    if std::env::var_os("KABAR_HISTORY_STEPS").is_some() {
        let mut empty = Pair::new();
        empty.reopen();
        empty.warm_up();
        print_steps(empty.alice.store(), filled.alice.store(), &fillers[1]);
    }
    eprintln!("done in {:.0?}", began.elapsed());
}
