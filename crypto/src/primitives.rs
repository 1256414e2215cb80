//! Thin, checked wrappers over the primitives Kabar uses: X25519, HKDF-SHA256,
//! HMAC-SHA256, ChaCha20-Poly1305 and XChaCha20-Poly1305.
//!
//! Everything above this module goes through these functions, so the RFC and
//! Wycheproof vectors in `tests/vectors.rs` check exactly what the protocol
//! runs. Invariant: no function here panics on any input.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::error::CryptoError;

/// Length of an X25519 or Ed25519 public key, and of every symmetric key here.
pub const KEY_LEN: usize = 32;
/// Length of a ChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 12;
/// Length of an XChaCha20-Poly1305 nonce.
pub const XNONCE_LEN: usize = 24;
/// Length of a Poly1305 tag.
pub const TAG_LEN: usize = 16;

/// X25519 Diffie-Hellman (RFC 7748) that rejects non-contributory results.
///
/// A low-order public key makes the shared secret all zeros whatever our
/// secret is; accepting it would let an attacker fix a session key. Such a
/// result is an error, never a key.
pub fn x25519(secret: &StaticSecret, their_public: &[u8; KEY_LEN]) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let shared = secret.diffie_hellman(&PublicKey::from(*their_public));
    if !shared.was_contributory() {
        return Err(CryptoError::NonContributoryKey);
    }
    Ok(Zeroizing::new(shared.to_bytes()))
}

/// The X25519 public key of a secret.
pub fn x25519_public(secret: &StaticSecret) -> [u8; KEY_LEN] {
    PublicKey::from(secret).to_bytes()
}

/// HKDF-SHA256 (RFC 5869): extract with `salt` (`None` is a zero salt of hash
/// length) then expand `ikm` into `out` with `info`.
///
/// Fails only when `out` is longer than 255 × 32 bytes.
pub fn hkdf_sha256(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], out: &mut [u8]) -> Result<(), CryptoError> {
    Hkdf::<Sha256>::new(salt, ikm).expand(info, out).map_err(|_| CryptoError::KdfOutputTooLong)
}

/// HMAC-SHA256 of `data` under `key` (RFC 2104).
pub fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of every length, so this cannot fail.
    let mut mac = match <Hmac<Sha256> as KeyInit>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

#[cold]
fn unreachable_hmac() -> Hmac<Sha256> {
    // `Hmac::new_from_slice` is infallible for every key length; if that ever
    // changes, hashing the empty key keeps this function total.
    <Hmac<Sha256> as KeyInit>::new(&Default::default())
}

/// ChaCha20-Poly1305 (RFC 8439) encryption: returns ciphertext ‖ tag.
pub fn chacha_seal(key: &[u8; KEY_LEN], nonce: &[u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    // Encryption fails only past 2^38 bytes, far beyond MAX_PLAINTEXT.
    cipher.encrypt(&(*nonce).into(), Payload { msg: plaintext, aad }).unwrap_or_default()
}

/// ChaCha20-Poly1305 (RFC 8439) decryption of ciphertext ‖ tag.
pub fn chacha_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = ChaCha20Poly1305::new(&(*key).into());
    cipher.decrypt(&(*nonce).into(), Payload { msg: ciphertext, aad }).map_err(|_| CryptoError::AuthenticationFailed)
}

/// XChaCha20-Poly1305 encryption (24-byte random-safe nonce), for data at rest.
pub fn xchacha_seal(key: &[u8; KEY_LEN], nonce: &[u8; XNONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher.encrypt(&(*nonce).into(), Payload { msg: plaintext, aad }).unwrap_or_default()
}

/// XChaCha20-Poly1305 decryption of ciphertext ‖ tag.
pub fn xchacha_open(
    key: &[u8; KEY_LEN],
    nonce: &[u8; XNONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = XChaCha20Poly1305::new(&(*key).into());
    cipher.decrypt(&(*nonce).into(), Payload { msg: ciphertext, aad }).map_err(|_| CryptoError::AuthenticationFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn low_order_point_is_rejected() {
        let secret = StaticSecret::from([7u8; 32]);
        // The all-zero point has order 1 on Curve25519.
        assert_eq!(x25519(&secret, &[0u8; 32]), Err(CryptoError::NonContributoryKey));
        // The point of order 8 with u = 1 is rejected too.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(x25519(&secret, &one), Err(CryptoError::NonContributoryKey));
    }

    #[test]
    fn aead_round_trip_and_tamper() {
        let key = [1u8; 32];
        let nonce = [2u8; 12];
        let mut ct = chacha_seal(&key, &nonce, b"ad", b"hello");
        assert_eq!(chacha_open(&key, &nonce, b"ad", &ct).unwrap(), b"hello");
        assert_eq!(chacha_open(&key, &nonce, b"AD", &ct), Err(CryptoError::AuthenticationFailed));
        ct[0] ^= 1;
        assert_eq!(chacha_open(&key, &nonce, b"ad", &ct), Err(CryptoError::AuthenticationFailed));
    }
}
