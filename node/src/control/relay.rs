//! `relay.*`: each profile's relays, kept by its loop (reservations live
//! in the swarm); without `"profile"`, every profile.

use serde_json::{Value, json};

use super::params::str_param;
use super::{ControlState, ask, selected_profiles};
use crate::profile::{Command, RelayChange, relay_peer};
use crate::rpc_error::{RpcError, codes};

pub(super) async fn call(method: &str, params: &Value, state: &ControlState) -> Result<Value, RpcError> {
    match method {
        "relay.add" | "relay.remove" => {
            let address: libp2p::Multiaddr =
                str_param(params, "address")?.parse().map_err(|e| RpcError::params(format!("bad multiaddr: {e}")))?;
            if relay_peer(&address).is_none() {
                return Err(RpcError::new(codes::INVALID_VALUE, "a relay address must end in /p2p/<relay PeerId>"));
            }
            let change = if method == "relay.add" { RelayChange::Add(address) } else { RelayChange::Remove(address) };
            let mut out = serde_json::Map::new();
            for (name, handle) in selected_profiles(state, params)? {
                let list = ask(&name, &handle, |tx| Command::Relay(change.clone(), tx)).await??;
                out.insert(name, json!(list));
            }
            Ok(json!({"relays": out}))
        }
        "relay.list" => {
            let mut out = serde_json::Map::new();
            for (name, handle) in selected_profiles(state, params)? {
                out.insert(name, json!(handle.status.borrow().relays));
            }
            Ok(json!({"relays": out}))
        }
        other => Err(super::dispatch::not_found(other)),
    }
}
