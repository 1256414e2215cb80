//! Known-answer vectors of protocol version 2: `docs/protocol-v2-vectors.json`
//! and Appendix A of `docs/protocol.md`.
//!
//! Every value is computed twice: by kabar-crypto's public API, and by a small
//! reference model in this file that follows docs/protocol.md with nothing but
//! the primitives (X25519, HKDF, HMAC, ChaCha20-Poly1305, Ed25519, SHA-512).
//! The two must agree byte for byte, and the result must equal the JSON file
//! and the values quoted in the document. Any change to a value here is a
//! protocol change.
//!
//! `KABAR_WRITE_VECTORS=1 cargo test -p kabar-crypto --test known_answer`
//! rewrites the JSON file from the code (then checks it as usual).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::print_stdout,
    clippy::print_stderr,
    missing_docs
)]

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::OnceLock;

use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use kabar_crypto::envelope::{self, padded_len, unpad};
use kabar_crypto::hex::encode;
use kabar_crypto::primitives::{chacha_seal, hkdf_sha256, hmac_sha256, x25519, x25519_public};
use kabar_crypto::*;
use serde::ser::{Serialize, SerializeMap as _, SerializeSeq as _, Serializer};
use serde_json::Value;
use sha2::{Digest as _, Sha512};
use x25519_dalek::StaticSecret;

// ---------------------------------------------------------------------------
// Protocol constants, written out as the document states them.

const ENVELOPE_VERSION: u8 = 2;
const TYPE_MESSAGE: u8 = 1;
const TYPE_PREKEY_MESSAGE: u8 = 2;
const SIGNATURE_PREFIX: &[u8] = b"KABAR-SIG-V1\x00";
const X3DH_INFO: &[u8] = b"Kabar X3DH v2";
const AD_PREFIX: &[u8] = b"KABAR-AD-V2";
const ROOT_INFO: &[u8] = b"Kabar Double Ratchet v2 root";
const MESSAGE_INFO: &[u8] = b"Kabar Double Ratchet v2 message";
const SAFETY_LABEL: &[u8] = b"Kabar safety number v1";
const SAFETY_ITERATIONS: u32 = 5_200;
const QR_PREFIX: &str = "kabar-safety:1:";

const ALICE_SEED: [u8; 32] = [0x01; 32];
const ALICE_DH: [u8; 32] = [0x02; 32];
const BOB_SEED: [u8; 32] = [0x03; 32];
const BOB_DH: [u8; 32] = [0x04; 32];
const SPK_ID: u32 = 1;
const SPK_CREATED_AT: u64 = 1_700_000_000;
const OPK_ID: u32 = 100;

const VECTORS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol-v2-vectors.json");
const PROTOCOL_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
const APPENDIX_HEADING: &str = "## Appendix A: known-answer vectors";

// ---------------------------------------------------------------------------
// An ordered JSON value: the file keeps the key order written here whatever
// serde_json's features are.

#[derive(Clone, Debug)]
enum J {
    Str(String),
    Num(u64),
    Bool(bool),
    Arr(Vec<J>),
    Obj(Vec<(&'static str, J)>),
}

impl Serialize for J {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            J::Str(v) => s.serialize_str(v),
            J::Num(n) => s.serialize_u64(*n),
            J::Bool(b) => s.serialize_bool(*b),
            J::Arr(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            J::Obj(fields) => {
                let mut map = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl From<&str> for J {
    fn from(v: &str) -> J {
        J::Str(v.to_owned())
    }
}
impl From<String> for J {
    fn from(v: String) -> J {
        J::Str(v)
    }
}
impl From<u32> for J {
    fn from(v: u32) -> J {
        J::Num(v.into())
    }
}
impl From<u64> for J {
    fn from(v: u64) -> J {
        J::Num(v)
    }
}
impl From<usize> for J {
    fn from(v: usize) -> J {
        J::Num(u64::try_from(v).unwrap())
    }
}
impl From<bool> for J {
    fn from(v: bool) -> J {
        J::Bool(v)
    }
}
impl From<Vec<J>> for J {
    fn from(v: Vec<J>) -> J {
        J::Arr(v)
    }
}

macro_rules! obj {
    ($($k:literal => $v:expr),* $(,)?) => { J::Obj(vec![$(($k, J::from($v))),*]) };
}

/// Lower-case hex of bytes, as a JSON string.
fn hx(bytes: &[u8]) -> J {
    J::Str(encode(bytes))
}

/// A vector: name, description, inputs, expected.
fn vector(name: &str, description: &str, inputs: J, expected: J) -> J {
    obj! { "name" => name, "description" => description, "inputs" => inputs, "expected" => expected }
}

/// An error's name in the vectors: its `Debug` form without quotes, e.g.
/// `BadSignature(identity-key)`, `UnsupportedVersion(1)`.
fn error_name(e: &impl std::fmt::Debug) -> String {
    format!("{e:?}").replace('"', "")
}

// ---------------------------------------------------------------------------
// The deterministic random source, and the record of what each draw is for.

fn draw_byte(n: usize) -> u8 {
    u8::try_from(0x10 + n).expect("at most 239 draws per vector")
}

/// Draw n (n = 1, 2, …) of any length is that many bytes of value 0x10 + n.
/// Records the length of every draw, to check against [`Draws`].
#[derive(Clone, Default)]
struct KatRng {
    lengths: Vec<usize>,
}

impl rand_core::TryRng for KatRng {
    type Error = Infallible;
    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        unreachable!("kabar-crypto draws bytes only")
    }
    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        unreachable!("kabar-crypto draws bytes only")
    }
    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        assert!(dst.len() == 32 || dst.len() == 16, "a draw is a 32-byte key or a 16-byte salt");
        self.lengths.push(dst.len());
        dst.fill(draw_byte(self.lengths.len()));
        Ok(())
    }
}
impl rand_core::TryCryptoRng for KatRng {}

/// The reference model's side of the random source: the same rule, with what
/// each draw is used for (listed in the vector's inputs).
#[derive(Default)]
struct Draws {
    log: Vec<(usize, String)>,
}

impl Draws {
    fn take<const N: usize>(&mut self, what: impl Into<String>) -> ([u8; N], usize) {
        self.log.push((N, what.into()));
        let n = self.log.len();
        ([draw_byte(n); N], n)
    }

    fn to_json(&self) -> J {
        J::Arr(
            self.log
                .iter()
                .enumerate()
                .map(|(i, (len, what))| {
                    obj! {
                        "draw" => i + 1,
                        "length" => *len,
                        "value" => encode(&vec![draw_byte(i + 1); *len]),
                        "use" => what.as_str(),
                    }
                })
                .collect(),
        )
    }
}

// ---------------------------------------------------------------------------
// The reference model: docs/protocol.md, from the primitives.

fn dh(secret: &[u8; 32], public: &[u8; 32]) -> [u8; 32] {
    *x25519(&StaticSecret::from(*secret), public).unwrap()
}

fn public_of(secret: &[u8; 32]) -> [u8; 32] {
    x25519_public(&StaticSecret::from(*secret))
}

fn signing_input(label: &str, body: &[u8]) -> Vec<u8> {
    [SIGNATURE_PREFIX, label.as_bytes(), &[0], body].concat()
}

fn x3dh_sk(dhs: &[[u8; 32]]) -> [u8; 32] {
    let mut ikm = vec![0xff; 32];
    for d in dhs {
        ikm.extend_from_slice(d);
    }
    let mut sk = [0u8; 32];
    hkdf_sha256(Some(&[0u8; 32]), &ikm, X3DH_INFO, &mut sk).unwrap();
    sk
}

fn x3dh_ad(initiator: &IdentityPublic, responder: &IdentityPublic) -> Vec<u8> {
    [AD_PREFIX, &initiator.to_bytes()[..], &responder.to_bytes()[..]].concat()
}

/// `KDF_RK`: (new root key, chain key).
fn kdf_rk(rk: &[u8; 32], dh: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    let mut okm = [0u8; 64];
    hkdf_sha256(Some(rk), dh, ROOT_INFO, &mut okm).unwrap();
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

/// `KDF_CK`: (message key, next chain key).
fn kdf_ck(ck: &[u8; 32]) -> ([u8; 32], [u8; 32]) {
    (hmac_sha256(ck, &[0x01]), hmac_sha256(ck, &[0x02]))
}

/// Message key and salt → (AEAD key, nonce).
fn message_keys(mk: &[u8; 32], salt: &[u8; 16]) -> ([u8; 32], [u8; 12]) {
    let mut okm = [0u8; 44];
    hkdf_sha256(Some(salt), mk, MESSAGE_INFO, &mut okm).unwrap();
    (okm[..32].try_into().unwrap(), okm[32..].try_into().unwrap())
}

/// `AD ‖ u16(len(H)) ‖ H`.
fn message_ad(ad: &[u8], h: &[u8]) -> Vec<u8> {
    [ad, &u16::try_from(h.len()).unwrap().to_be_bytes()[..], h].concat()
}

/// Padmé, as in docs/protocol.md §5.
fn model_padded_len(n: usize) -> usize {
    let l = n + 1;
    if l <= 64 {
        return 64;
    }
    let e = l.ilog2();
    let s = e.ilog2() + 1;
    let mask = (1usize << (e - s)) - 1;
    (l + mask) & !mask
}

fn pad_to(plaintext: &[u8], len: usize) -> Vec<u8> {
    let mut out = plaintext.to_vec();
    out.push(0x80);
    out.resize(len, 0);
    out
}

fn model_unpad(padded: &[u8]) -> Vec<u8> {
    let end = padded.iter().rposition(|&b| b != 0).unwrap();
    assert_eq!(padded[end], 0x80);
    assert_eq!(model_padded_len(end), padded.len());
    padded[..end].to_vec()
}

fn fingerprint(identity: &IdentityPublic) -> [u8; 32] {
    let key = identity.to_bytes();
    let mut h = Sha512::new();
    h.update([0u8, 0]);
    h.update(key);
    h.update(SAFETY_LABEL);
    let mut hash = h.finalize();
    for _ in 0..SAFETY_ITERATIONS {
        let mut h = Sha512::new();
        h.update(hash);
        h.update(key);
        hash = h.finalize();
    }
    hash[..32].try_into().unwrap()
}

fn fingerprint_digits(fp: &[u8; 32]) -> String {
    fp[..30]
        .chunks_exact(5)
        .map(|c| format!("{:05}", c.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)) % 100_000))
        .collect()
}

/// The prekey fields of a type 2 envelope.
struct PrekeyFields {
    /// IK_A, the initiator's 129-byte public identity.
    identity: Vec<u8>,
    base_key: [u8; 32],
    signed_prekey_id: u32,
    one_time_prekey_id: Option<u32>,
}

/// The parts of an envelope the model needs.
struct Parsed {
    header_len: usize,
    prekey: Option<PrekeyFields>,
    ratchet_key: [u8; 32],
    pn: u32,
    n: u32,
    salt: [u8; 16],
    ciphertext: Vec<u8>,
}

fn parse(b: &[u8]) -> Parsed {
    let u32_at = |i: usize| u32::from_be_bytes(b[i..i + 4].try_into().unwrap());
    assert_eq!(b[0], ENVELOPE_VERSION);
    let (prekey, mut i) = match b[1] {
        TYPE_MESSAGE => (None, 2),
        TYPE_PREKEY_MESSAGE => {
            let (opk, end) = match b[167] {
                0 => (None, 168),
                1 => (Some(u32_at(168)), 172),
                other => panic!("flag {other}"),
            };
            let fields = PrekeyFields {
                identity: b[2..131].to_vec(),
                base_key: b[131..163].try_into().unwrap(),
                signed_prekey_id: u32_at(163),
                one_time_prekey_id: opk,
            };
            (Some(fields), end)
        }
        other => panic!("type {other}"),
    };
    let ratchet_key = b[i..i + 32].try_into().unwrap();
    let (pn, n) = (u32_at(i + 32), u32_at(i + 36));
    let salt = b[i + 40..i + 56].try_into().unwrap();
    i += 56;
    let len = usize::try_from(u32_at(i)).unwrap();
    assert_eq!(b.len(), i + 4 + len);
    Parsed { header_len: i, prekey, ratchet_key, pn, n, salt, ciphertext: b[i + 4..].to_vec() }
}

/// One party of the reference model (docs/protocol.md §4), without the
/// bounds and duplicate detection (the vectors do not reach them).
struct Party {
    name: &'static str,
    ad: Vec<u8>,
    rk: [u8; 32],
    dhs_secret: [u8; 32],
    dhs_public: [u8; 32],
    dhs_origin: String,
    dhr: Option<[u8; 32]>,
    cks: Option<[u8; 32]>,
    ns: u32,
    pn: u32,
    ckr: Option<[u8; 32]>,
    nr: u32,
    skipped: Vec<([u8; 32], u32, [u8; 32])>,
    /// The prekey fields of the envelope while the initiator awaits a reply.
    prekey_fields: Option<Vec<u8>>,
}

/// What the model made of one sent message.
struct Sent {
    label: String,
    envelope: Vec<u8>,
    header_len: usize,
    aead_key: [u8; 32],
    aead_nonce: [u8; 12],
    message_id: [u8; 16],
    record: J,
}

impl Party {
    /// `KDF_RK(RK, DH(DHs, their))`, logged; returns the new chain key.
    fn ratchet_step(&mut self, during: &str, half: &str, their: [u8; 32], steps: &mut Vec<J>) -> [u8; 32] {
        let shared = dh(&self.dhs_secret, &their);
        let (rk, ck) = kdf_rk(&self.rk, &shared);
        steps.push(obj! {
            "party" => self.name,
            "during" => during,
            "half" => half,
            "our_ratchet_key" => hx(&self.dhs_public),
            "our_ratchet_secret" => self.dhs_origin.as_str(),
            "their_ratchet_key" => hx(&their),
            "dh" => hx(&shared),
            "root_key_in" => hx(&self.rk),
            "root_key_out" => hx(&rk),
            "chain_key" => hx(&ck),
        });
        self.rk = rk;
        ck
    }

