//! Two-party sessions end to end: X3DH, the Double Ratchet and the envelope,
//! under loss, reordering, duplication, tampering and key compromise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kabar_crypto::ratchet::{MAX_SKIP_PER_CHAIN, MAX_SKIPPED_TOTAL};
use kabar_crypto::*;
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

struct Responder {
    identity: IdentityKeyPair,
    spk: SignedPrekey,
    opk: OneTimePrekey,
}

impl Responder {
    fn new(kind: ProfileKind, rng: &mut StdRng) -> Self {
        let identity = IdentityKeyPair::generate(kind, rng);
        let spk = SignedPrekey::generate(&identity, 1, 1_700_000_000, rng);
        let opk = OneTimePrekey::generate_batch(1, 1, rng).remove(0);
        Responder { identity, spk, opk }
    }

    fn bundle(&self) -> PrekeyBundle {
        PrekeyBundle {
            identity: self.identity.public(),
            signed_prekey: self.spk.public(),
            one_time_prekey: Some(self.opk.public()),
        }
    }

    fn accept(&self, envelope: &Envelope) -> Result<(Session, Vec<u8>), CryptoError> {
        Session::respond(&self.identity, &self.spk, Some(&self.opk), envelope)
    }
}

/// Alice (personal) and Bob (personal) with an established session: Alice
/// has sent "hello" and Bob has read it.
fn pair(seed: u64) -> (Session, Session, StdRng) {
    let mut rng = StdRng::seed_from_u64(seed);
    let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let bob = Responder::new(ProfileKind::Personal, &mut rng);
    let mut a = Session::initiate(&alice, &bob.bundle(), &mut rng).unwrap();
    let first = a.encrypt(b"hello", &mut rng).unwrap();
    let (b, text) = bob.accept(&first).unwrap();
    assert_eq!(text, b"hello");
    (a, b, rng)
}

/// The whole state: the snapshot and the skipped keys kept in memory.
fn state_of(session: &Session) -> String {
    serde_json::to_string(&(session.snapshot(), session.skipped())).unwrap()
}

fn wire(envelope: &Envelope) -> Envelope {
    Envelope::decode(&envelope.encode()).unwrap()
}

#[test]
fn conversation_both_ways_through_the_wire_format() {
    let (mut a, mut b, mut rng) = pair(1);
    assert!(a.awaiting_reply());
    for round in 0..20u32 {
        let burst = round % 3 + 1;
        for i in 0..burst {
            let text = format!("a{round}-{i}");
            let env = wire(&a.encrypt(text.as_bytes(), &mut rng).unwrap());
            assert_eq!(b.decrypt(&env).unwrap(), text.as_bytes());
        }
        let text = format!("b{round}");
        let env = wire(&b.encrypt(text.as_bytes(), &mut rng).unwrap());
        assert_eq!(a.decrypt(&env).unwrap(), text.as_bytes());
        assert!(!a.awaiting_reply());
    }
}

#[test]
fn prekey_header_stops_after_the_first_reply() {
    let (mut a, mut b, mut rng) = pair(2);
    assert!(a.encrypt(b"x", &mut rng).unwrap().prekey.is_some());
    let reply = b.encrypt(b"y", &mut rng).unwrap();
    assert!(reply.prekey.is_none());
    a.decrypt(&reply).unwrap();
    assert!(a.encrypt(b"z", &mut rng).unwrap().prekey.is_none());
}

#[test]
fn retransmitted_first_message_belongs_to_the_existing_session() {
    let mut rng = StdRng::seed_from_u64(3);
    let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let bob = Responder::new(ProfileKind::Personal, &mut rng);
    let mut a = Session::initiate(&alice, &bob.bundle(), &mut rng).unwrap();
    let first = a.encrypt(b"one", &mut rng).unwrap();
    let second = a.encrypt(b"two", &mut rng).unwrap();
    let (mut b, _) = bob.accept(&first).unwrap();
    let header = second.prekey.unwrap();
    assert!(b.is_same_prekey_session(&header));
    assert_eq!(b.decrypt(&second).unwrap(), b"two");
    assert_eq!(b.decrypt(&first), Err(CryptoError::MessageKeyGone));
}

