//! Mailbox host: deposits/s and fetched messages/s of 1 KiB envelopes, all
//! durable, over the network and against two floors; then the memory of a
//! `kabar serve --mailbox` process holding 100,000 envelopes for 1,000
//! mailboxes.
//!
//! Throughput rows (every row [`RUNS`] runs, the median printed with every
//! run's figure; each row of each run on a fresh host in a fresh temporary
//! directory under the system temp dir, so every row starts from an empty
//! `mailboxes.redb`):
//!
//! - **network**: a real [`ServiceNode`] with mailboxes on (default limits)
//!   in this process, driven by real [`MailboxClient`]s over TCP on
//!   loopback (Noise, Yamux, request-response). Connections are made before
//!   the clock starts, except in the "fresh connection" row.
//! - **handle**: [`MailboxHost::handle`] called directly on the same kind of
//!   requests (capability and owner signatures checked, every table the host
//!   keeps written, one durable commit per request): the network and libp2p
//!   removed.
//! - **bare redb**: one `&[u8; 40] → &[u8]` table keyed mailbox ‖ seq, the
//!   value tag ‖ time ‖ envelope (as the host stores it), the same number of
//!   `Durability::Immediate` commits of the same bytes in the same batches; a
//!   page read is a range read of 64 values, a delete one commit removing
//!   them. No record, no expiry index, no signatures, no network: the floor.
//!
//! Workloads: 2,000 deposits of one envelope per request (what one message
//! to an offline contact costs); 150 deposits of 64 envelopes (9,600, under
//! the 10,000 quota; the node deposits at most 64 per request); 8 senders at
//! once, 50 requests of 64 each into 8 mailboxes; 200 times "connect with a
//! fresh identity, deposit one envelope, disconnect" (what the node does per
//! deposit); draining a mailbox of 6,400 envelopes by fetching pages of 64
//! and deleting each page (what the node's fetch round does); 1,000
//! fetches from an empty mailbox (a round trip with a signature check and a
//! read transaction but no commit: what the network adds per request). A
//! last check drains 6,400 envelopes from one source address, as the node's
//! fetch round would, and prints where the rate limiter stops it.
//!
//! The service node rate-limits per IP address (`mailbox/rate.rs`: deposits
//! 100/s in bursts of 500, owner requests 20/s in bursts of 100,
//! registrations 10 a minute in bursts of 10). To measure the host and not
//! the limiter, the benchmark re-executes itself in a private network
//! namespace (`unshare --net --map-root-user`) whose loopback has 500
//! addresses 127.0.1.1–127.0.2.250, each with a local route naming itself as
//! source, and every client dials a fresh one, staying under its bursts.
//! Hosts listen on 0.0.0.0 inside that namespace (nothing outside can reach
//! it).
//!
//! Memory: `target/release/kabar serve --mailbox` (or `$KABAR_BIN`) in its
//! own process in the namespace, fed over the network: 1,000 owner keys
//! registered, 100 envelopes deposited into each (8 senders, requests of
//! 64 + 36); `VmRSS` from `/proc/PID/status` before, after, after fetching
//! one mailbox and after fetching every mailbox (nothing deleted), with the
//! size of `mailboxes.redb`, and the size of a bare redb file given the same
//! values in the same commits. One run.
//!
//! Run with `cargo build --release -p kabar && cargo bench -p kabar-node
//! --bench mailbox` (needs `unshare` from util-linux and `ip` from
//! iproute2, and user namespaces or root).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write as _};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use kabar_node::mailbox::wire::{OwnerAuth, Request, Response};
use kabar_node::mailbox::{MailboxClient, MailboxError, MailboxHost, MailboxLimits, OwnerKey, Status, owner_message};
use kabar_node::service::{ServiceConfig, ServiceNode};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use rand::Rng as _;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use tempfile::TempDir;

