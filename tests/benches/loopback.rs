//! Two nodes on loopback, 1 KiB texts: Kabar's one-way throughput and
//! latency (durable at both ends), each row beside its floor measured in the
//! same run: a bare rust-libp2p request-response pair on the same transport
//! (TCP + Noise + Yamux, Kabar's envelope codec) carrying the same requests
//! (envelopes per request, streams, requests in flight) with no crypto and
//! no storage, and bare redb doing the durable commits of the same sizes.
//!
//! Run: `cargo bench -p kabar-tests --bench loopback` (prints a table; medians
//! of 3 rounds; `KABAR_BENCH_ROUNDS` changes the count).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kabar_crypto::ProfileKind::Personal;
use kabar_node::wire::{Ack, EnvelopeCodec, PROTOCOL};
use kabar_tests::{TestNode, introduce};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, noise, tcp, yamux};
use redb::{Database, Durability, TableDefinition};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// Rounds (medians are quoted); `KABAR_BENCH_ROUNDS` overrides.
fn rounds() -> usize {
    std::env::var("KABAR_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3)
}
/// Messages per throughput run.
const MESSAGES: usize = 2_048;
/// Messages of the latency run (one at a time).
const LATENCY_MESSAGES: usize = 200;
/// Texts per `message.send_batch` call, and envelopes per request of its
/// floor.
const BATCH: usize = 64;
/// Control clients calling `message.send` at once, each one message at a
/// time.
const CLIENTS: usize = 16;
/// Kabar's envelope protocol streams per connection (node/src/network.rs):
/// the bare pair gets the same.
const STREAMS: usize = 16;
/// `message.send_batch` calls in flight on one connection in the pipelined row.
const PIPELINE: usize = 4;
/// How long a run may take before the benchmark gives up.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

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

// ---------------------------------------------------------------------------
// The network floor: a bare request-response pair.

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
                request_response::Config::default().with_max_concurrent_streams(STREAMS),
            )
        })
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build()
}

/// A connected bare pair: the client's swarm and the server's PeerId (the
/// server answers every request with one `Accepted` per envelope).
async fn bare_pair() -> (Bare, PeerId, tokio::task::JoinHandle<()>) {
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
    let task = tokio::spawn(async move {
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
    let mut pair = (client, server_id, task);
    // Warm the connection up.
    bare_run(&mut pair.0, server_id, 1, 1, 1).await;
    (pair.0, pair.1, pair.2)
}

/// Sends `messages` 1 KiB envelopes, `per_request` per request, with at most
/// `in_flight` requests outstanding; returns when every request is answered
/// (in any order), as messages/s.
async fn bare_run(client: &mut Bare, server: PeerId, messages: usize, per_request: usize, in_flight: usize) -> f64 {
    let request = vec![text().into_bytes(); per_request];
    let requests = messages.div_ceil(per_request);
    let start = Instant::now();
    let (mut sent, mut done) = (0, 0);
    while done < requests {
        while sent < requests && sent - done < in_flight {
            client.behaviour_mut().send_request(&server, request.clone());
            sent += 1;
        }
        match client.select_next_some().await {
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { .. },
                ..
            }) => done += 1,
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                panic!("bare request failed: {error}")
            }
            _ => {}
        }
    }
    (requests * per_request) as f64 / start.elapsed().as_secs_f64()
}

/// The bare pair, one envelope per request, one at a time: sorted latencies
/// in ms.
async fn bare_latencies(client: &mut Bare, server: PeerId) -> Vec<f64> {
    let mut latencies = Vec::with_capacity(LATENCY_MESSAGES);
    for _ in 0..LATENCY_MESSAGES {
        let t = Instant::now();
        bare_run(client, server, 1, 1, 1).await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));
    latencies
}

// ---------------------------------------------------------------------------
// The storage floor: bare redb.

