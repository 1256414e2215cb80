//! Safety numbers: a fingerprint of two identities that two people compare,
//! aloud or by scanning a QR code, to rule out a man in the middle.
//!
//! Each party's fingerprint follows Signal's numeric fingerprint (version 0
//! iteration scheme) with Kabar's inputs: `h₀ = SHA-512(u16 BE(0) ‖ key ‖
//! LABEL)`, then 5,200 times `h = SHA-512(h ‖ key)`, where `key` is the
//! 129-byte [`IdentityPublic::to_bytes`]. The first 30 bytes of `h` give six
//! 5-digit groups (each 5-byte big-endian chunk mod 100,000). The displayed
//! number is the two 30-digit halves, the smaller first, so both people see
//! the same 60 digits.

use sha2::{Digest, Sha512};

use crate::error::CryptoError;
use crate::identity::IdentityPublic;

/// Iterations of SHA-512 per fingerprint: slows down a search for a
/// colliding identity (Signal uses the same count).
pub const ITERATIONS: u32 = 5_200;
/// Fixed label hashed into every fingerprint.
pub const LABEL: &[u8] = b"Kabar safety number v1";
/// Prefix of the QR payload.
pub const QR_PREFIX: &str = "kabar-safety:1:";

fn fingerprint(identity: &IdentityPublic) -> [u8; 32] {
    let key = identity.to_bytes();
    let mut hasher = Sha512::new();
    hasher.update(0u16.to_be_bytes());
    hasher.update(key);
    hasher.update(LABEL);
    let mut hash = hasher.finalize();
    for _ in 0..ITERATIONS {
        let mut hasher = Sha512::new();
        hasher.update(hash);
        hasher.update(key);
        hash = hasher.finalize();
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(&hash[..32]);
    out
}

fn digits(fp: &[u8; 32]) -> String {
    let mut out = String::with_capacity(30);
    for chunk in fp[..30].chunks_exact(5) {
        let value = chunk.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        out.push_str(&format!("{:05}", value % 100_000));
    }
    out
}

/// The safety number of our identity and a contact's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetyNumber {
    local: [u8; 32],
    remote: [u8; 32],
}

impl SafetyNumber {
    /// Computes it (about 10,000 SHA-512 blocks: a few milliseconds).
    pub fn new(local: &IdentityPublic, remote: &IdentityPublic) -> Self {
        SafetyNumber { local: fingerprint(local), remote: fingerprint(remote) }
    }

    /// The 60 digits, the same on both sides.
    pub fn digits(&self) -> String {
        let (a, b) = (digits(&self.local), digits(&self.remote));
        if a <= b { a + &b } else { b + &a }
    }

    /// The 60 digits in twelve groups of five, for display.
    pub fn display(&self) -> String {
        let d = self.digits();
        let groups: Vec<&str> = (0..12).filter_map(|i| d.get(i * 5..i * 5 + 5)).collect();
        groups.join(" ")
    }

    /// What our QR code shows: `kabar-safety:1:` ‖ hex(our fingerprint) ‖
    /// hex(their fingerprint).
    pub fn qr_payload(&self) -> String {
        format!("{QR_PREFIX}{}{}", crate::hex::encode(&self.local), crate::hex::encode(&self.remote))
    }

    /// Checks a payload scanned from the contact's screen: it must show their
    /// fingerprint first and ours second. `Ok(false)` means the numbers
    /// differ: do not mark the contact verified.
    pub fn matches_scanned(&self, payload: &str) -> Result<bool, CryptoError> {
        let hex = payload.strip_prefix(QR_PREFIX).ok_or(CryptoError::BadSafetyPayload)?;
        let bytes = crate::hex::decode(hex).ok_or(CryptoError::BadSafetyPayload)?;
        if bytes.len() != 64 {
            return Err(CryptoError::BadSafetyPayload);
        }
        use subtle::ConstantTimeEq;
        let theirs_ok = bytes[..32].ct_eq(&self.remote);
        let ours_ok = bytes[32..].ct_eq(&self.local);
        Ok(bool::from(theirs_ok & ours_ok))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{IdentityKeyPair, ProfileKind};
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn both_sides_see_the_same_number_and_qr_cross_checks() {
        let mut rng = StdRng::seed_from_u64(30);
        let a = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng).public();
        let b = IdentityKeyPair::generate(ProfileKind::Business, &mut rng).public();
        let ab = SafetyNumber::new(&a, &b);
        let ba = SafetyNumber::new(&b, &a);
        assert_eq!(ab.digits(), ba.digits());
        assert_eq!(ab.digits().len(), 60);
        assert!(ab.digits().bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(ab.display().len(), 60 + 11);
        assert!(ab.matches_scanned(&ba.qr_payload()).unwrap());
        // Scanning your own screen does not verify anything.
        assert!(!ab.matches_scanned(&ab.qr_payload()).unwrap());
        assert!(ab.matches_scanned("nonsense").is_err());
    }

    #[test]
    fn a_different_key_changes_the_number() {
        let mut rng = StdRng::seed_from_u64(31);
        let a = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng).public();
        let b = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng).public();
        let m = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng).public();
        assert_ne!(SafetyNumber::new(&a, &b).digits(), SafetyNumber::new(&a, &m).digits());
        assert!(!SafetyNumber::new(&a, &b).matches_scanned(&SafetyNumber::new(&m, &a).qr_payload()).unwrap());
    }

    #[test]
    fn stable_across_versions() {
        // Pinned: a change here breaks every verified contact.
        let a = IdentityKeyPair::from_secrets(ProfileKind::Personal, &[1; 32], &[2; 32]).public();
        let b = IdentityKeyPair::from_secrets(ProfileKind::Business, &[3; 32], &[4; 32]).public();
        let number = SafetyNumber::new(&a, &b).digits();
        assert_eq!(number, PINNED);
    }

    const PINNED: &str = "009010491962732402879944303103499938715931767184292509278112";
}
