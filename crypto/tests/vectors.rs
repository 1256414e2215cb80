//! Known-answer tests for `kabar_crypto::primitives`: RFC 7748 (X25519), RFC 8439
//! (ChaCha20-Poly1305), RFC 5869 (HKDF-SHA256), RFC 4231 (HMAC-SHA256), the XChaCha
//! draft, and the Wycheproof X25519, (X)ChaCha20-Poly1305 and HKDF-SHA256 sets.
//!
//! Every check goes through the checked wrappers the protocol actually uses, never
//! through the underlying crates, so a wrapper that mangles a salt, a nonce or the
//! low-order check fails here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout)]

use kabar_crypto::CryptoError;
use kabar_crypto::primitives::{
    KEY_LEN, NONCE_LEN, TAG_LEN, XNONCE_LEN, chacha_open, chacha_seal, hkdf_sha256, hmac_sha256, x25519, x25519_public,
    xchacha_open, xchacha_seal,
};
use wycheproof::TestResult;
use x25519_dalek::StaticSecret;

/// Decodes a hex literal of exactly `N` bytes.
fn h<const N: usize>(s: &str) -> [u8; N] {
    let v = hex::decode(s).expect("hex literal");
    v.try_into().unwrap_or_else(|v: Vec<u8>| panic!("expected {N} bytes, got {}", v.len()))
}

/// Decodes a hex literal of any length.
fn hv(s: &str) -> Vec<u8> {
    hex::decode(s).expect("hex literal")
}

/// Our X25519 wrapper with the secret built from raw (unclamped) scalar bytes.
fn dh(scalar: [u8; 32], u: &[u8; 32]) -> Result<[u8; 32], CryptoError> {
    x25519(&StaticSecret::from(scalar), u).map(|shared| *shared)
}

// ---------------------------------------------------------------------------
// RFC 7748 — X25519
// ---------------------------------------------------------------------------

/// RFC 7748 §5.2, the two single scalar × u-coordinate vectors.
#[test]
fn rfc7748_5_2_scalar_mult() {
    let vectors = [
        (
            "a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4",
            "e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c",
            "c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552",
        ),
        (
            "4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d",
            "e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493",
            "95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957",
        ),
    ];
    for (scalar, u, out) in vectors {
        assert_eq!(dh(h(scalar), &h(u)), Ok(h(out)), "scalar {scalar}");
    }
}