/// Bare redb, `Durability::Immediate`: `messages` 1 KiB values in commits of
/// `per_commit`, at two ends at once (two databases in a fresh directory,
/// a thread each, as the sender and the receiver of a delivery commit
/// side by side), as messages/s through the slower end.
fn bare_redb(messages: usize, per_commit: usize) -> f64 {
    const TABLE: TableDefinition<'static, &[u8], &[u8]> = TableDefinition::new("messages");
    let dir = tempfile::tempdir().unwrap();
    let end = |file: &str| {
        let db = Database::create(dir.path().join(file)).unwrap();
        let body = text().into_bytes();
        move || {
            let start = Instant::now();
            let mut seq = 0u64;
            while (seq as usize) < messages {
                let mut tx = db.begin_write().unwrap();
                tx.set_durability(Durability::Immediate).unwrap();
                {
                    let mut t = tx.open_table(TABLE).unwrap();
                    for i in 0..per_commit as u64 {
                        t.insert((seq + i).to_be_bytes().as_slice(), body.as_slice()).unwrap();
                    }
                }
                tx.commit().unwrap();
                seq += per_commit as u64;
            }
            (seq, start.elapsed())
        }
    };
    let (sender, receiver) = (end("sender.redb"), end("receiver.redb"));
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(sender);
        let b = s.spawn(receiver);
        (a.join().unwrap(), b.join().unwrap())
    });
    a.0.min(b.0) as f64 / a.1.max(b.1).as_secs_f64()
}

// ---------------------------------------------------------------------------
// Kabar.

/// One control connection kept open (requests one at a time, as a client
/// that waits for each answer).
struct Conn {
    lines: BufReader<tokio::net::unix::OwnedReadHalf>,
    write: tokio::net::unix::OwnedWriteHalf,
}

impl Conn {
    async fn open(node: &TestNode) -> Conn {
        let (read, write) = UnixStream::connect(node.socket()).await.unwrap().into_split();
        Conn { lines: BufReader::new(read), write }
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.pipelined(method, &params, 1, 1).await.swap_remove(0)
    }

    /// Calls `method` `n` times with `params`, keeping up to `window` calls
    /// in flight on this one connection (JSON-RPC ids 1, 2, …; answers are
    /// matched by id, in whatever order they come). Returns the results in
    /// call order.
    async fn pipelined(&mut self, method: &str, params: &Value, n: usize, window: usize) -> Vec<Value> {
        let mut results = vec![Value::Null; n];
        let (mut sent, mut answered) = (0, 0);
        while answered < n {
            while sent < n && sent - answered < window {
                let request = json!({"jsonrpc": "2.0", "id": sent + 1, "method": method, "params": params});
                self.write.write_all(format!("{request}\n").as_bytes()).await.unwrap();
                sent += 1;
            }
            let mut line = String::new();
            tokio::time::timeout(RUN_TIMEOUT, self.lines.read_line(&mut line)).await.unwrap().unwrap();
            let reply: Value = serde_json::from_str(&line).unwrap();
            assert!(reply.get("error").is_none(), "{method}: {reply}");
            let id = reply["id"].as_u64().unwrap() as usize;
            assert!((1..=n).contains(&id) && results[id - 1].is_null(), "unexpected answer id {id}");
            results[id - 1] = reply["result"].clone();
            answered += 1;
        }
        results
    }
}

/// The ids the event stream has reported delivered, filled by a task.
#[derive(Clone, Default)]
struct Delivered {
    ids: Arc<Mutex<HashSet<String>>>,
    /// The stream lagged (events were dropped): ask for each status.
    lagged: Arc<std::sync::atomic::AtomicBool>,
    /// Times it lagged (reported with the round: those waits include a
    /// `message.status` call per message still pending).
    lags: Arc<std::sync::atomic::AtomicUsize>,
    changed: Arc<Notify>,
}

impl Delivered {
    fn follow(mut events: kabar_tests::Events) -> (Delivered, tokio::task::JoinHandle<()>) {
        let d = Delivered::default();
        let d2 = d.clone();
        let task = tokio::spawn(async move {
            loop {
                let e = events.wait_for("events", |_| true).await;
                if e["event"] == "lagged" {
                    d2.lagged.store(true, std::sync::atomic::Ordering::SeqCst);
                    d2.lags.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                } else if e["event"] == "status_changed" && (e["status"] == "delivered" || e["status"] == "read") {
                    d2.ids.lock().unwrap().insert(e["message_id"].as_str().unwrap().to_string());
                } else {
                    continue;
                }
                d2.changed.notify_waiters();
            }
        });
        (d, task)
    }

