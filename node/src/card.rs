//! Contact cards: everything a peer needs to reach a profile and start a
//! session, as one `kabar:` URI.
//!
//! `kabar:` ‖ base64url (no padding) of:
//!
//! ```text
//! version u8 = 1
//! identity            129 bytes (docs/protocol.md §2.2; the PeerId is derived from its Ed25519 key)
//! signed prekey id    u32 BE
//! created_at          u64 BE
//! signed prekey       32
//! signature           64
//! name length u8 (≤ 64) ‖ display name, UTF-8
//! address count u8 (≤ 8) ‖ count × (u16 BE length ‖ multiaddr, binary form)
//! -- version 2 only:
//! mailbox count u8 (1..=4) ‖ count × (u16 BE length ‖ host multiaddr with /p2p/, binary form
//!                                     ‖ mailbox id 32 ‖ card tag 16 ‖ capability signature 64)
//! ```
//!
//! A card without mailboxes is written as version 1; readers take both.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use kabar_crypto::{IdentityPublic, PrekeyBundle, SignedPrekeyPublic};
use kabar_storage::{ContactMailbox, MAX_MAILBOXES};
use libp2p::{Multiaddr, PeerId};

/// URI scheme prefix.
pub const PREFIX: &str = "kabar:";
/// Longest display name on a card, in bytes.
pub const MAX_NAME: usize = 64;
/// Most addresses on a card.
pub const MAX_ADDRESSES: usize = 8;
const MAX_ADDRESS_LEN: usize = 256;
const MAX_CARD_CHARS: usize = 8 * 1024;

/// A contact card.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactCard {
    /// The profile's identity (kind included).
    pub identity: IdentityPublic,
    /// Its current signed prekey.
    pub signed_prekey: SignedPrekeyPublic,
    /// The name it suggests for itself.
    pub display_name: String,
    /// Where it listens.
    pub addresses: Vec<Multiaddr>,
    /// Where it takes envelopes while offline, with the card's deposit
    /// capability (see [`crate::offline`]).
    pub mailboxes: Vec<ContactMailbox>,
}

/// Why a card did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CardError {
    /// Not a `kabar:` URI, or not base64url.
    #[error("not a Kabar contact card (it should start with \"kabar:\")")]
    NotACard,
    /// The bytes inside are malformed.
    #[error("malformed contact card: {0}")]
    Malformed(&'static str),
    /// Its signatures do not verify.
    #[error("contact card signatures do not verify (damaged or forged card)")]
    BadSignature,
}

impl ContactCard {
    /// The profile's PeerId (from its Ed25519 identity key).
    pub fn peer_id(&self) -> PeerId {
        peer_id_of(&self.identity.signing)
    }

    /// The bundle to start a session from (no one-time prekey: a card may
    /// be used by anyone who has it).
    pub fn bundle(&self) -> PrekeyBundle {
        PrekeyBundle { identity: self.identity, signed_prekey: self.signed_prekey, one_time_prekey: None }
    }

