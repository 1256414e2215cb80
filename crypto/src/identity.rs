//! Profile identities: an Ed25519 signing key and an X25519 identity key
//! signed by it.
//!
//! The Ed25519 key is also the profile's libp2p identity, so a PeerId names a
//! Kabar identity and the Noise handshake authenticates it. The X25519 key is
//! used in X3DH; its signature binds it, and the profile kind, to the Ed25519
//! key.

use std::fmt;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::{CryptoError, DecodeError};
use crate::primitives::{KEY_LEN, x25519_public};

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Prefix of every message Kabar signs, so a Kabar signature can never be
/// replayed as a signature of another protocol (or another Kabar structure:
/// each structure adds its own label after this prefix).
pub const SIGNATURE_DOMAIN: &[u8] = b"KABAR-SIG-V1\x00";

/// The kind of a profile. Bound into identity signatures and into the X3DH
/// associated data, so a session made for a personal identity can never be
/// opened by a business identity and vice versa.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Zeroize)]
pub enum ProfileKind {
    /// A person's own profile: friends and family.
    Personal,
    /// A business profile: customers, catalog, orders.
    Business,
}

impl ProfileKind {
    /// Wire byte: 0 personal, 1 business.
    pub fn to_byte(self) -> u8 {
        match self {
            ProfileKind::Personal => 0,
            ProfileKind::Business => 1,
        }
    }

    /// Parses a wire byte.
    pub fn from_byte(byte: u8) -> Result<Self, DecodeError> {
        match byte {
            0 => Ok(ProfileKind::Personal),
            1 => Ok(ProfileKind::Business),
            other => Err(DecodeError::UnknownProfileKind(other)),
        }
    }
}

impl fmt::Display for ProfileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProfileKind::Personal => "personal",
            ProfileKind::Business => "business",
        })
    }
}

/// Builds `SIGNATURE_DOMAIN ‖ label ‖ 0x00 ‖ body`, the exact bytes signed.
pub(crate) fn signing_input(label: &[u8], body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(SIGNATURE_DOMAIN.len() + label.len() + 1 + body.len());
    msg.extend_from_slice(SIGNATURE_DOMAIN);
    msg.extend_from_slice(label);
    msg.push(0);
    msg.extend_from_slice(body);
    msg
}

/// Label of the signature over the X25519 identity key.
const IDENTITY_LABEL: &[u8] = b"identity-key";

fn identity_body(kind: ProfileKind, dh: &[u8; KEY_LEN]) -> [u8; 1 + KEY_LEN] {
    let mut body = [0u8; 1 + KEY_LEN];
    body[0] = kind.to_byte();
    body[1..].copy_from_slice(dh);
    body
}

/// Verifies `signature` over `signing_input(label, body)` under the Ed25519
/// key `signer` with `verify_strict` (rejects small-order keys and
/// non-canonical signatures).
pub(crate) fn verify_signature(
    signer: &[u8; KEY_LEN],
    label: &'static str,
    body: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), CryptoError> {
    let key = VerifyingKey::from_bytes(signer).map_err(|_| CryptoError::InvalidSigningKey)?;
    let sig = Signature::from_bytes(signature);
    key.verify_strict(&signing_input(label.as_bytes(), body), &sig).map_err(|_| CryptoError::BadSignature(label))
}

/// A profile's secret identity: Ed25519 signing key and X25519 identity key.
///
/// Zeroized on drop; `Debug` shows only public parts.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct IdentityKeyPair {
    kind: ProfileKind,
    signing_seed: [u8; KEY_LEN],
    dh_secret: [u8; KEY_LEN],
    #[serde(with = "crate::serde_arrays::bytes64")]
    dh_signature: [u8; SIGNATURE_LEN],
}

impl IdentityKeyPair {
    /// Generates a fresh identity of the given kind.
    pub fn generate<R: CryptoRng + ?Sized>(kind: ProfileKind, rng: &mut R) -> Self {
        let mut signing_seed = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(signing_seed.as_mut());
        let mut dh_secret = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(dh_secret.as_mut());
        Self::from_secrets(kind, &signing_seed, &dh_secret)
    }

    /// Rebuilds an identity from its two 32-byte secrets (for example an
    /// Ed25519 seed that already serves as a libp2p identity).
    pub fn from_secrets(kind: ProfileKind, signing_seed: &[u8; KEY_LEN], dh_secret: &[u8; KEY_LEN]) -> Self {
        let signing = SigningKey::from_bytes(signing_seed);
        let dh_public = x25519_public(&StaticSecret::from(*dh_secret));
        let dh_signature = signing.sign(&signing_input(IDENTITY_LABEL, &identity_body(kind, &dh_public))).to_bytes();
        IdentityKeyPair { kind, signing_seed: *signing_seed, dh_secret: *dh_secret, dh_signature }
    }

    /// The profile kind this identity was made for.
    pub fn kind(&self) -> ProfileKind {
        self.kind
    }

