//! Where a profile can be reached, and how others find out.
//!
//! - [`advertised`] picks the addresses a profile puts on its contact card,
//!   in its address updates to contacts and in its DHT record: confirmed
//!   public addresses first, then relay circuits, then plain listen addresses
//!   (useful on a LAN or one machine), never unspecified ones, at most
//!   [`crate::card::MAX_ADDRESSES`].
//! - The **address record** on the DHT is a libp2p signed peer record
//!   (`libp2p-peer-record` payload in a signed envelope, as in libp2p's RFC
//!   0003), stored under the key `/kabar/addr/1/` ‖ PeerId bytes. Only the
//!   profile's own key can sign it; [`verify_record`] checks the signature,
//!   that the signer is the PeerId of the key, and the size limits. Kademlia
//!   nodes of ours store a record only if it verifies and is not older than
//!   the one they hold ([`accept_put`]).

use libp2p::core::{PeerRecord, SignedEnvelope};
use libp2p::identity::Keypair;
use libp2p::kad::{Record, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

use crate::card::MAX_ADDRESSES;

/// Prefix of the DHT key of a profile's address record.
pub const RECORD_KEY_PREFIX: &[u8] = b"/kabar/addr/1/";
/// Largest address record we publish or accept, in bytes.
pub const MAX_RECORD_BYTES: usize = 4 * 1024;
/// Longest address we advertise or accept, in bytes (binary form).
pub const MAX_ADDRESS_BYTES: usize = 256;

/// True if `addr` goes through a relay (`/p2p-circuit`).
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_unspecified(),
        Protocol::Ip6(ip) => ip.is_unspecified(),
        _ => false,
    })
}

/// The relay of a circuit address (the `/p2p/` before `/p2p-circuit`).
pub fn circuit_relay(addr: &Multiaddr) -> Option<PeerId> {
    let mut relay = None;
    for p in addr.iter() {
        match p {
            Protocol::P2p(peer) => relay = Some(peer),
            Protocol::P2pCircuit => return relay,
            _ => {}
        }
    }
    None
}

/// `addr` without a trailing `/p2p/<peer>` (cards and records name the peer
/// once, apart from the addresses).
pub fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

/// The addresses a profile advertises: confirmed public addresses, then
/// relay circuits, then listen addresses; deduplicated, unspecified and
/// over-long ones dropped, at most [`MAX_ADDRESSES`].
pub fn advertised(public: &[Multiaddr], circuits: &[Multiaddr], listen: &[Multiaddr]) -> Vec<Multiaddr> {
    let mut out: Vec<Multiaddr> = Vec::new();
    let mut relays: Vec<PeerId> = Vec::new();
    for addr in public.iter().chain(circuits).chain(listen) {
        let addr = without_peer(addr);
        if is_unspecified(&addr) || addr.to_vec().len() > MAX_ADDRESS_BYTES || out.contains(&addr) {
            continue;
        }
        // One circuit per relay: a peer dials every address of a card at
        // once, and a relay connection carries at most 10 circuit requests
        // in flight (libp2p's relay client), so two circuits through one
        // relay per contact would halve how many contacts can be reached
        // at once.
        if let Some(relay) = circuit_relay(&addr) {
            if relays.contains(&relay) {
                continue;
            }
            relays.push(relay);
        }
        out.push(addr);
        if out.len() == MAX_ADDRESSES {
            break;
        }
    }
    out
}

/// Checks a list of addresses received from a contact (an address update):
/// at most [`MAX_ADDRESSES`], each a valid multiaddr of at most
/// [`MAX_ADDRESS_BYTES`].
pub fn parse_list(addresses: &[String]) -> Option<Vec<Multiaddr>> {
    if addresses.len() > MAX_ADDRESSES {
        return None;
    }
    addresses.iter().map(|a| a.parse::<Multiaddr>().ok().filter(|m| m.to_vec().len() <= MAX_ADDRESS_BYTES)).collect()
}

/// The DHT key of `peer`'s address record.
pub fn record_key(peer: &PeerId) -> RecordKey {
    let mut key = RECORD_KEY_PREFIX.to_vec();
    key.extend_from_slice(&peer.to_bytes());
    RecordKey::new(&key)
}

/// The peer whose address record lives under `key`, if it is one.
pub fn record_peer(key: &RecordKey) -> Option<PeerId> {
    key.as_ref().strip_prefix(RECORD_KEY_PREFIX).and_then(|b| PeerId::from_bytes(b).ok())
}

/// Signs an address record for `addresses` with the profile's key.
pub fn sign_record(keypair: &Keypair, addresses: Vec<Multiaddr>) -> Option<Record> {
    let record = PeerRecord::new_interop(keypair, addresses).ok()?;
    let value = record.into_signed_envelope().into_protobuf_encoding();
    (value.len() <= MAX_RECORD_BYTES).then(|| Record::new(record_key(&keypair.public().to_peer_id()), value))
}

/// A verified address record: who signed it, its sequence number (the
/// signer's clock) and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRecord {
    /// The signer.
    pub peer: PeerId,
    /// Newer records have larger numbers.
    pub seq: u64,
    /// Where it can be reached.
    pub addresses: Vec<Multiaddr>,
}

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    /// Not under an address-record key.
    #[error("not an address-record key")]
    Key,
    /// Over [`MAX_RECORD_BYTES`], or too many or too long addresses.
    #[error("address record over its size limits")]
    TooLarge,
    /// Not a signed peer record, or the signature does not verify.
    #[error("address record does not verify")]
    Signature,
    /// Signed by another peer than the one the key names.
    #[error("address record signed by another peer")]
    WrongSigner,
}