    /// Encodes as a `kabar:` URI. Names are cut to [`MAX_NAME`] bytes (at a
    /// character boundary) and addresses to [`MAX_ADDRESSES`].
    pub fn to_uri(&self) -> String {
        let mailboxes: Vec<(Vec<u8>, &ContactMailbox)> = self
            .mailboxes
            .iter()
            .filter_map(|m| Some((m.address.parse::<Multiaddr>().ok()?.to_vec(), m)))
            .filter(|(a, m)| a.len() <= MAX_ADDRESS_LEN && m.signature.len() == 64)
            .take(MAX_MAILBOXES)
            .collect();
        let mut out = vec![if mailboxes.is_empty() { 1u8 } else { 2 }];
        out.extend_from_slice(&self.identity.to_bytes());
        out.extend_from_slice(&self.signed_prekey.id.to_be_bytes());
        out.extend_from_slice(&self.signed_prekey.created_at.to_be_bytes());
        out.extend_from_slice(&self.signed_prekey.public);
        out.extend_from_slice(&self.signed_prekey.signature);
        let mut name = self.display_name.as_str();
        while name.len() > MAX_NAME {
            let mut cut = MAX_NAME.min(name.len() - 1);
            while !name.is_char_boundary(cut) {
                cut -= 1;
            }
            name = &name[..cut];
        }
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        let addrs: Vec<Vec<u8>> = self
            .addresses
            .iter()
            .map(|a| a.to_vec())
            .filter(|a| a.len() <= MAX_ADDRESS_LEN)
            .take(MAX_ADDRESSES)
            .collect();
        out.push(addrs.len() as u8);
        for a in addrs {
            out.extend_from_slice(&(a.len() as u16).to_be_bytes());
            out.extend_from_slice(&a);
        }
        if !mailboxes.is_empty() {
            out.push(mailboxes.len() as u8);
            for (a, m) in mailboxes {
                out.extend_from_slice(&(a.len() as u16).to_be_bytes());
                out.extend_from_slice(&a);
                out.extend_from_slice(&m.mailbox);
                out.extend_from_slice(&m.tag);
                out.extend_from_slice(&m.signature);
            }
        }
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out))
    }

    /// Parses and verifies a `kabar:` URI.
    pub fn from_uri(uri: &str) -> Result<Self, CardError> {
        let uri = uri.trim();
        if uri.len() > MAX_CARD_CHARS {
            return Err(CardError::Malformed("too long"));
        }
        let b64 = uri.strip_prefix(PREFIX).ok_or(CardError::NotACard)?;
        let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|_| CardError::NotACard)?;
        let mut r = Reader(&bytes);
        let version = r.take(1)?[0];
        if version != 1 && version != 2 {
            return Err(CardError::Malformed("unknown card version"));
        }
        let identity = IdentityPublic::from_bytes(r.take(129)?).map_err(|_| CardError::Malformed("identity"))?;
        let id = u32::from_be_bytes(r.array()?);
        let created_at = u64::from_be_bytes(r.array()?);
        let public = r.array()?;
        let signature = r.array()?;
        let name_len = r.take(1)?[0] as usize;
        if name_len > MAX_NAME {
            return Err(CardError::Malformed("name too long"));
        }
        let display_name =
            String::from_utf8(r.take(name_len)?.to_vec()).map_err(|_| CardError::Malformed("name is not UTF-8"))?;
        let count = r.take(1)?[0] as usize;
        if count > MAX_ADDRESSES {
            return Err(CardError::Malformed("too many addresses"));
        }
        let mut addresses = Vec::with_capacity(count);
        for _ in 0..count {
            let len = u16::from_be_bytes(r.array()?) as usize;
            if len > MAX_ADDRESS_LEN {
                return Err(CardError::Malformed("address too long"));
            }
            addresses.push(Multiaddr::try_from(r.take(len)?.to_vec()).map_err(|_| CardError::Malformed("address"))?);
        }
        let mut mailboxes = Vec::new();
        if version == 2 {
            let count = r.take(1)?[0] as usize;
            if count == 0 || count > MAX_MAILBOXES {
                return Err(CardError::Malformed("mailbox count"));
            }
            for _ in 0..count {
                let len = u16::from_be_bytes(r.array()?) as usize;
                if len > MAX_ADDRESS_LEN {
                    return Err(CardError::Malformed("mailbox address too long"));
                }
                let address =
                    Multiaddr::try_from(r.take(len)?.to_vec()).map_err(|_| CardError::Malformed("address"))?;
                let mailbox = ContactMailbox {
                    address: address.to_string(),
                    mailbox: r.array()?,
                    tag: r.array()?,
                    signature: r.take(64)?.to_vec(),
                };
                let offer = crate::offline::MailboxOffer::from_stored(&mailbox);
                if offer.to_stored().is_none() {
                    return Err(CardError::BadSignature);
                }
                mailboxes.push(mailbox);
            }
        }
        if !r.0.is_empty() {
            return Err(CardError::Malformed("trailing bytes"));
        }
        let card = ContactCard {
            identity,
            signed_prekey: SignedPrekeyPublic { id, created_at, public, signature },
            display_name,
            addresses,
            mailboxes,
        };
        card.bundle().verify().map_err(|_| CardError::BadSignature)?;
        Ok(card)
    }
}