    fn encrypt(&mut self, label: &str, to: &str, plaintext: &str, draws: &mut Draws, steps: &mut Vec<J>) -> Sent {
        if self.cks.is_none() {
            let (secret, n) = draws.take::<32>(format!(
                "{}: new ratchet key pair DHs (sending half of a DH ratchet step, on encrypting {label})",
                self.name
            ));
            self.dhs_secret = secret;
            self.dhs_public = public_of(&secret);
            self.dhs_origin = format!("draw {n}");
            let ck = self.ratchet_step(&format!("encrypt {label}"), "sending", self.dhr.unwrap(), steps);
            self.cks = Some(ck);
        }
        let ck = self.cks.unwrap();
        let (mk, next) = kdf_ck(&ck);
        let (salt, salt_draw) = draws.take::<16>(format!("{}: salt of {label}", self.name));
        let message_type = if self.prekey_fields.is_some() { TYPE_PREKEY_MESSAGE } else { TYPE_MESSAGE };
        let mut h = vec![ENVELOPE_VERSION, message_type];
        if let Some(fields) = &self.prekey_fields {
            h.extend_from_slice(fields);
        }
        h.extend_from_slice(&self.dhs_public);
        h.extend_from_slice(&self.pn.to_be_bytes());
        h.extend_from_slice(&self.ns.to_be_bytes());
        h.extend_from_slice(&salt);
        let (key, nonce) = message_keys(&mk, &salt);
        let padded = pad_to(plaintext.as_bytes(), model_padded_len(plaintext.len()));
        let ciphertext = chacha_seal(&key, &nonce, &message_ad(&self.ad, &h), &padded);
        let mut envelope = h.clone();
        envelope.extend_from_slice(&u32::try_from(ciphertext.len()).unwrap().to_be_bytes());
        envelope.extend_from_slice(&ciphertext);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&self.dhs_public[..8]);
        id[8..12].copy_from_slice(&self.ns.to_be_bytes());
        id[12..].copy_from_slice(&salt[..4]);
        let record = obj! {
            "message" => label,
            "from" => self.name,
            "to" => to,
            "type" => u32::from(message_type),
            "plaintext" => plaintext,
            "plaintext_length" => plaintext.len(),
            "padded_length" => padded.len(),
            "ratchet_key" => hx(&self.dhs_public),
            "pn" => self.pn,
            "n" => self.ns,
            "salt_draw" => salt_draw,
            "salt" => hx(&salt),
            "chain_key" => hx(&ck),
            "message_key" => hx(&mk),
            "aead_key" => hx(&key),
            "aead_nonce" => hx(&nonce),
            "authenticated_header" => hx(&h),
            "ciphertext_length" => ciphertext.len(),
            "envelope" => hx(&envelope),
            "message_id" => hx(&id),
        };
        self.cks = Some(next);
        self.ns += 1;
        Sent {
            label: label.to_owned(),
            envelope,
            header_len: h.len(),
            aead_key: key,
            aead_nonce: nonce,
            message_id: id,
            record,
        }
    }

    fn skip_until(&mut self, until: u32) {
        if let (Some(their), Some(mut ck)) = (self.dhr, self.ckr) {
            while self.nr < until {
                let (mk, next) = kdf_ck(&ck);
                self.skipped.push((their, self.nr, mk));
                ck = next;
                self.nr += 1;
            }
            self.ckr = Some(ck);
        }
    }

