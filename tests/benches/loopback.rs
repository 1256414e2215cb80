//! Two nodes on loopback, 1 KiB texts: Kabar's one-way throughput and
//! light-load latency (durable at both ends), beside a bare rust-libp2p
//! request-response pair on the same transport with no crypto and no
//! storage (the floor), in the same run.
//!
//! Run: `cargo bench -p kabar-tests --bench loopback` (prints a table; medians
//! of 3 rounds).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::time::{Duration, Instant};

use futures::StreamExt;
use kabar_crypto::ProfileKind::Personal;
use kabar_node::wire::{Ack, EnvelopeCodec, PROTOCOL};
use kabar_tests::{TestNode, introduce};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, Swarm, noise, tcp, yamux};
use serde_json::json;

/// Rounds (medians are quoted); `KABAR_BENCH_ROUNDS` overrides.
fn rounds() -> usize {
    std::env::var("KABAR_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}
const THROUGHPUT_MESSAGES: usize = 2_000;
const LATENCY_MESSAGES: usize = 200;
const BARE_THROUGHPUT: usize = 20_000;
const IN_FLIGHT: usize = 64;

fn text() -> String {
    "k".repeat(1024)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[(((sorted.len() - 1) as f64) * p / 100.0).round() as usize]
}

type Bare = Swarm<request_response::Behaviour<EnvelopeCodec>>;

fn bare_swarm() -> Bare {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .unwrap()
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                EnvelopeCodec::default(),
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default().with_max_concurrent_streams(256),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// The bare pair: returns (messages/s with IN_FLIGHT outstanding, sorted
/// latencies in ms with one outstanding).
async fn bare_round() -> (f64, Vec<f64>) {
    let mut server = bare_swarm();
    let mut client = bare_swarm();
    server.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap()).unwrap();
    let addr: Multiaddr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let server_id = *server.local_peer_id();
    client.add_peer_address(server_id, addr);
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Request { request, channel, .. },
                ..
            }) = server.select_next_some().await
            {
                let _ = server.behaviour_mut().send_response(channel, vec![Ack::Accepted; request.len()]);
            }
        }
    });
    let payload = vec![text().into_bytes()];
    let wait_one = async |client: &mut Bare| loop {
        if let SwarmEvent::Behaviour(request_response::Event::Message {
            message: request_response::Message::Response { .. },
            ..
        }) = client.select_next_some().await
        {
            return;
        }
    };
    // Warm up the connection.
    client.behaviour_mut().send_request(&server_id, payload.clone());
    wait_one(&mut client).await;
    let mut latencies = Vec::with_capacity(LATENCY_MESSAGES);
    for _ in 0..LATENCY_MESSAGES {
        let t = Instant::now();
        client.behaviour_mut().send_request(&server_id, payload.clone());
        wait_one(&mut client).await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let start = Instant::now();
    let mut sent = 0;
    let mut done = 0;
    while sent < IN_FLIGHT.min(BARE_THROUGHPUT) {
        client.behaviour_mut().send_request(&server_id, payload.clone());
        sent += 1;
    }
    while done < BARE_THROUGHPUT {
        wait_one(&mut client).await;
        done += 1;
        if sent < BARE_THROUGHPUT {
            client.behaviour_mut().send_request(&server_id, payload.clone());
            sent += 1;
        }
    }
    let rate = BARE_THROUGHPUT as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    (rate, latencies)
}

/// Kabar: two real nodes (durable stores, encryption), driven through the
/// control socket. Returns (messages/s delivered, sorted latencies in ms from
/// the send call to the delivered event, one message at a time).
async fn kabar_round() -> (f64, f64, Vec<f64>) {
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let mut events = alice.subscribe().await;
    let body = text();
    // Warm up (X3DH, connection).
    let first = alice.call("message.send", json!({"to": "Bob", "text": "hello"})).await;
    events.wait_status(first["message_id"].as_str().unwrap(), "delivered").await;
    let mut latencies = Vec::with_capacity(LATENCY_MESSAGES);
    for _ in 0..LATENCY_MESSAGES {
        let t = Instant::now();
        let r = alice.call("message.send", json!({"to": "Bob", "text": body})).await;
        events.wait_status(r["message_id"].as_str().unwrap(), "delivered").await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let start = Instant::now();
    let mut last = String::new();
    for _ in 0..THROUGHPUT_MESSAGES {
        let r = alice.call("message.send", json!({"to": "Bob", "text": body})).await;
        last = r["message_id"].as_str().unwrap().to_string();
    }
    // Acknowledgements arrive in order per peer: the last one marks the end.
    loop {
        let s = alice.call("message.status", json!({"message_id": last})).await;
        if s["status"] == "delivered" || s["status"] == "read" {
            break;
        }
        events.wait_for("deliveries", |_| true).await;
    }
    let rate = THROUGHPUT_MESSAGES as f64 / start.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));
    // The same number of messages again, 64 per `message.send_batch` call:
    // one durable commit per batch on the sender.
    let start = Instant::now();
    let batch: Vec<String> = vec![body.clone(); IN_FLIGHT];
    let mut last = String::new();
    for _ in 0..THROUGHPUT_MESSAGES / IN_FLIGHT {
        let r = alice.call("message.send_batch", json!({"to": "Bob", "texts": batch})).await;
        last = r["message_ids"].as_array().unwrap().last().unwrap().as_str().unwrap().to_string();
    }
    loop {
        let s = alice.call("message.status", json!({"message_id": last})).await;
        if s["status"] == "delivered" || s["status"] == "read" {
            break;
        }
        events.wait_for("deliveries", |_| true).await;
    }
    let batched = (THROUGHPUT_MESSAGES / IN_FLIGHT * IN_FLIGHT) as f64 / start.elapsed().as_secs_f64();
    (rate, batched, latencies)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mut bare_rate, mut bare_p50, mut bare_p99) = (Vec::new(), Vec::new(), Vec::new());
    let (mut k_rate, mut k_p50, mut k_p99, mut k_batched) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds() {
        let (r, l) = runtime.block_on(bare_round());
        bare_rate.push(r);
        bare_p50.push(pct(&l, 50.0));
        bare_p99.push(pct(&l, 99.0));
        let (r, b, l) = runtime.block_on(kabar_round());
        k_rate.push(r);
        k_batched.push(b);
        k_p50.push(pct(&l, 50.0));
        k_p99.push(pct(&l, 99.0));
        println!(
            "round {round}: bare {:.0}/s, kabar {:.0}/s, kabar batched {:.0}/s",
            bare_rate[round], k_rate[round], k_batched[round]
        );
    }
    let (br, kr) = (median(bare_rate), median(k_rate));
    println!("\n| | messages/s (one-way) | latency p50 | latency p99 |");
    println!("|---|---|---|---|");
    println!(
        "| bare rust-libp2p request-response, {IN_FLIGHT} in flight | {br:.0} | {:.3} ms | {:.3} ms |",
        median(bare_p50),
        median(bare_p99)
    );
    println!(
        "| Kabar, 2 nodes, durable, via the control socket | {kr:.0} | {:.3} ms | {:.3} ms |",
        median(k_p50),
        median(k_p99)
    );
    let kb = median(k_batched);
    println!("| Kabar, durable, `message.send_batch` of {IN_FLIGHT} | {kb:.0} | — | — |");
    println!("\nKabar / bare: {:.3}× one by one, {:.3}× batched", kr / br, kb / br);
}