/// The PeerId of an Ed25519 identity key (all-zero on an invalid key, which
/// cannot come from a verified identity).
pub fn peer_id_of(signing: &[u8; 32]) -> PeerId {
    match libp2p::identity::ed25519::PublicKey::try_from_bytes(signing) {
        Ok(key) => libp2p::identity::PublicKey::from(key).to_peer_id(),
        Err(_) => PeerId::from_multihash(Default::default()).unwrap_or_else(|_| PeerId::random()),
    }
}

/// The Ed25519 key inside an Ed25519 PeerId.
pub fn signing_key_of(peer: &PeerId) -> Option<[u8; 32]> {
    let public = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest()).ok()?;
    Some(public.try_into_ed25519().ok()?.to_bytes())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CardError> {
        if self.0.len() < n {
            return Err(CardError::Malformed("truncated"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], CardError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kabar_crypto::{IdentityKeyPair, ProfileKind, SignedPrekey};

    fn card() -> ContactCard {
        let mut rng = rand::rng();
        let id = IdentityKeyPair::generate(ProfileKind::Business, &mut rng);
        let spk = SignedPrekey::generate(&id, 3, 1_700_000_000, &mut rng);
        ContactCard {
            identity: id.public(),
            signed_prekey: spk.public(),
            display_name: "Marigold Bakery".into(),
            addresses: vec![
                "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
                "/ip4/10.0.0.2/udp/4001/quic-v1".parse().unwrap(),
            ],
            mailboxes: Vec::new(),
        }
    }

    #[test]
    fn mailboxes_round_trip_as_version_2_and_a_forged_capability_is_refused() {
        let mut c = card();
        let own = kabar_storage::OwnMailbox {
            address: "/ip4/198.18.0.1/tcp/4040/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN".into(),
            key: [4; 32],
            added_at_ms: 0,
        };
        c.mailboxes = vec![crate::offline::offer(&own, crate::offline::card_tag(&own.key))];
        let uri = c.to_uri();
        assert_eq!(URL_SAFE_NO_PAD.decode(&uri[PREFIX.len()..]).unwrap()[0], 2);
        assert_eq!(ContactCard::from_uri(&uri).unwrap(), c);
        c.mailboxes[0].tag[0] ^= 1;
        assert_eq!(ContactCard::from_uri(&c.to_uri()), Err(CardError::BadSignature));
        // Without mailboxes, a card stays version 1.
        assert_eq!(URL_SAFE_NO_PAD.decode(&card().to_uri()[PREFIX.len()..]).unwrap()[0], 1);
    }

    #[test]
    fn round_trip_and_peer_id() {
        let c = card();
        let uri = c.to_uri();
        assert!(uri.starts_with("kabar:"));
        let back = ContactCard::from_uri(&uri).unwrap();
        assert_eq!(back, c);
        assert_eq!(signing_key_of(&c.peer_id()), Some(c.identity.signing));
    }

    #[test]
    fn bad_cards_are_rejected() {
        let c = card();
        assert_eq!(ContactCard::from_uri("hello"), Err(CardError::NotACard));
        assert_eq!(ContactCard::from_uri("kabar:!!!"), Err(CardError::NotACard));
        let uri = c.to_uri();
        assert!(ContactCard::from_uri(&uri[..uri.len() - 10]).is_err());
        let mut forged = c.clone();
        forged.signed_prekey.public[0] ^= 1;
        assert_eq!(ContactCard::from_uri(&forged.to_uri()), Err(CardError::BadSignature));
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        let mut c = card();
        c.display_name = "é".repeat(40);
        let back = ContactCard::from_uri(&c.to_uri()).unwrap();
        assert_eq!(back.display_name, "é".repeat(32));
    }
}