    fn decrypt(&mut self, label: &str, envelope: &[u8], steps: &mut Vec<J>) -> Vec<u8> {
        let p = parse(envelope);
        let mk = if let Some(i) = self.skipped.iter().position(|k| k.0 == p.ratchet_key && k.1 == p.n) {
            self.skipped.remove(i).2
        } else {
            if self.dhr != Some(p.ratchet_key) || self.ckr.is_none() {
                self.skip_until(p.pn);
                let ck = self.ratchet_step(&format!("decrypt {label}"), "receiving", p.ratchet_key, steps);
                self.dhr = Some(p.ratchet_key);
                self.ckr = Some(ck);
                self.nr = 0;
                if self.cks.take().is_some() {
                    self.pn = self.ns;
                    self.ns = 0;
                }
            }
            self.skip_until(p.n);
            let (mk, next) = kdf_ck(&self.ckr.unwrap());
            self.ckr = Some(next);
            self.nr += 1;
            mk
        };
        let (key, nonce) = message_keys(&mk, &p.salt);
        let padded = kabar_crypto::primitives::chacha_open(
            &key,
            &nonce,
            &message_ad(&self.ad, &envelope[..p.header_len]),
            &p.ciphertext,
        )
        .unwrap();
        self.prekey_fields = None;
        model_unpad(&padded)
    }
}

// ---------------------------------------------------------------------------
// Fixed inputs, run through kabar-crypto and the model side by side.

/// Alice, Bob, Bob's signed prekey (draw 1) and one-time prekey (draw 2):
/// the start of every vector that uses the random source.
struct Setup {
    alice: IdentityKeyPair,
    bob: IdentityKeyPair,
    spk: SignedPrekey,
    opk: OneTimePrekey,
    spk_secret: [u8; 32],
    opk_secret: [u8; 32],
    rng: KatRng,
    draws: Draws,
}

impl Setup {
    fn new() -> Setup {
        let alice = IdentityKeyPair::from_secrets(ProfileKind::Personal, &ALICE_SEED, &ALICE_DH);
        let bob = IdentityKeyPair::from_secrets(ProfileKind::Business, &BOB_SEED, &BOB_DH);
        let mut rng = KatRng::default();
        let mut draws = Draws::default();
        let spk = SignedPrekey::generate(&bob, SPK_ID, SPK_CREATED_AT, &mut rng);
        let (spk_secret, _) = draws.take::<32>("bob: signed prekey secret (id 1, created_at 1700000000)");
        let opk = OneTimePrekey::generate_batch(OPK_ID, 1, &mut rng).remove(0);
        let (opk_secret, _) =
            draws.take::<32>("bob: one-time prekey secret (id 100; drawn even when the bundle does not offer it)");
        Setup { alice, bob, spk, opk, spk_secret, opk_secret, rng, draws }
    }

    fn bundle(&self, with_opk: bool) -> PrekeyBundle {
        PrekeyBundle {
            identity: self.bob.public(),
            signed_prekey: self.spk.public(),
            one_time_prekey: with_opk.then(|| self.opk.public()),
        }
    }

    /// The crate drew exactly what the model says it drew.
    fn check_draws(&self) {
        let model: Vec<usize> = self.draws.log.iter().map(|(len, _)| *len).collect();
        assert_eq!(self.rng.lengths, model, "kabar-crypto's random draws differ from the documented ones");
    }
}

/// X3DH on the initiator's side, in the model.
struct X3dhModel {
    base_key: [u8; 32],
    dhs: Vec<[u8; 32]>,
    sk: [u8; 32],
    ad: Vec<u8>,
}

fn model_x3dh(s: &mut Setup, with_opk: bool) -> X3dhModel {
    let (ek, _) = s.draws.take::<32>("alice: X3DH ephemeral key EK_A (its public half is the base key)");
    let bob = s.bob.public();
    let spk = public_of(&s.spk_secret);
    let mut dhs = vec![dh(&ALICE_DH, &spk), dh(&ek, &bob.dh), dh(&ek, &spk)];
    if with_opk {
        dhs.push(dh(&ek, &public_of(&s.opk_secret)));
    }
    X3dhModel { base_key: public_of(&ek), sk: x3dh_sk(&dhs), ad: x3dh_ad(&s.alice.public(), &bob), dhs }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    Alice,
    Bob,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::Alice => "alice",
            Who::Bob => "bob",
        }
    }
    fn other(self) -> Who {
        match self {
            Who::Alice => Who::Bob,
            Who::Bob => Who::Alice,
        }
    }
}

/// A conversation run by kabar-crypto and by the model in lockstep.
struct Sim {
    s: Setup,
    with_opk: bool,
    alice: Session,
    bob: Option<Session>,
    model_alice: Party,
    model_bob: Option<Party>,
    sent: Vec<Sent>,
    script: Vec<J>,
    decryptions: Vec<J>,
    steps: Vec<J>,
}

impl Sim {
    fn new(with_opk: bool) -> Sim {
        let mut s = Setup::new();
        let alice = Session::initiate(&s.alice, &s.bundle(with_opk), &mut s.rng).unwrap();
        let x = model_x3dh(&mut s, with_opk);
        let (dhs_secret, n) = s.draws.take::<32>("alice: first ratchet key pair DHs (initial state of the initiator)");
        let spk = public_of(&s.spk_secret);
        let mut prekey_fields = s.alice.public().to_bytes().to_vec();
        prekey_fields.extend_from_slice(&x.base_key);
        prekey_fields.extend_from_slice(&SPK_ID.to_be_bytes());
        if with_opk {
            prekey_fields.push(1);
            prekey_fields.extend_from_slice(&OPK_ID.to_be_bytes());
        } else {
            prekey_fields.push(0);
        }
        let mut model_alice = Party {
            name: "alice",
            ad: x.ad,
            rk: x.sk,
            dhs_secret,
            dhs_public: public_of(&dhs_secret),
            dhs_origin: format!("draw {n}"),
            dhr: Some(spk),
            cks: None,
            ns: 0,
            pn: 0,
            ckr: None,
            nr: 0,
            skipped: Vec::new(),
            prekey_fields: Some(prekey_fields),
        };
        let mut steps = Vec::new();
        let script = vec![obj! { "party" => "alice", "action" => "initiate" }];
        model_alice.cks =
            Some(model_alice.ratchet_step("initiate", "sending (initial state of the initiator)", spk, &mut steps));
        s.check_draws();
        Sim {
            s,
            with_opk,
            alice,
            bob: None,
            model_alice,
            model_bob: None,
            sent: Vec::new(),
            script,
            decryptions: Vec::new(),
            steps,
        }
    }

    fn sent(&self, label: &str) -> &Sent {
        self.sent.iter().find(|m| m.label == label).unwrap()
    }

    fn envelope(&self, label: &str) -> Envelope {
        Envelope::decode(&self.sent(label).envelope).unwrap()
    }

    fn session(&mut self, who: Who) -> &mut Session {
        match who {
            Who::Alice => &mut self.alice,
            Who::Bob => self.bob.as_mut().unwrap(),
        }
    }

    fn send(&mut self, who: Who, label: &str, plaintext: &str) {
        let envelope = {
            let Sim { alice, bob, s, .. } = self;
            let session = if who == Who::Alice { alice } else { bob.as_mut().unwrap() };
            session.encrypt(plaintext.as_bytes(), &mut s.rng).unwrap()
        };
        let party = if who == Who::Alice { &mut self.model_alice } else { self.model_bob.as_mut().unwrap() };
        let sent = party.encrypt(label, who.other().name(), plaintext, &mut self.s.draws, &mut self.steps);
        self.s.check_draws();
        assert_eq!(encode(&envelope.encode()), encode(&sent.envelope), "{label}: kabar-crypto and the model differ");
        assert_eq!(envelope.authenticated_header(), sent.envelope[..sent.header_len]);
        assert_eq!(envelope.message_id().0, sent.message_id);
        self.script
            .push(obj! { "party" => who.name(), "action" => "encrypt", "message" => label, "plaintext" => plaintext });
        self.sent.push(sent);
    }

