//! Double Ratchet throughput and session set-up cost: Kabar against
//! vodozemac's Olm (libolm's successor, as used by Matrix), with a bare
//! ChaCha20-Poly1305 round trip as the floor.
//!
//! Three criterion groups, each reporting per message (or per set-up) with
//! `Throughput::Elements(1)`, so criterion prints messages/s:
//!
//! - `one_way`: one side encrypts, the other decrypts, the same two sessions
//!   carrying on across iterations (one long sending chain; every decrypt is
//!   the next message of the current receiving chain).
//! - `ping_pong`: the direction alternates every message (A→B, B→A, …), so
//!   every message makes its receiver take a DH ratchet step.
//! - `setup`: a new session from published keys plus its first message,
//!   encrypted and decrypted.
//!
//! Each for 1 KiB and 16 KiB plaintexts. What is and is not timed is spelled
//! out at each benchmark so the rows compare like with like. Note the two
//! protocols do not do identical work per message: Kabar pads the plaintext
//! (Padmé: 1 KiB → 1088 bytes, 16 KiB → 17 408 bytes) and uses HKDF + HMAC +
//! ChaCha20-Poly1305; Olm v1 does not pad and uses HKDF + HMAC + AES-256-CBC +
//! HMAC-SHA256 (MAC truncated to 8 bytes) and protobuf-style encoding.
//!
//! Run with `cargo bench -p kabar-crypto --bench ratchet`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::cell::RefCell;
use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kabar_crypto::primitives::{KEY_LEN, NONCE_LEN, chacha_open, chacha_seal};
use kabar_crypto::{Envelope, IdentityKeyPair, OneTimePrekey, PrekeyBundle, ProfileKind, Session, SignedPrekey};
use vodozemac::olm::{Account, OlmMessage, Session as OlmSession, SessionConfig};

/// Message sizes benchmarked, with their labels.
const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (16 * 1024, "16KiB")];

/// Olm message format: version 1 (AES-256-CBC, HMAC truncated to 8 bytes) is
/// the one Matrix uses and the only one without vodozemac's
/// `experimental-session-config` feature.
fn olm_config() -> SessionConfig {
    SessionConfig::version_1()
}

fn message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

// ---------------------------------------------------------------------------
// Kabar
// ---------------------------------------------------------------------------

/// One Kabar message over the wire: encrypt, encode to bytes, decode, decrypt.
/// Encode and decode are included because that is what every real message
/// goes through (the Olm path below likewise includes `to_parts` /
/// `from_parts`, its wire encoding).
fn kabar_send(from: &mut Session, to: &mut Session, plaintext: &[u8], rng: &mut rand::rngs::ThreadRng) -> Vec<u8> {
    let wire = from.encrypt(plaintext, rng).unwrap().encode();
    let envelope = Envelope::decode(&wire).unwrap();
    to.decrypt(&envelope).unwrap()
}

/// Two established Kabar sessions: X3DH with a one-time prekey, then one
/// message each way, so the initiator no longer sends the prekey header and
/// both sides have a sending and a receiving chain.
fn kabar_pair() -> (Session, Session) {
    let mut rng = rand::rng();
    let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let bob = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let spk = SignedPrekey::generate(&bob, 1, 1_700_000_000, &mut rng);
    let opk = OneTimePrekey::generate_batch(1, 1, &mut rng).remove(0);
    let bundle =
        PrekeyBundle { identity: bob.public(), signed_prekey: spk.public(), one_time_prekey: Some(opk.public()) };
    let mut a = Session::initiate(&alice, &bundle, &mut rng).unwrap();
    let first = Envelope::decode(&a.encrypt(b"hello", &mut rng).unwrap().encode()).unwrap();
    let (mut b, text) = Session::respond(&bob, &spk, Some(&opk), &first).unwrap();
    assert_eq!(text, b"hello");
    assert_eq!(kabar_send(&mut b, &mut a, b"hi", &mut rng), b"hi");
    assert!(!a.awaiting_reply());
    (a, b)
}