    /// Waits until every id of `ids` is delivered (in any order); panics if
    /// the task following the events has ended (its stream closed).
    async fn wait(&self, conn: &mut Conn, ids: &[String], follower: &tokio::task::JoinHandle<()>) {
        let deadline = Instant::now() + RUN_TIMEOUT;
        let mut pending: Vec<&String> = ids.iter().collect();
        loop {
            let notified = self.changed.notified();
            {
                let seen = self.ids.lock().unwrap();
                pending.retain(|id| !seen.contains(*id));
            }
            if pending.is_empty() {
                return;
            }
            if self.lagged.swap(false, std::sync::atomic::Ordering::SeqCst) {
                let mut still = Vec::new();
                for id in pending {
                    let s = conn.call("message.status", json!({"message_id": id})).await;
                    if s["status"] != "delivered" && s["status"] != "read" {
                        still.push(id);
                    }
                }
                pending = still;
                continue;
            }
            assert!(!follower.is_finished(), "the event stream ended");
            assert!(Instant::now() < deadline, "{} messages not delivered in time", pending.len());
            let _ = tokio::time::timeout(Duration::from_secs(1), notified).await;
        }
    }
}

fn id_of(reply: &Value) -> String {
    reply["message_id"].as_str().unwrap().to_string()
}

struct KabarRound {
    latencies: Vec<f64>,
    back_to_back: f64,
    batched: f64,
    pipelined: f64,
    clients: f64,
    /// Times the event stream lagged.
    lags: usize,
}

