//! Damaged stores (issue 14): a damaged profile database is refused with an
//! error that names the file, never with a panic, and without a byte of any
//! file changed; the store check reads every table and record and reports
//! what is damaged, also without writing; a history is whole or an error;
//! a damaged profile can be removed so the others open.
//!
//! Corruptions are deterministic: fixed offsets, patterns found in the
//! file, and a fixed-seed xorshift for random bytes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kabar_crypto::{IdentityKeyPair, ProfileKind};
use kabar_storage::*;
use redb::ReadableTable;

const PASS: &[u8] = b"damaged stores";
const MESSAGES: u8 = 40;

fn message(contact: ContactId, n: u8) -> OutgoingMessage {
    OutgoingMessage {
        contact,
        session: None,
        message: MessageRecord {
            id: [n + 1; 16],
            direction: Direction::Outgoing,
            sent_at_ms: 10,
            received_at_ms: None,
            status: MessageStatus::Queued,
            body: format!("message number {n}").into_bytes(),
        },
        envelope: Vec::new(),
    }
}

fn bob() -> Contact {
    let identity = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng()).public();
    Contact {
        peer_id: identity.signing.to_vec(),
        identity,
        signed_prekey: None,
        one_time_prekey: None,
        addresses: vec!["/ip4/127.0.0.1/tcp/4001".into()],
        display_name: "Bob".into(),
        verified: false,
        blocked: false,
        identity_change: None,
        added_at_ms: 1,
        request: false,
    }
}

/// A data directory with a healthy profile "personal" (created first) and a
/// profile "work" holding a contact, Bob, and [`MESSAGES`] messages to him,
/// numbered 0 to 39. Returns the root and Bob's id in "work".
fn setup() -> (tempfile::TempDir, PathBuf, ContactId) {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let mut dir = DataDir::create(&root, PASS, KdfParams::TESTNET).unwrap();
    drop(dir.create_profile("personal", ProfileKind::Personal, 1, &mut rand::rng()).unwrap());
    let work = dir.create_profile("work", ProfileKind::Personal, 1, &mut rand::rng()).unwrap();
    let (bob, _) = work.upsert_contact(bob()).unwrap();
    for n in 0..MESSAGES {
        work.commit_outgoing(&[message(bob, n)], 10).unwrap();
    }
    (tmp, root, bob)
}

fn file(root: &Path, profile: &str) -> PathBuf {
    root.join(format!("profiles/{profile}.redb"))
}

/// Every file under `root` and its bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

fn assert_unchanged(root: &Path, before: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let after = snapshot(root);
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "{what}: files came or went");
    for (path, bytes) in before {
        assert!(after[path] == *bytes, "{what}: {} changed", path.display());
    }
}

/// The bytes of a message's key in `messages` (and of its position in
/// `message_index`): contact id ‖ seq.
fn position(contact: &ContactId, seq: u64) -> Vec<u8> {
    [contact.0.as_slice(), &seq.to_be_bytes()].concat()
}

/// Applies `f` to every occurrence of `needle`; returns how many.
fn each(bytes: &mut [u8], needle: &[u8], f: impl Fn(&mut [u8])) -> usize {
    let mut found = 0;
    for i in 0..=bytes.len() - needle.len() {
        if &bytes[i..i + needle.len()] == needle {
            f(&mut bytes[i..i + needle.len()]);
            found += 1;
        }
    }
    found
}

type Corruption = Box<dyn Fn(&mut Vec<u8>)>;

