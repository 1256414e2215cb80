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

/// True if `bytes` is the canonical encoding of a field element y < p =
/// 2^255 − 19 (bit 255, the sign of x, ignored). The only non-canonical
/// encodings are y + p for y in 0..=18: bytes 1..=30 all 0xff, byte 31 with
/// its low 7 bits 0x7f, and byte 0 ≥ 0xed.
pub(crate) fn is_canonical_y(bytes: &[u8; KEY_LEN]) -> bool {
    !(bytes[0] >= 0xed && bytes[1..31].iter().all(|&b| b == 0xff) && bytes[31] & 0x7f == 0x7f)
}

/// Verifies `signature` over `signing_input(label, body)` under the Ed25519
/// key `signer`, strictly (docs/protocol.md §2.1): `A` and `R` must be
/// canonical encodings (y < p) of points that are not of small order, `S`
/// must be below the group order L, and `[S]B = R + [k]A` must hold
/// (cofactorless), with k = SHA-512(R ‖ A ‖ M) mod L over the received
/// encodings. `verify_strict` checks all but the canonical encodings, which
/// are checked here first.
pub(crate) fn verify_signature(
    signer: &[u8; KEY_LEN],
    label: &'static str,
    body: &[u8],
    signature: &[u8; SIGNATURE_LEN],
) -> Result<(), CryptoError> {
    if !is_canonical_y(signer) {
        return Err(CryptoError::InvalidSigningKey);
    }
    let mut r = [0u8; KEY_LEN];
    r.copy_from_slice(&signature[..KEY_LEN]);
    if !is_canonical_y(&r) {
        return Err(CryptoError::BadSignature(label));
    }
    let key = VerifyingKey::from_bytes(signer).map_err(|_| CryptoError::InvalidSigningKey)?;
    if key.is_weak() {
        return Err(CryptoError::InvalidSigningKey);
    }
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
    fn small_order_and_non_canonical_keys_and_signatures_are_refused() {
        // The identity point (y = 1) as the signing key, R = identity and
        // S = 0: a lax verifier accepts this for any body ([0]B = I + [k]I).
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        let mut sig = [0u8; 64];
        sig[0] = 1;
        assert_eq!(
            verify_signature(&identity_point, "identity-key", b"anything", &sig),
            Err(CryptoError::InvalidSigningKey)
        );
        // The same point encoded non-canonically (y = 1 + p).
        let mut non_canonical = [0xffu8; 32];
        non_canonical[0] = 0xee;
        non_canonical[31] = 0x7f;
        assert!(!is_canonical_y(&non_canonical));
        assert_eq!(verify_signature(&non_canonical, "identity-key", b"x", &sig), Err(CryptoError::InvalidSigningKey));
        // p − 1 is canonical, p is not; the sign bit does not matter.
        let mut p_minus_1 = [0xffu8; 32];
        p_minus_1[0] = 0xec;
        p_minus_1[31] = 0x7f;
        assert!(is_canonical_y(&p_minus_1));
        let mut p = p_minus_1;
        p[0] = 0xed;
        assert!(!is_canonical_y(&p));
        p[31] = 0xff;
        assert!(!is_canonical_y(&p));

        // A good signature with R re-encoded non-canonically, or S + L.
        let mut rng = StdRng::seed_from_u64(9);
        let pair = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let public = pair.public();
        public.verify().unwrap();
        let mut high_s = public;
        // L = 2^252 + 27742317777372353535851937790883648493, little-endian.
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut carry = 0u16;
        for (s, l) in high_s.dh_signature[32..].iter_mut().zip(l) {
            let sum = u16::from(*s) + u16::from(l) + carry;
            *s = sum as u8;
            carry = sum >> 8;
        }
        assert_eq!(high_s.verify(), Err(CryptoError::BadSignature("identity-key")));
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
