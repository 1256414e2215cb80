//! The Double Ratchet, as in Signal's specification (revision 1, 2016-11-20),
//! and [`Session`], which joins it to X3DH and the envelope.
//!
//! - `KDF_RK(rk, dh) = HKDF-SHA256(salt = rk, ikm = dh, info = ROOT_INFO)` → 64
//!   bytes: new root key ‖ chain key.
//! - `KDF_CK(ck)`: message key `HMAC-SHA256(ck, 0x01)`, next chain key
//!   `HMAC-SHA256(ck, 0x02)`.
//! - `ENCRYPT(mk, salt, pt, ad)`: `HKDF-SHA256(salt = salt, ikm = mk, info =
//!   MESSAGE_INFO)` → 44 bytes: ChaCha20-Poly1305 key ‖ nonce, where `salt`
//!   is 16 random bytes carried in the header (version 2: a state rolled back
//!   and reused still never repeats a key and nonce); associated data
//!   `AD ‖ u16 BE(len(H)) ‖ H` with `H` every clear byte of the envelope
//!   before the ciphertext length (version, type, prekey fields, header).
//!
//! One deliberate refinement of the specification: our new ratchet key pair is
//! generated when we next *send*, not when a new remote ratchet key arrives
//! (as vodozemac does). The messages on the wire are identical, but a state
//! stolen between receiving and sending holds no secret of our next chain, so
//! one round trip heals a compromise. It also keeps `decrypt` free of
//! randomness.
//!
//! Invariants: a failed decrypt or encrypt leaves the session unchanged; a
//! message key is deleted once used; skipped keys are bounded per chain and in
//! total.
//!
//! Skipped message keys are not part of [`SessionSnapshot`]: a session may
//! hold 2,000 of them, and the snapshot is written with every message. They
//! live either in the session itself ([`SkippedKeys`], in memory:
//! [`Session::decrypt`]) or with the caller, who looks up the one key an
//! envelope needs ([`SkippedLookup`]), calls [`Session::decrypt_with`] and
//! persists the returned [`SkippedChange`] (keys added, key used, how many of
//! the oldest to evict) with the snapshot and the message.

use std::collections::VecDeque;
use std::fmt;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::envelope::{Envelope, RatchetHeader, SALT_LEN, pad, unpad};
use crate::error::CryptoError;
use crate::identity::{IdentityKeyPair, IdentityPublic};
use crate::prekey::{OneTimePrekey, PrekeyBundle, SignedPrekey};
use crate::primitives::{
    KEY_LEN, NONCE_LEN, chacha_open, chacha_seal, hkdf_sha256, hmac_sha256, x25519, x25519_public,
};
use crate::x3dh::{self, PrekeyHeader};

/// HKDF info of `KDF_RK`.
pub const ROOT_INFO: &[u8] = b"Kabar Double Ratchet v2 root";
/// HKDF info that turns a message key and salt into an AEAD key and nonce.
pub const MESSAGE_INFO: &[u8] = b"Kabar Double Ratchet v2 message";

/// Most message keys one header may make us skip in a single chain.
///
/// 1,000: the outbox retransmits lost messages, so a real gap only comes from
/// reordering or a burst lost in flight; a thousand covers a whole day of busy
/// chat sent while one request was lost. It also bounds the work a forged
/// header can force (1,000 HMACs, about half a millisecond) before it fails.
pub const MAX_SKIP_PER_CHAIN: u32 = 1_000;

/// Most skipped message keys one session keeps in total; the oldest are
/// evicted first.
///
/// 2,000 (as libsignal keeps per chain): room for two full per-chain gaps.
/// They are kept apart from the snapshot (about 68 bytes each), so a full
/// store does not make every message rewrite 136 KiB.
pub const MAX_SKIPPED_TOTAL: usize = 2_000;

/// How many finished receiving chains are remembered (ratchet key and length
/// only, no secrets: 36 bytes each) so a replay from an earlier chain is
/// recognised as [`CryptoError::MessageKeyGone`]. A message from an older
/// chain fails as [`CryptoError::AuthenticationFailed`].
pub const MAX_FINISHED_CHAINS: usize = 20;