/// The damage every test applies, each to a fresh copy: live records
/// (found by their clear keys), random bytes in every page, a truncated or
/// empty file, a zeroed header region.
fn corruptions(bob: ContactId) -> Vec<(&'static str, Corruption)> {
    vec![
        (
            "a message key flipped",
            Box::new(move |b: &mut Vec<u8>| {
                assert!(each(b, &position(&bob, 3), |s| s[23] ^= 0x40) > 0);
            }),
        ),
        (
            "the schema version's key flipped",
            Box::new(|b: &mut Vec<u8>| assert!(each(b, b"schema_version", |s| s[0] ^= 0x20) > 0)),
        ),
        ("a table name overwritten", Box::new(|b: &mut Vec<u8>| assert!(each(b, b"messages", |s| s[0] = b'X') > 0))),
        (
            "random bytes in every page",
            Box::new(|b: &mut Vec<u8>| {
                let mut x = 0x9e37_79b9_7f4a_7c15u64;
                for page in 1..b.len() / 4096 {
                    for offset in [64, 1000, 2500, 4000] {
                        for i in 0..16 {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            b[page * 4096 + offset + i] = x as u8;
                        }
                    }
                }
            }),
        ),
        (
            "one page of random bytes",
            Box::new(|b: &mut Vec<u8>| {
                let mut x = 0x2545_f491_4f6c_dd1du64;
                for byte in &mut b[4096..8192] {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    *byte = x as u8;
                }
            }),
        ),
        ("page 1 zeroed", Box::new(|b: &mut Vec<u8>| b[4096..8192].fill(0))),
        ("truncated to half", Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 2))),
        ("the last page cut", Box::new(|b: &mut Vec<u8>| b.truncate(b.len() - 4096))),
        ("header region zeroed", Box::new(|b: &mut Vec<u8>| b[..512].fill(0))),
        ("commit slots zeroed", Box::new(|b: &mut Vec<u8>| b[64..320].fill(0))),
        ("emptied", Box::new(|b: &mut Vec<u8>| b.clear())),
    ]
}

/// For each corruption of "work": a fresh copy of the pristine file, damaged.
fn for_each_corruption(mut test: impl FnMut(&str, &Path, &Path)) {
    let (_tmp, root, bob) = setup();
    let work = file(&root, "work");
    let pristine = std::fs::read(&work).unwrap();
    for (what, damage) in corruptions(bob) {
        let mut bytes = pristine.clone();
        damage(&mut bytes);
        std::fs::write(&work, &bytes).unwrap();
        test(what, &root, &work);
    }
}

fn assert_names_the_damage(what: &str, error: &StoreError, work: &Path) {
    match error {
        StoreError::Corrupted { path, .. } => assert_eq!(path, work, "{what}"),
        other => panic!("{what}: expected Corrupted, got {other:?}"),
    }
    let text = error.to_string();
    assert!(text.contains(&work.display().to_string()) && text.contains("damaged"), "{what}: {text}");
}

/// A damaged profile is refused: the error names its file and the damage,
/// nothing panics, and no file changed, not even the healthy profile opened
/// (verified) before it.
#[test]
fn a_damaged_profile_is_refused_naming_its_file_and_no_file_changes() {
    for_each_corruption(|what, root, work| {
        let before = snapshot(root);
        let dir = DataDir::open(root, PASS).unwrap();
        let error = dir.open_profiles().unwrap_err();
        assert_names_the_damage(what, &error, work);
        assert_unchanged(root, &before, what);
        let error = dir.open_profile("work").unwrap_err();
        assert_names_the_damage(what, &error, work);
        assert_unchanged(root, &before, what);
    });
}

/// The check reports each corruption (never a panic) and writes nothing;
/// the healthy profile beside it checks healthy.
#[test]
fn the_check_reports_every_corruption_and_changes_no_byte() {
    for_each_corruption(|what, root, work| {
        let before = snapshot(root);
        let dir = DataDir::open(root, PASS).unwrap();
        let report = dir.check_profile("work").unwrap();
        assert!(!report.healthy, "{what}: {report:?}");
        assert_eq!(report.file, work, "{what}");
        assert!(report.error.is_some(), "{what}: the file does not verify: {report:?}");
        assert!(dir.check_profile("personal").unwrap().healthy, "{what}");
        assert_unchanged(root, &before, what);
    });
}

/// Where the tables can still be read without the integrity check, the
/// report says which rows are damaged.
#[test]
fn the_check_names_the_damaged_table_and_row() {
    let (_tmp, root, bob) = setup();
    let work = file(&root, "work");
    let mut bytes = std::fs::read(&work).unwrap();
    each(&mut bytes, &position(&bob, 3), |s| s[23] ^= 0x40);
    std::fs::write(&work, &bytes).unwrap();
    let report = DataDir::open(&root, PASS).unwrap().check_profile("work").unwrap();
    let messages = report.tables.iter().find(|t| t.table == "messages").unwrap();
    let moved = kabar_crypto::hex::encode(&position(&bob, 3 ^ 0x40));
    assert!(
        messages.damaged.iter().any(|r| r.key == moved && r.reason.contains("failed authentication")),
        "{messages:?}"
    );
    assert!(messages.damaged.iter().any(|r| r.reason.contains("it counts 40")), "{messages:?}");
}