    fn receive(&mut self, who: Who, label: &str) {
        let envelope = self.envelope(label);
        let bytes = self.sent(label).envelope.clone();
        let responding = who == Who::Bob && self.bob.is_none();
        let plaintext = if responding {
            let opk = self.with_opk.then_some(&self.s.opk);
            let (session, plaintext) = Session::respond(&self.s.bob, &self.s.spk, opk, &envelope).unwrap();
            self.bob = Some(session);
            self.model_bob = Some(self.model_responder(&bytes));
            plaintext
        } else {
            self.session(who).decrypt(&envelope).unwrap()
        };
        let party = if who == Who::Alice { &mut self.model_alice } else { self.model_bob.as_mut().unwrap() };
        assert_eq!(party.decrypt(label, &bytes, &mut self.steps), plaintext, "{label}: the model decrypts differently");
        let held = self.session(who).skipped_keys();
        let party = if who == Who::Alice { &self.model_alice } else { self.model_bob.as_ref().unwrap() };
        assert_eq!(held, party.skipped.len());
        let action = if responding { "respond" } else { "decrypt" };
        self.script.push(obj! { "party" => who.name(), "action" => action, "message" => label });
        self.decryptions.push(obj! {
            "party" => who.name(),
            "message" => label,
            "plaintext" => String::from_utf8(plaintext).unwrap(),
            "skipped_keys_held" => held,
        });
    }

    /// Bob's model from the first prekey message: X3DH as the responder.
    fn model_responder(&self, envelope: &[u8]) -> Party {
        let PrekeyFields { identity: ik_a, base_key, signed_prekey_id: spk_id, one_time_prekey_id: opk_id } =
            parse(envelope).prekey.unwrap();
        assert_eq!(spk_id, SPK_ID);
        let alice = IdentityPublic::from_bytes(&ik_a).unwrap();
        let mut dhs =
            vec![dh(&self.s.spk_secret, &alice.dh), dh(&BOB_DH, &base_key), dh(&self.s.spk_secret, &base_key)];
        if let Some(id) = opk_id {
            assert_eq!(id, OPK_ID);
            dhs.push(dh(&self.s.opk_secret, &base_key));
        }
        Party {
            name: "bob",
            ad: x3dh_ad(&alice, &self.s.bob.public()),
            rk: x3dh_sk(&dhs),
            dhs_secret: self.s.spk_secret,
            dhs_public: public_of(&self.s.spk_secret),
            dhs_origin: "signed prekey secret, draw 1".to_owned(),
            dhr: None,
            cks: None,
            ns: 0,
            pn: 0,
            ckr: None,
            nr: 0,
            skipped: Vec::new(),
            prekey_fields: None,
        }
    }

    fn finish(&self, name: &str, description: &str) -> J {
        let inputs = obj! {
            "one_time_prekey_offered" => self.with_opk,
            "rng_draws" => self.s.draws.to_json(),
            "script" => self.script.clone(),
        };
        let expected = obj! {
            "ratchet_steps" => self.steps.clone(),
            "messages" => self.sent.iter().map(|m| m.record.clone()).collect::<Vec<_>>(),
            "decryptions" => self.decryptions.clone(),
        };
        vector(name, description, inputs, expected)
    }
}

// ---------------------------------------------------------------------------
// The vectors.

fn identity_vector() -> J {
    let mut parties = Vec::new();
    for (kind, seed, dh_secret) in
        [(ProfileKind::Personal, ALICE_SEED, ALICE_DH), (ProfileKind::Business, BOB_SEED, BOB_DH)]
    {
        let public = IdentityKeyPair::from_secrets(kind, &seed, &dh_secret).public();
        public.verify().unwrap();
        let signing = SigningKey::from_bytes(&seed);
        let dh_public = public_of(&dh_secret);
        let input = signing_input("identity-key", &[&[kind.to_byte()][..], &dh_public].concat());
        let signature = signing.sign(&input).to_bytes();
        let mut bytes = vec![kind.to_byte()];
        bytes.extend_from_slice(signing.verifying_key().as_bytes());
        bytes.extend_from_slice(&dh_public);
        bytes.extend_from_slice(&signature);
        assert_eq!(encode(&public.to_bytes()), encode(&bytes));
        parties.push(obj! {
            "ed25519_public" => hx(signing.verifying_key().as_bytes()),
            "x25519_public" => hx(&dh_public),
            "identity_signing_input" => hx(&input),
            "identity_signature" => hx(&signature),
            "public_identity" => hx(&bytes),
        });
    }
    let bob = parties.pop().unwrap();
    let alice = parties.pop().unwrap();
    vector(
        "identities",
        "Public identities (docs/protocol.md §2.2) of Alice and Bob from the top-level inputs. The identity signature \
         is Ed25519 (RFC 8032, deterministic) by the seed's key over identity_signing_input = \"KABAR-SIG-V1\" ‖ 0x00 \
         ‖ \"identity-key\" ‖ 0x00 ‖ kind ‖ x25519_public. public_identity = kind ‖ ed25519_public ‖ x25519_public ‖ \
         identity_signature (129 bytes).",
        obj! { "alice" => "top-level inputs.alice", "bob" => "top-level inputs.bob" },
        obj! { "alice" => alice, "bob" => bob },
    )
}

fn prekey_vector() -> J {
    let s = Setup::new();
    s.check_draws();
    let spk = s.spk.public();
    let spk_public = public_of(&s.spk_secret);
    let body = [&SPK_ID.to_be_bytes()[..], &SPK_CREATED_AT.to_be_bytes(), &spk_public].concat();
    let input = signing_input("signed-prekey", &body);
    let signature = SigningKey::from_bytes(&BOB_SEED).sign(&input).to_bytes();
    assert_eq!((spk.id, spk.created_at, spk.public, spk.signature), (SPK_ID, SPK_CREATED_AT, spk_public, signature));
    let opk = s.opk.public();
    assert_eq!((opk.id, opk.public), (OPK_ID, public_of(&s.opk_secret)));
    s.bundle(true).verify().unwrap();
    vector(
        "bob_prekeys",
        "Bob's signed prekey (id 1, created_at 1700000000, secret = draw 1) and one-time prekey (id 100, secret = \
         draw 2). The signature is Bob's Ed25519 signature over signed_prekey_signing_input = \"KABAR-SIG-V1\" ‖ 0x00 \
         ‖ \"signed-prekey\" ‖ 0x00 ‖ id (u32 BE) ‖ created_at (u64 BE) ‖ signed_prekey_public.",
        obj! {
            "signed_prekey_id" => SPK_ID,
            "signed_prekey_created_at" => SPK_CREATED_AT,
            "one_time_prekey_id" => OPK_ID,
            "rng_draws" => s.draws.to_json(),
        },
        obj! {
            "signed_prekey_public" => hx(&spk_public),
            "signed_prekey_signing_input" => hx(&input),
            "signed_prekey_signature" => hx(&signature),
            "one_time_prekey_public" => hx(&opk.public),
        },
    )
}

fn x3dh_vector(with_opk: bool) -> J {
    let mut s = Setup::new();
    let (out, header) = kabar_crypto::x3dh::initiate(&s.alice, &s.bundle(with_opk), &mut s.rng).unwrap();
    let m = model_x3dh(&mut s, with_opk);
    s.check_draws();
    assert_eq!(*out.shared_secret, m.sk);
    assert_eq!(out.associated_data, m.ad);
    assert_eq!(header.base_key, m.base_key);
    assert_eq!(header.one_time_prekey_id, with_opk.then_some(OPK_ID));
    let theirs = kabar_crypto::x3dh::respond(&s.bob, &s.spk, with_opk.then_some(&s.opk), &header).unwrap();
    assert_eq!(*theirs.shared_secret, m.sk);
    assert_eq!(theirs.associated_data, m.ad);
    let mut expected = vec![("base_key", hx(&m.base_key))];
    for (name, value) in ["dh1", "dh2", "dh3", "dh4"].into_iter().zip(&m.dhs) {
        expected.push((name, hx(value)));
    }
    expected.push(("sk", hx(&m.sk)));
    expected.push(("ad", hx(&m.ad)));
    let (name, description) = if with_opk {
        (
            "x3dh_with_one_time_prekey",
            "X3DH (docs/protocol.md §3), Alice initiating with Bob's bundle that offers the one-time prekey. DH1 = \
             DH(IKdh_A, SPK_B), DH2 = DH(EK_A, IKdh_B), DH3 = DH(EK_A, SPK_B), DH4 = DH(EK_A, OPK_B); SK = \
             HKDF(salt = 0x00×32, ikm = 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3 ‖ DH4, info = \"Kabar X3DH v2\", 32); AD = \
             \"KABAR-AD-V2\" ‖ IK_A ‖ IK_B (269 bytes). base_key is EK_A's public key.",
        )
    } else {
        (
            "x3dh_without_one_time_prekey",
            "X3DH as in x3dh_with_one_time_prekey (same draws, so the same EK_A), but the bundle offers no one-time \
             prekey: there is no DH4 and ikm = 0xFF×32 ‖ DH1 ‖ DH2 ‖ DH3. AD does not depend on the prekeys.",
        )
    };
    vector(
        name,
        description,
        obj! { "one_time_prekey_offered" => with_opk, "rng_draws" => s.draws.to_json() },
        J::Obj(expected),
    )
}

