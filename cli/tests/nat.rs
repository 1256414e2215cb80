//! Reachability in the network lab (kabar-lab): real `kabar serve` and
//! `kabar node run` processes in network namespaces behind nftables NAT
//! routers, driven through their control sockets (Unix sockets work across
//! namespaces).
//!
//! Topologies:
//! 1. two homes behind endpoint-independent NATs and a public relay: the
//!    connection goes direct by hole punching (DCUtR);
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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kabar_lab::{Host, Lab, LabProcess, Nat};
use serde_json::{Value, json};

const PASSPHRASE: &str = "network lab (not a secret)";
/// Longest wait for any one condition.
const WAIT: Duration = Duration::from_secs(90);

fn kabar() -> &'static str {
    env!("CARGO_BIN_EXE_kabar")
}

/// A lab, or None (with the reason printed) where labs cannot run here.
fn lab() -> Option<Lab> {
    match Lab::available().and_then(|_| Lab::new()) {
        Ok(lab) => Some(lab),
        Err(e) if std::env::var_os("KABAR_LAB_REQUIRED").is_none() => {
            eprintln!("skipping network lab test: {e}");
            None
        }
        Err(e) => panic!("the network lab is required here (KABAR_LAB_REQUIRED) but cannot run: {e}"),
    }
}

/// Polls `f` until it returns Some, at most [`WAIT`].
fn wait_until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `kabar serve` process.
struct Relay {
    host: Host,
    dir: PathBuf,
    address: String,
    process: Option<LabProcess>,
}

impl Relay {
    fn start(lab: &mut Lab, host: &Host, root: &Path) -> Relay {
        let dir = root.join(format!("serve-{}", host.name()));
        let mut relay = Relay { host: host.clone(), dir, address: String::new(), process: None };
        relay.spawn(lab);
        relay
    }

    fn spawn(&mut self, lab: &mut Lab) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.with_extension("log")).unwrap();
        let mut cmd = self.host.command(kabar());
        cmd.args(["--json", "--data-dir"])
            .arg(&self.dir)
            .args(["serve", "--listen", "/ip4/0.0.0.0/tcp/4040", "--listen", "/ip4/0.0.0.0/udp/4040/quic-v1"])
            .arg("--autonat-private")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = lab.spawn(&mut cmd).unwrap();
        let line = process.stdout_lines().unwrap().next_within(Duration::from_secs(30)).unwrap();
        let started: Value = serde_json::from_str(&line).unwrap();
        self.address = format!("/ip4/{}/tcp/4040/p2p/{}", self.host.ip(), started["peer_id"].as_str().unwrap());
        self.process = Some(process);
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

/// A `kabar node run` process with one personal profile, in a lab host.
struct Node {
    host: Host,
    dir: PathBuf,
    relay: String,
    process: Option<LabProcess>,
}

impl Node {
    fn start(lab: &mut Lab, host: &Host, root: &Path, relay: &str) -> Node {
        let dir = root.join(host.name());
        let out = Command::new(kabar())
            .args(["--data-dir"])
            .arg(&dir)
            .args(["init", "--testnet-kdf"])
            .env("KABAR_PASSPHRASE", PASSPHRASE)
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let mut node = Node { host: host.clone(), dir, relay: relay.to_string(), process: None };
        node.spawn(lab);
        node
    }

