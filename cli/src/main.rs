//! `kabar`: the command-line client of Kabar: `kabar init`, `kabar node run`
//! (the node itself, in the foreground), and a thin client of the node's
//! JSON-RPC control socket. The only crate that prints for humans.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod demo;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use kabar_crypto::ProfileKind;
use kabar_node::network::NetworkConfig;
use kabar_node::{Node, NodeConfig};
use kabar_storage::{DataDir, KdfParams, StoreError};
use serde_json::{Value, json};

/// Kabar: peer-to-peer, end-to-end encrypted messaging with separate personal
/// and business identities.
#[derive(Debug, Parser)]
#[command(name = "kabar", version, about, long_about = None)]
struct Cli {
    /// Data directory (default: the platform's data directory for kabar).
    #[arg(long, global = true, env = "KABAR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory with a personal profile (and optionally a
    /// business one), locked by a passphrase (KABAR_PASSPHRASE or a prompt).
    ///
    /// Example: kabar init --business shop
    Init {
        /// Also create a business profile with this name.
        #[arg(long, value_name = "NAME")]
        business: Option<String>,
        /// Cheap key derivation for local test networks ONLY (not safe for real use).
        #[arg(long, hide = true)]
        testnet_kdf: bool,
    },
    /// Run or query the node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// Call any control-API method (see docs/api.md).
    ///
    /// Example: kabar rpc message.send '{"to":"Bob","text":"Hello"}'
    Rpc {
        /// Method name.
        method: String,
        /// Parameters as a JSON object.
        #[arg(default_value = "{}")]
        params: String,
    },
    /// Two identities talk end to end through kabar-crypto, in this process,
    /// with no network.
    ///
    /// Example: kabar demo --messages 5
    Demo {
        /// Messages each side sends after the handshake.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        messages: u32,
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
    /// Run the node in the foreground, hosting every profile; Ctrl-C stops it.
    ///
    /// Example: kabar node run --listen /ip4/0.0.0.0/tcp/4001
    Run {
        /// Listen address (repeatable); default: all interfaces, TCP and QUIC, random ports.
        #[arg(long, value_name = "MULTIADDR")]
        listen: Vec<String>,
        /// Peer to dial at start (repeatable).
        #[arg(long, value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
        /// Turn off mDNS discovery on the local network.
        #[arg(long)]
        no_mdns: bool,
        /// Serve the DHT from the start (for local test networks).
        #[arg(long, hide = true)]
        dht_server: bool,
    },
    /// Show the running node's profiles, PeerIds and listen addresses.
    ///
    /// Example: kabar node info
    Info,
    /// Stop the running node.
    ///
    /// Example: kabar node stop
    Stop,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn data_dir(cli: &Cli) -> Result<PathBuf> {
    if let Some(d) = &cli.data_dir {
        return Ok(d.clone());
    }
    let dirs = directories::ProjectDirs::from("", "", "kabar")
        .ok_or_else(|| anyhow!("cannot find a home directory; pass --data-dir"))?;
    Ok(dirs.data_dir().to_path_buf())
}

fn passphrase(confirm: bool) -> Result<Vec<u8>> {
    if let Ok(p) = std::env::var("KABAR_PASSPHRASE") {
        return Ok(p.into_bytes());
    }
    let first =
        rpassword::prompt_password("Passphrase: ").context("reading the passphrase (or set KABAR_PASSPHRASE)")?;
    if confirm {
        let again = rpassword::prompt_password("Passphrase again: ")?;
        if again != first {
            bail!("the passphrases differ");
        }
    }
    Ok(first.into_bytes())
}

fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Demo { messages } => demo::run(*messages),
        Command::Init { business, testnet_kdf } => init(&data_dir(&cli)?, business.as_deref(), *testnet_kdf, cli.json),
        Command::Node(NodeCommand::Run { listen, bootstrap, no_mdns, dht_server }) => {
            let parse = |v: &[String]| -> Result<Vec<libp2p::Multiaddr>> {
                v.iter().map(|a| a.parse().with_context(|| format!("{a:?} is not a multiaddr"))).collect()
            };
            let mut network = NetworkConfig { mdns: !no_mdns, kad_server: *dht_server, ..Default::default() };
            if !listen.is_empty() {
                network.listen = parse(listen)?;
            }
            network.bootstrap = parse(bootstrap)?;
            node_run(&data_dir(&cli)?, network, cli.json)
        }
        Command::Node(NodeCommand::Info) => print(call(&data_dir(&cli)?, "node.info", json!({}))?, cli.json),
        Command::Node(NodeCommand::Stop) => print(call(&data_dir(&cli)?, "node.stop", json!({}))?, cli.json),
        Command::Rpc { method, params } => {
            let params: Value = serde_json::from_str(params).context("params must be a JSON object")?;
            print(call(&data_dir(&cli)?, method, params)?, true)
        }
    }
}

