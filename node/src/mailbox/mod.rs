//! Offline mailboxes (`/kabar/mailbox/1`): a service node keeps sealed
//! envelopes for an owner who is offline until the owner fetches them.
//!
//! A mailbox never sees plaintext, profile names or contact lists: it stores
//! opaque envelopes. A sender deposits with a [`Capability`] (a tag signed by
//! the mailbox key); the owner authenticates each operation with its
//! [`OwnerKey`], an Ed25519 key that is not the profile identity. Senders and
//! owners connect with a fresh throwaway libp2p identity per connection
//! ([`MailboxClient`]), and owner signatures bind the connection's PeerId, so
//! a captured owner request cannot be replayed on another connection.
//!
//! ## Layout
//! - this module: keys, capabilities, statuses, signature inputs.
//! - [`wire`]: the framed codec (pure encode / decode, bounded).
//! - [`host`]: [`MailboxHost`], the synchronous redb store of a service node.
//! - [`rate`]: per-IP token buckets the service node applies.
//! - [`client`]: [`MailboxClient`], one throwaway connection to a host.
//!
//! Architecture invariant: the host stores nothing about senders (no PeerId,
//! no IP); the rate limiter keeps IPs in memory only, bounded.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use libp2p::{PeerId, StreamProtocol};
use zeroize::Zeroizing;

pub mod client;
pub mod host;
pub mod rate;
pub mod wire;

pub use client::{DepositOutcome, MailboxClient};
pub use host::{HostError, MailboxHost, MailboxLimits};
pub use wire::MailboxCodec;

/// Protocol name.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/kabar/mailbox/1");
/// Domain separation of owner signatures.
pub const OWNER_CONTEXT: &[u8] = b"kabar-mailbox-owner-v1";
/// Domain separation of capability signatures.
pub const CAPABILITY_CONTEXT: &[u8] = b"kabar-mailbox-cap-v1";
/// How far an owner request's time may be from the host's clock: 10 minutes.
pub const MAX_CLOCK_SKEW_MS: u64 = 10 * 60 * 1000;

/// The owner's mailbox key (Ed25519). Its public key is the mailbox id.
/// Zeroized on drop; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct OwnerKey {
    key: SigningKey,
}

impl fmt::Debug for OwnerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OwnerKey(<redacted>)")
    }
}

impl OwnerKey {
    /// A new random key.
    pub fn generate<R: rand_core::CryptoRng + ?Sized>(rng: &mut R) -> Self {
        let mut seed = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(&mut seed[..]);
        Self::from_bytes(&seed)
    }

    /// The key of a 32-byte seed.
    pub fn from_bytes(seed: &[u8; 32]) -> Self {
        OwnerKey { key: SigningKey::from_bytes(seed) }
    }

    /// The seed (keep it secret).
    pub fn to_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The mailbox id: the Ed25519 public key.
    pub fn mailbox_id(&self) -> [u8; 32] {
        self.key.verifying_key().to_bytes()
    }

    /// A capability to deposit under `tag` (give each contact its own tag:
    /// it can then be revoked alone).
    pub fn capability(&self, tag: [u8; 16]) -> Capability {
        let mailbox = self.mailbox_id();
        let signature = self.key.sign(&capability_message(&mailbox, &tag)).to_bytes();
        Capability { mailbox, tag, signature }
    }

    /// Signs `message` (an owner request's signature input).
    pub(crate) fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

/// What a sender needs to deposit into a mailbox. In JSON each field is
/// unpadded URL-safe base64.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capability {
    /// The mailbox id (its Ed25519 public key).
    #[serde(with = "b64")]
    pub mailbox: [u8; 32],
    /// The tag deposits carry; the owner can revoke it.
    #[serde(with = "b64")]
    pub tag: [u8; 16],
    /// The mailbox key's signature over [`capability_message`].
    #[serde(with = "b64")]
    pub signature: [u8; 64],
}

impl Capability {
    /// True if the signature is the mailbox key's over the tag.
    pub fn verify(&self) -> bool {
        verify(&self.mailbox, &capability_message(&self.mailbox, &self.tag), &self.signature)
    }
}

/// One stored envelope, as fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The host's per-mailbox sequence number (strictly increasing, never reused).
    pub seq: u64,
    /// The capability tag it was deposited with.
    pub tag: [u8; 16],
    /// When the host stored it (host clock, ms since the Unix epoch).
    pub deposited_at_ms: u64,
    /// The sealed envelope.
    pub envelope: Vec<u8>,
}

/// A mailbox's usage and limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MailboxStatus {
    /// Envelopes stored.
    pub count: u32,
    /// Envelope bytes stored.
    pub bytes: u64,
    /// Most envelopes it may hold.
    pub max_count: u32,
    /// Most envelope bytes it may hold.
    pub max_bytes: u64,
    /// How long the host keeps an envelope (ms).
    pub ttl_ms: u64,
}

/// A host's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Done.
    Ok,
    /// The request's fields are invalid (e.g. a mailbox id that is not an Ed25519 key).
    Malformed,
    /// No such mailbox on this host.
    UnknownMailbox,
    /// The owner signature or the capability does not verify.
    BadSignature,
    /// The capability's tag is revoked.
    Revoked,
    /// The mailbox is full (envelopes, bytes or revoked tags).
    QuotaFull,
    /// Too many requests; try later.
    RateLimited,
    /// The host accepts no more mailboxes.
    HostFull,
    /// The host could not read or write its storage; try later.
    Storage,
    /// The request's time is more than 10 minutes from the host's clock.
    Stale,
    /// The request is too large.
    TooLarge,
}

