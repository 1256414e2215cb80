//! Reachability in the network lab (kabar-lab): real `kabar serve` and
//! `kabar node run` processes in network namespaces behind nftables NAT
//! routers, driven through their control sockets (Unix sockets work across
//! namespaces).
//!
//! Topologies:
//! 1. two homes behind endpoint-independent NATs and a public relay: the
//!    connection goes direct by hole punching (DCUtR); and with the path
//!    between the homes cut, punching fails, and once it is mended the
//!    nodes punch again and go direct;
//! 2. one home behind a symmetric NAT: hole punching cannot work, messages
//!    travel over the relay; the relay is killed and restarted mid-way;
//! 3. a public node whose address changes while its contact holds the old
//!    card: the contact learns the new address from an address update;
//!    and a contact whose card holds only stale addresses, reached through
//!    the DHT.
//!
//! Needs root and nftables (`.ci/run` installs it). Without them the tests
//! say why and pass, unless KABAR_LAB_REQUIRED=1 (set by `.ci/run`), where
//! they fail. Every wait is bounded; the lab's Drop kills every process and
//! removes every namespace, also when a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr, missing_docs)]

mod support;

use kabar_lab::{Host, Lab, Nat};
use serde_json::json;
use support::*;

/// A relay on a public host, and Alice and Bob each at home behind a NAT of
/// the given kind, both holding a reservation on the relay.
struct TwoHomes {
    relay: Relay,
    alice: Node,
    bob: Node,
    a_host: Host,
    b_host: Host,
}

fn two_homes(lab: &mut Lab, root: &std::path::Path, a_nat: Nat, b_nat: Nat) -> TwoHomes {
    let relay_host = lab.public_host("relay").unwrap();
    let (a_host, b_host) = (lab.home("alice", a_nat).unwrap(), lab.home("bob", b_nat).unwrap());
    let relay = Relay::start(lab, &relay_host, root);
    let alice = Node::start(lab, &a_host, root, &relay.address);
    let bob = Node::start(lab, &b_host, root, &relay.address);
    alice.wait_reserved();
    bob.wait_reserved();
    TwoHomes { relay, alice, bob, a_host, b_host }
}

#[test]
fn behind_two_endpoint_independent_nats_the_connection_goes_direct() {
    let Some(mut lab) = lab() else { return };
    let root = tmp();
    let TwoHomes { relay, alice, bob, .. } =
        two_homes(&mut lab, root.path(), Nat::EndpointIndependent, Nat::EndpointIndependent);
    wait_until("AutoNAT: alice is behind a NAT", || (alice.profile()["nat"] == "private").then_some(()));
    assert_eq!(alice.profile()["dht"], "client", "a private profile does not serve the DHT");
    // The steps of docs/cli.md "Two people behind different NATs", with the
    // commands a user types.
    let info = alice.cli(&["node", "info"]);
    assert!(info.contains("(reserved)") && info.contains("/p2p-circuit"), "{info}");
    assert!(alice.cli(&["relay", "list"]).contains("yes"));
    let (a_card, b_card) = (alice.cli(&["card"]), bob.cli(&["card"]));
    alice.cli(&["contact", "add", b_card.trim(), "--name", "Bob"]);
    bob.cli(&["contact", "add", a_card.trim(), "--name", "Alice"]);
    let sent = alice.cli(&["send", "Bob", "Hello from behind my NAT", "--wait"]);
    assert!(sent.contains("delivered"), "{sent}");
    assert_eq!(bob.received("Alice"), ["Hello from behind my NAT"]);

    exchange(&alice, &bob, "Bob", "Alice", "a2b", 10);
    let bob_id = bob.peer_id();
    wait_showing("a direct connection by hole punching", &[&alice, &bob], || {
        (alice.connection_to(&bob_id).as_deref() == Some("direct")).then_some(())
    });
    let punched = alice.profile()["hole_punch"]["succeeded"].as_u64().unwrap()
        + bob.profile()["hole_punch"]["succeeded"].as_u64().unwrap();
    assert!(punched >= 1, "the direct connection came from DCUtR");
    exchange(&bob, &alice, "Alice", "Bob", "b2a", 10);
    exchange(&alice, &bob, "Bob", "Alice", "a2b-direct", 10);
    assert_eq!(alice.connection_to(&bob_id).as_deref(), Some("direct"));
    drop(relay);
}

