//! Migration of a real schema 5 file (`tests/fixtures/schema5`, written by a
//! schema 5 build: see its README) to the current schema: every contact,
//! message, status, outbox entry and received id survives, and the file
//! says the new version afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::Path;

use kabar_crypto::{CryptoError, Envelope};
use kabar_storage::*;
use redb::{ReadableDatabase, TableDefinition};

mod support;

/// The fixture's passphrase.
const PASS: &[u8] = b"kabar schema 5 fixture";
/// "Now" when the fixture was made.
const NOW: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;

const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("meta");

/// A copy of the fixture in a temporary directory (the committed file is
/// never opened for writing).
fn fixture_copy() -> tempfile::TempDir {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema5");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data/profiles")).unwrap();
    for file in ["kabar-header.json", "profiles/shop.redb"] {
        std::fs::copy(from.join(file), tmp.path().join("data").join(file)).unwrap();
    }
    tmp
}

/// The schema version the file says, and whether it still has a table.
fn raw_file(path: &Path, table: &str) -> (u32, bool) {
    let db = redb::Database::open(path).unwrap();
    let tx = db.begin_read().unwrap();
    let version = tx.open_table(META).unwrap().get("schema_version").unwrap().unwrap().value().to_vec();
    let has = tx.list_tables().unwrap().any(|t| redb::TableHandle::name(&t) == table);
    (u32::from_be_bytes(version.try_into().unwrap()), has)
}

