//! The envelope: Kabar's versioned, length-bounded wire format for one
//! encrypted message, and the padding applied before encryption.
//!
//! Hand-written big-endian layout, specified byte by byte in
//! `docs/protocol.md` ("Envelope"). [`Envelope::decode`] never panics, rejects
//! input longer than [`MAX_ENVELOPE_LEN`] before looking at it, and allocates
//! at most one buffer no longer than its input.

use crate::error::{CryptoError, DecodeError};
use crate::identity::{IDENTITY_PUBLIC_LEN, IdentityPublic};
use crate::primitives::{KEY_LEN, TAG_LEN};
use crate::x3dh::PrekeyHeader;

/// Protocol (envelope format) version this crate writes and reads. Version 1
/// is no longer accepted: [`Envelope::decode`] rejects it with
/// [`DecodeError::UnsupportedVersion`].
pub const ENVELOPE_VERSION: u8 = 2;
/// Type byte of an ordinary ratchet message.
pub const TYPE_MESSAGE: u8 = 1;
/// Type byte of a prekey message (carries an X3DH [`PrekeyHeader`]).
pub const TYPE_PREKEY_MESSAGE: u8 = 2;

/// Largest plaintext a message may carry, before padding: 64 KiB.
pub const MAX_PLAINTEXT: usize = 64 * 1024;
/// Smallest padded size: every plaintext of up to 63 bytes pads to 64.
pub const MIN_PADDED: usize = 64;
/// Largest padded plaintext (the padding bucket of `MAX_PLAINTEXT + 1`).
pub const MAX_PADDED: usize = padded_len(MAX_PLAINTEXT);
/// Smallest and largest valid ciphertext (padded plaintext plus tag).
pub const MIN_CIPHERTEXT: usize = MIN_PADDED + TAG_LEN;
/// Largest valid ciphertext.
pub const MAX_CIPHERTEXT: usize = MAX_PADDED + TAG_LEN;
/// Length of the encoded prekey header.
pub const PREKEY_HEADER_MAX_LEN: usize = IDENTITY_PUBLIC_LEN + KEY_LEN + 4 + 1 + 4;
/// Largest encoded envelope; decoding rejects anything longer at once.
pub const MAX_ENVELOPE_LEN: usize = 2 + PREKEY_HEADER_MAX_LEN + RatchetHeader::LEN + 4 + MAX_CIPHERTEXT;
/// Length of the per-message random salt (version 2).
pub const SALT_LEN: usize = 16;

/// Padded length of a plaintext of `len` bytes: `len + 1` (the 0x80
/// terminator) rounded up with the Padmé scheme, at least [`MIN_PADDED`].
///
/// Padmé rounds a length `L` with `E = ⌊log2 L⌋` to a multiple of
/// `2^(E − ⌊log2 E⌋ − 1)`: the overhead is at most 12 %, and the number of
/// distinct sizes — what an observer learns — is O(log log L) bits.
pub const fn padded_len(len: usize) -> usize {
    let l = len + 1;
    if l <= MIN_PADDED {
        return MIN_PADDED;
    }
    let e = usize::BITS - 1 - l.leading_zeros(); // ⌊log2 l⌋ (l ≥ 65 so e ≥ 6)
    let s = u32::BITS - 1 - e.leading_zeros() + 1; // ⌊log2 e⌋ + 1
    let last_bits = e - s;
    let mask = (1usize << last_bits) - 1;
    (l + mask) & !mask
}

/// Pads `plaintext` to its bucket: `plaintext ‖ 0x80 ‖ 0x00…`.
pub fn pad(plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(CryptoError::PlaintextTooLong { len: plaintext.len(), max: MAX_PLAINTEXT });
    }
    let mut out = Vec::with_capacity(padded_len(plaintext.len()) + TAG_LEN);
    out.extend_from_slice(plaintext);
    out.push(0x80);
    out.resize(padded_len(plaintext.len()), 0);
    Ok(out)
}

/// Removes padding added by [`pad`] in place: strips trailing `0x00` bytes
/// and exactly one `0x80`, then checks that the padded length is exactly
/// `padded_len` of what remains (a sender that pads differently is refused,
/// so every valid message of one length has one padded size).
pub fn unpad(padded: &mut Vec<u8>) -> Result<(), CryptoError> {
    let end = padded.iter().rposition(|&b| b != 0).ok_or(CryptoError::BadPadding)?;
    if padded[end] != 0x80 || end > MAX_PLAINTEXT || padded_len(end) != padded.len() {
        return Err(CryptoError::BadPadding);
    }
    padded.truncate(end);
    Ok(())
}