fn print(value: Value, _json: bool) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(&value)?);
    Ok(())
}

fn init(dir: &Path, business: Option<&str>, testnet_kdf: bool, json: bool) -> Result<()> {
    if let Some(name) = business {
        kabar_storage::validate_profile_name(name)?;
        if name == "personal" {
            bail!("the business profile needs another name than \"personal\"");
        }
    }
    if dir.join(kabar_storage::header::HEADER_FILE).exists() {
        bail!("a Kabar data directory already exists at {}", dir.display());
    }
    let pass = passphrase(true)?;
    if pass.is_empty() {
        bail!("an empty passphrase protects nothing; choose one");
    }
    let kdf = if testnet_kdf { KdfParams::TESTNET } else { KdfParams::DEFAULT };
    let mut data = DataDir::create(dir, &pass, kdf)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let mut rng = rand::rng();
    let mut created =
        vec![("personal".to_string(), data.create_profile("personal", ProfileKind::Personal, now, &mut rng)?)];
    if let Some(name) = business {
        created.push((name.to_string(), data.create_profile(name, ProfileKind::Business, now, &mut rng)?));
    }
    let profiles: Vec<Value> = created
        .iter()
        .map(|(name, store)| -> Result<Value> {
            let signing = store.identity()?.public().signing;
            Ok(json!({"name": name, "kind": store.kind().to_string(), "peer_id": kabar_node::card::peer_id_of(&signing).to_string()}))
        })
        .collect::<Result<_>>()?;
    if json {
        println!("{}", serde_json::to_string_pretty(&json!({"data_dir": dir, "profiles": profiles}))?);
    } else {
        println!("Created {}", dir.display());
        for p in &profiles {
            println!(
                "  {:<12} {:<9} {}",
                p["name"].as_str().unwrap_or(""),
                p["kind"].as_str().unwrap_or(""),
                p["peer_id"].as_str().unwrap_or("")
            );
        }
        println!("Next: kabar node run");
    }
    Ok(())
}

fn node_run(dir: &Path, network: NetworkConfig, json: bool) -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    match DataDir::list_profiles(dir) {
        Err(StoreError::NoDataDir(_)) => {
            bail!("no Kabar data directory at {}; create one with `kabar init`", dir.display())
        }
        Err(e) => return Err(e.into()),
        Ok(_) => {}
    }
    let pass = passphrase(false)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let config = NodeConfig { data_dir: dir.to_path_buf(), passphrase: pass, network, engine: Default::default() };
        let node = Node::start(config).await?;
        tokio::time::timeout(std::time::Duration::from_secs(10), node.wait_listening()).await.ok();
        let profiles = node.profiles();
        if json {
            println!("{}", serde_json::to_string(&json!({"profiles": profiles}))?);
        } else {
            for p in &profiles {
                println!("{:<12} {:<9} {}", p.name, p.kind, p.peer_id);
                for a in &p.listen_addrs {
                    println!("             listening on {a}");
                }
            }
            println!("Control socket {}; Ctrl-C stops the node.", node.socket().display());
        }
        std::io::stdout().flush().ok();
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

/// One JSON-RPC call on the node's control socket.
fn call(dir: &Path, method: &str, params: Value) -> Result<Value> {
    let socket = dir.join(kabar_node::control::SOCKET_FILE);
    let mut stream = UnixStream::connect(&socket)
        .map_err(|_| anyhow!("no kabar node is running for {}; start one with `kabar node run`", dir.display()))?;
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    writeln!(stream, "{request}")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let reply: Value = serde_json::from_str(&line).context("the node sent malformed JSON")?;
    match reply.get("error") {
        Some(e) => bail!("{} (code {})", e["message"].as_str().unwrap_or("error"), e["code"]),
        None => Ok(reply["result"].clone()),
    }
}
