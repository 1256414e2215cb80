//! Reachability commands: `kabar serve` (a service node), `kabar relay …`,
//! and the `node info` view of NAT status, relays and connections.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use kabar_node::mailbox::MailboxLimits;
use kabar_node::service::{DEFAULT_PORT, ServiceConfig, ServiceNode};
use serde_json::{Value, json};

use crate::client::Client;
use crate::out::{self, outln};
use crate::output::{self, cell};
use crate::{s, safe, show};

/// `kabar serve`.
#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Listen address (repeatable) [default: /ip4/0.0.0.0/tcp/4040 and /ip4/0.0.0.0/udp/4040/quic-v1].
    #[arg(long, value_name = "MULTIADDR")]
    listen: Vec<String>,
    /// An address peers reach this machine at that it cannot see itself, e.g. a forwarded public IP (repeatable).
    #[arg(long, value_name = "MULTIADDR")]
    external: Vec<String>,
    /// Answer AutoNAT probes from private addresses (a LAN or a test lab; never on the internet).
    #[arg(long)]
    autonat_private: bool,
    /// Host offline mailboxes (`/kabar/mailbox/1`): sealed envelopes kept for their owners, in mailboxes.redb.
    #[arg(long)]
    mailbox: bool,
    /// Most envelopes per mailbox.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    mailbox_quota_messages: u32,
    /// Most envelope bytes per mailbox.
    #[arg(long, value_name = "N", default_value_t = 64 * 1024 * 1024)]
    mailbox_quota_bytes: u64,
    /// Days an envelope is kept before it is deleted unfetched.
    #[arg(long, value_name = "N", default_value_t = 14)]
    mailbox_ttl_days: u64,
    /// Most mailboxes this host accepts.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    mailbox_max: u32,
}

/// `kabar relay …`: applies to every profile of the running node, or with
/// `--only` to the `--profile` one.
#[derive(Debug, Subcommand)]
pub(crate) enum RelayCommand {
    /// Add a relay (remembered): profiles behind a NAT reserve a slot on it.
    ///
    /// Example: kabar relay add /ip4/203.0.113.7/tcp/4040/p2p/12D3KooW…
    Add {
        /// The relay's multiaddr, ending in /p2p/<PeerId>, as `kabar serve` prints it.
        address: String,
        /// Only for the --profile profile (give each profile its own relay: a shared one can link them).
        #[arg(long)]
        only: bool,
    },
    /// Forget a relay and drop the reservations on it.
    ///
    /// Example: kabar relay remove /ip4/203.0.113.7/tcp/4040/p2p/12D3KooW…
    Remove {
        /// The relay's multiaddr.
        address: String,
        /// Only for the --profile profile.
        #[arg(long)]
        only: bool,
    },
    /// Each profile's relays and whether it holds a reservation on them.
    ///
    /// Example: kabar relay list
    List,
}

