//! `message.*`: sending, one message's status, a conversation's history.

use serde_json::{Value, json};

use super::MAX_HISTORY_LIMIT;
use super::params::{contact, hex_id, job, ok, opt_u64, str_param};
use crate::content::{Content, Message};
use crate::profile::{EngineJob, now_ms};
use crate::rpc_error::RpcError;

pub(super) fn job_for(method: &str, params: &Value) -> Option<EngineJob> {
    let p = params.clone();
    Some(match method {
        "message.send" => EngineJob::staging_sends(move |engine, _| {
            let (id, _) = contact(engine, &p, "to")?;
            let text = str_param(&p, "text")?;
            if text.is_empty() {
                return Err(RpcError::params("text is empty"));
            }
            let (message_id, actions) = engine.send(&id, Content::text(text), now_ms(), &mut rand::rng())?;
            Ok((json!({"message_id": kabar_crypto::hex::encode(&message_id)}), actions))
        }),
        "message.send_batch" => job(move |engine, _| {
            let (id, _) = contact(engine, &p, "to")?;
            let texts =
                p.get("texts").and_then(Value::as_array).ok_or_else(|| RpcError::params("missing \"texts\" array"))?;
            if texts.is_empty() || texts.len() > crate::wire::MAX_BATCH {
                return Err(RpcError::params(format!("\"texts\" needs 1 to {} texts", crate::wire::MAX_BATCH)));
            }
            let mut contents = Vec::with_capacity(texts.len());
            for t in texts {
                match t.as_str() {
                    Some(text) if !text.is_empty() => contents.push(Content::text(text)),
                    _ => return Err(RpcError::params("each text must be a non-empty string")),
                }
            }
            let (ids, actions) = engine.send_many(&id, contents, now_ms(), &mut rand::rng())?;
            let ids: Vec<String> = ids.iter().map(|i| kabar_crypto::hex::encode(i)).collect();
            Ok((json!({"message_ids": ids}), actions))
        }),
        "message.status" => job(move |engine, _| {
            let id = hex_id::<16>(str_param(&p, "message_id")?)?;
            let (seq, record) = engine.message_record(&id)?;
            ok(message_json(seq, &record))
        }),
        "message.history" => job(move |engine, _| {
            let (id, c) = contact(engine, &p, "with")?;
            let limit = opt_u64(&p, "limit")?.unwrap_or(50);
            if limit == 0 || limit > MAX_HISTORY_LIMIT {
                return Err(RpcError::params(format!("\"limit\" must be 1 to {MAX_HISTORY_LIMIT}")));
            }
            let before = opt_u64(&p, "before")?;
            let page = engine.history_page(&id, limit as usize, before)?;
            let list: Vec<Value> = page.iter().map(|(s, m)| message_json(*s, m)).collect();
            ok(json!({"contact": c.display_name, "messages": list}))
        }),
        _ => return None,
    })
}

/// A stored message as the API shows it.
pub(super) fn message_json(seq: u64, m: &kabar_storage::MessageRecord) -> Value {
    use kabar_storage::Direction;
    let parsed = Message::decode(&m.body).ok();
    json!({
        "id": kabar_crypto::hex::encode(&m.id),
        "seq": seq,
        "direction": match m.direction { Direction::Outgoing => "out", Direction::Incoming => "in" },
        "status": m.status,
        "sent_at_ms": m.sent_at_ms,
        "received_at_ms": m.received_at_ms,
        // The sender's clock, for information only: marked when it says
        // the message was sent after it arrived (more than a minute).
        "sent_at_in_future": m.received_at_ms.is_some_and(|r| m.sent_at_ms > r.saturating_add(60_000)),
        "sender_seq": parsed.as_ref().map(|p| p.seq),
        "content": parsed.map(|p| serde_json::to_value(p.content).unwrap_or(Value::Null)),
    })
}
