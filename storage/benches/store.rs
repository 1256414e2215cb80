//! Message storage: Kabar's encrypted profile store against a bare redb
//! table, on the same kind of disk (a fresh temporary directory under the
//! system temp dir for every row), both with `Durability::Immediate` (an
//! fsync per commit).
//!
//! Rows (every group has `bare_redb`; the insert and history groups
//! `kabar`, the insert groups also `kabar_outgoing`; `status_64` its own):
//!
//! - `kabar`: [`ProfileStore::commit_incoming`]. Per message, in the one
//!   transaction: the received id, the session snapshot (of a freshly
//!   initiated session that has sent one message; re-sealed for every
//!   message), the conversation state (read, updated, re-sealed), the sealed
//!   message record (1024-byte body) and its index entry. This is the main
//!   comparison row: like bare redb it stores each message once.
//! - `kabar_outgoing`: [`ProfileStore::commit_outgoing`]: the same without
//!   the received id, plus an outbox entry holding the encoded envelope of a
//!   1 KiB message (a real envelope, made once), so about twice the bytes
//!   per message.
//! - `bare_redb`: a plain `redb::Database`, one table
//!   `<&[u8], &[u8]>` keyed by conversation id (16 bytes) ‖ sequence number
//!   (u64 BE), the 1024-byte body as value. No encryption, no other table.
//!
//! Groups:
//!
//! - `durable_insert_1`: one message per durable commit
//!   (`Throughput::Elements(1)`, so criterion prints messages/s). Building
//!   the message (fresh random 16-byte id, snapshot clone, body clone) is
//!   outside the timed part; the commit, fsync included, is timed.
//! - `durable_insert_64`: 64 messages per durable commit, spread round-robin
//!   over 8 conversations (`Throughput::Elements(64)`): throughput comes from
//!   putting many messages of many conversations into one commit.
//! - `history_page_50_of_1M`: one conversation holding 1,000,000 messages
//!   (built before timing in commits of 10,000); timed: reading the latest 50
//!   messages, oldest first, into owned values: for Kabar
//!   [`ProfileStore::history`] (each record opened and decoded), for bare
//!   redb a reverse range scan copying the 50 values out. Each iteration
//!   opens its own read transaction. The database stays open between
//!   iterations, so this is a warm-cache page read.
//! - `status_64`: 64 status changes in one durable commit
//!   (`Throughput::Elements(64)`); the 64 messages (one conversation) are
//!   committed before timing. `kabar_mark_read`:
//!   [`ProfileStore::mark_read`] of 64 incoming messages (and the
//!   conversation's unread count); `kabar_acknowledge`:
//!   [`ProfileStore::acknowledge`] of 64 outgoing messages (outbox entries
//!   removed, status `Delivered`) followed by
//!   [`ProfileStore::make_durable`], its fsync; `bare_redb`: 64 one-byte
//!   values written under 16-byte ids in one durable commit.
//!
//! The insert rows keep appending to the same database across iterations
//! (criterion's warm-up included), so they run against a database of some
//! tens to hundreds of megabytes, not an empty one.
//!
//! Run with `cargo bench -p kabar-storage --bench store`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kabar_crypto::{IdentityKeyPair, PrekeyBundle, ProfileKind, Session, SessionSnapshot, SignedPrekey};
use kabar_storage::{
    Contact, ContactId, DataDir, Direction, IncomingMessage, KdfParams, MessageRecord, MessageStatus, OutgoingMessage,
    ProfileStore,
};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use tempfile::TempDir;

/// Message body size.
const BODY_LEN: usize = 1024;
/// Messages per commit in the batched group.
const BATCH: usize = 64;
/// Conversations the batched group spreads each commit over.
const CONVERSATIONS: usize = 8;
/// Messages in the conversation of the history group.
const HISTORY_MESSAGES: usize = 1_000_000;
/// Messages per commit while building that conversation (not timed).
const BUILD_BATCH: usize = 10_000;
/// Messages per history page.
const PAGE: usize = 50;
/// A fixed "now", Unix milliseconds.
const NOW_MS: u64 = 1_700_000_000_000;