/// A message as the fixture holds it: id byte, direction, status, body.
type Expected = (u8, Direction, MessageStatus, &'static str);
/// An outbox entry: message id, attempts, `shown_as`, resends.
type Entry = ([u8; 16], u32, Option<[u8; 16]>, u32);

fn id(byte: u8) -> [u8; 16] {
    [byte; 16]
}

#[test]
fn the_schema_5_fixture_migrates_with_every_message_status_outbox_entry_and_received_id() {
    use MessageStatus::*;
    let tmp = fixture_copy();
    let root = tmp.path().join("data");
    let file = root.join("profiles/shop.redb");
    assert_eq!(raw_file(&file, "received"), (5, true), "the fixture is a schema 5 file");

    let data = DataDir::open(&root, PASS).unwrap();
    let store = data.open_profile("shop").unwrap();

    // Contacts: Dave was forgotten before the migration.
    let mut names: Vec<String> = store.contacts().unwrap().into_iter().map(|(_, c)| c.display_name).collect();
    names.sort();
    assert_eq!(names, ["Alice", "Bob", "Carol"]);
    let (alice, alice_record) = store.contact_by_name("Alice").unwrap().unwrap();
    assert!(alice_record.verified);
    let (bob, _) = store.contact_by_name("Bob").unwrap().unwrap();
    let (carol, carol_record) = store.contact_by_name("Carol").unwrap().unwrap();
    assert!(carol_record.request);
    for contact in [alice, bob, carol] {
        assert!(store.session(&contact).unwrap().is_some(), "sessions survive");
    }

    // Every message, in order, with its status and body.
    let expected: [(ContactId, &[Expected]); 3] = [
        (
            alice,
            &[
                (0xa1, Direction::Outgoing, Delivered, "delivered to alice"),
                (0xa2, Direction::Outgoing, Sent, "sent to alice"),
                (0xa3, Direction::Outgoing, Read, "read by alice"),
                (0xa4, Direction::Outgoing, Queued, "queued for alice"),
                (0xa5, Direction::Outgoing, Stored, "in alice's mailbox"),
                (0xa6, Direction::Outgoing, Failed, "failed to reach alice"),
                (0xa7, Direction::Outgoing, Queued, "encrypted again for alice"),
                (0xc1, Direction::Incoming, Read, "hello shop"),
                (0xc2, Direction::Incoming, Delivered, "still there?"),
            ],
        ),
        (
            bob,
            &[
                (0xe1, Direction::Incoming, Delivered, "two loaves please"),
                (0xe2, Direction::Outgoing, Delivered, "ready at five"),
            ],
        ),
        (carol, &[(0xf1, Direction::Incoming, Delivered, "are you open?")]),
    ];
    for (contact, messages) in expected {
        let history = store.history(&contact, 100, None).unwrap();
        let got: Vec<(u64, u8, Direction, MessageStatus, &[u8])> =
            history.iter().map(|(seq, m)| (*seq, m.id[0], m.direction, m.status, m.body.as_slice())).collect();
        let want: Vec<(u64, u8, Direction, MessageStatus, &[u8])> = messages
            .iter()
            .enumerate()
            .map(|(seq, (i, d, s, body))| (seq as u64, *i, *d, *s, body.as_bytes()))
            .collect();
        assert_eq!(got, want);
        for (seq, (i, _, status, _)) in messages.iter().enumerate() {
            let (who, at, record) = store.message(&id(*i)).unwrap().unwrap();
            assert_eq!((who, at, record.status), (contact, seq as u64, *status));
        }
    }
    // The id of the re-encrypted envelope reaches the message the user knows.
    assert_eq!(store.message(&id(0xb7)).unwrap().unwrap().2.id, id(0xa7));
    assert!(store.message(&id(0x91)).unwrap().is_none(), "Dave's message went with him");

    // The outbox and the deposited marks.
    let outbox = store.outbox().unwrap();
    let entries: Vec<Entry> = outbox.iter().map(|e| (e.message_id, e.attempts, e.shown_as, e.resends)).collect();
    assert_eq!(
        entries,
        [(id(0xa2), 1, None, 0), (id(0xa4), 0, None, 0), (id(0xa5), 1, None, 0), (id(0xb7), 0, Some(id(0xa7)), 1)]
    );
    assert!(outbox.iter().all(|e| e.contact == alice && !e.envelope.is_empty()));
    assert_eq!(store.deposited().unwrap(), [id(0xa5)]);

    // Received ids: every received message, the receipts' envelopes and the
    // forgotten contact's message are duplicates; our own ids are not.
    for received in [0xc1, 0xc2, 0xe1, 0xf1, 0x91, 0xd1, 0xd2] {
        assert!(store.is_received(&id(received)).unwrap(), "{received:x} is still received");
    }
    for not_received in [0xa1, 0xa7, 0xb7, 0x42] {
        assert!(!store.is_received(&id(not_received)).unwrap(), "{not_received:x} was never received");
    }
    let again = |byte: u8, contact: ContactId| IncomingMessage {
        contact,
        session: None,
        message: None,
        consumed_one_time_prekey: None,
        received_id: id(byte),
    };
    assert_eq!(
        store.commit_incoming(&[again(0xc1, alice), again(0x91, alice), again(0xd1, alice)], NOW).unwrap(),
        [ReceiveOutcome::Duplicate; 3]
    );

    // Conversations, strangers, mailboxes, business data.
    assert_eq!(store.strangers().unwrap(), [(carol, 13)]);
    let bob_conversation = store.conversation(&bob).unwrap();
    assert_eq!(bob_conversation.status, ConversationStatus::Closed);
    assert_eq!(bob_conversation.next_seq, 2);
    assert_eq!(bob_conversation.away_sent_for_ms, Some(NOW - 2 * DAY));
    assert_eq!(store.labels().unwrap()[0].name, "Order");
    assert_eq!(bob_conversation.labels, [store.labels().unwrap()[0].id]);
    let alice_conversation = store.conversation(&alice).unwrap();
    assert_eq!((alice_conversation.next_seq, alice_conversation.unread), (9, 0));
    assert_eq!(store.contact_mailboxes(&alice).unwrap().theirs.len(), 1);
    assert_eq!(store.mailboxes().unwrap().len(), 1);
    assert_eq!(store.relays().unwrap().len(), 1);
    assert_eq!(store.business_profile().unwrap().name, "Corner Bakery");
    assert_eq!(store.catalog().unwrap()[0].name, "Sourdough");
    assert_eq!(store.quick_reply("thanks").unwrap().unwrap().text, "Thank you!");

    // Statuses move on after the migration, through aliases too.
    store.acknowledge(&[id(0xa2)]).unwrap();
    assert_eq!(store.message(&id(0xa2)).unwrap().unwrap().2.status, Delivered);
    assert_eq!(store.apply_receipt(&alice, &[id(0xb7)], &[]).unwrap(), [(id(0xb7), id(0xa7), Read)]);
    assert_eq!(store.message(&id(0xa7)).unwrap().unwrap().2.status, Read);
    assert!(store.outbox().unwrap().iter().all(|e| e.message_id != id(0xb7)));
    drop(store);

    // The file says the new version, without the `received` table, and
    // checks healthy.
    assert_eq!(raw_file(&file, "received"), (schema::SCHEMA_VERSION, false));
    let report = data.check_profile("shop").unwrap();
    assert!(report.healthy, "{report:#?}");
    assert_eq!(report.schema_version, Some(schema::SCHEMA_VERSION));
    // Twelve records, each with its status row beside it (schema 8); the
    // schema 6 and 7 status table is gone.
    assert!(report.tables.iter().any(|t| t.table == "messages" && t.rows == 24), "{report:#?}");
    assert!(report.tables.iter().all(|t| t.table != "message_status"));
    assert_eq!(raw_file(&file, "message_status"), (schema::SCHEMA_VERSION, false));
}

#[test]
fn received_ids_of_the_fixture_are_pruned_after_the_window_and_messages_stay_duplicates() {
    let tmp = fixture_copy();
    let data = DataDir::open(&tmp.path().join("data"), PASS).unwrap();
    let store = data.open_profile("shop").unwrap();
    // At NOW only d1 (received 40 days before) is past the 30-day window.
    assert_eq!(store.prune_received(NOW, 1_000).unwrap(), 1);
    assert!(!store.is_received(&id(0xd1)).unwrap());
    assert!(store.is_received(&id(0xd2)).unwrap());
    // 25 days later: Dave's id (received 10 days before NOW) and d2 go, a
    // few rows per call; the ids of stored messages never do.
    let later = NOW + 25 * DAY;
    let mut pruned = 0;
    for _ in 0..100 {
        let n = store.prune_received(later, 2).unwrap();
        assert!(n <= 2);
        pruned += n;
    }
    assert_eq!(pruned, 1, "Dave's 0x91 (35 days old); d2 is 26 days old");
    assert!(!store.is_received(&id(0x91)).unwrap());
    assert!(store.is_received(&id(0xd2)).unwrap());
    assert_eq!(store.prune_received(NOW + 365 * DAY, 1_000).unwrap(), 1);
    for message in [0xc1, 0xc2, 0xe1, 0xf1] {
        assert!(store.is_received(&id(message)).unwrap(), "a stored message's id is kept with it");
    }
}

// ---------------------------------------------------------------------------
// Schema 6 → 7: skipped keys out of the session rows
// ---------------------------------------------------------------------------

/// A copy of the schema 6 fixture (see its README), and its kept envelopes:
/// (contact, text, envelope).
fn fixture6_copy() -> (tempfile::TempDir, Vec<(String, String, Envelope)>) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema6");
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data/profiles")).unwrap();
    for file in ["kabar-header.json", "profiles/home.redb"] {
        std::fs::copy(from.join(file), tmp.path().join("data").join(file)).unwrap();
    }
    let json: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(from.join("envelopes.json")).unwrap()).unwrap();
    let kept = json
        .iter()
        .map(|v| {
            let bytes = kabar_crypto::hex::decode(v["envelope"].as_str().unwrap()).unwrap();
            (
                v["contact"].as_str().unwrap().to_string(),
                v["text"].as_str().unwrap().to_string(),
                Envelope::decode(&bytes).unwrap(),
            )
        })
        .collect();
    (tmp, kept)
}

