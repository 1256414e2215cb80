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
//! With `--offline-rate R` (loopback only) `kabar serve --mailbox` processes
//! host every profile's mailbox, and during the traffic about R×N nodes are
//! offline at any moment, in rounds (see `offline`): messages to an offline
//! node go to its mailbox, and the report splits delivery and latency into
//! direct and through a mailbox. Delivery is counted from the senders'
//! histories at the end (events a node emitted while it was being restarted
//! are not seen).
//!
//! With `--hostile K` (loopback only) the first half of the traffic runs
//! calm and the second half while K hostile actors attack every profile;
//! the report compares the two halves (delivery, latency, peak RSS) and
//! watches every node's CPU for 15 s after the flood.
//!
//! # Layout
//! - here: `TestnetOptions`, `NatOptions` (what `main` parsed) and `run`:
//!   the phases (start, reserve relay slots, introduce, connect, traffic, let
//!   hole punching settle, count) and the report.
//! - `network`: where the nodes run (`Network`: loopback, or a `NatLab`) and
//!   how a node process starts there; `start_nodes`: the network's nodes,
//!   started in parallel; `NodeProc`: one node process, restartable;
//!   `RelayProc`: a `kabar serve` in the lab.
//! - `driver`: how the driver works on many nodes at once, bounded
//!   (`concurrently`: a task per node on a few threads; `Senders`: the
//!   traffic, several `message.send` calls in flight per node).
//! - `offline`: the traffic plan with offline rounds (pure: `plan`,
//!   `down_at_once`) and the offline part of the report.
//! - `hostile`: the hostile actors of `--hostile K` (their own libp2p
//!   swarms speaking the envelope protocol badly, on purpose).
//! - `soak`: what `--hostile` measures around them (targets, CPU after the
//!   flood) and its part of the report.
//! - `tally`: pure tallies over what was measured (`percentile`,
//!   `first_message_latencies`, `count_connections`,
//!   `hole_punching_settled`, `hole_punch_summary`) and the reachability
//!   part of the report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
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
use crate::out::outln;

mod driver;
mod hostile;
mod network;
pub(crate) use network::DhtServers;
mod offline;
mod soak;
mod tally;

use driver::*;
use network::*;
use offline::*;
use tally::*;

const PASSPHRASE: &str = "kabar testnet (not a secret)";
/// Contacts each personal profile has among the other personal profiles.
const FRIENDS: usize = 3;
/// Customers each business has among the other nodes' personal profiles.
const CUSTOMERS: usize = 2;
/// Longest wait for the first line (the start report) of a process in the lab.
const LAB_START_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP and UDP port of the relays (`kabar serve`) in the lab.
const RELAY_PORT: u16 = 4040;
/// Rounds of the traffic with `--offline-rate`, each with its own nodes down.
const OFFLINE_ROUNDS: usize = 4;
/// A mailbox host takes 10 registrations a minute from one IP (after a
/// burst of 10); on loopback every profile shares 127.0.0.1, so a refused
/// registration is tried again after one token's refill.
const REGISTER_RETRY: Duration = Duration::from_secs(6);
/// How long a node taken offline may take to stop before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Options of `kabar testnet run`.
pub(crate) struct TestnetOptions {
    pub(crate) nodes: usize,
    pub(crate) messages: usize,
    pub(crate) dir: Option<PathBuf>,
    pub(crate) keep: bool,
    pub(crate) json: bool,
    pub(crate) kill_rate: f64,
    pub(crate) timeout: Duration,
    /// Seed of the run's choices (contacts, traffic, offline rounds, NAT
    /// types); random when `None`.
    pub(crate) seed: Option<u64>,
    /// Run in a network lab behind NATs (`--nat`).
    pub(crate) nat: Option<NatOptions>,
    /// Take nodes offline during the traffic (`--offline-rate` above 0).
    pub(crate) offline: Option<OfflineOptions>,
    /// Hostile actors during the second half of the traffic (`--hostile K`; 0: none).
    pub(crate) hostile: usize,
    /// With `--hostile`: how long each half of the traffic lasts (the sends
    /// are paced evenly over it, the same in both halves).
    pub(crate) hostile_for: Duration,
    /// On loopback: which processes are Kademlia servers (`--dht`).
    pub(crate) dht: DhtServers,
}

