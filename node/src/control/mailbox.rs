//! `mailbox.*`: a profile's mailboxes, registered and fetched by its loop
//! (the courier talks to the hosts); one profile per call, except
//! `mailbox.list`.

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::params::str_param;
use super::{ControlState, ask, gone, one_profile, selected_profiles};
use crate::profile::{Command, MailboxChange, relay_peer};
use crate::rpc_error::{RpcError, codes};

pub(super) async fn call(method: &str, params: &Value, state: &ControlState) -> Result<Value, RpcError> {
    match method {
        "mailbox.add" | "mailbox.remove" => {
            let address = str_param(params, "address")?;
            let change = if method == "mailbox.add" {
                let address: libp2p::Multiaddr =
                    address.parse().map_err(|e| RpcError::params(format!("bad multiaddr: {e}")))?;
                if relay_peer(&address).is_none() {
                    return Err(RpcError::new(codes::INVALID_VALUE, "a mailbox address must end in /p2p/<PeerId>"));
                }
                MailboxChange::Add(address)
            } else {
                MailboxChange::Remove(address.to_string())
            };
            let (name, handle) = one_profile(state, params)?;
            let list = ask(&name, &handle, |tx| Command::Mailbox(change, tx)).await??;
            Ok(json!({"profile": name, "mailboxes": list}))
        }
        "mailbox.fetch" => {
            let (name, handle) = one_profile(state, params)?;
            let (answer, fetched) = oneshot::channel();
            let change = MailboxChange::Fetch(answer);
            ask(&name, &handle, |tx| Command::Mailbox(change, tx)).await??;
            let Ok(mut result) = fetched.await else { return Err(gone(&name, &handle).await) };
            result["profile"] = json!(name);
            Ok(result)
        }
        "mailbox.list" => {
            let mut out = serde_json::Map::new();
            for (name, handle) in selected_profiles(state, params)? {
                out.insert(name, json!(handle.status.borrow().mailboxes));
            }
            Ok(json!({"mailboxes": out}))
        }
        other => Err(super::dispatch::not_found(other)),
    }
}
