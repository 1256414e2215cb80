//! `/kabar/prekey/1`: a profile hands out one-time prekeys online, and the
//! signed prekey schedule. Specified in docs/protocol.md §9.4.
//!
//! A requester sends one byte, [`REQUEST_V1`]; the profile answers with its
//! public identity, its current signed prekey and, if its budgets and supply
//! allow, one one-time prekey that it never hands out again
//! ([`PrekeyResponse`]). Without a one-time prekey the requester falls back
//! to X3DH with the signed prekey alone, as Signal does with its last-resort
//! key.

use kabar_crypto::identity::IDENTITY_PUBLIC_LEN;
use kabar_crypto::{IdentityPublic, OneTimePrekeyPublic, SignedPrekeyPublic};

use crate::budget::{Bucket, BucketMap};

/// Protocol name.
pub const PROTOCOL: &str = "/kabar/prekey/1";
/// The only valid request: one byte.
pub const REQUEST_V1: u8 = 0x01;
/// Longest response: identity, signed prekey, flag, one-time prekey.
pub const MAX_RESPONSE_LEN: usize = IDENTITY_PUBLIC_LEN + SPK_LEN + 1 + OPK_LEN;
const SPK_LEN: usize = 4 + 8 + 32 + 64;
const OPK_LEN: usize = 4 + 32;

/// A signed prekey is current for this long (seconds), then a new one
/// replaces it: 7 days.
pub const SIGNED_PREKEY_PERIOD_S: u64 = 7 * 86_400;
/// A replaced signed prekey is kept this long after its successor became
/// current (seconds), so session starts made with it (cards shared before,
/// prekey messages waiting in a mailbox) still open: 28 days.
pub const SIGNED_PREKEY_GRACE_S: u64 = 28 * 86_400;
/// How often the schedule is checked (milliseconds).
pub const MAINTENANCE_EVERY_MS: u64 = 3_600_000;
/// The supply is refilled to this many one-time prekeys that can be handed
/// out…
pub const ONE_TIME_PREKEY_TARGET: u32 = 100;
/// …whenever it falls below this many.
pub const ONE_TIME_PREKEY_LOW: u64 = 50;
/// Handed-out one-time prekeys kept for prekey messages not arrived yet; the
/// oldest beyond this are deleted (a session start that uses one then fails
/// as `unknown_prekey`).
pub const MAX_ISSUED_ONE_TIME_PREKEYS: u32 = 2_000;
/// The first messages to a contact with no session wait, unencrypted, at
/// most this long (milliseconds) for its prekeys, so the session start can
/// use a one-time prekey (`EngineConfig::prekey_wait_ms`).
pub const PREKEY_WAIT_MS: u64 = 3_000;
/// A contact without a session is asked for prekeys at most this often
/// (milliseconds).
pub const FETCH_EVERY_MS: u64 = 10 * 60_000;

/// One requester gets a one-time prekey at most once per 10 minutes, with a
/// burst of 3 (tokens per second, burst).
pub const PER_REQUESTER: (f64, f64) = (1.0 / 600.0, 3.0);
/// A profile hands out at most 120 one-time prekeys an hour to peers that
/// are not its contacts (strangers can make identities at will, so this is
/// the only bound on them), with a burst of 40…
pub const PER_PROFILE_STRANGERS: (f64, f64) = (120.0 / 3_600.0, 40.0);
/// …and as many again to its contacts, in a budget of their own, so
/// strangers cannot take the contacts' share.
pub const PER_PROFILE_CONTACTS: (f64, f64) = (120.0 / 3_600.0, 40.0);

/// What `/kabar/prekey/1` answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrekeyResponse {
    /// The profile's public identity.
    pub identity: IdentityPublic,
    /// Its current signed prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// A one-time prekey handed out to this requester only, if any.
    pub one_time_prekey: Option<OneTimePrekeyPublic>,
}

/// Why a response did not decode or verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrekeyError {
    /// Wrong length or flag byte.
    #[error("malformed prekey response: {0}")]
    Malformed(&'static str),
    /// A signature did not verify.
    #[error("prekey response does not verify: {0}")]
    BadSignature(#[from] kabar_crypto::CryptoError),
}

impl PrekeyResponse {
    /// `identity (129) ‖ spk id (u32) ‖ created_at (u64) ‖ SPK (32) ‖
    /// signature (64) ‖ has_opk (0x00 | 0x01) [‖ opk id (u32) ‖ OPK (32)]`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAX_RESPONSE_LEN);
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.signed_prekey.id.to_be_bytes());
        out.extend_from_slice(&self.signed_prekey.created_at.to_be_bytes());
        out.extend_from_slice(&self.signed_prekey.public);
        out.extend_from_slice(&self.signed_prekey.signature);
        match &self.one_time_prekey {
            None => out.push(0),
            Some(opk) => {
                out.push(1);
                out.extend_from_slice(&opk.id.to_be_bytes());
                out.extend_from_slice(&opk.public);
            }
        }
        out
    }

    /// Parses and verifies a response: both signatures (identity and signed
    /// prekey) must verify. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, PrekeyError> {
        let base = IDENTITY_PUBLIC_LEN + SPK_LEN + 1;
        if bytes.len() != base && bytes.len() != base + OPK_LEN {
            return Err(PrekeyError::Malformed("length"));
        }
        let identity = IdentityPublic::from_bytes(&bytes[..IDENTITY_PUBLIC_LEN])
            .map_err(|_| PrekeyError::Malformed("identity"))?;
        let spk = &bytes[IDENTITY_PUBLIC_LEN..IDENTITY_PUBLIC_LEN + SPK_LEN];
        let array = |s: &[u8]| -> [u8; 32] {
            let mut a = [0u8; 32];
            a.copy_from_slice(s);
            a
        };
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&spk[44..108]);
        let signed_prekey = SignedPrekeyPublic {
            id: u32::from_be_bytes([spk[0], spk[1], spk[2], spk[3]]),
            created_at: u64::from_be_bytes([spk[4], spk[5], spk[6], spk[7], spk[8], spk[9], spk[10], spk[11]]),
            public: array(&spk[12..44]),
            signature,
        };
        let flag = bytes[base - 1];
        let one_time_prekey = match (flag, bytes.len() == base) {
            (0, true) => None,
            (1, false) => {
                let o = &bytes[base..];
                Some(OneTimePrekeyPublic { id: u32::from_be_bytes([o[0], o[1], o[2], o[3]]), public: array(&o[4..36]) })
            }
            _ => return Err(PrekeyError::Malformed("one-time prekey flag")),
        };
        let response = PrekeyResponse { identity, signed_prekey, one_time_prekey };
        kabar_crypto::PrekeyBundle {
            identity: response.identity,
            signed_prekey: response.signed_prekey,
            one_time_prekey: response.one_time_prekey,
        }
        .verify()?;
        Ok(response)
    }
}

