//! Reachability figures in the network lab (needs root and nftables):
//!
//! 1. Hole punching: for two topologies (both homes behind
//!    endpoint-independent NATs; one behind a symmetric NAT), `--attempts`
//!    fresh pairs of nodes (default 50) each reserve on one relay, exchange
//!    cards and send one message over the relay; DCUtR then tries to go
//!    direct. Success rate, and milliseconds from the relayed connection to
//!    the direct one (p50/p95).
//! 2. Messaging between two NATed nodes once connected, direct (after
//!    hole punching) against relayed (symmetric NAT), beside two nodes on
//!    loopback (inside one lab host): latency of one message at a time
//!    (`message.send` to the `delivered` event, p50/p99) and throughput
//!    (`message.send_batch` calls of 64, back to back, until the last is
//!    delivered).
//!
//! `cargo bench -p kabar --bench nat -- [--attempts N] [--messages M]`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use kabar_lab::{Lab, Nat};
use serde_json::json;
use support::*;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize).min(sorted.len() - 1)]
}

/// Outcome of one hole-punching attempt.
struct Attempt {
    direct: bool,
    direct_after_ms: Option<f64>,
}

fn hole_punch(lab: &mut Lab, relay: &Relay, nat_b: Nat, k: usize, root: &std::path::Path) -> Attempt {
    let a_host = lab.home(&format!("a{k}"), Nat::EndpointIndependent).unwrap();
    let b_host = lab.home(&format!("b{k}"), nat_b).unwrap();
    let mut alice = Node::start(lab, &a_host, root, &relay.address);
    let mut bob = Node::start(lab, &b_host, root, &relay.address);
    alice.wait_reserved();
    bob.wait_reserved();
    introduce(&alice, "Alice", &bob, "Bob");
    let ids = alice.send("Bob", &["hello".to_string()]);
    alice.wait_delivered(&ids);
    // DCUtR reports an outcome on the side that punches; wait for one (or
    // give up after 20 s: counted as not direct).
    let deadline = Instant::now() + Duration::from_secs(20);
    let bob_id = bob.peer_id();
    let mut result = Attempt { direct: false, direct_after_ms: None };
    while Instant::now() < deadline {
        let (pa, pb) = (alice.profile(), bob.profile());
        let attempts = pa["hole_punch"]["attempts"].as_u64().unwrap() + pb["hole_punch"]["attempts"].as_u64().unwrap();
        let direct = alice.connection_to(&bob_id).as_deref() == Some("direct");
        if direct || attempts > 0 {
            result.direct = direct
                || pa["hole_punch"]["succeeded"].as_u64().unwrap() + pb["hole_punch"]["succeeded"].as_u64().unwrap()
                    > 0;
            result.direct_after_ms = [pa, pb]
                .iter()
                .filter_map(|p| p["hole_punch"]["direct_after_ms"].as_array()?.first()?.as_f64())
                .reduce(f64::min);
            if result.direct == direct {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    alice.kill();
    bob.kill();
    result
}

/// Delivered message ids, filled by a thread that reads a subscription
/// (a reader that falls behind would lose events: the node's event channel
/// is bounded).
#[derive(Clone, Default)]
struct Delivered(Arc<(Mutex<HashSet<String>>, Condvar)>);

impl Delivered {
    fn follow(node: &Node) -> Delivered {
        let delivered = Delivered::default();
        let mut events = node.connect();
        events.call("subscribe", json!({}));
        let d = delivered.clone();
        std::thread::spawn(move || {
            while let Some(e) = events.try_next_event() {
                if e["event"] == "status_changed" && matches!(e["status"].as_str(), Some("delivered" | "read")) {
                    let (set, cv) = &*d.0;
                    set.lock().unwrap().insert(e["message_id"].as_str().unwrap_or("").to_string());
                    cv.notify_all();
                }
            }
        });
        delivered
    }

    fn wait(&self, ids: &[String]) {
        let (set, cv) = &*self.0;
        let mut guard = set.lock().unwrap();
        let deadline = Instant::now() + WAIT;
        while !ids.iter().all(|id| guard.contains(id)) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "messages not delivered in time");
            guard = cv.wait_timeout(guard, left).unwrap().0;
        }
    }
}

/// Latency of `n` messages sent one at a time (send → delivered event),
/// sorted, in ms; then throughput of `total` messages in batches of 64.
fn messaging(from: &Node, to_name: &str, n: usize, total: usize) -> (Vec<f64>, f64) {
    let delivered = Delivered::follow(from);
    let mut calls = from.connect();
    let mut latencies = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        let id = calls.call("message.send", json!({"to": to_name, "text": format!("latency {i} {}", "x".repeat(1000))}))
            ["message_id"]
            .as_str()
            .unwrap()
            .to_string();
        delivered.wait(&[id]);
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    let batches: Vec<Vec<String>> = (0..total.div_ceil(64))
        .map(|b| (0..64).map(|i| format!("throughput {b}-{i} {}", "x".repeat(1000))).collect())
        .collect();
    let t = Instant::now();
    let mut ids = Vec::new();
    for batch in &batches {
        let v = calls.call("message.send_batch", json!({"to": to_name, "texts": batch}));
        ids.extend(v["message_ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()));
    }
    delivered.wait(&ids);
    let rate = ids.len() as f64 / t.elapsed().as_secs_f64();
    (latencies, rate)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` (libtest protocol): no benchmarks to list by name
    }
    let attempts = arg("--attempts", 50);
    let messages = arg("--latency-messages", 200);
    let total = arg("--messages", 2048);
    if let Err(e) = Lab::available() {
        eprintln!("the lab benchmark needs root and nftables: {e}");
        return;
    }
    let root = tempfile::Builder::new().prefix("kabar-bench-nat-").tempdir().unwrap();
    println!("# Hole punching ({attempts} fresh pairs per topology)");
    println!("| topology | direct | success | relayed → direct p50 | p95 |");
    println!("|---|---|---|---|---|");
    for (label, nat_b) in [
        ("endpoint-independent ↔ endpoint-independent", Nat::EndpointIndependent),
        ("endpoint-independent ↔ symmetric", Nat::Symmetric),
    ] {
        let mut lab = Lab::new().unwrap();
        let relay_host = lab.public_host("relay").unwrap();
        let relay = Relay::start(&mut lab, &relay_host, root.path());
        let mut ok = 0;
        let mut times = Vec::new();
        for k in 0..attempts {
            let dir = root.path().join(format!("{}-{k}", if nat_b == Nat::Symmetric { "sym" } else { "eim" }));
            let a = hole_punch(&mut lab, &relay, nat_b, k, &dir);
            ok += usize::from(a.direct);
            times.extend(a.direct_after_ms);
            eprint!("\r{label}: {}/{} direct", ok, k + 1);
        }
        eprintln!();
        times.sort_by(f64::total_cmp);
        println!(
            "| {label} | {ok}/{attempts} | {:.1} % | {:.0} ms | {:.0} ms |",
            100.0 * ok as f64 / attempts as f64,
            percentile(&times, 50.0),
            percentile(&times, 95.0)
        );
    }

    println!("\n# Messaging, 1 KiB texts ({messages} one at a time, then {total} in batches of 64)");
    println!("| path | latency p50 | p99 | throughput |");
    println!("|---|---|---|---|");
    let mut lab = Lab::new().unwrap();
    let relay_host = lab.public_host("relay").unwrap();
    let relay = Relay::start(&mut lab, &relay_host, root.path());
    // Loopback: two nodes in one host, no NAT, no relay.
    let host = lab.public_host("loop").unwrap();
    let lo = |name: &str| {
        (root.path().join(name), vec!["--listen".to_string(), "/ip4/127.0.0.1/tcp/0".into(), "--dht-server".into()])
    };
    let (d1, a1) = lo("lo-a");
    let (d2, a2) = lo("lo-b");
    let la = Node::start_with(&mut lab, &host, &d1, a1);
    let lb = Node::start_with(&mut lab, &host, &d2, a2);
    introduce(&la, "Alice", &lb, "Bob");
    let rows = [("loopback (one host, no NAT)", &la, &lb, None)];
    // Direct after hole punching; relayed through a symmetric NAT.
    let eim = [lab.home("da", Nat::EndpointIndependent).unwrap(), lab.home("db", Nat::EndpointIndependent).unwrap()];
    let sym = [lab.home("ra", Nat::EndpointIndependent).unwrap(), lab.home("rb", Nat::Symmetric).unwrap()];
    let da = Node::start(&mut lab, &eim[0], root.path(), &relay.address);
    let db = Node::start(&mut lab, &eim[1], root.path(), &relay.address);
    let ra = Node::start(&mut lab, &sym[0], root.path(), &relay.address);
    let rb = Node::start(&mut lab, &sym[1], root.path(), &relay.address);
    for n in [&da, &db, &ra, &rb] {
        n.wait_reserved();
    }
    introduce(&da, "Alice", &db, "Bob");
    introduce(&ra, "Alice", &rb, "Bob");
    for a in [&da, &ra] {
        let ids = a.send("Bob", &["hello".to_string()]);
        a.wait_delivered(&ids);
    }
    let db_id = db.peer_id();
    wait_until("direct", || (da.connection_to(&db_id).as_deref() == Some("direct")).then_some(()));
    let rows = rows.into_iter().chain([
        ("NATed, direct after hole punching", &da, &db, Some("direct")),
        ("NATed, relayed (symmetric NAT)", &ra, &rb, Some("relayed")),
    ]);
    for (label, a, b, expect) in rows {
        let (lat, rate) = messaging(a, "Bob", messages, total);
        let path = expect.map(|_| a.connection_to(&b.peer_id()).unwrap_or_default());
        assert_eq!(path.as_deref(), expect, "{label}: the path changed during the run");
        println!("| {label} | {:.2} ms | {:.2} ms | {rate:.0} msg/s |", percentile(&lat, 50.0), percentile(&lat, 99.0));
    }
}
