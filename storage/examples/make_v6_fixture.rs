//! Writes the schema 6 fixture `storage/tests/fixtures/schema6/`: a data
//! directory with one personal profile, `home`, whose sessions hold skipped
//! message keys inside their snapshots (as schema 6 stored them), made
//! through the public `ProfileStore` API of a schema 6 build (commit
//! 538fa5d). The migration test (`storage/tests/migration.rs`) opens a copy
//! of it with a newer build and decrypts the envelopes kept in
//! `envelopes.json` with the migrated keys. This program only gives a
//! schema 6 file when built from a schema 6 tree.
//!
//! Run (from a schema 6 tree): `cargo run -p kabar-storage --example
//! make_v6_fixture storage/tests/fixtures/schema6`. The directory must not
//! exist. What it holds is in `storage/tests/fixtures/schema6/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::path::PathBuf;

use kabar_crypto::{Envelope, IdentityKeyPair, PrekeyBundle, ProfileKind, Session};
use kabar_storage::*;

/// The fixture's passphrase (the test repeats it).
const PASS: &[u8] = b"kabar schema 6 fixture";
/// "Now" while the fixture was made: 2023-11-14 22:13:20 UTC.
const NOW: u64 = 1_700_000_000_000;

fn contact(identity: &IdentityKeyPair, name: &str) -> Contact {
    let public = identity.public();
    Contact {
        peer_id: public.signing.to_vec(),
        identity: public,
        signed_prekey: None,
        one_time_prekey: None,
        addresses: vec![],
        display_name: name.into(),
        verified: false,
        blocked: false,
        identity_change: None,
        added_at_ms: NOW,
        request: false,
    }
}

fn incoming(contact: ContactId, state: SessionState, id: u8, text: &str) -> IncomingMessage {
    IncomingMessage {
        contact,
        session: Some(state),
        received_id: [id; 16],
        message: Some(MessageRecord {
            id: [id; 16],
            direction: Direction::Incoming,
            sent_at_ms: NOW,
            received_at_ms: Some(NOW),
            status: MessageStatus::Delivered,
            body: text.as_bytes().to_vec(),
        }),
        consumed_one_time_prekey: None,
    }
}

/// `count` envelopes from `session`, text "`name` `i`".
fn send(session: &mut Session, name: &str, count: usize) -> Vec<(String, Envelope)> {
    (0..count)
        .map(|i| {
            let text = format!("{name} {i}");
            (text.clone(), session.encrypt(text.as_bytes(), &mut rand::rng()).unwrap())
        })
        .collect()
}

fn main() {
    let Some(out) = std::env::args().nth(1).map(PathBuf::from) else {
        panic!("usage: make_v6_fixture <new directory>");
    };
    assert!(!out.exists(), "{} exists; the fixture is never rewritten", out.display());
    let mut data = DataDir::create(&out, PASS, KdfParams::TESTNET).unwrap();
    let store = data.create_profile("home", ProfileKind::Personal, NOW / 1000, &mut rand::rng()).unwrap();
    let me = store.identity().unwrap();
    let spk = store.current_signed_prekey().unwrap();
    let bundle = PrekeyBundle { identity: me.public(), signed_prekey: spk.public(), one_time_prekey: None };
    let mut kept: Vec<(String, String, String)> = Vec::new(); // (contact, text, envelope hex)
    let mut keep = |who: &str, (text, env): &(String, Envelope)| {
        kept.push((who.into(), text.clone(), kabar_crypto::hex::encode(&env.encode())));
    };

    // Alice: session 1 (now previous) holds 11 skipped keys over two of her
    // chains; session 2 (current) holds 2.
    let alice_key = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
    let (alice, _) = store.upsert_contact(contact(&alice_key, "Alice")).unwrap();
    let mut a1 = Session::initiate(&alice_key, &bundle, &mut rand::rng()).unwrap();
    let m = send(&mut a1, "first", 10);
    let (mut s1, text) = Session::respond(&me, &spk, None, &m[0].1).unwrap();
    assert_eq!(text, b"first 0");
    assert_eq!(s1.decrypt(&m[5].1).unwrap(), b"first 5");
    assert_eq!(s1.decrypt(&m[9].1).unwrap(), b"first 9");
    let reply = s1.encrypt(b"hi alice", &mut rand::rng()).unwrap();
    assert_eq!(a1.decrypt(&reply).unwrap(), b"hi alice");
    let m2 = send(&mut a1, "second", 5);
    assert_eq!(s1.decrypt(&m2[4].1).unwrap(), b"second 4");
    assert_eq!(s1.skipped_keys(), 11);
    for i in [1, 2, 3, 4, 6, 7, 8] {
        keep("Alice", &m[i]);
    }
    for e in &m2[..4] {
        keep("Alice", e);
    }
    keep("Alice-used", &m[5]);
    let mut a2 = Session::initiate(&alice_key, &bundle, &mut rand::rng()).unwrap();
    let n = send(&mut a2, "again", 4);
    let (mut s2, text) = Session::respond(&me, &spk, None, &n[0].1).unwrap();
    assert_eq!(text, b"again 0");
    assert_eq!(s2.decrypt(&n[3].1).unwrap(), b"again 3");
    assert_eq!(s2.skipped_keys(), 2);
    keep("Alice", &n[1]);
    keep("Alice", &n[2]);
    let state = SessionState { current: s2.snapshot(), previous: vec![s1.snapshot()] };
    store.commit_incoming(&[incoming(alice, state, 0xa1, "first 0 to again 3")], NOW).unwrap();

    // Bob: one session with the most one header may skip (1,000 keys).
    let bob_key = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
    let (bob, _) = store.upsert_contact(contact(&bob_key, "Bob")).unwrap();
    let mut b1 = Session::initiate(&bob_key, &bundle, &mut rand::rng()).unwrap();
    let b = send(&mut b1, "bob", 1_002);
    let (mut t1, _) = Session::respond(&me, &spk, None, &b[0].1).unwrap();
    assert_eq!(t1.decrypt(&b[1_001].1).unwrap(), b"bob 1001");
    assert_eq!(t1.skipped_keys(), 1_000);
    for i in [1, 500, 1_000] {
        keep("Bob", &b[i]);
    }
    store.commit_incoming(&[incoming(bob, SessionState::new(t1.snapshot()), 0xb1, "bob 0 and 1001")], NOW).unwrap();

    drop(store);
    drop(data);
    let json: Vec<serde_json::Value> = kept
        .iter()
        .map(|(who, text, hex)| serde_json::json!({ "contact": who, "text": text, "envelope": hex }))
        .collect();
    std::fs::write(out.join("envelopes.json"), serde_json::to_string_pretty(&json).unwrap()).unwrap();
    let file = out.join("profiles/home.redb");
    let mut db = redb::Database::open(&file).unwrap();
    while db.compact().unwrap() {}
    println!("wrote {} ({} envelopes kept)", out.display(), kept.len());
}
