//! Error types of kabar-crypto.

use thiserror::Error;

/// Everything that can go wrong in kabar-crypto.
///
/// No variant carries secret material; each says what a caller should do.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// A Diffie-Hellman result was all zeros: the peer sent a low-order
    /// (non-contributory) public key. The message or bundle must be dropped.
    #[error("non-contributory Diffie-Hellman result (low-order public key)")]
    NonContributoryKey,
    /// An Ed25519 signature did not verify under `verify_strict`.
    #[error("bad signature on {0}")]
    BadSignature(&'static str),
    /// An Ed25519 public key is not a valid point.
    #[error("invalid Ed25519 public key")]
    InvalidSigningKey,
    /// AEAD authentication failed: the ciphertext, header or associated data
    /// was tampered with, or the message was not made for this session.
    #[error("message authentication failed")]
    AuthenticationFailed,
    /// The session no longer holds this message's key: it was used (the
    /// message is a duplicate), or evicted (a skipped key past the bound, or
    /// a chain the session has moved past). Only the caller's record of
    /// received message ids tells which; a message never received is lost
    /// for this session, and its sender should encrypt it again.
    #[error("message key no longer held (duplicate or evicted)")]
    MessageKeyGone,
    /// The header asks to skip more message keys than one chain may skip.
    #[error("message skips {requested} keys in one chain; at most {limit} allowed")]
    TooManySkipped {
        /// Keys the header would make us derive and store.
        requested: u64,
        /// The per-chain bound, [`crate::ratchet::MAX_SKIP_PER_CHAIN`].
        limit: u64,
    },
    /// A chain counter would overflow `u32`; the session must be re-established.
    #[error("message counter exhausted; start a new session")]
    CounterExhausted,
    /// The plaintext is longer than [`crate::envelope::MAX_PLAINTEXT`].
    #[error("plaintext of {len} bytes exceeds the {max}-byte limit")]
    PlaintextTooLong {
        /// Length given.
        len: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Decrypted plaintext had no valid padding terminator.
    #[error("bad padding in decrypted plaintext")]
    BadPadding,
    /// A prekey message named a signed prekey this identity does not hold.
    #[error("unknown signed prekey id {0}")]
    UnknownSignedPrekey(u32),
    /// A prekey message named a one-time prekey that is not offered to it.
    #[error("one-time prekey mismatch (expected id {expected:?}, message names {got:?})")]
    OneTimePrekeyMismatch {
        /// The one-time prekey id the caller supplied, if any.
        expected: Option<u32>,
        /// The one-time prekey id the message names, if any.
        got: Option<u32>,
    },
    /// An envelope given to `Session::respond` was not a prekey message.
    #[error("not a prekey message")]
    NotPrekeyMessage,
    /// The session has no sending or receiving chain yet (a responder
    /// session restored before its first message was decrypted).
    #[error("session not ready")]
    SessionNotReady,
    /// An HKDF output was requested longer than 255 × 32 bytes.
    #[error("HKDF output too long")]
    KdfOutputTooLong,
    /// A QR safety-number payload did not parse.
    #[error("malformed safety-number payload")]
    BadSafetyPayload,
    /// Bytes did not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

/// Why a byte string did not decode as an [`crate::envelope::Envelope`] or
/// another wire structure. Decoding never panics.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Input ended before the structure did.
    #[error("truncated input: needed {needed} more bytes")]
    Truncated {
        /// How many more bytes the next field needed.
        needed: usize,
    },
    /// Input is longer than the structure, or longer than the wire limit.
    #[error("{0} trailing bytes after the structure")]
    TrailingBytes(usize),
    /// The input is larger than [`crate::envelope::MAX_ENVELOPE_LEN`].
    #[error("input of {len} bytes exceeds the {max}-byte limit")]
    TooLong {
        /// Length given.
        len: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Unknown version byte.
    #[error("unsupported version {0}")]
    UnsupportedVersion(u8),
    /// Unknown type byte.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Unknown profile kind byte.
    #[error("unknown profile kind {0}")]
    UnknownProfileKind(u8),
    /// A flag byte was neither 0 nor 1.
    #[error("invalid flag byte {0}")]
    InvalidFlag(u8),
    /// The ciphertext length is outside the allowed range.
    #[error("ciphertext length {0} out of range")]
    BadCiphertextLength(usize),
    /// A fixed-size field had the wrong length or a malformed value.
    #[error("malformed field: {0}")]
    Malformed(&'static str),
}
