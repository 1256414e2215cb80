//! Routes a method by its namespace (the part before the first `.`).
//! Methods the node answers itself (`node.*`, `profile.list`, `subscribe`)
//! and those that go to a profile's loop (`relay.*`, `mailbox.*`) run
//! here; every other namespace makes a job for one profile's engine,
//! handed to it by [`super::on_profile`].

use serde_json::Value;

use super::{Caller, ControlState, business, card, contact, conversation, customer, mailbox, message, node, relay};
use crate::rpc_error::{RpcError, codes};

/// Runs one method.
pub(super) async fn call(
    method: &str,
    params: &Value,
    state: &ControlState,
    caller: &mut Caller,
) -> Result<Value, RpcError> {
    let namespace = method.split_once('.').map_or(method, |(namespace, _)| namespace);
    let job = match namespace {
        "node" | "profile" | "subscribe" => return node::call(method, params, state, caller).await,
        "relay" => return relay::call(method, params, state).await,
        "mailbox" => return mailbox::call(method, params, state).await,
        "card" => card::job_for(method, params),
        "contact" | "request" => contact::job_for(method, params),
        "message" => message::job_for(method, params),
        "conversation" => conversation::job_for(method, params),
        "business" => business::job_for(method, params),
        "catalog" | "order" => customer::job_for(method, params),
        _ => None,
    };
    match job {
        Some(job) => super::on_profile(state, params, job, caller).await,
        None => Err(not_found(method)),
    }
}

/// The answer to a method no namespace has.
pub(super) fn not_found(method: &str) -> RpcError {
    RpcError::new(codes::METHOD_NOT_FOUND, format!("method not found: {method}"))
}