const E1_TEXT: &str = "Hello, Bob";
const E2_TEXT: &str = "Hello, Alice";
const E3_TEXT: &str = "How are you?";

/// E1, E2, E3, and the rejection vectors that need a session's state.
fn exchange_vectors() -> (J, Vec<J>) {
    let mut sim = Sim::new(true);
    let mut rejections = Vec::new();
    sim.send(Who::Alice, "E1", E1_TEXT);
    sim.receive(Who::Bob, "E1");
    sim.send(Who::Bob, "E2", E2_TEXT);

    // E2 with one bit of its salt flipped, to Alice before she has E2.
    let e2 = sim.sent("E2").envelope.clone();
    let mut flipped = e2.clone();
    flipped[2 + 32 + 4 + 4] ^= 0x01;
    let mut alice = sim.alice.clone();
    let err = alice.decrypt(&Envelope::decode(&flipped).unwrap()).unwrap_err();
    assert_eq!(err, CryptoError::AuthenticationFailed);
    assert_eq!(alice.decrypt(&sim.envelope("E2")).unwrap(), E2_TEXT.as_bytes());
    rejections.push(vector(
        "reject_salt_bit_flipped",
        "E2 of session_exchange with the lowest bit of the first salt byte (envelope offset 42) flipped, delivered \
         to Alice in place of E2 (her state: she has sent E1 and received nothing). The envelope decodes, but the salt \
         is authenticated (it is part of H, and it changes the AEAD key and nonce): decryption fails and Alice's \
         session is unchanged, so the genuine E2 then still decrypts.",
        obj! {
            "stage" => "decrypt",
            "receiver" => "alice, in session_exchange after E1 was sent, before E2",
            "envelope" => hx(&flipped),
        },
        obj! { "error" => error_name(&err), "session_unchanged" => true },
    ));

    sim.receive(Who::Alice, "E2");
    sim.send(Who::Alice, "E3", E3_TEXT);

    // E3's plaintext padded to the next bucket (72 bytes instead of 64),
    // encrypted correctly under E3's key: the padding check must refuse it.
    let e3 = sim.sent("E3");
    let h = e3.envelope[..e3.header_len].to_vec();
    let padded = pad_to(E3_TEXT.as_bytes(), 72);
    let ad = sim.model_alice.ad.clone();
    let ciphertext = chacha_seal(&e3.aead_key, &e3.aead_nonce, &message_ad(&ad, &h), &padded);
    let mut wrong_bucket = h.clone();
    wrong_bucket.extend_from_slice(&u32::try_from(ciphertext.len()).unwrap().to_be_bytes());
    wrong_bucket.extend_from_slice(&ciphertext);
    let mut bob = sim.bob.clone().unwrap();
    let err = bob.decrypt(&Envelope::decode(&wrong_bucket).unwrap()).unwrap_err();
    assert_eq!(err, CryptoError::BadPadding);
    assert_eq!(bob.decrypt(&sim.envelope("E3")).unwrap(), E3_TEXT.as_bytes());
    rejections.push(vector(
        "reject_padding_wrong_bucket_in_message",
        "E3 of session_exchange re-encrypted with the same header H, AEAD key and nonce, but its 12-byte plaintext \
         padded to 72 bytes (the next bucket) instead of padded_len(12) = 64. The AEAD opens; the padding check \
         (len(padded) must equal padded_len(len(plaintext))) refuses it, and Bob's session is unchanged (the \
         genuine E3 then decrypts).",
        obj! {
            "stage" => "decrypt",
            "receiver" => "bob, in session_exchange after E2 was sent, before E3",
            "padded_plaintext" => hx(&padded),
            "aead_key" => hx(&e3.aead_key),
            "aead_nonce" => hx(&e3.aead_nonce),
            "envelope" => hx(&wrong_bucket),
        },
        obj! { "error" => error_name(&err), "session_unchanged" => true },
    ));

    sim.receive(Who::Bob, "E3");

    // E3 again, after Bob decrypted it.
    let mut bob = sim.bob.clone().unwrap();
    let err = bob.decrypt(&sim.envelope("E3")).unwrap_err();
    assert_eq!(err, CryptoError::MessageKeyGone);
    rejections.push(vector(
        "reject_replayed_message",
        "E3 of session_exchange delivered to Bob a second time, after he decrypted it: its message key was used and \
         deleted. (The caller tells a duplicate from a lost message by the message id.)",
        obj! {
            "stage" => "decrypt",
            "receiver" => "bob, at the end of session_exchange",
            "envelope" => hx(&sim.sent("E3").envelope),
        },
        obj! { "error" => error_name(&err) },
    ));

    // Decoding errors, made from E1 and E2.
    let e1 = sim.sent("E1").envelope.clone();
    let decode_cases = [
        (
            "reject_version_1",
            "E2 of session_exchange with its version byte set to 0x01: version 1 is no longer accepted.",
            [&[1u8][..], &e2[1..]].concat(),
            DecodeError::UnsupportedVersion(1),
        ),
        (
            "reject_unknown_type",
            "E2 of session_exchange with its type byte set to 0x09.",
            [&e2[..1], &[9u8][..], &e2[2..]].concat(),
            DecodeError::UnknownType(9),
        ),
        (
            "reject_invalid_flag",
            "E1 of session_exchange with has_one_time_prekey (offset 167) set to 0x02.",
            [&e1[..167], &[2u8][..], &e1[168..]].concat(),
            DecodeError::InvalidFlag(2),
        ),
        (
            "reject_ciphertext_length_too_small",
            "E2 of session_exchange with its ciphertext length field set to 79 (the minimum is 64 + 16 = 80) and the \
             ciphertext cut to 79 bytes.",
            [&e2[..58], &79u32.to_be_bytes()[..], &e2[62..62 + 79]].concat(),
            DecodeError::BadCiphertextLength(79),
        ),
        (
            "reject_ciphertext_length_off_the_buckets",
            "E2 of session_exchange with its ciphertext length field set to 81 and one 0x00 byte appended to its \
             80-byte ciphertext: 81 − 16 = 65 is not a padding bucket (padded_len(64) = 72), so the decoder refuses \
             it before any decryption.",
            [&e2[..58], &81u32.to_be_bytes()[..], &e2[62..], &[0u8][..]].concat(),
            DecodeError::BadCiphertextLength(81),
        ),
        (
            "reject_truncated",
            "E2 of session_exchange without its last byte.",
            e2[..e2.len() - 1].to_vec(),
            DecodeError::Truncated { needed: 1 },
        ),
        (
            "reject_trailing_byte",
            "E2 of session_exchange followed by one 0x00 byte.",
            [&e2[..], &[0u8][..]].concat(),
            DecodeError::TrailingBytes(1),
        ),
    ];
    for (name, description, bytes, want) in decode_cases {
        let err = Envelope::decode(&bytes).unwrap_err();
        assert_eq!(err, want, "{name}");
        rejections.push(vector(
            name,
            description,
            obj! { "stage" => "decode", "envelope" => hx(&bytes) },
            obj! { "error" => error_name(&err) },
        ));
    }

    let exchange = sim.finish(
        "session_exchange",
        "A full exchange: Alice initiates with Bob's bundle including the one-time prekey (id 100) and sends E1, a \
         prekey message (type 2); Bob answers with E2 and Alice with E3 (type 1). The script is run in order; \
         rng_draws says which draw is which key or salt. ratchet_steps lists every KDF_RK in order: dh = DH(our \
         ratchet secret, their ratchet key), (root_key_out, chain_key) = KDF_RK(root_key_in, dh); a sending step \
         starts the party's sending chain, a receiving step its receiving chain. For each message: chain_key is the \
         chain key it was derived from, message_key = HMAC-SHA256(chain_key, 0x01) (the next chain key is \
         HMAC-SHA256(chain_key, 0x02)), (aead_key, aead_nonce) = \
         HKDF(salt = salt, ikm = message_key, info = \"Kabar Double Ratchet v2 message\", 44), the AEAD associated \
         data is AD ‖ u16 BE(len(H)) ‖ H with H = authenticated_header, and envelope = H ‖ u32 BE(ciphertext_length) \
         ‖ ciphertext.",
    );
    (exchange, rejections)
}

fn without_opk_vector() -> J {
    let mut sim = Sim::new(false);
    sim.send(Who::Alice, "E1", E1_TEXT);
    sim.receive(Who::Bob, "E1");
    sim.send(Who::Bob, "E2", E2_TEXT);
    sim.receive(Who::Alice, "E2");
    sim.finish(
        "session_without_one_time_prekey",
        "As session_exchange, but Bob's bundle offers no one-time prekey: E1 is a prekey message with \
         has_one_time_prekey = 0x00 and no one_time_prekey_id, and SK is that of x3dh_without_one_time_prekey. The \
         one-time prekey is still drawn (draw 2) so the later draws keep their numbers. Fields as in \
         session_exchange.",
    )
}

