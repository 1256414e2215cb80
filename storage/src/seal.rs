//! Record sealing: every value that holds a secret or content is encrypted
//! with XChaCha20-Poly1305 under the profile's record key, with the table name
//! and the record key as associated data, so a record cannot be moved to
//! another key, another table or another profile without failing
//! authentication.
//!
//! Sealed value: `0x01 (version) ‖ nonce (24) ‖ ciphertext ‖ tag (16)`.
//! Associated data: `"KABAR-REC-V1" ‖ u8(len(table)) ‖ table ‖ record key`.

use std::fmt;

use kabar_crypto::primitives::{XNONCE_LEN, hkdf_sha256, hmac_sha256, xchacha_open, xchacha_seal};
use serde::Serialize;
use serde::de::DeserializeOwned;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::error::StoreError;

const SEAL_VERSION: u8 = 1;
const AAD_PREFIX: &[u8] = b"KABAR-REC-V1";

/// Fills `buf` from the operating system's random source.
pub(crate) fn random_bytes(buf: &mut [u8]) -> Result<(), StoreError> {
    getrandom::fill(buf).map_err(|_| StoreError::Random)
}

/// The keys derived from a profile's data key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub(crate) struct RecordKeys {
    seal: [u8; 32],
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
        let mut keys = RecordKeys { seal: [0; 32], index: [0; 32] };
        hkdf_sha256(None, data_key, b"kabar records v1", &mut keys.seal).map_err(|_| StoreError::Random)?;
        hkdf_sha256(None, data_key, b"kabar index v1", &mut keys.index).map_err(|_| StoreError::Random)?;
        Ok(keys)
    }

    fn aad(table: &str, key: &[u8]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 1 + table.len() + key.len());
        aad.extend_from_slice(AAD_PREFIX);
        aad.push(u8::try_from(table.len()).unwrap_or(u8::MAX));
        aad.extend_from_slice(table.as_bytes());
        aad.extend_from_slice(key);
        aad
    }

    /// Seals raw bytes for `table`/`key`.
    pub(crate) fn seal_bytes(&self, table: &str, key: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        let mut nonce = [0u8; XNONCE_LEN];
        random_bytes(&mut nonce)?;
        let ct = xchacha_seal(&self.seal, &nonce, &Self::aad(table, key), plaintext);
        let mut out = Vec::with_capacity(1 + XNONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens bytes sealed by [`RecordKeys::seal_bytes`].
    pub(crate) fn open_bytes(
        &self,
        table: &'static str,
        key: &[u8],
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if sealed.len() < 1 + XNONCE_LEN + 16 || sealed[0] != SEAL_VERSION {
            return Err(StoreError::TamperedRecord { table });
        }
        let mut nonce = [0u8; XNONCE_LEN];
        nonce.copy_from_slice(&sealed[1..1 + XNONCE_LEN]);
        xchacha_open(&self.seal, &nonce, &Self::aad(table, key), &sealed[1 + XNONCE_LEN..])
            .map(Zeroizing::new)
            .map_err(|_| StoreError::TamperedRecord { table })
    }

    /// Serializes (postcard) and seals a value.
    pub(crate) fn seal<T: Serialize>(&self, table: &str, key: &[u8], value: &T) -> Result<Vec<u8>, StoreError> {
        let plain = Zeroizing::new(
            postcard::to_allocvec(value).map_err(|e| StoreError::Database(format!("encoding a record: {e}")))?,
        );
        self.seal_bytes(table, key, &plain)
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