/// `kabar serve` in `dir` (`--data-dir`; by default `serve/` inside the
/// platform's kabar data directory, apart from any profiles).
pub(crate) fn serve(args: &ServeArgs, dir: &Path, json: bool) -> Result<()> {
    super::node::init_logging();
    let mut config = ServiceConfig::new(dir.to_path_buf());
    let parse = |v: &[String]| -> Result<Vec<libp2p::Multiaddr>> {
        v.iter().map(|a| a.parse().with_context(|| format!("{a:?} is not a multiaddr"))).collect()
    };
    if !args.listen.is_empty() {
        config.listen = parse(&args.listen)?;
    }
    config.external = parse(&args.external)?;
    config.autonat_private = args.autonat_private;
    if args.mailbox {
        config.mailbox = Some(MailboxLimits {
            max_mailboxes: args.mailbox_max,
            max_count: args.mailbox_quota_messages,
            max_bytes: args.mailbox_quota_bytes,
            ttl_ms: args.mailbox_ttl_days.saturating_mul(24 * 3600 * 1000),
            ..MailboxLimits::default()
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let node = ServiceNode::start(config).await.with_context(|| {
            format!("cannot start the service node (is port {DEFAULT_PORT} taken? choose one with --listen)")
        })?;
        let addresses = node.wait_addresses(Duration::from_millis(500), Duration::from_secs(10)).await;
        let banner = || -> Result<()> {
            if json {
                return out::exact(
                    &json!({"peer_id": node.peer_id().to_string(), "addresses": addresses, "data_dir": dir, "mailbox": args.mailbox})
                        .to_string(),
                );
            }
            outln!("Kabar service node {}", node.peer_id())?;
            outln!("Relay, AutoNAT and DHT server. Give peers one of these addresses:")?;
            // Loopback is only for peers on this machine: shown last.
            let (others, local): (Vec<&String>, Vec<&String>) =
                addresses.iter().partition(|a| !a.starts_with("/ip4/127.") && !a.starts_with("/ip6/::1/"));
            for a in others.iter().chain(&local) {
                outln!("  {a}")?;
            }
            outln!("(kabar node run --relay ADDRESS, or kabar relay add ADDRESS). Ctrl-C stops it.")?;
            if args.mailbox {
                outln!(
                    "Mailboxes: on (at most {} mailboxes of {} envelopes and {} bytes each; envelopes kept {} days).",
                    args.mailbox_max, args.mailbox_quota_messages, args.mailbox_quota_bytes, args.mailbox_ttl_days
                )
            } else {
                outln!("Mailboxes: off (--mailbox to host them).")
            }
        };
        // It serves on whether or not its output is read (as `node run`).
        banner().ok();
        out::flush().ok();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        node.shutdown().await;
        Ok::<(), anyhow::Error>(())
    })
}

pub(crate) fn relay(dir: &Path, command: &RelayCommand, profile: &str, json: bool) -> Result<()> {
    let mut client = Client::connect(dir)?;
    let params = |address: &str, only: bool| {
        if only { json!({"address": address, "profile": profile}) } else { json!({"address": address}) }
    };
    let v = match command {
        RelayCommand::Add { address, only } => client.call("relay.add", params(address, *only))?,
        RelayCommand::Remove { address, only } => client.call("relay.remove", params(address, *only))?,
        RelayCommand::List => client.call("relay.list", json!({}))?,
    };
    show(json, &v, |v| {
        let mut rows = Vec::new();
        for (profile, relays) in v["relays"].as_object().into_iter().flatten() {
            for r in relays.as_array().into_iter().flatten() {
                let (address, reserved) = match r {
                    Value::String(a) => (a.clone(), String::new()),
                    other => (s(&other["address"]), if other["reserved"] == true { "yes" } else { "no" }.to_string()),
                };
                rows.push(vec![
                    safe::printable(profile).into_owned(),
                    safe::printable(&address).into_owned(),
                    reserved,
                ]);
            }
        }
        if rows.is_empty() {
            outln!("no relays; add one with `kabar relay add ADDRESS`")
        } else {
            output::table(&["PROFILE", "RELAY", "RESERVED"], &rows)
        }
    })
}

/// `kabar node info` for humans: one block per profile.
pub(crate) fn print_node_info(v: &Value) -> Result<()> {
    for p in v["profiles"].as_array().into_iter().flatten() {
        outln!("{} ({}) {}", cell(&p["name"]), cell(&p["kind"]), cell(&p["peer_id"]))?;
        if p["failed"].is_string() {
            outln!("  FAILED        {}", cell(&p["failed"]))?;
            continue;
        }
        outln!("  reachability  {} (DHT {})", cell(&p["nat"]), cell(&p["dht"]))?;
        for a in p["advertised"].as_array().into_iter().flatten() {
            outln!("  reachable at  {}", cell(a))?;
        }
        for r in p["relays"].as_array().into_iter().flatten() {
            let state = if r["reserved"] == true { "reserved" } else { "not reserved" };
            outln!("  relay         {} ({state})", cell(&r["address"]))?;
        }
        let peers = p["peers"].as_array().cloned().unwrap_or_default();
        let direct = peers.iter().filter(|x| x["connection"] == "direct").count();
        outln!("  peers         {} connected ({direct} direct, {} relayed)", peers.len(), peers.len() - direct)?;
        for x in &peers {
            outln!("    {} {}", cell(&x["peer_id"]), cell(&x["connection"]))?;
        }
        let hp = &p["hole_punch"];
        outln!("  hole punching {} of {} attempts succeeded", cell(&hp["succeeded"]), cell(&hp["attempts"]))?;
        for m in p["mailboxes"].as_array().into_iter().flatten() {
            let last = super::mailbox::last_fetch(m);
            outln!("  mailbox       {} ({} fetched; last fetch {last})", cell(&m["address"]), cell(&m["fetched"]))?;
        }
        if p["deposited"].as_u64().unwrap_or(0) > 0 {
            outln!("  deposited     {} envelope(s) in contacts' mailboxes", cell(&p["deposited"]))?;
        }
    }
    Ok(())
}