fn body() -> Vec<u8> {
    (0..BODY_LEN).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------
// Kabar
// ---------------------------------------------------------------------------

/// A profile store with `conversations` contacts, each with a session.
struct Kabar {
    store: ProfileStore,
    /// Each contact with its session snapshot (after encrypting one 1 KiB message).
    peers: Vec<(ContactId, SessionSnapshot)>,
    /// The encoded envelope of one 1 KiB message, for outbox entries.
    envelope: Vec<u8>,
    body: Vec<u8>,
    /// Per contact: the ratchet-key prefix its message ids start with.
    prefixes: Vec<[u8; 12]>,
    /// Next message counter (ids must be fresh across iterations).
    counter: std::cell::Cell<u32>,
    _data: DataDir,
    _dir: TempDir,
}

impl Kabar {
    fn new(conversations: usize) -> Self {
        let mut rng = rand::rng();
        let dir = tempfile::tempdir().unwrap();
        let mut data = DataDir::create(dir.path(), b"bench passphrase", KdfParams::TESTNET).unwrap();
        let store = data.create_profile("bench", ProfileKind::Personal, NOW_MS / 1000, &mut rng).unwrap();
        let me = store.identity().unwrap();
        let body = body();
        let mut envelope = Vec::new();
        let peers: Vec<(ContactId, SessionSnapshot)> = (0..conversations)
            .map(|i| {
                let peer = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
                let spk = SignedPrekey::generate(&peer, 1, NOW_MS / 1000, &mut rng);
                let bundle =
                    PrekeyBundle { identity: peer.public(), signed_prekey: spk.public(), one_time_prekey: None };
                let mut session = Session::initiate(&me, &bundle, &mut rng).unwrap();
                envelope = session.encrypt(&body, &mut rng).unwrap().encode();
                let (id, _) = store
                    .upsert_contact(Contact {
                        peer_id: peer.public().signing.to_vec(),
                        identity: peer.public(),
                        signed_prekey: Some(spk.public()),
                        one_time_prekey: None,
                        addresses: vec![],
                        display_name: format!("peer {i}"),
                        verified: false,
                        blocked: false,
                        identity_change: None,
                        added_at_ms: NOW_MS,
                        request: false,
                    })
                    .unwrap();
                (id, session.snapshot())
            })
            .collect();
        let prefixes = peers.iter().map(|_| rand::random()).collect();
        Kabar { store, peers, envelope, body, prefixes, counter: std::cell::Cell::new(0), _data: data, _dir: dir }
    }

    /// A message id as envelopes make them: the chain's ratchet-key prefix
    /// (one per contact here) and a counter.
    fn next_id(&self, peer: usize) -> [u8; 16] {
        let n = self.counter.get();
        self.counter.set(n + 1);
        let mut id = [0u8; 16];
        id[..12].copy_from_slice(&self.prefixes[peer]);
        id[12..].copy_from_slice(&n.to_be_bytes());
        id
    }

    fn record(&self, direction: Direction, peer: usize) -> MessageRecord {
        let incoming = direction == Direction::Incoming;
        MessageRecord {
            id: self.next_id(peer),
            direction,
            sent_at_ms: NOW_MS,
            received_at_ms: incoming.then_some(NOW_MS),
            status: if incoming { MessageStatus::Delivered } else { MessageStatus::Queued },
            body: self.body.clone(),
        }
    }

    /// `n` incoming messages, round-robin over the contacts.
    fn incoming(&self, n: usize) -> Vec<IncomingMessage> {
        (0..n)
            .map(|i| {
                let (contact, session) = &self.peers[i % self.peers.len()];
                let message = self.record(Direction::Incoming, i % self.peers.len());
                IncomingMessage {
                    contact: *contact,
                    session: Some(kabar_storage::SessionState::new(session.clone())),
                    received_id: message.id,
                    message: Some(message),
                    consumed_one_time_prekey: None,
                }
            })
            .collect()
    }

    /// `n` outgoing messages, round-robin over the contacts.
    fn outgoing(&self, n: usize) -> Vec<OutgoingMessage> {
        (0..n)
            .map(|i| {
                let (contact, session) = &self.peers[i % self.peers.len()];
                OutgoingMessage {
                    contact: *contact,
                    session: Some(kabar_storage::SessionState::new(session.clone())),
                    message: self.record(Direction::Outgoing, i % self.peers.len()),
                    envelope: self.envelope.clone(),
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// Bare redb
// ---------------------------------------------------------------------------

const BARE_MESSAGES: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("messages");
const BARE_STATUS: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("status");

fn bare_key(conversation: &[u8; 16], seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(conversation);
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// A plain redb database with one messages table.
struct Bare {
    db: Database,
    /// Each conversation id with its next sequence number.
    conversations: Vec<([u8; 16], u64)>,
    body: Vec<u8>,
    _dir: TempDir,
}

impl Bare {
    fn new(conversations: usize) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("bare.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(BARE_MESSAGES).unwrap();
        tx.open_table(BARE_STATUS).unwrap();
        tx.commit().unwrap();
        let conversations = (0..conversations).map(|_| (rand::random(), 0)).collect();
        Bare { db, conversations, body: body(), _dir: dir }
    }

    /// Writes a one-byte status under each id, in one durable commit.
    fn set_statuses(&self, ids: &[[u8; 16]], status: u8) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate).unwrap();
        {
            let mut table = tx.open_table(BARE_STATUS).unwrap();
            for id in ids {
                table.insert(id.as_slice(), [status].as_slice()).unwrap();
            }
        }
        tx.commit().unwrap();
    }

    /// Appends `n` messages, round-robin over the conversations, in one
    /// durable commit.
    fn insert(&mut self, n: usize) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate).unwrap();
        {
            let mut table = tx.open_table(BARE_MESSAGES).unwrap();
            let count = self.conversations.len();
            for i in 0..n {
                let (conversation, next) = &mut self.conversations[i % count];
                table.insert(bare_key(conversation, *next).as_slice(), self.body.as_slice()).unwrap();
                *next += 1;
            }
        }
        tx.commit().unwrap();
    }

    /// The latest `limit` messages of a conversation, oldest first.
    fn history(&self, conversation: &[u8; 16], limit: usize) -> Vec<(u64, Vec<u8>)> {
        let tx = self.db.begin_read().unwrap();
        let table = tx.open_table(BARE_MESSAGES).unwrap();
        let start = bare_key(conversation, 0);
        let end = bare_key(conversation, u64::MAX);
        let mut out = Vec::with_capacity(limit);
        for row in table.range(start.as_slice()..end.as_slice()).unwrap().rev().take(limit) {
            let (key, value) = row.unwrap();
            let seq = u64::from_be_bytes(key.value()[16..].try_into().unwrap());
            out.push((seq, value.value().to_vec()));
        }
        out.reverse();
        out
    }
}

// ---------------------------------------------------------------------------
// Benchmarks
// ---------------------------------------------------------------------------

/// One group per batch size: `batch` messages per durable commit, spread over
/// `conversations` conversations.
fn durable_inserts(c: &mut Criterion, batch: usize, conversations: usize) {
    let mut group = c.benchmark_group(format!("durable_insert_{batch}"));
    group.sample_size(20).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(batch as u64));

    {
        let kabar = Kabar::new(conversations);
        group.bench_function("kabar", |b| {
            b.iter_batched(
                || kabar.incoming(batch),
                |messages| black_box(kabar.store.commit_incoming(&messages, NOW_MS).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    {
        let kabar = Kabar::new(conversations);
        group.bench_function("kabar_outgoing", |b| {
            b.iter_batched(
                || kabar.outgoing(batch),
                |messages| black_box(kabar.store.commit_outgoing(&messages, NOW_MS).unwrap()),
                BatchSize::SmallInput,
            )
        });
    }
    {
        let mut bare = Bare::new(conversations);
        group.bench_function("bare_redb", |b| b.iter(|| bare.insert(batch)));
    }
    group.finish();
}

fn insert_one_per_commit(c: &mut Criterion) {
    durable_inserts(c, 1, 1);
}

fn insert_batched(c: &mut Criterion) {
    durable_inserts(c, BATCH, CONVERSATIONS);
}

fn history_page(c: &mut Criterion) {
    let mut group = c.benchmark_group("history_page_50_of_1M");
    group.sample_size(50).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    let last = HISTORY_MESSAGES as u64 - 1;

    // Built on first use, so a filter that skips a row skips its build too.
    let mut kabar: Option<(Kabar, ContactId)> = None;
    group.bench_function("kabar", |b| {
        let (kabar, contact) = kabar.get_or_insert_with(|| {
            let kabar = Kabar::new(1);
            let contact = kabar.peers[0].0;
            let started = Instant::now();
            for _ in 0..HISTORY_MESSAGES / BUILD_BATCH {
                kabar.store.commit_incoming(&kabar.incoming(BUILD_BATCH), NOW_MS).unwrap();
            }
            println!("kabar: {HISTORY_MESSAGES} messages stored in {:.1?} (not timed)", started.elapsed());
            let page = kabar.store.history(&contact, PAGE, None).unwrap();
            assert_eq!(page.len(), PAGE);
            assert_eq!(page[PAGE - 1].0, last);
            assert_eq!(page[PAGE - 1].1.body, kabar.body);
            (kabar, contact)
        });
        b.iter(|| black_box(kabar.store.history(contact, PAGE, None).unwrap()))
    });
    drop(kabar);

    let mut bare: Option<(Bare, [u8; 16])> = None;
    group.bench_function("bare_redb", |b| {
        let (bare, conversation) = bare.get_or_insert_with(|| {
            let mut bare = Bare::new(1);
            let conversation = bare.conversations[0].0;
            let started = Instant::now();
            for _ in 0..HISTORY_MESSAGES / BUILD_BATCH {
                bare.insert(BUILD_BATCH);
            }
            println!("bare_redb: {HISTORY_MESSAGES} messages stored in {:.1?} (not timed)", started.elapsed());
            let page = bare.history(&conversation, PAGE);
            assert_eq!(page.len(), PAGE);
            assert_eq!(page[PAGE - 1].0, last);
            assert_eq!(page[PAGE - 1].1, bare.body);
            (bare, conversation)
        });
        b.iter(|| black_box(bare.history(conversation, PAGE)))
    });
    drop(bare);
    group.finish();
}

fn status_changes(c: &mut Criterion) {
    let mut group = c.benchmark_group("status_64");
    group.sample_size(20).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(BATCH as u64));
    {
        let kabar = Kabar::new(1);
        let contact = kabar.peers[0].0;
        group.bench_function("kabar_mark_read", |b| {
            b.iter_batched(
                || {
                    let messages = kabar.incoming(BATCH);
                    kabar.store.commit_incoming(&messages, NOW_MS).unwrap();
                    messages.iter().map(IncomingMessage::id).collect::<Vec<_>>()
                },
                |ids| kabar.store.mark_read(&contact, &ids).unwrap(),
                BatchSize::SmallInput,
            )
        });
    }
    {
        let kabar = Kabar::new(1);
        group.bench_function("kabar_acknowledge", |b| {
            b.iter_batched(
                || {
                    let messages = kabar.outgoing(BATCH);
                    kabar.store.commit_outgoing(&messages, NOW_MS).unwrap();
                    messages.iter().map(|m| m.message.id).collect::<Vec<_>>()
                },
                |ids| {
                    kabar.store.acknowledge(&ids).unwrap();
                    assert!(kabar.store.make_durable().unwrap());
                },
                BatchSize::SmallInput,
            )
        });
    }
    {
        let bare = Bare::new(1);
        let ids: Vec<[u8; 16]> = (0..BATCH).map(|_| rand::random()).collect();
        let mut status = 0u8;
        group.bench_function("bare_redb", |b| {
            b.iter(|| {
                status = status.wrapping_add(1);
                bare.set_statuses(&ids, status)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, insert_one_per_commit, insert_batched, history_page, status_changes);
criterion_main!(benches);
