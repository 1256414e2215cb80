//! One-time prekeys handed out online (`/kabar/prekey/1`): a contact with
//! no session fetches one as soon as it can reach us, and its first message
//! starts the session with it (X3DH with DH4), which uses it up.

use kabar_crypto::ProfileKind::Personal;
use kabar_node::network::PrekeyStatus;
use kabar_tests::*;
use serde_json::{Value, json};

/// Waits until a profile's prekey status satisfies `pred`; returns it.
async fn wait_prekeys(node: &TestNode, what: &str, mut pred: impl FnMut(&PrekeyStatus) -> bool) -> PrekeyStatus {
    let mut status = node.status_watch("personal");
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let now = status.borrow_and_update().prekeys.clone();
        if pred(&now) {
            return now;
        }
        let changed = tokio::time::timeout_at(deadline, status.changed()).await;
        assert!(changed.is_ok(), "timed out waiting for {what}: {:?}", status.borrow().prekeys);
    }
}

/// A contact as `contact.list` shows it.
async fn contact(node: &TestNode, name: &str) -> Value {
    let list = node.call("contact.list", json!({})).await;
    list.as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_message_starts_the_session_with_a_one_time_prekey_fetched_online() {
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;

    // Bob's supply once his start-up maintenance has run; node.info shows it.
    let start = wait_prekeys(&bob, "Bob's prekey counts", |p| p.one_time_prekeys > 0).await;
    let info = bob.profile_info("personal").await;
    assert_eq!(info["prekeys"]["one_time_prekeys"], start.one_time_prekeys, "{info}");
    assert_eq!(info["prekeys"]["one_time_prekeys_held"], start.one_time_prekeys_held, "{info}");
    assert_eq!(info["prekeys"]["signed_prekey_id"], start.signed_prekey_id, "{info}");

    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;

    // Adding Bob's card makes Alice ask Bob for prekeys: she holds one of
    // his one-time prekeys, and Bob can hand out one fewer.
    wait_prekeys(&alice, "Alice to fetch Bob's prekeys", |p| p.fetched >= 1).await;
    assert_eq!(contact(&alice, "Bob").await["one_time_prekey"], true);
    let handed_out =
        wait_prekeys(&bob, "Bob to hand out a one-time prekey", |p| p.one_time_prekeys < start.one_time_prekeys).await;
    assert_eq!(handed_out.one_time_prekeys, start.one_time_prekeys - 1, "exactly one handed out");
    assert_eq!(handed_out.one_time_prekeys_held, start.one_time_prekeys_held, "handed out, not used yet");

    // Alice's first message starts the session with it.
    let mut alice_events = alice.subscribe().await;
    let mut bob_events = bob.subscribe().await;
    let sent = alice.call("message.send", json!({"to": "Bob", "text": "with a one-time prekey"})).await;
    alice_events.wait_status(sent["message_id"].as_str().unwrap(), "delivered").await;
    bob_events.wait_received("personal", 1).await;
    assert_eq!(history(&bob, "personal", "Alice").await, [("in".into(), "with a one-time prekey".into())]);
    assert_eq!(contact(&alice, "Bob").await["one_time_prekey"], false, "used up by the session start");

    // Bob used (and deleted) exactly that one-time prekey: the message was a
    // session start with DH4, not with the signed prekey alone.
    let used =
        wait_prekeys(&bob, "Bob to use the one-time prekey", |p| p.one_time_prekeys_held < start.one_time_prekeys_held)
            .await;
    assert_eq!(used.one_time_prekeys_held, start.one_time_prekeys_held - 1);
    assert_eq!(used.one_time_prekeys, start.one_time_prekeys - 1);
    let info = bob.profile_info("personal").await;
    assert_eq!(info["prekeys"]["one_time_prekeys_held"], start.one_time_prekeys_held - 1, "{info}");
}