#[test]
fn the_schema_6_fixture_moves_its_skipped_keys_out_of_the_sessions_and_every_one_still_decrypts() {
    let (tmp, kept) = fixture6_copy();
    let root = tmp.path().join("data");
    let file = root.join("profiles/home.redb");
    assert_eq!(raw_file(&file, "skipped_keys"), (6, false), "the fixture is a schema 6 file");
    let data = DataDir::open(&root, b"kabar schema 6 fixture").unwrap();
    let store = data.open_profile("home").unwrap();
    let (alice, _) = store.contact_by_name("Alice").unwrap().unwrap();
    let (bob, _) = store.contact_by_name("Bob").unwrap().unwrap();
    // Alice: current session 2 keys, previous 11; Bob 1,000.
    let state = store.session(&alice).unwrap().unwrap();
    assert_eq!(state.current.skipped_keys(), 2);
    assert_eq!(state.previous.iter().map(|s| s.skipped_keys()).collect::<Vec<_>>(), [11]);
    assert_eq!(store.session(&bob).unwrap().unwrap().current.skipped_keys(), 1_000);
    drop(store);
    assert_eq!(raw_file(&file, "skipped_keys"), (schema::SCHEMA_VERSION, true));
    assert_eq!(support::rows(&file, "skipped_keys"), 1_013);
    assert_eq!(support::rows(&file, "skipped_order"), 1_013);
    // Bob's row held 1,000 keys (about 68 KiB); it is now the bare state.
    assert!(support::session_row_len(&file, &bob) < 1_500, "{} bytes", support::session_row_len(&file, &bob));
    let report = data.check_profile("home").unwrap();
    assert!(report.healthy, "{report:#?}");

    // Every kept envelope decrypts with its migrated key, across the
    // previous session and the current one, once.
    let store = data.open_profile("home").unwrap();
    for (who, text, envelope) in &kept {
        let contact = if who == "Bob" { bob } else { alice };
        let got = support::receive(&store, contact, envelope, NOW);
        if who == "Alice-used" {
            assert_eq!(got, Err(CryptoError::MessageKeyGone), "its key was used before the migration");
        } else {
            assert_eq!(got.as_deref(), Ok(text.as_bytes()), "{text}");
            assert_eq!(
                support::receive(&store, contact, envelope, NOW),
                Err(CryptoError::MessageKeyGone),
                "{text} twice"
            );
        }
    }
    let state = store.session(&alice).unwrap().unwrap();
    assert!(state.all().all(|s| s.skipped_keys() == 0));
    assert_eq!(store.session(&bob).unwrap().unwrap().current.skipped_keys(), 997);
    drop(store);
    assert_eq!(support::rows(&file, "skipped_keys"), 997);
    assert!(data.check_profile("home").unwrap().healthy);
}

