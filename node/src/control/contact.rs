//! `contact.*` and `request.*`: contacts and message requests.

use serde_json::{Value, json};

use super::params::{contact, job, ok, opt_bool, opt_str, str_param};
use crate::card::ContactCard;
use crate::ops::NewContact;
use crate::profile::{EngineJob, now_ms};
use crate::rpc_error::{RpcError, codes};

pub(super) fn job_for(method: &str, params: &Value) -> Option<EngineJob> {
    let p = params.clone();
    Some(match method {
        "contact.add" => job(move |engine, _| {
            let card = ContactCard::from_uri(str_param(&p, "card")?)
                .map_err(|e| RpcError::new(codes::BAD_CARD, e.to_string()))?;
            let name = opt_str(&p, "name")?.map(str::to_string).unwrap_or_else(|| card.display_name.clone());
            let new = NewContact {
                identity: card.identity,
                signed_prekey: card.signed_prekey,
                name,
                addresses: card.addresses.iter().map(|a| a.to_string()).collect(),
                mailboxes: card.mailboxes,
            };
            let (added, actions) = engine.add_contact_card(new, now_ms())?;
            let mut v = contact_json(&added.contact);
            v["identity_change_warning"] = json!(added.identity_changed);
            Ok((v, actions))
        }),
        "contact.list" => {
            job(move |engine, _| ok(Value::Array(engine.contact_list()?.iter().map(contact_json).collect())))
        }
        "contact.verify" => job(move |engine, _| {
            let (id, _) = contact(engine, &p, "name")?;
            let confirm = opt_bool(&p, "confirm")?.unwrap_or(false);
            let v = engine.verify_contact(&id, confirm)?;
            let number = &v.safety_number;
            ok(json!({
                "name": v.contact.display_name,
                "safety_number": number.display(),
                "digits": number.digits(),
                "qr_payload": number.qr_payload(),
                "verified": v.verified,
            }))
        }),
        "contact.rename" => job(move |engine, _| {
            let (id, _) = contact(engine, &p, "name")?;
            ok(contact_json(&engine.rename_contact(&id, str_param(&p, "to")?)?))
        }),
        "contact.block" | "contact.unblock" | "request.block" => {
            let block = method != "contact.unblock";
            job(move |engine, _| {
                let (id, _) = contact(engine, &p, "name")?;
                // Also revokes (or restores) its deposit tag in our mailboxes.
                let (c, actions) = engine.set_blocked(&id, block)?;
                Ok((contact_json(&c), actions))
            })
        }
        "request.list" => job(move |engine, _| ok(Value::Array(engine.requests()?.iter().map(contact_json).collect()))),
        "request.accept" => job(move |engine, _| {
            let (id, _) = contact(engine, &p, "name")?;
            let rename = opt_str(&p, "rename")?.map(str::to_string);
            // A new name is held to the rule of `contact.add`
            // (Engine::check_name_for).
            ok(contact_json(&engine.accept_request(&id, rename)?))
        }),
        _ => return None,
    })
}

/// A contact as the API shows it.
fn contact_json(c: &kabar_storage::Contact) -> Value {
    json!({
        "name": c.display_name,
        "peer_id": crate::card::peer_id_of(&c.identity.signing).to_string(),
        "kind": c.identity.kind.to_string(),
        "verified": c.verified,
        "blocked": c.blocked,
        "request": c.request,
        "identity_changed": c.identity_change.is_some(),
        "addresses": c.addresses,
        // A one-time prekey fetched over /kabar/prekey/1 waits for the next
        // session start with this contact.
        "one_time_prekey": c.one_time_prekey.is_some(),
    })
}