/// The Double Ratchet header: sender's current ratchet key, length of its
/// previous sending chain, the message number in the current chain, and
/// (version 2) a fresh random salt mixed into the message key, so that a
/// sender whose state was rolled back never reuses a (key, nonce) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RatchetHeader {
    /// Sender's current ratchet public key (`DHs`).
    pub ratchet_key: [u8; KEY_LEN],
    /// Number of messages in the sender's previous sending chain (`PN`).
    pub previous_chain_length: u32,
    /// Message number in the current sending chain (`N`).
    pub counter: u32,
    /// 16 random bytes drawn for this message; the HKDF salt of its AEAD key
    /// and nonce.
    pub salt: [u8; SALT_LEN],
}

impl RatchetHeader {
    /// Encoded length.
    pub const LEN: usize = KEY_LEN + 4 + 4 + SALT_LEN;

    /// `ratchet_key(32) ‖ PN(u32 BE) ‖ N(u32 BE) ‖ salt(16)`.
    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..KEY_LEN].copy_from_slice(&self.ratchet_key);
        out[KEY_LEN..KEY_LEN + 4].copy_from_slice(&self.previous_chain_length.to_be_bytes());
        out[KEY_LEN + 4..KEY_LEN + 8].copy_from_slice(&self.counter.to_be_bytes());
        out[KEY_LEN + 8..].copy_from_slice(&self.salt);
        out
    }
}

/// A message's stable identifier, computable from the envelope alone so a
/// receiver can recognise a retransmission without decrypting it:
/// `ratchet_key[0..8] ‖ N (u32 BE) ‖ salt[0..4]`.
///
/// Every part is in the authenticated header, so the id says nothing the
/// header does not. A retransmission (the same bytes) has the same id; two
/// different messages encrypted under the same `(ratchet key, N)` (a sender
/// whose state was rolled back) get different ids, so the receiver does not
/// take the second for a duplicate. 96 of the 128 bits are random. Messages
/// of one chain get neighbouring ids, which keeps a store's id index compact.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", crate::hex::encode(&self.0))
    }
}

impl std::fmt::Display for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&crate::hex::encode(&self.0))
    }
}

/// One encrypted message on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Present on the initiator's messages until it has heard back.
    pub prekey: Option<PrekeyHeader>,
    /// The Double Ratchet header (authenticated as associated data).
    pub header: RatchetHeader,
    /// ChaCha20-Poly1305 ciphertext of the padded plaintext, tag appended.
    pub ciphertext: Vec<u8>,
}

