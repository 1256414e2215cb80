//! Record sealing: every value that holds a secret or content is encrypted
//! with XChaCha20-Poly1305 under the profile's record key, with the table name
//! and the record key as associated data, so a record cannot be moved to
//! another key, another table or another profile without failing
//! authentication.
//!
//! Sealed value: `0x01 (version) ‖ nonce (24) ‖ ciphertext ‖ tag (16)`.
//! Associated data: `"KABAR-REC-V1" ‖ u8(len(table)) ‖ table ‖ record key`.
//!
//! One cipher instance per store seals and opens every record, in place:
//! one allocation per seal (the sealed value) and per open (the
//! plaintext), the associated data on the stack.

use std::fmt;

use chacha20poly1305::aead::AeadInOut;
use chacha20poly1305::{KeyInit, Tag, XChaCha20Poly1305, XNonce};
use kabar_crypto::primitives::{TAG_LEN, XNONCE_LEN, hkdf_sha256, hmac_sha256};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::{ZeroizeOnDrop, Zeroizing};

use crate::error::StoreError;

const SEAL_VERSION: u8 = 1;
const AAD_PREFIX: &[u8] = b"KABAR-REC-V1";

#[cfg(test)]
thread_local! {
    /// Seals made on this thread, and the plaintext bytes they sealed (tests
    /// count what each operation seals).
    pub(crate) static SEALED: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

/// Fills `buf` from the operating system's random source.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), StoreError> {
    getrandom::fill(buf).map_err(|_| StoreError::Random)
}

/// Longest associated data kept on the stack (prefix, table name, record
/// key); longer (never, with our tables and keys) goes to the heap.
const AAD_STACK: usize = 96;

/// The keys derived from a profile's data key: the seal key, held by its
/// cipher (which zeroizes it on drop), and the index key.
#[derive(Clone, ZeroizeOnDrop)]
pub(crate) struct RecordKeys {
    #[zeroize(skip)]
    cipher: XChaCha20Poly1305,
    index: [u8; 32],
}

impl fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RecordKeys(<redacted>)")
    }
}

impl RecordKeys {
    /// `seal = HKDF(data key, "kabar records v1")`, `index = HKDF(data key, "kabar index v1")`.
    pub(crate) fn derive(data_key: &[u8; 32]) -> Result<Self, StoreError> {
        let mut seal = Zeroizing::new([0u8; 32]);
        let mut index = [0u8; 32];
        hkdf_sha256(None, data_key, b"kabar records v1", seal.as_mut()).map_err(|_| StoreError::Random)?;
        hkdf_sha256(None, data_key, b"kabar index v1", &mut index).map_err(|_| StoreError::Random)?;
        let cipher = XChaCha20Poly1305::new(&(*seal).into());
        Ok(RecordKeys { cipher, index })
    }

    /// Runs `f` with the associated data of `table`/`key`.
    fn with_aad<T>(table: &str, key: &[u8], f: impl FnOnce(&[u8]) -> T) -> T {
        let len = AAD_PREFIX.len() + 1 + table.len() + key.len();
        let fill = |aad: &mut [u8]| {
            let (prefix, rest) = aad.split_at_mut(AAD_PREFIX.len());
            prefix.copy_from_slice(AAD_PREFIX);
            rest[0] = u8::try_from(table.len()).unwrap_or(u8::MAX);
            rest[1..1 + table.len()].copy_from_slice(table.as_bytes());
            rest[1 + table.len()..].copy_from_slice(key);
        };
        if len <= AAD_STACK {
            let mut aad = [0u8; AAD_STACK];
            fill(&mut aad[..len]);
            f(&aad[..len])
        } else {
            let mut aad = vec![0u8; len];
            fill(&mut aad);
            f(&aad)
        }
    }

    /// Seals `out`, which holds the version byte, room for the nonce and
    /// the plaintext: draws the nonce, encrypts the plaintext in place and
    /// appends the tag.
    fn seal_in_place(&self, table: &str, key: &[u8], out: &mut Vec<u8>) -> Result<(), StoreError> {
        #[cfg(test)]
        SEALED.with(|c| c.set((c.get().0 + 1, c.get().1 + (out.len() - 1 - XNONCE_LEN) as u64)));
        let mut nonce = [0u8; XNONCE_LEN];
        random_bytes(&mut nonce)?;
        out[1..1 + XNONCE_LEN].copy_from_slice(&nonce);
        let tag = Self::with_aad(table, key, |aad| {
            self.cipher.encrypt_inout_detached(&XNonce::from(nonce), aad, (&mut out[1 + XNONCE_LEN..]).into())
        })
        .map_err(|_| StoreError::Database("sealing a record: too long".into()))?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Opens the bytes of a value sealed by [`RecordKeys::seal`].
    pub(crate) fn open_bytes(
        &self,
        table: &'static str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if sealed.len() < 1 + XNONCE_LEN + TAG_LEN || sealed[0] != SEAL_VERSION {
            return Err(StoreError::TamperedRecord { table });
        }
        let (nonce, rest) = sealed[1..].split_at(XNONCE_LEN);
        let (ciphertext, tag) = rest.split_at(rest.len() - TAG_LEN);
        let (Ok(nonce), Ok(tag)) = (XNonce::try_from(nonce), Tag::try_from(tag)) else {
            return Err(StoreError::TamperedRecord { table });
        };
        let mut plain = Zeroizing::new(ciphertext.to_vec());
        Self::with_aad(table, key, |aad| {
            self.cipher.decrypt_inout_detached(&nonce, aad, plain.as_mut_slice().into(), &tag)
        })
        .map_err(|_| StoreError::TamperedRecord { table })?;
        Ok(plain)
    }

