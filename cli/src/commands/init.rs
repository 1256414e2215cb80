//! `kabar init`: a new data directory with a personal profile (and
//! optionally a business one).

use std::path::Path;

use anyhow::{Result, bail};
use kabar_crypto::ProfileKind;
use kabar_storage::{DataDir, KdfParams};
use serde_json::{Value, json};

use crate::out::outln;
use crate::output::{self, cell};
use crate::{passphrase, safe, show};

pub(crate) fn init(dir: &Path, business: Option<&str>, testnet_kdf: bool, json: bool) -> Result<()> {
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
