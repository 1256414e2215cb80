//! `catalog.*` and `order.*`: a customer asking a business for its
//! catalog, and ordering from it.

use serde_json::{Value, json};

use super::params::{contact, job, opt_str};
use crate::content::{Content, OrderLine};
use crate::profile::{EngineJob, now_ms};
use crate::rpc_error::RpcError;

pub(super) fn job_for(method: &str, params: &Value) -> Option<EngineJob> {
    let p = params.clone();
    Some(match method {
        "catalog.request" => job(move |engine, _| {
            let (id, _) = contact(engine, &p, "to")?;
            let (message_id, actions) = engine.send(&id, Content::CatalogRequest, now_ms(), &mut rand::rng())?;
            Ok((json!({"message_id": kabar_crypto::hex::encode(&message_id)}), actions))
        }),
        "order.place" => job(move |engine, _| {
            let (id, _) = contact(engine, &p, "to")?;
            let items =
                p.get("items").and_then(Value::as_array).ok_or_else(|| RpcError::params("missing \"items\" array"))?;
            let mut lines = Vec::new();
            for item in items {
                let line: OrderLine = serde_json::from_value(item.clone())
                    .map_err(|e| RpcError::params(format!("bad order line: {e}")))?;
                if line.quantity == 0 {
                    return Err(RpcError::params("quantity must be at least 1"));
                }
                lines.push(line);
            }
            if lines.is_empty() {
                return Err(RpcError::params("an order needs at least one item"));
            }
            let note = opt_str(&p, "note")?.map(str::to_string);
            let (message_id, actions) =
                engine.send(&id, Content::Order { items: lines, note }, now_ms(), &mut rand::rng())?;
            Ok((json!({"message_id": kabar_crypto::hex::encode(&message_id)}), actions))
        }),
        _ => return None,
    })
}