    /// Serializes (postcard) and seals a value, serialized straight into
    /// the sealed value's buffer and encrypted there (no second copy of
    /// the plaintext; wiped if encoding fails half way).
    pub(crate) fn seal<T: Serialize>(&self, table: &str, key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
        /// Appends to a borrowed buffer (postcard's `to_extend` takes its
        /// writer by value).
        struct Sink<'a>(&'a mut Vec<u8>);
        impl Extend<u8> for Sink<'_> {
            fn extend<I: IntoIterator<Item = u8>>(&mut self, bytes: I) {
                self.0.extend(bytes);
            }
        }
        let mut out = Zeroizing::new(Vec::with_capacity(1 + XNONCE_LEN + 128 + TAG_LEN));
        out.push(SEAL_VERSION);
        out.extend_from_slice(&[0u8; XNONCE_LEN]);
        postcard::to_extend(value, Sink(&mut out))
            .map_err(|e| StoreError::Database(format!("encoding a record: {e}")))?;
        self.seal_in_place(table, key, &mut out)?;
        // Only ciphertext now: nothing to wipe.
        Ok(std::mem::take(&mut *out))
    }

    /// Opens and deserializes a value sealed by [`RecordKeys::seal`].
    pub(crate) fn open<T: DeserializeOwned>(
        &self,
        table: &'static str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<T, StoreError> {
        let plain = self.open_bytes(table, key, sealed)?;
        postcard::from_bytes(&plain).map_err(|_| StoreError::MalformedRecord { table })
    }

    /// An opaque 16-byte lookup key: `HMAC(index key, domain ‖ 0x00 ‖ data)[..16]`.
    /// Lookup keys never contain names or text.
    pub(crate) fn blind(&self, domain: &str, data: &[u8]) -> [u8; 16] {
        let mut input = Vec::with_capacity(domain.len() + 1 + data.len());
        input.extend_from_slice(domain.as_bytes());
        input.push(0);
        input.extend_from_slice(data);
        let mac = hmac_sha256(&self.index, &input);
        let mut out = [0u8; 16];
        out.copy_from_slice(&mac[..16]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_records_cannot_move() {
        let keys = RecordKeys::derive(&[9; 32]).unwrap();
        let sealed = keys.seal("contacts", b"k1", &"Alice".to_string()).unwrap();
        assert_eq!(keys.open::<String>("contacts", b"k1", &sealed).unwrap(), "Alice");
        assert!(matches!(keys.open::<String>("contacts", b"k2", &sealed), Err(StoreError::TamperedRecord { .. })));
        assert!(matches!(keys.open::<String>("messages", b"k1", &sealed), Err(StoreError::TamperedRecord { .. })));
        let other = RecordKeys::derive(&[8; 32]).unwrap();
        assert!(matches!(other.open::<String>("contacts", b"k1", &sealed), Err(StoreError::TamperedRecord { .. })));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(keys.open::<String>("contacts", b"k1", &flipped).is_err());
        assert!(keys.open::<String>("contacts", b"k1", &sealed[..10]).is_err());
    }

    /// The format is that of one-shot XChaCha20-Poly1305 (kabar-crypto's
    /// primitives) both ways, for any associated data length.
    #[test]
    fn in_place_sealing_matches_the_one_shot_primitive() {
        use kabar_crypto::primitives::{xchacha_open, xchacha_seal};
        let keys = RecordKeys::derive(&[9; 32]).unwrap();
        let mut seal_key = [0u8; 32];
        hkdf_sha256(None, &[9; 32], b"kabar records v1", &mut seal_key).unwrap();
        // postcard of the string "body": its length, then its bytes.
        let plain = b"\x04body";
        for key in [vec![], vec![1; 24], vec![2; 200]] {
            let aad = [AAD_PREFIX, &[8], b"messages", &key].concat();
            let sealed = keys.seal("messages", &key, &"body").unwrap();
            let nonce: [u8; XNONCE_LEN] = sealed[1..1 + XNONCE_LEN].try_into().unwrap();
            assert_eq!(xchacha_open(&seal_key, &nonce, &aad, &sealed[1 + XNONCE_LEN..]).unwrap(), plain);
            let one_shot = [&[SEAL_VERSION][..], &nonce, &xchacha_seal(&seal_key, &nonce, &aad, plain)].concat();
            assert_eq!(one_shot, sealed);
            assert_eq!(keys.open_bytes("messages", &key, &one_shot).unwrap().as_slice(), plain);
        }
    }

    #[test]
    fn blinded_ids_depend_on_the_key() {
        let a = RecordKeys::derive(&[1; 32]).unwrap();
        let b = RecordKeys::derive(&[2; 32]).unwrap();
        assert_eq!(a.blind("contact", b"peer"), a.blind("contact", b"peer"));
        assert_ne!(a.blind("contact", b"peer"), b.blind("contact", b"peer"));
        assert_ne!(a.blind("contact", b"peer"), a.blind("label", b"peer"));
        assert_eq!(format!("{a:?}"), "RecordKeys(<redacted>)");
    }
}