#[test]
fn out_of_order_and_lost_messages() {
    let (mut a, mut b, mut rng) = pair(4);
    let envs: Vec<Envelope> = (0..10).map(|i| a.encrypt(&[i], &mut rng).unwrap()).collect();
    for i in [3usize, 0, 9, 1, 5] {
        assert_eq!(b.decrypt(&envs[i]).unwrap(), [i as u8]);
    }
    assert_eq!(b.skipped_keys(), 5); // 2, 4, 6, 7 and 8
    // A DH ratchet step while messages of the old chain are still missing.
    let reply = b.encrypt(b"r", &mut rng).unwrap();
    a.decrypt(&reply).unwrap();
    let fresh = a.encrypt(b"new chain", &mut rng).unwrap();
    assert_eq!(b.decrypt(&fresh).unwrap(), b"new chain");
    for i in [8usize, 2, 7, 4, 6] {
        assert_eq!(b.decrypt(&envs[i]).unwrap(), [i as u8]);
    }
    assert_eq!(b.skipped_keys(), 0);
}

#[test]
fn tampered_ciphertext_is_rejected_and_changes_nothing() {
    let (mut a, mut b, mut rng) = pair(5);
    let env = a.encrypt(b"pay 10 EUR", &mut rng).unwrap();
    for position in [0, env.ciphertext.len() / 2, env.ciphertext.len() - 1] {
        let mut bad = env.clone();
        bad.ciphertext[position] ^= 0x01;
        let before = state_of(&b);
        assert_eq!(b.decrypt(&bad), Err(CryptoError::AuthenticationFailed));
        assert_eq!(state_of(&b), before);
    }
    assert_eq!(b.decrypt(&env).unwrap(), b"pay 10 EUR");
}

#[test]
fn tampered_header_is_rejected_and_changes_nothing() {
    let (mut a, mut b, mut rng) = pair(6);
    let _skipped = a.encrypt(b"0", &mut rng).unwrap();
    let env = a.encrypt(b"1", &mut rng).unwrap();
    let mut variants = Vec::new();
    let mut v = env.clone();
    v.header.counter ^= 1;
    variants.push(v);
    let mut v = env.clone();
    v.header.previous_chain_length += 1;
    variants.push(v);
    let mut v = env.clone();
    v.header.ratchet_key[5] ^= 0x40;
    variants.push(v);
    for bad in variants {
        let before = state_of(&b);
        assert!(b.decrypt(&bad).is_err());
        assert_eq!(state_of(&b), before, "a failed decrypt must not change state");
    }
    assert_eq!(b.decrypt(&env).unwrap(), b"1");
}

#[test]
fn replays_are_rejected_as_duplicates() {
    let (mut a, mut b, mut rng) = pair(7);
    let m0 = a.encrypt(b"m0", &mut rng).unwrap();
    let m1 = a.encrypt(b"m1", &mut rng).unwrap();
    let m2 = a.encrypt(b"m2", &mut rng).unwrap();
    b.decrypt(&m0).unwrap();
    b.decrypt(&m2).unwrap();
    // In order, out of order (from the skipped store), and after it was used.
    assert_eq!(b.decrypt(&m0), Err(CryptoError::MessageKeyGone));
    assert_eq!(b.decrypt(&m2), Err(CryptoError::MessageKeyGone));
    b.decrypt(&m1).unwrap();
    assert_eq!(b.decrypt(&m1), Err(CryptoError::MessageKeyGone));
    // From a finished chain, after two ratchet steps.
    let r = b.encrypt(b"r", &mut rng).unwrap();
    a.decrypt(&r).unwrap();
    let n = a.encrypt(b"n", &mut rng).unwrap();
    b.decrypt(&n).unwrap();
    let before = state_of(&b);
    assert_eq!(b.decrypt(&m1), Err(CryptoError::MessageKeyGone));
    assert_eq!(state_of(&b), before);
}

