//! The errors the control API answers with: [`RpcError`] (a JSON-RPC error
//! object) and its [`codes`] (docs/api.md, "Errors"), and how storage and
//! engine errors map to them. Used by the control layer and by the
//! profile loops that answer its commands.

use serde::Serialize;

/// A JSON-RPC error object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RpcError {
    /// Code: -32700 parse error, -32600 invalid request, -32601 method not
    /// found, -32602 invalid params, -32603 internal; -32000… Kabar errors.
    pub code: i64,
    /// Plain message.
    pub message: String,
}

/// Kabar error codes (see docs/api.md).
pub mod codes {
    /// The JSON did not parse.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    pub const INTERNAL: i64 = -32603;
    /// No such profile, contact, message or item.
    pub const NOT_FOUND: i64 = -32001;
    /// A value broke a rule (over-long field, too many labels…).
    pub const INVALID_VALUE: i64 = -32002;
    /// The operation needs a business profile.
    pub const NOT_BUSINESS: i64 = -32003;
    /// The contact is blocked.
    pub const BLOCKED: i64 = -32004;
    /// A malformed contact card.
    pub const BAD_CARD: i64 = -32005;
    /// Storage failed.
    pub const STORAGE: i64 = -32006;
    /// The node is shutting down.
    pub const SHUTTING_DOWN: i64 = -32007;
    /// A remote service (a mailbox host) could not be reached or refused.
    pub const UNAVAILABLE: i64 = -32008;
    /// A batch, or a reply, over its bound ([`crate::control::MAX_BATCH_REQUESTS`],
    /// [`crate::control::MAX_REPLY`]): ask for less.
    pub const TOO_LARGE: i64 = -32009;
    /// Every control connection slot is taken: try again later (sent, with
    /// `id` `null`, on a connection that is then closed). Also the answer to
    /// a call a profile's engine refused without running it because it is
    /// too far behind (with the call's id; the connection stays open).
    pub const BUSY: i64 = -32010;
    /// The connection was idle too long and is closed (sent with `id`
    /// `null` before closing).
    pub const IDLE: i64 = -32011;
    /// The profile's store is damaged (a page or record that does not read
    /// back): the profile stopped, `node.info` shows it `failed`, and its
    /// other calls are refused with this code.
    pub const DAMAGED: i64 = -32012;
}

impl RpcError {
    /// A new error.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }

    /// An invalid-params error ([`codes::INVALID_PARAMS`]).
    pub(crate) fn params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }
}

impl From<kabar_storage::StoreError> for RpcError {
    fn from(e: kabar_storage::StoreError) -> Self {
        use kabar_storage::StoreError as S;
        let code = match &e {
            // Damaged, or unusable after an I/O error: the profile stops.
            e if e.is_damage() || e.is_unusable() => codes::DAMAGED,
            S::NotFound(_) | S::UnknownProfile(_) => codes::NOT_FOUND,
            S::Invalid(_) | S::InvalidProfileName(_) | S::DuplicateProfile(_) => codes::INVALID_VALUE,
            S::NotBusiness(_) => codes::NOT_BUSINESS,
            _ => codes::STORAGE,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<crate::engine::EngineError> for RpcError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError as E;
        match e {
            E::Store(s) => s.into(),
            E::Blocked(_) => RpcError::new(codes::BLOCKED, e.to_string()),
            E::UnknownShortcut(_) | E::NoPrekey(_) | E::Content(_) => {
                RpcError::new(codes::INVALID_VALUE, e.to_string())
            }
            E::Crypto(_) | E::Prekey(_) => RpcError::new(codes::INTERNAL, e.to_string()),
            E::NoContact(_) | E::NoMessage | E::NoLabel(_) => RpcError::new(codes::NOT_FOUND, e.to_string()),
            E::OwnCard => RpcError::new(codes::INVALID_VALUE, e.to_string()),
            E::RenameRequest(_) => RpcError::new(codes::INVALID_VALUE, e.to_string()),
            E::NotBusiness(_) => RpcError::new(codes::NOT_BUSINESS, e.to_string()),
            E::AwayWithoutText => RpcError::new(codes::INVALID_PARAMS, e.to_string()),
        }
    }
}