/// The budgets of one profile's prekey service.
pub(crate) struct PrekeyBudgets {
    per_requester: BucketMap<[u8; 32]>,
    strangers: Bucket,
    contacts: Bucket,
}

impl PrekeyBudgets {
    pub(crate) fn new(now_ms: u64) -> Self {
        PrekeyBudgets {
            per_requester: BucketMap::new(4_096, PER_REQUESTER.0, PER_REQUESTER.1),
            strangers: Bucket::new(PER_PROFILE_STRANGERS.0, PER_PROFILE_STRANGERS.1, now_ms),
            contacts: Bucket::new(PER_PROFILE_CONTACTS.0, PER_PROFILE_CONTACTS.1, now_ms),
        }
    }

    /// True if `requester` (one of our contacts, or not) may have a
    /// one-time prekey now (spends a token of both its budgets only then).
    pub(crate) fn admit(&mut self, requester: &[u8; 32], is_contact: bool, now_ms: u64) -> bool {
        let profile = if is_contact { &mut self.contacts } else { &mut self.strangers };
        if !profile.has(now_ms) || !self.per_requester.get(requester, now_ms).take(now_ms) {
            return false;
        }
        profile.take(now_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kabar_crypto::{IdentityKeyPair, OneTimePrekey, ProfileKind, SignedPrekey};
    use rand::SeedableRng;

    fn response(with_opk: bool) -> PrekeyResponse {
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let id = IdentityKeyPair::generate(ProfileKind::Business, &mut rng);
        let spk = SignedPrekey::generate(&id, 7, 1_700_000_000, &mut rng);
        let opk = OneTimePrekey::generate_batch(40, 1, &mut rng).remove(0);
        PrekeyResponse {
            identity: id.public(),
            signed_prekey: spk.public(),
            one_time_prekey: with_opk.then(|| opk.public()),
        }
    }

    #[test]
    fn round_trips_with_and_without_a_one_time_prekey() {
        for with in [false, true] {
            let r = response(with);
            let bytes = r.encode();
            assert_eq!(bytes.len(), if with { MAX_RESPONSE_LEN } else { MAX_RESPONSE_LEN - OPK_LEN });
            assert_eq!(PrekeyResponse::decode(&bytes).unwrap(), r);
        }
    }

    #[test]
    fn malformed_or_forged_responses_are_refused() {
        let good = response(true).encode();
        assert!(PrekeyResponse::decode(&good[..good.len() - 1]).is_err());
        let mut extra = good.clone();
        extra.push(0);
        assert!(PrekeyResponse::decode(&extra).is_err());
        // Flag says none but the key is there; flag 2.
        let base = MAX_RESPONSE_LEN - OPK_LEN;
        let mut flag = good.clone();
        flag[base - 1] = 0;
        assert_eq!(PrekeyResponse::decode(&flag), Err(PrekeyError::Malformed("one-time prekey flag")));
        flag[base - 1] = 2;
        assert!(PrekeyResponse::decode(&flag).is_err());
        // A signed prekey that is not the one signed.
        let mut forged = good.clone();
        forged[IDENTITY_PUBLIC_LEN + 12] ^= 1;
        assert!(matches!(PrekeyResponse::decode(&forged), Err(PrekeyError::BadSignature(_))));
        for len in 0..good.len() {
            let _ = PrekeyResponse::decode(&good[..len]);
        }
    }

    #[test]
    fn budgets_bound_one_requester_and_the_profile() {
        let mut b = PrekeyBudgets::new(0);
        let one = [1u8; 32];
        // A burst of 3 for one requester, then one per 10 minutes.
        assert!((0..3).all(|_| b.admit(&one, false, 0)));
        assert!(!b.admit(&one, false, 0));
        assert!(b.admit(&one, false, 600_000));
        // Many strangers: the strangers' burst of 40 (4 spent above, +1
        // refilled over 10 minutes), then nothing more at once.
        let granted = (0..200u8).filter(|i| b.admit(&[*i; 32], false, 600_000)).count();
        assert!(granted <= 40, "granted {granted}");
        assert!(!b.admit(&[250; 32], false, 600_000));
        // Contacts still have their own share.
        assert!(b.admit(&[251; 32], true, 600_000));
    }
}