/// Version of the [`SessionSnapshot`] layout. Version 3 keeps the skipped
/// keys out of the snapshot (version 2 held them inside:
/// [`SessionSnapshotV2`] reads it); a version 1 snapshot (protocol version 1)
/// is refused.
pub const SNAPSHOT_VERSION: u8 = 3;

/// HMAC label of a session's id (from the X3DH base key).
const SESSION_ID_INFO: &[u8] = b"Kabar session id v2";

/// The stable id of the session made from X3DH base key `base_key`: the same
/// on both sides, never changed by the ratchet.
fn session_id(base_key: &[u8; KEY_LEN]) -> [u8; 16] {
    let mac = hmac_sha256(base_key, SESSION_ID_INFO);
    let mut id = [0u8; 16];
    id.copy_from_slice(&mac[..16]);
    id
}

/// `KDF_CK`: returns (message key, next chain key).
fn kdf_ck(ck: &[u8; KEY_LEN]) -> (Zeroizing<[u8; KEY_LEN]>, [u8; KEY_LEN]) {
    (Zeroizing::new(hmac_sha256(ck, &[0x01])), hmac_sha256(ck, &[0x02]))
}

/// `KDF_RK`: returns (new root key, chain key).
fn kdf_rk(rk: &[u8; KEY_LEN], dh: &[u8; KEY_LEN]) -> Result<([u8; KEY_LEN], [u8; KEY_LEN]), CryptoError> {
    let mut out = Zeroizing::new([0u8; 2 * KEY_LEN]);
    hkdf_sha256(Some(rk), dh, ROOT_INFO, out.as_mut())?;
    let mut root = [0u8; KEY_LEN];
    let mut chain = [0u8; KEY_LEN];
    root.copy_from_slice(&out[..KEY_LEN]);
    chain.copy_from_slice(&out[KEY_LEN..]);
    Ok((root, chain))
}

/// The ChaCha20-Poly1305 key and nonce of one message key.
#[derive(Zeroize, ZeroizeOnDrop)]
struct MessageCipher {
    key: [u8; KEY_LEN],
    nonce: [u8; NONCE_LEN],
}

/// `HKDF(salt = salt, ikm = mk, info = MESSAGE_INFO, 44)` → key ‖ nonce.
fn message_cipher(mk: &[u8; KEY_LEN], salt: &[u8; SALT_LEN]) -> Result<MessageCipher, CryptoError> {
    let mut okm = Zeroizing::new([0u8; KEY_LEN + NONCE_LEN]);
    hkdf_sha256(Some(salt), mk, MESSAGE_INFO, okm.as_mut())?;
    let mut cipher = MessageCipher { key: [0u8; KEY_LEN], nonce: [0u8; NONCE_LEN] };
    cipher.key.copy_from_slice(&okm[..KEY_LEN]);
    cipher.nonce.copy_from_slice(&okm[KEY_LEN..]);
    Ok(cipher)
}

/// `AD ‖ u16 BE(len(H)) ‖ H`, `H` = [`Envelope::authenticated_header`].
fn message_ad(ad: &[u8], envelope: &Envelope) -> Vec<u8> {
    let header = envelope.authenticated_header();
    let mut out = Vec::with_capacity(ad.len() + 2 + header.len());
    out.extend_from_slice(ad);
    // H is at most 2 + 170 + 56 bytes.
    out.extend_from_slice(&u16::try_from(header.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(&header);
    out
}

fn open(mk: &[u8; KEY_LEN], ad: &[u8], envelope: &Envelope) -> Result<Vec<u8>, CryptoError> {
    let cipher = message_cipher(mk, &envelope.header.salt)?;
    let mut plaintext = chacha_open(&cipher.key, &cipher.nonce, &message_ad(ad, envelope), &envelope.ciphertext)?;
    unpad(&mut plaintext)?;
    Ok(plaintext)
}

fn random_key<R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    rng.fill_bytes(&mut key);
    key
}

/// A message key kept for a message that has not arrived yet: the ratchet
/// key and counter of that message, and its key. Zeroized on drop; `Debug`
/// shows the counter only.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SkippedKey {
    /// The sender's ratchet key of the chain the message belongs to.
    pub ratchet_key: [u8; KEY_LEN],
    /// The message's number in that chain.
    pub counter: u32,
    message_key: [u8; KEY_LEN],
}

