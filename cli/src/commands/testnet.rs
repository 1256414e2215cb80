//! `kabar testnet …`: a local test network of real nodes, with traffic
//! and a report (the network itself is in `crate::testnet`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

use super::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum TestnetCommand {
    /// Start N node processes (each with a personal and a business profile)
    /// on loopback, introduce contacts, send traffic, print a report.
    ///
    /// With --nat, each node runs in its own home behind its own NAT router
    /// in a network lab of namespaces (needs root and nftables), with relays
    /// (`kabar serve`) on public hosts; the report adds NAT types, direct and
    /// relayed connections, and hole-punch outcomes.
    ///
    /// With --offline-rate R (loopback only, not with --nat), `kabar serve
    /// --mailbox` processes host every profile's mailbox, and the traffic runs
    /// in rounds with about R×N nodes stopped in each (node 0 stays up); every
    /// node is back before the final count. The report adds messages that
    /// went through a mailbox, latency direct and via a mailbox, and the time
    /// spent offline.
    ///
    /// Example: kabar testnet run --nodes 5 --messages 20
    ///
    /// Example: kabar testnet run --nat --nodes 10 --symmetric 0.3 --seed 7
    ///
    /// Example: kabar testnet run --nodes 10 --offline-rate 0.3 --seed 42
    Run {
        /// Number of nodes.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..=500))]
        nodes: u32,
        /// Messages each node sends.
        #[arg(long, default_value_t = 20)]
        messages: u32,
        /// Directory for the nodes' data (default: a temporary one).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Leave the network running after the report; Ctrl-C stops it.
        #[arg(long)]
        keep: bool,
        /// Probability per message of SIGKILLing and restarting a random node (with --nat, in its home).
        #[arg(long, default_value_t = 0.0)]
        kill_rate: f64,
        /// Seconds to wait for connections and deliveries (with --nat, also for relay slots and for hole punching to settle).
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Run each node behind its own NAT router in a network lab, with relays on public hosts (root, nftables).
        #[arg(long)]
        nat: bool,
        /// With --nat: share of nodes behind a symmetric NAT; the others are endpoint-independent.
        #[arg(long, value_name = "FRACTION", default_value_t = 0.3, requires = "nat")]
        symmetric: f64,
        /// Seed of the contacts, traffic, offline rounds and (with --nat) NAT types (default: random; the report shows it).
        #[arg(long)]
        seed: Option<u64>,
        /// With --nat: number of relays; node i uses relay i mod N.
        #[arg(long, value_name = "N", default_value_t = 1, requires = "nat", value_parser = clap::value_parser!(u32).range(1..=50))]
        relays: u32,
        /// Share of the nodes offline at any moment of the traffic, their messages going to mailboxes (not with --nat).
        #[arg(long, value_name = "FRACTION", default_value_t = 0.0, conflicts_with = "nat")]
        offline_rate: f64,
        /// With --offline-rate: number of mailbox hosts (`kabar serve --mailbox`); node i uses host i mod N. A host takes 10 registrations a minute per IP after a burst of 10, and on loopback all profiles share one IP: above 5 nodes per host, registering waits.
        #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=50))]
        mailboxes: u32,
        /// With --offline-rate: seconds each round of the traffic (one set of nodes offline) lasts at least.
        #[arg(long, value_name = "SECONDS", default_value_t = 3.0)]
        offline_for: f64,
        /// Hostile peers (loopback only): the first half of the traffic runs calm, the second half while K actors attack every profile (garbage, truncated and held frames, floods of session starts from fresh identities, replays, forged receipts, connection churn); the report compares the halves and measures CPU after the flood.
        #[arg(long, value_name = "K", default_value_t = 0, conflicts_with_all = ["nat", "offline_rate"], value_parser = clap::value_parser!(u32).range(0..=64))]
        hostile: u32,
        /// With --hostile: seconds each half of the traffic lasts (sends paced evenly, the same in both halves).
        #[arg(long, value_name = "SECONDS", default_value_t = 20.0, requires = "hostile")]
        hostile_for: f64,
        /// On loopback: the Kademlia servers. `service`: one service node (`kabar serve`) that every profile bootstraps from, the profiles clients (as behind NATs: connected to their contacts and the service node). `profiles`: every profile a server (`--dht-server`), connected to nearly every other.
        #[arg(long, value_enum, default_value_t = crate::testnet::DhtServers::Service, conflicts_with = "nat")]
        dht: crate::testnet::DhtServers,
    },
}

pub(crate) fn run(ctx: &Ctx, command: &TestnetCommand) -> Result<()> {
    match command {
        TestnetCommand::Run {
            nodes,
            messages,
            dir,
            keep,
            kill_rate,
            timeout,
            nat,
            symmetric,
            seed,
            relays,
            offline_rate,
            mailboxes,
            offline_for,
            hostile,
            hostile_for,
            dht,
        } => crate::testnet::run(crate::testnet::TestnetOptions {
            nodes: *nodes as usize,
            messages: *messages as usize,
            dir: dir.clone(),
            keep: *keep,
            json: ctx.json,
            kill_rate: *kill_rate,
            timeout: Duration::from_secs(*timeout),
            seed: *seed,
            nat: nat.then(|| crate::testnet::NatOptions { symmetric: *symmetric, relays: *relays as usize }),
            offline: (*offline_rate != 0.0).then(|| crate::testnet::OfflineOptions {
                rate: *offline_rate,
                mailboxes: *mailboxes as usize,
                stretch: Duration::try_from_secs_f64(*offline_for).unwrap_or(Duration::ZERO),
            }),
            hostile: *hostile as usize,
            hostile_for: Duration::try_from_secs_f64(*hostile_for).unwrap_or(Duration::ZERO),
            dht: *dht,
        }),
    }
}