/// Runs per row; the median is reported.
const RUNS: usize = 5;
/// Envelope size.
const ENVELOPE: usize = 1024;
/// The node's largest deposit and its fetch page.
const BATCH: usize = 64;
const PAGE: u16 = 64;
const ONE_BY_ONE: usize = 2_000;
const BATCHED_REQUESTS: usize = 150;
const SENDERS: usize = 8;
const REQUESTS_PER_SENDER: usize = 50;
const FRESH_CONNECTIONS: usize = 200;
const DRAIN: usize = 6_400;
const EMPTY_FETCHES: usize = 1_000;
/// The memory part.
const MAILBOXES: usize = 1_000;
const PER_MAILBOX: usize = 100;

/// Per source address, below the limiter's bursts (deposit 500, owner 100,
/// register 10).
const DEPOSITS_PER_IP: usize = 450;
const OWNER_REQUESTS_PER_IP: usize = 90;
const REGISTERS_PER_IP: usize = 8;
/// Source addresses in the namespace.
const POOL: u32 = 500;
const NETNS_ENV: &str = "KABAR_MAILBOX_BENCH_NETNS";
const WAIT: Duration = Duration::from_secs(15);
const TAG: [u8; 16] = [1; 16];

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn random_envelopes(n: usize) -> Vec<Vec<u8>> {
    let mut rng = rand::rng();
    (0..n)
        .map(|_| {
            let mut e = vec![0u8; ENVELOPE];
            rng.fill_bytes(&mut e);
            e
        })
        .collect()
}

fn per_second(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

// ---------------------------------------------------------------------------
// The network namespace.

/// Re-executes this benchmark in a new network namespace (returns only
/// inside it) and gives its loopback [`POOL`] source addresses.
fn enter_namespace() {
    if std::env::var_os(NETNS_ENV).is_none() {
        let status = Command::new("unshare")
            .args(["--net", "--map-root-user", "--"])
            .arg(std::env::current_exe().unwrap())
            .args(std::env::args_os().skip(1))
            .env(NETNS_ENV, "1")
            .status()
            .expect("running unshare (util-linux)");
        std::process::exit(status.code().unwrap_or(1));
    }
    run_ip(&["link", "set", "lo", "up"], None);
    let mut batch = String::new();
    for i in 0..POOL {
        let ip = source(i);
        writeln!(batch, "route add local {ip}/32 dev lo table local src {ip}").unwrap();
    }
    run_ip(&["-batch", "-"], Some(&batch));
}

fn run_ip(args: &[&str], stdin: Option<&str>) {
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .expect("running ip (iproute2)");
    if let Some(text) = stdin {
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    }
    assert!(child.wait().unwrap().success(), "ip {args:?} failed");
}

/// The `i`th source address: 127.0.1.1 … 127.0.2.250.
fn source(i: u32) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1 + (i / 250) as u8, 1 + (i % 250) as u8)
}

// ---------------------------------------------------------------------------
// Over the network.

/// A mailbox host reachable from every source address; each client dials a
/// new one (a fresh rate-limit bucket).
struct Target {
    peer: PeerId,
    port: u16,
    next_ip: u32,
}

impl Target {
    fn from_address(address: &str) -> Target {
        let addr: Multiaddr = address.parse().unwrap();
        let port = addr.iter().find_map(|p| if let Protocol::Tcp(p) = p { Some(p) } else { None }).unwrap();
        let peer = addr.iter().find_map(|p| if let Protocol::P2p(p) = p { Some(p) } else { None }).unwrap();
        Target { peer, port, next_ip: 0 }
    }

    fn fresh_address(&mut self) -> Multiaddr {
        assert!(self.next_ip < POOL, "out of source addresses");
        let ip = source(self.next_ip);
        self.next_ip += 1;
        Multiaddr::empty().with(Protocol::Ip4(ip)).with(Protocol::Tcp(self.port)).with(Protocol::P2p(self.peer))
    }

    async fn client(&mut self) -> MailboxClient {
        MailboxClient::connect(&self.fresh_address(), WAIT).await.unwrap()
    }

    async fn register(&mut self, key: &OwnerKey) {
        self.client().await.register(key, now_ms()).await.unwrap();
    }
}

/// A service node with mailboxes (default limits) in this process.
struct InProcess {
    node: ServiceNode,
    target: Target,
    _dir: TempDir,
}