// ---------------------------------------------------------------------------
// vodozemac (Olm)
// ---------------------------------------------------------------------------

/// One Olm message over the wire: encrypt, `to_parts` (message type + bytes),
/// `from_parts`, decrypt.
fn olm_send(from: &mut OlmSession, to: &mut OlmSession, plaintext: &[u8]) -> Vec<u8> {
    let (kind, bytes) = from.encrypt(plaintext).unwrap().to_parts();
    let message = OlmMessage::from_parts(kind, &bytes).unwrap();
    to.decrypt(&message).unwrap()
}

/// Two established Olm sessions: outbound from Bob's identity key and a
/// one-time key, inbound from the pre-key message, then a reply so both sides
/// send normal (not pre-key) messages.
fn olm_pair() -> (OlmSession, OlmSession) {
    let alice = Account::new();
    let mut bob = Account::new();
    let otk = bob.generate_one_time_keys(1).created[0];
    bob.mark_keys_as_published();
    let mut a = alice.create_outbound_session(olm_config(), bob.curve25519_key(), otk).unwrap();
    let OlmMessage::PreKey(first) = a.encrypt(b"hello").unwrap() else { panic!("expected a pre-key message") };
    let inbound = bob.create_inbound_session(olm_config(), alice.curve25519_key(), &first).unwrap();
    assert_eq!(inbound.plaintext, b"hello");
    let mut b = inbound.session;
    assert_eq!(olm_send(&mut b, &mut a, b"hi"), b"hi");
    // Having heard back, Alice now sends normal messages; deliver the probe
    // so the chains stay in step.
    let probe = a.encrypt(b"x").unwrap();
    assert!(matches!(probe, OlmMessage::Normal(_)));
    assert_eq!(b.decrypt(&probe).unwrap(), b"x");
    (a, b)
}

// ---------------------------------------------------------------------------
// (a) one-way burst
// ---------------------------------------------------------------------------