impl SkippedKey {
    /// A stored key, as the caller's store gives it back.
    pub fn new(ratchet_key: [u8; KEY_LEN], counter: u32, message_key: [u8; KEY_LEN]) -> Self {
        SkippedKey { ratchet_key, counter, message_key }
    }

    /// The message key, to persist.
    pub fn message_key(&self) -> &[u8; KEY_LEN] {
        &self.message_key
    }

    fn is_for(&self, header: &RatchetHeader) -> bool {
        self.ratchet_key == header.ratchet_key && self.counter == header.counter
    }
}

impl fmt::Debug for SkippedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkippedKey").field("counter", &self.counter).field("keys", &"<redacted>").finish()
    }
}

/// What the caller's store of skipped keys holds for one envelope's header,
/// looked up before [`Session::decrypt_with`].
#[derive(Debug, Default)]
pub struct SkippedLookup {
    /// The key for the header's (ratchet key, counter), if stored.
    pub key: Option<SkippedKey>,
    /// True if any key with the header's ratchet key is stored (protocol
    /// §4.4 step 2: an earlier chain whose other keys we still hold).
    pub chain_held: bool,
}

/// How one successful decrypt changes the skipped keys. The caller applies
/// it in this order, with the snapshot and the message, in one transaction:
/// delete `used`; store `added` (oldest first, after every key held); then
/// delete the `evict` oldest keys held. A change either uses a key or adds
/// keys, never both; `evict` never reaches a key of `added`.
#[derive(Default, Clone)]
pub struct SkippedChange {
    /// The key that decrypted the message: delete it (ratchet key, counter).
    pub used: Option<([u8; KEY_LEN], u32)>,
    /// Keys skipped by this message, in the order they must be evicted.
    pub added: Vec<SkippedKey>,
    /// How many of the oldest keys held to evict after adding.
    pub evict: usize,
}

impl SkippedChange {
    /// True if it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.used.is_none() && self.added.is_empty() && self.evict == 0
    }
}

impl fmt::Debug for SkippedChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkippedChange")
            .field("used", &self.used.map(|(_, counter)| counter))
            .field("added", &self.added.len())
            .field("evict", &self.evict)
            .finish()
    }
}

/// Skipped keys kept in memory, oldest first: the store of a [`Session`]
/// that holds its own ([`Session::decrypt`]), and a reference for callers'
/// stores. Serializable; `Debug` shows the count only.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct SkippedKeys {
    keys: VecDeque<SkippedKey>,
}

impl SkippedKeys {
    /// What this store holds for `header`.
    pub fn lookup(&self, header: &RatchetHeader) -> SkippedLookup {
        SkippedLookup {
            key: self.keys.iter().find(|k| k.is_for(header)).cloned(),
            chain_held: self.keys.iter().any(|k| k.ratchet_key == header.ratchet_key),
        }
    }

    /// Applies one decrypt's change.
    pub fn apply(&mut self, change: &SkippedChange) {
        if let Some((ratchet_key, counter)) = change.used {
            self.keys.retain(|k| !(k.ratchet_key == ratchet_key && k.counter == counter));
        }
        self.keys.extend(change.added.iter().cloned());
        let evict = change.evict.min(self.keys.len());
        self.keys.drain(..evict);
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True if no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &SkippedKey> {
        self.keys.iter()
    }
}

impl fmt::Debug for SkippedKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SkippedKeys").field("len", &self.keys.len()).finish()
    }
}

/// A receiving chain we have moved past: its ratchet key and how many
/// messages it held. No secrets.
#[derive(Clone, Serialize, Deserialize, Zeroize)]
struct FinishedChain {
    ratchet_key: [u8; KEY_LEN],
    length: u32,
}

/// The state of a session, without its skipped keys (how many it holds is
/// here): what storage persists, in the same transaction as the message it
/// belongs to. Its size does not grow with the skipped keys.
///
/// Serialize it with any serde format; restore with [`Session::from_snapshot`].
/// Zeroized on drop; `Debug` shows counters only.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SessionSnapshot {
    version: u8,
    id: [u8; 16],
    #[zeroize(skip)]
    remote_identity: IdentityPublic,
    associated_data: Vec<u8>,
    root_key: [u8; KEY_LEN],
    our_ratchet_secret: [u8; KEY_LEN],
    our_ratchet_public: [u8; KEY_LEN],
    their_ratchet_key: Option<[u8; KEY_LEN]>,
    sending_chain_key: Option<[u8; KEY_LEN]>,
    send_counter: u32,
    previous_send_counter: u32,
    receiving_chain_key: Option<[u8; KEY_LEN]>,
    receive_counter: u32,
    /// How many skipped keys the session holds (kept by its store).
    skipped_held: u32,
    finished_chains: Vec<FinishedChain>,
    #[zeroize(skip)]
    pending_prekey: Option<PrekeyHeader>,
    remote_base_key: Option<[u8; KEY_LEN]>,
}