#[test]
fn skip_bound_per_chain_is_enforced() {
    let (mut a, mut b, mut rng) = pair(8);
    let limit = MAX_SKIP_PER_CHAIN as usize;
    let envs: Vec<Envelope> = (0..limit + 2).map(|_| a.encrypt(b"x", &mut rng).unwrap()).collect();
    let before = state_of(&b);
    assert_eq!(
        b.decrypt(&envs[limit + 1]),
        Err(CryptoError::TooManySkipped { requested: limit as u64 + 1, limit: limit as u64 })
    );
    assert_eq!(state_of(&b), before);
    // Exactly at the bound is fine.
    b.decrypt(&envs[limit]).unwrap();
    assert_eq!(b.skipped_keys(), limit);
}

#[test]
fn skipped_key_store_is_bounded_in_total_and_evicts_oldest() {
    let (mut a, mut b, mut rng) = pair(9);
    let per_chain = MAX_SKIP_PER_CHAIN as usize;
    let mut oldest = None;
    // Three chains, each leaving `per_chain` keys behind: 3,000 > 2,000.
    for round in 0..3 {
        let envs: Vec<Envelope> = (0..=per_chain).map(|_| a.encrypt(b"x", &mut rng).unwrap()).collect();
        b.decrypt(&envs[per_chain]).unwrap();
        if round == 0 {
            oldest = Some(envs[0].clone());
        }
        let r = b.encrypt(b"r", &mut rng).unwrap();
        a.decrypt(&r).unwrap();
        assert!(b.skipped_keys() <= MAX_SKIPPED_TOTAL);
    }
    assert_eq!(b.skipped_keys(), MAX_SKIPPED_TOTAL);
    // The oldest key was evicted: the first chain's first message is gone.
    assert!(b.decrypt(&oldest.unwrap()).is_err());
}

#[test]
fn forward_secrecy_a_later_snapshot_cannot_read_earlier_messages() {
    let (mut a, mut b, mut rng) = pair(10);
    let captured: Vec<Envelope> = (0..3).map(|i| a.encrypt(&[i], &mut rng).unwrap()).collect();
    for env in &captured {
        b.decrypt(env).unwrap();
    }
    // The attacker steals Bob's state after he read the messages.
    let mut stolen = Session::from_snapshot(b.snapshot()).unwrap();
    for env in &captured {
        assert_eq!(stolen.decrypt(env), Err(CryptoError::MessageKeyGone));
    }
}

#[test]
fn forward_secrecy_an_earlier_snapshot_cannot_read_after_ratchet_steps() {
    let (mut a, mut b, mut rng) = pair(11);
    let old_bob = b.snapshot();
    // Two ratchet steps on both sides.
    for _ in 0..2 {
        let r = b.encrypt(b"r", &mut rng).unwrap();
        a.decrypt(&r).unwrap();
        let m = a.encrypt(b"m", &mut rng).unwrap();
        b.decrypt(&m).unwrap();
    }
    let later = a.encrypt(b"secret", &mut rng).unwrap();
    let mut old = Session::from_snapshot(old_bob).unwrap();
    assert!(old.decrypt(&later).is_err());
    assert_eq!(b.decrypt(&later).unwrap(), b"secret");
}

#[test]
fn post_compromise_a_stolen_state_is_locked_out_after_one_round_trip() {
    let (mut a, mut b, mut rng) = pair(12);
    let mut attacker = Session::from_snapshot(b.snapshot()).unwrap();
    // While Alice stays on the compromised chain the attacker reads along.
    let m = a.encrypt(b"still exposed", &mut rng).unwrap();
    assert_eq!(attacker.decrypt(&m).unwrap(), b"still exposed");
    b.decrypt(&m).unwrap();
    // One round trip: Bob replies with a fresh ratchet key, Alice answers.
    let r = b.encrypt(b"reply", &mut rng).unwrap();
    a.decrypt(&r).unwrap();
    let healed = a.encrypt(b"healed", &mut rng).unwrap();
    assert_eq!(b.decrypt(&healed).unwrap(), b"healed");
    assert!(attacker.decrypt(&healed).is_err());
}

