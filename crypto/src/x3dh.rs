//! X3DH key agreement, as in Signal's specification (revision 1, 2016-11-04),
//! with Kabar's parameters:
//!
//! - curve X25519, hash SHA-256;
//! - `SK = HKDF-SHA256(salt = 32 zero bytes, ikm = 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 [‖ DH4], info = X3DH_INFO)`, 32 bytes;
//! - `AD = AD_PREFIX ‖ IK_A ‖ IK_B`, where each `IK` is the 129-byte
//!   [`IdentityPublic::to_bytes`] (kind ‖ Ed25519 key ‖ X25519 key ‖ signature),
//!   so AD binds both identities *and* both profile kinds;
//! - every DH result must be contributory (low-order points are rejected).

use rand_core::CryptoRng;
use serde::{Deserialize, Serialize};
use x25519_dalek::StaticSecret;
use zeroize::Zeroizing;

use crate::error::CryptoError;
use crate::identity::{IDENTITY_PUBLIC_LEN, IdentityKeyPair, IdentityPublic};
use crate::prekey::{OneTimePrekey, PrekeyBundle, SignedPrekey};
use crate::primitives::{KEY_LEN, hkdf_sha256, x25519, x25519_public};

/// HKDF info string of X3DH: names Kabar and the protocol version.
pub const X3DH_INFO: &[u8] = b"Kabar X3DH v2";

/// First bytes of the associated data, naming the protocol and version.
pub const AD_PREFIX: &[u8] = b"KABAR-AD-V2";

/// Length of the X3DH associated data.
pub const AD_LEN: usize = AD_PREFIX.len() + 2 * IDENTITY_PUBLIC_LEN;

/// What the initiator sends in front of its first messages so the responder
/// can run X3DH: the initiator's identity, its ephemeral ("base") key and the
/// ids of the responder prekeys it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrekeyHeader {
    /// The initiator's public identity (signed, checked by the responder).
    pub identity: IdentityPublic,
    /// The initiator's ephemeral X25519 key `EK_A`.
    pub base_key: [u8; KEY_LEN],
    /// Which signed prekey of the responder was used.
    pub signed_prekey_id: u32,
    /// Which one-time prekey of the responder was used, if any.
    pub one_time_prekey_id: Option<u32>,
}

/// The result of X3DH on either side.
pub struct X3dhOutput {
    /// The shared secret `SK`, the Double Ratchet's first root key.
    pub shared_secret: Zeroizing<[u8; KEY_LEN]>,
    /// The associated data `AD`, bound into every message of the session.
    pub associated_data: Vec<u8>,
}

/// Builds `AD_PREFIX ‖ IK_initiator ‖ IK_responder`.
pub fn associated_data(initiator: &IdentityPublic, responder: &IdentityPublic) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_LEN);
    ad.extend_from_slice(AD_PREFIX);
    ad.extend_from_slice(&initiator.to_bytes());
    ad.extend_from_slice(&responder.to_bytes());
    ad
}

fn derive_sk(dhs: &[&[u8; KEY_LEN]]) -> Result<Zeroizing<[u8; KEY_LEN]>, CryptoError> {
    let mut ikm = Zeroizing::new(Vec::with_capacity(KEY_LEN * (1 + dhs.len())));
    ikm.extend_from_slice(&[0xFF; KEY_LEN]);
    for dh in dhs {
        ikm.extend_from_slice(dh.as_slice());
    }
    let mut sk = Zeroizing::new([0u8; KEY_LEN]);
    hkdf_sha256(Some(&[0u8; KEY_LEN]), &ikm, X3DH_INFO, sk.as_mut())?;
    Ok(sk)
}

/// Initiator side: verifies `bundle`, generates an ephemeral key and derives
/// `SK` and `AD`. Returns the header to send and the responder's signed prekey
/// (the Double Ratchet's first remote ratchet key).
pub fn initiate<R: CryptoRng + ?Sized>(
    ours: &IdentityKeyPair,
    bundle: &PrekeyBundle,
    rng: &mut R,
) -> Result<(X3dhOutput, PrekeyHeader), CryptoError> {
    bundle.verify()?;
    let mut ek_bytes = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(ek_bytes.as_mut());
    let ek = StaticSecret::from(*ek_bytes);

    let spk = &bundle.signed_prekey.public;
    let dh1 = x25519(&ours.dh_static(), spk)?;
    let dh2 = x25519(&ek, &bundle.identity.dh)?;
    let dh3 = x25519(&ek, spk)?;
    let sk = match &bundle.one_time_prekey {
        Some(opk) => {
            let dh4 = x25519(&ek, &opk.public)?;
            derive_sk(&[&dh1, &dh2, &dh3, &dh4])?
        }
        None => derive_sk(&[&dh1, &dh2, &dh3])?,
    };
    let our_public = ours.public();
    let header = PrekeyHeader {
        identity: our_public,
        base_key: x25519_public(&ek),
        signed_prekey_id: bundle.signed_prekey.id,
        one_time_prekey_id: bundle.one_time_prekey.map(|opk| opk.id),
    };
    let output = X3dhOutput { shared_secret: sk, associated_data: associated_data(&our_public, &bundle.identity) };
    Ok((output, header))
}