impl SessionSnapshot {
    /// The session's stable id (see [`Session::id`]).
    pub fn id(&self) -> [u8; 16] {
        self.id
    }

    /// How many skipped keys the session holds.
    pub fn skipped_keys(&self) -> usize {
        self.skipped_held as usize
    }
}

/// A version 2 snapshot, with its skipped keys inside (what schema 6 stores
/// hold): read only to move to version 3 ([`SessionSnapshotV2::upgrade`]).
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SessionSnapshotV2 {
    version: u8,
    #[zeroize(skip)]
    remote_identity: IdentityPublic,
    associated_data: Vec<u8>,
    root_key: [u8; KEY_LEN],
    our_ratchet_secret: [u8; KEY_LEN],
    our_ratchet_public: [u8; KEY_LEN],
    their_ratchet_key: Option<[u8; KEY_LEN]>,
    sending_chain_key: Option<[u8; KEY_LEN]>,
    send_counter: u32,
    previous_send_counter: u32,
    receiving_chain_key: Option<[u8; KEY_LEN]>,
    receive_counter: u32,
    skipped: Vec<SkippedKey>,
    finished_chains: Vec<FinishedChain>,
    #[zeroize(skip)]
    pending_prekey: Option<PrekeyHeader>,
    remote_base_key: Option<[u8; KEY_LEN]>,
}

impl fmt::Debug for SessionSnapshotV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSnapshotV2").field("skipped_keys", &self.skipped.len()).finish_non_exhaustive()
    }
}

impl SessionSnapshotV2 {
    /// The version 3 snapshot and its skipped keys (oldest first). The id
    /// comes from the X3DH base key when the snapshot still knows it (a
    /// responder, or an initiator not answered yet), else it is `fallback_id`
    /// (draw it at random). Checks the version and the bounds.
    pub fn upgrade(mut self, fallback_id: [u8; 16]) -> Result<(SessionSnapshot, SkippedKeys), CryptoError> {
        if self.version != 2 {
            return Err(CryptoError::Decode(crate::error::DecodeError::UnsupportedVersion(self.version)));
        }
        if self.skipped.len() > MAX_SKIPPED_TOTAL {
            return Err(CryptoError::Decode(crate::error::DecodeError::Malformed("session snapshot out of bounds")));
        }
        let base = self.remote_base_key.or(self.pending_prekey.as_ref().map(|h| h.base_key));
        let skipped = SkippedKeys { keys: std::mem::take(&mut self.skipped).into() };
        let snapshot = SessionSnapshot {
            version: SNAPSHOT_VERSION,
            id: base.as_ref().map_or(fallback_id, session_id),
            remote_identity: self.remote_identity,
            associated_data: std::mem::take(&mut self.associated_data),
            root_key: self.root_key,
            our_ratchet_secret: self.our_ratchet_secret,
            our_ratchet_public: self.our_ratchet_public,
            their_ratchet_key: self.their_ratchet_key,
            sending_chain_key: self.sending_chain_key,
            send_counter: self.send_counter,
            previous_send_counter: self.previous_send_counter,
            receiving_chain_key: self.receiving_chain_key,
            receive_counter: self.receive_counter,
            skipped_held: skipped.len() as u32,
            finished_chains: std::mem::take(&mut self.finished_chains),
            pending_prekey: self.pending_prekey,
            remote_base_key: self.remote_base_key,
        };
        Session::from_snapshot(snapshot.clone())?;
        Ok((snapshot, skipped))
    }
}

