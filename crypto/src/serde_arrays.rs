//! Serde helpers for byte arrays longer than serde's built-in 32.

/// `#[serde(with = "crate::serde_arrays::bytes64")]` for `[u8; 64]`.
pub(crate) mod bytes64 {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    use std::fmt;

    pub(crate) fn serialize<S: Serializer>(value: &[u8; 64], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_bytes(value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<[u8; 64], D::Error> {
        deserializer.deserialize_bytes(Bytes64)
    }

    struct Bytes64;

    impl<'de> Visitor<'de> for Bytes64 {
        type Value = [u8; 64];

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("64 bytes")
        }

        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; 64], E> {
            <[u8; 64]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; 64], A::Error> {
            let mut out = [0u8; 64];
            for (i, slot) in out.iter_mut().enumerate() {
                *slot = seq.next_element()?.ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            if seq.next_element::<u8>()?.is_some() {
                return Err(A::Error::invalid_length(65, &self));
            }
            Ok(out)
        }
    }
}
