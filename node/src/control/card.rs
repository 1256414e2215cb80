//! `card.get`: this profile's contact card, with the addresses its loop
//! advertises.

use serde_json::{Value, json};

use super::params::{job, ok, opt_str};
use crate::card::ContactCard;
use crate::profile::EngineJob;

pub(super) fn job_for(method: &str, params: &Value) -> Option<EngineJob> {
    let p = params.clone();
    Some(match method {
        "card.get" => job(move |engine, status| {
            let name = opt_str(&p, "name")?.map(str::to_string).unwrap_or_else(|| status.name.clone());
            let own = engine.own_card()?;
            // Public addresses, relay circuits, then listen addresses
            // (crate::addresses::advertised).
            let addresses = status.advertised.iter().filter_map(|a| a.parse().ok()).collect();
            let card = ContactCard {
                identity: own.identity,
                signed_prekey: own.signed_prekey,
                display_name: name,
                addresses,
                mailboxes: own.mailboxes,
            };
            ok(json!({"card": card.to_uri(), "peer_id": card.peer_id().to_string()}))
        }),
        _ => return None,
    })
}
