//! Reachability on loopback (the NAT cases live in the network lab,
//! cli/tests/nat.rs): a service node as DHT entry point; a contact whose
//! card holds only a dead address is found through its signed address
//! record on the DHT; relays are remembered and reserved on.

use kabar_crypto::ProfileKind::Personal;
use kabar_node::card::ContactCard;
use kabar_node::service::{ServiceConfig, ServiceNode};
use kabar_tests::*;
use serde_json::json;

async fn service() -> (tempfile::TempDir, ServiceNode, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServiceConfig::new(dir.path().to_path_buf());
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    let node = ServiceNode::start(config).await.unwrap();
    let addr = tokio::time::timeout(TIMEOUT, node.wait_listening(1)).await.unwrap()[0].clone();
    (dir, node, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_whose_card_holds_only_a_dead_address_is_found_on_the_dht() {
    let (_dir, service, entry) = service().await;
    // Both are DHT clients (as profiles behind NATs are): they know the
    // service node, not each other.
    let alice = TestNode::start_dht_client(&[("personal", Personal)], std::slice::from_ref(&entry)).await;
    let bob = TestNode::start_dht_client(&[("personal", Personal)], &[entry]).await;
    let mut bob_status = bob.status_watch("personal");
    tokio::time::timeout(TIMEOUT, bob_status.wait_for(|s| s.address_record_published)).await.unwrap().unwrap();
    let bob_addrs = bob.profile_info("personal").await["advertised"].clone();

    let mut card = ContactCard::from_uri(&bob.card("personal", "Bob").await).unwrap();
    card.addresses = vec!["/ip4/127.0.0.1/tcp/9".parse().unwrap()];
    alice.call("contact.add", json!({"card": card.to_uri(), "name": "Bob"})).await;
    let bob_id = bob.profile_info("personal").await["peer_id"].clone();
    let peers = alice.profile_info("personal").await["peers"].clone();
    assert!(!peers.as_array().unwrap().iter().any(|p| p["peer_id"] == bob_id), "not connected to Bob yet: {peers}");
    let mut events = alice.subscribe().await;
    let sent = alice.call("message.send", json!({"to": "Bob", "text": "found you"})).await;
    events.wait_for("Bob's addresses from the DHT", |e| e["event"] == "contact_addresses_changed").await;
    events.wait_status(sent["message_id"].as_str().unwrap(), "delivered").await;

    let contacts = alice.call("contact.list", json!({})).await;
    assert_eq!(contacts[0]["addresses"], bob_addrs, "the contact now holds Bob's signed addresses");
    drop(service);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_are_added_remembered_and_removed_per_profile() {
    let (_dir, service, relay) = service().await;
    let mut alice = TestNode::start(&[("personal", Personal)]).await;
    alice.call("relay.add", json!({"address": relay})).await;
    // On loopback nobody answers AutoNAT for us: unknown, so we reserve.
    wait_reserved(&alice, &relay).await;
    let card = ContactCard::from_uri(&alice.card("personal", "Alice").await).unwrap();
    assert!(card.addresses.iter().any(|a| a.to_string().contains("/p2p-circuit")), "the card carries the circuit");

    alice.restart().await;
    let listed = alice.call("relay.list", json!({})).await;
    assert_eq!(listed["relays"]["personal"][0]["address"], relay.as_str(), "remembered across a restart");
    wait_reserved(&alice, &relay).await;

    let bad = alice.try_call("relay.add", json!({"address": "/ip4/127.0.0.1/tcp/1"})).await.unwrap_err();
    assert!(bad.message.contains("/p2p/"), "{bad:?}");
    alice.call("relay.remove", json!({"address": relay})).await;
    assert_eq!(alice.call("relay.list", json!({})).await["relays"]["personal"], json!([]));
    drop(service);
}

async fn wait_reserved(node: &TestNode, relay: &str) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    let mut status = node.status_watch("personal");
    loop {
        let reserved = status.borrow().relays.iter().any(|r| r.address == relay && r.reserved);
        if reserved {
            return;
        }
        assert!(tokio::time::timeout_at(deadline, status.changed()).await.is_ok(), "no reservation in time");
    }
}