/// Responder side: checks the initiator's identity signature and that the
/// prekeys supplied are the ones `header` names, then derives `SK` and `AD`.
/// The caller looks up `signed_prekey` and `one_time_prekey` by the ids in
/// `header` and deletes the one-time prekey once the first message decrypts.
pub fn respond(
    ours: &IdentityKeyPair,
    signed_prekey: &SignedPrekey,
    one_time_prekey: Option<&OneTimePrekey>,
    header: &PrekeyHeader,
) -> Result<X3dhOutput, CryptoError> {
    header.identity.verify()?;
    if signed_prekey.id() != header.signed_prekey_id {
        return Err(CryptoError::UnknownSignedPrekey(header.signed_prekey_id));
    }
    let supplied = one_time_prekey.map(OneTimePrekey::id);
    if supplied != header.one_time_prekey_id {
        return Err(CryptoError::OneTimePrekeyMismatch { expected: supplied, got: header.one_time_prekey_id });
    }
    let spk = signed_prekey.secret();
    let dh1 = x25519(&spk, &header.identity.dh)?;
    let dh2 = x25519(&ours.dh_static(), &header.base_key)?;
    let dh3 = x25519(&spk, &header.base_key)?;
    let sk = match one_time_prekey {
        Some(opk) => {
            let dh4 = x25519(&opk.secret(), &header.base_key)?;
            derive_sk(&[&dh1, &dh2, &dh3, &dh4])?
        }
        None => derive_sk(&[&dh1, &dh2, &dh3])?,
    };
    Ok(X3dhOutput { shared_secret: sk, associated_data: associated_data(&header.identity, &ours.public()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::ProfileKind;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    struct Bob {
        id: IdentityKeyPair,
        spk: SignedPrekey,
        opk: OneTimePrekey,
    }

    fn bob(rng: &mut StdRng, kind: ProfileKind) -> Bob {
        let id = IdentityKeyPair::generate(kind, rng);
        let spk = SignedPrekey::generate(&id, 1, 0, rng);
        let opk = OneTimePrekey::generate_batch(5, 1, rng).remove(0);
        Bob { id, spk, opk }
    }

    fn bundle(b: &Bob, with_opk: bool) -> PrekeyBundle {
        PrekeyBundle {
            identity: b.id.public(),
            signed_prekey: b.spk.public(),
            one_time_prekey: with_opk.then(|| b.opk.public()),
        }
    }

    #[test]
    fn both_sides_agree_with_and_without_one_time_prekey() {
        let mut rng = StdRng::seed_from_u64(20);
        let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let b = bob(&mut rng, ProfileKind::Business);
        for with_opk in [true, false] {
            let (a_out, header) = initiate(&alice, &bundle(&b, with_opk), &mut rng).unwrap();
            let b_out = respond(&b.id, &b.spk, with_opk.then_some(&b.opk), &header).unwrap();
            assert_eq!(*a_out.shared_secret, *b_out.shared_secret);
            assert_eq!(a_out.associated_data, b_out.associated_data);
            assert_eq!(a_out.associated_data.len(), AD_LEN);
        }
    }

    #[test]
    fn wrong_prekeys_or_identity_do_not_agree() {
        let mut rng = StdRng::seed_from_u64(21);
        let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let b = bob(&mut rng, ProfileKind::Personal);
        let (_, header) = initiate(&alice, &bundle(&b, true), &mut rng).unwrap();
        // Missing the one-time prekey the header names.
        assert!(matches!(respond(&b.id, &b.spk, None, &header), Err(CryptoError::OneTimePrekeyMismatch { .. })));
        // A forged initiator identity.
        let mut forged = header;
        forged.identity.dh[0] ^= 1;
        assert!(respond(&b.id, &b.spk, Some(&b.opk), &forged).is_err());
        // An initiator identity whose signature does not verify is refused
        // before any key is derived.
        let mut unsigned = header;
        unsigned.identity.dh_signature[0] ^= 1;
        assert_eq!(
            respond(&b.id, &b.spk, Some(&b.opk), &unsigned).err(),
            Some(CryptoError::BadSignature("identity-key"))
        );
    }

    #[test]
    fn low_order_prekey_is_rejected() {
        let mut rng = StdRng::seed_from_u64(22);
        let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let b = bob(&mut rng, ProfileKind::Personal);
        let mut bad = bundle(&b, true);
        bad.one_time_prekey = Some(crate::prekey::OneTimePrekeyPublic { id: 5, public: [0u8; 32] });
        assert_eq!(initiate(&alice, &bad, &mut rng).err(), Some(CryptoError::NonContributoryKey));

        let (_, mut header) = initiate(&alice, &bundle(&b, false), &mut rng).unwrap();
        header.base_key = [0u8; 32];
        assert_eq!(respond(&b.id, &b.spk, None, &header).err(), Some(CryptoError::NonContributoryKey));
    }
}