#[test]
fn a_message_for_the_personal_identity_is_rejected_by_the_business_identity() {
    let mut rng = StdRng::seed_from_u64(13);
    let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let personal = Responder::new(ProfileKind::Personal, &mut rng);
    let business = Responder::new(ProfileKind::Business, &mut rng);
    let mut a = Session::initiate(&alice, &personal.bundle(), &mut rng).unwrap();
    let env = a.encrypt(b"for personal", &mut rng).unwrap();
    assert!(business.accept(&env).is_err());
    // Even with the same keys, the profile kind alone separates them.
    let same_keys_business = IdentityKeyPair::from_secrets(
        ProfileKind::Business,
        &personal.identity.signing_seed(),
        &same_dh_secret_for_test(&personal.identity),
    );
    assert!(Session::respond(&same_keys_business, &personal.spk, Some(&personal.opk), &env).is_err());
    personal.accept(&env).unwrap();
}

/// Recovers the X25519 identity secret through the serde snapshot (tests
/// only: production code never exports it).
fn same_dh_secret_for_test(identity: &IdentityKeyPair) -> [u8; 32] {
    let value = serde_json::to_value(identity).unwrap();
    let bytes: Vec<u8> = serde_json::from_value(value["dh_secret"].clone()).unwrap();
    bytes.try_into().unwrap()
}

#[test]
fn a_bundle_with_a_bad_signature_cannot_start_a_session() {
    let mut rng = StdRng::seed_from_u64(14);
    let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let bob = Responder::new(ProfileKind::Personal, &mut rng);
    let mut bundle = bob.bundle();
    bundle.signed_prekey.signature[10] ^= 1;
    assert!(matches!(Session::initiate(&alice, &bundle, &mut rng), Err(CryptoError::BadSignature(_))));
    let mut bundle = bob.bundle();
    bundle.identity.dh_signature[10] ^= 1;
    assert!(matches!(Session::initiate(&alice, &bundle, &mut rng), Err(CryptoError::BadSignature(_))));
}

#[test]
fn a_prekey_message_with_a_forged_sender_identity_is_rejected() {
    let mut rng = StdRng::seed_from_u64(15);
    let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let mallory = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let bob = Responder::new(ProfileKind::Personal, &mut rng);
    let mut a = Session::initiate(&alice, &bob.bundle(), &mut rng).unwrap();
    let mut env = a.encrypt(b"hi", &mut rng).unwrap();
    let mut header = env.prekey.unwrap();
    header.identity = mallory.public();
    env.prekey = Some(header);
    assert!(bob.accept(&env).is_err());
}

#[test]
fn snapshot_survives_serialization_and_the_conversation_continues() {
    let (mut a, b, mut rng) = pair(16);
    let json = serde_json::to_string(&b.snapshot()).unwrap();
    let mut b = Session::from_snapshot(serde_json::from_str(&json).unwrap()).unwrap();
    let m = a.encrypt(b"after restart", &mut rng).unwrap();
    assert_eq!(b.decrypt(&m).unwrap(), b"after restart");
    let r = b.encrypt(b"back", &mut rng).unwrap();
    assert_eq!(a.decrypt(&r).unwrap(), b"back");
}

#[test]
fn debug_output_shows_no_keys() {
    let (a, _, _) = pair(17);
    let snapshot = serde_json::to_value(a.snapshot()).unwrap();
    let root: Vec<u8> = serde_json::from_value(snapshot["root_key"].clone()).unwrap();
    let shown = format!("{a:?}");
    assert!(shown.contains("<redacted>"));
    assert!(!shown.contains(&kabar_crypto::hex::encode(&root)[..8]));
    assert!(!shown.contains(&format!("{:?}", &root[..4])));
}

#[test]
fn message_ids_are_stable_and_distinct() {
    let (mut a, _, mut rng) = pair(18);
    let m1 = a.encrypt(b"1", &mut rng).unwrap();
    let m2 = a.encrypt(b"1", &mut rng).unwrap();
    assert_ne!(m1.message_id(), m2.message_id());
    assert_eq!(m1.message_id(), wire(&m1).message_id());
}

// ---- Random interleavings -------------------------------------------------