impl Status {
    /// The status byte on the wire.
    pub fn to_byte(self) -> u8 {
        match self {
            Status::Ok => 0,
            Status::Malformed => 1,
            Status::UnknownMailbox => 2,
            Status::BadSignature => 3,
            Status::Revoked => 4,
            Status::QuotaFull => 5,
            Status::RateLimited => 6,
            Status::HostFull => 7,
            Status::Storage => 8,
            Status::Stale => 9,
            Status::TooLarge => 10,
        }
    }

    /// The status of a wire byte.
    pub fn from_byte(b: u8) -> Option<Self> {
        Some(match b {
            0 => Status::Ok,
            1 => Status::Malformed,
            2 => Status::UnknownMailbox,
            3 => Status::BadSignature,
            4 => Status::Revoked,
            5 => Status::QuotaFull,
            6 => Status::RateLimited,
            7 => Status::HostFull,
            8 => Status::Storage,
            9 => Status::Stale,
            10 => Status::TooLarge,
            _ => return None,
        })
    }

    /// True if the same request may succeed later.
    pub fn is_transient(self) -> bool {
        matches!(self, Status::Storage | Status::RateLimited | Status::QuotaFull | Status::HostFull)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Ok => "ok",
            Status::Malformed => "malformed request",
            Status::UnknownMailbox => "unknown mailbox",
            Status::BadSignature => "bad signature or capability",
            Status::Revoked => "capability revoked",
            Status::QuotaFull => "mailbox full",
            Status::RateLimited => "rate limited",
            Status::HostFull => "host accepts no more mailboxes",
            Status::Storage => "host storage error",
            Status::Stale => "request time outside the host's window",
            Status::TooLarge => "request too large",
        })
    }
}

/// Why a mailbox operation failed.
#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    /// The host answered with a refusal.
    #[error("the mailbox host refused: {0}")]
    Refused(Status),
    /// The host could not be reached (or the connection dropped).
    #[error("cannot reach the mailbox host: {0}")]
    Dial(String),
    /// The host did not answer in time.
    #[error("the mailbox host did not answer in time")]
    Timeout,
    /// The host's answer (or our own request) broke the protocol.
    #[error("mailbox protocol error: {0}")]
    Protocol(String),
}

/// The message a capability signs:
/// `"kabar-mailbox-cap-v1" ‖ mailbox 32 ‖ tag 16`.
pub fn capability_message(mailbox: &[u8; 32], tag: &[u8; 16]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CAPABILITY_CONTEXT.len() + 48);
    m.extend_from_slice(CAPABILITY_CONTEXT);
    m.extend_from_slice(mailbox);
    m.extend_from_slice(tag);
    m
}

/// The message an owner signs: `"kabar-mailbox-owner-v1" ‖ u8 len ‖ host
/// PeerId bytes ‖ u8 len ‖ client PeerId bytes ‖ unsigned body` (the
/// request body without its trailing 64-byte signature).
pub fn owner_message(host: &PeerId, client: &PeerId, unsigned_body: &[u8]) -> Vec<u8> {
    let (host, client) = (host.to_bytes(), client.to_bytes());
    let mut m = Vec::with_capacity(OWNER_CONTEXT.len() + 2 + host.len() + client.len() + unsigned_body.len());
    m.extend_from_slice(OWNER_CONTEXT);
    for id in [&host, &client] {
        // A PeerId is a multihash of at most 64 digest bytes: it always fits.
        m.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
        m.extend_from_slice(id);
    }
    m.extend_from_slice(unsigned_body);
    m
}

/// Strict Ed25519 verification of `signature` over `message` by `public`.
pub fn verify(public: &[u8; 32], message: &[u8], signature: &[u8; 64]) -> bool {
    match VerifyingKey::from_bytes(public) {
        Ok(key) => key.verify_strict(message, &Signature::from_bytes(signature)).is_ok(),
        Err(_) => false,
    }
}

/// Serde of fixed byte arrays as unpadded URL-safe base64.
mod b64 {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(super) fn serialize<S: Serializer, const N: usize>(bytes: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&URL_SAFE_NO_PAD.encode(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(d: D) -> Result<[u8; N], D::Error> {
        let text = String::deserialize(d)?;
        let bytes = URL_SAFE_NO_PAD.decode(text.as_bytes()).map_err(D::Error::custom)?;
        bytes.try_into().map_err(|_| D::Error::custom(format!("expected {N} bytes")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_verify_and_round_trip_in_json() {
        let key = OwnerKey::from_bytes(&[7; 32]);
        let cap = key.capability([1; 16]);
        assert!(cap.verify());
        let json = serde_json::to_string(&cap).unwrap();
        let back: Capability = serde_json::from_str(&json).unwrap();
        assert_eq!(back, cap);
        let mut forged = cap.clone();
        forged.tag[0] ^= 1;
        assert!(!forged.verify());
        let other = OwnerKey::from_bytes(&[8; 32]).capability([1; 16]);
        assert!(!Capability { mailbox: cap.mailbox, ..other }.verify());
    }

    #[test]
    fn keys_round_trip_and_redact() {
        let key = OwnerKey::generate(&mut rand::rng());
        let again = OwnerKey::from_bytes(&key.to_bytes());
        assert_eq!(again.mailbox_id(), key.mailbox_id());
        assert_eq!(format!("{key:?}"), "OwnerKey(<redacted>)");
    }

    #[test]
    fn statuses_round_trip() {
        for b in 0..=10u8 {
            let s = Status::from_byte(b).unwrap();
            assert_eq!(s.to_byte(), b);
        }
        assert_eq!(Status::from_byte(11), None);
        assert!(Status::QuotaFull.is_transient() && !Status::Revoked.is_transient());
        assert_eq!(serde_json::to_string(&Status::UnknownMailbox).unwrap(), "\"unknown_mailbox\"");
    }
}
