//! `kabar testnet run`: a test network of real node processes, its traffic,
//! and the report (delivery, latency, throughput, memory; with `--nat` also
//! reachability: NAT types, direct and relayed connections, hole punching).
//!
//! Every node is a child process (`kabar node run`) with its own data
//! directory holding a personal and a business profile. By default the nodes
//! listen on loopback and node 0 is the bootstrap peer. With `--nat` they run
//! in a network lab (kabar-lab): each node in its own home behind its own NAT
//! router, symmetric or endpoint-independent, and `kabar serve` relays on
//! public hosts, which are also the bootstrap peers. The parent introduces
//! contact cards through each node's control socket (a Unix socket, reachable
//! from outside the lab's namespaces), sends traffic through it, and measures
//! delivery from the nodes' event streams.
//!
//! # Layout
//! - `TestnetOptions`, `NatOptions`: what `main` parsed.
//! - `Network`: where the nodes run (loopback, or a `NatLab`) and how a node
//!   process starts there; `NodeProc`: one node process, restartable.
//! - `run`: the phases (start, reserve relay slots, introduce, connect,
//!   traffic, let hole punching settle, count) and the report.
//! - Pure tallies over what was measured: `percentile`,
//!   `first_message_latencies`, `count_connections`,
//!   `hole_punching_settled`, `hole_punch_summary`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use indicatif::{ProgressBar, ProgressStyle};
use kabar_crypto::ProfileKind;
use kabar_lab::{Host, Lab, LabProcess, Nat};
use kabar_storage::{DataDir, KdfParams};
use rand::rngs::StdRng;
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

use crate::client::Client;

const PASSPHRASE: &str = "kabar testnet (not a secret)";
/// Contacts each personal profile has among the other personal profiles.
const FRIENDS: usize = 3;
/// Customers each business has among the other nodes' personal profiles.
const CUSTOMERS: usize = 2;
/// Longest wait for the first line (the start report) of a process in the lab.
const LAB_START_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP and UDP port of the relays (`kabar serve`) in the lab.
const RELAY_PORT: u16 = 4040;

/// Options of `kabar testnet run`.
pub(crate) struct TestnetOptions {
    pub(crate) nodes: usize,
    pub(crate) messages: usize,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) keep: bool,
    pub(crate) json: bool,
    pub(crate) kill_rate: f64,
    pub(crate) timeout: Duration,
    /// Run in a network lab behind NATs (`--nat`).
    pub(crate) nat: Option<NatOptions>,
}

/// Options of `kabar testnet run --nat`.
pub(crate) struct NatOptions {
    /// Probability that a node is behind a symmetric NAT (else endpoint-independent).
    pub(crate) symmetric: f64,
    /// Seed of the run's choices (NAT types, contacts, traffic); random when `None`.
    pub(crate) seed: Option<u64>,
    /// Number of relays (public hosts running `kabar serve`).
    pub(crate) relays: usize,
}

/// Where the nodes run, and what a node process needs to join the network.
enum Network {
    /// On loopback; every node bootstraps from the first one that started.
    Loopback { bootstrap: Option<String> },
    /// In a network lab, each node in its own home behind a NAT.
    Lab(Box<NatLab>),
}

impl Network {
    /// The command that runs node `index` (`kabar node run` on `dir`, with
    /// the network flags of where it runs).
    fn node_command(&self, index: usize, dir: &Path) -> Result<Command> {
        let exe = std::env::current_exe()?;
        let mut cmd = match self {
            Network::Loopback { .. } => Command::new(exe),
            Network::Lab(lab) => lab.homes[index].command(exe),
        };
        cmd.arg("--data-dir").arg(dir).args(["--json", "node", "run"]);
        match self {
            Network::Loopback { bootstrap } => {
                cmd.args(["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns", "--dht-server"]);
                if let Some(b) = bootstrap {
                    cmd.args(["--bootstrap", b]);
                }
            }
            Network::Lab(lab) => {
                let relay = lab.relay_for(index);
                cmd.args(["--listen", "/ip4/0.0.0.0/tcp/0", "--listen", "/ip4/0.0.0.0/udp/0/quic-v1", "--no-mdns"])
                    .args(["--relay", relay, "--bootstrap", relay]);
            }
        }
        Ok(cmd)
    }

    /// `RUST_LOG` of the processes unless set: in the lab, `info` keeps the
    /// relay reservations and hole-punch outcomes in the logs.
    fn default_log(&self) -> &'static str {
        match self {
            Network::Loopback { .. } => "warn",
            Network::Lab(_) => "info",
        }
    }

    /// Starts `cmd` (from [`Network::node_command`]) and returns the
    /// process with its first line of output.
    fn spawn(&mut self, cmd: &mut Command) -> Result<(NodeChild, String)> {
        match self {
            Network::Loopback { .. } => {
                let mut child = cmd.spawn().context("starting a node process")?;
                let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"));
                let child = NodeChild::Local(child);
                let mut line = String::new();
                BufReader::new(stdout?).read_line(&mut line)?;
                Ok((child, line))
            }
            Network::Lab(lab) => {
                let mut process = lab.lab.spawn(cmd).context("starting a node process in the lab")?;
                let line = process.stdout_lines()?.next_within(LAB_START_TIMEOUT)?;
                Ok((NodeChild::Lab(process), line))
            }
        }
    }

    /// Notes a node that started: on loopback, the first one is everyone's
    /// bootstrap peer.
    fn started(&mut self, node: &NodeProc) {
        if let Network::Loopback { bootstrap } = self
            && bootstrap.is_none()
        {
            *bootstrap = Some(node.personal_addr.clone());
        }
    }
}

/// The lab of `--nat`: relays on public hosts, and one home per node, each
/// behind its own NAT router.
struct NatLab {
    seed: u64,
    /// Per node index: the NAT in front of it, and its home host.
    nats: Vec<Nat>,
    homes: Vec<Host>,
    relays: Vec<RelayProc>,
    /// Declared last, so it drops last: its Drop kills every process it
    /// started and deletes its namespaces.
    lab: Lab,
}

