//! `kabar node …`: run the node in the foreground, inspect it, stop it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use kabar_node::network::NetworkConfig;
use kabar_node::{Node, NodeConfig};
use kabar_storage::{DataDir, StoreError};
use serde_json::json;

use super::Ctx;
use crate::out::{self, outln};
use crate::passphrase;

/// Tokio worker threads of `kabar node run`.
const NODE_WORKER_THREADS: usize = 2;

#[derive(Debug, Subcommand)]
pub(crate) enum NodeCommand {
    /// Run the node in the foreground, hosting every profile; Ctrl-C stops it.
    ///
    /// Example: kabar node run --listen /ip4/0.0.0.0/tcp/4001
    Run {
        /// Listen address (repeatable) [default: all interfaces, TCP and QUIC, random ports].
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// Peer to dial at start (repeatable).
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
        /// Turn off mDNS discovery on the local network.
        #[arg(long)]
        no_mdns: bool,
        /// Serve the DHT from the start (local test networks).
        #[arg(long)]
        dht_server: bool,
        /// A relay (service node) to reserve on when behind a NAT, ending in /p2p/<PeerId> (repeatable; remembered).
        #[arg(long, value_name = "MULTIADDR")]
        relay: Vec<String>,
    },
    /// The running node's profiles: PeerIds, reachability (AutoNAT), addresses, relays, connections, hole punching.
    ///
    /// Example: kabar node info
    Info,
    /// Stop the running node.
    ///
    /// Example: kabar node stop
    Stop,
}

pub(crate) fn run(ctx: &Ctx, command: &NodeCommand) -> Result<()> {
    match command {
        NodeCommand::Run { listen, bootstrap, no_mdns, dht_server, relay } => {
            let parse = |v: &[String]| -> Result<Vec<libp2p::Multiaddr>> {
                v.iter().map(|a| a.parse().with_context(|| format!("{a:?} is not a multiaddr"))).collect()
            };
            let mut network = NetworkConfig { mdns: !no_mdns, kad_server: *dht_server, ..Default::default() };
            if !listen.is_empty() {
                network.listen = parse(listen)?;
            }
            network.bootstrap = parse(bootstrap)?;
            network.relays = parse(relay)?;
            if let Some(bad) = network.relays.iter().find(|r| kabar_node::network::relay_peer(r).is_none()) {
                bail!("relay {bad} must end in /p2p/<relay PeerId> (as `kabar serve` prints it)");
            }
            node_run(&ctx.dir()?, network, ctx.json)
        }
        NodeCommand::Info => {
            let v = ctx.client()?.call("node.info", json!({}))?;
            ctx.show(&v, super::reach::print_node_info)
        }
        NodeCommand::Stop => {
            let v = ctx.client()?.call("node.stop", json!({}))?;
            ctx.show(&v, |_| outln!("node stopping"))
        }
    }
}

/// Logs of a long-running process (`node run`, `serve`) to stderr:
/// RUST_LOG, else warnings only.
pub(crate) fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

fn node_run(dir: &Path, network: NetworkConfig, json: bool) -> Result<()> {
    init_logging();
    match DataDir::list_profiles(dir) {
        Err(StoreError::NoDataDir(_)) => {
            bail!("no Kabar data directory at {}; create one with `kabar init`", dir.display())
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let pass = passphrase(false)?;
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    // A messenger node is a few tasks (one swarm loop per profile, the
    // control server; each profile's engine and disk work have threads of
    // their own): 2 workers, whatever the machine has, unless
    // TOKIO_WORKER_THREADS says otherwise. Each more costs about 100 KiB
    // (docs/BENCHMARKS.md).
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none() {
        runtime.worker_threads(NODE_WORKER_THREADS);
    }
    let runtime = runtime.enable_all().build()?;
    runtime.block_on(async move {
        let config = NodeConfig { data_dir: dir.to_path_buf(), passphrase: pass, network, engine: Default::default() };
        let node = Node::start(config).await?;
        tokio::time::timeout(Duration::from_secs(10), node.wait_listening()).await.ok();
        let profiles = node.profiles();
        let banner = || -> Result<()> {
            if json {
                return out::exact(&serde_json::to_string(&json!({"profiles": profiles, "socket": node.socket()}))?);
            }
            for p in &profiles {
                outln!("{:<12} {:<9} {}", p.name, p.kind, p.peer_id)?;
                for a in &p.listen_addrs {
                    outln!("             listening on {a}")?;
                }
            }
            outln!("Control socket {}; Ctrl-C stops the node.", node.socket().display())
        };
        // The node runs on whether or not its output is read: a reader that
        // took the first line and closed the pipe does not stop it.
        banner().ok();
        out::flush().ok();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = node.stopped() => {}
        }
        eprintln!("stopping…");
        node.shutdown().await;
        Ok::<(), anyhow::Error>(())
    })
}
