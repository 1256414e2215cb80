//! `business.*`: a business profile's settings, catalog, quick replies,
//! labels, and closing conversations (business profiles only: -32003).

use kabar_storage::{AwaySchedule, BusinessHours, CatalogItem, ConversationStatus};
use serde_json::{Value, json};

use super::conversation::status_name;
use super::params::{contact, contact_ref, hex_id, job, ok, opt_bool, opt_str, opt_u64, parse_hhmm, str_param};
use crate::ops::business::BusinessProfileChange;
use crate::profile::EngineJob;
use crate::rpc_error::RpcError;

pub(super) fn job_for(method: &str, params: &Value) -> Option<EngineJob> {
    let p = params.clone();
    Some(match method {
        "business.close" | "business.reopen" => {
            let status = if method == "business.close" { ConversationStatus::Closed } else { ConversationStatus::Open };
            job(move |engine, _| {
                let status = engine.set_conversation_status(contact_ref(&p, "with")?, status)?;
                ok(json!({"status": status_name(status)}))
            })
        }
        "business.profile.get" => job(move |engine, _| ok(to_json(engine.business_profile()?))),
        "business.profile.set" => job(move |engine, _| {
            let field = |name| opt_str(&p, name).map(|v| v.map(str::to_string));
            let change = BusinessProfileChange {
                name: field("name")?,
                category: field("category")?,
                about: field("about")?,
                description: field("description")?,
                address: field("address")?,
                email: field("email")?,
                website: field("website")?,
            };
            ok(to_json(engine.update_business_profile(change)?))
        }),
        "business.hours.set" => job(move |engine, _| ok(to_json(engine.set_business_hours(hours(&p)?)?))),
        "business.automations.get" => job(move |engine, _| ok(to_json(engine.automations()?))),
        "business.greeting.set" => job(move |engine, _| {
            let greeting = opt_str(&p, "text")?.map(str::to_string);
            ok(to_json(engine.set_greeting(greeting)?))
        }),
        "business.away.set" => job(move |engine, _| {
            let schedule = away_schedule(str_param(&p, "schedule")?)?;
            let text = opt_str(&p, "text")?.map(str::to_string);
            ok(to_json(engine.set_away(schedule, text)?))
        }),
        "business.catalog.add" => job(move |engine, _| {
            let item = CatalogItem {
                id: [0; 8],
                name: str_param(&p, "name")?.to_string(),
                price_minor: opt_u64(&p, "price_minor")?.ok_or_else(|| RpcError::params("missing \"price_minor\""))?,
                currency: opt_str(&p, "currency")?.unwrap_or("EUR").to_string(),
                description: opt_str(&p, "description")?.unwrap_or("").to_string(),
                available: opt_bool(&p, "available")?.unwrap_or(true),
            };
            ok(catalog_json(&engine.add_catalog_item(item)?))
        }),
        "business.catalog.list" => {
            job(move |engine, _| ok(Value::Array(engine.catalog()?.iter().map(catalog_json).collect())))
        }
        "business.catalog.remove" => job(move |engine, _| {
            engine.remove_catalog_item(&hex_id::<8>(str_param(&p, "id")?)?)?;
            ok(json!({"removed": true}))
        }),
        "business.reply.add" => job(move |engine, _| {
            let reply = engine.add_quick_reply(str_param(&p, "shortcut")?, str_param(&p, "text")?)?;
            ok(to_json(reply))
        }),
        "business.reply.list" => job(move |engine, _| ok(to_json(engine.quick_replies()?))),
        "business.reply.remove" => job(move |engine, _| {
            engine.remove_quick_reply(str_param(&p, "shortcut")?)?;
            ok(json!({"removed": true}))
        }),
        "business.label.add" => job(move |engine, _| {
            let label = engine.add_label(str_param(&p, "name")?, opt_str(&p, "colour")?)?;
            ok(label_json(&label))
        }),
        "business.label.list" => {
            job(move |engine, _| ok(Value::Array(engine.labels()?.iter().map(label_json).collect())))
        }
        "business.label.apply" | "business.label.unapply" => {
            let apply = method == "business.label.apply";
            job(move |engine, _| {
                let label = engine.label_named(str_param(&p, "label")?)?;
                let (id, _) = contact(engine, &p, "with")?;
                let labels = engine.label_conversation(&id, &label.id, apply)?;
                ok(json!({"labels": labels}))
            })
        }
        "business.label.remove" => job(move |engine, _| {
            engine.remove_label_named(str_param(&p, "name")?)?;
            ok(json!({"removed": true}))
        }),
        _ => return None,
    })
}

fn to_json(value: impl serde::Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

/// `{"days": {"mon": "09:00-17:00", …}, "utc_offset_minutes": 60}`.
fn hours(p: &Value) -> Result<BusinessHours, RpcError> {
    let mut hours = BusinessHours::default();
    let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
    if let Some(days) = p.get("days").and_then(Value::as_object) {
        for (key, value) in days {
            let day = names
                .iter()
                .position(|n| n == key)
                .ok_or_else(|| RpcError::params(format!("unknown day {key:?} (use mon…sun)")))?;
            let text = value.as_str().ok_or_else(|| RpcError::params("hours must be \"HH:MM-HH:MM\""))?;
            let (a, b) = text.split_once('-').ok_or_else(|| RpcError::params("hours must be \"HH:MM-HH:MM\""))?;
            let (a, b) = (
                parse_hhmm(a).ok_or_else(|| RpcError::params("bad time"))?,
                parse_hhmm(b).ok_or_else(|| RpcError::params("bad time"))?,
            );
            hours.days[day] = Some((a, b));
        }
    }
    if let Some(v) = p.get("utc_offset_minutes") {
        hours.utc_offset_minutes =
            v.as_i64().and_then(|x| i16::try_from(x).ok()).ok_or_else(|| RpcError::params("bad utc_offset_minutes"))?;
    }
    Ok(hours)
}

/// `off`, `always`, `outside-hours` or a daily `HH:MM-HH:MM` window.
fn away_schedule(schedule: &str) -> Result<AwaySchedule, RpcError> {
    Ok(match schedule {
        "off" => AwaySchedule::Off,
        "always" => AwaySchedule::Always,
        "outside-hours" => AwaySchedule::OutsideHours,
        window => {
            let (s, e) = window
                .split_once('-')
                .ok_or_else(|| RpcError::params("schedule: always, outside-hours, off or HH:MM-HH:MM"))?;
            AwaySchedule::Window {
                start: parse_hhmm(s).ok_or_else(|| RpcError::params("bad start time"))?,
                end: parse_hhmm(e).ok_or_else(|| RpcError::params("bad end time"))?,
            }
        }
    })
}

fn catalog_json(item: &CatalogItem) -> Value {
    json!({
        "id": kabar_crypto::hex::encode(&item.id),
        "name": item.name,
        "price_minor": item.price_minor,
        "currency": item.currency,
        "description": item.description,
        "available": item.available,
    })
}

fn label_json(label: &kabar_storage::Label) -> Value {
    json!({"id": kabar_crypto::hex::encode(&label.id), "name": label.name, "colour": label.colour})
}