fn out_of_order_vector() -> J {
    let mut sim = Sim::new(true);
    sim.send(Who::Alice, "E1", E1_TEXT);
    sim.receive(Who::Bob, "E1");
    sim.send(Who::Bob, "E2", E2_TEXT);
    sim.receive(Who::Alice, "E2");
    sim.send(Who::Alice, "M0", "first");
    sim.send(Who::Alice, "M1", "second");
    sim.send(Who::Alice, "M2", "third");
    sim.receive(Who::Bob, "M2");
    sim.receive(Who::Bob, "M0");
    sim.receive(Who::Bob, "M1");
    sim.finish(
        "session_out_of_order",
        "Skipped message keys within one chain. After E1 and E2 (as in session_exchange), Alice sends M0, M1, M2 in \
         her second sending chain (N = 0, 1, 2). Bob receives M2 first: a new ratchet key, so he runs the receiving \
         ratchet step, stores the keys of N = 0 and 1 as skipped, and decrypts M2; then M0 and M1 decrypt with the \
         stored keys, which are deleted. decryptions are in arrival order; skipped_keys_held is how many skipped \
         keys Bob holds after each. Fields as in session_exchange.",
    )
}

fn previous_chain_vector() -> J {
    let mut sim = Sim::new(true);
    sim.send(Who::Alice, "E1", E1_TEXT);
    sim.receive(Who::Bob, "E1");
    sim.send(Who::Bob, "E2", E2_TEXT);
    sim.receive(Who::Alice, "E2");
    sim.send(Who::Alice, "A0", "a0");
    sim.send(Who::Alice, "A1", "a1");
    sim.send(Who::Alice, "A2", "a2");
    sim.receive(Who::Bob, "A0");
    sim.send(Who::Bob, "B0", "b0");
    sim.receive(Who::Alice, "B0");
    sim.send(Who::Alice, "A3", "a3");
    sim.receive(Who::Bob, "A3");
    sim.receive(Who::Bob, "A1");
    sim.receive(Who::Bob, "A2");
    assert_eq!(parse(&sim.sent("A3").envelope).pn, 3);
    sim.finish(
        "session_previous_chain_skip",
        "PN > 0 with a gap in the previous chain. After E1 and E2, Alice sends A0, A1, A2 in her second chain; Bob \
         receives only A0 and replies B0 (his new chain, PN = 1). Alice receives B0 and sends A3 in her third chain, \
         whose header carries PN = 3 (her second chain had 3 messages). On A3, Bob first stores the keys of his \
         current receiving chain up to PN (N = 1 and 2: A1, A2), then runs the receiving ratchet step and decrypts \
         A3. The late A1 and A2 of the old chain then decrypt with the stored keys. Fields as in session_exchange.",
    )
}

const HUNDRED: &str =
    "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";

fn padding_envelope_vector() -> J {
    assert_eq!(HUNDRED.len(), 100);
    let mut sim = Sim::new(true);
    sim.send(Who::Alice, "E1", E1_TEXT);
    sim.receive(Who::Bob, "E1");
    sim.send(Who::Bob, "E2", E2_TEXT);
    sim.receive(Who::Alice, "E2");
    sim.send(Who::Alice, "P", HUNDRED);
    sim.receive(Who::Bob, "P");
    assert_eq!(sim.envelope("P").ciphertext.len(), 104 + 16);
    sim.finish(
        "session_padding_100_bytes",
        "A message above the 64-byte minimum: after E1 and E2, Alice sends P, a 100-byte plaintext (\"0123456789\" \
         ten times). padded_len(100) = 104 (101 rounded up to a multiple of 8), so the ciphertext is 104 + 16 = 120 \
         bytes. Fields as in session_exchange.",
    )
}

fn padding_table_vector() -> J {
    let lengths =
        [0usize, 1, 10, 62, 63, 64, 65, 100, 127, 128, 255, 256, 1000, 1023, 1024, 1025, 4096, 16384, 65535, 65536];
    let mut padded = Vec::new();
    for &n in &lengths {
        assert_eq!(padded_len(n), model_padded_len(n), "padded_len({n})");
        let p = envelope::pad(&vec![0x41; n]).unwrap();
        assert_eq!(p, pad_to(&vec![0x41; n], model_padded_len(n)));
        padded.push(J::from(p.len()));
    }
    // Spot values from the brief and the document.
    assert_eq!([padded_len(64), padded_len(100), padded_len(1024)], [72, 104, 1088]);
    vector(
        "padding_lengths",
        "padded_len(n) (docs/protocol.md §5, Padmé) for plaintext lengths n: L = n + 1; 64 if L ≤ 64; else with E = \
         floor(log2 L), S = floor(log2 E) + 1, m = 2^(E − S) − 1: (L + m) & ~m. The padded plaintext is plaintext ‖ \
         0x80 ‖ 0x00 × (padded_len(n) − n − 1). A receiver strips the trailing 0x00 bytes and one 0x80 and refuses \
         the message unless the padded length equals padded_len of what remains.",
        obj! { "plaintext_lengths" => lengths.iter().map(|&n| J::from(n)).collect::<Vec<_>>() },
        obj! { "padded_lengths" => padded },
    )
}

fn message_id_vector(exchange: &Value) -> J {
    let e2 = &exchange["expected"]["messages"][1];
    assert_eq!(e2["message"], "E2");
    let envelope = kabar_crypto::hex::decode(e2["envelope"].as_str().unwrap()).unwrap();
    let decoded = Envelope::decode(&envelope).unwrap();
    assert!(decoded.prekey.is_none());
    let id = decoded.message_id();
    vector(
        "message_id_type_1",
        "The message id of E2 of session_exchange, an ordinary message (type 1): ratchet_key[0..8] ‖ N (u32 BE) ‖ \
         salt[0..4], 16 bytes, shown as 32 lower-case hex digits. (E1's id, of a prekey message, is computed the \
         same way from its ratchet header; see session_exchange.)",
        obj! {
            "envelope" => hx(&envelope),
            "ratchet_key" => hx(&decoded.header.ratchet_key),
            "n" => decoded.header.counter,
            "salt" => hx(&decoded.header.salt),
        },
        obj! { "message_id" => id.to_string() },
    )
}

fn safety_vector() -> J {
    let alice = IdentityKeyPair::from_secrets(ProfileKind::Personal, &ALICE_SEED, &ALICE_DH).public();
    let bob = IdentityKeyPair::from_secrets(ProfileKind::Business, &BOB_SEED, &BOB_DH).public();
    let (fa, fb) = (fingerprint(&alice), fingerprint(&bob));
    let (da, db) = (fingerprint_digits(&fa), fingerprint_digits(&fb));
    let digits = if da <= db { da + &db } else { db + &da };
    let at_alice = SafetyNumber::new(&alice, &bob);
    let at_bob = SafetyNumber::new(&bob, &alice);
    assert_eq!(at_alice.digits(), digits);
    assert_eq!(at_bob.digits(), digits);
    let display: Vec<&str> = (0..12).map(|i| &digits[i * 5..i * 5 + 5]).collect();
    let display = display.join(" ");
    assert_eq!(at_alice.display(), display);
    let qr_alice = format!("{QR_PREFIX}{}{}", encode(&fa), encode(&fb));
    let qr_bob = format!("{QR_PREFIX}{}{}", encode(&fb), encode(&fa));
    assert_eq!(at_alice.qr_payload(), qr_alice);
    assert_eq!(at_bob.qr_payload(), qr_bob);
    assert!(at_alice.matches_scanned(&qr_bob).unwrap());
    assert!(!at_alice.matches_scanned(&qr_alice).unwrap());
    vector(
        "safety_number",
        "Safety number of Alice and Bob (docs/protocol.md §7). For each public identity key (129 bytes): h = \
         SHA-512(u16 BE 0 ‖ key ‖ \"Kabar safety number v1\"), then 5,200 times h = SHA-512(h ‖ key); fingerprint = \
         h[0..32]; its 30 digits are, for i in 0..6, the 5-byte big-endian integer fingerprint[5i..5i+5] mod 100000 \
         as 5 decimal digits. The safety number is the two 30-digit strings, the smaller first; display groups it by \
         five. The QR payload a side shows is \"kabar-safety:1:\" ‖ hex(own fingerprint) ‖ hex(contact's \
         fingerprint); a scanner accepts it only if the first fingerprint is its contact's and the second its own.",
        obj! { "alice_public_identity" => hx(&alice.to_bytes()), "bob_public_identity" => hx(&bob.to_bytes()) },
        obj! {
            "alice_fingerprint" => hx(&fa),
            "bob_fingerprint" => hx(&fb),
            "safety_number" => digits,
            "display" => display,
            "qr_payload_shown_by_alice" => qr_alice,
            "qr_payload_shown_by_bob" => qr_bob,
        },
    )
}

