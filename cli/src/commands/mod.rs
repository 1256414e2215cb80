//! The commands, one module per command family, each with its clap
//! definitions beside the code that runs them.

use std::path::PathBuf;

use anyhow::{Result, anyhow};
use serde_json::{Value, json};

use crate::client::Client;

pub(crate) mod business;
pub(crate) mod contact;
pub(crate) mod demo;
pub(crate) mod init;
pub(crate) mod mailbox;
pub(crate) mod message;
pub(crate) mod node;
pub(crate) mod profile;
pub(crate) mod reach;
pub(crate) mod store;
pub(crate) mod testnet;

/// What every command is run with: the global options.
pub(crate) struct Ctx {
    /// `--data-dir` (or KABAR_DATA_DIR), if given.
    pub(crate) data_dir: Option<PathBuf>,
    /// `--profile`: the identity to act as.
    pub(crate) profile: String,
    /// `--json`.
    pub(crate) json: bool,
}

impl Ctx {
    /// The data directory: `--data-dir`, else the platform's data directory.
    pub(crate) fn dir(&self) -> Result<PathBuf> {
        if let Some(d) = &self.data_dir {
            return Ok(d.clone());
        }
        let dirs = directories::ProjectDirs::from("", "", "kabar")
            .ok_or_else(|| anyhow!("cannot find a home directory; pass --data-dir"))?;
        Ok(dirs.data_dir().to_path_buf())
    }

    /// A connection to the running node's control socket.
    pub(crate) fn client(&self) -> Result<Client> {
        Client::connect(&self.dir()?)
    }

    /// `params` with the `--profile` profile added.
    pub(crate) fn p(&self, mut params: Value) -> Value {
        params["profile"] = json!(self.profile);
        params
    }

    /// Prints `value` as JSON with `--json`, else its human form.
    pub(crate) fn show(&self, value: &Value, human: impl FnOnce(&Value) -> Result<()>) -> Result<()> {
        crate::show(self.json, value, human)
    }
}
