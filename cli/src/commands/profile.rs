//! `kabar profile …` and `kabar card`: the identities of the data
//! directory, and a profile's contact card.

use anyhow::{Context, Result, anyhow, bail};
use clap::Subcommand;
use kabar_crypto::ProfileKind;
use kabar_storage::DataDir;
use serde_json::json;

use super::Ctx;
use crate::client::Client;
use crate::out::outln;
use crate::output::{self, cell};
use crate::{passphrase, s, safe, show};

#[derive(Debug, Subcommand)]
pub(crate) enum ProfileCommand {
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

pub(crate) fn run(ctx: &Ctx, command: &ProfileCommand) -> Result<()> {
    let json = ctx.json;
    match command {
        ProfileCommand::List => {
            let list = DataDir::list_profiles(&ctx.dir()?)?;
            let v = json!(list.iter().map(|p| json!({"name": p.name, "kind": p.kind.to_string()})).collect::<Vec<_>>());
            show(json, &v, |_| {
                let rows: Vec<Vec<String>> =
                    list.iter().map(|p| vec![safe::printable(&p.name).into_owned(), p.kind.to_string()]).collect();
                output::table(&["PROFILE", "KIND"], &rows)
            })
        }
        ProfileCommand::Create { name, kind } => {
            let dir = ctx.dir()?;
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
        ProfileCommand::Remove { name, yes } => super::store::remove_profile(&ctx.dir()?, name, *yes, json),
        ProfileCommand::Show => {
            let info = ctx.client()?.call("node.info", json!({}))?;
            let prof = info["profiles"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|x| x["name"] == json!(ctx.profile))
                .cloned()
                .ok_or_else(|| anyhow!("no profile named {:?}; see `kabar profile list`", ctx.profile))?;
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
    }
}

/// `kabar card`: this profile's contact card, as text or a QR code.
pub(crate) fn card(ctx: &Ctx, qr: bool, name: Option<&str>) -> Result<()> {
    let v = ctx.client()?.call("card.get", ctx.p(json!({"name": name})))?;
    let card = s(&v["card"]);
    if qr && !ctx.json {
        outln!("{}", qr_code(&card)?)?;
    }
    ctx.show(&v, |_| outln!("{}", safe::printable(&card)))
}

/// A card drawn as a QR code with Unicode half blocks (two rows per line).
pub(crate) fn qr_code(card: &str) -> Result<String> {
    let code = qrcode::QrCode::new(card.as_bytes()).context("the card is too long for a QR code")?;
    Ok(code.render::<qrcode::render::unicode::Dense1x2>().quiet_zone(true).build())
}
