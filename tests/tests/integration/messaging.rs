//! Two nodes message both ways; statuses reach delivered and read.

use kabar_crypto::ProfileKind::Personal;
use kabar_tests::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_message_both_ways_and_statuses_reach_delivered_and_read() {
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let mut alice_events = alice.subscribe().await;
    let mut bob_events = bob.subscribe().await;

    let sent = alice.call("message.send", json!({"to": "Bob", "text": "Hi Bob!"})).await;
    let id = sent["message_id"].as_str().unwrap().to_string();
    alice_events.wait_status(&id, "delivered").await;
    bob_events.wait_received("personal", 1).await;

    let reply = bob.call("message.send", json!({"to": "Alice", "text": "Hi Alice, all well?"})).await;
    bob_events.wait_status(reply["message_id"].as_str().unwrap(), "delivered").await;

    assert_eq!(
        history(&alice, "personal", "Bob").await,
        [("out".into(), "Hi Bob!".into()), ("in".into(), "Hi Alice, all well?".into())]
    );
    assert_eq!(
        history(&bob, "personal", "Alice").await,
        [("in".into(), "Hi Bob!".into()), ("out".into(), "Hi Alice, all well?".into())]
    );
    let inbox = bob.call("conversation.list", json!({})).await;
    assert_eq!(inbox[0]["contact"], "Alice");

    // Bob reads the conversation: Alice sees "read".
    bob.call("conversation.read", json!({"with": "Alice"})).await;
    alice_events.wait_status(&id, "read").await;
    let status = alice.call("message.status", json!({"message_id": id})).await;
    assert_eq!(status["status"], "read");
    let inbox = bob.call("conversation.list", json!({})).await;
    assert_eq!(inbox[0]["unread"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safety_numbers_match_on_both_sides_and_verify_marks_the_contact() {
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let a = alice.call("contact.verify", json!({"name": "Bob"})).await;
    let b = bob.call("contact.verify", json!({"name": "Alice", "confirm": true})).await;
    assert_eq!(a["digits"], b["digits"]);
    assert_eq!(a["verified"], false);
    assert_eq!(b["verified"], true);
    let contacts = bob.call("contact.list", json!({})).await;
    assert_eq!(contacts[0]["verified"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_travel_over_quic_too() {
    let alice = TestNode::start_on(&[("personal", Personal)], "/ip4/127.0.0.1/udp/0/quic-v1").await;
    let bob = TestNode::start_on(&[("personal", Personal)], "/ip4/127.0.0.1/udp/0/quic-v1").await;
    assert!(bob.profile_info("personal").await["listen_addrs"][0].as_str().unwrap().contains("quic-v1"));
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let mut events = alice.subscribe().await;
    let sent = alice.call("message.send", json!({"to": "Bob", "text": "over QUIC"})).await;
    events.wait_status(sent["message_id"].as_str().unwrap(), "delivered").await;
    assert_eq!(history(&bob, "personal", "Alice").await, [("in".into(), "over QUIC".into())]);
    // More than a QUIC connection's flow-control window (4 MiB) queued at
    // once (requests of up to 4 MiB): the windows bound what is in flight,
    // they do not stall it.
    // (Batches of 768 KiB: a control request is at most 1 MiB.)
    let text = "q".repeat(16 * 1024);
    let mut ids = Vec::new();
    for _ in 0..8 {
        let sent = alice.call("message.send_batch", json!({"to": "Bob", "texts": vec![text.clone(); 48]})).await;
        ids.extend(sent["message_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
    }
    assert!(ids.len() * text.len() > kabar_node::network::QUIC_CONNECTION_WINDOW as usize);
    events.wait_statuses(&ids, "delivered").await;
}