async fn start_host() -> InProcess {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ServiceConfig::new(dir.path().to_path_buf());
    config.listen = vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()];
    config.mailbox = Some(MailboxLimits::default());
    let node = ServiceNode::start(config).await.unwrap();
    let addresses = tokio::time::timeout(WAIT, node.wait_listening(1)).await.unwrap();
    InProcess { node, target: Target::from_address(&addresses[0]), _dir: dir }
}

async fn deposit_all(client: &mut MailboxClient, key: &OwnerKey, envelopes: &[Vec<u8>]) {
    let out = client.deposit(&key.capability(TAG), envelopes).await.unwrap();
    assert_eq!((out.accepted, out.status), (envelopes.len(), Status::Ok));
}

/// `requests` deposits of `per_request` envelopes from one sender, one at a
/// time; envelopes/s.
async fn net_deposits(per_request: usize, requests: usize) -> f64 {
    let mut host = start_host().await;
    let key = OwnerKey::generate(&mut rand::rng());
    host.target.register(&key).await;
    let envelopes = random_envelopes(per_request);
    let mut senders = Vec::new();
    for _ in 0..requests.div_ceil(DEPOSITS_PER_IP) {
        senders.push(host.target.client().await);
    }
    let start = Instant::now();
    for i in 0..requests {
        deposit_all(&mut senders[i / DEPOSITS_PER_IP], &key, &envelopes).await;
    }
    let rate = per_second(per_request * requests, start.elapsed());
    drop(senders);
    host.node.shutdown().await;
    rate
}

