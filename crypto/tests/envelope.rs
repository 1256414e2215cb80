//! The envelope decoder against hostile bytes: random input, mutated valid
//! envelopes, and the length bound. (The cargo-fuzz target in `crypto/fuzz`
//! runs the same property with coverage guidance.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kabar_crypto::envelope::{MAX_CIPHERTEXT, MAX_ENVELOPE_LEN, MAX_PLAINTEXT, MIN_CIPHERTEXT};
use kabar_crypto::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

/// A prekey envelope (with one-time prekey) and an ordinary one.
fn samples() -> Vec<Vec<u8>> {
    static SAMPLES: std::sync::OnceLock<Vec<Vec<u8>>> = std::sync::OnceLock::new();
    SAMPLES.get_or_init(make_samples).clone()
}

/// Bob (business) with a signed and a one-time prekey, and Alice's session
/// started from his bundle.
fn started(seed: u64) -> (StdRng, IdentityKeyPair, SignedPrekey, OneTimePrekey, Session) {
    let mut rng = StdRng::seed_from_u64(seed);
    let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let bob = IdentityKeyPair::generate(ProfileKind::Business, &mut rng);
    let spk = SignedPrekey::generate(&bob, 9, 1, &mut rng);
    let opk = OneTimePrekey::generate_batch(3, 1, &mut rng).remove(0);
    let bundle =
        PrekeyBundle { identity: bob.public(), signed_prekey: spk.public(), one_time_prekey: Some(opk.public()) };
    let a = Session::initiate(&alice, &bundle, &mut rng).unwrap();
    (rng, bob, spk, opk, a)
}

fn make_samples() -> Vec<Vec<u8>> {
    let (mut rng, bob, spk, opk, mut a) = started(42);
    let first = a.encrypt(b"first", &mut rng).unwrap();
    let (mut b, _) = Session::respond(&bob, &spk, Some(&opk), &first).unwrap();
    let reply = b.encrypt(&[7u8; 300], &mut rng).unwrap();
    vec![first.encode(), reply.encode()]
}

#[test]
fn valid_envelopes_round_trip() {
    for bytes in samples() {
        let env = Envelope::decode(&bytes).unwrap();
        assert_eq!(env.encode(), bytes);
        assert_eq!(env.encoded_len(), bytes.len());
    }
}

#[test]
fn every_truncation_and_extension_is_rejected() {
    for bytes in samples() {
        for len in 0..bytes.len() {
            assert!(Envelope::decode(&bytes[..len]).is_err(), "truncated to {len}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(Envelope::decode(&longer), Err(DecodeError::TrailingBytes(1)));
    }
}

#[test]
fn oversized_input_is_rejected_before_parsing() {
    let big = vec![1u8; MAX_ENVELOPE_LEN + 1];
    assert_eq!(Envelope::decode(&big), Err(DecodeError::TooLong { len: MAX_ENVELOPE_LEN + 1, max: MAX_ENVELOPE_LEN }));
}

#[test]
fn the_largest_message_fits_the_bound() {
    let (mut rng, _, _, _, mut a) = started(43);
    let env = a.encrypt(&vec![0xAB; MAX_PLAINTEXT], &mut rng).unwrap();
    assert_eq!(env.ciphertext.len(), MAX_CIPHERTEXT);
    assert_eq!(env.encode().len(), MAX_ENVELOPE_LEN);
    assert!(Envelope::decode(&env.encode()).is_ok());
    assert!(matches!(a.encrypt(&vec![0; MAX_PLAINTEXT + 1], &mut rng), Err(CryptoError::PlaintextTooLong { .. })));
}

#[test]
fn ciphertext_length_out_of_range_is_rejected() {
    let bytes = samples().remove(1);
    let env = Envelope::decode(&bytes).unwrap();
    let mut short = env.clone();
    short.ciphertext.truncate(MIN_CIPHERTEXT - 1);
    assert_eq!(Envelope::decode(&short.encode()), Err(DecodeError::BadCiphertextLength(MIN_CIPHERTEXT - 1)));
    // A length field claiming 4 GiB with no bytes behind it.
    let mut lying = bytes[..2 + RatchetHeader::LEN].to_vec();
    lying.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(Envelope::decode(&lying), Err(DecodeError::BadCiphertextLength(_))));
}

#[test]
fn unknown_version_and_type_are_rejected() {
    let mut bytes = samples().remove(1);
    // Version 1 (the previous protocol) and a future version 3 are both
    // refused with an error that names the version.
    for version in [0u8, 1, 3, 0xff] {
        bytes[0] = version;
        assert_eq!(Envelope::decode(&bytes), Err(DecodeError::UnsupportedVersion(version)));
    }
    bytes[0] = 2;
    bytes[1] = 9;
    assert_eq!(Envelope::decode(&bytes), Err(DecodeError::UnknownType(9)));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(env) = Envelope::decode(&bytes) {
            prop_assert_eq!(env.encode(), bytes);
        }
    }

    #[test]
    fn random_bytes_behind_a_valid_prefix_never_panic(kind in 1u8..=2, tail in prop::collection::vec(any::<u8>(), 0..400)) {
        let mut bytes = vec![2u8, kind];
        bytes.extend_from_slice(&tail);
        if let Ok(env) = Envelope::decode(&bytes) {
            prop_assert_eq!(env.encode(), bytes);
        }
    }

    #[test]
    fn mutated_envelopes_never_panic(
        which in 0usize..2,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = samples().swap_remove(which);
        for (at, value) in edits {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            let len = cut.index(bytes.len());
            bytes.truncate(len);
        }
        if let Ok(env) = Envelope::decode(&bytes) {
            prop_assert_eq!(env.encode(), bytes);
        }
    }
}

/// A ciphertext length must be a padding bucket plus the 16-byte tag: 80
/// (64 + 16) and 88 (72 + 16) decode, 81 and 87 do not.
#[test]
fn ciphertext_lengths_off_the_buckets_are_refused() {
    let bytes = samples().remove(1);
    let env = Envelope::decode(&bytes).unwrap();
    for (len, ok) in [(80usize, true), (81, false), (87, false), (88, true), (MAX_CIPHERTEXT, true)] {
        let mut e = env.clone();
        e.ciphertext.resize(len, 0);
        let decoded = Envelope::decode(&e.encode());
        assert_eq!(decoded.is_ok(), ok, "length {len}: {decoded:?}");
        if !ok {
            assert_eq!(decoded, Err(DecodeError::BadCiphertextLength(len)));
        }
    }
}