#[derive(Debug, Clone)]
enum Op {
    /// Party 0 (Alice) or 1 (Bob) sends a message.
    Send(usize),
    /// Deliver the in-flight message picked by the index to its recipient.
    Deliver(usize, prop::sample::Index),
    /// Deliver a copy but keep the original in flight (duplication).
    Duplicate(usize, prop::sample::Index),
    /// Lose an in-flight message.
    Drop(usize, prop::sample::Index),
    /// Deliver a tampered copy; it must fail and change nothing.
    Tamper(usize, prop::sample::Index),
    /// Persist and restore a party's session (a restart).
    Restart(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..2usize).prop_map(Op::Send),
        6 => (0..2usize, any::<prop::sample::Index>()).prop_map(|(d, i)| Op::Deliver(d, i)),
        1 => (0..2usize, any::<prop::sample::Index>()).prop_map(|(d, i)| Op::Duplicate(d, i)),
        1 => (0..2usize, any::<prop::sample::Index>()).prop_map(|(d, i)| Op::Drop(d, i)),
        1 => (0..2usize, any::<prop::sample::Index>()).prop_map(|(d, i)| Op::Tamper(d, i)),
        1 => (0..2usize).prop_map(Op::Restart),
    ]
}

/// A replay must fail: as a duplicate, or — for a chain older than the
/// remembered ones — as an authentication failure. Never as a second success.
fn is_replay_error(result: Result<Vec<u8>, CryptoError>) -> bool {
    matches!(result, Err(CryptoError::MessageKeyGone | CryptoError::AuthenticationFailed))
}

