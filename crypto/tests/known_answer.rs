//! Known-answer vectors for docs/protocol.md, Appendix A: fixed secrets and a
//! deterministic random source, so a second implementation can check itself
//! byte for byte. Any change to a constant here is a protocol change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stdout, missing_docs)]

use std::convert::Infallible;

use kabar_crypto::hex::encode;
use kabar_crypto::*;

/// The n-th draw (n = 1, 2, …) of any length is bytes of value 0x10 + n.
#[derive(Clone)]
struct KatRng(u8);

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
        self.0 += 1;
        dst.fill(0x10 + self.0);
        Ok(())
    }
}
impl rand_core::TryCryptoRng for KatRng {}

struct Kat {
    alice_identity: String,
    bob_identity: String,
    bob_signed_prekey_signature: String,
    sk: String,
    ad: String,
    e1: String,
    e2: String,
    e3: String,
    e1_id: String,
    safety: String,
}

fn compute() -> Kat {
    let alice = IdentityKeyPair::from_secrets(ProfileKind::Personal, &[0x01; 32], &[0x02; 32]);
    let bob = IdentityKeyPair::from_secrets(ProfileKind::Business, &[0x03; 32], &[0x04; 32]);
    let mut rng = KatRng(0);
    let spk = SignedPrekey::generate(&bob, 1, 1_700_000_000, &mut rng); // draw 1
    let opk = OneTimePrekey::generate_batch(100, 1, &mut rng).remove(0); // draw 2
    let bundle =
        PrekeyBundle { identity: bob.public(), signed_prekey: spk.public(), one_time_prekey: Some(opk.public()) };

    let (x3dh, _) = kabar_crypto::x3dh::initiate(&alice, &bundle, &mut rng.clone()).unwrap();
    let mut a = Session::initiate(&alice, &bundle, &mut rng).unwrap(); // draws 3 (EK_A), 4 (A's DHs)
    let e1 = a.encrypt(b"Hello, Bob", &mut rng).unwrap();
    let (mut b, text) = Session::respond(&bob, &spk, Some(&opk), &e1).unwrap();
    assert_eq!(text, b"Hello, Bob");
    let e2 = b.encrypt(b"Hello, Alice", &mut rng).unwrap(); // draw 5 (B's new DHs)
    assert_eq!(a.decrypt(&e2).unwrap(), b"Hello, Alice");
    let e3 = a.encrypt(b"How are you?", &mut rng).unwrap(); // draw 6 (A's new DHs)
    assert_eq!(b.decrypt(&e3).unwrap(), b"How are you?");

    Kat {
        alice_identity: encode(&alice.public().to_bytes()),
        bob_identity: encode(&bob.public().to_bytes()),
        bob_signed_prekey_signature: encode(&spk.public().signature),
        sk: encode(x3dh.shared_secret.as_ref()),
        ad: encode(&x3dh.associated_data),
        e1: encode(&e1.encode()),
        e2: encode(&e2.encode()),
        e3: encode(&e3.encode()),
        e1_id: e1.message_id().to_string(),
        safety: SafetyNumber::new(&alice.public(), &bob.public()).digits(),
    }
}

const ALICE_IDENTITY: &str = "008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5cce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59136b0969d3ecd6fe3e34fe19534b43f58889e639e9939e1b926408046a472aeec171da5f3343e1e2d975d6cd0a39ae2e9789f4db2d0a438da16b98d11aa06c06";
const BOB_IDENTITY: &str = "01ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10be7eb7d1fcf339582b9769be5f3c4373a218ac2a53d5f74c44de15fed9accd0fae753ef281dc4a7e2938921af6e87b9724e1d3053c5b285082b3b153a18846209";
const BOB_SIGNED_PREKEY_SIGNATURE: &str = "c13aff4bd1f6308fa67c9181718456b53efab4309c89862fe9a1bf176486ab79641789d60bf88b6f5206cff7908f75d266e5f443f5fa437af400ba3771e4c200";
const SK: &str = "1fbeca5bb99971a2637ee9dc7e8e4fedcc0c37e2849a3858a9e845cedc0028ae";
const AD: &str = "4b414241522d41442d5631008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5cce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59136b0969d3ecd6fe3e34fe19534b43f58889e639e9939e1b926408046a472aeec171da5f3343e1e2d975d6cd0a39ae2e9789f4db2d0a438da16b98d11aa06c0601ed4928c628d1c2c6eae90338905995612959273a5c63f93636c14614ac8737d1ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10be7eb7d1fcf339582b9769be5f3c4373a218ac2a53d5f74c44de15fed9accd0fae753ef281dc4a7e2938921af6e87b9724e1d3053c5b285082b3b153a18846209";
const E1: &str = "0102008a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5cce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59136b0969d3ecd6fe3e34fe19534b43f58889e639e9939e1b926408046a472aeec171da5f3343e1e2d975d6cd0a39ae2e9789f4db2d0a438da16b98d11aa06c06197fc2c567dc03ee2aadf0ed86681dac24daa76e83ca555875dd3be7376e530600000001010000006418a6f8c1a7fddf22bd410138f79f7298cd38d1d0a542d4266d556be8609d88620000000000000000000000507bd1bb44d3da8370ea2ba20de2ebeaf13f7fe6eb92e4af5093441e10edc33cbbce68118efdbb003d1d2c05ba83d4f071e21cff7eda6169c357e79a16e5788dfd0cb5f32a0bb8bff83c4016c0186cc266";
const E2: &str = "0101bce059bf5b2ab7a91f3e863acf0c84d3ebbe04ca8490094b052b5b15afab1743000000000000000000000050dc77115475bd8d90f405c01e8a8afa8b2440a12c76f9786816bc78ba7a46e3aa06de598d31f1cf184566111f86e6570d54251d9d8f68c052172c5f219c78600f8eab113be3012a7c61b703829cfaf076";
const E3: &str = "01017f442fb4ecc9dd6cde4635881fbe2bb433b67b004935c4330d21e36f681a0e120000000100000000000000503509800c3f142d31d4c4dd1a13f89d91ac0fd1722d5633eec8fdcb9c474fb94fafed439bf17134539799856161902a335a4798a7799d527546a8e3bfb647b2026e6e84f1390dd77bb80494c581f919e2";
const E1_MESSAGE_ID: &str = "18a6f8c1a7fddf22bd41013800000000";
const SAFETY_NUMBER: &str = "009010491962732402879944303103499938715931767184292509278112";

#[test]
fn known_answers() {
    let k = compute();
    assert_eq!(k.alice_identity, ALICE_IDENTITY);
    assert_eq!(k.bob_identity, BOB_IDENTITY);
    assert_eq!(k.bob_signed_prekey_signature, BOB_SIGNED_PREKEY_SIGNATURE);
    assert_eq!(k.sk, SK);
    assert_eq!(k.ad, AD);
    assert_eq!(k.e1, E1);
    assert_eq!(k.e2, E2);
    assert_eq!(k.e3, E3);
    assert_eq!(k.e1_id, E1_MESSAGE_ID);
    assert_eq!(k.safety, SAFETY_NUMBER);
}

#[test]
fn the_vectors_in_docs_protocol_md_match() {
    let doc = include_str!("../../docs/protocol.md");
    for value in
        [ALICE_IDENTITY, BOB_IDENTITY, BOB_SIGNED_PREKEY_SIGNATURE, SK, AD, E1, E2, E3, E1_MESSAGE_ID, SAFETY_NUMBER]
    {
        let wrapped: String =
            value.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect::<Vec<_>>().join("\n");
        assert!(doc.contains(&wrapped), "docs/protocol.md lacks {value}");
    }
}