/// Group order L, little-endian.
const L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn signature_rejection_vectors() -> Vec<J> {
    let alice = IdentityKeyPair::from_secrets(ProfileKind::Personal, &ALICE_SEED, &ALICE_DH).public();
    let identity_input = signing_input("identity-key", &[&[alice.kind.to_byte()][..], &alice.dh].concat());
    // R = the identity point (y = 1), S = 0.
    let mut neutral_signature = [0u8; 64];
    neutral_signature[0] = 1;
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    // y = 1 + p: the identity point, encoded non-canonically.
    let mut one_plus_p = [0xffu8; 32];
    one_plus_p[0] = 0xee;
    one_plus_p[31] = 0x7f;
    // Alice's signature with S + L.
    let mut high_s = alice.dh_signature;
    let mut carry = 0u16;
    for (i, l) in L.iter().enumerate() {
        let sum = u16::from(high_s[32 + i]) + u16::from(*l) + carry;
        high_s[32 + i] = sum.to_le_bytes()[0];
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);

    let cases = [
        (
            "reject_identity_small_order_key",
            "Alice's public identity with its Ed25519 key replaced by the identity point (y = 1: 0x01 ‖ 0x00×31) and \
             its signature by R = the identity point, S = 0. A lax verifier (RFC 8032 cofactorless check without key \
             checks) accepts this for any message, since [0]B = I + [k]I; the protocol requires rejecting a \
             small-order key.",
            identity_point,
            neutral_signature,
            CryptoError::InvalidSigningKey,
        ),
        (
            "reject_identity_non_canonical_key",
            "As reject_identity_small_order_key, but the key is the non-canonical encoding y + p of the same point \
             (y = 1 + p: 0xee ‖ 0xff×30 ‖ 0x7f). A key whose encoded y is ≥ p = 2^255 − 19 must be rejected before \
             anything else.",
            one_plus_p,
            neutral_signature,
            CryptoError::InvalidSigningKey,
        ),
        (
            "reject_identity_signature_s_plus_l",
            "Alice's public identity with S (the last 32 bytes of the signature, little-endian) replaced by S + L, \
             L = 2^252 + 27742317777372353535851937790883648493. A verifier that reduces S mod L accepts it; S ≥ L \
             must be rejected.",
            alice.signing,
            high_s,
            CryptoError::BadSignature("identity-key"),
        ),
    ];
    let mut out = Vec::new();
    for (name, description, key, signature, want) in cases {
        let forged = IdentityPublic { signing: key, dh_signature: signature, ..alice };
        let bytes = forged.to_bytes();
        let err = IdentityPublic::from_bytes(&bytes).unwrap().verify().unwrap_err();
        assert_eq!(err, want, "{name}");
        if signature == neutral_signature {
            // ed25519-dalek's non-strict verification accepts these: the
            // vectors test exactly what strict verification adds.
            let lax = VerifyingKey::from_bytes(&key).unwrap();
            lax.verify(&identity_input, &Signature::from_bytes(&signature)).unwrap();
        }
        out.push(vector(
            name,
            description,
            obj! { "stage" => "verify public identity", "public_identity" => hx(&bytes) },
            obj! { "error" => error_name(&err) },
        ));
    }
    out
}

fn unpad_rejection_vectors() -> Vec<J> {
    let text = b"0123456789";
    let cases = [
        (
            "reject_padding_next_bucket",
            "A decrypted padded plaintext: 10 bytes ‖ 0x80 padded with 0x00 to 72 bytes, the bucket after \
             padded_len(10) = 64. Stripping gives a valid-looking 10-byte text, but 72 ≠ padded_len(10): refused.",
            pad_to(text, 72),
        ),
        (
            "reject_padding_short",
            "10 bytes ‖ 0x80 padded with 0x00 to 63 bytes: shorter than padded_len(10) = 64.",
            pad_to(text, 63),
        ),
        ("reject_padding_no_terminator", "64 bytes of 0x00: no 0x80 terminator.", vec![0; 64]),
    ];
    let mut out = Vec::new();
    for (name, description, padded) in cases {
        let err = unpad(&mut padded.clone()).unwrap_err();
        assert_eq!(err, CryptoError::BadPadding, "{name}");
        out.push(vector(
            name,
            description,
            obj! { "stage" => "unpad", "padded_plaintext" => hx(&padded) },
            obj! { "error" => error_name(&err) },
        ));
    }
    let mut good = pad_to(text, 64);
    unpad(&mut good).unwrap();
    assert_eq!(good, text);
    out
}

fn constants() -> J {
    assert_eq!(kabar_crypto::envelope::ENVELOPE_VERSION, ENVELOPE_VERSION);
    assert_eq!(kabar_crypto::envelope::TYPE_MESSAGE, TYPE_MESSAGE);
    assert_eq!(kabar_crypto::envelope::TYPE_PREKEY_MESSAGE, TYPE_PREKEY_MESSAGE);
    assert_eq!(kabar_crypto::identity::SIGNATURE_DOMAIN, SIGNATURE_PREFIX);
    assert_eq!(kabar_crypto::x3dh::X3DH_INFO, X3DH_INFO);
    assert_eq!(kabar_crypto::x3dh::AD_PREFIX, AD_PREFIX);
    assert_eq!(kabar_crypto::ratchet::ROOT_INFO, ROOT_INFO);
    assert_eq!(kabar_crypto::ratchet::MESSAGE_INFO, MESSAGE_INFO);
    assert_eq!(kabar_crypto::safety::LABEL, SAFETY_LABEL);
    assert_eq!(kabar_crypto::safety::ITERATIONS, SAFETY_ITERATIONS);
    assert_eq!(kabar_crypto::safety::QR_PREFIX, QR_PREFIX);
    assert_eq!(kabar_crypto::envelope::SALT_LEN, 16);
    assert_eq!(RatchetHeader::LEN, 56);
    let text = |b: &[u8]| J::from(std::str::from_utf8(b).unwrap());
    obj! {
        "envelope_version" => u32::from(ENVELOPE_VERSION),
        "type_message" => u32::from(TYPE_MESSAGE),
        "type_prekey_message" => u32::from(TYPE_PREKEY_MESSAGE),
        "signature_prefix" => hx(SIGNATURE_PREFIX),
        "signing_input" => "signature_prefix (\"KABAR-SIG-V1\" ‖ 0x00) ‖ label ‖ 0x00 ‖ body",
        "x3dh_info" => text(X3DH_INFO),
        "ad_prefix" => text(AD_PREFIX),
        "root_info" => text(ROOT_INFO),
        "message_info" => text(MESSAGE_INFO),
        "salt_length" => kabar_crypto::envelope::SALT_LEN,
        "ratchet_header_length" => RatchetHeader::LEN,
        "safety_label" => text(SAFETY_LABEL),
        "safety_iterations" => SAFETY_ITERATIONS,
        "qr_prefix" => QR_PREFIX,
    }
}

