//! `kabar demo`: two identities talk end to end through kabar-crypto, in
//! this process, with no network.

use anyhow::{Context, Result, bail};
use kabar_crypto::{
    CryptoError, Envelope, IdentityKeyPair, OneTimePrekey, PrekeyBundle, ProfileKind, SafetyNumber, Session,
    SignedPrekey,
};

use crate::out::outln;

/// Sends `envelope` "over the wire": encode, then decode as the receiver would.
fn transmit(envelope: &Envelope) -> Result<Envelope> {
    let bytes = envelope.encode();
    Envelope::decode(&bytes).context("decoding an envelope we just encoded")
}

/// Runs the demo with `messages` exchanges.
pub(crate) fn run(messages: u32) -> Result<()> {
    let mut rng = rand::rng();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);

    let customer = IdentityKeyPair::generate(ProfileKind::Personal, &mut rng);
    let shop = IdentityKeyPair::generate(ProfileKind::Business, &mut rng);
    let spk = SignedPrekey::generate(&shop, 1, now, &mut rng);
    let opk = OneTimePrekey::generate_batch(1, 1, &mut rng).remove(0);
    let bundle =
        PrekeyBundle { identity: shop.public(), signed_prekey: spk.public(), one_time_prekey: Some(opk.public()) };
    outln!("customer  (personal)  identity {}", kabar_crypto::hex::encode(&customer.public().signing))?;
    outln!("shop      (business)  identity {}", kabar_crypto::hex::encode(&shop.public().signing))?;

    // X3DH from the shop's bundle, then the first message.
    let mut customer_session = Session::initiate(&customer, &bundle, &mut rng)?;
    let first = customer_session.encrypt(b"Hello! Do you have sourdough today?", &mut rng)?;
    outln!("\ncustomer -> shop   prekey message, {} bytes on the wire", first.encoded_len())?;
    let (mut shop_session, text) = Session::respond(&shop, &spk, Some(&opk), &transmit(&first)?)?;
    outln!("shop reads          {:?}", String::from_utf8_lossy(&text))?;

    let mut sent = 1u32;
    for i in 0..messages {
        let reply = format!("Yes, {} loaves left (reply {}).", 12 - (i % 12), i + 1);
        let env = shop_session.encrypt(reply.as_bytes(), &mut rng)?;
        let text = customer_session.decrypt(&transmit(&env)?)?;
        outln!("shop -> customer   {:?} ({} bytes)", String::from_utf8_lossy(&text), env.encoded_len())?;
        let order = format!("I'll take {}.", i + 1);
        let env = customer_session.encrypt(order.as_bytes(), &mut rng)?;
        let text = shop_session.decrypt(&transmit(&env)?)?;
        outln!("customer -> shop   {:?} ({} bytes)", String::from_utf8_lossy(&text), env.encoded_len())?;
        sent += 2;
    }

    // A tampered message is rejected and changes nothing.
    let mut tampered = customer_session.encrypt(b"Pay 10 EUR", &mut rng)?;
    let genuine = tampered.clone();
    if let Some(byte) = tampered.ciphertext.first_mut() {
        *byte ^= 1;
    }
    match shop_session.decrypt(&tampered) {
        Err(CryptoError::AuthenticationFailed) => outln!("\ntampered message   rejected (authentication failed)")?,
        other => bail!("a tampered message was not rejected: {other:?}"),
    }
    shop_session.decrypt(&genuine)?;
    match shop_session.decrypt(&genuine) {
        Err(CryptoError::MessageKeyGone) => outln!("replayed message   rejected (key already used)")?,
        other => bail!("a replayed message was not rejected: {other:?}"),
    }

    let safety = SafetyNumber::new(&customer.public(), &shop.public());
    outln!("\nsafety number (both sides see the same):\n  {}", safety.display())?;
    outln!("\n{} messages exchanged end to end, {} rejected as expected.", sent + 1, 2)?;
    Ok(())
}
