//! Offline delivery through mailboxes on a service node (`kabar serve
//! --mailbox`): people who are never online at the same time still talk,
//! and nothing is lost or duplicated when the mailbox host crashes.

use std::collections::HashSet;
use std::time::Duration;

use kabar_crypto::ProfileKind::Personal;
use kabar_node::mailbox::MailboxLimits;
use kabar_node::network::ProfileStatus;
use kabar_node::service::{ServiceConfig, ServiceNode};
use kabar_tests::*;
use serde_json::json;

/// A service node with a mailbox on 127.0.0.1, in `dir` (kept across
/// restarts by the caller), on `port` (0: any).
async fn mailbox_host(dir: &std::path::Path, port: u16, limits: MailboxLimits) -> (ServiceNode, String) {
    let mut config = ServiceConfig::new(dir.to_path_buf());
    config.listen = vec![format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()];
    config.mailbox = Some(limits);
    let node = ServiceNode::start(config).await.unwrap();
    let addr = tokio::time::timeout(TIMEOUT, node.wait_listening(1)).await.unwrap()[0].clone();
    (node, addr)
}

/// Waits until the conversation with `with` holds `n` messages (it is
/// checked again after each fetch round: a round ends after its commit).
async fn wait_history(node: &TestNode, with: &str, n: usize) -> Vec<(String, String)> {
    let mut status = node.status_watch("personal");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let got = history(node, "personal", with).await;
        if got.len() >= n {
            return got;
        }
        let changed = tokio::time::timeout_at(deadline, status.changed()).await;
        assert!(changed.is_ok(), "{} of {n} messages in time: {:?}", got.len(), status.borrow().mailboxes);
    }
}

/// Waits until a profile's status satisfies `pred`.
async fn wait_status(node: &TestNode, what: &str, mut pred: impl FnMut(&ProfileStatus) -> bool) {
    let mut status = node.status_watch("personal");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        if pred(&status.borrow()) {
            return;
        }
        let changed = tokio::time::timeout_at(deadline, status.changed()).await;
        assert!(changed.is_ok(), "timed out waiting for {what}: {:?}", status.borrow());
    }
}

fn fetched(s: &ProfileStatus) -> u64 {
    s.mailboxes.iter().map(|m| m.fetched).sum()
}

/// The statuses of our messages in a conversation, oldest first.
async fn statuses(node: &TestNode, with: &str) -> Vec<String> {
    let h = node.call("message.history", json!({"with": with, "limit": 1000})).await;
    h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "out")
        .map(|m| m["status"].as_str().unwrap().to_string())
        .collect()
}

/// Alice and Bob, introduced, each with a mailbox on `host`, and each
/// knowing the other's.
async fn two_with_mailboxes(host: &str) -> (TestNode, TestNode) {
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let (mut a_events, mut b_events) = (alice.subscribe().await, bob.subscribe().await);
    alice.call("mailbox.add", json!({"address": host})).await;
    bob.call("mailbox.add", json!({"address": host})).await;
    let told = |e: &serde_json::Value| e["event"] == "contact_mailboxes_changed" && e["mailboxes"] == 1;
    a_events.wait_for("Bob's mailbox", told).await;
    b_events.wait_for("Alice's mailbox", told).await;
    (alice, bob)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_and_recipient_never_online_together_lose_and_duplicate_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (_host, host_addr) = mailbox_host(dir.path(), 0, MailboxLimits::default()).await;
    let (mut alice, mut bob) = two_with_mailboxes(&host_addr).await;
    bob.stop().await;

    // Bob is away: Alice's 50 messages go to his mailbox (status "stored").
    let mut events = alice.subscribe().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let r = alice.call("message.send", json!({"to": "Bob", "text": format!("while you were away {i}")})).await;
        ids.push(r["message_id"].as_str().unwrap().to_string());
    }
    events.wait_statuses(&ids, "stored").await;
    assert_eq!(statuses(&alice, "Bob").await, vec!["stored"; 50]);
    alice.stop().await;

    // Bob comes back while Alice is away: he fetches all 50, in order, and
    // leaves his delivery receipts in Alice's mailbox.
    bob.boot_again().await;
    let got = wait_history(&bob, "Alice", 50).await;
    // Every receipt deposited: they leave the outbox once the host has them.
    wait_status(&bob, "the receipts deposited", |s| s.deposited >= 1 && s.outbox == 0).await;
    let expected: Vec<(String, String)> =
        (0..50).map(|i| ("in".to_string(), format!("while you were away {i}"))).collect();
    assert_eq!(got, expected, "all 50, once each, in the sender's order");
    bob.stop().await;

    // Alice comes back while Bob is away: the receipts say delivered.
    alice.boot_again().await;
    wait_status(&alice, "receipts fetched", |s| fetched(s) >= 1).await;
    assert_eq!(statuses(&alice, "Bob").await, vec!["delivered"; 50]);
    assert_eq!(fetched(&bob_status_after(&mut bob).await), 0, "nothing left for Bob");
}