    /// The public half, as published in contact cards and prekey bundles.
    pub fn public(&self) -> IdentityPublic {
        IdentityPublic {
            kind: self.kind,
            signing: SigningKey::from_bytes(&self.signing_seed).verifying_key().to_bytes(),
            dh: x25519_public(&self.dh_static()),
            dh_signature: self.dh_signature,
        }
    }

    /// The Ed25519 seed, for building the profile's libp2p keypair
    /// (`Keypair::ed25519_from_bytes`). Handle with care: it is the identity.
    pub fn signing_seed(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.signing_seed)
    }

    /// Signs `signing_input(label, body)`.
    pub(crate) fn sign(&self, label: &[u8], body: &[u8]) -> [u8; SIGNATURE_LEN] {
        SigningKey::from_bytes(&self.signing_seed).sign(&signing_input(label, body)).to_bytes()
    }

    /// The X25519 identity secret as a dalek type.
    pub(crate) fn dh_static(&self) -> StaticSecret {
        StaticSecret::from(self.dh_secret)
    }
}

impl fmt::Debug for IdentityKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKeyPair").field("public", &self.public()).field("secrets", &"<redacted>").finish()
    }
}

/// The public identity of a profile: what a contact needs to verify it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdentityPublic {
    /// Profile kind, covered by `dh_signature`.
    pub kind: ProfileKind,
    /// Ed25519 public key; also the libp2p identity (PeerId).
    pub signing: [u8; KEY_LEN],
    /// X25519 identity key used in X3DH.
    pub dh: [u8; KEY_LEN],
    /// Signature by `signing` over the kind and `dh`.
    #[serde(with = "crate::serde_arrays::bytes64")]
    pub dh_signature: [u8; SIGNATURE_LEN],
}

impl IdentityPublic {
    /// Checks that `dh` and `kind` are signed by `signing` (`verify_strict`).
    pub fn verify(&self) -> Result<(), CryptoError> {
        verify_signature(&self.signing, "identity-key", &identity_body(self.kind, &self.dh), &self.dh_signature)
    }

    /// Wire form: kind(1) ‖ signing(32) ‖ dh(32) ‖ signature(64), 129 bytes.
    pub fn to_bytes(&self) -> [u8; IDENTITY_PUBLIC_LEN] {
        let mut out = [0u8; IDENTITY_PUBLIC_LEN];
        out[0] = self.kind.to_byte();
        out[1..33].copy_from_slice(&self.signing);
        out[33..65].copy_from_slice(&self.dh);
        out[65..].copy_from_slice(&self.dh_signature);
        out
    }

    /// Parses the 129-byte wire form. Does not verify the signature.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() < IDENTITY_PUBLIC_LEN {
            return Err(DecodeError::Truncated { needed: IDENTITY_PUBLIC_LEN - bytes.len() });
        }
        if bytes.len() > IDENTITY_PUBLIC_LEN {
            return Err(DecodeError::TrailingBytes(bytes.len() - IDENTITY_PUBLIC_LEN));
        }
        let mut signing = [0u8; KEY_LEN];
        signing.copy_from_slice(&bytes[1..33]);
        let mut dh = [0u8; KEY_LEN];
        dh.copy_from_slice(&bytes[33..65]);
        let mut dh_signature = [0u8; SIGNATURE_LEN];
        dh_signature.copy_from_slice(&bytes[65..]);
        Ok(IdentityPublic { kind: ProfileKind::from_byte(bytes[0])?, signing, dh, dh_signature })
    }
}

/// Length of [`IdentityPublic::to_bytes`].
pub const IDENTITY_PUBLIC_LEN: usize = 1 + KEY_LEN + KEY_LEN + SIGNATURE_LEN;

impl fmt::Debug for IdentityPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityPublic")
            .field("kind", &self.kind)
            .field("signing", &crate::hex::short(&self.signing))
            .field("dh", &crate::hex::short(&self.dh))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn identity_signature_verifies_and_binds_kind() {
        let mut rng = StdRng::seed_from_u64(1);
        let id = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let public = id.public();
        public.verify().unwrap();

        let mut as_business = public;
        as_business.kind = ProfileKind::Business;
        assert_eq!(as_business.verify(), Err(CryptoError::BadSignature("identity-key")));

        let mut other_dh = public;
        other_dh.dh[0] ^= 1;
        assert!(other_dh.verify().is_err());
    }

    #[test]
    fn wire_form_round_trips() {
        let mut rng = StdRng::seed_from_u64(2);
        let public = IdentityKeyPair::generate(ProfileKind::Business, &mut rng).public();
        let bytes = public.to_bytes();
        assert_eq!(IdentityPublic::from_bytes(&bytes).unwrap(), public);
        assert!(IdentityPublic::from_bytes(&bytes[..100]).is_err());
    }

    #[test]
    fn debug_redacts_secrets() {
        let mut rng = StdRng::seed_from_u64(3);
        let id = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let shown = format!("{id:?}");
        assert!(shown.contains("<redacted>"));
        let seed_hex = crate::hex::encode(id.signing_seed().as_ref());
        assert!(!shown.contains(&seed_hex[..16]));
        assert!(!shown.contains(&format!("{:?}", &id.signing_seed()[..4])));
    }
}
