//! Writes the schema 5 fixture `storage/tests/fixtures/schema5/`: a data
//! directory with one business profile, `shop`, made through the public
//! `ProfileStore` API of a schema 5 build (commit 7a3ebe4). The migration
//! test (`storage/tests/migration.rs`) opens a copy of it with a newer
//! build; this program is kept to show how it was made, and only gives a
//! schema 5 file when built from a schema 5 tree.
//!
//! Run (from a schema 5 tree): `cargo run -p kabar-storage --example
//! make_v5_fixture storage/tests/fixtures/schema5`. The directory must not
//! exist: a newer build must never overwrite the committed fixture.
//! What it holds is listed in `storage/tests/fixtures/schema5/README.md`
//! (and printed at the end).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::path::PathBuf;

use kabar_crypto::{IdentityKeyPair, PrekeyBundle, ProfileKind, Session, SignedPrekey};
use kabar_storage::*;

/// The fixture's passphrase (the test repeats it).
const PASS: &[u8] = b"kabar schema 5 fixture";
/// "Now" while the fixture was made: 2023-11-14 22:13:20 UTC.
const NOW: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;

fn contact(identity: &IdentityKeyPair, name: &str, request: bool) -> Contact {
    let public = identity.public();
    Contact {
        peer_id: public.signing.to_vec(),
        identity: public,
        signed_prekey: None,
        one_time_prekey: None,
        addresses: vec![format!("/ip4/192.0.2.{}/tcp/4001", name.len())],
        display_name: name.into(),
        verified: name == "Alice",
        blocked: false,
        identity_change: None,
        added_at_ms: NOW - 60 * DAY,
        request,
    }
}

fn session(store: &ProfileStore, peer: &IdentityKeyPair) -> Session {
    let spk = SignedPrekey::generate(peer, 1, NOW / 1000, &mut rand::rng());
    let bundle = PrekeyBundle { identity: peer.public(), signed_prekey: spk.public(), one_time_prekey: None };
    Session::initiate(&store.identity().unwrap(), &bundle, &mut rand::rng()).unwrap()
}

fn outgoing(contact: ContactId, session: &mut Session, id: u8, text: &str, at: u64) -> OutgoingMessage {
    let envelope = session.encrypt(text.as_bytes(), &mut rand::rng()).unwrap();
    OutgoingMessage {
        contact,
        session: Some(SessionState::new(session.snapshot())),
        message: MessageRecord {
            id: [id; 16],
            direction: Direction::Outgoing,
            sent_at_ms: at,
            received_at_ms: None,
            status: MessageStatus::Queued,
            body: text.as_bytes().to_vec(),
        },
        envelope: envelope.encode(),
    }
}

fn incoming(contact: ContactId, session: &Session, id: u8, text: Option<&str>, at: u64) -> IncomingMessage {
    IncomingMessage {
        contact,
        session: Some(SessionState::new(session.snapshot())),
        received_id: [id; 16],
        message: text.map(|text| MessageRecord {
            id: [id; 16],
            direction: Direction::Incoming,
            sent_at_ms: at - 1_000,
            received_at_ms: Some(at),
            status: MessageStatus::Delivered,
            body: text.as_bytes().to_vec(),
        }),
        consumed_one_time_prekey: None,
    }
}