/// Every table of a store with something in most of them reads back
/// healthy, row by row, and the check leaves the files as they were.
#[test]
fn a_healthy_store_checks_healthy_row_by_row_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    let mut dir = DataDir::create(&root, PASS, KdfParams::TESTNET).unwrap();
    let shop = dir.create_profile("shop", ProfileKind::Business, 1, &mut rand::rng()).unwrap();
    let (bob, _) = shop.upsert_contact(bob()).unwrap();
    for n in 0..5 {
        shop.commit_outgoing(&[message(bob, n)], 10).unwrap();
    }
    shop.acknowledge(&[[1; 16]]).unwrap();
    shop.set_relays(&["/ip4/203.0.113.7/tcp/4040/p2p/12D3KooWRq".into()]).unwrap();
    shop.set_announced_addresses(&["/ip4/192.168.1.12/tcp/42235".into()]).unwrap();
    shop.set_listen_port("tcp", 4001).unwrap();
    shop.set_listen_port("udp", 4001).unwrap();
    shop.set_mailboxes(&[OwnMailbox {
        address: "/ip4/203.0.113.7/tcp/4040/p2p/x".into(),
        key: [7; 32],
        added_at_ms: 3,
    }])
    .unwrap();
    shop.rotate_signed_prekey(2, &mut rand::rng()).unwrap();
    shop.hand_out_one_time_prekey(100).unwrap();
    shop.set_business_profile(&BusinessProfile { name: "Marigold".into(), ..Default::default() }).unwrap();
    shop.set_business_hours(&BusinessHours::default()).unwrap();
    shop.set_automations(&Automations::default()).unwrap();
    shop.put_catalog_item(CatalogItem {
        id: [0; 8],
        name: "Sourdough".into(),
        description: String::new(),
        price_minor: 450,
        currency: "EUR".into(),
        available: true,
    })
    .unwrap();
    shop.put_quick_reply(&QuickReply { shortcut: "thanks".into(), text: "Thank you!".into() }).unwrap();
    let label = shop.add_label("Paid", "#00aa00").unwrap();
    shop.update_conversation(&bob, |c| c.labels.push(label.id)).unwrap();
    drop(shop);
    let before = snapshot(&root);
    let report = dir.check_profile("shop").unwrap();
    assert!(report.healthy, "{report:#?}");
    assert_eq!(report.error, None);
    assert_eq!(report.schema_version, Some(schema::SCHEMA_VERSION));
    let rows = |table: &str| report.tables.iter().find(|t| t.table == table).unwrap().rows;
    assert_eq!(report.tables.len(), 21);
    // Five records and their five status rows.
    assert_eq!(rows("messages"), 10);
    assert_eq!(rows("message_index"), 5);
    assert_eq!(rows("outbox"), 4);
    assert_eq!(rows("contacts"), 1);
    assert_eq!(rows("conversations"), 1);
    assert_eq!(rows("signed_prekeys"), 2);
    assert_eq!(rows("business"), 3);
    assert_eq!(rows("catalog"), 1);
    assert_eq!(rows("quick_replies"), 1);
    assert_eq!(rows("labels"), 1);
    assert_unchanged(&root, &before, "check");
}

