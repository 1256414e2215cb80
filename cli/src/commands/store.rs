//! Offline commands on the profile stores (the node must be stopped: it
//! holds the database files): `kabar store check`, which reports damage
//! without writing to any file, and `kabar profile remove`, which moves a
//! profile out of the data directory (docs/cli.md, "Damaged profiles").

use std::path::Path;

use anyhow::{Result, bail};
use clap::Subcommand;
use kabar_storage::{DataDir, ProfileReport, StoreError};
use serde_json::json;

use crate::client::Client;
use crate::out::outln;
use crate::{passphrase, safe, show};

/// Exit code when a store is damaged: `store check` found damage, or
/// `node run` refused to start because of it.
pub(crate) const EXIT_DAMAGED: u8 = 5;

/// A damaged store (exit code [`EXIT_DAMAGED`]); the message says what
/// to do.
#[derive(Debug)]
pub(crate) struct Damaged(pub(crate) String);

impl std::fmt::Display for Damaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Damaged {}

/// Whether `error` says a store is damaged (for the exit code).
pub(crate) fn is_damage(error: &anyhow::Error) -> bool {
    error.downcast_ref::<Damaged>().is_some()
        || error.downcast_ref::<StoreError>().is_some_and(StoreError::is_damage)
        || match error.downcast_ref::<kabar_node::NodeError>() {
            Some(kabar_node::NodeError::Store(e)) => e.is_damage(),
            Some(kabar_node::NodeError::Engine(kabar_node::engine::EngineError::Store(e))) => e.is_damage(),
            _ => false,
        }
}

#[derive(Debug, Subcommand)]
pub(crate) enum StoreCommand {
    /// Check every profile's database without changing any file: every page's checksum, every table read, every record decrypted. Stop the node first. Exit code 5 if anything is damaged.
    ///
    /// Example: kabar store check
    Check {
        /// Profiles to check [default: all].
        profiles: Vec<String>,
    },
}

pub(crate) fn run(dir: &Path, command: &StoreCommand, json: bool) -> Result<()> {
    match command {
        StoreCommand::Check { profiles } => check(dir, profiles, json),
    }
}

fn refuse_if_running(dir: &Path, what: &str) -> Result<()> {
    if Client::connect(dir).is_ok() {
        bail!("the node is running and holds the profile databases; stop it first (`kabar node stop`), then {what}");
    }
    Ok(())
}

fn check(dir: &Path, only: &[String], json: bool) -> Result<()> {
    refuse_if_running(dir, "check")?;
    // redb can panic on damaged pages; the store catches it and the report
    // says what failed, so the panic's own message would only be noise.
    std::panic::set_hook(Box::new(|_| {}));
    // A damaged header is damage too: reported, exit code 5.
    let header_damage = |e: StoreError| -> Result<()> {
        if !e.is_damage() {
            return Err(e.into());
        }
        let v = json!({"healthy": false, "header_error": e.to_string(), "profiles": []});
        show(json, &v, |_| outln!("header    DAMAGED: {}", safe::printable_block(&e.to_string())))?;
        Err(Damaged(format!("the data directory's header is damaged: {e}")).into())
    };
    if let Err(e) = DataDir::list_profiles(dir) {
        return header_damage(e);
    }
    let pass = passphrase(false)?;
    let data = match DataDir::open(dir, &pass) {
        Ok(data) => data,
        Err(e) => return header_damage(e),
    };
    let names: Vec<String> =
        if only.is_empty() { data.profiles().iter().map(|p| p.name.clone()).collect() } else { only.to_vec() };
    let mut reports = Vec::new();
    for name in &names {
        reports.push(data.check_profile(name)?);
    }
    let damaged: Vec<&str> = reports.iter().filter(|r| !r.healthy).map(|r| r.profile.as_str()).collect();
    let v = json!({"healthy": damaged.is_empty(), "profiles": reports});
    show(json, &v, |_| {
        for report in &reports {
            print_report(report)?;
        }
        Ok(())
    })?;
    if damaged.is_empty() {
        return Ok(());
    }
    Err(Damaged(format!(
        "damaged: {} (see docs/cli.md, \"Damaged profiles\", for what to do)",
        damaged.iter().map(|n| safe::printable(n).into_owned()).collect::<Vec<_>>().join(", ")
    ))
    .into())
}

fn print_report(r: &ProfileReport) -> Result<()> {
    let rows: u64 = r.tables.iter().map(|t| t.rows).sum();
    let file = safe::printable(&r.file.display().to_string()).into_owned();
    let name = safe::printable(&r.profile).into_owned();
    if r.healthy {
        let schema = r.schema_version.map_or(String::new(), |v| format!(", schema {v}"));
        return outln!("{name}: healthy ({file}: {} tables, {rows} rows{schema})", r.tables.len());
    }
    outln!("{name}: DAMAGED ({file})")?;
    if let Some(error) = &r.error {
        outln!("  file: {}", safe::printable(error))?;
        if !r.tables.is_empty() {
            outln!("  read without the integrity check, the tables show:")?;
        }
    }
    for t in &r.tables {
        if t.healthy() {
            continue;
        }
        outln!("  table {}: {} rows read, {} damaged", t.table, t.rows, t.damaged_rows)?;
        if let Some(error) = &t.error {
            outln!("    stopped: {}", safe::printable(error))?;
        }
        for row in &t.damaged {
            outln!("    key {}: {}", row.key, safe::printable(&row.reason))?;
        }
        if t.damaged_rows > t.damaged.len() as u64 {
            outln!("    … and {} more", t.damaged_rows - t.damaged.len() as u64)?;
        }
    }
    Ok(())
}

/// `kabar profile remove NAME --yes`.
pub(crate) fn remove_profile(dir: &Path, name: &str, yes: bool, json: bool) -> Result<()> {
    refuse_if_running(dir, "remove the profile")?;
    if !yes {
        bail!(
            "removing {} discards its key: without a copy of the data directory made before, its contacts and messages are gone for good. Copy the data directory, then run again with --yes",
            safe::printable(name)
        );
    }
    let pass = passphrase(false)?;
    let mut data = DataDir::open(dir, &pass)?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let moved = data.remove_profile(name, now)?;
    let v = json!({"name": name, "moved_to": moved});
    show(json, &v, |_| match &moved {
        Some(to) => outln!(
            "removed profile {}; its database is now {}",
            safe::printable(name),
            safe::printable(&to.display().to_string())
        ),
        None => outln!("removed profile {} (its database file was already gone)", safe::printable(name)),
    })
}