impl fmt::Debug for SessionSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionSnapshot")
            .field("remote_identity", &self.remote_identity)
            .field("send_counter", &self.send_counter)
            .field("receive_counter", &self.receive_counter)
            .field("skipped_keys", &self.skipped_held)
            .field("awaiting_reply", &self.pending_prekey.is_some())
            .field("keys", &"<redacted>")
            .finish()
    }
}

/// A Double Ratchet session with one contact's identity.
///
/// No IO: [`Session::encrypt`] and [`Session::decrypt`] change only this value;
/// the caller persists [`Session::snapshot`] together with the message.
///
/// Its skipped keys live either in the session ([`Session::decrypt`], which
/// keeps them in memory: [`Session::skipped`]) or with the caller
/// ([`Session::decrypt_with`]); a session restored by
/// [`Session::from_snapshot`] holds none in memory.
#[derive(Clone)]
pub struct Session {
    state: SessionSnapshot,
    skipped: SkippedKeys,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.state.fmt(f)
    }
}

impl Session {
    /// Starts a session as the initiator from a contact's prekey bundle
    /// (verified here). Messages carry the X3DH header until the contact
    /// replies.
    pub fn initiate<R: CryptoRng + ?Sized>(
        ours: &IdentityKeyPair,
        bundle: &PrekeyBundle,
        rng: &mut R,
    ) -> Result<Self, CryptoError> {
        let (x3dh, header) = x3dh::initiate(ours, bundle, rng)?;
        let their_ratchet = bundle.signed_prekey.public;
        let our_secret = random_key(rng);
        let dh = x25519(&StaticSecret::from(our_secret), &their_ratchet)?;
        let (root_key, sending) = kdf_rk(&x3dh.shared_secret, &dh)?;
        Ok(Session {
            skipped: SkippedKeys::default(),
            state: SessionSnapshot {
                version: SNAPSHOT_VERSION,
                id: session_id(&header.base_key),
                remote_identity: bundle.identity,
                associated_data: x3dh.associated_data,
                root_key,
                our_ratchet_secret: our_secret,
                our_ratchet_public: x25519_public(&StaticSecret::from(our_secret)),
                their_ratchet_key: Some(their_ratchet),
                sending_chain_key: Some(sending),
                send_counter: 0,
                previous_send_counter: 0,
                receiving_chain_key: None,
                receive_counter: 0,
                skipped_held: 0,
                finished_chains: Vec::new(),
                pending_prekey: Some(header),
                remote_base_key: None,
            },
        })
    }

    /// Accepts a session as the responder from a prekey message, and decrypts
    /// that first message. The caller looks up the prekeys the envelope names
    /// ([`Envelope::prekey`]), persists the session and the message together,
    /// and deletes the one-time prekey in that same transaction. Keys the
    /// first message skipped (it was not number 0) are in the session's
    /// memory: a caller that keeps skipped keys itself takes them with
    /// [`Session::take_skipped`].
    ///
    /// Before calling this for a prekey message from a known contact, check
    /// [`Session::is_same_prekey_session`] on the existing session: a repeated
    /// prekey message belongs to it and must go to [`Session::decrypt`].
    pub fn respond(
        ours: &IdentityKeyPair,
        signed_prekey: &SignedPrekey,
        one_time_prekey: Option<&OneTimePrekey>,
        envelope: &Envelope,
    ) -> Result<(Self, Vec<u8>), CryptoError> {
        let header = envelope.prekey.as_ref().ok_or(CryptoError::NotPrekeyMessage)?;
        let x3dh = x3dh::respond(ours, signed_prekey, one_time_prekey, header)?;
        let our_secret = signed_prekey.secret_bytes();
        let mut session = Session {
            skipped: SkippedKeys::default(),
            state: SessionSnapshot {
                version: SNAPSHOT_VERSION,
                id: session_id(&header.base_key),
                remote_identity: header.identity,
                associated_data: x3dh.associated_data,
                root_key: *x3dh.shared_secret,
                our_ratchet_secret: our_secret,
                our_ratchet_public: x25519_public(&StaticSecret::from(our_secret)),
                their_ratchet_key: None,
                sending_chain_key: None,
                send_counter: 0,
                previous_send_counter: 0,
                receiving_chain_key: None,
                receive_counter: 0,
                skipped_held: 0,
                finished_chains: Vec::new(),
                pending_prekey: None,
                remote_base_key: Some(header.base_key),
            },
        };
        let plaintext = session.decrypt(envelope)?;
        Ok((session, plaintext))
    }