// ---------------------------------------------------------------------------
// Schema 7 → 8: status rows beside their records
// ---------------------------------------------------------------------------

#[test]
fn the_schema_7_fixture_moves_every_status_row_beside_its_record() {
    use MessageStatus::*;
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/schema7");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    std::fs::create_dir_all(root.join("profiles")).unwrap();
    for file in ["kabar-header.json", "profiles/home.redb"] {
        std::fs::copy(from.join(file), root.join(file)).unwrap();
    }
    let file = root.join("profiles/home.redb");
    assert_eq!(raw_file(&file, "message_status"), (7, true), "the fixture is a schema 7 file");
    assert_eq!(support::rows(&file, "message_status"), 9);
    assert_eq!(support::rows(&file, "messages"), 9);

    let data = DataDir::open(&root, b"kabar schema 7 fixture").unwrap();
    let store = data.open_profile("home").unwrap();
    let (alice, _) = store.contact_by_name("Alice").unwrap().unwrap();
    let (bob, _) = store.contact_by_name("Bob").unwrap().unwrap();
    let page = |who| -> Vec<(u64, u8, MessageStatus)> {
        store.history(who, 50, None).unwrap().into_iter().map(|(seq, m)| (seq, m.id[0], m.status)).collect()
    };
    assert_eq!(
        page(&alice),
        [
            (0, 0xa1, Delivered),
            (1, 0xa2, Read),
            (2, 0xa3, Queued),
            (3, 0xa4, Delivered),
            (4, 0xa5, Read),
            (5, 0xa6, Failed),
            (6, 0xa7, Sent)
        ]
    );
    assert_eq!(page(&bob), [(0, 0xb1, Stored), (1, 0xb2, Delivered)]);
    assert_eq!(store.message(&id(0xa5)).unwrap().unwrap().2.status, Read);
    // Statuses still move on, and only forward.
    store.acknowledge(&[id(0xa3), id(0xa7)]).unwrap();
    assert!(!store.set_message_status(&id(0xa4), Sent).unwrap());
    assert_eq!(store.message(&id(0xa3)).unwrap().unwrap().2.status, Delivered);
    assert_eq!(store.message(&id(0xa7)).unwrap().unwrap().2.status, Delivered);
    drop(store);

    // Nine records and nine status rows in `messages`; no status table.
    assert_eq!(raw_file(&file, "message_status"), (schema::SCHEMA_VERSION, false));
    assert_eq!(support::rows(&file, "messages"), 18);
    let report = data.check_profile("home").unwrap();
    assert!(report.healthy, "{report:#?}");
}
