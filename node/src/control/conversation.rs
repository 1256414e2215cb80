//! `conversation.*`: the inbox and reading.

use kabar_storage::ConversationStatus;
use serde_json::{Value, json};

use super::message::message_json;
use super::params::{contact, job, ok};
use crate::profile::{EngineJob, now_ms};

pub(super) fn job_for(method: &str, params: &Value) -> Option<EngineJob> {
    let p = params.clone();
    Some(match method {
        "conversation.list" => job(move |engine, _| {
            let list: Vec<Value> = engine
                .inbox()?
                .iter()
                .map(|s| {
                    json!({
                        "contact": s.contact.display_name,
                        "unread": s.conversation.unread,
                        "status": status_name(s.conversation.status),
                        "labels": s.labels,
                        "last_activity_ms": s.conversation.last_activity_ms,
                        "request": s.contact.request,
                        "last_message": s.last.as_ref().map(|(seq, m)| message_json(*seq, m)),
                    })
                })
                .collect();
            ok(Value::Array(list))
        }),
        "conversation.read" => job(move |engine, _| {
            let (id, _) = contact(engine, &p, "with")?;
            let actions = engine.mark_read(&id, now_ms(), &mut rand::rng())?;
            Ok((json!({"read": true}), actions))
        }),
        _ => return None,
    })
}

/// A conversation's status as the API names it.
pub(super) fn status_name(status: ConversationStatus) -> &'static str {
    match status {
        ConversationStatus::Open => "open",
        ConversationStatus::Closed => "closed",
    }
}