#[test]
fn a_hole_punch_that_failed_is_tried_again_and_goes_direct_once_the_path_is_back() {
    let Some(mut lab) = lab() else { return };
    let root = tmp();
    let TwoHomes { relay, alice, bob, a_host, b_host } =
        two_homes(&mut lab, root.path(), Nat::EndpointIndependent, Nat::EndpointIndependent);
    // Both routers drop everything between the two homes (before connection
    // tracking, so the cut leaves no NAT state behind): only the relay
    // connects them, and hole punching must fail.
    lab.cut(&a_host, b_host.public_ip()).unwrap();
    lab.cut(&b_host, a_host.public_ip()).unwrap();
    introduce(&alice, "Alice", &bob, "Bob");
    exchange(&alice, &bob, "Bob", "Alice", "cut", 5);
    let bob_id = bob.peer_id();
    let failed = |n: &Node| {
        let hp = n.profile()["hole_punch"].clone();
        hp["attempts"].as_u64().unwrap() - hp["succeeded"].as_u64().unwrap()
    };
    wait_showing("hole punching to fail", &[&alice, &bob], || (failed(&alice) + failed(&bob) >= 1).then_some(()));
    assert_eq!(alice.connection_to(&bob_id).as_deref(), Some("relayed"));

    // The path comes back: a node does not stay relayed for good after one
    // failure, it opens a new relayed connection and punches again.
    lab.mend(&a_host).unwrap();
    lab.mend(&b_host).unwrap();
    wait_showing("a direct connection after punching again", &[&alice, &bob], || {
        (alice.connection_to(&bob_id).as_deref() == Some("direct")).then_some(())
    });
    let retries = |n: &Node| n.profile()["hole_punch"]["retries"].as_u64().unwrap();
    assert!(retries(&alice) + retries(&bob) >= 1, "the direct connection came from punching again");
    exchange(&alice, &bob, "Bob", "Alice", "mended", 5);
    exchange(&bob, &alice, "Alice", "Bob", "back", 5);
    drop(relay);
}

#[test]
fn behind_a_symmetric_nat_messages_go_over_the_relay_even_across_a_relay_restart() {
    let Some(mut lab) = lab() else { return };
    let root = tmp();
    let TwoHomes { mut relay, alice, bob, .. } =
        two_homes(&mut lab, root.path(), Nat::EndpointIndependent, Nat::Symmetric);
    introduce(&alice, "Alice", &bob, "Bob");

    exchange(&alice, &bob, "Bob", "Alice", "a2b", 10);
    exchange(&bob, &alice, "Alice", "Bob", "b2a", 10);
    let bob_id = bob.peer_id();
    assert_eq!(alice.connection_to(&bob_id).as_deref(), Some("relayed"), "no direct path through a symmetric NAT");

    // The relay dies mid-conversation: messages queue, the clients reserve
    // again once it is back, and everything arrives exactly once.
    let sent = texts("during-outage", 10);
    relay.kill();
    let ids = alice.send("Bob", &sent);
    relay.spawn(&mut lab);
    alice.wait_reserved();
    bob.wait_reserved();
    alice.wait_delivered(&ids);
    let got = bob.received("Alice");
    assert_eq!(got[got.len() - sent.len()..], sent[..]);
    assert_eq!(got.len(), 20, "exactly once");
    exchange(&bob, &alice, "Alice", "Bob", "after-restart", 5);
}

#[test]
fn a_contact_follows_an_address_change_and_a_stale_card_is_resolved_by_the_dht() {
    let Some(mut lab) = lab() else { return };
    let root = tmp();
    let relay_host = lab.public_host("relay").unwrap();
    let a_host = lab.public_host("alice").unwrap();
    let b_host = lab.home("bob", Nat::EndpointIndependent).unwrap();
    let c_host = lab.home("carol", Nat::EndpointIndependent).unwrap();
    let relay = Relay::start(&mut lab, &relay_host, root.path());
    let alice = Node::start(&mut lab, &a_host, root.path(), &relay.address);
    let bob = Node::start(&mut lab, &b_host, root.path(), &relay.address);
    bob.wait_reserved();
    // Alice is public: AutoNAT says so and she needs no relay slot.
    wait_until("alice public", || (alice.profile()["nat"] == "public").then_some(()));
    assert_eq!(alice.profile()["dht"], "server", "a public profile serves the DHT");
    assert!(
        alice.profile()["relays"].as_array().unwrap().iter().all(|r| r["reserved"] == false),
        "no relay slot needed"
    );
    let old_ip = a_host.ip().to_string();
    introduce(&alice, "Alice", &bob, "Bob");
    exchange(&bob, &alice, "Alice", "Bob", "before", 5);

    // Alice's address changes; Bob still holds the old card.
    let new_ip = lab.change_address(&a_host).unwrap().to_string();
    wait_until("bob learns alice's new address", || {
        let contacts = bob.rpc("contact.list", json!({}));
        let alice_c = contacts.as_array()?.iter().find(|c| c["name"] == "Alice")?.clone();
        let addrs = alice_c["addresses"].as_array()?;
        (addrs.iter().any(|a| a.as_str().unwrap_or("").contains(&new_ip))
            && !addrs.iter().any(|a| a.as_str().unwrap_or("").contains(&format!("/{old_ip}/"))))
        .then_some(())
    });
    exchange(&bob, &alice, "Alice", "Bob", "after", 5);
    exchange(&alice, &bob, "Bob", "Alice", "reply", 5);

    // Carol gets Alice's card as it was before the change (only the old,
    // dead address on it): the DHT has Alice's signed record.
    let carol = Node::start(&mut lab, &c_host, root.path(), &relay.address);
    carol.wait_reserved();
    let stale_card = {
        let card = alice.card("Alice");
        card_with_addresses(&card, &[format!("/ip4/{old_ip}/tcp/9")])
    };
    carol.rpc("contact.add", json!({"card": stale_card, "name": "Alice"}));
    let ids = carol.send("Alice", &texts("via-dht", 3));
    carol.wait_delivered(&ids);
    assert_eq!(alice.received(&carol_name(&alice, &carol)), texts("via-dht", 3));
}
