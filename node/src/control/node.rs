//! `node.*`, `profile.list` and `subscribe`: answered by the node itself,
//! from the profiles' live status (`node.dial` is handed to one profile's
//! loop).

use serde_json::{Value, json};

use super::params::str_param;
use super::{Caller, ControlState, gone, one_profile};
use crate::profile::{Command, ProfileStatus};
use crate::rpc_error::RpcError;

pub(super) async fn call(
    method: &str,
    params: &Value,
    state: &ControlState,
    caller: &mut Caller,
) -> Result<Value, RpcError> {
    match method {
        "node.info" => {
            let profiles: Vec<ProfileStatus> = state.profiles.iter().map(|(_, h)| h.status.borrow().clone()).collect();
            Ok(json!({"version": env!("CARGO_PKG_VERSION"), "profiles": profiles}))
        }
        "profile.list" => {
            let profiles: Vec<Value> = state
                .profiles
                .iter()
                .map(|(_, h)| {
                    let s = h.status.borrow();
                    json!({"name": s.name, "kind": s.kind, "peer_id": s.peer_id})
                })
                .collect();
            Ok(Value::Array(profiles))
        }
        "node.stop" => {
            let _ = state.stop.send(true);
            Ok(json!({"stopping": true}))
        }
        "subscribe" => {
            caller.events = Some(state.events.subscribe());
            Ok(json!({"subscribed": true}))
        }
        "node.dial" => {
            let addr: libp2p::Multiaddr =
                str_param(params, "address")?.parse().map_err(|e| RpcError::params(format!("bad multiaddr: {e}")))?;
            // From one profile only: dialling from all at once would show
            // the peer that they run on one node.
            let (name, handle) = one_profile(state, params)?;
            if handle.commands.send(Command::Dial(addr.clone())).await.is_err() {
                return Err(gone(&name, &handle).await);
            }
            Ok(json!({"dialing": addr.to_string(), "profile": name}))
        }
        other => Err(super::dispatch::not_found(other)),
    }
}