/// Verifies an address record found under `record.key`.
pub fn verify_record(record: &Record) -> Result<AddressRecord, RecordError> {
    let peer = record_peer(&record.key).ok_or(RecordError::Key)?;
    if record.value.len() > MAX_RECORD_BYTES {
        return Err(RecordError::TooLarge);
    }
    let envelope = SignedEnvelope::from_protobuf_encoding(&record.value).map_err(|_| RecordError::Signature)?;
    let signed = PeerRecord::from_signed_envelope_interop(envelope).map_err(|_| RecordError::Signature)?;
    if signed.peer_id() != peer {
        return Err(RecordError::WrongSigner);
    }
    let addresses = signed.addresses().to_vec();
    if addresses.len() > MAX_ADDRESSES || addresses.iter().any(|a| a.to_vec().len() > MAX_ADDRESS_BYTES) {
        return Err(RecordError::TooLarge);
    }
    Ok(AddressRecord { peer, seq: signed.seq(), addresses })
}

/// Whether a Kademlia node stores `incoming` (a PUT from the network) when
/// it holds `existing`: only valid address records, and never an older one
/// over a newer one. Other keys are refused: our DHT stores nothing else.
pub fn accept_put(incoming: &Record, existing: Option<&Record>) -> bool {
    let Ok(new) = verify_record(incoming) else { return false };
    match existing.map(verify_record) {
        Some(Ok(old)) => new.seq >= old.seq,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn advertised_orders_public_then_circuits_then_listen_and_drops_junk() {
        let public = [addr("/ip4/198.18.0.5/tcp/4001")];
        let circuits = [addr(
            "/ip4/198.18.0.1/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit/p2p/12D3KooWQYhTNQdmr3ArTeUHRYzFg94BKyTkoWBDWez9kSCVe2Xo",
        )];
        let listen = [addr("/ip4/0.0.0.0/tcp/4001"), addr("/ip4/10.1.0.2/tcp/4001"), addr("/ip4/198.18.0.5/tcp/4001")];
        let out = advertised(&public, &circuits, &listen);
        assert_eq!(out.len(), 3);
        assert_eq!(out[0], public[0]);
        assert!(is_relayed(&out[1]) && !matches!(out[1].iter().last(), Some(Protocol::P2p(_))));
        assert_eq!(out[2], addr("/ip4/10.1.0.2/tcp/4001"));
        // A second circuit through the same relay (another transport) is left out.
        let relay = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";
        let two = [
            addr(&format!("/ip4/198.18.0.1/tcp/4040/p2p/{relay}/p2p-circuit")),
            addr(&format!("/ip4/198.18.0.1/udp/4040/quic-v1/p2p/{relay}/p2p-circuit")),
        ];
        assert_eq!(advertised(&[], &two, &[]), vec![two[0].clone()]);
        let many: Vec<Multiaddr> = (1..20).map(|p| addr(&format!("/ip4/10.0.0.1/tcp/{p}"))).collect();
        assert_eq!(advertised(&[], &[], &many).len(), MAX_ADDRESSES);
    }

    #[test]
    fn records_verify_only_for_their_signer_and_newer_ones_win() {
        let alice = Keypair::generate_ed25519();
        let mallory = Keypair::generate_ed25519();
        let record = sign_record(&alice, vec![addr("/ip4/198.18.0.5/tcp/4001")]).unwrap();
        let verified = verify_record(&record).unwrap();
        assert_eq!(verified.peer, alice.public().to_peer_id());
        assert_eq!(verified.addresses, vec![addr("/ip4/198.18.0.5/tcp/4001")]);

        // Mallory signs her own record but files it under Alice's key.
        let mut forged = sign_record(&mallory, vec![addr("/ip4/6.6.6.6/tcp/1")]).unwrap();
        forged.key = record_key(&alice.public().to_peer_id());
        assert_eq!(verify_record(&forged), Err(RecordError::WrongSigner));
        assert!(!accept_put(&forged, Some(&record)));

        // Bit flips break the signature; other keys are not ours.
        let mut flipped = record.clone();
        let last = flipped.value.len() - 1;
        flipped.value[last] ^= 1;
        assert!(verify_record(&flipped).is_err());
        assert!(!accept_put(&Record::new(RecordKey::new(&b"other"), vec![1]), None));

        // An older record does not replace a newer one.
        let mut older = record.clone();
        let mut newer = sign_record(&alice, vec![addr("/ip4/198.18.0.6/tcp/4001")]).unwrap();
        if verify_record(&newer).unwrap().seq == verify_record(&older).unwrap().seq {
            // Same clock tick: order them by hand.
            std::mem::swap(&mut older, &mut newer);
            assert!(accept_put(&newer, Some(&older)));
        } else {
            assert!(accept_put(&newer, Some(&older)));
            assert!(!accept_put(&older, Some(&newer)));
        }
    }

    #[test]
    fn address_updates_are_bounded() {
        assert!(parse_list(&["/ip4/1.2.3.4/tcp/1".into()]).is_some());
        assert!(parse_list(&["not an address".into()]).is_none());
        assert!(parse_list(&vec!["/ip4/1.2.3.4/tcp/1".to_string(); MAX_ADDRESSES + 1]).is_none());
        let long = format!("/dns4/{}/tcp/1", "a".repeat(300));
        assert!(parse_list(&[long]).is_none());
    }
}
