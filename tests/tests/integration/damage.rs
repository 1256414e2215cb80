//! Damaged stores (issue 14): a node whose profile store (or data directory
//! header) is damaged refuses to start, names the file and the damage, and
//! changes no byte of any file; a store that turns out damaged while the
//! node runs stops its profile, which `node.info` shows failed with the
//! reason, while the other profiles run on.

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use kabar_crypto::{IdentityKeyPair, ProfileKind};
use kabar_node::NodeError;
use kabar_storage::{
    Contact, ContactId, DataDir, Direction, MessageRecord, MessageStatus, OutgoingMessage, StoreError,
};
use kabar_tests::{TIMEOUT, TestNode};
use serde_json::json;

/// The control API's code for a damaged store (docs/api.md).
const DAMAGED: i64 = -32012;

/// Every file under `root` and its bytes (the control socket left out: a
/// running node's).
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

fn assert_unchanged(root: &Path, before: &BTreeMap<PathBuf, Vec<u8>>) {
    let after = snapshot(root);
    assert_eq!(after.keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "files came or went");
    for (path, bytes) in before {
        assert!(after[path] == *bytes, "{} changed", path.display());
    }
}

/// Gives `profile` of the stopped `node` a contact, Bob, and 40 delivered
/// messages to him (nothing queued: the node writes nothing for them).
/// Returns Bob's id.
fn add_conversation(node: &TestNode, profile: &str) -> ContactId {
    let dir = DataDir::open(&node.data_dir, TestNode::passphrase()).unwrap();
    let store = dir.open_profile(profile).unwrap();
    let identity = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng()).public();
    let (bob, _) = store
        .upsert_contact(Contact {
            peer_id: identity.signing.to_vec(),
            identity,
            signed_prekey: None,
            one_time_prekey: None,
            addresses: vec![],
            display_name: "Bob".into(),
            verified: false,
            blocked: false,
            identity_change: None,
            added_at_ms: 1,
            request: false,
        })
        .unwrap();
    let batch: Vec<OutgoingMessage> = (0..40u8)
        .map(|n| OutgoingMessage {
            contact: bob,
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
        })
        .collect();
    store.commit_outgoing(&batch, 10).unwrap();
    store.acknowledge(&(0..40u8).map(|n| [n + 1; 16]).collect::<Vec<_>>()).unwrap();
    bob
}

/// Offsets of every occurrence of `needle` in the file.
fn find(path: &Path, needle: &[u8]) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    (0..=bytes.len() - needle.len()).filter(|&i| &bytes[i..i + needle.len()] == needle).map(|i| i as u64).collect()
}

/// Patches bytes in place (the running node keeps its file open).
fn patch(path: &Path, offset: u64, bytes: &[u8]) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(bytes, offset).unwrap();
    file.sync_all().unwrap();
}