    /// The contact's identity this session is with.
    pub fn remote_identity(&self) -> &IdentityPublic {
        &self.state.remote_identity
    }

    /// True while this side started the session and has not yet decrypted a
    /// reply (its messages still carry the X3DH header).
    pub fn awaiting_reply(&self) -> bool {
        self.state.pending_prekey.is_some()
    }

    /// The X3DH header this (initiator) session repeats until it hears
    /// back, if it has not yet.
    pub fn pending_prekey(&self) -> Option<&PrekeyHeader> {
        self.state.pending_prekey.as_ref()
    }

    /// True if `header` is the X3DH header this (responder) session was made
    /// from: a retransmitted first message, to be decrypted here, not answered
    /// with a new session.
    pub fn is_same_prekey_session(&self, header: &PrekeyHeader) -> bool {
        self.state.remote_base_key == Some(header.base_key) && self.state.remote_identity == header.identity
    }

    /// The session's stable id: derived from the X3DH base key, the same on
    /// both sides, for the life of the session. A store of skipped keys
    /// files them under it.
    pub fn id(&self) -> [u8; 16] {
        self.state.id
    }

    /// Number of skipped message keys currently held (wherever they are kept).
    pub fn skipped_keys(&self) -> usize {
        self.state.skipped_held as usize
    }

    /// The skipped keys this session keeps in memory.
    pub fn skipped(&self) -> &SkippedKeys {
        &self.skipped
    }

    /// Hands the skipped keys kept in memory to a caller that keeps them
    /// itself, as a change to persist (all added, oldest first). The
    /// session's count is unchanged: the keys only move.
    pub fn take_skipped(&mut self) -> SkippedChange {
        let keys = std::mem::take(&mut self.skipped.keys);
        SkippedChange { used: None, added: keys.into(), evict: 0 }
    }

    /// The explicit, serializable state to persist (without the skipped keys).
    pub fn snapshot(&self) -> SessionSnapshot {
        self.state.clone()
    }

    /// Restores a session whose skipped keys the caller keeps, checking the
    /// snapshot's version and bounds.
    pub fn from_snapshot(snapshot: SessionSnapshot) -> Result<Self, CryptoError> {
        Session::from_parts(snapshot, SkippedKeys::default())
    }

    /// Restores a session with its skipped keys in memory (as
    /// [`Session::snapshot`] and [`Session::skipped`] gave them). With an
    /// empty `skipped`, the same as [`Session::from_snapshot`].
    pub fn from_parts(snapshot: SessionSnapshot, skipped: SkippedKeys) -> Result<Self, CryptoError> {
        if snapshot.version != SNAPSHOT_VERSION {
            return Err(CryptoError::Decode(crate::error::DecodeError::UnsupportedVersion(snapshot.version)));
        }
        if !skipped.is_empty() && skipped.len() != snapshot.skipped_keys() {
            return Err(CryptoError::Decode(crate::error::DecodeError::Malformed(
                "skipped keys do not match the session",
            )));
        }
        if snapshot.skipped_keys() > MAX_SKIPPED_TOTAL
            || snapshot.finished_chains.len() > MAX_FINISHED_CHAINS
            || snapshot.associated_data.len() != x3dh::AD_LEN
        {
            return Err(CryptoError::Decode(crate::error::DecodeError::Malformed("session snapshot out of bounds")));
        }
        Ok(Session { state: snapshot, skipped })
    }

