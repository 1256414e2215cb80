//! `kabar`: the command-line client of Kabar. `kabar init` and
//! `kabar node run` work on the data directory directly; every other command
//! is a thin client of the running node's JSON-RPC control socket
//! (docs/api.md). The only crate that prints for humans.
//!
//! Exit codes: 0 success (also when the reader of standard output closed
//! it early), 1 error, 2 bad usage, 3 no node running, 4 `--wait` timed out,
//! 5 a store is damaged (`node run` refused to start, `store check` found
//! damage).
//!
//! Standard output is written only through [`out`] (`println!` panics on a
//! closed pipe, hence `print_stdout` stays denied), and peer text only after
//! [`safe`] has escaped it.
#![allow(clippy::print_stderr)]

mod client;
mod demo;
mod mailbox;
mod out;
mod output;
mod reach;
mod safe;
mod store;
mod testnet;

use std::io::{BufRead, IsTerminal};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::{CommandFactory, Parser, Subcommand};
use client::{Client, EXIT_NO_NODE, EXIT_TIMEOUT, NoNode, TimedOut};
use kabar_crypto::ProfileKind;
use kabar_node::network::NetworkConfig;
use kabar_node::{Node, NodeConfig};
use kabar_storage::{DataDir, KdfParams, StoreError};
use out::outln;
use output::cell;
use serde_json::{Value, json};