/// Kabar: two real nodes (durable stores, encryption), driven through the
/// control socket. Every throughput run ends when every id is delivered.
async fn kabar_round() -> KabarRound {
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let (delivered, follower) = Delivered::follow(alice.subscribe().await);
    let mut conn = Conn::open(&alice).await;
    let body = text();
    // Warm up (X3DH, connection).
    let first = id_of(&conn.call("message.send", json!({"to": "Bob", "text": "hello"})).await);
    delivered.wait(&mut conn, &[first], &follower).await;

    // Latency: one message at a time, from the call to its delivery.
    let mut latencies = Vec::with_capacity(LATENCY_MESSAGES);
    for _ in 0..LATENCY_MESSAGES {
        let t = Instant::now();
        let id = id_of(&conn.call("message.send", json!({"to": "Bob", "text": body})).await);
        delivered.wait(&mut conn, &[id], &follower).await;
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(|a, b| a.total_cmp(b));

    // One client, `message.send` back to back (each call waits for its
    // answer, not for the delivery).
    let start = Instant::now();
    let mut ids = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES {
        ids.push(id_of(&conn.call("message.send", json!({"to": "Bob", "text": body})).await));
    }
    delivered.wait(&mut conn, &ids, &follower).await;
    let back_to_back = MESSAGES as f64 / start.elapsed().as_secs_f64();

    // `message.send_batch` of BATCH, back to back.
    let start = Instant::now();
    let batch: Vec<String> = vec![body.clone(); BATCH];
    let mut ids = Vec::with_capacity(MESSAGES);
    for _ in 0..MESSAGES / BATCH {
        let r = conn.call("message.send_batch", json!({"to": "Bob", "texts": batch})).await;
        ids.extend(r["message_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()));
    }
    delivered.wait(&mut conn, &ids, &follower).await;
    let batched = ids.len() as f64 / start.elapsed().as_secs_f64();

    // The same calls, PIPELINE of them in flight on the one connection
    // (answered as they complete, matched by id).
    let start = Instant::now();
    let params = json!({"to": "Bob", "texts": batch});
    let ids: Vec<String> = conn
        .pipelined("message.send_batch", &params, MESSAGES / BATCH, PIPELINE)
        .await
        .iter()
        .flat_map(|r| {
            r["message_ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>()
        })
        .collect();
    delivered.wait(&mut conn, &ids, &follower).await;
    let pipelined = ids.len() as f64 / start.elapsed().as_secs_f64();

    // CLIENTS clients at once, each on its own connection calling
    // `message.send` one message at a time.
    let mut conns = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        conns.push(Conn::open(&alice).await);
    }
    let start = Instant::now();
    let sends = conns.iter_mut().map(|c| {
        let body = &body;
        async move {
            let mut ids = Vec::with_capacity(MESSAGES / CLIENTS);
            for _ in 0..MESSAGES / CLIENTS {
                ids.push(id_of(&c.call("message.send", json!({"to": "Bob", "text": body})).await));
            }
            ids
        }
    });
    let ids: Vec<String> = futures::future::join_all(sends).await.into_iter().flatten().collect();
    delivered.wait(&mut conn, &ids, &follower).await;
    let clients = ids.len() as f64 / start.elapsed().as_secs_f64();
    follower.abort();
    let lags = delivered.lags.load(std::sync::atomic::Ordering::SeqCst);
    KabarRound { latencies, back_to_back, batched, pipelined, clients, lags }
}

#[derive(Default)]
struct Medians(Vec<Vec<f64>>);

impl Medians {
    fn push(&mut self, row: usize, v: f64) {
        if self.0.len() <= row {
            self.0.resize(row + 1, Vec::new());
        }
        self.0[row].push(v);
    }

    fn get(&self, row: usize) -> f64 {
        median(self.0[row].clone())
    }

    fn rounds(&self, row: usize) -> String {
        let digits = if self.get(row) < 100.0 { 3 } else { 0 };
        self.0[row].iter().map(|v| format!("{v:.digits$}")).collect::<Vec<_>>().join(" / ")
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Rows, in the order of the table.
    const K_LAT: usize = 0;
    const B_LAT: usize = 1;
    const K_B2B: usize = 2;
    const B_B2B: usize = 3;
    const K_BATCH: usize = 4;
    const B_BATCH: usize = 5;
    const R_BATCH: usize = 6;
    const K_CLIENTS: usize = 7;
    const B_CLIENTS: usize = 8;
    const R_ONE: usize = 9;
    const K_P99: usize = 10;
    const B_P99: usize = 11;
    const R_CLIENTS: usize = 12;
    const K_PIPE: usize = 13;
    const R_PIPE: usize = 14;
    let mut m = Medians::default();
    for round in 0..rounds() {
        let (b_lat, b_b2b, b_batch, b_clients) = runtime.block_on(async {
            let (mut client, server, task) = bare_pair().await;
            let lat = bare_latencies(&mut client, server).await;
            let b2b = bare_run(&mut client, server, MESSAGES, 1, STREAMS).await;
            let batch = bare_run(&mut client, server, MESSAGES, BATCH, STREAMS).await;
            let clients = bare_run(&mut client, server, MESSAGES, 1, CLIENTS).await;
            task.abort();
            (lat, b2b, batch, clients)
        });
        let r_batch = bare_redb(MESSAGES, BATCH);
        let r_one = bare_redb(MESSAGES / 8, 1);
        let r_clients = bare_redb(MESSAGES / 2, CLIENTS);
        let r_pipe = bare_redb(MESSAGES, BATCH * PIPELINE);
        let k = runtime.block_on(kabar_round());
        m.push(K_LAT, pct(&k.latencies, 50.0));
        m.push(K_P99, pct(&k.latencies, 99.0));
        m.push(B_LAT, pct(&b_lat, 50.0));
        m.push(B_P99, pct(&b_lat, 99.0));
        m.push(K_B2B, k.back_to_back);
        m.push(B_B2B, b_b2b);
        m.push(K_BATCH, k.batched);
        m.push(B_BATCH, b_batch);
        m.push(R_BATCH, r_batch);
        m.push(K_CLIENTS, k.clients);
        m.push(B_CLIENTS, b_clients);
        m.push(R_ONE, r_one);
        m.push(R_CLIENTS, r_clients);
        m.push(K_PIPE, k.pipelined);
        m.push(R_PIPE, r_pipe);
        println!(
            "round {round}: kabar p50 {:.3} ms (bare {:.3}); back to back {:.0}/s (bare {:.0}, redb 1 per commit {:.0}); batched {:.0}/s (bare {:.0}, redb {:.0}); {PIPELINE} batches in flight {:.0}/s (redb {:.0}); {CLIENTS} clients {:.0}/s (bare {:.0}, redb {CLIENTS} per commit {:.0}); event stream lagged {} times",
            pct(&k.latencies, 50.0),
            pct(&b_lat, 50.0),
            k.back_to_back,
            b_b2b,
            r_one,
            k.batched,
            b_batch,
            r_batch,
            k.pipelined,
            r_pipe,
            k.clients,
            b_clients,
            r_clients,
            k.lags
        );
    }
    println!("\n| row | what it measures | messages/s | latency p50 | latency p99 |");
    println!("|---|---|---|---|---|");
    println!(
        "| Kabar, one at a time | a `message.send` call, then its `delivered` event, before the next | — | {:.3} ms | {:.3} ms |",
        m.get(K_LAT),
        m.get(K_P99)
    );
    println!(
        "| floor: bare pair, one at a time | one request of 1 envelope, then its response, before the next | — | {:.3} ms | {:.3} ms |",
        m.get(B_LAT),
        m.get(B_P99)
    );
    println!(
        "| Kabar, back to back | {MESSAGES} `message.send` calls on one connection, each waiting for its answer; ends when every id is delivered | {:.0} | — | — |",
        m.get(K_B2B)
    );
    println!(
        "| floor: bare pair | {MESSAGES} requests of 1 envelope, up to {STREAMS} in flight ({STREAMS} streams) | {:.0} | — | — |",
        m.get(B_B2B)
    );
    println!(
        "| floor: bare redb, one per commit | a durable commit of 1 × 1 KiB at each end (two databases, side by side) | {:.0} | — | — |",
        m.get(R_ONE)
    );
    println!(
        "| Kabar, `message.send_batch` of {BATCH} | {} calls back to back; ends when every id is delivered | {:.0} | — | — |",
        MESSAGES / BATCH,
        m.get(K_BATCH)
    );
    println!(
        "| floor: bare pair, batched | requests of {BATCH} envelopes, up to {STREAMS} in flight ({STREAMS} streams) | {:.0} | — | — |",
        m.get(B_BATCH)
    );
    println!(
        "| floor: bare redb, batched | a durable commit of {BATCH} × 1 KiB at each end (two databases, side by side) | {:.0} | — | — |",
        m.get(R_BATCH)
    );
    println!(
        "| Kabar, `message.send_batch` of {BATCH}, {PIPELINE} in flight | the same {} calls pipelined on one connection, up to {PIPELINE} unanswered; ends when every id is delivered | {:.0} | — | — |",
        MESSAGES / BATCH,
        m.get(K_PIPE)
    );
    println!(
        "| floor: bare redb, {PIPELINE} batches per commit | a durable commit of {} × 1 KiB at each end (two databases, side by side) | {:.0} | — | — |",
        BATCH * PIPELINE,
        m.get(R_PIPE)
    );
    println!(
        "| Kabar, {CLIENTS} clients | {CLIENTS} connections, each calling `message.send` one message at a time; ends when every id is delivered | {:.0} | — | — |",
        m.get(K_CLIENTS)
    );
    println!(
        "| floor: bare pair, {CLIENTS} in flight | requests of 1 envelope, up to {CLIENTS} in flight ({STREAMS} streams) | {:.0} | — | — |",
        m.get(B_CLIENTS)
    );
    println!(
        "| floor: bare redb, {CLIENTS} per commit | a durable commit of {CLIENTS} × 1 KiB at each end (two databases, side by side) | {:.0} | — | — |",
        m.get(R_CLIENTS)
    );
    println!("\nRounds (messages/s or ms):");
    for (name, row) in [
        ("Kabar p50", K_LAT),
        ("bare p50", B_LAT),
        ("Kabar back to back", K_B2B),
        ("bare back to back", B_B2B),
        ("Kabar batched", K_BATCH),
        ("bare batched", B_BATCH),
        ("redb batched", R_BATCH),
        ("Kabar pipelined batches", K_PIPE),
        ("redb pipelined batches per commit", R_PIPE),
        ("Kabar clients", K_CLIENTS),
        ("bare clients", B_CLIENTS),
        ("redb one per commit", R_ONE),
        ("redb clients per commit", R_CLIENTS),
    ] {
        println!("- {name}: {}", m.rounds(row));
    }
}