/// Rows the database engine wrote itself (checksums valid): a record whose
/// bytes were changed, and a message row removed. The check finds both;
/// a history never comes back partial: a page that would include either is
/// an error, a page clear of them is whole.
#[test]
fn a_tampered_record_and_a_missing_message_are_found_and_no_history_skips_them() {
    let (_tmp, root, bob) = setup();
    let work = file(&root, "work");
    {
        let db = redb::Database::open(&work).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut messages = tx.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("messages")).unwrap();
            let mut sealed = messages.get(position(&bob, 7).as_slice()).unwrap().unwrap().value().to_vec();
            let last = sealed.len() - 1;
            sealed[last] ^= 1;
            messages.insert(position(&bob, 7).as_slice(), sealed.as_slice()).unwrap();
            messages.remove(position(&bob, 20).as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let dir = DataDir::open(&root, PASS).unwrap();
    let report = dir.check_profile("work").unwrap();
    assert_eq!(report.error, None, "the file itself verifies");
    let messages = report.tables.iter().find(|t| t.table == "messages").unwrap();
    assert_eq!(messages.rows, 79, "39 records and 40 status rows");
    assert_eq!(messages.damaged_rows, 3, "record 7, the status row of 20, the conversation's count: {messages:?}");
    assert!(messages.damaged.iter().any(|r| r.key == kabar_crypto::hex::encode(&position(&bob, 7))));
    let index = report.tables.iter().find(|t| t.table == "message_index").unwrap();
    assert_eq!(index.damaged_rows, 1, "the index row of message 20 points nowhere: {index:?}");

    let store = dir.open_profile("work").unwrap();
    let latest = store.history(&bob, 5, None).unwrap();
    assert_eq!(latest.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![35, 36, 37, 38, 39]);
    match store.history(&bob, 100, None) {
        Err(StoreError::Corrupted { path, reason }) => {
            assert_eq!(path, work);
            assert!(reason.contains("message 20 is missing"), "{reason}");
        }
        other => panic!("expected the missing message, got {other:?}"),
    }
    assert!(matches!(store.history(&bob, 5, Some(23)), Err(StoreError::Corrupted { .. })));
    assert!(matches!(store.history(&bob, 5, Some(10)), Err(StoreError::TamperedRecord { table: "messages" })));
    let early = store.history(&bob, 5, Some(7)).unwrap();
    assert_eq!(early.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![2, 3, 4, 5, 6]);
    let first = store.history(&bob, 10, Some(3)).unwrap();
    assert_eq!(first.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), vec![0, 1, 2], "a short page ends at 0");
}

/// A message stored past the conversation's count is out of place: the
/// history says so instead of showing it.
#[test]
fn a_message_past_the_conversations_count_is_an_error() {
    let (_tmp, root, bob) = setup();
    let work = file(&root, "work");
    {
        let db = redb::Database::open(&work).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut messages = tx.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("messages")).unwrap();
            let sealed = messages.get(position(&bob, 39).as_slice()).unwrap().unwrap().value().to_vec();
            messages.insert(position(&bob, 45).as_slice(), sealed.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let store = DataDir::open(&root, PASS).unwrap().open_profile("work").unwrap();
    match store.history(&bob, 10, None) {
        Err(StoreError::Corrupted { reason, .. }) => assert!(reason.contains("message 45 is out of place"), "{reason}"),
        other => panic!("expected an out-of-place message, got {other:?}"),
    }
}

/// The recovery path of docs/cli.md: a damaged profile removed, its file
/// moved aside, the others open; the name can be used again.
#[test]
fn a_removed_damaged_profile_moves_aside_and_the_others_open() {
    let (_tmp, root, _) = setup();
    let work = file(&root, "work");
    let mut bytes = std::fs::read(&work).unwrap();
    bytes[4096..8192].fill(0);
    std::fs::write(&work, &bytes).unwrap();
    let mut dir = DataDir::open(&root, PASS).unwrap();
    assert!(dir.open_profiles().is_err());
    let moved = dir.remove_profile("work", 1_700_000_000).unwrap().unwrap();
    assert_eq!(moved, root.join("removed/work-1700000000.redb"));
    assert_eq!(std::fs::read(&moved).unwrap(), bytes, "moved as it was");
    assert!(!work.exists());
    drop(dir);
    let mut dir = DataDir::open(&root, PASS).unwrap();
    assert_eq!(dir.profiles().iter().map(|p| p.name.as_str()).collect::<Vec<_>>(), vec!["personal"]);
    assert_eq!(dir.open_profiles().unwrap().len(), 1);
    assert!(matches!(dir.remove_profile("work", 1), Err(StoreError::UnknownProfile(_))));
    drop(dir.create_profile("work", ProfileKind::Personal, 2, &mut rand::rng()).unwrap());
    assert_eq!(dir.open_profiles().unwrap().len(), 2);
}

/// A store a node holds cannot be checked: the check says so rather than
/// reading a file being written.
#[test]
fn a_store_in_use_is_not_checked() {
    let (_tmp, root, _) = setup();
    let dir = DataDir::open(&root, PASS).unwrap();
    let open = dir.open_profile("work").unwrap();
    assert!(matches!(dir.check_profile("work"), Err(StoreError::InUse(_))));
    assert!(matches!(dir.open_profiles(), Err(StoreError::InUse(_))));
    drop(open);
    assert!(dir.check_profile("work").unwrap().healthy);
}