struct InFlight {
    bytes: Vec<u8>,
    text: Vec<u8>,
    id: MessageId,
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_deliver_every_message_exactly_once(seed in any::<u64>(), ops in prop::collection::vec(op(), 1..600)) {
        let mut rng = StdRng::seed_from_u64(seed);
        let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let bob = Responder::new(ProfileKind::Business, &mut rng);
        let mut sessions: [Option<Session>; 2] = [Some(Session::initiate(&alice, &bob.bundle(), &mut rng).unwrap()), None];
        // flight[d]: messages sent by party d, not yet lost or delivered.
        let mut flight: [Vec<InFlight>; 2] = [Vec::new(), Vec::new()];
        let mut delivered: [std::collections::HashSet<MessageId>; 2] = Default::default();
        let mut sent = 0u32;

        let deliver = |sessions: &mut [Option<Session>; 2], from: usize, msg: &InFlight| -> Result<Vec<u8>, CryptoError> {
            let env = Envelope::decode(&msg.bytes).unwrap();
            let to = 1 - from;
            match (&mut sessions[to], &env.prekey) {
                (Some(s), Some(h)) if to == 1 && !s.is_same_prekey_session(h) => panic!("unexpected new session"),
                (Some(s), _) => s.decrypt(&env),
                (None, Some(_)) => {
                    let (s, text) = bob.accept(&env)?;
                    sessions[to] = Some(s);
                    Ok(text)
                }
                (None, None) => panic!("a message reached a party without a session"),
            }
        };

        for op in ops {
            match op {
                Op::Send(from) => {
                    if let Some(s) = &mut sessions[from] {
                        let text = format!("{from}:{sent}").into_bytes();
                        sent += 1;
                        let env = s.encrypt(&text, &mut rng).unwrap();
                        flight[from].push(InFlight { bytes: env.encode(), text, id: env.message_id() });
                    }
                }
                Op::Deliver(from, idx) | Op::Duplicate(from, idx) | Op::Tamper(from, idx) if !flight[from].is_empty() => {
                    let i = idx.index(flight[from].len());
                    match op {
                        Op::Deliver(..) => {
                            let msg = flight[from].remove(i);
                            let text = deliver(&mut sessions, from, &msg);
                            prop_assert_eq!(text.as_deref(), Ok(msg.text.as_slice()));
                            prop_assert!(delivered[from].insert(msg.id));
                            // Delivering it again is a duplicate, and harmless.
                            prop_assert!(is_replay_error(deliver(&mut sessions, from, &msg)));
                        }
                        Op::Duplicate(..) => {
                            let msg = &flight[from][i];
                            let copy = InFlight { bytes: msg.bytes.clone(), text: msg.text.clone(), id: msg.id };
                            let text = deliver(&mut sessions, from, &copy);
                            prop_assert_eq!(text.as_deref(), Ok(copy.text.as_slice()));
                            prop_assert!(delivered[from].insert(copy.id));
                            // The original stays in flight and will be a duplicate.
                            let original = flight[from].remove(i);
                            prop_assert!(is_replay_error(deliver(&mut sessions, from, &original)));
                        }
                        _ => {
                            let msg = &flight[from][i];
                            let mut bytes = msg.bytes.clone();
                            let last = bytes.len() - 1;
                            bytes[last - (sent as usize % 40)] ^= 0x20;
                            let to = 1 - from;
                            let before = sessions[to].as_ref().map(state_of);
                            let bad = InFlight { bytes, text: msg.text.clone(), id: msg.id };
                            prop_assert!(deliver(&mut sessions, from, &bad).is_err());
                            prop_assert_eq!(sessions[to].as_ref().map(state_of), before);
                        }
                    }
                }
                Op::Drop(from, idx) if !flight[from].is_empty() => {
                    let i = idx.index(flight[from].len());
                    flight[from].remove(i);
                }
                Op::Restart(party) => {
                    if let Some(s) = &sessions[party] {
                        let json = serde_json::to_vec(&(s.snapshot(), s.skipped())).unwrap();
                        let (snapshot, skipped) = serde_json::from_slice(&json).unwrap();
                        sessions[party] = Some(Session::from_parts(snapshot, skipped).unwrap());
                    }
                }
                _ => {}
            }
        }
        // Everything still in flight arrives, in reverse order, exactly once.
        for from in 0..2 {
            while let Some(msg) = flight[from].pop() {
                let text = deliver(&mut sessions, from, &msg);
                prop_assert_eq!(text.as_deref(), Ok(msg.text.as_slice()));
                prop_assert!(delivered[from].insert(msg.id));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Version 2
// ---------------------------------------------------------------------------

/// A sender whose state was rolled back (a restored backup, a copied data
/// dir) encrypts a different message under the same chain position. With
/// version 1 both got the same key and nonce, so c1 ⊕ c2 = p1 ⊕ p2 leaked
/// the XOR of the texts; the per-message salt makes the keystreams differ.
#[test]
fn a_rolled_back_sender_never_reuses_a_key_and_nonce() {
    let (mut a, mut b, mut rng) = pair(40);
    let saved = a.snapshot();
    let p1 = [0x41u8; 40];
    let p2 = [0x42u8; 40];
    let c1 = a.encrypt(&p1, &mut rng).unwrap();
    let mut rolled_back = Session::from_snapshot(saved).unwrap();
    let c2 = rolled_back.encrypt(&p2, &mut rng).unwrap();
    // Same chain position, different salt, different id.
    assert_eq!(c1.header.ratchet_key, c2.header.ratchet_key);
    assert_eq!(c1.header.counter, c2.header.counter);
    assert_ne!(c1.header.salt, c2.header.salt);
    assert_ne!(c1.message_id(), c2.message_id());
    let xor_c: Vec<u8> = c1.ciphertext.iter().zip(&c2.ciphertext).map(|(x, y)| x ^ y).take(40).collect();
    let xor_p: Vec<u8> = p1.iter().zip(&p2).map(|(x, y)| x ^ y).collect();
    assert_ne!(xor_c, xor_p, "the two messages share a keystream");
    // The receiver reads the first; the second's key is gone, and since its id
    // was never received the caller knows it is lost, not a duplicate.
    assert_eq!(b.decrypt(&c1).unwrap(), p1);
    assert_eq!(b.decrypt(&c2), Err(CryptoError::MessageKeyGone));
}

/// Every clear byte before the ciphertext is authenticated: the version and
/// type, the salt, and the X3DH fields of a prekey message.
#[test]
fn version_type_salt_and_prekey_fields_are_authenticated() {
    let mut rng = StdRng::seed_from_u64(41);
    let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let bob = Responder::new(ProfileKind::Personal, &mut rng);
    let mut a = Session::initiate(&alice, &bob.bundle(), &mut rng).unwrap();
    let first = a.encrypt(b"hello", &mut rng).unwrap();
    let second = a.encrypt(b"again", &mut rng).unwrap();
    let (mut b, _) = bob.accept(&first).unwrap();

    // The second prekey message stripped of its X3DH header (type 2 → 1):
    // the established session would have opened it in version 1.
    let mut stripped = second.clone();
    stripped.prekey = None;
    assert_eq!(b.decrypt(&wire(&stripped)), Err(CryptoError::AuthenticationFailed));
    // A flipped salt bit.
    let mut salted = second.clone();
    salted.header.salt[3] ^= 1;
    assert_eq!(b.decrypt(&salted), Err(CryptoError::AuthenticationFailed));
    // A changed one-time prekey id on a repeated prekey message.
    let mut renamed = second.clone();
    renamed.prekey.as_mut().unwrap().one_time_prekey_id = Some(99);
    assert_eq!(b.decrypt(&renamed), Err(CryptoError::AuthenticationFailed));
    assert_eq!(b.decrypt(&second).unwrap(), b"again");

    // The version byte: a version 1 envelope is refused by name before any
    // decryption.
    let mut bytes = a.encrypt(b"x", &mut rng).unwrap().encode();
    bytes[0] = 1;
    assert_eq!(Envelope::decode(&bytes), Err(DecodeError::UnsupportedVersion(1)));
}

/// A version 1 session snapshot (what a version 1 store holds) is refused
/// with a typed error, never used.
#[test]
fn a_version_1_snapshot_is_refused() {
    let (a, _, _) = pair(42);
    let mut json: serde_json::Value = serde_json::to_value(a.snapshot()).unwrap();
    json["version"] = serde_json::json!(1);
    let old: SessionSnapshot = serde_json::from_value(json).unwrap();
    assert_eq!(Session::from_snapshot(old).err(), Some(CryptoError::Decode(DecodeError::UnsupportedVersion(1))));
}

// ---------------------------------------------------------------------------
// Skipped keys kept by the caller (decrypt_with)
// ---------------------------------------------------------------------------

/// A caller's store: the session restored from its snapshot (no keys in
/// memory) and the keys kept apart, as kabar-storage keeps them.
fn decrypt_kept(session: &mut Session, kept: &mut SkippedKeys, env: &Envelope) -> Result<Vec<u8>, CryptoError> {
    let (plaintext, change) = session.decrypt_with(env, kept.lookup(&env.header))?;
    kept.apply(&change);
    assert_eq!(kept.len(), session.skipped_keys(), "the count in the snapshot follows the store");
    Ok(plaintext)
}

#[test]
fn keys_kept_by_the_caller_decrypt_out_of_order_and_each_is_used_once() {
    let (mut a, b, mut rng) = pair(50);
    let mut b = Session::from_snapshot(b.snapshot()).unwrap();
    let mut kept = SkippedKeys::default();
    let envs: Vec<Envelope> = (0..10).map(|i| a.encrypt(&[i], &mut rng).unwrap()).collect();
    for i in [3usize, 0, 9, 1, 5] {
        assert_eq!(decrypt_kept(&mut b, &mut kept, &envs[i]).unwrap(), [i as u8]);
    }
    assert_eq!(kept.len(), 5);
    assert!(b.skipped().is_empty(), "nothing is kept in the session");
    // The change of a used key names it, and the key is gone after it.
    let (text, change) = b.decrypt_with(&envs[2], kept.lookup(&envs[2].header)).unwrap();
    assert_eq!(text, [2]);
    assert_eq!(change.used, Some((envs[2].header.ratchet_key, envs[2].header.counter)));
    assert!(change.added.is_empty() && change.evict == 0);
    kept.apply(&change);
    assert_eq!(decrypt_kept(&mut b, &mut kept, &envs[2]), Err(CryptoError::MessageKeyGone));
    // A lookup that did not find the key (the caller deleted it) cannot
    // decrypt either, even though the chain is current.
    assert_eq!(b.decrypt_with(&envs[4], SkippedLookup::default()).err(), Some(CryptoError::MessageKeyGone));
    // After a ratchet step the old chain's keys are found by ratchet key.
    let reply = b.encrypt(b"r", &mut rng).unwrap();
    a.decrypt(&reply).unwrap();
    let fresh = a.encrypt(b"new", &mut rng).unwrap();
    assert_eq!(decrypt_kept(&mut b, &mut kept, &fresh).unwrap(), b"new");
    for i in [8usize, 4, 7, 6] {
        assert_eq!(decrypt_kept(&mut b, &mut kept, &envs[i]).unwrap(), [i as u8]);
    }
    assert!(kept.is_empty());
}

#[test]
fn the_snapshot_does_not_grow_with_skipped_keys() {
    let (mut a, mut b, mut rng) = pair(51);
    let small = state_len(&b);
    let envs: Vec<Envelope> = (0..=1_000).map(|_| a.encrypt(b"x", &mut rng).unwrap()).collect();
    b.decrypt(&envs[1_000]).unwrap();
    assert_eq!(b.skipped_keys(), 1_000);
    assert!(state_len(&b) <= small + 8, "{} bytes with 1,000 keys, {small} with none", state_len(&b));
    // The keys are in memory, and move out whole.
    let change = b.take_skipped();
    assert_eq!(change.added.len(), 1_000);
    assert_eq!(change.added[0].counter, envs[0].header.counter);
    assert!(b.skipped().is_empty());
    assert_eq!(b.skipped_keys(), 1_000);
}

fn state_len(session: &Session) -> usize {
    serde_json::to_vec(&session.snapshot()).unwrap().len()
}

#[test]
fn eviction_of_kept_keys_keeps_the_bound_and_drops_the_oldest() {
    let (mut a, b, mut rng) = pair(52);
    let mut b = Session::from_snapshot(b.snapshot()).unwrap();
    let mut kept = SkippedKeys::default();
    let per_chain = MAX_SKIP_PER_CHAIN as usize;
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let envs: Vec<Envelope> = (0..=per_chain).map(|_| a.encrypt(b"x", &mut rng).unwrap()).collect();
        let (_, change) = b.decrypt_with(&envs[per_chain], kept.lookup(&envs[per_chain].header)).unwrap();
        assert!(change.evict <= kept.len(), "never evicts a key it adds");
        kept.apply(&change);
        firsts.push(envs[0].clone());
        let r = b.encrypt(b"r", &mut rng).unwrap();
        a.decrypt(&r).unwrap();
        assert!(kept.len() <= MAX_SKIPPED_TOTAL);
        assert_eq!(kept.len(), b.skipped_keys());
    }
    assert_eq!(kept.len(), MAX_SKIPPED_TOTAL);
    assert_eq!(kept.iter().next().map(|k| k.counter), Some(0), "the second chain's first key is now the oldest");
    assert!(decrypt_kept(&mut b, &mut kept, &firsts[0]).is_err());
    assert_eq!(decrypt_kept(&mut b, &mut kept, &firsts[1]).unwrap(), b"x");
    assert_eq!(decrypt_kept(&mut b, &mut kept, &firsts[2]).unwrap(), b"x");
}

#[test]
fn debug_of_skipped_keys_shows_no_key() {
    let (mut a, mut b, mut rng) = pair(53);
    let envs: Vec<Envelope> = (0..3).map(|_| a.encrypt(b"x", &mut rng).unwrap()).collect();
    b.decrypt(&envs[2]).unwrap();
    let key = *b.skipped().iter().next().unwrap().message_key();
    let change = b.take_skipped();
    for shown in [format!("{:?}", change.added[0]), format!("{change:?}"), format!("{b:?}")] {
        assert!(!shown.contains(&kabar_crypto::hex::encode(&key)[..8]), "{shown}");
        assert!(!shown.contains(&format!("{:?}", &key[..4])), "{shown}");
    }
}
