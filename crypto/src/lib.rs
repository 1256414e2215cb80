//! # kabar-crypto
//!
//! Kabar's end-to-end encryption, in pure functions: no IO, no async, no
//! libp2p or redb. Randomness comes in as a `rand_core::CryptoRng`, time as a
//! Unix timestamp argument.
//!
//! ## Layout
//! - [`primitives`]: checked wrappers over X25519, HKDF/HMAC-SHA256,
//!   ChaCha20-Poly1305 and XChaCha20-Poly1305 (tested against RFC and
//!   Wycheproof vectors).
//! - [`identity`]: [`IdentityKeyPair`] (Ed25519 signing key, which is also the
//!   libp2p identity, and a signed X25519 identity key) and [`ProfileKind`].
//! - [`prekey`]: signed and one-time prekeys and the [`PrekeyBundle`].
//! - [`x3dh`]: the X3DH key agreement.
//! - [`ratchet`]: the Double Ratchet and [`Session`], with its serde
//!   [`SessionSnapshot`]; skipped message keys kept apart from it
//!   ([`SkippedKeys`] in memory, or the caller's store: [`SkippedLookup`] in,
//!   [`SkippedChange`] out).
//! - [`envelope`]: the wire format of one encrypted message, and padding.
//! - [`safety`]: safety numbers and their QR payload.
//!
//! ## A session in four calls
//! ```
//! use kabar_crypto::*;
//! # fn main() -> Result<(), CryptoError> {
//! let mut rng = rand::rng();
//! let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
//! let bob = IdentityKeyPair::generate(ProfileKind::Business, &mut rng);
//! let spk = SignedPrekey::generate(&bob, 1, 1_700_000_000, &mut rng);
//! let bundle = PrekeyBundle { identity: bob.public(), signed_prekey: spk.public(), one_time_prekey: None };
//!
//! let mut a = Session::initiate(&alice, &bundle, &mut rng)?;
//! let wire = a.encrypt(b"hello", &mut rng)?.encode();
//! let envelope = Envelope::decode(&wire)?;
//! let (mut b, text) = Session::respond(&bob, &spk, None, &envelope)?;
//! assert_eq!(text, b"hello");
//! let reply = b.encrypt(b"hi", &mut rng)?;
//! assert_eq!(a.decrypt(&reply)?, b"hi");
//! # Ok(()) }
//! ```

pub mod envelope;
pub mod error;
pub mod hex;
pub mod identity;
pub mod prekey;
pub mod primitives;
pub mod ratchet;
pub mod safety;
mod serde_arrays;
pub mod x3dh;

pub use envelope::{Envelope, MessageId, RatchetHeader};
pub use error::{CryptoError, DecodeError};
pub use identity::{IdentityKeyPair, IdentityPublic, ProfileKind};
pub use prekey::{OneTimePrekey, OneTimePrekeyPublic, PrekeyBundle, SignedPrekey, SignedPrekeyPublic};
pub use ratchet::{Session, SessionSnapshot, SessionSnapshotV2, SkippedChange, SkippedKey, SkippedKeys, SkippedLookup};
pub use safety::SafetyNumber;
pub use x3dh::PrekeyHeader;