fn main() {
    let Some(out) = std::env::args().nth(1).map(PathBuf::from) else {
        panic!("usage: make_v5_fixture <new directory>");
    };
    assert!(!out.exists(), "{} exists; the fixture is never rewritten", out.display());
    let mut data = DataDir::create(&out, PASS, KdfParams::TESTNET).unwrap();
    let store = data.create_profile("shop", ProfileKind::Business, NOW / 1000, &mut rand::rng()).unwrap();

    // Alice: every outgoing status, two incoming messages, a receipt-only id.
    let alice_key = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
    let (alice, _) = store.upsert_contact(contact(&alice_key, "Alice", false)).unwrap();
    let mut alice_session = session(&store, &alice_key);
    let texts = [
        (0xa1, "delivered to alice"),
        (0xa2, "sent to alice"),
        (0xa3, "read by alice"),
        (0xa4, "queued for alice"),
        (0xa5, "in alice's mailbox"),
        (0xa6, "failed to reach alice"),
        (0xa7, "encrypted again for alice"),
    ];
    let batch: Vec<OutgoingMessage> = texts
        .iter()
        .enumerate()
        .map(|(i, (id, text))| outgoing(alice, &mut alice_session, *id, text, NOW - 5 * DAY + i as u64))
        .collect();
    store.commit_outgoing(&batch, NOW - 5 * DAY).unwrap();
    store.acknowledge(&[[0xa1; 16]]).unwrap();
    store.record_attempts(&[([0xa2; 16], 1), ([0xa3; 16], 1), ([0xa5; 16], 1)], NOW - 4 * DAY).unwrap();
    store.make_durable().unwrap();
    assert_eq!(store.apply_receipt(&alice, &[[0xa3; 16]], &[]).unwrap().len(), 1);
    store.mark_deposited(&[[0xa5; 16]], NOW - 4 * DAY).unwrap();
    store.fail_message(&[0xa6; 16]).unwrap();
    let again = alice_session.encrypt(b"encrypted again for alice", &mut rand::rng()).unwrap().encode();
    store
        .reencrypt_outbox(&[([0xa7; 16], [0xb7; 16], again)], &SessionState::new(alice_session.snapshot()), true, NOW)
        .unwrap();
    let their_session = session(&store, &alice_key);
    store
        .commit_incoming(
            &[
                incoming(alice, &their_session, 0xc1, Some("hello shop"), NOW - 3 * DAY),
                incoming(alice, &their_session, 0xc2, Some("still there?"), NOW - 3 * DAY + 1),
            ],
            NOW - 3 * DAY,
        )
        .unwrap();
    store.mark_read(&alice, &[[0xc1; 16]]).unwrap();
    // A read receipt's envelope: received, nothing shown. One old enough
    // to be pruned (40 days), one recent.
    store.commit_incoming(&[incoming(alice, &their_session, 0xd1, None, NOW - 40 * DAY)], NOW - 40 * DAY).unwrap();
    store.commit_incoming(&[incoming(alice, &their_session, 0xd2, None, NOW - DAY)], NOW - DAY).unwrap();
    store
        .update_contact_mailboxes(&alice, |m| {
            m.theirs = vec![ContactMailbox {
                address: "/ip4/192.0.2.9/tcp/4001/p2p/12D3KooWExample".into(),
                mailbox: [9; 32],
                tag: [8; 16],
                signature: vec![7; 64],
            }];
            m.told = [6; 16];
        })
        .unwrap();

    // Bob: an order, answered; a labelled, closed conversation.
    let bob_key = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
    let (bob, _) = store.upsert_contact(contact(&bob_key, "Bob", false)).unwrap();
    let bob_theirs = session(&store, &bob_key);
    store
        .commit_incoming(&[incoming(bob, &bob_theirs, 0xe1, Some("two loaves please"), NOW - 2 * DAY)], NOW - 2 * DAY)
        .unwrap();
    let mut bob_session = session(&store, &bob_key);
    store
        .commit_outgoing(&[outgoing(bob, &mut bob_session, 0xe2, "ready at five", NOW - 2 * DAY + 5)], NOW - 2 * DAY)
        .unwrap();
    store.acknowledge(&[[0xe2; 16]]).unwrap();
    let label = store.add_label("Order", "#22aa44").unwrap();
    store
        .update_conversation(&bob, |c| {
            c.labels.push(label.id);
            c.status = ConversationStatus::Closed;
            c.away_sent_for_ms = Some(NOW - 2 * DAY);
        })
        .unwrap();

    // Carol: a pending stranger with one message.
    let carol_key = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
    let (carol, _) = store.upsert_contact(contact(&carol_key, "Carol", true)).unwrap();
    let carol_theirs = session(&store, &carol_key);
    store
        .commit_incoming(&[incoming(carol, &carol_theirs, 0xf1, Some("are you open?"), NOW - DAY)], NOW - DAY)
        .unwrap();
    store.admit_stranger(&carol, 13, DEFAULT_STRANGER_LIMITS).unwrap();

    // Dave: wrote once 10 days ago, then forgotten: his id stays received.
    let dave_key = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
    let (dave, _) = store.upsert_contact(contact(&dave_key, "Dave", false)).unwrap();
    let dave_theirs = session(&store, &dave_key);
    store
        .commit_incoming(&[incoming(dave, &dave_theirs, 0x91, Some("goodbye"), NOW - 10 * DAY)], NOW - 10 * DAY)
        .unwrap();
    store.forget_contact(&dave).unwrap();

    // Business data, relays, an own mailbox.
    store
        .set_business_profile(&BusinessProfile {
            name: "Corner Bakery".into(),
            category: "Bakery".into(),
            about: "Bread since 1990".into(),
            ..Default::default()
        })
        .unwrap();
    let mut hours = BusinessHours::default();
    hours.days[0] = Some((7 * 60, 18 * 60));
    store.set_business_hours(&hours).unwrap();
    store
        .set_automations(&Automations {
            greeting: Some("Welcome!".into()),
            away_message: Some("Back at seven".into()),
            away_schedule: AwaySchedule::OutsideHours,
        })
        .unwrap();
    store
        .put_catalog_item(CatalogItem {
            id: [3; 8],
            name: "Sourdough".into(),
            price_minor: 450,
            currency: "EUR".into(),
            description: "1 kg".into(),
            available: true,
        })
        .unwrap();
    store.put_quick_reply(&QuickReply { shortcut: "thanks".into(), text: "Thank you!".into() }).unwrap();
    store.set_relays(&["/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWRelay".into()]).unwrap();
    store
        .set_mailboxes(&[OwnMailbox {
            address: "/ip4/192.0.2.2/tcp/4001/p2p/12D3KooWHost".into(),
            key: [5; 32],
            added_at_ms: NOW - 30 * DAY,
        }])
        .unwrap();
    store.make_durable().unwrap();

    let summary = format!(
        "contacts {}, strangers {:?} bytes, outbox {} (deposited {}), conversations {}",
        store.contacts().unwrap().len(),
        store.strangers().unwrap().iter().map(|(_, b)| b).collect::<Vec<_>>(),
        store.outbox().unwrap().len(),
        store.deposited().unwrap().len(),
        store.conversations().unwrap().len(),
    );
    drop(store);
    drop(data);

    // Compact, so the committed file holds no free pages.
    let file = out.join("profiles/shop.redb");
    let mut db = redb::Database::open(&file).unwrap();
    while db.compact().unwrap() {}
    drop(db);
    println!("{summary}");
    println!("{}: {} bytes", file.display(), std::fs::metadata(&file).unwrap().len());
}
