//! Parsing a call's named parameters (`-32602` when one is missing or of
//! the wrong type), shared by the namespace files.

use serde_json::Value;

use crate::engine::Engine;
use crate::ops::ContactRef;
use crate::profile::{EngineJob, JobResult, ProfileStatus};
use crate::rpc_error::RpcError;

/// A required string parameter.
pub(super) fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::params(format!("missing string parameter \"{name}\"")))
}

/// An optional string parameter (`null` counts as absent).
pub(super) fn opt_str<'a>(params: &'a Value, name: &str) -> Result<Option<&'a str>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::params(format!("\"{name}\" must be a string"))),
    }
}

/// An optional non-negative integer parameter.
pub(super) fn opt_u64(params: &Value, name: &str) -> Result<Option<u64>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_u64().map(Some).ok_or_else(|| RpcError::params(format!("\"{name}\" must be a non-negative integer")))
        }
    }
}

/// An optional boolean parameter.
pub(super) fn opt_bool(params: &Value, name: &str) -> Result<Option<bool>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RpcError::params(format!("\"{name}\" must be true or false"))),
    }
}

/// `HH:MM` as minutes after midnight (at most 24:00).
pub(super) fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
}

/// An id of `N` bytes in hex.
pub(super) fn hex_id<const N: usize>(s: &str) -> Result<[u8; N], RpcError> {
    kabar_crypto::hex::decode(s)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| RpcError::params(format!("{s:?} is not a {}-digit hex id", 2 * N)))
}

/// A contact named by the string parameter `name`: a display name, or a
/// PeerId (decoded here, so that the engine sees no libp2p type).
pub(super) fn contact_ref<'a>(params: &'a Value, name: &str) -> Result<ContactRef<'a>, RpcError> {
    let who = str_param(params, name)?;
    let peer_key = who.parse::<libp2p::PeerId>().ok().and_then(|peer| crate::card::signing_key_of(&peer));
    Ok(ContactRef { name: who, peer_key })
}

/// The contact the string parameter `name` names, with its id.
pub(super) fn contact(
    engine: &Engine,
    params: &Value,
    name: &str,
) -> Result<(kabar_storage::ContactId, kabar_storage::Contact), RpcError> {
    Ok(engine.find_contact(contact_ref(params, name)?)?)
}

/// A job for a profile's engine.
pub(super) fn job(f: impl FnOnce(&mut Engine, &ProfileStatus) -> JobResult + Send + 'static) -> EngineJob {
    EngineJob::new(f)
}

/// A job's result that produced no actions.
pub(super) fn ok(value: Value) -> JobResult {
    Ok((value, Vec::new()))
}