/// RFC 7748 §5.2, the iterated loop: k = u = 9, then `k, u = X25519(k, u), k`.
#[test]
fn rfc7748_5_2_iterated() {
    let mut nine = [0u8; 32];
    nine[0] = 9;
    let mut k = nine;
    let mut u = nine;
    let step = |k: &mut [u8; 32], u: &mut [u8; 32]| {
        let next = dh(*k, u).expect("RFC 7748 loop values are contributory");
        *u = *k;
        *k = next;
    };

    step(&mut k, &mut u);
    assert_eq!(k, h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079"), "after 1 iteration");
    for _ in 1..1_000 {
        step(&mut k, &mut u);
    }
    assert_eq!(k, h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51"), "after 1,000 iterations");
}

/// RFC 7748 §6.1, the Diffie-Hellman example: both public keys and the shared secret
/// computed from each side.
#[test]
fn rfc7748_6_1_diffie_hellman() {
    let alice_priv: [u8; 32] = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
    let alice_pub: [u8; 32] = h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    let bob_priv: [u8; 32] = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb");
    let bob_pub: [u8; 32] = h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
    let shared: [u8; 32] = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");

    assert_eq!(x25519_public(&StaticSecret::from(alice_priv)), alice_pub);
    assert_eq!(x25519_public(&StaticSecret::from(bob_priv)), bob_pub);
    assert_eq!(dh(alice_priv, &bob_pub), Ok(shared));
    assert_eq!(dh(bob_priv, &alice_pub), Ok(shared));
}

// ---------------------------------------------------------------------------
// RFC 8439 — ChaCha20-Poly1305, and the XChaCha20-Poly1305 draft
// ---------------------------------------------------------------------------

const SUNSCREEN: &[u8] = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";

/// RFC 8439 §2.8.2, the AEAD encryption example.
#[test]
fn rfc8439_2_8_2_aead() {
    let key: [u8; 32] = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce: [u8; 12] = h("070000004041424344454647");
    let aad = hv("50515253c0c1c2c3c4c5c6c7");
    let ct = hv(concat!(
        "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d6",
        "3dbea45e8ca9671282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b36",
        "92ddbd7f2d778b8c9803aee328091b58fab324e4fad675945585808b4831d7bc",
        "3ff4def08e4b7a9de576d26586cec64b6116",
    ));
    let tag = hv("1ae10b594f09e26a7e902ecbd0600691");
    let sealed = [ct, tag].concat();

    assert_eq!(chacha_seal(&key, &nonce, &aad, SUNSCREEN), sealed);
    assert_eq!(chacha_open(&key, &nonce, &aad, &sealed).as_deref(), Ok(SUNSCREEN));

    // The same message under a wrong AAD, a flipped tag bit or a flipped
    // ciphertext bit must not open.
    assert_eq!(chacha_open(&key, &nonce, &aad[1..], &sealed), Err(CryptoError::AuthenticationFailed));
    for i in [0, sealed.len() - 1] {
        let mut bad = sealed.clone();
        bad[i] ^= 0x01;
        assert_eq!(chacha_open(&key, &nonce, &aad, &bad), Err(CryptoError::AuthenticationFailed));
    }
}

/// RFC 8439 appendix A.5, the ChaCha20-Poly1305 AEAD decryption example.
#[test]
fn rfc8439_a_5_decryption() {
    let key: [u8; 32] = h("1c9240a5eb55d38af333888604f6b5f0473917c1402b80099dca5cbc207075c0");
    let nonce: [u8; 12] = h("000000000102030405060708");
    let aad = hv("f33388860000000000004e91");
    let ct = hv(concat!(
        "64a0861575861af460f062c79be643bd5e805cfd345cf389f108670ac76c8cb2",
        "4c6cfc18755d43eea09ee94e382d26b0bdb7b73c321b0100d4f03b7f355894cf",
        "332f830e710b97ce98c8a84abd0b948114ad176e008d33bd60f982b1ff37c855",
        "9797a06ef4f0ef61c186324e2b3506383606907b6a7c02b0f9f6157b53c867e4",
        "b9166c767b804d46a59b5216cde7a4e99040c5a40433225ee282a1b0a06c523e",
        "af4534d7f83fa1155b0047718cbc546a0d072b04b3564eea1b422273f548271a",
        "0bb2316053fa76991955ebd63159434ecebb4e466dae5a1073a6727627097a10",
        "49e617d91d361094fa68f0ff77987130305beaba2eda04df997b714d6c6f2c29",
        "a6ad5cb4022b02709b",
    ));
    let tag = hv("eead9d67890cbb22392336fea1851f38");
    let pt = hv(concat!(
        "496e7465726e65742d4472616674732061726520647261667420646f63756d65",
        "6e74732076616c696420666f722061206d6178696d756d206f6620736978206d",
        "6f6e74687320616e64206d617920626520757064617465642c207265706c6163",
        "65642c206f72206f62736f6c65746564206279206f7468657220646f63756d65",
        "6e747320617420616e792074696d652e20497420697320696e617070726f7072",
        "6961746520746f2075736520496e7465726e65742d4472616674732061732072",
        "65666572656e6365206d6174657269616c206f7220746f206369746520746865",
        "6d206f74686572207468616e206173202fe2809c776f726b20696e2070726f67",
        "726573732e2fe2809d",
    ));
    assert!(pt.starts_with(b"Internet-Drafts are draft documents"));
    let sealed = [ct, tag].concat();

    assert_eq!(chacha_open(&key, &nonce, &aad, &sealed), Ok(pt.clone()));
    // Sealing is deterministic, so the example also checks encryption.
    assert_eq!(chacha_seal(&key, &nonce, &aad, &pt), sealed);
}

/// draft-irtf-cfrg-xchacha-03 appendix A.3.1, the XChaCha20-Poly1305 AEAD example.
#[test]
fn xchacha_draft_a_3_1() {
    let key: [u8; 32] = h("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f");
    let nonce: [u8; 24] = h("404142434445464748494a4b4c4d4e4f5051525354555657");
    let aad = hv("50515253c0c1c2c3c4c5c6c7");
    let ct = hv(concat!(
        "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb",
        "731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452",
        "2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9",
        "21f9664c97637da9768812f615c68b13b52e",
    ));
    let tag = hv("c0875924c1c7987947deafd8780acf49");
    let sealed = [ct, tag].concat();

    assert_eq!(xchacha_seal(&key, &nonce, &aad, SUNSCREEN), sealed);
    assert_eq!(xchacha_open(&key, &nonce, &aad, &sealed).as_deref(), Ok(SUNSCREEN));
    let mut bad = sealed.clone();
    bad[0] ^= 0x80;
    assert_eq!(xchacha_open(&key, &nonce, &aad, &bad), Err(CryptoError::AuthenticationFailed));
}

// ---------------------------------------------------------------------------
// RFC 5869 — HKDF-SHA256, RFC 4231 — HMAC-SHA256
// ---------------------------------------------------------------------------

fn hkdf_vec(salt: Option<&[u8]>, ikm: &[u8], info: &[u8], len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    hkdf_sha256(salt, ikm, info, &mut out).expect("output length within bounds");
    out
}

/// RFC 5869 appendix A, test cases 1–3 (the SHA-256 ones).
#[test]
fn rfc5869_hkdf_sha256() {
    let ikm_0b = [0x0b_u8; 22];

    // A.1: basic test case.
    assert_eq!(
        hkdf_vec(Some(&hv("000102030405060708090a0b0c")), &ikm_0b, &hv("f0f1f2f3f4f5f6f7f8f9"), 42),
        hv("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865"),
        "RFC 5869 A.1",
    );

    // A.2: longer inputs and outputs.
    let ikm: Vec<u8> = (0x00..=0x4f).collect();
    let salt: Vec<u8> = (0x60..=0xaf).collect();
    let info: Vec<u8> = (0xb0..=0xff).collect();
    assert_eq!(
        hkdf_vec(Some(&salt), &ikm, &info, 82),
        hv(concat!(
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c",
            "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71",
            "cc30c58179ec3e87c14c01d5c1f3434f1d87",
        )),
        "RFC 5869 A.2",
    );

    // A.3: zero-length salt and info. An empty salt and `None` (HashLen zeros)
    // must agree, as RFC 5869 §2.2 says.
    let okm3 = hv("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
    assert_eq!(hkdf_vec(Some(&[]), &ikm_0b, &[], 42), okm3, "RFC 5869 A.3, empty salt");
    assert_eq!(hkdf_vec(None, &ikm_0b, &[], 42), okm3, "RFC 5869 A.3, no salt");

    // The documented length limit: 255 × 32 bytes is fine, one more is an error.
    let mut max = vec![0u8; 255 * 32];
    assert_eq!(hkdf_sha256(None, &ikm_0b, &[], &mut max), Ok(()));
    let mut too_long = vec![0u8; 255 * 32 + 1];
    assert_eq!(hkdf_sha256(None, &ikm_0b, &[], &mut too_long), Err(CryptoError::KdfOutputTooLong));
}

/// RFC 4231 §4.2 and §4.3, HMAC-SHA256 test cases 1 and 2.
#[test]
fn rfc4231_hmac_sha256() {
    assert_eq!(
        hmac_sha256(&[0x0b; 20], b"Hi There"),
        h::<32>("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    );
    assert_eq!(
        hmac_sha256(b"Jefe", b"what do ya want for nothing?"),
        h::<32>("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    );
}

// ---------------------------------------------------------------------------
// Wycheproof
// ---------------------------------------------------------------------------

/// Wycheproof X25519. Policy: a Valid or Acceptable case whose expected shared
/// secret is all zeros (a low-order public key) must be rejected with
/// `NonContributoryKey`; every other Valid or Acceptable case must give exactly
/// the expected secret; an Invalid case must not give it.
#[test]
fn wycheproof_x25519() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let (mut matched, mut rejected_low_order, mut invalid, mut skipped) = (0usize, 0usize, 0usize, 0usize);

    for group in &set.test_groups {
        for test in &group.tests {
            let id = test.tc_id;
            let Ok(public): Result<[u8; 32], _> = test.public_key[..].try_into() else {
                // Our API takes `&[u8; 32]`; another length cannot reach it.
                skipped += 1;
                continue;
            };
            let private: [u8; 32] = test.private_key[..]
                .try_into()
                .unwrap_or_else(|_| panic!("tc {id}: private key of {} bytes", test.private_key.len()));
            let got = dh(private, &public);

            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    if test.shared_secret.iter().all(|&b| b == 0) {
                        assert_eq!(
                            got,
                            Err(CryptoError::NonContributoryKey),
                            "tc {id} ({}, {:?}): low-order result must be rejected",
                            test.comment,
                            test.flags
                        );
                        rejected_low_order += 1;
                    } else {
                        assert_eq!(
                            got.as_ref().map(|s| &s[..]),
                            Ok(&test.shared_secret[..]),
                            "tc {id} ({}, {:?})",
                            test.comment,
                            test.flags
                        );
                        matched += 1;
                    }
                }
                TestResult::Invalid => {
                    assert!(
                        got.as_ref().map_or(true, |s| s[..] != test.shared_secret[..]),
                        "tc {id} ({}): invalid case produced the expected secret",
                        test.comment
                    );
                    invalid += 1;
                }
            }
        }
    }

    let checked = matched + rejected_low_order + invalid;
    println!(
        "wycheproof x25519: {checked} checked ({matched} matched, {rejected_low_order} low-order rejected, {invalid} invalid), {skipped} skipped"
    );
    assert_eq!(checked + skipped, set.number_of_tests);
    assert!(checked > 400, "only {checked} X25519 cases checked");
    assert!(rejected_low_order > 10, "only {rejected_low_order} low-order cases checked");
}

/// Which AEAD a Wycheproof run exercises.
#[derive(Clone, Copy, Debug)]
enum Aead {
    ChaCha,
    XChaCha,
}

impl Aead {
    fn nonce_len(self) -> usize {
        match self {
            Aead::ChaCha => NONCE_LEN,
            Aead::XChaCha => XNONCE_LEN,
        }
    }

    fn seal(self, key: &[u8; KEY_LEN], nonce: &[u8], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        match self {
            Aead::ChaCha => chacha_seal(key, &nonce.try_into().unwrap(), aad, pt),
            Aead::XChaCha => xchacha_seal(key, &nonce.try_into().unwrap(), aad, pt),
        }
    }

    fn open(self, key: &[u8; KEY_LEN], nonce: &[u8], aad: &[u8], ct: &[u8]) -> Result<Vec<u8>, CryptoError> {
        match self {
            Aead::ChaCha => chacha_open(key, &nonce.try_into().unwrap(), aad, ct),
            Aead::XChaCha => xchacha_open(key, &nonce.try_into().unwrap(), aad, ct),
        }
    }
}

/// Runs one Wycheproof AEAD set; returns (cases checked, cases skipped).
fn wycheproof_aead(name: wycheproof::aead::TestName, aead: Aead) -> (usize, usize) {
    let set = wycheproof::aead::TestSet::load(name).unwrap();
    let (mut valid, mut invalid, mut skipped) = (0usize, 0usize, 0usize);

    for group in &set.test_groups {
        for test in &group.tests {
            let id = test.tc_id;
            let ctx = format!("{aead:?} tc {id} ({}, {:?})", test.comment, test.flags);
            let key: Result<[u8; KEY_LEN], _> = test.key[..].try_into();
            let (Ok(key), true) = (key, test.nonce.len() == aead.nonce_len()) else {
                // Our types cannot express this key or nonce length; that is
                // only acceptable for cases that must be rejected anyway.
                assert_eq!(test.result, TestResult::Invalid, "{ctx}: unexpressible but not invalid");
                skipped += 1;
                continue;
            };
            let sealed = [&test.ct[..], &test.tag[..]].concat();

            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(test.tag.len(), TAG_LEN, "{ctx}: tag length");
                    assert_eq!(aead.seal(&key, &test.nonce, &test.aad, &test.pt), sealed, "{ctx}: seal");
                    assert_eq!(
                        aead.open(&key, &test.nonce, &test.aad, &sealed).as_deref(),
                        Ok(&test.pt[..]),
                        "{ctx}: open"
                    );
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert_eq!(
                        aead.open(&key, &test.nonce, &test.aad, &sealed),
                        Err(CryptoError::AuthenticationFailed),
                        "{ctx}: invalid case opened"
                    );
                    invalid += 1;
                }
            }
        }
    }

    let checked = valid + invalid;
    println!("wycheproof {aead:?}: {checked} checked ({valid} valid, {invalid} invalid), {skipped} skipped");
    assert_eq!(checked + skipped, set.number_of_tests);
    assert!(valid > 200, "only {valid} valid {aead:?} cases checked");
    assert!(invalid > 40, "only {invalid} invalid {aead:?} cases checked");
    (checked, skipped)
}

/// Wycheproof ChaCha20-Poly1305.
#[test]
fn wycheproof_chacha20_poly1305() {
    let (checked, _) = wycheproof_aead(wycheproof::aead::TestName::ChaCha20Poly1305, Aead::ChaCha);
    assert!(checked > 300, "only {checked} ChaCha20-Poly1305 cases checked");
}

/// Wycheproof XChaCha20-Poly1305.
#[test]
fn wycheproof_xchacha20_poly1305() {
    let (checked, _) = wycheproof_aead(wycheproof::aead::TestName::XChaCha20Poly1305, Aead::XChaCha);
    assert!(checked > 300, "only {checked} XChaCha20-Poly1305 cases checked");
}

/// Wycheproof HKDF-SHA256: Valid cases must produce the OKM, Invalid ones
/// (output longer than 255 × 32 bytes) must be an error.
#[test]
fn wycheproof_hkdf_sha256() {
    let set = wycheproof::hkdf::TestSet::load(wycheproof::hkdf::TestName::HkdfSha256).unwrap();
    let (mut valid, mut invalid) = (0usize, 0usize);

    for group in &set.test_groups {
        for test in &group.tests {
            let ctx = format!("tc {} ({}, {:?})", test.tc_id, test.comment, test.flags);
            let mut out = vec![0u8; test.size];
            let got = hkdf_sha256(Some(&test.salt), &test.ikm, &test.info, &mut out);
            match test.result {
                TestResult::Valid | TestResult::Acceptable => {
                    assert_eq!(got, Ok(()), "{ctx}");
                    assert_eq!(out, &test.okm[..], "{ctx}");
                    if test.salt.is_empty() {
                        // An empty salt is the zero salt `None` stands for.
                        out.fill(0);
                        assert_eq!(hkdf_sha256(None, &test.ikm, &test.info, &mut out), Ok(()), "{ctx}");
                        assert_eq!(out, &test.okm[..], "{ctx}: None salt");
                    }
                    valid += 1;
                }
                TestResult::Invalid => {
                    assert_eq!(got, Err(CryptoError::KdfOutputTooLong), "{ctx}");
                    invalid += 1;
                }
            }
        }
    }

    println!("wycheproof HKDF-SHA256: {} checked ({valid} valid, {invalid} invalid)", valid + invalid);
    assert_eq!(valid + invalid, set.number_of_tests);
    assert!(valid > 60, "only {valid} valid HKDF cases checked");
    assert!(invalid >= 1, "no invalid HKDF case checked");
}
