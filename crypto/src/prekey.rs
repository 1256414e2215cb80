//! Signed prekeys, one-time prekeys and the bundle a contact uses to start a
//! session with us while we are offline.

use std::fmt;

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::CryptoError;
use crate::identity::{IdentityKeyPair, IdentityPublic, SIGNATURE_LEN, verify_signature};
use crate::primitives::{KEY_LEN, x25519_public};

/// Label of the signature over a signed prekey.
const SIGNED_PREKEY_LABEL: &str = "signed-prekey";

/// `id(u32 BE) ‖ created_at(u64 BE) ‖ public(32)`: the body of the signature.
fn signed_prekey_body(id: u32, created_at: u64, public: &[u8; KEY_LEN]) -> [u8; 4 + 8 + KEY_LEN] {
    let mut body = [0u8; 4 + 8 + KEY_LEN];
    body[..4].copy_from_slice(&id.to_be_bytes());
    body[4..12].copy_from_slice(&created_at.to_be_bytes());
    body[12..].copy_from_slice(public);
    body
}

fn random_secret<R: CryptoRng + ?Sized>(rng: &mut R) -> [u8; KEY_LEN] {
    let mut secret = [0u8; KEY_LEN];
    rng.fill_bytes(&mut secret);
    secret
}

/// A medium-term X25519 prekey signed by the identity. Rotate it (a new id)
/// every few weeks; keep the previous one a while for messages in flight.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SignedPrekey {
    id: u32,
    created_at: u64,
    secret: [u8; KEY_LEN],
    #[serde(with = "crate::serde_arrays::bytes64")]
    signature: [u8; SIGNATURE_LEN],
}

impl SignedPrekey {
    /// Generates signed prekey `id`, stamped `now` (Unix seconds).
    pub fn generate<R: CryptoRng + ?Sized>(identity: &IdentityKeyPair, id: u32, now: u64, rng: &mut R) -> Self {
        let secret = random_secret(rng);
        let public = x25519_public(&StaticSecret::from(secret));
        let signature = identity.sign(SIGNED_PREKEY_LABEL.as_bytes(), &signed_prekey_body(id, now, &public));
        SignedPrekey { id, created_at: now, secret, signature }
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The public half, as published in a bundle.
    pub fn public(&self) -> SignedPrekeyPublic {
        SignedPrekeyPublic {
            id: self.id,
            created_at: self.created_at,
            public: x25519_public(&StaticSecret::from(self.secret)),
            signature: self.signature,
        }
    }

    pub(crate) fn secret(&self) -> StaticSecret {
        StaticSecret::from(self.secret)
    }

    pub(crate) fn secret_bytes(&self) -> [u8; KEY_LEN] {
        self.secret
    }
}

impl fmt::Debug for SignedPrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedPrekey")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// The public half of a [`SignedPrekey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedPrekeyPublic {
    /// Prekey id, named by prekey messages.
    pub id: u32,
    /// Creation time, Unix seconds; covered by the signature.
    pub created_at: u64,
    /// X25519 public key.
    pub public: [u8; KEY_LEN],
    /// Identity signature over id, creation time and key.
    #[serde(with = "crate::serde_arrays::bytes64")]
    pub signature: [u8; SIGNATURE_LEN],
}

/// A single-use X25519 prekey. The store hands each one out at most once and
/// deletes its secret once a prekey message has used it.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct OneTimePrekey {
    id: u32,
    secret: [u8; KEY_LEN],
}

impl OneTimePrekey {
    /// Generates `count` one-time prekeys with ids `first_id`, `first_id + 1`, …
    /// (wrapping at `u32::MAX`).
    pub fn generate_batch<R: CryptoRng + ?Sized>(first_id: u32, count: u32, rng: &mut R) -> Vec<Self> {
        (0..count).map(|i| OneTimePrekey { id: first_id.wrapping_add(i), secret: random_secret(rng) }).collect()
    }

    /// Its id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Its public key.
    pub fn public(&self) -> OneTimePrekeyPublic {
        OneTimePrekeyPublic { id: self.id, public: x25519_public(&StaticSecret::from(self.secret)) }
    }

    pub(crate) fn secret(&self) -> StaticSecret {
        StaticSecret::from(self.secret)
    }
}

impl fmt::Debug for OneTimePrekey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OneTimePrekey").field("id", &self.id).field("secret", &"<redacted>").finish()
    }
}

/// The public half of a [`OneTimePrekey`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OneTimePrekeyPublic {
    /// Prekey id.
    pub id: u32,
    /// X25519 public key.
    pub public: [u8; KEY_LEN],
}

/// What a peer needs to start a session with a profile: its identity, a
/// signed prekey and, when one is left, a one-time prekey.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyBundle {
    /// The profile's public identity.
    pub identity: IdentityPublic,
    /// Current signed prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// A one-time prekey, if the profile has one to offer.
    pub one_time_prekey: Option<OneTimePrekeyPublic>,
}

impl PrekeyBundle {
    /// Checks the identity-key signature and the signed-prekey signature with
    /// `verify_strict`. Call before [`crate::x3dh::initiate`] (which calls it
    /// again, so an unverified bundle can never start a session).
    pub fn verify(&self) -> Result<(), CryptoError> {
        self.identity.verify()?;
        let spk = &self.signed_prekey;
        verify_signature(
            &self.identity.signing,
            SIGNED_PREKEY_LABEL,
            &signed_prekey_body(spk.id, spk.created_at, &spk.public),
            &spk.signature,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ProfileKind;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn bundle(rng: &mut StdRng) -> PrekeyBundle {
        let id = IdentityKeyPair::generate(ProfileKind::Personal, rng);
        let spk = SignedPrekey::generate(&id, 7, 1_700_000_000, rng);
        let opk = OneTimePrekey::generate_batch(100, 1, rng);
        PrekeyBundle { identity: id.public(), signed_prekey: spk.public(), one_time_prekey: Some(opk[0].public()) }
    }

    #[test]
    fn good_bundle_verifies() {
        let mut rng = StdRng::seed_from_u64(10);
        bundle(&mut rng).verify().unwrap();
    }

    #[test]
    fn tampered_bundle_is_rejected() {
        let mut rng = StdRng::seed_from_u64(11);
        let good = bundle(&mut rng);

        let mut bad_key = good.clone();
        bad_key.signed_prekey.public[3] ^= 0x10;
        assert_eq!(bad_key.verify(), Err(CryptoError::BadSignature("signed-prekey")));

        let mut bad_id = good.clone();
        bad_id.signed_prekey.id += 1;
        assert_eq!(bad_id.verify(), Err(CryptoError::BadSignature("signed-prekey")));

        let mut bad_sig = good.clone();
        bad_sig.signed_prekey.signature[0] ^= 1;
        assert!(bad_sig.verify().is_err());

        // A signed prekey signed by someone else.
        let other = bundle(&mut rng);
        let mut swapped = good.clone();
        swapped.signed_prekey = other.signed_prekey;
        assert!(swapped.verify().is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut rng = StdRng::seed_from_u64(12);
        let id = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let spk = SignedPrekey::generate(&id, 1, 0, &mut rng);
        let shown = format!("{spk:?}");
        assert!(shown.contains("<redacted>"));
        assert!(!shown.contains(&crate::hex::encode(&spk.secret_bytes())[..12]));
    }
}