/// Kabar: peer-to-peer, end-to-end encrypted messaging with separate personal
/// and business identities.
#[derive(Debug, Parser)]
#[command(name = "kabar", version, about, long_about = None, after_help = "Start here: kabar init, then kabar node run (see docs/cli.md)")]
struct Cli {
    /// Data directory [default: the platform's data directory for kabar].
    #[arg(long, global = true, env = "KABAR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Profile to act as.
    #[arg(long, global = true, default_value = "personal")]
    profile: String,
    /// Machine-readable JSON output (documented in docs/cli.md).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory with a personal profile (and optionally a business one).
    ///
    /// The passphrase comes from KABAR_PASSPHRASE or a prompt.
    ///
    /// Example: kabar init --business shop
    Init {
        /// Also create a business profile with this name.
        #[arg(long, value_name = "NAME")]
        business: Option<String>,
        /// Cheap key derivation for local test networks ONLY (unsafe for real use).
        #[arg(long)]
        testnet_kdf: bool,
    },
    /// Run, inspect or stop the node.
    #[command(subcommand)]
    Node(NodeCommand),
    /// List, create, show or remove profiles.
    #[command(subcommand)]
    Profile(ProfileCommand),
    /// Check the profile databases for damage (node stopped).
    #[command(subcommand)]
    Store(store::StoreCommand),
    /// Print this profile's contact card (a kabar: URI) to give to others.
    ///
    /// Example: kabar card --qr
    Card {
        /// Draw the card as a QR code in the terminal.
        #[arg(long)]
        qr: bool,
        /// The name the card suggests (default: the profile name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Manage contacts.
    #[command(subcommand)]
    Contact(ContactCommand),
    /// Send a message.
    ///
    /// On a business profile, a text like /thanks sends the saved quick reply.
    ///
    /// Example: kabar send Bob "See you at 8" --wait
    Send {
        /// Contact name.
        name: String,
        /// The text.
        text: String,
        /// Wait until the recipient acknowledged it (delivered or read); exit code 4 if not within --timeout (a copy in its mailbox, "stored", is not delivered yet).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Conversations, unread counts, labels and last messages.
    ///
    /// Example: kabar --profile shop inbox
    Inbox,
    /// The messages of a conversation.
    ///
    /// Example: kabar history Bob --limit 20
    History {
        /// Contact name.
        name: String,
        /// How many of the latest messages.
        #[arg(long, default_value_t = 50)]
        limit: u64,
    },
    /// Message requests from strangers: list, accept or block.
    ///
    /// Example: kabar requests accept 8xY3kQ9p… --rename Carol
    Requests {
        #[command(subcommand)]
        action: Option<RequestCommand>,
    },
    /// An interactive conversation in this terminal (line mode). Type and press
    /// Enter to send; Ctrl-D or Ctrl-C leaves.
    ///
    /// Example: kabar chat Bob
    Chat {
        /// Contact name.
        name: String,
    },
    /// Business tools (business profiles).
    #[command(subcommand)]
    Business(BusinessCommand),
    /// Fetch a business's catalog.
    ///
    /// Example: kabar catalog Bakery
    Catalog {
        /// The business contact's name.
        name: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Order from a business's catalog: ITEM is an item name or id, xN a quantity.
    ///
    /// Example: kabar order Bakery Sourdough x2 Croissant
    Order {
        /// The business contact's name.
        name: String,
        /// Items, each optionally followed by xN.
        #[arg(required = true)]
        items: Vec<String>,
        /// A note for the business.
        #[arg(long)]
        note: Option<String>,
    },
    /// A local test network of real nodes, with traffic and a report.
    #[command(subcommand)]
    Testnet(TestnetCommand),
    /// Run a service node for others: a relay, AutoNAT and DHT server, with --mailbox also mailboxes (no profiles, no passphrase).
    ///
    /// Example: kabar serve --data-dir /var/lib/kabar-serve --listen /ip4/0.0.0.0/tcp/4040
    Serve(reach::ServeArgs),
    /// The relays the profiles reserve a slot on when they are behind a NAT.
    #[command(subcommand)]
    Relay(reach::RelayCommand),
    /// The --profile profile's mailboxes: where contacts deposit messages while it is offline.
    #[command(subcommand)]
    Mailbox(mailbox::MailboxCommand),
    /// Call any control-API method (docs/api.md).
    ///
    /// Example: kabar rpc message.send '{"to":"Bob","text":"Hello"}'
    Rpc {
        /// Method name.
        method: String,
        /// Parameters as a JSON object.
        #[arg(default_value = "{}")]
        params: String,
    },
    /// Print shell completions.
    ///
    /// Example: kabar completions bash > /etc/bash_completion.d/kabar
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Two identities talk end to end through kabar-crypto, in this process, with no network.
    ///
    /// Example: kabar demo --messages 5
    Demo {
        /// Messages each side sends after the handshake.
        #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        messages: u32,
    },
}

#[derive(Debug, Subcommand)]
enum TestnetCommand {
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
    },
}

#[derive(Debug, Subcommand)]
enum NodeCommand {
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

#[derive(Debug, Subcommand)]
enum ProfileCommand {
    /// List the profiles of the data directory (no node needed).
    ///
    /// Example: kabar profile list
    List,
    /// Create a profile (stop the node first; it hosts the new profile when started again).
    ///
    /// Example: kabar profile create shop --kind business
    Create {
        /// Profile name: 1-32 characters a-z, 0-9, '-' or '_'.
        name: String,
        /// personal or business.
        #[arg(long, value_parser = ["personal", "business"])]
        kind: String,
    },
    /// Show the selected profile (--profile): kind, PeerId, addresses.
    ///
    /// Example: kabar --profile shop profile show
    Show,
    /// Remove a profile (stop the node first), e.g. a damaged one so the others run: its database moves to removed/ in the data directory and its key leaves the header. Copy the data directory first.
    ///
    /// Example: kabar profile remove work --yes
    Remove {
        /// Profile name.
        name: String,
        /// Confirm: without a copy of the data directory made before, the profile's messages are gone for good.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ContactCommand {
    /// Add a contact from their card.
    ///
    /// Example: kabar contact add kabar:AQGm… --name Bob
    Add {
        /// The kabar: card.
        card: String,
        /// The name to file them under.
        #[arg(long)]
        name: String,
    },
    /// List contacts.
    ///
    /// Example: kabar contact list
    List,
    /// Show the safety number to compare with the contact; --confirm marks them verified.
    ///
    /// Example: kabar contact verify Bob --confirm
    Verify {
        /// Contact name.
        name: String,
        /// Mark as verified (after comparing the numbers).
        #[arg(long)]
        confirm: bool,
    },
    /// Block a contact: their messages are refused.
    ///
    /// Example: kabar contact block Mallory
    Block {
        /// Contact name.
        name: String,
    },
    /// Unblock a contact.
    ///
    /// Example: kabar contact unblock Mallory
    Unblock {
        /// Contact name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum RequestCommand {
    /// List message requests (the default).
    List,
    /// Accept a request (optionally renaming the contact).
    Accept {
        /// The request's name (from `kabar requests`).
        name: String,
        /// A name to file them under.
        #[arg(long)]
        rename: Option<String>,
    },
    /// Block a request.
    Block {
        /// The request's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum BusinessCommand {
    /// The business profile.
    #[command(subcommand)]
    Profile(BusinessProfileCommand),
    /// Catalog items.
    #[command(subcommand)]
    Catalog(CatalogCommand),
    /// Quick replies (/shortcut → text).
    #[command(subcommand)]
    Reply(ReplyCommand),
    /// The greeting sent on a customer's first message (and after 14 days of silence).
    #[command(subcommand)]
    Greeting(GreetingCommand),
    /// The away message.
    #[command(subcommand)]
    Away(AwayCommand),
    /// Opening hours.
    #[command(subcommand)]
    Hours(HoursCommand),
    /// Labels for conversations.
    #[command(subcommand)]
    Label(LabelCommand),
    /// Close a conversation after the transaction (a new message reopens it).
    ///
    /// Example: kabar --profile shop business close Dana
    Close {
        /// Customer name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum BusinessProfileCommand {
    /// Set fields of the business profile.
    ///
    /// Example: kabar --profile shop business profile set --name "Marigold Bakery" --about "Fresh bread daily"
    Set {
        /// Business name.
        #[arg(long)]
        name: Option<String>,
        /// Category.
        #[arg(long)]
        category: Option<String>,
        /// One line, at most 139 characters.
        #[arg(long)]
        about: Option<String>,
        /// At most 512 characters.
        #[arg(long)]
        description: Option<String>,
        /// Street address.
        #[arg(long)]
        address: Option<String>,
        /// E-mail.
        #[arg(long)]
        email: Option<String>,
        /// Web site.
        #[arg(long)]
        website: Option<String>,
    },
    /// Show the business profile.
    ///
    /// Example: kabar --profile shop business profile show
    Show,
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Add an item.
    ///
    /// Example: kabar --profile shop business catalog add Sourdough --price 4.50 --currency EUR
    Add {
        /// Item name.
        name: String,
        /// Price, e.g. 4.50.
        #[arg(long)]
        price: String,
        /// ISO 4217 currency.
        #[arg(long, default_value = "EUR")]
        currency: String,
        /// Description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List items.
    ///
    /// Example: kabar --profile shop business catalog list
    List,
    /// Remove an item by id.
    ///
    /// Example: kabar --profile shop business catalog remove 3f9a0c2d11b4e5a6
    Remove {
        /// Item id (from `catalog list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
enum ReplyCommand {
    /// Save a quick reply.
    ///
    /// Example: kabar --profile shop business reply add /thanks "Thank you for your order!"
    Add {
        /// The shortcut, e.g. /thanks.
        shortcut: String,
        /// The text it sends.
        text: String,
    },
    /// List quick replies.
    ///
    /// Example: kabar --profile shop business reply list
    List,
    /// Remove a quick reply.
    ///
    /// Example: kabar --profile shop business reply remove /thanks
    Remove {
        /// The shortcut.
        shortcut: String,
    },
}

#[derive(Debug, Subcommand)]
enum GreetingCommand {
    /// Set the greeting.
    ///
    /// Example: kabar --profile shop business greeting set "Welcome to Marigold!"
    Set {
        /// The greeting text.
        text: String,
    },
    /// Turn the greeting off.
    ///
    /// Example: kabar --profile shop business greeting off
    Off,
}

#[derive(Debug, Subcommand)]
enum AwayCommand {
    /// Set when the away message goes out, and its text.
    ///
    /// Example: kabar --profile shop business away set --schedule outside-hours --text "Closed; back at 9"
    Set {
        /// always, outside-hours, HH:MM-HH:MM or off.
        #[arg(long)]
        schedule: String,
        /// The away message.
        #[arg(long)]
        text: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum HoursCommand {
    /// Set opening hours, e.g. mon=09:00-17:00 sat=10:00-14:00 (days not given are closed).
    ///
    /// Example: kabar --profile shop business hours set mon=09:00-17:00 tue=09:00-17:00 --utc-offset 60
    Set {
        /// DAY=HH:MM-HH:MM, DAY in mon…sun.
        days: Vec<String>,
        /// Minutes the shop's local time is ahead of UTC.
        #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
        utc_offset: i64,
    },
}

#[derive(Debug, Subcommand)]
enum LabelCommand {
    /// Define a label (at most 20).
    ///
    /// Example: kabar --profile shop business label add Paid --colour "#00aa00"
    Add {
        /// Label name.
        name: String,
        /// Colour as #rrggbb.
        #[arg(long, default_value = "#607d8b")]
        colour: String,
    },
    /// List labels.
    ///
    /// Example: kabar --profile shop business label list
    List,
    /// Apply a label to a conversation.
    ///
    /// Example: kabar --profile shop business label apply Paid Dana
    Apply {
        /// Label name.
        label: String,
        /// Customer name.
        name: String,
    },
    /// Delete a label (it is taken off every conversation).
    ///
    /// Example: kabar --profile shop business label remove Paid
    Remove {
        /// Label name.
        label: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // The reader of our output went away (`kabar inbox | head -n 1`):
            // nothing more to say, and nobody to say it to.
            if error.downcast_ref::<out::StdoutClosed>().is_some() {
                return ExitCode::SUCCESS;
            }
            // Node errors can quote peer text (a contact's name).
            eprintln!("error: {}", safe::printable_block(&format!("{error:#}")));
            if json && let Some(e) = error.downcast_ref::<client::NodeError>() {
                // Exact, like all --json output; nothing is left to do if it fails.
                let _ = out::exact(&json!({"error": {"code": e.code, "message": e.message}}).to_string());
            }
            if error.downcast_ref::<NoNode>().is_some() {
                ExitCode::from(EXIT_NO_NODE)
            } else if store::is_damage(&error) {
                ExitCode::from(store::EXIT_DAMAGED)
            } else if error.downcast_ref::<TimedOut>().is_some() {
                ExitCode::from(EXIT_TIMEOUT)
            } else {
                ExitCode::FAILURE
            }
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
    if !std::io::stdin().is_terminal() {
        bail!("no passphrase: set KABAR_PASSPHRASE or run in a terminal");
    }
    let first = rpassword::prompt_password("Passphrase: ")?;
    if confirm && rpassword::prompt_password("Passphrase again: ")? != first {
        bail!("the passphrases differ");
    }
    Ok(first.into_bytes())
}

/// Prints JSON (with --json), exactly as serialized, or the human form.
fn show(json: bool, value: &Value, human: impl FnOnce(&Value) -> Result<()>) -> Result<()> {
    if json { out::exact(&serde_json::to_string_pretty(value)?) } else { human(value) }
}

fn run(cli: Cli) -> Result<()> {
    let json = cli.json;
    let profile = cli.profile.clone();
    let p = |mut v: Value| {
        v["profile"] = json!(profile);
        v
    };
    match &cli.command {
        Command::Demo { messages } => demo::run(*messages),
        Command::Completions { shell } => {
            // Generated into memory: clap_complete panics when a write fails.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "kabar", &mut script);
            out::exact_bytes(&script)
        }
        Command::Init { business, testnet_kdf } => init(&data_dir(&cli)?, business.as_deref(), *testnet_kdf, json),
        Command::Node(NodeCommand::Run { listen, bootstrap, no_mdns, dht_server, relay }) => {
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
            node_run(&data_dir(&cli)?, network, json)
        }
        Command::Node(NodeCommand::Info) => {
            let v = Client::connect(&data_dir(&cli)?)?.call("node.info", json!({}))?;
            show(json, &v, reach::print_node_info)
        }
        Command::Node(NodeCommand::Stop) => {
            let v = Client::connect(&data_dir(&cli)?)?.call("node.stop", json!({}))?;
            show(json, &v, |_| outln!("node stopping"))
        }
        Command::Profile(ProfileCommand::List) => {
            let list = DataDir::list_profiles(&data_dir(&cli)?)?;
            let v = json!(list.iter().map(|p| json!({"name": p.name, "kind": p.kind.to_string()})).collect::<Vec<_>>());
            show(json, &v, |_| {
                let rows: Vec<Vec<String>> =
                    list.iter().map(|p| vec![safe::printable(&p.name).into_owned(), p.kind.to_string()]).collect();
                output::table(&["PROFILE", "KIND"], &rows)
            })
        }
        Command::Profile(ProfileCommand::Create { name, kind }) => {
            let dir = data_dir(&cli)?;
            if Client::connect(&dir).is_ok() {
                bail!("the node is running; stop it first (`kabar node stop`), then create the profile");
            }
            let pass = passphrase(false)?;
            let mut data = DataDir::open(&dir, &pass)?;
            let kind = if kind == "business" { ProfileKind::Business } else { ProfileKind::Personal };
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
            let store = data.create_profile(name, kind, now, &mut rand::rng())?;
            let peer = kabar_node::card::peer_id_of(&store.identity()?.public().signing).to_string();
            let v = json!({"name": name, "kind": kind.to_string(), "peer_id": peer});
            show(json, &v, |_| {
                outln!("created {kind} profile {} ({peer}); start the node to use it", safe::printable(name))
            })
        }
        Command::Profile(ProfileCommand::Remove { name, yes }) => {
            store::remove_profile(&data_dir(&cli)?, name, *yes, json)
        }
        Command::Store(command) => store::run(&data_dir(&cli)?, command, json),
        Command::Profile(ProfileCommand::Show) => {
            let info = Client::connect(&data_dir(&cli)?)?.call("node.info", json!({}))?;
            let prof = info["profiles"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["name"] == json!(cli.profile))
                .cloned()
                .ok_or_else(|| anyhow!("no profile named {:?}; see `kabar profile list`", cli.profile))?;
            show(json, &prof, |p| {
                outln!("profile   {}", cell(&p["name"]))?;
                outln!("kind      {}", cell(&p["kind"]))?;
                outln!("peer id   {}", cell(&p["peer_id"]))?;
                for a in p["listen_addrs"].as_array().into_iter().flatten() {
                    outln!("listening {}", cell(a))?;
                }
                Ok(())
            })
        }
        Command::Card { qr, name } => {
            let v = Client::connect(&data_dir(&cli)?)?.call("card.get", p(json!({"name": name})))?;
            let card = s(&v["card"]);
            if *qr && !json {
                let code = qrcode::QrCode::new(card.as_bytes()).context("the card is too long for a QR code")?;
                outln!("{}", code.render::<qrcode::render::unicode::Dense1x2>().quiet_zone(true).build())?;
            }
            show(json, &v, |_| outln!("{}", safe::printable(&card)))
        }
        Command::Contact(c) => contact(&data_dir(&cli)?, c, &p, json),
        Command::Send { name, text, wait, timeout } => {
            send(&data_dir(&cli)?, &profile, name, text, *wait, *timeout, json)
        }
        Command::Inbox => {
            let v = Client::connect(&data_dir(&cli)?)?.call("conversation.list", p(json!({})))?;
            show(json, &v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let last = &c["last_message"];
                        let arrow = if last["direction"] == "out" { "you: " } else { "" };
                        vec![
                            cell(&c["contact"]),
                            if c["unread"].as_u64().unwrap_or(0) > 0 { cell(&c["unread"]) } else { String::new() },
                            cell(&c["status"]),
                            c["labels"]
                                .as_array()
                                .map(|l| l.iter().map(cell).collect::<Vec<_>>().join(", "))
                                .unwrap_or_default(),
                            output::time(c["last_activity_ms"].as_u64().unwrap_or(0)),
                            format!("{arrow}{}", output::content(&last["content"])),
                        ]
                    })
                    .collect();
                output::table(&["CONTACT", "UNREAD", "STATUS", "LABELS", "WHEN", "LAST MESSAGE"], &rows)
            })
        }
        Command::History { name, limit } => {
            let v =
                Client::connect(&data_dir(&cli)?)?.call("message.history", p(json!({"with": name, "limit": limit})))?;
            show(json, &v, print_history)
        }
        Command::Requests { action } => {
            let mut client = Client::connect(&data_dir(&cli)?)?;
            let v = match action {
                None | Some(RequestCommand::List) => client.call("request.list", p(json!({})))?,
                Some(RequestCommand::Accept { name, rename }) => {
                    client.call("request.accept", p(json!({"name": name, "rename": rename})))?
                }
                Some(RequestCommand::Block { name }) => client.call("request.block", p(json!({"name": name})))?,
            };
            // Requests dropped at the limit (oldest first) are told, so the
            // list is never taken for all there was.
            let dropped: Vec<(String, u64, u64)> = if v.is_array() {
                let info = client.call("node.info", json!({}))?;
                info["profiles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|pr| pr["name"] == profile.as_str())
                    .filter_map(|pr| {
                        let guard = &pr["guard"];
                        let n = guard["strangers_dropped"].as_u64().filter(|n| *n > 0)?;
                        Some((cell(&pr["name"]), n, guard["stranger_limit"].as_u64().unwrap_or(0)))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            show(json, &v, |v| {
                match v.as_array() {
                    Some(list) if list.is_empty() => outln!("no message requests")?,
                    Some(list) => {
                        let rows: Vec<Vec<String>> =
                            list.iter().map(|c| vec![cell(&c["name"]), cell(&c["peer_id"])]).collect();
                        output::table(&["NAME", "PEER ID"], &rows)?;
                    }
                    None => {
                        outln!("{}: {}", cell(&v["name"]), if v["blocked"] == true { "blocked" } else { "accepted" })?
                    }
                }
                for (name, n, limit) in &dropped {
                    outln!(
                        "{name}: {n} older request(s) were dropped, with what they sent, to stay within {limit} pending"
                    )?;
                }
                Ok(())
            })
        }
        Command::Chat { name } => chat(&data_dir(&cli)?, &profile, name),
        Command::Business(b) => business(&data_dir(&cli)?, b, &p, json),
        Command::Catalog { name, timeout } => catalog(&data_dir(&cli)?, &profile, name, *timeout, json),
        Command::Order { name, items, note } => order(&data_dir(&cli)?, &profile, name, items, note.as_deref(), json),
        Command::Testnet(TestnetCommand::Run {
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
        }) => testnet::run(testnet::TestnetOptions {
            nodes: *nodes as usize,
            messages: *messages as usize,
            dir: dir.clone(),
            keep: *keep,
            json,
            kill_rate: *kill_rate,
            timeout: Duration::from_secs(*timeout),
            seed: *seed,
            nat: nat.then(|| testnet::NatOptions { symmetric: *symmetric, relays: *relays as usize }),
            offline: (*offline_rate != 0.0).then(|| testnet::OfflineOptions {
                rate: *offline_rate,
                mailboxes: *mailboxes as usize,
                stretch: Duration::try_from_secs_f64(*offline_for).unwrap_or(Duration::ZERO),
            }),
            hostile: *hostile as usize,
            hostile_for: Duration::try_from_secs_f64(*hostile_for).unwrap_or(Duration::ZERO),
        }),
        Command::Serve(args) => {
            // Its own directory: by default apart from the profiles' one.
            let dir = match &cli.data_dir {
                Some(d) => d.clone(),
                None => data_dir(&cli)?.join("serve"),
            };
            if dir.join(kabar_storage::header::HEADER_FILE).exists() {
                bail!(
                    "{} holds profiles (set by --data-dir or KABAR_DATA_DIR); give `kabar serve` a directory of its own with --data-dir",
                    dir.display()
                );
            }
            reach::serve(args, &dir, json)
        }
        Command::Relay(r) => reach::relay(&data_dir(&cli)?, r, &cli.profile, json),
        Command::Mailbox(m) => mailbox::mailbox(&data_dir(&cli)?, m, &cli.profile, json),
        Command::Rpc { method, params } => {
            let params: Value = serde_json::from_str(params).context("params must be a JSON object")?;
            let v = Client::connect(&data_dir(&cli)?)?.call(method, params)?;
            let text = serde_json::to_string_pretty(&v)?;
            // JSON either way; on a terminal (no --json) with the controls a
            // peer may have put in strings written as \uXXXX: the same value.
            if json { out::exact(&text) } else { out::exact(&safe::printable_json(&text)) }
        }
    }
}

fn s(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| if v.is_null() { String::new() } else { v.to_string() })
}

/// `kabar history` (and the start of `kabar chat`) for humans.
fn print_history(v: &Value) -> Result<()> {
    let contact = cell(&v["contact"]);
    for m in v["messages"].as_array().into_iter().flatten() {
        outln!("{}", history_line(m, &contact))?;
    }
    Ok(())
}

/// One message of a conversation with `contact` (already escaped) as a line
/// of `kabar history` and `kabar chat`: peer text escaped, one line.
fn history_line(m: &Value, contact: &str) -> String {
    let who = if m["direction"] == "out" { "you" } else { contact };
    let mark = if m["direction"] == "out" { output::status(m["status"].as_str().unwrap_or("")) } else { "" };
    // The sender's clock, marked when it lies in the future.
    let future = if m["sent_at_in_future"] == true { "(future!) " } else { "" };
    let line = format!(
        "{:>11}  {:<12} {future}{} {}",
        output::time(m["sent_at_ms"].as_u64().unwrap_or(0)),
        who,
        output::content(&m["content"]),
        mark
    );
    line.trim_end().to_string()
}

fn contact(dir: &Path, c: &ContactCommand, p: &dyn Fn(Value) -> Value, json: bool) -> Result<()> {
    let mut client = Client::connect(dir)?;
    match c {
        ContactCommand::Add { card, name } => {
            let v = client.call("contact.add", p(json!({"card": card, "name": name})))?;
            show(json, &v, |v| {
                outln!("added {} ({}, {})", cell(&v["name"]), cell(&v["kind"]), cell(&v["peer_id"]))?;
                if v["identity_change_warning"] == true {
                    outln!(
                        "WARNING: {}'s identity key changed. Compare safety numbers: kabar contact verify {}",
                        cell(&v["name"]),
                        cell(&v["name"])
                    )?;
                }
                Ok(())
            })
        }
        ContactCommand::List => {
            let v = client.call("contact.list", p(json!({})))?;
            show(json, &v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let mut flags = Vec::new();
                        if c["verified"] == true {
                            flags.push("verified");
                        }
                        if c["blocked"] == true {
                            flags.push("blocked");
                        }
                        if c["request"] == true {
                            flags.push("request");
                        }
                        if c["identity_changed"] == true {
                            flags.push("KEY CHANGED");
                        }
                        vec![cell(&c["name"]), cell(&c["kind"]), flags.join(","), cell(&c["peer_id"])]
                    })
                    .collect();
                output::table(&["NAME", "KIND", "FLAGS", "PEER ID"], &rows)
            })
        }
        ContactCommand::Verify { name, confirm } => {
            let v = client.call("contact.verify", p(json!({"name": name, "confirm": confirm})))?;
            show(json, &v, |v| {
                outln!("Safety number with {}:\n\n  {}\n", cell(&v["name"]), cell(&v["safety_number"]))?;
                if v["verified"] == true {
                    outln!("{} is verified.", cell(&v["name"]))?;
                } else {
                    outln!(
                        "Compare it with {} in person or on a call; if it matches: kabar contact verify {} --confirm",
                        cell(&v["name"]),
                        cell(&v["name"])
                    )?;
                }
                Ok(())
            })
        }
        ContactCommand::Block { name } | ContactCommand::Unblock { name } => {
            let method = if matches!(c, ContactCommand::Block { .. }) { "contact.block" } else { "contact.unblock" };
            let v = client.call(method, p(json!({"name": name})))?;
            show(json, &v, |v| {
                outln!("{} is {}", cell(&v["name"]), if v["blocked"] == true { "blocked" } else { "unblocked" })
            })
        }
    }
}

fn send(dir: &Path, profile: &str, name: &str, text: &str, wait: bool, timeout: u64, json: bool) -> Result<()> {
    let mut client = Client::connect(dir)?;
    if wait {
        client.subscribe()?;
    }
    let v = client.call("message.send", json!({"profile": profile, "to": name, "text": text}))?;
    let id = s(&v["message_id"]);
    let mut result = json!({"message_id": id, "status": "sent"});
    if wait {
        let mut status_client = Client::connect(dir)?;
        let deadline = Instant::now() + Duration::from_secs(timeout);
        loop {
            let st = status_client.call("message.status", json!({"profile": profile, "message_id": id}))?;
            let status = s(&st["status"]);
            // Only the recipient's own acknowledgement counts: "stored" (held
            // by its mailbox while it is offline) is not delivered yet.
            if status == "delivered" || status == "read" {
                result["status"] = json!(status);
                break;
            }
            if status == "failed" {
                bail!("message {id} failed: the recipient refused it");
            }
            if client.next_event(deadline)?.is_none() {
                if json {
                    result["status"] = json!(status);
                    out::exact(&serde_json::to_string_pretty(&result)?)?;
                }
                return Err(TimedOut(format!(
                    "message {id} not delivered within {timeout} s; it stays queued and will be retried"
                ))
                .into());
            }
        }
    }
    show(json, &result, |o| outln!("{} {}", cell(&o["message_id"]), cell(&o["status"])))
}

fn chat(dir: &Path, profile: &str, name: &str) -> Result<()> {
    let mut client = Client::connect(dir)?;
    let history = client.call("message.history", json!({"profile": profile, "with": name, "limit": 20}))?;
    let contact = s(&history["contact"]);
    let shown = cell(&history["contact"]);
    outln!("── chat with {shown} ({}) · type and press Enter · Ctrl-D leaves ──", safe::printable(profile))?;
    print_history(&history)?;
    client.call("conversation.read", json!({"profile": profile, "with": name}))?;
    let mut events = Client::connect(dir)?;
    events.subscribe()?;
    // Lines typed by the user arrive through a bounded channel.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Option<String>>(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let mut mine: Vec<String> = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => {
                match client.call("message.send", json!({"profile": profile, "to": name, "text": line})) {
                    Ok(v) => mine.push(s(&v["message_id"])),
                    Err(e) => eprintln!("! {}", safe::printable_block(&format!("{e:#}"))),
                }
            }
            Ok(None) | Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        if let Some(e) = events.next_event(Instant::now() + Duration::from_millis(100))? {
            match e["event"].as_str() {
                Some("message_received") if e["profile"] == json!(profile) && e["contact"] == json!(contact) => {
                    let m =
                        client.call("message.status", json!({"profile": profile, "message_id": e["message_id"]}))?;
                    outln!("{}", history_line(&m, &shown))?;
                    client.call("conversation.read", json!({"profile": profile, "with": name}))?;
                }
                Some("status_changed") if mine.iter().any(|id| e["message_id"] == json!(id)) => {
                    outln!("{:>11}  {}", "", output::status(e["status"].as_str().unwrap_or("")))?;
                }
                _ => {}
            }
        }
        out::flush()?;
    }
    Ok(())
}

fn business(dir: &Path, b: &BusinessCommand, p: &dyn Fn(Value) -> Value, json: bool) -> Result<()> {
    let mut client = Client::connect(dir)?;
    let pretty = |v: &Value| outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    match b {
        BusinessCommand::Profile(BusinessProfileCommand::Show) => {
            let v = client.call("business.profile.get", p(json!({})))?;
            show(json, &v, |v| {
                for f in ["name", "category", "about", "description", "address", "email", "website"] {
                    outln!("{f:<12} {}", cell(&v[f]))?;
                }
                Ok(())
            })
        }
        BusinessCommand::Profile(BusinessProfileCommand::Set {
            name,
            category,
            about,
            description,
            address,
            email,
            website,
        }) => {
            let v = client.call(
                "business.profile.set",
                p(json!({"name": name, "category": category, "about": about, "description": description, "address": address, "email": email, "website": website})),
            )?;
            show(json, &v, |_| outln!("business profile saved"))
        }
        BusinessCommand::Catalog(CatalogCommand::Add { name, price, currency, description }) => {
            let price_minor = parse_price(price)?;
            let v = client.call(
                "business.catalog.add",
                p(json!({"name": name, "price_minor": price_minor, "currency": currency, "description": description})),
            )?;
            show(json, &v, |v| outln!("added {} {} ({})", cell(&v["name"]), output::money(v), cell(&v["id"])))
        }
        BusinessCommand::Catalog(CatalogCommand::List) => {
            let v = client.call("business.catalog.list", p(json!({})))?;
            show(json, &v, print_catalog)
        }
        BusinessCommand::Catalog(CatalogCommand::Remove { id }) => {
            let v = client.call("business.catalog.remove", p(json!({"id": id})))?;
            show(json, &v, |_| outln!("removed"))
        }
        BusinessCommand::Reply(ReplyCommand::Add { shortcut, text }) => {
            let v = client.call("business.reply.add", p(json!({"shortcut": shortcut, "text": text})))?;
            show(json, &v, |v| outln!("/{} saved", cell(&v["shortcut"])))
        }
        BusinessCommand::Reply(ReplyCommand::List) => {
            let v = client.call("business.reply.list", p(json!({})))?;
            show(json, &v, |v| {
                let rows: Vec<Vec<String>> = v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| vec![format!("/{}", cell(&r["shortcut"])), cell(&r["text"])])
                    .collect();
                output::table(&["SHORTCUT", "TEXT"], &rows)
            })
        }
        BusinessCommand::Reply(ReplyCommand::Remove { shortcut }) => {
            let v = client.call("business.reply.remove", p(json!({"shortcut": shortcut})))?;
            show(json, &v, |_| outln!("removed"))
        }
        BusinessCommand::Greeting(g) => {
            let text = match g {
                GreetingCommand::Set { text } => Some(text.clone()),
                GreetingCommand::Off => None,
            };
            let v = client.call("business.greeting.set", p(json!({"text": text})))?;
            show(json, &v, |v| if v["greeting"].is_null() { outln!("greeting off") } else { outln!("greeting set") })
        }
        BusinessCommand::Away(AwayCommand::Set { schedule, text }) => {
            let v = client.call("business.away.set", p(json!({"schedule": schedule, "text": text})))?;
            show(json, &v, |_| outln!("away message: {}", safe::printable(schedule)))
        }
        BusinessCommand::Hours(HoursCommand::Set { days, utc_offset }) => {
            let mut map = serde_json::Map::new();
            for d in days {
                let (day, hours) =
                    d.split_once('=').ok_or_else(|| anyhow!("{d:?}: write DAY=HH:MM-HH:MM, e.g. mon=09:00-17:00"))?;
                map.insert(day.to_string(), json!(hours));
            }
            let v = client.call("business.hours.set", p(json!({"days": map, "utc_offset_minutes": utc_offset})))?;
            show(json, &v, |_| outln!("opening hours saved"))
        }
        BusinessCommand::Label(l) => {
            let v = match l {
                LabelCommand::Add { name, colour } => {
                    client.call("business.label.add", p(json!({"name": name, "colour": colour})))?
                }
                LabelCommand::List => client.call("business.label.list", p(json!({})))?,
                LabelCommand::Apply { label, name } => {
                    client.call("business.label.apply", p(json!({"label": label, "with": name})))?
                }
                LabelCommand::Remove { label } => client.call("business.label.remove", p(json!({"name": label})))?,
            };
            show(json, &v, |v| match l {
                LabelCommand::List => {
                    let rows: Vec<Vec<String>> = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|x| vec![cell(&x["name"]), cell(&x["colour"])])
                        .collect();
                    output::table(&["LABEL", "COLOUR"], &rows)
                }
                _ => pretty(&json!("ok")),
            })
        }
        BusinessCommand::Close { name } => {
            let v = client.call("business.close", p(json!({"with": name})))?;
            show(json, &v, |_| outln!("conversation with {} closed", safe::printable(name)))
        }
    }
}

/// "4.50" → 450 minor units.
fn parse_price(text: &str) -> Result<u64> {
    let bad = || anyhow!("{text:?} is not a price; write e.g. 4.50");
    let (units, frac) = text.split_once(['.', ',']).unwrap_or((text, ""));
    let digits = |x: &str| x.chars().all(|c| c.is_ascii_digit());
    if units.is_empty() || frac.len() > 2 || !digits(units) || !digits(frac) {
        return Err(bad());
    }
    let cents = match frac.len() {
        0 => 0,
        1 => frac.parse::<u64>()? * 10,
        _ => frac.parse::<u64>()?,
    };
    units.parse::<u64>().ok().and_then(|u| u.checked_mul(100)).and_then(|u| u.checked_add(cents)).ok_or_else(bad)
}

/// A catalog (the business's own, or one a business sent) for humans.
fn print_catalog(v: &Value) -> Result<()> {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| {
            vec![
                cell(&i["name"]),
                output::money(i),
                if i["available"] == true { "yes".into() } else { "no".into() },
                cell(&i["description"]),
                cell(&i["id"]),
            ]
        })
        .collect();
    output::table(&["ITEM", "PRICE", "AVAILABLE", "DESCRIPTION", "ID"], &rows)
}

/// The newest catalog a business sent us, from the conversation.
fn latest_catalog(client: &mut Client, profile: &str, name: &str) -> Result<Option<Value>> {
    let h = client.call("message.history", json!({"profile": profile, "with": name, "limit": 200}))?;
    Ok(h["messages"]
        .as_array()
        .into_iter()
        .flatten()
        .rev()
        .find(|m| m["direction"] == "in" && m["content"]["type"] == "catalog")
        .map(|m| m["content"]["items"].clone()))
}

fn catalog(dir: &Path, profile: &str, name: &str, timeout: u64, json: bool) -> Result<()> {
    let mut client = Client::connect(dir)?;
    client.subscribe()?;
    let before = latest_catalog(&mut client, profile, name)?;
    client.call("catalog.request", json!({"profile": profile, "to": name}))?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    loop {
        let event = client.next_event(deadline)?;
        match event {
            None => return Err(TimedOut(format!("{name} did not answer within {timeout} s")).into()),
            Some(e) if e["event"] == "message_received" && e["kind"] == "catalog" => {
                let items = latest_catalog(&mut client, profile, name)?.or(before).unwrap_or(json!([]));
                return show(json, &items, print_catalog);
            }
            Some(_) => {}
        }
    }
}

fn order(dir: &Path, profile: &str, name: &str, args: &[String], note: Option<&str>, json: bool) -> Result<()> {
    let mut client = Client::connect(dir)?;
    let catalog = latest_catalog(&mut client, profile, name)?
        .ok_or_else(|| anyhow!("no catalog from {name} yet; fetch it first: kabar catalog {name}"))?;
    let items = catalog.as_array().cloned().unwrap_or_default();
    let mut lines: Vec<Value> = Vec::new();
    for arg in args {
        let (item, qty) = match arg.rsplit_once('x') {
            Some((i, q)) if !i.is_empty() && q.parse::<u32>().is_ok() => (i.to_string(), q.parse::<u32>()?),
            _ if arg.starts_with('x') && arg[1..].parse::<u32>().is_ok() => {
                let q = arg[1..].parse::<u32>()?;
                let last = lines.last_mut().ok_or_else(|| anyhow!("{arg:?} must follow an item"))?;
                last["quantity"] = json!(q);
                continue;
            }
            _ => (arg.clone(), 1),
        };
        if qty == 0 {
            bail!("quantity must be at least 1");
        }
        let found = items
            .iter()
            .find(|i| s(&i["id"]) == item || s(&i["name"]).eq_ignore_ascii_case(&item))
            .ok_or_else(|| anyhow!("{item:?} is not in {name}'s catalog; see `kabar catalog {name}`"))?;
        lines.push(json!({"item": found["id"], "quantity": qty}));
    }
    let v = client.call("order.place", json!({"profile": profile, "to": name, "items": lines, "note": note}))?;
    show(json, &v, |v| outln!("order sent ({})", cell(&v["message_id"])))
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
    let v = json!({"data_dir": dir, "profiles": profiles});
    show(json, &v, |v| {
        outln!("Created {}", safe::printable(&dir.display().to_string()))?;
        let rows: Vec<Vec<String>> = v["profiles"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| vec![cell(&p["name"]), cell(&p["kind"]), cell(&p["peer_id"])])
            .collect();
        output::table(&["PROFILE", "KIND", "PEER ID"], &rows)?;
        outln!("Next: kabar node run")
    })
}

/// Logs of a long-running process (`node run`, `serve`) to stderr:
/// RUST_LOG, else warnings only.
fn init_logging() {
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
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A history line of a message from a contact whose name (from its card)
    /// and text carry escape sequences: shown escaped, on one line.
    #[test]
    fn a_history_line_shows_a_peers_escapes_on_one_line() {
        let v = json!({"contact": "Mal\x1b]0;pwned\x07\u{202e}", "messages": [{
            "direction": "in", "status": "delivered", "sent_at_ms": 0,
            "content": {"type": "text", "text": "hi\x1b[2J\u{9b}31m\u{7f}\r\nFAKE line"},
        }]});
        let line = history_line(&v["messages"][0], &cell(&v["contact"]));
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("Mal\\u{1b}]0;pwned\\u{7}\\u{202e} hi\\u{1b}[2J\\u{9b}31m\\u{7f}\\u{d} FAKE line"),
            "{line}"
        );
    }
}