impl Envelope {
    /// The message id; see [`MessageId`].
    pub fn message_id(&self) -> MessageId {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.header.ratchet_key[..8]);
        id[8..12].copy_from_slice(&self.header.counter.to_be_bytes());
        id[12..].copy_from_slice(&self.header.salt[..4]);
        MessageId(id)
    }

    /// The type byte: [`TYPE_PREKEY_MESSAGE`] with an X3DH header, else
    /// [`TYPE_MESSAGE`].
    pub fn message_type(&self) -> u8 {
        if self.prekey.is_some() { TYPE_PREKEY_MESSAGE } else { TYPE_MESSAGE }
    }

    /// The authenticated header bytes `H`: the encoded envelope from its first
    /// byte up to (not including) the ciphertext length, i.e. version, type,
    /// the prekey fields if any, and the ratchet header with its salt. The
    /// message AD is `AD ‖ u16 BE(len(H)) ‖ H`, so every byte sent in the
    /// clear is authenticated.
    pub fn authenticated_header(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len() - 4 - self.ciphertext.len());
        self.encode_header_into(&mut out);
        out
    }

    fn encode_header_into(&self, out: &mut Vec<u8>) {
        out.push(ENVELOPE_VERSION);
        out.push(self.message_type());
        if let Some(p) = &self.prekey {
            out.extend_from_slice(&p.identity.to_bytes());
            out.extend_from_slice(&p.base_key);
            out.extend_from_slice(&p.signed_prekey_id.to_be_bytes());
            match p.one_time_prekey_id {
                None => out.push(0),
                Some(id) => {
                    out.push(1);
                    out.extend_from_slice(&id.to_be_bytes());
                }
            }
        }
        out.extend_from_slice(&self.header.to_bytes());
    }

    /// Encoded length in bytes.
    pub fn encoded_len(&self) -> usize {
        let prekey = match &self.prekey {
            Some(p) => IDENTITY_PUBLIC_LEN + KEY_LEN + 4 + 1 + if p.one_time_prekey_id.is_some() { 4 } else { 0 },
            None => 0,
        };
        2 + prekey + RatchetHeader::LEN + 4 + self.ciphertext.len()
    }

    /// Appends the wire form to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        self.encode_header_into(out);
        // The ciphertext length is bounded by MAX_CIPHERTEXT when made by
        // `Session::encrypt`; saturate rather than wrap for a hand-built one.
        let len = u32::try_from(self.ciphertext.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
    }

    /// The wire form.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Parses the wire form. Never panics; rejects inputs longer than
    /// [`MAX_ENVELOPE_LEN`] before reading them, trailing bytes, unknown
    /// versions and types, and ciphertext lengths that are out of range or
    /// not a padding bucket plus the tag. Does not
    /// verify signatures or decrypt.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_ENVELOPE_LEN {
            return Err(DecodeError::TooLong { len: bytes.len(), max: MAX_ENVELOPE_LEN });
        }
        let mut r = Reader { bytes };
        let version = r.u8()?;
        if version != ENVELOPE_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let prekey = match r.u8()? {
            TYPE_MESSAGE => None,
            TYPE_PREKEY_MESSAGE => {
                let identity = IdentityPublic::from_bytes(r.take(IDENTITY_PUBLIC_LEN)?)?;
                let base_key = r.array()?;
                let signed_prekey_id = r.u32()?;
                let one_time_prekey_id = match r.u8()? {
                    0 => None,
                    1 => Some(r.u32()?),
                    other => return Err(DecodeError::InvalidFlag(other)),
                };
                Some(PrekeyHeader { identity, base_key, signed_prekey_id, one_time_prekey_id })
            }
            other => return Err(DecodeError::UnknownType(other)),
        };
        let header = RatchetHeader {
            ratchet_key: r.array()?,
            previous_chain_length: r.u32()?,
            counter: r.u32()?,
            salt: r.array()?,
        };
        let len = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
        // A padded plaintext is always a whole bucket (a fixed point of
        // `padded_len`): any other length is refused before decryption.
        if !(MIN_CIPHERTEXT..=MAX_CIPHERTEXT).contains(&len) || padded_len(len - TAG_LEN - 1) != len - TAG_LEN {
            return Err(DecodeError::BadCiphertextLength(len));
        }
        let ciphertext = r.take(len)?.to_vec();
        if !r.bytes.is_empty() {
            return Err(DecodeError::TrailingBytes(r.bytes.len()));
        }
        Ok(Envelope { prekey, header, ciphertext })
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError::Truncated { needed: n - self.bytes.len() });
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_buckets() {
        assert_eq!(padded_len(0), 64);
        assert_eq!(padded_len(63), 64);
        assert_eq!(padded_len(64), 72);
        assert_eq!(padded_len(1024), 1088);
        assert_eq!(padded_len(16 * 1024), 17 * 1024);
        assert_eq!(MAX_PADDED, 67_584);
        for len in [0usize, 1, 63, 64, 100, 1000, 1024, 5000, MAX_PLAINTEXT] {
            let p = padded_len(len);
            assert!(p > len, "room for the terminator at {len}");
            assert!(p <= (len + 1).max(MIN_PADDED) * 112 / 100 + 1, "overhead ≤ 12% at {len}");
            assert_eq!(padded_len(p - 1), p, "buckets are fixed points at {len}");
        }
    }

    #[test]
    fn pad_round_trip() {
        for len in [0usize, 1, 63, 64, 65, 1024, MAX_PLAINTEXT] {
            let msg: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let mut padded = pad(&msg).unwrap();
            assert_eq!(padded.len(), padded_len(len));
            unpad(&mut padded).unwrap();
            assert_eq!(padded, msg);
        }
        // Trailing zero bytes in the message survive.
        let mut padded = pad(&[1, 0, 0]).unwrap();
        unpad(&mut padded).unwrap();
        assert_eq!(padded, [1, 0, 0]);
        assert!(pad(&vec![0; MAX_PLAINTEXT + 1]).is_err());
        assert_eq!(unpad(&mut vec![0; 64]), Err(CryptoError::BadPadding));
        assert_eq!(unpad(&mut vec![1; 64]), Err(CryptoError::BadPadding));
    }

    #[test]
    fn unpad_requires_the_exact_bucket() {
        // 10 bytes of text are padded to 64; the same text padded to 72 (the
        // next bucket) or to 63 is refused, so one length has one size.
        let mut right = pad(&[7; 10]).unwrap();
        assert_eq!(right.len(), 64);
        let mut too_long = right.clone();
        too_long.resize(72, 0);
        assert_eq!(unpad(&mut too_long), Err(CryptoError::BadPadding));
        let mut too_short = vec![7u8; 10];
        too_short.push(0x80);
        too_short.resize(63, 0);
        assert_eq!(unpad(&mut too_short), Err(CryptoError::BadPadding));
        unpad(&mut right).unwrap();
        assert_eq!(right, [7; 10]);
        // 100 bytes pad to 104 (bucket of 101 is a multiple of 8).
        let mut hundred = pad(&[1; 100]).unwrap();
        assert_eq!(hundred.len(), 104);
        hundred.resize(112, 0);
        assert_eq!(unpad(&mut hundred), Err(CryptoError::BadPadding));
    }
}