/// Every vector, as the JSON document.
fn compute() -> J {
    let (exchange, session_rejections) = exchange_vectors();
    let exchange_value = serde_json::to_value(&exchange).unwrap();
    let mut vectors = vec![
        identity_vector(),
        prekey_vector(),
        x3dh_vector(true),
        x3dh_vector(false),
        exchange,
        without_opk_vector(),
        out_of_order_vector(),
        previous_chain_vector(),
        padding_envelope_vector(),
        padding_table_vector(),
        message_id_vector(&exchange_value),
        safety_vector(),
    ];
    vectors.extend(session_rejections);
    vectors.extend(signature_rejection_vectors());
    vectors.extend(unpad_rejection_vectors());

    let party = |kind: &str, byte: u32, seed: &[u8], dh: &[u8]| {
        obj! { "kind" => kind, "kind_byte" => byte, "ed25519_seed" => hx(seed), "x25519_identity_secret" => hx(dh) }
    };
    obj! {
        "protocol_version" => 2u32,
        "description" => "Known-answer vectors of the Kabar protocol, version 2 (docs/protocol.md). Normative: an \
            implementation of docs/protocol.md must reproduce every expected value from the inputs. Generated and \
            checked by crypto/tests/known_answer.rs (KABAR_WRITE_VECTORS=1 rewrites this file); Appendix A of \
            docs/protocol.md quotes some of them. Conventions: byte strings are lower-case hex; integers are JSON \
            numbers; plaintexts are ASCII strings (their bytes are the plaintext); a vector whose expected value is \
            an error must be rejected at the given stage, and the error name (kabar-crypto's error variant) says \
            why. Ed25519 keys come from their 32-byte seeds as in RFC 8032; X25519 secrets are used as given (X25519 \
            clamps them, RFC 7748). Session vectors run a script of steps between Alice and Bob in order \
            (script_actions), with the random draws listed in inputs.rng_draws.",
        "rng" => obj! {
            "rule" => "Every random byte string comes from a deterministic source: draw n (n = 1, 2, 3, …, counted \
                from the start of each vector) of any length is that many bytes of value 0x10 + n. Secret keys are \
                32-byte draws, message salts 16-byte draws. Draws 1 and 2 are always Bob's signed prekey secret and \
                one-time prekey secret. Each vector that uses the source lists its draws, in order, in \
                inputs.rng_draws.",
            "example" => "draw 3 of length 32 is 0x13×32; draw 5 of length 16 is 0x15×16",
            "order_within_a_session" => "Initiating a session draws EK_A, then the initiator's first ratchet \
                secret. Encrypting draws a new ratchet secret first if the party has no sending chain (it received a \
                new ratchet key since it last sent, or it is the responder sending for the first time), then the \
                message's salt.",
        },
        "script_actions" => obj! {
            "initiate" => "Alice verifies Bob's prekey bundle (with the one-time prekey if one_time_prekey_offered), \
                runs X3DH as the initiator (§3) and sets up her initial ratchet state (§4.2). Her messages are \
                prekey messages (type 2) until she has decrypted one from Bob.",
            "encrypt" => "The party encrypts the plaintext (§4.3); the result is the envelope of that message.",
            "respond" => "Bob's first message: he runs X3DH as the responder from the envelope's prekey fields (with \
                his one-time prekey if the envelope names it), sets up his initial state (§4.2) and decrypts it.",
            "decrypt" => "The party decrypts the envelope of that message (§4.4).",
        },
        "inputs" => obj! {
            "alice" => party("personal", 0, &ALICE_SEED, &ALICE_DH),
            "bob" => party("business", 1, &BOB_SEED, &BOB_DH),
            "bob_signed_prekey" => obj! { "id" => SPK_ID, "created_at" => SPK_CREATED_AT, "secret" => "rng draw 1" },
            "bob_one_time_prekey" => obj! { "id" => OPK_ID, "secret" => "rng draw 2" },
        },
        "constants" => constants(),
        "vectors" => vectors,
    }
}

// ---------------------------------------------------------------------------
// Comparing with the file and the document.

/// The document as the code computes it: pretty JSON text in our key order,
/// and the parsed value.
struct Computed {
    text: String,
    value: Value,
}

fn computed() -> &'static Computed {
    static COMPUTED: OnceLock<Computed> = OnceLock::new();
    COMPUTED.get_or_init(|| {
        let doc = compute();
        Computed {
            text: serde_json::to_string_pretty(&doc).unwrap() + "\n",
            value: serde_json::to_value(&doc).unwrap(),
        }
    })
}

fn write_mode() -> bool {
    std::env::var("KABAR_WRITE_VECTORS").is_ok_and(|v| v == "1")
}

fn read_file() -> Value {
    let text = std::fs::read_to_string(VECTORS_FILE)
        .unwrap_or_else(|e| panic!("{VECTORS_FILE}: {e} (KABAR_WRITE_VECTORS=1 writes it)"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{VECTORS_FILE} is not valid JSON: {e}"))
}

/// Collects the paths where `file` differs from `want`.
fn diff(path: &str, want: &Value, file: &Value, out: &mut Vec<String>) {
    match (want, file) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                match b.get(k) {
                    Some(w) => diff(&format!("{path}.{k}"), v, w, out),
                    None => out.push(format!("{path}.{k}: missing from the file")),
                }
            }
            out.extend(
                b.keys().filter(|k| !a.contains_key(*k)).map(|k| format!("{path}.{k}: not computed by the code")),
            );
        }
        (Value::Array(a), Value::Array(b)) => {
            if a.len() != b.len() {
                out.push(format!("{path}: {} entries computed, {} in the file", a.len(), b.len()));
            }
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                let label = x.get("name").or_else(|| x.get("message")).and_then(Value::as_str);
                let p = match label {
                    Some(l) => format!("{path}[{i}: {l}]"),
                    None => format!("{path}[{i}]"),
                };
                diff(&p, x, y, out);
            }
        }
        _ if want == file => {}
        _ => out.push(format!("{path}: code says {want}, file says {file}")),
    }
}

#[test]
fn vectors_file_matches_the_code() {
    let want = computed();
    if write_mode() {
        let tmp = PathBuf::from(format!("{VECTORS_FILE}.tmp"));
        std::fs::write(&tmp, &want.text).unwrap();
        std::fs::rename(&tmp, VECTORS_FILE).unwrap();
        eprintln!("wrote {VECTORS_FILE}");
    }
    let file = read_file();
    let mut differences = Vec::new();
    diff("", &want.value, &file, &mut differences);
    assert!(
        differences.is_empty(),
        "docs/protocol-v2-vectors.json does not match the code ({} differences):\n{}\n\
         If the change is intended it is a protocol change: rerun with KABAR_WRITE_VECTORS=1 and update Appendix A.",
        differences.len(),
        differences.iter().take(20).cloned().collect::<Vec<_>>().join("\n"),
    );
    // Also as text, so the file stays exactly as the code writes it.
    let text = std::fs::read_to_string(VECTORS_FILE).unwrap().replace("\r\n", "\n");
    assert!(
        text == want.text,
        "docs/protocol-v2-vectors.json is not formatted as written; rerun with KABAR_WRITE_VECTORS=1"
    );
}

/// The values Appendix A quotes, by (vector, JSON pointer).
const QUOTED: &[(&str, &str, &str)] = &[
    ("Alice public identity", "identities", "/expected/alice/public_identity"),
    ("Bob public identity", "identities", "/expected/bob/public_identity"),
    ("Bob signed-prekey signature", "bob_prekeys", "/expected/signed_prekey_signature"),
    ("SK with one-time prekey", "x3dh_with_one_time_prekey", "/expected/sk"),
    ("AD", "x3dh_with_one_time_prekey", "/expected/ad"),
    ("SK without one-time prekey", "x3dh_without_one_time_prekey", "/expected/sk"),
    ("AD (without one-time prekey)", "x3dh_without_one_time_prekey", "/expected/ad"),
    ("E1 envelope", "session_exchange", "/expected/messages/0/envelope"),
    ("E1 message id", "session_exchange", "/expected/messages/0/message_id"),
    ("E2 envelope", "session_exchange", "/expected/messages/1/envelope"),
    ("E2 message id", "session_exchange", "/expected/messages/1/message_id"),
    ("E3 envelope", "session_exchange", "/expected/messages/2/envelope"),
    ("safety number", "safety_number", "/expected/safety_number"),
];

fn quoted_values(doc: &Value) -> Vec<(&'static str, String)> {
    QUOTED
        .iter()
        .map(|(label, name, pointer)| {
            let vector = doc["vectors"].as_array().unwrap().iter().find(|v| v["name"] == *name).unwrap();
            let value = vector.pointer(pointer).and_then(Value::as_str).unwrap_or_else(|| panic!("{name}{pointer}"));
            (*label, value.to_owned())
        })
        .collect()
}

fn wrapped(value: &str) -> String {
    value.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n")
}

#[test]
fn appendix_a_quotes_the_vectors() {
    let quoted = quoted_values(&computed().value);
    if !write_mode() {
        assert_eq!(quoted_values(&read_file()), quoted, "docs/protocol-v2-vectors.json is stale");
    }
    let doc = std::fs::read_to_string(PROTOCOL_MD).unwrap();
    let start = doc.find(APPENDIX_HEADING).expect("docs/protocol.md has no Appendix A");
    let rest = &doc[start + APPENDIX_HEADING.len()..];
    let section = &rest[..rest.find("\n## ").unwrap_or(rest.len())];
    for (label, value) in &quoted {
        assert!(section.contains(&format!("```\n{}\n```", wrapped(value))), "Appendix A lacks the {label}: {value}");
    }
    // Every hex block in the appendix is one of them: no stale values.
    let blocks: Vec<&str> = section.split("```").skip(1).step_by(2).collect();
    for block in blocks {
        let joined: String = block.split_whitespace().collect();
        if !joined.is_empty() && joined.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()) {
            assert!(quoted.iter().any(|(_, v)| *v == joined), "Appendix A quotes a value not in the vectors: {joined}");
        }
    }
}