    /// Encrypts one message. Advances the sending chain; persist
    /// [`Session::snapshot`] with the envelope before sending it, so the
    /// message key is never used twice.
    ///
    /// The RNG makes our next ratchet key pair when the contact has moved to
    /// a new ratchet key since we last sent.
    pub fn encrypt<R: CryptoRng + ?Sized>(&mut self, plaintext: &[u8], rng: &mut R) -> Result<Envelope, CryptoError> {
        let padded = pad(plaintext)?;
        let s = &mut self.state;
        if s.sending_chain_key.is_none() {
            s.start_sending_chain(rng)?;
        }
        let chain = s.sending_chain_key.as_ref().ok_or(CryptoError::SessionNotReady)?;
        let next_counter = s.send_counter.checked_add(1).ok_or(CryptoError::CounterExhausted)?;
        let (mk, next_chain) = kdf_ck(chain);
        let mut salt = [0u8; SALT_LEN];
        rng.fill_bytes(&mut salt);
        let header = RatchetHeader {
            ratchet_key: s.our_ratchet_public,
            previous_chain_length: s.previous_send_counter,
            counter: s.send_counter,
            salt,
        };
        let mut envelope = Envelope { prekey: s.pending_prekey, header, ciphertext: Vec::new() };
        let cipher = message_cipher(&mk, &salt)?;
        envelope.ciphertext =
            chacha_seal(&cipher.key, &cipher.nonce, &message_ad(&s.associated_data, &envelope), &padded);
        s.sending_chain_key = Some(next_chain);
        s.send_counter = next_counter;
        Ok(envelope)
    }

    /// Decrypts one message, with the skipped keys this session keeps in
    /// memory. On any error the session is unchanged. A message whose key
    /// this session no longer holds (already used, or evicted, or from a
    /// chain it has moved past) gives [`CryptoError::MessageKeyGone`]: the
    /// caller tells a duplicate from a lost message by its received ids.
    pub fn decrypt(&mut self, envelope: &Envelope) -> Result<Vec<u8>, CryptoError> {
        let found = self.skipped.lookup(&envelope.header);
        let (plaintext, change) = self.decrypt_with(envelope, found)?;
        self.skipped.apply(&change);
        Ok(plaintext)
    }

    /// Decrypts one message whose skipped keys the caller keeps: `found` is
    /// what its store holds for the envelope's header
    /// (`envelope.header.ratchet_key`, `envelope.header.counter`). Returns
    /// the plaintext and the change to persist with the snapshot and the
    /// message, in one transaction. On any error the session is unchanged
    /// and there is nothing to persist. Errors as [`Session::decrypt`].
    pub fn decrypt_with(
        &mut self,
        envelope: &Envelope,
        found: SkippedLookup,
    ) -> Result<(Vec<u8>, SkippedChange), CryptoError> {
        let header = &envelope.header;
        let s = &mut self.state;
        // Fast path: the next message of the current receiving chain (no
        // skipped key can exist for it). Nothing is written until the AEAD
        // check has passed.
        if s.their_ratchet_key == Some(header.ratchet_key)
            && header.counter == s.receive_counter
            && let Some(chain) = &s.receiving_chain_key
        {
            let next_counter = s.receive_counter.checked_add(1).ok_or(CryptoError::CounterExhausted)?;
            let (mk, next_chain) = kdf_ck(chain);
            let plaintext = open(&mk, &s.associated_data, envelope)?;
            s.receiving_chain_key = Some(next_chain);
            s.receive_counter = next_counter;
            s.pending_prekey = None;
            return Ok((plaintext, SkippedChange::default()));
        }
        // Every other path works on a copy that replaces the state only on
        // success.
        let mut next = s.clone();
        let mut change = SkippedChange::default();
        let found = SkippedLookup { key: found.key.filter(|k| k.is_for(header)), chain_held: found.chain_held };
        let plaintext = next.decrypt_slow(envelope, found, &mut change)?;
        next.pending_prekey = None;
        self.state = next;
        Ok((plaintext, change))
    }
}

impl SessionSnapshot {
    fn decrypt_slow(
        &mut self,
        envelope: &Envelope,
        found: SkippedLookup,
        change: &mut SkippedChange,
    ) -> Result<Vec<u8>, CryptoError> {
        let header = &envelope.header;
        if let Some(key) = &found.key {
            let plaintext = open(&key.message_key, &self.associated_data, envelope)?;
            self.skipped_held = self.skipped_held.saturating_sub(1);
            change.used = Some((key.ratchet_key, key.counter));
            return Ok(plaintext);
        }
        if self.their_ratchet_key != Some(header.ratchet_key) && found.chain_held {
            // An earlier chain we still hold keys of, but not this one's.
            return Err(CryptoError::MessageKeyGone);
        }
        if let Some(done) = self.finished_chains.iter().find(|c| c.ratchet_key == header.ratchet_key) {
            return Err(if header.counter < done.length {
                CryptoError::MessageKeyGone
            } else {
                // The chain ended at `length` (the sender told us with PN):
                // nothing valid can come after it.
                CryptoError::AuthenticationFailed
            });
        }
        if self.their_ratchet_key != Some(header.ratchet_key) || self.receiving_chain_key.is_none() {
            self.skip_message_keys(header.previous_chain_length, change)?;
            self.dh_ratchet(header)?;
        } else if header.counter < self.receive_counter {
            return Err(CryptoError::MessageKeyGone);
        }
        self.skip_message_keys(header.counter, change)?;
        let chain = self.receiving_chain_key.as_ref().ok_or(CryptoError::SessionNotReady)?;
        let (mk, next_chain) = kdf_ck(chain);
        let plaintext = open(&mk, &self.associated_data, envelope)?;
        self.receiving_chain_key = Some(next_chain);
        self.receive_counter = self.receive_counter.checked_add(1).ok_or(CryptoError::CounterExhausted)?;
        Ok(plaintext)
    }