/// [`SENDERS`] senders at once, each into its own mailbox; envelopes/s.
async fn net_concurrent() -> f64 {
    let mut host = start_host().await;
    let envelopes = random_envelopes(BATCH);
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        let key = OwnerKey::generate(&mut rand::rng());
        host.target.register(&key).await;
        senders.push((key, host.target.client().await));
    }
    let start = Instant::now();
    let tasks: Vec<_> = senders
        .into_iter()
        .map(|(key, mut client)| {
            let envelopes = envelopes.clone();
            tokio::spawn(async move {
                for _ in 0..REQUESTS_PER_SENDER {
                    deposit_all(&mut client, &key, &envelopes).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let rate = per_second(SENDERS * REQUESTS_PER_SENDER * BATCH, start.elapsed());
    host.node.shutdown().await;
    rate
}

/// Connect with a fresh identity, deposit one envelope, disconnect;
/// deposits/s and the median time of `connect` alone.
async fn net_fresh_connections() -> (f64, Duration) {
    let mut host = start_host().await;
    let key = OwnerKey::generate(&mut rand::rng());
    host.target.register(&key).await;
    let envelopes = random_envelopes(1);
    let addresses: Vec<_> =
        (0..FRESH_CONNECTIONS.div_ceil(DEPOSITS_PER_IP)).map(|_| host.target.fresh_address()).collect();
    let mut connects = Vec::with_capacity(FRESH_CONNECTIONS);
    let start = Instant::now();
    for i in 0..FRESH_CONNECTIONS {
        let t = Instant::now();
        let mut client = MailboxClient::connect(&addresses[i / DEPOSITS_PER_IP], WAIT).await.unwrap();
        connects.push(t.elapsed().as_secs_f64());
        deposit_all(&mut client, &key, &envelopes).await;
    }
    let rate = per_second(FRESH_CONNECTIONS, start.elapsed());
    host.node.shutdown().await;
    (rate, Duration::from_secs_f64(median(&connects)))
}

/// Drains [`DRAIN`] envelopes (deposited before the clock starts) by
/// fetching pages of 64 and deleting each page; envelopes/s.
async fn net_drain() -> f64 {
    let mut host = start_host().await;
    let key = OwnerKey::generate(&mut rand::rng());
    host.target.register(&key).await;
    let envelopes = random_envelopes(BATCH);
    let mut sender = host.target.client().await;
    for _ in 0..DRAIN / BATCH {
        deposit_all(&mut sender, &key, &envelopes).await;
    }
    drop(sender);
    // Two owner requests per page.
    let pages_per_client = OWNER_REQUESTS_PER_IP / 2;
    let mut owners = Vec::new();
    for _ in 0..(DRAIN / BATCH + 1).div_ceil(pages_per_client) {
        owners.push(host.target.client().await);
    }
    let start = Instant::now();
    let (mut after, mut drained, mut page) = (0, 0, 0);
    loop {
        let owner = &mut owners[page / pages_per_client];
        let (items, more) = owner.fetch(&key, after, PAGE, now_ms()).await.unwrap();
        let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
        assert_eq!(usize::from(owner.delete(&key, &seqs, now_ms()).await.unwrap()), seqs.len());
        drained += items.len();
        page += 1;
        match seqs.last() {
            Some(&last) if more => after = last,
            _ => break,
        }
    }
    let rate = per_second(drained, start.elapsed());
    assert_eq!(drained, DRAIN);
    host.node.shutdown().await;
    rate
}

/// Fetches from an empty mailbox: a round trip with no commit; requests/s.
async fn net_empty_fetches() -> f64 {
    let mut host = start_host().await;
    let key = OwnerKey::generate(&mut rand::rng());
    host.target.register(&key).await;
    let mut owners = Vec::new();
    for _ in 0..EMPTY_FETCHES.div_ceil(OWNER_REQUESTS_PER_IP) {
        owners.push(host.target.client().await);
    }
    let start = Instant::now();
    for i in 0..EMPTY_FETCHES {
        let (items, _) = owners[i / OWNER_REQUESTS_PER_IP].fetch(&key, 0, PAGE, now_ms()).await.unwrap();
        assert!(items.is_empty());
    }
    let rate = per_second(EMPTY_FETCHES, start.elapsed());
    drop(owners);
    host.node.shutdown().await;
    rate
}

/// One owner on one source address draining [`DRAIN`] envelopes as the
/// node's fetch round does: how many pages before the limiter refuses.
async fn net_drain_one_address() -> (usize, Status) {
    let mut host = start_host().await;
    let key = OwnerKey::generate(&mut rand::rng());
    host.target.register(&key).await;
    let envelopes = random_envelopes(BATCH);
    let mut sender = host.target.client().await;
    for _ in 0..DRAIN / BATCH {
        deposit_all(&mut sender, &key, &envelopes).await;
    }
    let mut owner = host.target.client().await;
    let (mut after, mut pages) = (0, 0);
    let refusal = loop {
        let (items, more) = match owner.fetch(&key, after, PAGE, now_ms()).await {
            Ok(page) => page,
            Err(MailboxError::Refused(s)) => break s,
            Err(e) => panic!("{e}"),
        };
        let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
        match owner.delete(&key, &seqs, now_ms()).await {
            Ok(_) => {}
            Err(MailboxError::Refused(s)) => break s,
            Err(e) => panic!("{e}"),
        }
        pages += 1;
        match seqs.last() {
            Some(&last) if more => after = last,
            _ => break Status::Ok,
        }
    };
    host.node.shutdown().await;
    (pages, refusal)
}

// ---------------------------------------------------------------------------
// MailboxHost::handle, no network.

struct Direct {
    host: MailboxHost,
    me: PeerId,
    client: PeerId,
    key: OwnerKey,
    _dir: TempDir,
}

impl Direct {
    fn open() -> Direct {
        let dir = tempfile::tempdir().unwrap();
        let host = MailboxHost::open(dir.path(), MailboxLimits::default()).unwrap();
        let key = OwnerKey::generate(&mut rand::rng());
        let mut d = Direct { host, me: PeerId::random(), client: PeerId::random(), key, _dir: dir };
        let mailbox = d.key.mailbox_id();
        assert_eq!(d.owner(|auth| Request::Register { mailbox, auth }), Response::Done(Status::Ok));
        d
    }

    /// An owner request signed as `MailboxClient` signs it, handled.
    fn owner(&mut self, make: impl Fn(OwnerAuth) -> Request) -> Response {
        let auth = OwnerAuth { time_ms: now_ms(), signature: [0; 64] };
        let unsigned = make(auth).unsigned_body().unwrap();
        let signing = SigningKey::from_bytes(&self.key.to_bytes());
        let signature = signing.sign(&owner_message(&self.me, &self.client, &unsigned)).to_bytes();
        let req = make(OwnerAuth { signature, ..auth });
        self.host.handle(&req, &self.me, &self.client, now_ms())
    }

    fn deposit_request(&self, per_request: usize) -> Request {
        let cap = self.key.capability(TAG);
        Request::Deposit {
            mailbox: cap.mailbox,
            tag: cap.tag,
            cap_sig: cap.signature,
            envelopes: random_envelopes(per_request),
        }
    }

    fn deposit(&mut self, req: &Request, n: usize) {
        let res = self.host.handle(req, &self.me, &self.client, now_ms());
        assert_eq!(res, Response::Deposited { status: Status::Ok, accepted: n as u16 });
    }
}

fn direct_deposits(per_request: usize, requests: usize) -> f64 {
    let mut d = Direct::open();
    let req = d.deposit_request(per_request);
    let start = Instant::now();
    for _ in 0..requests {
        d.deposit(&req, per_request);
    }
    per_second(per_request * requests, start.elapsed())
}

fn direct_empty_fetches() -> f64 {
    let mut d = Direct::open();
    let mailbox = d.key.mailbox_id();
    let start = Instant::now();
    for _ in 0..EMPTY_FETCHES {
        let res = d.owner(|auth| Request::Fetch { mailbox, after: 0, max: PAGE, auth });
        assert_eq!(res, Response::Fetched { more: false, items: Vec::new() });
    }
    per_second(EMPTY_FETCHES, start.elapsed())
}

fn direct_drain() -> f64 {
    let mut d = Direct::open();
    let req = d.deposit_request(BATCH);
    for _ in 0..DRAIN / BATCH {
        d.deposit(&req, BATCH);
    }
    let mailbox = d.key.mailbox_id();
    let start = Instant::now();
    let (mut after, mut drained) = (0, 0);
    loop {
        let Response::Fetched { items, more } = d.owner(|auth| Request::Fetch { mailbox, after, max: PAGE, auth })
        else {
            panic!("fetch refused")
        };
        let seqs: Vec<u64> = items.iter().map(|i| i.seq).collect();
        let deleted = d.owner(|auth| Request::Delete { mailbox, seqs: seqs.clone(), auth });
        assert_eq!(deleted, Response::Deleted { deleted: seqs.len() as u16 });
        drained += items.len();
        match seqs.last() {
            Some(&last) if more => after = last,
            _ => break,
        }
    }
    assert_eq!(drained, DRAIN);
    per_second(drained, start.elapsed())
}

// ---------------------------------------------------------------------------
// Bare redb: the floor.

const ITEMS: TableDefinition<'static, &[u8; 40], &[u8]> = TableDefinition::new("items");

struct Bare {
    db: Database,
    mailbox: [u8; 32],
    next_seq: u64,
    _dir: TempDir,
}

impl Bare {
    fn open() -> Bare {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::create(dir.path().join("bare.redb")).unwrap();
        let mut mailbox = [0u8; 32];
        rand::rng().fill_bytes(&mut mailbox);
        Bare { db, mailbox, next_seq: 1, _dir: dir }
    }

    fn key(&self, seq: u64) -> [u8; 40] {
        let mut k = [0u8; 40];
        k[..32].copy_from_slice(&self.mailbox);
        k[32..].copy_from_slice(&seq.to_be_bytes());
        k
    }

    /// Values as the host stores them: tag ‖ time ‖ envelope.
    fn values(per_request: usize) -> Vec<Vec<u8>> {
        random_envelopes(per_request)
            .into_iter()
            .map(|e| {
                let mut v = TAG.to_vec();
                v.extend_from_slice(&now_ms().to_be_bytes());
                v.extend_from_slice(&e);
                v
            })
            .collect()
    }

    fn insert(&mut self, values: &[Vec<u8>]) {
        let mut tx = self.db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate).unwrap();
        {
            let mut table = tx.open_table(ITEMS).unwrap();
            for v in values {
                table.insert(&self.key(self.next_seq), &v[..]).unwrap();
                self.next_seq += 1;
            }
        }
        tx.commit().unwrap();
    }
}

fn bare_deposits(per_request: usize, requests: usize) -> f64 {
    let mut b = Bare::open();
    let values = Bare::values(per_request);
    let start = Instant::now();
    for _ in 0..requests {
        b.insert(&values);
    }
    per_second(per_request * requests, start.elapsed())
}

fn bare_empty_reads() -> f64 {
    let b = Bare::open();
    let tx = b.db.begin_write().unwrap();
    tx.open_table(ITEMS).unwrap();
    tx.commit().unwrap();
    let start = Instant::now();
    for _ in 0..EMPTY_FETCHES {
        let tx = b.db.begin_read().unwrap();
        let table = tx.open_table(ITEMS).unwrap();
        let (from, to) = (b.key(1), b.key(u64::MAX));
        assert_eq!(table.range::<&[u8; 40]>(&from..=&to).unwrap().count(), 0);
    }
    per_second(EMPTY_FETCHES, start.elapsed())
}

fn bare_drain() -> f64 {
    let mut b = Bare::open();
    let values = Bare::values(BATCH);
    for _ in 0..DRAIN / BATCH {
        b.insert(&values);
    }
    let start = Instant::now();
    let (mut after, mut drained) = (0u64, 0);
    loop {
        let page: Vec<(u64, Vec<u8>)> = {
            let tx = b.db.begin_read().unwrap();
            let table = tx.open_table(ITEMS).unwrap();
            let (from, to) = (b.key(after + 1), b.key(u64::MAX));
            table
                .range::<&[u8; 40]>(&from..=&to)
                .unwrap()
                .take(usize::from(PAGE))
                .map(|e| {
                    let (k, v) = e.unwrap();
                    let seq = u64::from_be_bytes(k.value()[32..].try_into().unwrap());
                    (seq, v.value().to_vec())
                })
                .collect()
        };
        let Some(&(last, _)) = page.last() else { break };
        let mut tx = b.db.begin_write().unwrap();
        tx.set_durability(Durability::Immediate).unwrap();
        {
            let mut table = tx.open_table(ITEMS).unwrap();
            for (seq, _) in &page {
                assert!(table.remove(&b.key(*seq)).unwrap().is_some());
            }
        }
        tx.commit().unwrap();
        drained += page.len();
        after = last;
    }
    assert_eq!(drained, DRAIN);
    per_second(drained, start.elapsed())
}

// ---------------------------------------------------------------------------
// Memory of a `kabar serve --mailbox` process.

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// `VmRSS (RssAnon)`.
fn rss(pid: u32) -> String {
    format!("{} ({} anonymous)", mib(status_kib(pid, "VmRSS:")), mib(status_kib(pid, "RssAnon:")))
}

/// The floor of the file size: the same values, in the same requests and
/// order as the network load, in one bare table; bytes.
fn bare_file_size() -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bare.redb");
    let db = Database::create(&path).unwrap();
    let mailboxes: Vec<[u8; 32]> = (0..MAILBOXES)
        .map(|_| {
            let mut m = [0u8; 32];
            rand::rng().fill_bytes(&mut m);
            m
        })
        .collect();
    let values = Bare::values(PER_MAILBOX);
    let per_sender = MAILBOXES / SENDERS;
    for i in 0..per_sender {
        for part in [0..BATCH, BATCH..PER_MAILBOX] {
            for s in 0..SENDERS {
                let mailbox = &mailboxes[s * per_sender + i];
                let mut tx = db.begin_write().unwrap();
                tx.set_durability(Durability::Immediate).unwrap();
                {
                    let mut table = tx.open_table(ITEMS).unwrap();
                    for seq in part.clone() {
                        let mut k = [0u8; 40];
                        k[..32].copy_from_slice(mailbox);
                        k[32..].copy_from_slice(&(seq as u64).to_be_bytes());
                        table.insert(&k, &values[seq][..]).unwrap();
                    }
                }
                tx.commit().unwrap();
            }
        }
    }
    drop(db);
    std::fs::metadata(&path).unwrap().len()
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

struct Serve {
    child: std::process::Child,
    target: Target,
    dir: TempDir,
}

fn spawn_serve(bin: &Path) -> Serve {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin)
        .arg("--data-dir")
        .arg(dir.path())
        .args(["serve", "--mailbox", "--listen", "/ip4/0.0.0.0/tcp/0", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    let address = json["addresses"][0].as_str().unwrap();
    Serve { target: Target::from_address(address), child, dir }
}

async fn fetch_everything(client: &mut MailboxClient, key: &OwnerKey) -> usize {
    let (mut after, mut n) = (0, 0);
    loop {
        let (items, more) = client.fetch(key, after, PAGE, now_ms()).await.unwrap();
        n += items.len();
        match items.last() {
            Some(last) if more => after = last.seq,
            _ => return n,
        }
    }
}

async fn memory(bin: &Path) -> Vec<(String, String)> {
    let mut serve = spawn_serve(bin);
    let pid = serve.child.id();
    let mut out = Vec::new();
    out.push(("started, no mailboxes".to_string(), rss(pid)));

    let keys: Vec<OwnerKey> = (0..MAILBOXES).map(|_| OwnerKey::generate(&mut rand::rng())).collect();
    let start = Instant::now();
    for chunk in keys.chunks(REGISTERS_PER_IP) {
        let mut client = serve.target.client().await;
        for key in chunk {
            client.register(key, now_ms()).await.unwrap();
        }
    }
    let registered = start.elapsed();
    out.push((format!("{MAILBOXES} mailboxes registered ({registered:.2?})"), rss(pid)));

    let envelopes = random_envelopes(PER_MAILBOX);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for chunk in keys.chunks(MAILBOXES / SENDERS) {
        let mut client = serve.target.client().await;
        let (chunk, envelopes) = (chunk.to_vec(), envelopes.clone());
        tasks.push(tokio::spawn(async move {
            for key in &chunk {
                deposit_all(&mut client, key, &envelopes).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let elapsed = start.elapsed();
    let total = MAILBOXES * PER_MAILBOX;
    let rate = per_second(total, elapsed);
    let file = std::fs::metadata(serve.dir.path().join("mailboxes.redb")).unwrap().len();
    out.push((
        format!(
            "{total} envelopes deposited ({SENDERS} senders, {elapsed:.2?}, {rate:.0} envelopes/s); mailboxes.redb {}",
            mib(file / 1024)
        ),
        rss(pid),
    ));

    let mut owner = serve.target.client().await;
    assert_eq!(fetch_everything(&mut owner, &keys[0]).await, PER_MAILBOX);
    out.push(("after fetching one mailbox (100 envelopes)".to_string(), rss(pid)));

    // Two fetches per mailbox, none deleted.
    let per_client = OWNER_REQUESTS_PER_IP / 2;
    let start = Instant::now();
    for chunk in keys.chunks(per_client) {
        let mut owner = serve.target.client().await;
        for key in chunk {
            assert_eq!(fetch_everything(&mut owner, key).await, PER_MAILBOX);
        }
    }
    let elapsed = start.elapsed();
    out.push((
        format!(
            "after fetching every mailbox, nothing deleted ({elapsed:.2?}, {:.0} envelopes/s)",
            per_second(total, elapsed)
        ),
        rss(pid),
    ));
    out.push(("peak (VmHWM)".to_string(), mib(status_kib(pid, "VmHWM:"))));
    let floor = bare_file_size();
    out.push((
        "floor: the same values in the same commits in one bare redb table: file size".to_string(),
        mib(floor / 1024),
    ));
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    out
}

// ---------------------------------------------------------------------------

struct Row {
    name: String,
    network: Vec<f64>,
    handle: Vec<f64>,
    bare: Vec<f64>,
}

fn cell(v: &[f64]) -> String {
    if v.is_empty() { "—".to_string() } else { format!("{:.0}", median(v)) }
}

fn runs(v: &[f64]) -> String {
    v.iter().map(|x| format!("{x:.0}")).collect::<Vec<_>>().join(" / ")
}

fn main() {
    enter_namespace();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let began = Instant::now();
    let row = |name: &str| Row { name: name.to_string(), network: Vec::new(), handle: Vec::new(), bare: Vec::new() };
    let mut one = row("deposit, 1 envelope per request");
    let mut batched = row("deposit, 64 envelopes per request");
    let mut concurrent = row("deposit, 64 per request, 8 senders at once");
    let mut fresh = row("connect (fresh identity) + deposit 1 envelope");
    let mut drain = row("fetch 64 + delete 64, until empty");
    let mut empty = row("fetch from an empty mailbox (no commit; requests/s)");
    let mut connects = Vec::new();
    for run in 0..RUNS {
        eprintln!("run {} of {RUNS} ({:.0?} so far)", run + 1, began.elapsed());
        one.network.push(runtime.block_on(net_deposits(1, ONE_BY_ONE)));
        one.handle.push(direct_deposits(1, ONE_BY_ONE));
        one.bare.push(bare_deposits(1, ONE_BY_ONE));
        batched.network.push(runtime.block_on(net_deposits(BATCH, BATCHED_REQUESTS)));
        batched.handle.push(direct_deposits(BATCH, BATCHED_REQUESTS));
        batched.bare.push(bare_deposits(BATCH, BATCHED_REQUESTS));
        concurrent.network.push(runtime.block_on(net_concurrent()));
        let (rate, connect) = runtime.block_on(net_fresh_connections());
        fresh.network.push(rate);
        connects.push(connect.as_secs_f64() * 1000.0);
        drain.network.push(runtime.block_on(net_drain()));
        drain.handle.push(direct_drain());
        drain.bare.push(bare_drain());
        empty.network.push(runtime.block_on(net_empty_fetches()));
        empty.handle.push(direct_empty_fetches());
        empty.bare.push(bare_empty_reads());
    }
    let (pages, refusal) = runtime.block_on(net_drain_one_address());

    println!();
    println!("Mailbox host, 1 KiB envelopes, durable; envelopes/s, median of {RUNS} runs");
    println!();
    println!(
        "| workload | network (ServiceNode + MailboxClient) | MailboxHost::handle, no network | bare redb | network ÷ handle | network ÷ bare |"
    );
    println!("|---|---|---|---|---|---|");
    let ratio = |a: &[f64], b: &[f64]| {
        if b.is_empty() {
            "—".to_string()
        } else {
            let r = median(a) / median(b);
            if r < 0.01 { format!("{r:.4}×") } else { format!("{r:.2}×") }
        }
    };
    for r in [&one, &batched, &concurrent, &fresh, &drain, &empty] {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.name,
            cell(&r.network),
            cell(&r.handle),
            cell(&r.bare),
            ratio(&r.network, &r.handle),
            ratio(&r.network, &r.bare)
        );
    }
    println!();
    println!("connect alone (fresh identity, TCP + Noise + Yamux): median {:.2} ms", median(&connects));
    println!("runs:");
    for r in [&one, &batched, &concurrent, &fresh, &drain, &empty] {
        println!("  {}: network {}; handle {}; bare {}", r.name, runs(&r.network), runs(&r.handle), runs(&r.bare));
    }
    let connect_runs: Vec<String> = connects.iter().map(|c| format!("{c:.2}")).collect();
    println!("  connect ms: {}", connect_runs.join(" / "));
    println!(
        "one owner on one address draining {DRAIN}: {pages} pages of {PAGE} fetched and deleted, then {}",
        if refusal == Status::Ok { "empty".to_string() } else { format!("refused: {refusal}") }
    );

    let bin = std::env::var_os("KABAR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/kabar"));
    println!();
    if bin.exists() {
        println!("Memory of `{} serve --mailbox` (VmRSS), one run", bin.display());
        println!();
        println!("| state | VmRSS |");
        println!("|---|---|");
        for (state, rss) in runtime.block_on(memory(&bin)) {
            println!("| {state} | {rss} |");
        }
    } else {
        println!("{} not found: build it with `cargo build --release -p kabar` (memory part skipped)", bin.display());
    }
    eprintln!("done in {:.0?}", began.elapsed());
}
