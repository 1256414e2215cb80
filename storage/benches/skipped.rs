//! Receiving on a session that holds 2,000 skipped message keys (the most a
//! session keeps, `MAX_SKIPPED_TOTAL`): what one more message costs.
//!
//! Setup (not timed): a profile store with one contact; the contact's
//! session was opened by a prekey message whose counter was 1,000 (1,000
//! keys skipped), then, after a reply, a message 1,000 of the contact's next
//! chain (1,000 more): 2,000 skipped keys, committed (schema 7: as rows of
//! their own; schema 6 sealed them into the session row).
//!
//! Timed, per iteration: the next in-order message of the contact's current
//! chain (1 KiB body, made before timing), decrypted with the stored session
//! (loaded from the store, its skipped key looked up) and committed with
//! [`ProfileStore::commit_inbound`], durably (one fsync). No skipped key is
//! added or used: what is measured is what the 2,000 keys cost a message
//! that does not touch them.
//!
//! After criterion's run the bench prints the bytes written per message
//! (`wchar` of `/proc/self/io` over 200 more messages: every byte redb
//! handed to `write`/`pwrite`, page rewrites included).
//!
//! Beside it, the floor: the same on a session that holds no skipped key.
//!
//! Run with `cargo bench -p kabar-storage --bench skipped`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::cell::RefCell;

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use kabar_crypto::{Envelope, IdentityKeyPair, PrekeyBundle, ProfileKind, Session};
use kabar_storage::{
    Contact, ContactId, DataDir, Direction, Inbound, IncomingMessage, KdfParams, MessageRecord, MessageStatus,
    ProfileStore, SessionState, SkippedKeyChanges,
};
use tempfile::TempDir;

/// A fixed "now", Unix milliseconds.
const NOW_MS: u64 = 1_700_000_000_000;

struct Setup {
    store: ProfileStore,
    contact: ContactId,
    /// The contact's side of the session.
    theirs: RefCell<Session>,
    next_id: RefCell<u64>,
    _data: DataDir,
    _dir: TempDir,
}

/// A session whose two chains each skipped `gap` keys (2 × `gap` held).
fn setup(gap: u32) -> Setup {
    let mut rng = rand::rng();
    let dir = tempfile::tempdir().unwrap();
    let mut data = DataDir::create(dir.path(), b"bench passphrase", KdfParams::TESTNET).unwrap();
    let store = data.create_profile("bench", ProfileKind::Personal, NOW_MS / 1000, &mut rng).unwrap();
    let me = store.identity().unwrap();
    let spk = store.current_signed_prekey().unwrap();
    let bundle = PrekeyBundle { identity: me.public(), signed_prekey: spk.public(), one_time_prekey: None };
    let peer = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let (contact, _) = store
        .upsert_contact(Contact {
            peer_id: peer.public().signing.to_vec(),
            identity: peer.public(),
            signed_prekey: None,
            one_time_prekey: None,
            addresses: vec![],
            display_name: "peer".into(),
            verified: false,
            blocked: false,
            identity_change: None,
            added_at_ms: NOW_MS,
            request: false,
        })
        .unwrap();
    let mut theirs = Session::initiate(&peer, &bundle, &mut rng).unwrap();
    let mut last = None;
    for _ in 0..=gap {
        last = Some(theirs.encrypt(b"first chain", &mut rng).unwrap());
    }
    let (mut ours, _) = Session::respond(&me, &spk, None, &last.take().unwrap()).unwrap();
    let mut changes = SkippedKeyChanges::new(contact);
    changes.record(&store, &ours.id(), ours.take_skipped()).unwrap();
    theirs.decrypt(&ours.encrypt(b"reply", &mut rng).unwrap()).unwrap();
    for _ in 0..=gap {
        last = Some(theirs.encrypt(b"second chain", &mut rng).unwrap());
    }
    let envelope = last.take().unwrap();
    let found = changes.lookup(&store, &ours.id(), &envelope.header).unwrap();
    let (_, change) = ours.decrypt_with(&envelope, found).unwrap();
    changes.record(&store, &ours.id(), change).unwrap();
    assert_eq!(ours.skipped_keys(), 2 * gap as usize);
    let mut inbound = Inbound::new(contact);
    inbound.messages = vec![message(contact, 0, SessionState::new(ours.snapshot()))];
    inbound.skipped = changes;
    store.commit_inbound(&inbound, NOW_MS).unwrap();
    Setup { store, contact, theirs: RefCell::new(theirs), next_id: RefCell::new(1), _data: data, _dir: dir }
}

fn message(contact: ContactId, n: u64, state: SessionState) -> IncomingMessage {
    let mut id = [0u8; 16];
    id[8..].copy_from_slice(&n.to_be_bytes());
    IncomingMessage {
        contact,
        session: Some(state),
        received_id: id,
        message: Some(MessageRecord {
            id,
            direction: Direction::Incoming,
            sent_at_ms: NOW_MS,
            received_at_ms: Some(NOW_MS),
            status: MessageStatus::Delivered,
            body: vec![7; 1024],
        }),
        consumed_one_time_prekey: None,
    }
}

impl Setup {
    fn next_envelope(&self) -> Envelope {
        self.theirs.borrow_mut().encrypt(&[7; 1024], &mut rand::rng()).unwrap()
    }

    /// Load, decrypt, commit: one received message, as the engine does
    /// (the skipped key looked up in the store, the change committed with
    /// the session and the message).
    fn receive(&self, envelope: &Envelope) {
        let state = self.store.session(&self.contact).unwrap().unwrap();
        let mut session = Session::from_snapshot(state.current).unwrap();
        let mut changes = SkippedKeyChanges::new(self.contact);
        let found = changes.lookup(&self.store, &session.id(), &envelope.header).unwrap();
        let (_, change) = session.decrypt_with(envelope, found).unwrap();
        changes.record(&self.store, &session.id(), change).unwrap();
        let n = {
            let mut next = self.next_id.borrow_mut();
            *next += 1;
            *next
        };
        let state = SessionState { current: session.snapshot(), previous: state.previous };
        let mut inbound = Inbound::new(self.contact);
        inbound.messages = vec![message(self.contact, n, state)];
        inbound.skipped = changes;
        self.store.commit_inbound(&inbound, NOW_MS).unwrap();
    }
}

/// Bytes this process handed to `write`-like calls so far.
fn written() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    io.lines().find_map(|l| l.strip_prefix("wchar: ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

/// Side by side in one run: a session holding 2,000 skipped keys, and the
/// floor, the same work on a session holding none (what the keys cost is
/// the difference; the target is none).
fn bench(c: &mut Criterion) {
    let cases = [("2000_skipped", setup(1_000)), ("0_skipped_floor", setup(0))];
    let mut group = c.benchmark_group("receive");
    for (name, s) in &cases {
        group.bench_function(*name, |b| b.iter_batched(|| s.next_envelope(), |e| s.receive(&e), BatchSize::SmallInput));
    }
    group.finish();
    for (name, s) in &cases {
        let envelopes: Vec<Envelope> = (0..200).map(|_| s.next_envelope()).collect();
        let before = written();
        for e in &envelopes {
            s.receive(e);
        }
        println!("receive/{name}: {} bytes written per message", (written() - before) / 200);
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(2))
        .measurement_time(std::time::Duration::from_secs(5));
    targets = bench
}
criterion_main!(benches);