    /// Derives the keys of the current receiving chain up to (not including)
    /// `until` into `change`, and the evictions that keep the bound.
    fn skip_message_keys(&mut self, until: u32, change: &mut SkippedChange) -> Result<(), CryptoError> {
        let (Some(their), Some(mut chain)) = (self.their_ratchet_key, self.receiving_chain_key) else {
            return Ok(());
        };
        if until <= self.receive_counter {
            return Ok(());
        }
        let gap = until - self.receive_counter;
        if gap > MAX_SKIP_PER_CHAIN {
            return Err(CryptoError::TooManySkipped {
                requested: u64::from(gap),
                limit: u64::from(MAX_SKIP_PER_CHAIN),
            });
        }
        for counter in self.receive_counter..until {
            let (mk, next_chain) = kdf_ck(&chain);
            change.added.push(SkippedKey { ratchet_key: their, counter, message_key: *mk });
            chain = next_chain;
        }
        // At most 2 × MAX_SKIP_PER_CHAIN = MAX_SKIPPED_TOTAL keys are added
        // per message, so the eviction never reaches one just added.
        let held = self.skipped_held as usize + gap as usize;
        let excess = held.saturating_sub(MAX_SKIPPED_TOTAL);
        change.evict += excess;
        self.skipped_held = (held - excess) as u32;
        self.receiving_chain_key = Some(chain);
        self.receive_counter = until;
        chain.zeroize();
        Ok(())
    }

    /// The receiving half of the DH ratchet step, on a new remote ratchet
    /// key: a new receiving chain from `DH(our current key, their new key)`.
    /// Our sending chain ends here; the next one starts when we next send.
    fn dh_ratchet(&mut self, header: &RatchetHeader) -> Result<(), CryptoError> {
        if let Some(previous) = self.their_ratchet_key
            && self.receiving_chain_key.is_some()
        {
            self.finished_chains.push(FinishedChain { ratchet_key: previous, length: self.receive_counter });
            if self.finished_chains.len() > MAX_FINISHED_CHAINS {
                self.finished_chains.remove(0);
            }
        }
        let dh = x25519(&StaticSecret::from(self.our_ratchet_secret), &header.ratchet_key)?;
        let (root, receiving) = kdf_rk(&self.root_key, &dh)?;
        if self.sending_chain_key.take().is_some() {
            self.previous_send_counter = self.send_counter;
            self.send_counter = 0;
        }
        self.receive_counter = 0;
        self.their_ratchet_key = Some(header.ratchet_key);
        self.receiving_chain_key = Some(receiving);
        self.root_key = root;
        Ok(())
    }

    /// The sending half of the DH ratchet step: a fresh ratchet key pair and
    /// a new sending chain from `DH(our new key, their current key)`.
    fn start_sending_chain<R: CryptoRng + ?Sized>(&mut self, rng: &mut R) -> Result<(), CryptoError> {
        let their = self.their_ratchet_key.ok_or(CryptoError::SessionNotReady)?;
        let our_secret = random_key(rng);
        let dh = x25519(&StaticSecret::from(our_secret), &their)?;
        let (root, sending) = kdf_rk(&self.root_key, &dh)?;
        self.root_key = root;
        self.sending_chain_key = Some(sending);
        self.our_ratchet_secret = our_secret;
        self.our_ratchet_public = x25519_public(&StaticSecret::from(our_secret));
        Ok(())
    }
}