/// Refused starts: a damaged profile store (the second of two, so the
/// first is opened and checked before it), damaged pages or a record that
/// fails authentication, then a damaged header. Each
/// error names the file and the damage; no byte of any file changes and no
/// control socket is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_store_or_header_refuses_the_start_and_changes_no_byte() {
    let mut node = TestNode::start(&[("personal", ProfileKind::Personal), ("work", ProfileKind::Personal)]).await;
    node.stop().await;
    let root = node.data_dir.clone();
    let work = root.join("profiles/work.redb");
    let pristine = std::fs::read(&work).unwrap();
    let pages = pristine.len() as u64 / 4096;
    // Live bytes: the schema version's key in the meta table (every copy),
    // or 16 random bytes (fixed seed) at the same place in every page.
    let schema_key: Vec<(u64, Vec<u8>)> =
        find(&work, b"schema_version").into_iter().map(|o| (o, b"S".to_vec())).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let random: Vec<(u64, Vec<u8>)> = (1..pages)
        .map(|page| {
            let bytes = (0..16)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            (page * 4096 + 64, bytes)
        })
        .collect();
    assert!(!schema_key.is_empty());
    for (what, patches) in [("the schema version's key", schema_key), ("random bytes in every page", random)] {
        std::fs::write(&work, &pristine).unwrap();
        for (offset, bytes) in &patches {
            patch(&work, *offset, bytes);
        }
        let before = snapshot(&root);
        match node.try_boot_again().await {
            Err(e @ NodeError::Store(StoreError::Corrupted { .. })) => {
                let text = e.to_string();
                assert!(text.contains(&work.display().to_string()) && text.contains("damaged"), "{what}: {text}");
            }
            Err(other) => panic!("{what}: expected a damaged store, got {other}"),
            Ok(()) => panic!("{what}: a node with a damaged store started"),
        }
        assert_unchanged(&root, &before);
    }

    // A record that fails authentication in a file whose pages are all
    // sound (written through redb): the profile's identity, which the node
    // reads only after opening every profile for real. It is found before
    // any file is written too, and named with its file.
    std::fs::write(&work, &pristine).unwrap();
    {
        let db = redb::Database::open(&work).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut secrets = tx.open_table(redb::TableDefinition::<&str, &[u8]>::new("secrets")).unwrap();
            let mut sealed = redb::ReadableTable::get(&secrets, "identity").unwrap().unwrap().value().to_vec();
            let last = sealed.len() - 1;
            sealed[last] ^= 1;
            secrets.insert("identity", sealed.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    let before = snapshot(&root);
    match node.try_boot_again().await {
        Err(e @ NodeError::Store(StoreError::Corrupted { .. })) => {
            let text = e.to_string();
            assert!(text.contains(&work.display().to_string()) && text.contains("secrets"), "{text}");
        }
        Err(other) => panic!("a tampered identity: expected a damaged store naming the file, got {other}"),
        Ok(()) => panic!("a node with a tampered identity started"),
    }
    assert_unchanged(&root, &before);

    std::fs::write(&work, &pristine).unwrap();
    let header = root.join(kabar_storage::header::HEADER_FILE);
    let good = std::fs::read(&header).unwrap();
    std::fs::write(&header, &good[..good.len() / 2]).unwrap();
    let before = snapshot(&root);
    match node.try_boot_again().await {
        Err(e @ NodeError::Store(StoreError::BadHeader { .. })) => {
            assert!(e.to_string().contains(&header.display().to_string()), "{e}");
        }
        Err(other) => panic!("expected a damaged header, got {other}"),
        Ok(()) => panic!("a node with a damaged header started"),
    }
    assert_unchanged(&root, &before);

    // Restored, it starts.
    std::fs::write(&header, &good).unwrap();
    node.try_boot_again().await.unwrap();
}

/// A store damaged under the running node: the first read of the damaged
/// page fails with the damaged-store code (never a partial history), the
/// profile stops and `node.info` shows it failed with the reason naming
/// its file, its later calls are refused with that reason, and the other
/// profile runs on. Two kinds of damage: a message record's bytes changed
/// (it fails authentication: a typed error), and the pages holding a
/// message key zeroed (redb fails on them, a panic the node contains).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_damaged_while_running_stops_its_profile_and_the_other_runs_on() {
    for zero_pages in [false, true] {
        let mut node = TestNode::start(&[("personal", ProfileKind::Personal), ("work", ProfileKind::Personal)]).await;
        node.stop().await;
        let bob = add_conversation(&node, "personal");
        let file = node.data_dir.join("profiles/personal.redb");
        let key = [bob.0.as_slice(), &3u64.to_be_bytes()].concat();
        let sealed = {
            let db = redb::ReadOnlyDatabase::open(&file).unwrap();
            let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
            let table = tx.open_table(redb::TableDefinition::<&[u8], &[u8]>::new("messages")).unwrap();
            redb::ReadableTable::get(&table, key.as_slice()).unwrap().unwrap().value().to_vec()
        };
        node.try_boot_again().await.unwrap();

        if zero_pages {
            let found = find(&file, &key);
            assert!(!found.is_empty());
            for offset in found {
                patch(&file, offset / 4096 * 4096, &[0u8; 4096]);
            }
        } else {
            let found = find(&file, &sealed);
            assert!(!found.is_empty());
            for offset in found {
                patch(&file, offset + sealed.len() as u64 - 1, &[sealed[sealed.len() - 1] ^ 1]);
            }
        }

        let error = node
            .try_call("message.history", json!({"profile": "personal", "with": "Bob", "limit": 100}))
            .await
            .expect_err("a history read from a damaged page");
        assert_eq!(error.code, DAMAGED, "zeroed pages {zero_pages}: {error:?}");
        assert!(error.message.contains(&file.display().to_string()), "the error names the file: {error:?}");

        let mut status = node.status_watch("personal");
        let reason = tokio::time::timeout(TIMEOUT, status.wait_for(|s| s.failed.is_some()))
            .await
            .expect("the profile fails")
            .unwrap()
            .failed
            .clone()
            .unwrap();
        assert!(reason.contains(&file.display().to_string()), "{reason}");
        let info = node.call("node.info", json!({})).await;
        let profiles = info["profiles"].as_array().unwrap();
        assert_eq!(profiles[0]["name"], "personal");
        assert_eq!(profiles[0]["failed"], json!(reason));
        assert_eq!(profiles[1]["name"], "work");
        assert_eq!(profiles[1]["failed"], json!(null));

        let refused = node.try_call("contact.list", json!({"profile": "personal"})).await.unwrap_err();
        assert_eq!(refused.code, DAMAGED);
        assert!(
            refused.message.contains("profile personal stopped") && refused.message.contains(&reason),
            "{refused:?}"
        );
        node.call("card.get", json!({"profile": "work"})).await;
        node.call("contact.list", json!({"profile": "work"})).await;
        node.stop().await;
    }
}
