//! Writes the schema 7 fixture `storage/tests/fixtures/schema7/`: a data
//! directory with one personal profile, `home`, whose messages have every
//! status, kept in the `message_status` table as schemas 6 and 7 kept them,
//! made through the public `ProfileStore` API of a schema 7 build (commit
//! e4fc4ff). The migration test (`storage/tests/migration.rs`) opens a copy
//! of it with a newer build and checks each message's status. This program
//! only gives a schema 7 file when built from a schema 7 tree.
//!
//! Run (from a schema 7 tree): `cargo run -p kabar-storage --example
//! make_v7_fixture storage/tests/fixtures/schema7`. The directory must not
//! exist. What it holds is in `storage/tests/fixtures/schema7/README.md`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::path::PathBuf;

use kabar_crypto::{IdentityKeyPair, ProfileKind};
use kabar_storage::*;

/// The fixture's passphrase (the test repeats it).
const PASS: &[u8] = b"kabar schema 7 fixture";
/// "Now" while the fixture was made: 2023-11-14 22:13:20 UTC.
const NOW: u64 = 1_700_000_000_000;

fn contact(name: &str) -> Contact {
    let public = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng()).public();
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

fn incoming(contact: ContactId, id: u8, text: &str) -> IncomingMessage {
    IncomingMessage {
        contact,
        session: None,
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

fn outgoing(contact: ContactId, id: u8, text: &str) -> OutgoingMessage {
    OutgoingMessage {
        contact,
        session: None,
        message: MessageRecord {
            id: [id; 16],
            direction: Direction::Outgoing,
            sent_at_ms: NOW,
            received_at_ms: None,
            status: MessageStatus::Queued,
            body: text.as_bytes().to_vec(),
        },
        envelope: vec![id; 40],
    }
}

fn main() {
    use MessageStatus::*;
    let Some(out) = std::env::args().nth(1).map(PathBuf::from) else {
        panic!("usage: make_v7_fixture <new directory>");
    };
    assert!(!out.exists(), "{} exists; the fixture is never rewritten", out.display());
    let mut data = DataDir::create(&out, PASS, KdfParams::TESTNET).unwrap();
    let store = data.create_profile("home", ProfileKind::Personal, NOW / 1000, &mut rand::rng()).unwrap();
    let (alice, _) = store.upsert_contact(contact("Alice")).unwrap();
    let (bob, _) = store.upsert_contact(contact("Bob")).unwrap();

    // Alice, in order: in a1 (delivered), in a2 (read), out a3 (queued),
    // out a4 (delivered), out a5 (read), out a6 (failed), out a7 (sent).
    store.commit_incoming(&[incoming(alice, 0xa1, "a1"), incoming(alice, 0xa2, "a2")], NOW).unwrap();
    let out_alice: Vec<OutgoingMessage> =
        (0xa3..=0xa7).map(|id| outgoing(alice, id, &format!("a{}", id - 0xa0))).collect();
    store.commit_outgoing(&out_alice, NOW).unwrap();
    store.mark_read(&alice, &[[0xa2; 16]]).unwrap();
    store.acknowledge(&[[0xa4; 16]]).unwrap();
    store.apply_receipt(&alice, &[[0xa5; 16]], &[]).unwrap();
    store.set_message_status(&[0xa6; 16], Failed).unwrap();
    store.record_attempts(&[([0xa7; 16], 1)], NOW + 1_000).unwrap();
    // Bob: out b1 (stored in his mailbox), in b2 (delivered, unread).
    store.commit_outgoing(&[outgoing(bob, 0xb1, "b1")], NOW).unwrap();
    store.set_message_status(&[0xb1; 16], Stored).unwrap();
    store.commit_incoming(&[incoming(bob, 0xb2, "b2")], NOW).unwrap();
    store.make_durable().unwrap();

    let expect = [
        (0xa1, Delivered),
        (0xa2, Read),
        (0xa3, Queued),
        (0xa4, Delivered),
        (0xa5, Read),
        (0xa6, Failed),
        (0xa7, Sent),
        (0xb1, Stored),
        (0xb2, Delivered),
    ];
    for (id, status) in expect {
        assert_eq!(store.message(&[id; 16]).unwrap().unwrap().2.status, status, "{id:x}");
    }
    drop(store);
    drop(data);
    let file = out.join("profiles/home.redb");
    let mut db = redb::Database::open(&file).unwrap();
    while db.compact().unwrap() {}
    println!("wrote {}", out.display());
}
