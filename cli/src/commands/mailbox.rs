//! `kabar mailbox …`: the mailboxes a profile registers on service nodes
//! (`kabar serve --mailbox`), where contacts deposit envelopes while it is
//! offline.

use std::path::Path;

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use crate::client::Client;
use crate::out::outln;
use crate::output::{self, cell};
use crate::{safe, show};

/// `kabar mailbox …` (for the `--profile` profile).
#[derive(Debug, Subcommand)]
pub(crate) enum MailboxCommand {
    /// Register a mailbox on a service node and tell contacts to deposit there while this profile is offline.
    ///
    /// Example: kabar --profile shop mailbox add /ip4/203.0.113.7/tcp/4040/p2p/12D3KooW…
    Add {
        /// The service node's multiaddr, ending in /p2p/<PeerId>, as `kabar serve --mailbox` prints it.
        address: String,
    },
    /// Delete a mailbox on its host and tell contacts to stop depositing there.
    ///
    /// Example: kabar --profile shop mailbox remove /ip4/203.0.113.7/tcp/4040/p2p/12D3KooW…
    Remove {
        /// The mailbox's address, as `kabar mailbox list` shows it.
        address: String,
    },
    /// Each profile's mailboxes and how fetching them went.
    ///
    /// Example: kabar mailbox list
    List,
    /// Fetch the --profile profile's mailboxes now (the node also fetches on start, every 30 s and on reconnecting).
    ///
    /// Example: kabar --profile shop mailbox fetch
    Fetch,
}

/// How the last fetch of a mailbox (as `mailbox.list` shows it) went.
pub(crate) fn last_fetch(m: &Value) -> String {
    match (m["last_fetch_ms"].as_u64(), m["last_error"].as_str()) {
        (Some(0) | None, _) => "not fetched yet".to_string(),
        (Some(_), Some(error)) => format!("failed: {}", safe::printable(error)),
        (Some(at), None) => format!("ok {}", output::time(at)),
    }
}

pub(crate) fn mailbox(dir: &Path, command: &MailboxCommand, profile: &str, json: bool) -> Result<()> {
    let mut client = Client::connect(dir)?;
    let v = match command {
        MailboxCommand::Add { address } => {
            client.call("mailbox.add", json!({"address": address, "profile": profile}))?;
            client.call("mailbox.list", json!({"profile": profile}))?
        }
        MailboxCommand::Remove { address } => {
            client.call("mailbox.remove", json!({"address": address, "profile": profile}))?;
            client.call("mailbox.list", json!({"profile": profile}))?
        }
        MailboxCommand::List => client.call("mailbox.list", json!({}))?,
        MailboxCommand::Fetch => {
            let v = client.call("mailbox.fetch", json!({"profile": profile}))?;
            return show(json, &v, |v| {
                outln!("{} envelope(s) fetched", cell(&v["fetched"]))?;
                for e in v["errors"].as_array().into_iter().flatten() {
                    outln!("failed: {}", cell(e))?;
                }
                Ok(())
            });
        }
    };
    show(json, &v, |v| {
        let mut rows = Vec::new();
        for (profile, list) in v["mailboxes"].as_object().into_iter().flatten() {
            for m in list.as_array().into_iter().flatten() {
                rows.push(vec![
                    safe::printable(profile).into_owned(),
                    cell(&m["address"]),
                    cell(&m["fetched"]),
                    last_fetch(m),
                ]);
            }
        }
        if rows.is_empty() {
            outln!("no mailboxes; add one with `kabar mailbox add ADDRESS` (a `kabar serve --mailbox` node)")
        } else {
            output::table(&["PROFILE", "MAILBOX", "FETCHED", "LAST FETCH"], &rows)
        }
    })
}
