//! Offline delivery, on the profile's side: the deposit capabilities a
//! profile hands out for its own mailboxes, and how it checks the ones its
//! contacts hand it.
//!
//! A profile's mailbox on a service node is named by a mailbox key (an
//! Ed25519 key that is not the profile's identity, one per mailbox). Each
//! contact gets its own deposit **tag**, `HMAC-SHA256(mailbox seed,
//! "kabar-mailbox-tag-v1" ‖ contact's Ed25519 key)[..16]`, and the mailbox
//! key's signature over it (a [`Capability`]). The host accepts a deposit
//! whose capability verifies and whose tag is not revoked, and hands the tag
//! back with each envelope: the owner knows which contact deposited, the host
//! only that deposits came under the same tag. Blocking a contact revokes
//! its tag. Cards carry the **card tag** (`… ‖ "card"`), for people who
//! write first: their first envelopes are prekey messages, which name the
//! sender.

use kabar_storage::{ContactMailbox, MAX_MAILBOXES, OwnMailbox};
use serde::{Deserialize, Serialize};

use crate::mailbox::{Capability, OwnerKey};

const TAG_CONTEXT: &[u8] = b"kabar-mailbox-tag-v1";

/// The deposit tag of `who` (a contact's Ed25519 key, or `b"card"`) in the
/// mailbox whose key seed is `seed`.
pub fn tag(seed: &[u8; 32], who: &[u8]) -> [u8; 16] {
    let mut data = Vec::with_capacity(TAG_CONTEXT.len() + who.len());
    data.extend_from_slice(TAG_CONTEXT);
    data.extend_from_slice(who);
    let mac = kabar_crypto::primitives::hmac_sha256(seed, &data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac[..16]);
    out
}

/// The tag cards carry.
pub fn card_tag(seed: &[u8; 32]) -> [u8; 16] {
    tag(seed, b"card")
}

/// What we tell a contact (or put on a card) about one of our mailboxes.
pub fn offer(own: &OwnMailbox, tag: [u8; 16]) -> ContactMailbox {
    let cap = OwnerKey::from_bytes(&own.key).capability(tag);
    ContactMailbox {
        address: own.address.clone(),
        mailbox: cap.mailbox,
        tag: cap.tag,
        signature: cap.signature.to_vec(),
    }
}

/// The capability to deposit into a contact's mailbox, if its signature is
/// well formed.
pub fn capability(m: &ContactMailbox) -> Option<Capability> {
    let signature: [u8; 64] = m.signature.as_slice().try_into().ok()?;
    Some(Capability { mailbox: m.mailbox, tag: m.tag, signature })
}

/// A hash of our set of mailboxes (zero for none): a contact whose `told`
/// marker differs has not heard of the current set.
pub fn set_hash(own: &[OwnMailbox]) -> [u8; 16] {
    if own.is_empty() {
        return [0; 16];
    }
    let mut data = Vec::new();
    for m in own {
        data.extend_from_slice(&OwnerKey::from_bytes(&m.key).mailbox_id());
        data.extend_from_slice(m.address.as_bytes());
        data.push(0);
    }
    let mac = kabar_crypto::primitives::hmac_sha256(b"kabar-mailbox-set-v1", &data);
    let mut out = [0u8; 16];
    out.copy_from_slice(&mac[..16]);
    out
}

/// One mailbox as it travels inside the end-to-end session (the
/// `mailboxes` content) — hex fields, so the content stays JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxOffer {
    /// The service node: a multiaddr ending in `/p2p/<PeerId>`.
    pub address: String,
    /// The mailbox id (32 bytes, hex).
    pub mailbox: String,
    /// The recipient's deposit tag (16 bytes, hex).
    pub tag: String,
    /// The mailbox key's signature over mailbox id and tag (64 bytes, hex).
    pub signature: String,
}

impl MailboxOffer {
    /// From the stored form.
    pub fn from_stored(m: &ContactMailbox) -> Self {
        let hex = kabar_crypto::hex::encode;
        MailboxOffer {
            address: m.address.clone(),
            mailbox: hex(&m.mailbox),
            tag: hex(&m.tag),
            signature: hex(&m.signature),
        }
    }

    /// To the stored form, if every field is well formed, the address names
    /// its host (`/p2p/`) and the signature verifies.
    pub fn to_stored(&self) -> Option<ContactMailbox> {
        let address: libp2p::Multiaddr = self.address.parse().ok()?;
        crate::network::relay_peer(&address)?;
        if self.address.len() > 512 {
            return None;
        }
        let decode = |s: &str| kabar_crypto::hex::decode(s);
        let stored = ContactMailbox {
            address: self.address.clone(),
            mailbox: decode(&self.mailbox)?.try_into().ok()?,
            tag: decode(&self.tag)?.try_into().ok()?,
            signature: decode(&self.signature)?,
        };
        capability(&stored)?.verify().then_some(stored)
    }
}

/// The valid offers of a `mailboxes` content (at most [`MAX_MAILBOXES`]).
pub fn accept_offers(offers: &[MailboxOffer]) -> Vec<ContactMailbox> {
    offers.iter().filter_map(MailboxOffer::to_stored).take(MAX_MAILBOXES).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(seed: u8) -> OwnMailbox {
        OwnMailbox {
            address: "/ip4/198.18.0.1/tcp/4040/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
            key: [seed; 32],
            added_at_ms: 1,
        }
    }

    #[test]
    fn offers_verify_and_a_changed_field_does_not() {
        let m = own(7);
        let stored = offer(&m, tag(&m.key, &[1; 32]));
        let wire = MailboxOffer::from_stored(&stored);
        assert_eq!(wire.to_stored(), Some(stored.clone()));
        let mut bad = wire.clone();
        bad.tag = kabar_crypto::hex::encode(&tag(&m.key, &[2; 32]));
        assert_eq!(bad.to_stored(), None, "a tag the key did not sign");
        let mut no_host = wire.clone();
        no_host.address = "/ip4/198.18.0.1/tcp/4040".into();
        assert_eq!(no_host.to_stored(), None, "an address without /p2p/");
        assert_eq!(accept_offers(&vec![wire; 9]).len(), MAX_MAILBOXES);
    }

    #[test]
    fn tags_differ_per_contact_and_per_mailbox() {
        let (a, b) = (own(1), own(2));
        assert_ne!(tag(&a.key, &[1; 32]), tag(&a.key, &[2; 32]));
        assert_ne!(tag(&a.key, &[1; 32]), tag(&b.key, &[1; 32]));
        assert_ne!(card_tag(&a.key), tag(&a.key, &[1; 32]));
        assert_eq!(set_hash(&[]), [0; 16]);
        let (one, other) = (set_hash(std::slice::from_ref(&a)), set_hash(std::slice::from_ref(&b)));
        assert_ne!(one, other);
        assert_ne!(one, set_hash(&[a, b]));
    }
}