/// Timed per iteration, for every implementation: encrypt one message and
/// decrypt it on the other side, including wire encoding and decoding, and
/// dropping the decrypted plaintext. Not timed: generating the plaintext and
/// setting up the sessions (done once, before measuring).
///
/// - `kabar`: `Session::encrypt` (pad, KDF_CK, HKDF-Expand, ChaCha20-Poly1305)
///   → `Envelope::encode` → `Envelope::decode` → `Session::decrypt` (fast
///   path).
/// - `vodozemac`: `Session::encrypt` → `to_parts` → `from_parts` →
///   `Session::decrypt`.
/// - `bare_chacha20poly1305`: `chacha_seal` + `chacha_open` of the unpadded
///   message under a fixed key with a counter nonce and no associated data:
///   the AEAD work alone, the floor any ratchet adds to.
fn one_way(c: &mut Criterion) {
    let mut group = c.benchmark_group("one_way");
    group.throughput(Throughput::Elements(1));
    for (len, label) in SIZES {
        let plaintext = message(len);

        let (mut a, mut b) = kabar_pair();
        let mut rng = rand::rng();
        group.bench_with_input(BenchmarkId::new("kabar", label), &plaintext, |bencher, pt| {
            bencher.iter(|| black_box(kabar_send(&mut a, &mut b, black_box(pt), &mut rng)));
        });

        let (mut a, mut b) = olm_pair();
        group.bench_with_input(BenchmarkId::new("vodozemac", label), &plaintext, |bencher, pt| {
            bencher.iter(|| black_box(olm_send(&mut a, &mut b, black_box(pt))));
        });

        let key = [7u8; KEY_LEN];
        let mut counter: u64 = 0;
        group.bench_with_input(BenchmarkId::new("bare_chacha20poly1305", label), &plaintext, |bencher, pt| {
            bencher.iter(|| {
                counter += 1;
                let mut nonce = [0u8; NONCE_LEN];
                nonce[NONCE_LEN - 8..].copy_from_slice(&counter.to_be_bytes());
                let ciphertext = chacha_seal(&key, &nonce, &[], black_box(pt));
                black_box(chacha_open(&key, &nonce, &[], &ciphertext).unwrap())
            });
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// (b) ping-pong
// ---------------------------------------------------------------------------

/// Timed per iteration: one message, alternately A→B and B→A, so each decrypt
/// meets a new ratchet key and performs a DH ratchet step, and each encrypt
/// after it uses the chain that step made. Same wire steps as `one_way`.
/// Not timed: session set-up.
///
/// - `kabar`: the receiver's `decrypt` takes the slow path (clones the session
///   state; one X25519 DH and `KDF_RK` for the new receiving chain), and its
///   next `encrypt` starts the new sending chain (fresh X25519 key pair, one
///   DH, `KDF_RK`). Both halves fall inside every timed message.
/// - `vodozemac`: the same split: the receiver's `decrypt` advances the root
///   (one DH, root KDF) for the new receiving chain and leaves its sending
///   ratchet inactive; its next `encrypt` activates it (fresh key pair, one
///   DH, root KDF).
fn ping_pong(c: &mut Criterion) {
    let mut group = c.benchmark_group("ping_pong");
    group.throughput(Throughput::Elements(1));
    for (len, label) in SIZES {
        let plaintext = message(len);

        let (mut a, mut b) = kabar_pair();
        let mut rng = rand::rng();
        let mut a_to_b = true;
        group.bench_with_input(BenchmarkId::new("kabar", label), &plaintext, |bencher, pt| {
            bencher.iter(|| {
                let out = if a_to_b {
                    kabar_send(&mut a, &mut b, black_box(pt), &mut rng)
                } else {
                    kabar_send(&mut b, &mut a, black_box(pt), &mut rng)
                };
                a_to_b = !a_to_b;
                black_box(out)
            });
        });

        let (mut a, mut b) = olm_pair();
        let mut a_to_b = true;
        group.bench_with_input(BenchmarkId::new("vodozemac", label), &plaintext, |bencher, pt| {
            bencher.iter(|| {
                let out = if a_to_b {
                    olm_send(&mut a, &mut b, black_box(pt))
                } else {
                    olm_send(&mut b, &mut a, black_box(pt))
                };
                a_to_b = !a_to_b;
                black_box(out)
            });
        });
    }
    group.finish();
}

// ---------------------------------------------------------------------------
// (c) session set-up
// ---------------------------------------------------------------------------

/// Timed per iteration: the initiator builds a session from the responder's
/// published keys and encrypts a first message; it goes over the wire (encode
/// + decode); the responder builds its session from it and decrypts it.
///
/// Not timed, for both: generating the long-term identities (once), and
/// generating and publishing the one-time key each set-up consumes (in
/// `iter_batched`'s setup closure, which criterion runs for a whole batch
/// before timing the batch). Dropping the resulting sessions is not timed
/// either (criterion drops `iter_batched` outputs outside the measurement).
///
/// - `kabar`: `Session::initiate` (verifies the bundle: identity
///   self-signature and signed-prekey signature, 2 Ed25519 `verify_strict`;
///   X3DH: ephemeral key, 4 DH; first ratchet key pair and its DH) →
///   `encrypt` → `encode`/`decode` → `Session::respond` (verifies the
///   initiator's identity signature, 1 more Ed25519 verify; 4 DH; decrypt,
///   whose ratchet step is one more DH). Looking the prekeys up by id is the
///   caller's storage and is not in the timed part.
/// - `vodozemac`: `Account::create_outbound_session` (base key, 3DH, ratchet
///   key) → `encrypt` → `to_parts`/`from_parts` →
///   `Account::create_inbound_session` (finds the one-time key in the
///   account's store, 3DH, decrypts, removes the key). vodozemac verifies no
///   signatures here: in Matrix the client checks the signed one-time key and
///   device keys itself.
/// - `vodozemac_signed_otk`: the same plus one Ed25519 `verify_strict` of the
///   one-time key's signature, as a Matrix client does when it claims a key
///   — closer to Kabar's signed bundle (which still does 2 more verifies).
fn setup(c: &mut Criterion) {
    let mut group = c.benchmark_group("setup");
    group.throughput(Throughput::Elements(1));
    for (len, label) in SIZES {
        let plaintext = message(len);

        // Kabar: long-lived identities and signed prekey; a fresh one-time
        // prekey per set-up, made in the untimed setup closure.
        let mut rng = rand::rng();
        let alice = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let bob = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
        let spk = SignedPrekey::generate(&bob, 1, 1_700_000_000, &mut rng);
        let mut next_opk_id = 0u32;
        let mut setup_rng = rand::rng();
        group.bench_with_input(BenchmarkId::new("kabar", label), &plaintext, |bencher, pt| {
            bencher.iter_batched(
                || {
                    next_opk_id = next_opk_id.wrapping_add(1);
                    let opk = OneTimePrekey::generate_batch(next_opk_id, 1, &mut setup_rng).remove(0);
                    let bundle = PrekeyBundle {
                        identity: bob.public(),
                        signed_prekey: spk.public(),
                        one_time_prekey: Some(opk.public()),
                    };
                    (opk, bundle)
                },
                |(opk, bundle)| {
                    let mut a = Session::initiate(&alice, &bundle, &mut rng).unwrap();
                    let wire = a.encrypt(black_box(pt), &mut rng).unwrap().encode();
                    let envelope = Envelope::decode(&wire).unwrap();
                    let (b, text) = Session::respond(&bob, &spk, Some(&opk), &envelope).unwrap();
                    (a, b, text)
                },
                BatchSize::SmallInput,
            );
        });

        // vodozemac: long-lived accounts. Bob's account is shared by the
        // setup closure (generates and publishes one one-time key per set-up)
        // and the routine (`create_inbound_session` consumes it), hence the
        // RefCell. At most one batch of keys is outstanding, far below the
        // account's store limit (5,000), so none is evicted.
        let alice = Account::new();
        let bob = RefCell::new(Account::new());
        let bob_curve = bob.borrow().curve25519_key();
        let bob_ed = bob.borrow().ed25519_key();
        let alice_curve = alice.curve25519_key();
        let olm_routine = |otk, pt: &[u8]| {
            let mut a = alice.create_outbound_session(olm_config(), bob_curve, otk).unwrap();
            let (kind, bytes) = a.encrypt(black_box(pt)).unwrap().to_parts();
            let OlmMessage::PreKey(first) = OlmMessage::from_parts(kind, &bytes).unwrap() else {
                panic!("expected a pre-key message")
            };
            let inbound = bob.borrow_mut().create_inbound_session(olm_config(), alice_curve, &first).unwrap();
            (a, inbound)
        };
        let new_otk = || {
            let mut account = bob.borrow_mut();
            let otk = account.generate_one_time_keys(1).created[0];
            account.mark_keys_as_published();
            otk
        };
        group.bench_with_input(BenchmarkId::new("vodozemac", label), &plaintext, |bencher, pt| {
            bencher.iter_batched(new_otk, |otk| olm_routine(otk, pt), BatchSize::SmallInput);
        });
        group.bench_with_input(BenchmarkId::new("vodozemac_signed_otk", label), &plaintext, |bencher, pt| {
            bencher.iter_batched(
                || {
                    let otk = new_otk();
                    let signature = bob.borrow().sign(otk.as_bytes());
                    (otk, signature)
                },
                |(otk, signature)| {
                    bob_ed.verify(otk.as_bytes(), &signature).unwrap();
                    olm_routine(otk, pt)
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = one_way, ping_pong, setup
}
criterion_main!(benches);