impl NatLab {
    /// Builds the lab for `nodes` nodes and starts the relays. Node i is
    /// behind a symmetric NAT with probability `opts.symmetric`, drawn from
    /// `rng` in node order.
    fn build(opts: &NatOptions, seed: u64, nodes: usize, root: &Path, rng: &mut StdRng) -> Result<NatLab> {
        let mut lab = Lab::new().context("building the network lab")?;
        let nats: Vec<Nat> = (0..nodes)
            .map(|_| if rng.random_bool(opts.symmetric) { Nat::Symmetric } else { Nat::EndpointIndependent })
            .collect();
        let relay_hosts =
            (0..opts.relays).map(|r| lab.public_host(&format!("relay-{r:02}"))).collect::<Result<Vec<_>, _>>()?;
        let homes = nats
            .iter()
            .enumerate()
            .map(|(i, nat)| lab.home(&format!("node-{i:02}"), *nat))
            .collect::<Result<Vec<_>, _>>()?;
        let mut relays = Vec::with_capacity(relay_hosts.len());
        for (r, host) in relay_hosts.into_iter().enumerate() {
            relays.push(RelayProc::start(&mut lab, host, &root.join(format!("relay-{r:02}")))?);
        }
        Ok(NatLab { seed, nats, homes, relays, lab })
    }

    /// The relay of node `index` (round robin over the relays).
    fn relay_for(&self, index: usize) -> &str {
        &self.relays[index % self.relays.len()].address
    }
}

/// A `kabar serve` process on a public host of the lab.
struct RelayProc {
    host: Host,
    /// `/ip4/<ip>/tcp/4040/p2p/<PeerId>`.
    address: String,
    /// Killed on drop.
    _process: LabProcess,
}

impl RelayProc {
    fn start(lab: &mut Lab, host: Host, dir: &Path) -> Result<RelayProc> {
        let log_path = dir.with_extension("log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let exe = std::env::current_exe()?;
        let mut cmd = host.command(exe);
        cmd.args(["--json", "--data-dir"])
            .arg(dir)
            .arg("serve")
            .args(["--listen", &format!("/ip4/0.0.0.0/tcp/{RELAY_PORT}")])
            .args(["--listen", &format!("/ip4/0.0.0.0/udp/{RELAY_PORT}/quic-v1")])
            .arg("--autonat-private")
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = lab.spawn(&mut cmd).context("starting a relay in the lab")?;
        let line = process
            .stdout_lines()?
            .next_within(LAB_START_TIMEOUT)
            .with_context(|| format!("the relay did not start; see {}", log_path.display()))?;
        let started: Value = serde_json::from_str(&line).context("the relay's start report")?;
        let peer = started["peer_id"].as_str().ok_or_else(|| anyhow!("the relay reported no peer id: {line}"))?;
        let address = format!("/ip4/{}/tcp/{RELAY_PORT}/p2p/{peer}", host.ip());
        Ok(RelayProc { host, address, _process: process })
    }
}

/// A node's running process: our child, or one the lab started in a
/// namespace. Dropping it kills it.
enum NodeChild {
    Local(Child),
    Lab(LabProcess),
}

impl NodeChild {
    fn id(&self) -> u32 {
        match self {
            NodeChild::Local(c) => c.id(),
            NodeChild::Lab(p) => p.id(),
        }
    }

    fn running(&mut self) -> bool {
        match self {
            NodeChild::Local(c) => matches!(c.try_wait(), Ok(None)),
            NodeChild::Lab(p) => matches!(p.try_wait(), Ok(None)),
        }
    }
}

impl Drop for NodeChild {
    fn drop(&mut self) {
        // A LabProcess kills itself on drop.
        if let NodeChild::Local(c) = self {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

struct NodeProc {
    index: usize,
    dir: PathBuf,
    child: Option<NodeChild>,
    personal_addr: String,
    pid: u32,
    peak_rss_kib: u64,
    restarts: u32,
}

impl NodeProc {
    fn start(index: usize, dir: &Path, net: &mut Network) -> Result<NodeProc> {
        let mut node = NodeProc {
            index,
            dir: dir.to_path_buf(),
            child: None,
            personal_addr: String::new(),
            pid: 0,
            peak_rss_kib: 0,
            restarts: 0,
        };
        node.spawn(net)?;
        Ok(node)
    }

    fn spawn(&mut self, net: &mut Network) -> Result<()> {
        let log_path = self.dir.join("node.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = net.node_command(self.index, &self.dir)?;
        cmd.env("KABAR_PASSPHRASE", PASSPHRASE)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| net.default_log().into()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log);
        let did_not_start = || format!("node {} did not start; see {}", self.index, log_path.display());
        let (child, line) = net.spawn(&mut cmd).with_context(did_not_start)?;
        let started: Value = serde_json::from_str(&line).with_context(did_not_start)?;
        self.personal_addr = started["profiles"][0]["listen_addrs"][0].as_str().unwrap_or_default().to_string();
        self.pid = child.id();
        self.child = Some(child);
        Ok(())
    }

    fn sample_rss(&mut self) {
        if let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", self.pid)) {
            for line in status.lines() {
                if let Some(v) = line.strip_prefix("VmHWM:") {
                    let kib: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
                    self.peak_rss_kib = self.peak_rss_kib.max(kib);
                }
            }
        }
    }

    fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(NodeChild::running)
    }

    fn kill(&mut self) {
        self.sample_rss();
        self.child = None;
    }

    fn client(&self) -> Result<Client> {
        Client::connect(&self.dir)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Ctrl-C as a flag the run's loops check: they then return an error, so
/// the nodes and the lab drop (the lab's Drop kills every process in it and
/// deletes its namespaces). A second Ctrl-C exits at once.
#[derive(Clone, Default)]
struct Interrupt(Option<Arc<AtomicBool>>);

impl Interrupt {
    /// Catches Ctrl-C from now on.
    fn install() -> Result<Interrupt> {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel(1);
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let mut sigint = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                while sigint.recv().await.is_some() {
                    if set.swap(true, Ordering::SeqCst) {
                        std::process::exit(130);
                    }
                }
            });
        });
        ready_rx.recv().context("the Ctrl-C handler did not start")?.context("catching Ctrl-C")?;
        Ok(Interrupt(Some(flag)))
    }

    fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// An error once Ctrl-C was pressed.
    fn check(&self) -> Result<()> {
        if self.is_set() {
            bail!("interrupted");
        }
        Ok(())
    }

    /// Blocks until Ctrl-C (catching it from now on if not yet).
    fn wait(self) -> Result<()> {
        let this = if self.0.is_some() { self } else { Interrupt::install()? };
        while !this.is_set() {
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

/// One message of the traffic.
struct Sent {
    from: usize,
    to_node: usize,
    to_profile: &'static str,
    tag: String,
    at: Instant,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The first message of each (sender, receiving profile) pair: the two
/// nodes (positions in the node list) and its latency in ms, `None` when it
/// has no delivery time (lost, or confirmed from the store only).
fn first_message_latencies(
    sent: &HashMap<String, Sent>,
    delivered: &HashMap<String, Instant>,
) -> Vec<((usize, usize), Option<f64>)> {
    let mut first: HashMap<(usize, usize, &str), (&str, Instant)> = HashMap::new();
    for (id, s) in sent {
        let e = first.entry((s.from, s.to_node, s.to_profile)).or_insert((id, s.at));
        if s.at < e.1 {
            *e = (id, s.at);
        }
    }
    let mut out: Vec<((usize, usize), Option<f64>)> = first
        .into_iter()
        .map(|((from, to, _), (id, at))| {
            ((from, to), delivered.get(id).map(|t| t.duration_since(at).as_secs_f64() * 1000.0))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.unwrap_or(f64::NAN).total_cmp(&b.1.unwrap_or(f64::NAN))));
    out
}

/// p50 and max of the measured latencies among `first`.
fn first_message_summary<'a>(first: impl Iterator<Item = &'a ((usize, usize), Option<f64>)>) -> Value {
    let mut pairs = 0;
    let mut ms: Vec<f64> = Vec::new();
    for (_, latency) in first {
        pairs += 1;
        ms.extend(*latency);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    json!({"pairs": pairs, "measured": ms.len(), "p50": percentile(&ms, 50.0), "max": ms.last()})
}

/// One profile's reachability, as its node's `node.info` reports it.
#[derive(Debug, Clone, Default)]
struct ProfileReach {
    /// Node index.
    node: usize,
    name: String,
    peer_id: String,
    /// AutoNAT's verdict.
    autonat: String,
    /// Connected peers other than relays, and whether directly.
    peers: Vec<(String, bool)>,
    attempts: u64,
    succeeded: u64,
    direct_after_ms: Vec<u64>,
}

impl ProfileReach {
    fn from_info(node: usize, p: &Value) -> ProfileReach {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let hp = &p["hole_punch"];
        ProfileReach {
            node,
            name: s(&p["name"]),
            peer_id: s(&p["peer_id"]),
            autonat: s(&p["nat"]),
            peers: p["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| (s(&x["peer_id"]), x["connection"] == "direct"))
                .collect(),
            attempts: hp["attempts"].as_u64().unwrap_or(0),
            succeeded: hp["succeeded"].as_u64().unwrap_or(0),
            direct_after_ms: hp["direct_after_ms"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect(),
        }
    }
}

/// Every profile of `nodes`, as `node.info` reports it now.
fn reach_snapshot(nodes: &[NodeProc]) -> Result<Vec<ProfileReach>> {
    let mut profiles = Vec::new();
    for node in nodes {
        let info = node.client()?.call("node.info", json!({}))?;
        for p in info["profiles"].as_array().into_iter().flatten() {
            profiles.push(ProfileReach::from_info(node.index, p));
        }
    }
    Ok(profiles)
}

/// Whether every pair of `profiles` still connected through a relay has had
/// its hole-punch outcome. DCUtR reports a failure on one side only (the
/// side reached through the relay, after its last dial), so the pairs are
/// settled once the failures are at least the relayed pairs.
fn hole_punching_settled(profiles: &[ProfileReach], nats: &[Nat]) -> bool {
    let failed: u64 = profiles.iter().map(|p| p.attempts.saturating_sub(p.succeeded)).sum();
    let (total, _) = count_connections(profiles, nats);
    failed >= total.relayed as u64
}

/// Connected pairs of profiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PairCount {
    direct: usize,
    relayed: usize,
}

/// The classes of pairs `count_connections` splits by.
const PAIR_CLASSES: [&str; 4] = ["ei-ei", "ei-sym", "sym-sym", "same-node"];

/// "ei-ei", "ei-sym" or "sym-sym" by the NATs of two nodes, or "same-node".
fn pair_class(a: usize, b: usize, nats: &[Nat]) -> &'static str {
    if a == b {
        return "same-node";
    }
    let sym = |n: usize| nats.get(n) == Some(&Nat::Symmetric);
    match (sym(a), sym(b)) {
        (false, false) => "ei-ei",
        (true, true) => "sym-sym",
        _ => "ei-sym",
    }
}

/// Each unordered pair of `profiles` connected to each other, counted once
/// (direct if either side reports a direct connection): in total, and by
/// the NATs of their nodes (`nats`, by node index). Peers that are not
/// among `profiles` are ignored.
fn count_connections(profiles: &[ProfileReach], nats: &[Nat]) -> (PairCount, BTreeMap<&'static str, PairCount>) {
    let owner: HashMap<&str, usize> = profiles.iter().enumerate().map(|(k, p)| (p.peer_id.as_str(), k)).collect();
    let mut pairs: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    for (k, p) in profiles.iter().enumerate() {
        for (peer, direct) in &p.peers {
            if let Some(&j) = owner.get(peer.as_str())
                && j != k
            {
                *pairs.entry((k.min(j), k.max(j))).or_insert(false) |= *direct;
            }
        }
    }
    let mut total = PairCount::default();
    let mut by_class: BTreeMap<&'static str, PairCount> =
        PAIR_CLASSES.iter().map(|c| (*c, PairCount::default())).collect();
    for ((a, b), direct) in pairs {
        let class = by_class.entry(pair_class(profiles[a].node, profiles[b].node, nats)).or_default();
        for count in [&mut total, class] {
            if direct {
                count.direct += 1;
            } else {
                count.relayed += 1;
            }
        }
    }
    (total, by_class)
}

/// Hole-punch outcomes summed over `profiles` (per side: both ends of one
/// punch may count it).
fn hole_punch_summary(profiles: &[ProfileReach]) -> Value {
    let attempts: u64 = profiles.iter().map(|p| p.attempts).sum();
    let succeeded: u64 = profiles.iter().map(|p| p.succeeded).sum();
    let mut after: Vec<f64> = profiles.iter().flat_map(|p| p.direct_after_ms.iter().map(|&ms| ms as f64)).collect();
    after.sort_by(|a, b| a.total_cmp(b));
    json!({
        "attempts": attempts,
        "succeeded": succeeded,
        "success_rate": (attempts > 0).then(|| succeeded as f64 / attempts as f64),
        "direct_after_ms": {"p50": percentile(&after, 50.0), "p95": percentile(&after, 95.0)},
    })
}

fn nat_name(nat: Nat) -> &'static str {
    match nat {
        Nat::EndpointIndependent => "endpoint-independent",
        Nat::Symmetric => "symmetric",
    }
}

/// Whether a profile (from `node.info`) holds a relay reservation and
/// advertises a circuit address.
fn holds_reservation(profile: &Value) -> bool {
    let reserved = profile["relays"].as_array().is_some_and(|r| r.iter().any(|r| r["reserved"] == true));
    let circuit = profile["advertised"]
        .as_array()
        .is_some_and(|a| a.iter().any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit"))));
    reserved && circuit
}

/// Waits, at most `timeout`, until every profile of every node holds a relay
/// reservation and advertises a circuit address (so its card carries one).
fn wait_reserved(nodes: &[NodeProc], timeout: Duration, interrupt: &Interrupt, progress: &ProgressBar) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        interrupt.check()?;
        let mut waiting = Vec::new();
        for node in nodes {
            let info = node.client()?.call("node.info", json!({}))?;
            let profiles = info["profiles"].as_array().map(Vec::as_slice).unwrap_or_default();
            if profiles.is_empty() || !profiles.iter().all(holds_reservation) {
                waiting.push(node.index);
            }
        }
        progress.set_position((nodes.len() - waiting.len()) as u64);
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("within {timeout:?}, nodes {waiting:?} did not all hold a relay reservation with a circuit address");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The report's reachability fields (`nat`, `connections`, `hole_punch`,
/// `time_to_first_delivered_ms`).
fn reachability_report(
    lab: &NatLab,
    profiles: &[ProfileReach],
    reserved_after: Duration,
    (settled, settle): (bool, Duration),
    first: &[((usize, usize), Option<f64>)],
) -> Value {
    let symmetric = lab.nats.iter().filter(|n| **n == Nat::Symmetric).count();
    let mut per_node: BTreeMap<usize, Value> = BTreeMap::new();
    for p in profiles {
        let entry = per_node
            .entry(p.node)
            .or_insert_with(|| json!({"node": p.node, "nat": nat_name(lab.nats[p.node]), "autonat": {}}));
        entry["autonat"][&p.name] = json!(p.autonat);
    }
    let (total, by_class) = count_connections(profiles, &lab.nats);
    let counts = |c: PairCount| json!({"direct": c.direct, "relayed": c.relayed});
    let mut first_ms = first_message_summary(first.iter());
    first_ms["by_nat"] = PAIR_CLASSES
        .iter()
        .filter(|c| **c != "same-node")
        .map(|c| {
            let class = first.iter().filter(|((a, b), _)| pair_class(*a, *b, &lab.nats) == *c);
            (c.to_string(), first_message_summary(class))
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    let mut hole_punch = hole_punch_summary(profiles);
    hole_punch["settled"] = json!(settled);
    hole_punch["settle_ms"] = json!(settle.as_millis() as u64);
    json!({
        "nat": {
            "seed": lab.seed,
            "symmetric_nodes": symmetric,
            "endpoint_independent_nodes": lab.nats.len() - symmetric,
            "relays": lab.relays.len(),
            "relay_addresses": lab.relays.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
            "time_to_reserve_ms": reserved_after.as_millis() as u64,
            "per_node": per_node.into_values().collect::<Vec<_>>(),
        },
        "connections": {
            "direct": total.direct,
            "relayed": total.relayed,
            "by_nat": by_class.into_iter().map(|(k, c)| (k.to_string(), counts(c))).collect::<serde_json::Map<_, _>>(),
        },
        "hole_punch": hole_punch,
        "time_to_first_delivered_ms": first_ms,
    })
}

/// The text form of [`reachability_report`].
fn print_reachability(r: &Value) {
    let nat = &r["nat"];
    let ms = |v: &Value| v.as_f64().map_or_else(|| "n/a".to_string(), |v| format!("{v:.0} ms"));
    let relays = nat["relays"].as_u64().unwrap_or(0);
    println!("  reachability");
    println!(
        "    NATs                {} endpoint-independent, {} symmetric (seed {}; {relays} relay{})",
        nat["endpoint_independent_nodes"],
        nat["symmetric_nodes"],
        nat["seed"],
        if relays == 1 { "" } else { "s" }
    );
    let per_node: Vec<String> = nat["per_node"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let kind = if n["nat"] == "symmetric" { "sym" } else { "EI" };
            format!("{:02} {kind}", n["node"].as_u64().unwrap_or(0))
        })
        .collect();
    for (k, chunk) in per_node.chunks(10).enumerate() {
        println!("    {:<20}{}", if k == 0 { "per node" } else { "" }, chunk.join(", "));
    }
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for n in nat["per_node"].as_array().into_iter().flatten() {
        for v in n["autonat"].as_object().into_iter().flat_map(|o| o.values()) {
            *verdicts.entry(v.as_str().unwrap_or("?").to_string()).or_default() += 1;
        }
    }
    let verdicts: Vec<String> = verdicts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    println!("    AutoNAT (profiles)  {}", verdicts.join(", "));
    println!(
        "    relay slots after   {:.2} s (every profile reserved, circuit address advertised)",
        nat["time_to_reserve_ms"].as_f64().unwrap_or(0.0) / 1000.0
    );
    let c = &r["connections"];
    let hp = &r["hole_punch"];
    let settle_s = hp["settle_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    println!("    connected pairs     {} direct, {} relayed (pairs of profiles)", c["direct"], c["relayed"]);
    if hp["settled"] == true {
        println!("      counted           once hole punching settled, {settle_s:.1} s after the traffic");
    } else {
        println!(
            "      counted           {settle_s:.1} s after the traffic; hole punching had NOT settled (attempts running)"
        );
    }
    let classes: Vec<String> = PAIR_CLASSES
        .iter()
        .filter(|k| **k != "same-node" || c["by_nat"][**k] != json!({"direct": 0, "relayed": 0}))
        .map(|k| format!("{k} {}/{}", c["by_nat"][*k]["direct"], c["by_nat"][*k]["relayed"]))
        .collect();
    println!("      by NAT pair       {} (direct/relayed)", classes.join(", "));
    let rate = hp["success_rate"].as_f64().map_or_else(|| "n/a".to_string(), |r| format!("{:.1} %", 100.0 * r));
    println!("    hole punching       {} attempts, {} succeeded ({rate})", hp["attempts"], hp["succeeded"]);
    println!("      (per-side outcomes summed over profiles: a success may count on both ends, a failure on one)");
    println!(
        "    direct after        p50 {}, p95 {} (relayed connection → direct)",
        ms(&hp["direct_after_ms"]["p50"]),
        ms(&hp["direct_after_ms"]["p95"])
    );
    let f = &r["time_to_first_delivered_ms"];
    println!(
        "    first message       p50 {}, max {} over {} of {} sender → receiver pairs",
        ms(&f["p50"]),
        ms(&f["max"]),
        f["measured"],
        f["pairs"]
    );
    println!("      (send → delivered of each pair's first message: includes connection set-up through the relay)");
    let classes: Vec<String> = PAIR_CLASSES
        .iter()
        .filter(|c| f["by_nat"][**c]["measured"].as_u64().unwrap_or(0) > 0)
        .map(|c| format!("{c} {} / {}", ms(&f["by_nat"][*c]["p50"]), ms(&f["by_nat"][*c]["max"])))
        .collect();
    println!("      by NAT pair       {} (p50 / max)", classes.join(", "));
}

/// Runs the test network and prints the report.
pub(crate) fn run(opts: TestnetOptions) -> Result<()> {
    if opts.nodes < 2 {
        bail!("a test network needs at least 2 nodes");
    }
    if !(0.0..=1.0).contains(&opts.kill_rate) {
        bail!("--kill-rate is a probability per message, between 0 and 1");
    }
    if let Some(nat) = &opts.nat {
        if !(0.0..=1.0).contains(&nat.symmetric) {
            bail!("--symmetric is a share of the nodes, between 0 and 1");
        }
        if nat.relays == 0 {
            bail!("--nat needs at least one relay");
        }
        Lab::available().map_err(|e| anyhow!("`--nat` needs root and nftables: {e}"))?;
    }
    let tmp;
    let root = match &opts.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("kabar-testnet-").tempdir()?;
            if opts.keep { tmp.keep() } else { tmp.path().to_path_buf() }
        }
    };
    let progress = if opts.json { ProgressBar::hidden() } else { ProgressBar::new(opts.nodes as u64) };
    progress.set_style(
        ProgressStyle::with_template("{msg:<24} [{bar:40}] {pos}/{len} {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );

    // 1. The lab (with --nat), data directories and node processes. With
    // --nat the seeded RNG draws the NAT types, then the contacts and the
    // traffic, so a seed repeats a run's plan; keys always come from the OS.
    let started = Instant::now();
    let mut key_rng = rand::rng();
    let (interrupt, mut rng, mut net) = match &opts.nat {
        None => (Interrupt::default(), StdRng::from_rng(&mut rand::rng()), Network::Loopback { bootstrap: None }),
        Some(nat) => {
            progress.set_message("building the lab");
            let interrupt = Interrupt::install()?;
            let seed = nat.seed.unwrap_or_else(|| rand::rng().random());
            let mut rng = StdRng::seed_from_u64(seed);
            let lab = NatLab::build(nat, seed, opts.nodes, &root, &mut rng)?;
            (interrupt, rng, Network::Lab(Box::new(lab)))
        }
    };
    progress.set_message("starting nodes");
    let mut nodes: Vec<NodeProc> = Vec::with_capacity(opts.nodes);
    let mut failed_to_start = Vec::new();
    for i in 0..opts.nodes {
        interrupt.check()?;
        let dir = root.join(format!("node-{i:02}"));
        if !dir.join(kabar_storage::header::HEADER_FILE).exists() {
            let mut data = DataDir::create(&dir, PASSPHRASE.as_bytes(), KdfParams::TESTNET)?;
            data.create_profile("personal", ProfileKind::Personal, 1_700_000_000, &mut key_rng)?;
            data.create_profile("shop", ProfileKind::Business, 1_700_000_000, &mut key_rng)?;
        }
        match NodeProc::start(i, &dir, &mut net) {
            Ok(n) => {
                net.started(&n);
                nodes.push(n);
            }
            Err(e) => {
                failed_to_start.push(format!("node {i}: {e:#}"));
                if i == 0 && matches!(net, Network::Loopback { .. }) {
                    bail!("the bootstrap node failed to start: {e:#}");
                }
            }
        }
        progress.inc(1);
    }
    let n = nodes.len();
    if n < 2 {
        bail!("fewer than 2 nodes started: {}", failed_to_start.join("; "));
    }

    // 1b. With --nat: every profile holds a relay slot, so cards carry
    // circuit addresses.
    let mut reserved_after = Duration::ZERO;
    if let Network::Lab(_) = net {
        progress.set_message("reserving relay slots");
        progress.set_position(0);
        progress.set_length(n as u64);
        wait_reserved(&nodes, opts.timeout, &interrupt, &progress)?;
        reserved_after = started.elapsed();
    }

    // 2. Contact cards: each personal profile knows FRIENDS others; each
    // business has CUSTOMERS customers.
    progress.set_message("introducing contacts");
    progress.set_position(0);
    progress.set_length(n as u64);
    let mut cards: HashMap<(usize, &str), String> = HashMap::new();
    for node in &nodes {
        let mut c = node.client()?;
        for profile in ["personal", "shop"] {
            let card =
                c.call("card.get", json!({"profile": profile, "name": format!("{profile}-{:02}", node.index)}))?;
            cards.insert((node.index, profile), card["card"].as_str().unwrap_or_default().to_string());
        }
    }
    let mut friends: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut customers_of: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for k in 1..=FRIENDS.min(n - 1) {
            let j = (i + k) % n;
            if !friends[i].contains(&j) {
                friends[i].push(j);
                friends[j].push(i);
            }
        }
        let mut others: Vec<usize> = (0..n).filter(|&j| j != i).collect();
        others.shuffle(&mut rng);
        customers_of[i] = others.into_iter().take(CUSTOMERS.min(n - 1)).collect();
    }
    for (i, node) in nodes.iter().enumerate() {
        interrupt.check()?;
        let mut c = node.client()?;
        for &j in &friends[i] {
            c.call("contact.add", json!({"profile": "personal", "card": cards[&(nodes[j].index, "personal")], "name": format!("friend-{:02}", nodes[j].index)}))?;
        }
        for (b, shop_customers) in customers_of.iter().enumerate() {
            if shop_customers.contains(&i) {
                c.call("contact.add", json!({"profile": "personal", "card": cards[&(nodes[b].index, "shop")], "name": format!("shop-{:02}", nodes[b].index)}))?;
            }
        }
        progress.inc(1);
    }

    // 3. Wait until every node is connected (to the bootstrap node at least;
    // with --nat, to its relay).
    progress.set_message("connecting");
    let connect_deadline = Instant::now() + opts.timeout;
    loop {
        interrupt.check()?;
        let mut all = true;
        for node in &nodes {
            let info = node.client()?.call("node.info", json!({}))?;
            if info["profiles"][0]["connected_peers"].as_u64().unwrap_or(0) == 0 {
                all = false;
            }
        }
        if all {
            break;
        }
        if Instant::now() > connect_deadline {
            bail!("the network did not connect within {:?}", opts.timeout);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let connected_after = started.elapsed();

    // 4. Event readers: delivery times per message id.
    let delivered: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let spawn_reader = |node: &NodeProc, delivered: Arc<Mutex<HashMap<String, Instant>>>| -> Result<()> {
        let mut client = node.client()?;
        client.subscribe()?;
        std::thread::spawn(move || {
            loop {
                match client.next_event(Instant::now() + Duration::from_secs(3600)) {
                    Ok(Some(e)) => {
                        if e["event"] == "status_changed"
                            && matches!(e["status"].as_str(), Some("delivered" | "read"))
                            && let Some(id) = e["message_id"].as_str()
                            && let Ok(mut map) = delivered.lock()
                        {
                            map.entry(id.to_string()).or_insert_with(Instant::now);
                        }
                    }
                    Ok(None) => {}
                    Err(_) => return,
                }
            }
        });
        Ok(())
    };
    for node in &nodes {
        spawn_reader(node, delivered.clone())?;
    }

    // 5. Traffic: M messages per node to random contacts.
    let total = n * opts.messages;
    progress.set_message("sending");
    progress.set_position(0);
    progress.set_length(total as u64);
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut kills = 0u32;
    let traffic_start = Instant::now();
    let mut order: Vec<usize> = (0..total).map(|k| k % n).collect();
    order.shuffle(&mut rng);
    let mut clients: Vec<Option<Client>> = nodes.iter().map(|nd| nd.client().ok()).collect();
    for (k, &i) in order.iter().enumerate() {
        interrupt.check()?;
        if opts.kill_rate > 0.0 && rng.random::<f64>() < opts.kill_rate {
            let victim = rng.random_range(1..n);
            nodes[victim].kill();
            kills += 1;
            nodes[victim].spawn(&mut net)?;
            nodes[victim].restarts += 1;
            spawn_reader(&nodes[victim], delivered.clone())?;
            clients[victim] = nodes[victim].client().ok();
        }
        let shops: Vec<usize> =
            customers_of.iter().enumerate().filter(|(_, c)| c.contains(&i)).map(|(b, _)| b).collect();
        let to_shop = !shops.is_empty() && rng.random_bool(0.3);
        let (to_node, to_profile, name) = if to_shop {
            let b = *shops.choose(&mut rng).ok_or_else(|| anyhow!("no shop"))?;
            (b, "shop", format!("shop-{:02}", nodes[b].index))
        } else {
            let j = *friends[i].choose(&mut rng).ok_or_else(|| anyhow!("no friends"))?;
            (j, "personal", format!("friend-{:02}", nodes[j].index))
        };
        let tag = format!("tn-{k}-{}", rng.random::<u32>());
        let text = format!("{tag} {}", "x".repeat(64));
        let at = Instant::now();
        let Some(client) = clients[i].as_mut() else { continue };
        match client.call("message.send", json!({"profile": "personal", "to": name, "text": text})) {
            Ok(v) => {
                let id = v["message_id"].as_str().unwrap_or_default().to_string();
                sent.insert(id, Sent { from: i, to_node, to_profile, tag, at });
            }
            Err(e) => {
                progress.println(format!("node {i}: send failed: {e:#}"));
                clients[i] = nodes[i].client().ok();
            }
        }
        progress.inc(1);
    }
    let send_phase = traffic_start.elapsed();

    // 6. Wait for deliveries.
    progress.set_message("awaiting deliveries");
    progress.set_position(0);
    let deadline = Instant::now() + opts.timeout;
    // Deliveries whose event we could not see (the sender was restarted and
    // acknowledged before its new event stream was subscribed): confirmed
    // from the sender's store instead; no latency for those.
    let mut confirmed_from_store: HashSet<String> = HashSet::new();
    let mut polls = 0u32;
    loop {
        interrupt.check()?;
        let done = delivered.lock().map(|m| sent.keys().filter(|id| m.contains_key(*id)).count()).unwrap_or(0);
        let missing: Vec<String> = delivered
            .lock()
            .map(|m| {
                sent.keys().filter(|id| !m.contains_key(*id) && !confirmed_from_store.contains(*id)).cloned().collect()
            })
            .unwrap_or_default();
        progress.set_position((done + confirmed_from_store.len()) as u64);
        if missing.is_empty() || Instant::now() > deadline {
            break;
        }
        polls += 1;
        if polls.is_multiple_of(20) {
            for id in &missing {
                let Some(s) = sent.get(id) else { continue };
                let status = nodes[s.from]
                    .client()
                    .and_then(|mut c| c.call("message.status", json!({"profile": "personal", "message_id": id})));
                if let Ok(v) = status
                    && matches!(v["status"].as_str(), Some("delivered" | "read"))
                {
                    confirmed_from_store.insert(id.clone());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let traffic_elapsed = traffic_start.elapsed();

    // 6b. With --nat: how the profiles are connected at the end of traffic,
    // once hole punching has settled.
    let mut reach_profiles: Vec<ProfileReach> = Vec::new();
    let mut settled = None;
    if let Network::Lab(lab) = &net {
        progress.set_message("hole punching settles");
        let settle_start = Instant::now();
        let deadline = settle_start + opts.timeout;
        loop {
            interrupt.check()?;
            reach_profiles = reach_snapshot(&nodes)?;
            let done = hole_punching_settled(&reach_profiles, &lab.nats);
            if done || Instant::now() > deadline {
                settled = Some((done, settle_start.elapsed()));
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    progress.finish_and_clear();

    // 7. Count: latency, and exactly-once on the receivers.
    let map = delivered.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let mut latencies: Vec<f64> =
        sent.iter().filter_map(|(id, s)| map.get(id).map(|t| t.duration_since(s.at).as_secs_f64() * 1000.0)).collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let delivered_count = latencies.len() + confirmed_from_store.iter().filter(|id| !map.contains_key(*id)).count();
    let last_delivery = sent.keys().filter_map(|id| map.get(id)).max().copied();
    let throughput = match last_delivery {
        Some(t) if delivered_count > 0 => delivered_count as f64 / t.duration_since(traffic_start).as_secs_f64(),
        _ => 0.0,
    };
    let mut lost = 0usize;
    let mut duplicated = 0usize;
    let mut by_receiver: HashMap<(usize, &str), Vec<&Sent>> = HashMap::new();
    for s in sent.values() {
        by_receiver.entry((s.to_node, s.to_profile)).or_default().push(s);
    }
    for ((node, profile), msgs) in &by_receiver {
        let mut c = nodes[*node].client()?;
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut senders: Vec<usize> = msgs.iter().map(|s| s.from).collect();
        senders.sort_unstable();
        senders.dedup();
        for from in senders {
            let with = cards_name(&mut c, profile, &nodes[from])?;
            let h = c.call("message.history", json!({"profile": profile, "with": with, "limit": 10000}))?;
            for m in h["messages"].as_array().into_iter().flatten() {
                if let Some(text) = m["content"]["text"].as_str()
                    && let Some(tag) = text.split(' ').next()
                {
                    *counts.entry(tag.to_string()).or_insert(0) += 1;
                }
            }
        }
        for s in msgs {
            match counts.get(&s.tag).copied().unwrap_or(0) {
                0 => lost += 1,
                1 => {}
                _ => duplicated += 1,
            }
        }
    }
    for node in &mut nodes {
        node.sample_rss();
    }
    let died: Vec<usize> = nodes.iter_mut().filter_map(|nd| (!nd.alive()).then_some(nd.index)).collect();
    let rss: Vec<u64> = nodes.iter().map(|nd| nd.peak_rss_kib).collect();
    let mut rss_sorted = rss.clone();
    rss_sorted.sort_unstable();

    let mut report = json!({
        "nodes": n,
        "failed_to_start": failed_to_start,
        "died": died,
        "messages_sent": sent.len(),
        "messages_delivered": delivered_count,
        "delivery_ratio": if sent.is_empty() { 1.0 } else { delivered_count as f64 / sent.len() as f64 },
        "lost": lost,
        "duplicated": duplicated,
        "kills": kills,
        "time_to_connect_ms": connected_after.as_millis() as u64,
        "send_phase_ms": send_phase.as_millis() as u64,
        "traffic_ms": traffic_elapsed.as_millis() as u64,
        "latency_ms": {"p50": percentile(&latencies, 50.0), "p95": percentile(&latencies, 95.0), "p99": percentile(&latencies, 99.0)},
        "throughput_msgs_per_s": throughput,
        "peak_rss_kib": {"min": rss_sorted.first(), "median": rss_sorted.get(rss_sorted.len() / 2), "max": rss_sorted.last(), "per_node": rss},
        "dir": (opts.keep || opts.dir.is_some()).then_some(&root),
    });
    let reach = match &net {
        Network::Lab(lab) => {
            // By node index, as the lab knows the nodes.
            let first: Vec<_> = first_message_latencies(&sent, &map)
                .into_iter()
                .map(|((a, b), ms)| ((nodes[a].index, nodes[b].index), ms))
                .collect();
            let settled = settled.unwrap_or_default();
            Some(reachability_report(lab, &reach_profiles, reserved_after, settled, &first))
        }
        Network::Loopback { .. } => None,
    };
    if let (Some(Value::Object(fields)), Some(out)) = (&reach, report.as_object_mut()) {
        out.extend(fields.clone());
    }
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("Kabar test network: {n} nodes ({} failed to start, {} died)", failed_to_start.len(), died.len());
        for f in &failed_to_start {
            println!("  failed: {f}");
        }
        println!("  connected after       {:.2} s", connected_after.as_secs_f64());
        println!("  messages sent         {}", sent.len());
        println!(
            "  messages delivered    {delivered_count} ({:.2} %)",
            100.0 * report["delivery_ratio"].as_f64().unwrap_or(0.0)
        );
        if opts.kill_rate > 0.0 {
            println!("  kills / restarts      {kills}");
        }
        println!("  lost / duplicated     {lost} / {duplicated}");
        println!(
            "  latency (send → delivered)  p50 {:.2} ms   p95 {:.2} ms   p99 {:.2} ms",
            percentile(&latencies, 50.0),
            percentile(&latencies, 95.0),
            percentile(&latencies, 99.0)
        );
        println!("  throughput            {throughput:.0} messages/s");
        println!(
            "  peak RSS per node     min {} KiB, median {} KiB, max {} KiB",
            rss_sorted.first().unwrap_or(&0),
            rss_sorted.get(rss_sorted.len() / 2).unwrap_or(&0),
            rss_sorted.last().unwrap_or(&0)
        );
        if let Some(r) = &reach {
            print_reachability(r);
        }
        if opts.keep || opts.dir.is_some() {
            println!("  data                  {}", root.display());
        }
    }
    if opts.keep {
        println!("\nThe network stays up. Talk to a node, e.g.:");
        for node in nodes.iter().take(3) {
            println!("  KABAR_PASSPHRASE='{PASSPHRASE}' kabar --data-dir {} inbox", node.dir.display());
        }
        if let Network::Lab(lab) = &net {
            for relay in &lab.relays {
                println!("Relay {} runs in namespace {}: {}", relay.host.name(), relay.host.namespace(), relay.address);
            }
            if let Some(node) = nodes.first() {
                let ns = lab.homes[node.index].namespace();
                println!("Node {:02} runs in namespace {ns}, e.g. ip netns exec {ns} ip addr", node.index);
            }
        }
        println!(
            "Ctrl-C stops every node{}.",
            if matches!(net, Network::Lab(_)) { " and removes the lab" } else { "" }
        );
        std::io::stdout().flush()?;
        interrupt.clone().wait()?;
    }
    drop(nodes);
    drop(net);
    if lost > 0 || duplicated > 0 || delivered_count < sent.len() {
        bail!("{lost} lost, {duplicated} duplicated, {} of {} delivered", delivered_count, sent.len());
    }
    Ok(())
}

/// The name node `reader` filed `sender` under (friend-NN, or the
/// customer's automatic name in a shop).
fn cards_name(client: &mut Client, profile: &str, sender: &NodeProc) -> Result<String> {
    let info = Client::connect(&sender.dir)?.call("node.info", json!({}))?;
    let peer = info["profiles"][0]["peer_id"].as_str().unwrap_or_default().to_string();
    let contacts = client.call("contact.list", json!({"profile": profile}))?;
    contacts
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["peer_id"] == json!(peer))
        .and_then(|c| c["name"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow!("node {} has no contact for node {}", profile, sender.index))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(node: usize, id: &str, peers: &[(&str, bool)]) -> ProfileReach {
        ProfileReach {
            node,
            peer_id: id.into(),
            peers: peers.iter().map(|(p, d)| (p.to_string(), *d)).collect(),
            ..ProfileReach::default()
        }
    }

    #[test]
    fn a_pair_counts_once_and_is_direct_if_either_side_says_so() {
        let nats = [Nat::EndpointIndependent, Nat::EndpointIndependent, Nat::Symmetric];
        let profiles = [
            profile(0, "a", &[("b", false), ("c", false), ("relay", false)]),
            profile(1, "b", &[("a", true)]),
            profile(2, "c", &[("a", false)]),
            profile(2, "c-shop", &[("c", true)]),
        ];
        let (total, by) = count_connections(&profiles, &nats);
        assert_eq!(total, PairCount { direct: 2, relayed: 1 });
        assert_eq!(by["ei-ei"], PairCount { direct: 1, relayed: 0 });
        assert_eq!(by["ei-sym"], PairCount { direct: 0, relayed: 1 });
        assert_eq!(by["same-node"], PairCount { direct: 1, relayed: 0 });
        assert_eq!(by["sym-sym"], PairCount::default());
    }

    #[test]
    fn hole_punching_settles_once_each_relayed_pair_has_failed() {
        let nats = [Nat::Symmetric, Nat::Symmetric];
        let mut a = profile(0, "a", &[("b", false)]);
        let b = profile(1, "b", &[("a", false)]);
        assert!(!hole_punching_settled(&[a.clone(), b.clone()], &nats));
        a.attempts = 1;
        assert!(hole_punching_settled(&[a, b], &nats));
    }

    #[test]
    fn only_the_first_message_of_a_pair_counts() {
        let t0 = Instant::now();
        let sent_at = |from, to_node, ms| Sent {
            from,
            to_node,
            to_profile: "personal",
            tag: String::new(),
            at: t0 + Duration::from_millis(ms),
        };
        let sent: HashMap<String, Sent> = [
            ("m1".to_string(), sent_at(0, 1, 0)),
            ("m2".to_string(), sent_at(0, 1, 10)),
            ("m3".to_string(), sent_at(1, 0, 5)),
        ]
        .into_iter()
        .collect();
        let delivered: HashMap<String, Instant> =
            [("m1".to_string(), t0 + Duration::from_millis(500)), ("m2".to_string(), t0 + Duration::from_millis(20))]
                .into_iter()
                .collect();
        // m3 (the first of 1 → 0) has no delivery time.
        let first = first_message_latencies(&sent, &delivered);
        assert_eq!(first, vec![((0, 1), Some(500.0)), ((1, 0), None)]);
        let summary = first_message_summary(first.iter());
        assert_eq!((summary["pairs"].as_u64(), summary["measured"].as_u64()), (Some(2), Some(1)));
        assert_eq!((summary["p50"].as_f64(), summary["max"].as_f64()), (Some(500.0), Some(500.0)));
    }

    #[test]
    fn hole_punch_outcomes_sum_over_profiles() {
        let mut a = profile(0, "a", &[]);
        (a.attempts, a.succeeded, a.direct_after_ms) = (3, 2, vec![100, 300]);
        let mut b = profile(1, "b", &[]);
        (b.attempts, b.succeeded, b.direct_after_ms) = (1, 1, vec![200]);
        let s = hole_punch_summary(&[a, b]);
        assert_eq!((s["attempts"].as_u64(), s["succeeded"].as_u64()), (Some(4), Some(3)));
        assert_eq!(s["success_rate"], 0.75);
        assert_eq!(s["direct_after_ms"]["p50"], 200.0);
        assert!(hole_punch_summary(&[]).get("success_rate").is_some_and(Value::is_null));
    }
}