/// Options of `kabar testnet run --offline-rate`.
pub(crate) struct OfflineOptions {
    /// Share of the nodes offline at any moment of the traffic.
    pub(crate) rate: f64,
    /// Number of mailbox hosts (`kabar serve --mailbox`); node i uses host i mod N.
    pub(crate) mailboxes: usize,
    /// How long each round of the traffic (one set of nodes offline) lasts at least.
    pub(crate) stretch: Duration,
}

/// Options of `kabar testnet run --nat`.
pub(crate) struct NatOptions {
    /// Probability that a node is behind a symmetric NAT (else endpoint-independent).
    pub(crate) symmetric: f64,
    /// Number of relays (public hosts running `kabar serve`).
    pub(crate) relays: usize,
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
    if let Some(off) = &opts.offline {
        if !(0.0..=1.0).contains(&off.rate) {
            bail!("--offline-rate is a share of the nodes, between 0 and 1");
        }
        if off.mailboxes == 0 {
            bail!("--offline-rate needs at least one mailbox host");
        }
        if opts.nat.is_some() {
            bail!("--offline-rate runs on loopback only; it cannot be combined with --nat yet");
        }
    }
    if opts.hostile > 0 && (opts.nat.is_some() || opts.offline.is_some()) {
        bail!("--hostile runs on loopback only, without --nat or --offline-rate");
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

    // 1. The lab (with --nat), data directories and node processes (in
    // parallel, see `start_nodes`). The seeded RNG draws the NAT types (with
    // --nat), then the contacts, the offline rounds and the traffic, so a
    // seed repeats a run's plan; keys always come from the OS.
    let started = Instant::now();
    let seed = opts.seed.unwrap_or_else(|| rand::rng().random());
    let mut rng = StdRng::seed_from_u64(seed);
    let (interrupt, mut net) = match &opts.nat {
        None => {
            let service = match opts.dht {
                DhtServers::Service => Some(ServiceHost::start(&root.join("service"), false)?),
                DhtServers::Profiles => None,
            };
            let bootstrap = service.as_ref().map(|s| s.address.clone());
            (Interrupt::default(), Network::Loopback { bootstrap, service })
        }
        Some(nat) => {
            progress.set_message("building the lab");
            let interrupt = Interrupt::install()?;
            let lab = NatLab::build(nat, seed, opts.nodes, &root, &mut rng)?;
            (interrupt, Network::Lab(Box::new(lab)))
        }
    };
    progress.set_message("starting nodes");
    let (mut nodes, failed_to_start) = start_nodes(opts.nodes, &root, &mut net, &interrupt, &progress)?;
    let n = nodes.len();
    if n < 2 {
        bail!("fewer than 2 nodes started: {}", failed_to_start.join("; "));
    }
    let started_after = started.elapsed();

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

    // 1c. With --offline-rate: mailbox hosts, and every profile registers a
    // mailbox (node i on host i mod N) before its card is taken, so cards
    // carry it.
    let mut mailbox_hosts: Vec<ServiceHost> = Vec::new();
    let mut registered_after = Duration::ZERO;
    if let Some(off) = &opts.offline {
        let register_start = Instant::now();
        let deadline = register_start + opts.timeout;
        progress.set_message("registering mailboxes");
        progress.set_position(0);
        progress.set_length(n as u64);
        for h in 0..off.mailboxes {
            mailbox_hosts.push(ServiceHost::start(&root.join(format!("mailbox-{h:02}")), true)?);
        }
        for node in &nodes {
            let mut c = node.client()?;
            let address = &mailbox_hosts[node.index % mailbox_hosts.len()].address;
            for profile in ["personal", "shop"] {
                loop {
                    interrupt.check()?;
                    match c.call("mailbox.add", json!({"address": address, "profile": profile})) {
                        Ok(_) => break,
                        Err(e)
                            if e.to_string().contains("rate limited") && Instant::now() + REGISTER_RETRY < deadline =>
                        {
                            progress.set_message("registering mailboxes (host limit: 10 a minute per IP)");
                            std::thread::sleep(REGISTER_RETRY);
                        }
                        Err(e) => {
                            return Err(e)
                                .with_context(|| format!("node {}: registering a mailbox on {address}", node.index));
                        }
                    }
                }
            }
            progress.inc(1);
        }
        registered_after = register_start.elapsed();
    }

    // 2. Contact cards: each personal profile knows FRIENDS others; each
    // business has CUSTOMERS customers. Every node's part runs in parallel
    // (AT_ONCE at a time).
    progress.set_message("introducing contacts");
    progress.set_position(0);
    progress.set_length(n as u64);
    let fetched = concurrently(&nodes, AT_ONCE, |node| -> Result<Vec<String>> {
        interrupt.check()?;
        let mut c = node.client()?;
        ["personal", "shop"]
            .into_iter()
            .map(|profile| {
                let name = format!("{profile}-{:02}", node.index);
                let card = c.call("card.get", json!({"profile": profile, "name": name}))?;
                Ok(card["card"].as_str().unwrap_or_default().to_string())
            })
            .collect::<Result<_>>()
            .with_context(|| format!("node {}: taking its cards", node.index))
    });
    let mut cards: HashMap<(usize, &str), String> = HashMap::new();
    for (node, node_cards) in nodes.iter().zip(fetched) {
        for (profile, card) in ["personal", "shop"].into_iter().zip(node_cards?) {
            cards.insert((node.index, profile), card);
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
    let positions: Vec<usize> = (0..n).collect();
    let introduced = concurrently(&positions, AT_ONCE, |&i| -> Result<()> {
        interrupt.check()?;
        let node = &nodes[i];
        let mut c = node.client()?;
        let mut add = |j: usize, profile: &str, name: String| {
            c.call(
                "contact.add",
                json!({"profile": "personal", "card": cards[&(nodes[j].index, profile)], "name": name}),
            )
            .map(drop)
            .with_context(|| format!("node {}: adding node {}'s {profile} card", node.index, nodes[j].index))
        };
        for &j in &friends[i] {
            add(j, "personal", format!("friend-{:02}", nodes[j].index))?;
        }
        for (b, shop_customers) in customers_of.iter().enumerate() {
            if shop_customers.contains(&i) {
                add(b, "shop", format!("shop-{:02}", nodes[b].index))?;
            }
        }
        progress.inc(1);
        Ok(())
    });
    introduced.into_iter().collect::<Result<()>>()?;
    let introduced_after = started.elapsed();

    // 3. Wait until every node is connected (to the bootstrap node at least;
    // with --nat, to its relay): each node watched on its own connection,
    // AT_ONCE at a time.
    progress.set_message("connecting");
    progress.set_position(0);
    let connect_deadline = Instant::now() + opts.timeout;
    let connected = concurrently(&nodes, AT_ONCE, |node| -> Result<bool> {
        let mut c = node.client()?;
        loop {
            interrupt.check()?;
            let info = c.call("node.info", json!({}))?;
            if info["profiles"][0]["connected_peers"].as_u64().unwrap_or(0) > 0 {
                progress.inc(1);
                return Ok(true);
            }
            if Instant::now() > connect_deadline {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    let mut unconnected = Vec::new();
    for (node, ok) in nodes.iter().zip(connected) {
        if !ok.with_context(|| format!("node {}: waiting for a connection", node.index))? {
            unconnected.push(format!("node {}", node.index));
        }
    }
    if !unconnected.is_empty() {
        bail!("the network did not connect within {:?}: no connection on {}", opts.timeout, unconnected.join(", "));
    }
    let connected_after = started.elapsed();

    // 4. Event readers: when each message was stored in a mailbox and
    // delivered, per message id (the first time only). A restarted node gets
    // a new reader.
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let spawn_reader = |node: &NodeProc, seen: Arc<Mutex<Seen>>| -> Result<()> {
        let mut client = node.client()?;
        client.subscribe()?;
        std::thread::spawn(move || {
            loop {
                match client.next_event(Instant::now() + Duration::from_secs(3600)) {
                    Ok(Some(e)) => {
                        if e["event"] == "status_changed"
                            && let Some(id) = e["message_id"].as_str()
                            && let Ok(mut seen) = seen.lock()
                        {
                            let map = match e["status"].as_str() {
                                Some("delivered" | "read") => &mut seen.delivered,
                                Some("stored") => &mut seen.stored,
                                _ => continue,
                            };
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
        spawn_reader(node, seen.clone())?;
    }

    // 5. Traffic: M messages per node to random contacts; with
    // --offline-rate in rounds, with some nodes offline in each. This thread
    // draws each message (the seeded plan, in order) and hands it to the
    // senders (several calls in flight per node, see `driver`); before a
    // node stops, is killed or the hostile half begins, every send so far
    // is answered first.
    let total = n * opts.messages;
    progress.set_message("sending");
    progress.set_position(0);
    progress.set_length(total as u64);
    let mut sent: HashMap<String, Sent> = HashMap::new();
    let mut kills = 0u32;
    let mut order: Vec<usize> = (0..total).map(|k| k % n).collect();
    order.shuffle(&mut rng);
    let down_at_once = opts.offline.as_ref().map_or(0, |o| down_at_once(n, o.rate));
    let steps = plan(n, &order, down_at_once, OFFLINE_ROUNDS, &mut rng);
    let mut down_since: Vec<Option<Instant>> = vec![None; n];
    let mut stretches: Vec<Stretch> = Vec::new();
    let traffic_start = Instant::now();
    let mut round_start = traffic_start;
    let senders = Senders::start(&nodes, &progress)?;
    let in_flight_max = SEND_WORKERS.min(n * CONNECTIONS_PER_NODE);
    let mut k = 0usize;
    // The last message sent (its place in the traffic, sender, id), and
    // those whose sender went offline right after.
    let mut last_sent: Option<(usize, usize, String)> = None;
    let mut last_words: HashSet<String> = HashSet::new();
    // With --hostile: the actors start halfway through the traffic; the peak
    // RSS of the calm half is taken then.
    let hostile_from = if opts.hostile > 0 { total / 2 } else { usize::MAX };
    let pace = if opts.hostile > 0 { opts.hostile_for / (total / 2).max(1) as u32 } else { Duration::ZERO };
    let mut hostile: Option<hostile::Hostile> = None;
    let mut rss_calm: Vec<u64> = Vec::new();
    // The driver's own CPU while the actors run (they share the machine).
    let mut attack_clock: Option<soak::Clock> = None;
    for step in steps {
        interrupt.check()?;
        let i = match step {
            Step::Send(i) => i,
            Step::Down(v) => {
                progress.set_message(format!("sending (node {:02} down)", nodes[v].index));
                file_taken(senders.settle(&interrupt)?, &mut sent, &mut last_sent);
                if let Some((_, from, id)) = last_sent.take()
                    && from == v
                {
                    last_words.insert(id);
                }
                senders.forget(v);
                nodes[v].stop(STOP_GRACE);
                down_since[v] = Some(Instant::now());
                continue;
            }
            Step::Up(v) => {
                nodes[v].spawn(&mut net)?;
                nodes[v].restarts += 1;
                spawn_reader(&nodes[v], seen.clone())?;
                senders.forget(v);
                if let Some(since) = down_since[v].take() {
                    let at = |t: Instant| t.saturating_duration_since(traffic_start).as_secs_f64();
                    stretches.push(Stretch { node: nodes[v].index, from_s: at(since), to_s: at(Instant::now()) });
                }
                continue;
            }
            Step::Pace => {
                // The round lasts its stretch: the nodes down stay down.
                let until = round_start + opts.offline.as_ref().map_or(Duration::ZERO, |o| o.stretch);
                while Instant::now() < until {
                    interrupt.check()?;
                    std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
                }
                round_start = Instant::now();
                continue;
            }
        };
        if opts.kill_rate > 0.0 && rng.random::<f64>() < opts.kill_rate {
            let victim = rng.random_range(1..n);
            if down_since[victim].is_none() {
                file_taken(senders.settle(&interrupt)?, &mut sent, &mut last_sent);
                senders.forget(victim);
                nodes[victim].kill();
                kills += 1;
                nodes[victim].spawn(&mut net)?;
                nodes[victim].restarts += 1;
                spawn_reader(&nodes[victim], seen.clone())?;
            }
        }
        if opts.hostile > 0 {
            // Both halves at the same even pace.
            let until = traffic_start + pace * k as u32;
            while Instant::now() < until {
                interrupt.check()?;
                std::thread::sleep(until.saturating_duration_since(Instant::now()).min(Duration::from_millis(100)));
            }
        }
        if k == hostile_from && hostile.is_none() {
            progress.set_message("sending (hostile actors attacking)");
            file_taken(senders.settle(&interrupt)?, &mut sent, &mut last_sent);
            for node in &mut nodes {
                node.sample_rss();
            }
            rss_calm = nodes.iter().map(|nd| nd.peak_rss_kib).collect();
            hostile = Some(hostile::Hostile::start(soak::targets(&nodes, &cards)?, opts.hostile, seed)?);
            attack_clock = Some(soak::Clock::start());
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
        k += 1;
        let text = format!("{tag} {}", "x".repeat(64));
        let sent_as =
            Sent { from: i, to_node, to_profile, to_name: name, tag, at: Instant::now(), hostile: hostile.is_some() };
        senders.send(SendJob { k, text, sent: sent_as }, &interrupt)?;
    }
    file_taken(senders.finish(&interrupt)?, &mut sent, &mut last_sent);
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
        let done = seen.lock().map(|m| sent.keys().filter(|id| m.delivered.contains_key(*id)).count()).unwrap_or(0);
        let missing: Vec<String> = seen
            .lock()
            .map(|m| {
                sent.keys()
                    .filter(|id| !m.delivered.contains_key(*id) && !confirmed_from_store.contains(*id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        progress.set_position((done + confirmed_from_store.len()).min(sent.len()) as u64);
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

    // 6a. With --hostile: the flood ends; what each profile refused, and the
    // nodes' CPU from then on.
    let mut soak = None;
    if let Some(h) = hostile.take() {
        progress.set_message("hostile actors stopping");
        // Before the actors' thread ends (its CPU time goes with it).
        let attacker_cpu = attack_clock.take().map_or(0.0, |c| c.share());
        let attacks = h.stop();
        let mut guards = Vec::new();
        for node in &nodes {
            let info = node.client()?.call("node.info", json!({}))?;
            for p in info["profiles"].as_array().into_iter().flatten() {
                guards.push(json!({"node": node.index, "profile": p["name"], "guard": p["guard"], "frames_refused": p["frames_refused"]}));
            }
        }
        progress.set_message("watching the CPU after the flood");
        let cpu_after = soak::watch_cpu(&nodes);
        soak = Some((attacks, guards, cpu_after, attacker_cpu));
    }

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

    // 7. Count: delivery from the senders' histories (the events a node
    // emitted while its reader was not subscribed are lost; a sender whose
    // history cannot be read counts from the events and status polls),
    // latency, and exactly-once on the receivers.
    let Seen { stored, delivered: map } = seen.lock().map_err(|_| anyhow!("poisoned"))?.clone();
    let history = sender_history(&nodes, &sent);
    let confirmed = |id: &String| match history.get(&sent[id].from) {
        Some(Ok(statuses)) => matches!(statuses.get(id).map(String::as_str), Some("delivered" | "read")),
        _ => map.contains_key(id) || confirmed_from_store.contains(id),
    };
    let history_errors: Vec<String> = history
        .iter()
        .filter_map(|(i, h)| h.as_ref().err().map(|e| format!("node {}: {e:#}", nodes[*i].index)))
        .collect();
    let ms_since = |t: &Instant, s: &Sent| t.saturating_duration_since(s.at).as_secs_f64() * 1000.0;
    let mut latencies: Vec<f64> = sent.iter().filter_map(|(id, s)| map.get(id).map(|t| ms_since(t, s))).collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let delivered_count = sent.keys().filter(|id| confirmed(id)).count();
    let times: Vec<MessageTimes> = sent
        .iter()
        .map(|(id, s)| MessageTimes {
            // Through a mailbox: stored before delivered.
            stored: stored.get(id).is_some_and(|st| map.get(id).is_none_or(|d| st <= d)),
            delivered_ms: map.get(id).map(|t| ms_since(t, s)),
            confirmed: confirmed(id),
            last_words: last_words.contains(id),
        })
        .collect();
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
    // Each receiving profile's histories with its senders, AT_ONCE
    // receivers at a time; a sender is found by its PeerId.
    let peer_ids = concurrently(&nodes, AT_ONCE, |node| -> Result<String> {
        let info = node.client()?.call("node.info", json!({}))?;
        Ok(info["profiles"][0]["peer_id"].as_str().unwrap_or_default().to_string())
    });
    let peer_ids: Vec<String> = peer_ids.into_iter().collect::<Result<_>>()?;
    let receivers: Vec<(&(usize, &str), &Vec<&Sent>)> = by_receiver.iter().collect();
    let counted = concurrently(&receivers, AT_ONCE, |&(&(node, profile), msgs)| -> Result<(usize, usize)> {
        let mut c = nodes[node].client()?;
        let mut counts: HashMap<String, usize> = HashMap::new();
        let mut senders: Vec<usize> = msgs.iter().map(|s| s.from).collect();
        senders.sort_unstable();
        senders.dedup();
        for from in senders {
            let with = cards_name(&mut c, profile, &peer_ids[from], &nodes[from])?;
            let h = c.call("message.history", json!({"profile": profile, "with": with, "limit": 1000}))?;
            for m in h["messages"].as_array().into_iter().flatten() {
                if let Some(text) = m["content"]["text"].as_str()
                    && let Some(tag) = text.split(' ').next()
                {
                    *counts.entry(tag.to_string()).or_insert(0) += 1;
                }
            }
        }
        let (mut lost, mut duplicated) = (0, 0);
        for s in msgs {
            match counts.get(&s.tag).copied().unwrap_or(0) {
                0 => lost += 1,
                1 => {}
                _ => duplicated += 1,
            }
        }
        Ok((lost, duplicated))
    });
    for c in counted {
        let (l, d) = c?;
        lost += l;
        duplicated += d;
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
        "restarts_per_node": nodes.iter().map(|nd| nd.restarts).collect::<Vec<_>>(),
        "time_to_connect_ms": connected_after.as_millis() as u64,
        "connect_phases_ms": {"started": started_after.as_millis() as u64, "introduced": introduced_after.as_millis() as u64, "connected": connected_after.as_millis() as u64},
        "calls_in_flight": {"max": in_flight_max, "per_node": CONNECTIONS_PER_NODE},
        "send_phase_ms": send_phase.as_millis() as u64,
        "traffic_ms": traffic_elapsed.as_millis() as u64,
        "latency_ms": {"p50": percentile(&latencies, 50.0), "p95": percentile(&latencies, 95.0), "p99": percentile(&latencies, 99.0), "max": latencies.last()},
        "throughput_msgs_per_s": throughput,
        "peak_rss_kib": {"min": rss_sorted.first(), "median": rss_sorted.get(rss_sorted.len() / 2), "max": rss_sorted.last(), "per_node": rss},
        "dir": (opts.keep || opts.dir.is_some()).then_some(&root),
        "seed": seed,
        "dht_servers": if opts.nat.is_some() { "relays" } else { opts.dht.as_str() },
        "history_errors": history_errors,
    });
    if let (Some(off), Some(out)) = (&opts.offline, report.as_object_mut()) {
        let mut r = offline_report(&times, &stretches);
        r["rate"] = json!(off.rate);
        r["down_at_once"] = json!(down_at_once);
        r["rounds"] = json!(OFFLINE_ROUNDS);
        r["stretch_s"] = json!(off.stretch.as_secs_f64());
        r["mailbox_hosts"] = json!(mailbox_hosts.iter().map(|h| h.address.as_str()).collect::<Vec<_>>());
        r["registration_ms"] = json!(registered_after.as_millis() as u64);
        out.insert("offline".into(), r);
    }
    if let (Some((attacks, guards, cpu_after, attacker_cpu)), Some(out)) = (soak, report.as_object_mut()) {
        // Until a sender → recipient pair has its first delivery, its
        // messages wait for the session and the connection to be set up:
        // they are left out of both halves' latencies, which compare
        // steady traffic.
        let mut warm_from: HashMap<(usize, usize, &str), Instant> = HashMap::new();
        for (id, s) in &sent {
            if let Some(t) = map.get(id) {
                let e = warm_from.entry((s.from, s.to_node, s.to_profile)).or_insert(*t);
                *e = (*e).min(*t);
            }
        }
        let warm = |s: &Sent| warm_from.get(&(s.from, s.to_node, s.to_profile)).is_some_and(|t| s.at >= *t);
        let half = |hostile: bool| {
            let mut latencies: Vec<f64> = sent
                .iter()
                .filter(|(_, s)| s.hostile == hostile && warm(s))
                .filter_map(|(id, s)| map.get(id).map(|t| ms_since(t, s)))
                .collect();
            latencies.sort_by(|a, b| a.total_cmp(b));
            soak::Half {
                sent: sent.values().filter(|s| s.hostile == hostile).count(),
                delivered: sent.iter().filter(|(id, s)| s.hostile == hostile && confirmed(id)).count(),
                latencies,
            }
        };
        let figures = soak::SoakFigures {
            actors: opts.hostile,
            calm: half(false),
            hostile: half(true),
            rss_calm,
            rss_end: rss.clone(),
            cpu_after,
            guards,
            attacks: attacks.to_json(),
            attacker_cpu,
        };
        let mut r = figures.report();
        r["attack_lines"] = json!(attacks.lines());
        out.insert("hostile".into(), r);
    }
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
        crate::out::exact(&serde_json::to_string_pretty(&report)?)?;
    } else {
        outln!("Kabar test network: {n} nodes ({} failed to start, {} died)", failed_to_start.len(), died.len())?;
        for f in &failed_to_start {
            outln!("  failed: {f}")?;
        }
        outln!(
            "  connected after       {:.2} s  (from the first spawn: all started {:.2} s, contacts introduced {:.2} s, every node connected {:.2} s)",
            connected_after.as_secs_f64(),
            started_after.as_secs_f64(),
            introduced_after.as_secs_f64(),
            connected_after.as_secs_f64()
        )?;
        outln!("  messages sent         {}", sent.len())?;
        outln!(
            "  messages delivered    {delivered_count} ({:.2} %)",
            100.0 * report["delivery_ratio"].as_f64().unwrap_or(0.0)
        )?;
        if opts.kill_rate > 0.0 {
            outln!("  kills / restarts      {kills}")?;
        }
        outln!("  lost / duplicated     {lost} / {duplicated}")?;
        for e in &history_errors {
            outln!("  history unreadable    {e} (counted from events)")?;
        }
        outln!(
            "  latency (send → delivered)  p50 {:.2} ms   p95 {:.2} ms   p99 {:.2} ms",
            percentile(&latencies, 50.0),
            percentile(&latencies, 95.0),
            percentile(&latencies, 99.0)
        )?;
        outln!(
            "  throughput            {throughput:.0} messages/s  (sends with up to {in_flight_max} calls in flight, {CONNECTIONS_PER_NODE} per node)"
        )?;
        if let Some(off) = report.get("offline") {
            print_offline(off)?;
        }
        if let Some(h) = report.get("hostile") {
            soak::print_soak(h)?;
        }
        outln!(
            "  peak RSS per node     min {} KiB, median {} KiB, max {} KiB",
            rss_sorted.first().unwrap_or(&0),
            rss_sorted.get(rss_sorted.len() / 2).unwrap_or(&0),
            rss_sorted.last().unwrap_or(&0)
        )?;
        if let Some(r) = &reach {
            print_reachability(r)?;
        }
        if opts.keep || opts.dir.is_some() {
            outln!("  data                  {}", root.display())?;
        }
    }
    if opts.keep {
        outln!("\nThe network stays up. Talk to a node, e.g.:")?;
        for node in nodes.iter().take(3) {
            outln!("  KABAR_PASSPHRASE='{PASSPHRASE}' kabar --data-dir {} inbox", node.dir.display())?;
        }
        if let Network::Lab(lab) = &net {
            for relay in &lab.relays {
                outln!("Relay {} runs in namespace {}: {}", relay.host.name(), relay.host.namespace(), relay.address)?;
            }
            if let Some(node) = nodes.first() {
                let ns = lab.homes[node.index].namespace();
                outln!("Node {:02} runs in namespace {ns}, e.g. ip netns exec {ns} ip addr", node.index)?;
            }
        }
        outln!("Ctrl-C stops every node{}.", if matches!(net, Network::Lab(_)) { " and removes the lab" } else { "" })?;
        crate::out::flush()?;
        interrupt.clone().wait()?;
    }
    drop(nodes);
    drop(mailbox_hosts);
    drop(net);
    if lost > 0 || duplicated > 0 || delivered_count < sent.len() {
        bail!("{lost} lost, {duplicated} duplicated, {} of {} delivered", delivered_count, sent.len());
    }
    Ok(())
}

/// Files the messages the senders' nodes took into `sent`, and the latest
/// of them (by place in the traffic) into `last_sent` as (place, sender,
/// id).
fn file_taken(taken: Vec<Taken>, sent: &mut HashMap<String, Sent>, last_sent: &mut Option<(usize, usize, String)>) {
    for t in taken {
        if last_sent.as_ref().is_none_or(|(k, _, _)| t.k > *k) {
            *last_sent = Some((t.k, t.sent.from, t.id.clone()));
        }
        sent.insert(t.id, t.sent);
    }
}

/// Per sender (position in `nodes`): the status of each message it sent,
/// by id, from its `message.history` with each contact it wrote to.
fn sender_history(nodes: &[NodeProc], sent: &HashMap<String, Sent>) -> HashMap<usize, Result<HashMap<String, String>>> {
    let mut pairs: BTreeMap<usize, HashSet<&str>> = BTreeMap::new();
    for s in sent.values() {
        pairs.entry(s.from).or_default().insert(&s.to_name);
    }
    let pairs: Vec<(usize, HashSet<&str>)> = pairs.into_iter().collect();
    let statuses = concurrently(&pairs, AT_ONCE, |(from, names)| -> Result<HashMap<String, String>> {
        let mut c = nodes[*from].client()?;
        let mut out = HashMap::new();
        for name in names {
            let h = c.call("message.history", json!({"profile": "personal", "with": name, "limit": 1000}))?;
            for m in h["messages"].as_array().into_iter().flatten().filter(|m| m["direction"] == "out") {
                if let (Some(id), Some(status)) = (m["id"].as_str(), m["status"].as_str()) {
                    out.insert(id.to_string(), status.to_string());
                }
            }
        }
        Ok(out)
    });
    pairs.iter().map(|(from, _)| *from).zip(statuses).collect()
}

/// The text form of the report's `offline` part.
fn print_offline(off: &Value) -> Result<()> {
    let ms = |v: &Value| v.as_f64().map_or_else(|| "n/a".to_string(), |v| format!("{v:.0} ms"));
    let latency = |v: &Value| {
        format!("p50 {}   p95 {}   max {}   ({} measured)", ms(&v["p50"]), ms(&v["p95"]), ms(&v["max"]), v["count"])
    };
    outln!("  offline")?;
    outln!(
        "    schedule            {} nodes down at a time (rate {}), {} rounds of at least {} s",
        off["down_at_once"],
        off["rate"],
        off["rounds"],
        off["stretch_s"]
    )?;
    outln!(
        "    mailboxes           {} host(s), every profile registered in {:.1} s",
        off["mailbox_hosts"].as_array().map_or(0, Vec::len),
        off["registration_ms"].as_f64().unwrap_or(0.0) / 1000.0
    )?;
    outln!(
        "    down                {} stretches on {} nodes, {:.1} s in total",
        off["stretches"],
        off["nodes_down"],
        off["seconds_down"].as_f64().unwrap_or(0.0)
    )?;
    outln!("    through a mailbox   {} messages", off["through_mailbox"])?;
    outln!("    latency direct      {}", latency(&off["latency_ms"]["direct"]))?;
    outln!("    latency via mailbox {}", latency(&off["latency_ms"]["mailbox"]))?;
    let last = &off["sent_before_going_offline"];
    outln!(
        "    sent, then offline  {} of {} delivered; latency {}",
        last["delivered"],
        last["sent"],
        latency(&off["latency_ms"]["sender_went_offline"])
    )?;
    let unseen = off["confirmed_without_event"].as_u64().unwrap_or(0);
    if unseen > 0 {
        outln!("    {unseen} delivered while their sender's events were not watched (no latency)")?;
    }
    Ok(())
}

/// The name node `reader` filed `sender` (its personal profile's PeerId
/// `peer`) under (friend-NN, or the customer's automatic name in a shop).
fn cards_name(client: &mut Client, profile: &str, peer: &str, sender: &NodeProc) -> Result<String> {
    let contacts = client.call("contact.list", json!({"profile": profile}))?;
    contacts
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["peer_id"] == json!(peer))
        .and_then(|c| c["name"].as_str().map(str::to_string))
        .ok_or_else(|| anyhow!("node {} has no contact for node {}", profile, sender.index))
}
