//! `kabar`: the command-line client of Kabar. `kabar init` and
//! `kabar node run` work on the data directory directly; every other command
//! is a thin client of the running node's JSON-RPC control socket
//! (docs/api.md). The only crate that prints for humans.
//!
//! Layout: [`commands`] holds one module per command family (its clap
//! definitions beside what it runs); [`tui`] is the full-screen app;
//! [`client`], [`out`], [`output`] and [`safe`] are shared by all.
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
mod commands;
mod out;
mod output;
mod safe;
mod testnet;
mod tui;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{CommandFactory, Parser, Subcommand};
use client::{EXIT_NO_NODE, EXIT_TIMEOUT, NoNode, TimedOut};
use commands::{Ctx, store};
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
    Node(commands::node::NodeCommand),
    /// List, create, show or remove profiles.
    #[command(subcommand)]
    Profile(commands::profile::ProfileCommand),
    /// Check the profile databases for damage (node stopped).
    #[command(subcommand)]
    Store(commands::store::StoreCommand),
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
    Contact(commands::contact::ContactCommand),
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
        action: Option<commands::contact::RequestCommand>,
    },
    /// An interactive conversation in this terminal (line mode). Type and press
    /// Enter to send; Ctrl-D or Ctrl-C leaves.
    ///
    /// Example: kabar chat Bob
    Chat {
        /// Contact name.
        name: String,
    },
    /// A full-screen messenger for every profile of the running node: conversations, chat, requests, business tools.
    ///
    /// Keys are shown at the bottom; ? shows them all. Example: kabar tui Bob
    Tui {
        /// A conversation to open at once (of the --profile profile).
        name: Option<String>,
    },
    /// Business tools (business profiles).
    #[command(subcommand)]
    Business(commands::business::BusinessCommand),
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
    Testnet(commands::testnet::TestnetCommand),
    /// Run a service node for others: a relay, AutoNAT and DHT server, with --mailbox also mailboxes (no profiles, no passphrase).
    ///
    /// Example: kabar serve --data-dir /var/lib/kabar-serve --listen /ip4/0.0.0.0/tcp/4040
    Serve(commands::reach::ServeArgs),
    /// The relays the profiles reserve a slot on when they are behind a NAT.
    #[command(subcommand)]
    Relay(commands::reach::RelayCommand),
    /// The --profile profile's mailboxes: where contacts deposit messages while it is offline.
    #[command(subcommand)]
    Mailbox(commands::mailbox::MailboxCommand),
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

/// The passphrase: KABAR_PASSPHRASE, else a prompt (twice with `confirm`).
pub(crate) fn passphrase(confirm: bool) -> Result<Vec<u8>> {
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
pub(crate) fn show(json: bool, value: &Value, human: impl FnOnce(&Value) -> Result<()>) -> Result<()> {
    if json { out::exact(&serde_json::to_string_pretty(value)?) } else { human(value) }
}

fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx { data_dir: cli.data_dir.clone(), profile: cli.profile.clone(), json: cli.json };
    match &cli.command {
        Command::Demo { messages } => commands::demo::run(*messages),
        Command::Completions { shell } => {
            // Generated into memory: clap_complete panics when a write fails.
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "kabar", &mut script);
            out::exact_bytes(&script)
        }
        Command::Init { business, testnet_kdf } => {
            commands::init::init(&ctx.dir()?, business.as_deref(), *testnet_kdf, ctx.json)
        }
        Command::Node(command) => commands::node::run(&ctx, command),
        Command::Profile(command) => commands::profile::run(&ctx, command),
        Command::Store(command) => store::run(&ctx.dir()?, command, ctx.json),
        Command::Card { qr, name } => commands::profile::card(&ctx, *qr, name.as_deref()),
        Command::Contact(command) => commands::contact::run(&ctx, command),
        Command::Requests { action } => commands::contact::requests(&ctx, action.as_ref()),
        Command::Send { name, text, wait, timeout } => commands::message::send(&ctx, name, text, *wait, *timeout),
        Command::Inbox => commands::message::inbox(&ctx),
        Command::History { name, limit } => commands::message::history(&ctx, name, *limit),
        Command::Chat { name } => commands::message::chat(&ctx.dir()?, &ctx.profile, name),
        Command::Tui { name } => tui::run(&ctx, name.as_deref()),
        Command::Business(command) => commands::business::run(&ctx, command),
        Command::Catalog { name, timeout } => {
            commands::business::catalog(&ctx.dir()?, &ctx.profile, name, *timeout, ctx.json)
        }
        Command::Order { name, items, note } => {
            commands::business::order(&ctx.dir()?, &ctx.profile, name, items, note.as_deref(), ctx.json)
        }
        Command::Testnet(command) => commands::testnet::run(&ctx, command),
        Command::Serve(args) => {
            // Its own directory: by default apart from the profiles' one.
            let dir = match &cli.data_dir {
                Some(d) => d.clone(),
                None => ctx.dir()?.join("serve"),
            };
            if dir.join(kabar_storage::header::HEADER_FILE).exists() {
                bail!(
                    "{} holds profiles (set by --data-dir or KABAR_DATA_DIR); give `kabar serve` a directory of its own with --data-dir",
                    dir.display()
                );
            }
            commands::reach::serve(args, &dir, ctx.json)
        }
        Command::Relay(r) => commands::reach::relay(&ctx.dir()?, r, &ctx.profile, ctx.json),
        Command::Mailbox(m) => commands::mailbox::mailbox(&ctx.dir()?, m, &ctx.profile, ctx.json),
        Command::Rpc { method, params } => {
            let params: Value = serde_json::from_str(params).context("params must be a JSON object")?;
            let v = ctx.client()?.call(method, params)?;
            let text = serde_json::to_string_pretty(&v)?;
            // JSON either way; on a terminal (no --json) with the controls a
            // peer may have put in strings written as \uXXXX: the same value.
            if ctx.json { out::exact(&text) } else { out::exact(&safe::printable_json(&text)) }
        }
    }
}

pub(crate) fn s(v: &Value) -> String {
    v.as_str().map(str::to_string).unwrap_or_else(|| if v.is_null() { String::new() } else { v.to_string() })
}