/// Bob's status after booting again (his mailbox is empty by now).
async fn bob_status_after(bob: &mut TestNode) -> ProfileStatus {
    bob.boot_again().await;
    let mut status = bob.status_watch("personal");
    // A fetch round ends with a last_fetch time.
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    while status.borrow().mailboxes.iter().all(|m| m.last_fetch_ms == 0) {
        assert!(tokio::time::timeout_at(deadline, status.changed()).await.is_ok(), "no fetch round");
    }
    status.borrow().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_keeps_messages_in_the_outbox_until_the_recipient_fetches() {
    let dir = tempfile::tempdir().unwrap();
    let limits = MailboxLimits { max_count: 5, ..MailboxLimits::default() };
    let (_host, host_addr) = mailbox_host(dir.path(), 0, limits).await;
    let (alice, mut bob) = two_with_mailboxes(&host_addr).await;
    bob.stop().await;

    let mut events = alice.subscribe().await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let r = alice.call("message.send", json!({"to": "Bob", "text": format!("m{i}")})).await;
        ids.push(r["message_id"].as_str().unwrap().to_string());
    }
    // Five are stored, then the host says its quota is full.
    let mut stored = 0;
    let refused = loop {
        let e = events
            .wait_for("stored messages and a refusal", |e| e["status"] == "stored" || e["event"] == "deposit_refused")
            .await;
        if e["event"] == "deposit_refused" {
            break e;
        }
        stored += 1;
    };
    assert_eq!(stored, 5);
    assert_eq!(refused["reason"], "quota_full");
    assert_eq!(refused["contact"], "Bob");
    let s = statuses(&alice, "Bob").await;
    assert_eq!(s.iter().filter(|x| *x == "stored").count(), 5, "{s:?}");
    assert_eq!(s.iter().filter(|x| *x == "sent").count(), 3, "the rest wait in the outbox: {s:?}");

    // Bob comes back and fetches: his mailbox has room again and, Bob being
    // online, the rest reaches him directly.
    bob.boot_again().await;
    events.wait_statuses(&ids, "delivered").await;
    let got = history(&bob, "personal", "Alice").await;
    assert_eq!(got.len(), 8, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mailbox_host_killed_during_deposits_and_fetches_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (host, host_addr) = mailbox_host(dir.path(), 0, MailboxLimits::default()).await;
    let port: u16 = host_addr.split('/').nth(4).unwrap().parse().unwrap();
    let (mut alice, mut bob) = two_with_mailboxes(&host_addr).await;
    bob.stop().await;

    // The host dies while deposits are under way (the first is in).
    let mut events = alice.subscribe().await;
    let mut ids = Vec::new();
    for i in 0..30 {
        let r = alice.call("message.send", json!({"to": "Bob", "text": format!("m{i}")})).await;
        ids.push(r["message_id"].as_str().unwrap().to_string());
    }
    let mut stored = HashSet::new();
    let first = events.wait_for("a first stored message", |e| e["status"] == "stored").await;
    stored.insert(first["message_id"].as_str().unwrap().to_string());
    host.kill().await;
    let (host, _) = mailbox_host(dir.path(), port, MailboxLimits::default()).await;
    // What was not taken before the crash is deposited again.
    while stored.len() < ids.len() {
        let e = events.wait_for("all 30 stored", |e| e["status"] == "stored").await;
        stored.insert(e["message_id"].as_str().unwrap().to_string());
    }
    alice.stop().await;

    // Bob fetches; the host dies during the fetch and comes back; Bob
    // fetches again (a failed round is retried within seconds).
    bob.boot_again().await;
    host.kill().await;
    let (_host, _) = mailbox_host(dir.path(), port, MailboxLimits::default()).await;
    let got = wait_history(&bob, "Alice", 30).await;
    let expected: Vec<(String, String)> = (0..30).map(|i| ("in".to_string(), format!("m{i}"))).collect();
    assert_eq!(got, expected, "nothing lost, nothing twice");
    // Bob's receipts are in Alice's mailbox once his outbox is empty (a
    // deposit that met the dead host is tried again 30 s later).
    wait_status(&bob, "receipts deposited", |s| s.outbox == 0).await;

    // Alice learns from the receipts in her mailbox that all 30 arrived.
    bob.stop().await;
    alice.boot_again().await;
    wait_status(&alice, "receipts fetched", |s| fetched(s) >= 1).await;
    assert_eq!(statuses(&alice, "Bob").await, vec!["delivered"; 30]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_contact_cannot_deposit_and_a_stranger_cannot_fetch() {
    let dir = tempfile::tempdir().unwrap();
    let (_host, host_addr) = mailbox_host(dir.path(), 0, MailboxLimits::default()).await;
    let (alice, mut bob) = two_with_mailboxes(&host_addr).await;
    bob.call("contact.block", json!({"name": "Alice"})).await;
    bob.stop().await;

    let mut events = alice.subscribe().await;
    alice.call("message.send", json!({"to": "Bob", "text": "let me in"})).await;
    let refused = events.wait_for("a refused deposit", |e| e["event"] == "deposit_refused").await;
    assert_eq!(refused["reason"], "revoked");
    assert_eq!(statuses(&alice, "Bob").await, ["sent"]);

    // A stranger with its own mailbox key cannot read or delete Bob's.
    let host: libp2p::Multiaddr = host_addr.parse().unwrap();
    let mut client = kabar_node::mailbox::MailboxClient::connect(&host, Duration::from_secs(10)).await.unwrap();
    let stranger = kabar_node::mailbox::OwnerKey::generate(&mut rand::rng());
    let now = kabar_node::network::now_ms();
    assert!(client.fetch(&stranger, 0, 10, now).await.is_err());
    assert!(client.delete(&stranger, &[1, 2, 3], now).await.is_err());
}
