//! `kabar contact …` and `kabar requests …`: contacts, safety numbers,
//! blocking, and message requests from strangers.

use anyhow::Result;
use clap::Subcommand;
use serde_json::{Value, json};

use super::Ctx;
use crate::out::outln;
use crate::output::{self, cell};
use crate::show;

#[derive(Debug, Subcommand)]
pub(crate) enum ContactCommand {
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
    /// File a contact under another name (a new customer too).
    ///
    /// Example: kabar contact rename vPoDUebU… Ann
    Rename {
        /// The contact's name now.
        name: String,
        /// The new name.
        to: String,
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
pub(crate) enum RequestCommand {
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

pub(crate) fn run(ctx: &Ctx, c: &ContactCommand) -> Result<()> {
    let json = ctx.json;
    let p = |v: Value| ctx.p(v);
    let mut client = ctx.client()?;
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
        ContactCommand::Rename { name, to } => {
            let v = client.call("contact.rename", p(json!({"name": name, "to": to})))?;
            show(json, &v, |v| outln!("renamed to {}", cell(&v["name"])))
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

/// `kabar requests [list | accept | block]`.
pub(crate) fn requests(ctx: &Ctx, action: Option<&RequestCommand>) -> Result<()> {
    let json = ctx.json;
    let profile = ctx.profile.as_str();
    let p = |v: Value| ctx.p(v);
    let mut client = ctx.client()?;
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
            .filter(|pr| pr["name"] == profile)
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
                let rows: Vec<Vec<String>> = list.iter().map(|c| vec![cell(&c["name"]), cell(&c["peer_id"])]).collect();
                output::table(&["NAME", "PEER ID"], &rows)?;
            }
            None => outln!("{}: {}", cell(&v["name"]), if v["blocked"] == true { "blocked" } else { "accepted" })?,
        }
        for (name, n, limit) in &dropped {
            outln!("{name}: {n} older request(s) were dropped, with what they sent, to stay within {limit} pending")?;
        }
        Ok(())
    })
}