    fn spawn(&mut self, lab: &mut Lab) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.with_extension("log")).unwrap();
        let mut cmd = self.host.command(kabar());
        cmd.args(["--json", "--data-dir"])
            .arg(&self.dir)
            .args(["node", "run", "--listen", "/ip4/0.0.0.0/tcp/0", "--listen", "/ip4/0.0.0.0/udp/0/quic-v1"])
            .args(["--no-mdns", "--relay", &self.relay, "--bootstrap", &self.relay])
            .env("KABAR_PASSPHRASE", PASSPHRASE)
            .env("RUST_LOG", std::env::var("KABAR_LAB_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = lab.spawn(&mut cmd).unwrap();
        let line = process.stdout_lines().unwrap().next_within(Duration::from_secs(30)).unwrap();
        let _: Value = serde_json::from_str(&line).unwrap();
        self.process = Some(process);
    }

    fn rpc(&self, method: &str, params: Value) -> Value {
        let out = Command::new(kabar())
            .args(["--json", "--data-dir"])
            .arg(&self.dir)
            .args(["rpc", method, &params.to_string()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{method} {params}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn profile(&self) -> Value {
        self.rpc("node.info", json!({}))["profiles"][0].clone()
    }

    fn peer_id(&self) -> String {
        self.profile()["peer_id"].as_str().unwrap().to_string()
    }

    /// Waits until the profile holds a reservation on its relay and its
    /// card carries the circuit address.
    fn wait_reserved(&self) {
        wait_until(&format!("a reservation for {}", self.host.name()), || {
            let p = self.profile();
            let reserved = p["relays"].as_array()?.iter().any(|r| r["reserved"] == true);
            let circuit =
                p["advertised"].as_array()?.iter().any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit")));
            (reserved && circuit).then_some(())
        });
    }

    fn card(&self, name: &str) -> String {
        self.rpc("card.get", json!({"name": name}))["card"].as_str().unwrap().to_string()
    }

    /// How this node is connected to `peer` now: "direct", "relayed" or None.
    fn connection_to(&self, peer: &str) -> Option<String> {
        let p = self.profile();
        p["peers"].as_array()?.iter().find(|x| x["peer_id"] == peer).map(|x| x["connection"].as_str().unwrap().into())
    }

    /// Sends `texts` to `to` in one batch; returns their ids.
    fn send(&self, to: &str, texts: &[String]) -> Vec<String> {
        let v = self.rpc("message.send_batch", json!({"to": to, "texts": texts}));
        v["message_ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect()
    }

    /// Texts received from `from`, in order.
    fn received(&self, from: &str) -> Vec<String> {
        let h = self.rpc("message.history", json!({"with": from, "limit": 10000}));
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["direction"] == "in" && m["content"]["type"] == "text")
            .map(|m| m["content"]["text"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until every one of `ids` is delivered (or read).
    fn wait_delivered(&self, ids: &[String]) {
        for id in ids {
            wait_until(&format!("{id} delivered by {}", self.host.name()), || {
                let s = self.rpc("message.status", json!({"message_id": id}));
                matches!(s["status"].as_str(), Some("delivered" | "read")).then_some(())
            });
        }
    }
}

fn introduce(a: &Node, a_name: &str, b: &Node, b_name: &str) {
    let (a_card, b_card) = (a.card(a_name), b.card(b_name));
    a.rpc("contact.add", json!({"card": b_card, "name": b_name}));
    b.rpc("contact.add", json!({"card": a_card, "name": a_name}));
}

fn texts(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

/// `from` sends `n` messages to `to`; all are delivered, and `to` holds each
/// exactly once, in order, after what it had.
fn exchange(from: &Node, to: &Node, to_name: &str, from_name: &str, tag: &str, n: usize) {
    let before = to.received(from_name);
    let sent = texts(tag, n);
    let ids = from.send(to_name, &sent);
    from.wait_delivered(&ids);
    let after = to.received(from_name);
    assert_eq!(after[..before.len()], before[..], "earlier messages changed");
    assert_eq!(after[before.len()..], sent[..], "lost, duplicated or reordered");
}

/// The test's directory: data directories and each process's log
/// (`<host>.log`). KABAR_LAB_KEEP=1 keeps it for reading.
fn tmp() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new().prefix("kabar-lab-").tempdir().unwrap();
    if std::env::var_os("KABAR_LAB_KEEP").is_some() {
        eprintln!("keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

#[test]
fn behind_two_endpoint_independent_nats_the_connection_goes_direct() {
    let Some(mut lab) = lab() else { return };
    let root = tmp();
    let relay_host = lab.public_host("relay").unwrap();
    let (a_host, b_host) =
        (lab.home("alice", Nat::EndpointIndependent).unwrap(), lab.home("bob", Nat::EndpointIndependent).unwrap());
    let relay = Relay::start(&mut lab, &relay_host, root.path());
    let alice = Node::start(&mut lab, &a_host, root.path(), &relay.address);
    let bob = Node::start(&mut lab, &b_host, root.path(), &relay.address);
    alice.wait_reserved();
    bob.wait_reserved();
    wait_until("AutoNAT: alice is behind a NAT", || (alice.profile()["nat"] == "private").then_some(()));
    introduce(&alice, "Alice", &bob, "Bob");

    exchange(&alice, &bob, "Bob", "Alice", "a2b", 10);
    let bob_id = bob.peer_id();
    wait_until("a direct connection by hole punching", || {
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
fn behind_a_symmetric_nat_messages_go_over_the_relay_even_across_a_relay_restart() {
    let Some(mut lab) = lab() else { return };
    let root = tmp();
    let relay_host = lab.public_host("relay").unwrap();
    let a_host = lab.home("alice", Nat::EndpointIndependent).unwrap();
    let b_host = lab.home("bob", Nat::Symmetric).unwrap();
    let mut relay = Relay::start(&mut lab, &relay_host, root.path());
    let alice = Node::start(&mut lab, &a_host, root.path(), &relay.address);
    let bob = Node::start(&mut lab, &b_host, root.path(), &relay.address);
    alice.wait_reserved();
    bob.wait_reserved();
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

/// The name Alice's node gave Carol (a stranger: its PeerId tail).
fn carol_name(alice: &Node, carol: &Node) -> String {
    let id = carol.peer_id();
    let contacts = alice.rpc("contact.list", json!({}));
    contacts.as_array().unwrap().iter().find(|c| c["peer_id"] == id.as_str()).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `card` with its addresses replaced (re-encoded; the signatures cover the
/// keys, not the addresses).
fn card_with_addresses(card: &str, addresses: &[String]) -> String {
    let mut parsed = kabar_node::card::ContactCard::from_uri(card).unwrap();
    parsed.addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
    parsed.to_uri()
}
