//! A hostile peer: garbage, oversize and replayed envelopes are rejected
//! while other conversations go on. Also the probe used by `separation`.

use std::io;
use std::time::Duration;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use kabar_crypto::ProfileKind::Personal;
use kabar_crypto::{IdentityKeyPair, ProfileKind, Session};
use kabar_node::card::ContactCard;
use kabar_node::wire::{self, Ack, RejectReason};
use kabar_tests::*;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, tcp, yamux};
use serde_json::json;

/// A raw request: the length the frame header claims, and the bytes sent.
#[derive(Debug, Clone)]
pub struct Raw {
    pub declared_len: u32,
    pub body: Vec<u8>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Raw;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Raw> {
        Err(io::Error::other("the probe serves nothing"))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let mut body = vec![0u8; u32::from_be_bytes(len).min(1 << 20) as usize];
        io.read_exact(&mut body).await?;
        Ok(body)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Raw,
    ) -> io::Result<()> {
        io.write_all(&req.declared_len.to_be_bytes()).await?;
        io.write_all(&req.body).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Err(io::Error::other("the probe serves nothing"))
    }
}

#[derive(NetworkBehaviour)]
pub struct ProbeBehaviour {
    pub rr: request_response::Behaviour<RawCodec>,
    pub identify: identify::Behaviour,
}

/// A bare libp2p peer speaking Kabar's envelope protocol byte by byte.
pub struct Probe {
    pub swarm: Swarm<ProbeBehaviour>,
}

impl Probe {
    pub fn new(seed: [u8; 32]) -> Probe {
        let mut seed = seed;
        let key = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).unwrap();
        let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(tcp::Config::default(), noise::Config::new, yamux::Config::default)
            .unwrap()
            .with_behaviour(|key| ProbeBehaviour {
                rr: request_response::Behaviour::with_codec(
                    RawCodec,
                    [(wire::PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
                ),
                identify: identify::Behaviour::new(identify::Config::new("/kabar/id/1".into(), key.public())),
            })
            .unwrap()
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        Probe { swarm }
    }

    /// Connects and returns what the peer's identify said.
    pub async fn connect(&mut self, peer: PeerId, addr: Multiaddr) -> identify::Info {
        self.swarm.add_peer_address(peer, addr.clone());
        self.swarm.dial(addr).unwrap();
        tokio::time::timeout(TIMEOUT, async {
            loop {
                if let SwarmEvent::Behaviour(ProbeBehaviourEvent::Identify(identify::Event::Received {
                    peer_id,
                    info,
                    ..
                })) = self.swarm.select_next_some().await
                    && peer_id == peer
                {
                    return info;
                }
            }
        })
        .await
        .expect("identify in time")
    }

    /// Sends one raw request; `Ok` is the response body, `Err` a failure.
    pub async fn request(&mut self, peer: PeerId, raw: Raw) -> Result<Vec<u8>, String> {
        let id = self.swarm.behaviour_mut().rr.send_request(&peer, raw);
        tokio::time::timeout(TIMEOUT, async {
            loop {
                match self.swarm.select_next_some().await {
                    SwarmEvent::Behaviour(ProbeBehaviourEvent::Rr(request_response::Event::Message {
                        message: request_response::Message::Response { request_id, response },
                        ..
                    })) if request_id == id => return Ok(response),
                    SwarmEvent::Behaviour(ProbeBehaviourEvent::Rr(request_response::Event::OutboundFailure {
                        request_id,
                        error,
                        ..
                    })) if request_id == id => return Err(error.to_string()),
                    _ => {}
                }
            }
        })
        .await
        .expect("an answer or a failure in time")
    }
}

fn framed(envelopes: &[Vec<u8>]) -> Raw {
    let body = wire::encode_request(envelopes).unwrap();
    Raw { declared_len: body.len() as u32, body }
}

pub async fn peer_and_addr(node: &TestNode, profile: &str) -> (PeerId, Multiaddr) {
    let info = node.profile_info(profile).await;
    let peer: PeerId = info["peer_id"].as_str().unwrap().parse().unwrap();
    let addr: Multiaddr = info["listen_addrs"][0].as_str().unwrap().parse().unwrap();
    (peer, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_oversize_and_replayed_envelopes_are_rejected_while_others_talk_on() {
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let (bob_peer, bob_addr) = peer_and_addr(&bob, "personal").await;
    let mut mallory = Probe::new([66; 32]);
    mallory.connect(bob_peer, bob_addr).await;

    // Well framed, but the envelopes are garbage: each rejected as malformed.
    let reply = mallory.request(bob_peer, framed(&[vec![1, 2, 3], vec![0xff; 500], Vec::new()])).await.unwrap();
    assert_eq!(wire::decode_response(&reply).unwrap(), vec![Ack::Rejected(RejectReason::Malformed); 3]);
    // A frame that does not parse, and one that claims 100 MiB: the stream
    // fails, nothing is answered, the node carries on.
    assert!(mallory.request(bob_peer, Raw { declared_len: 7, body: vec![9; 7] }).await.is_err());
    assert!(mallory.request(bob_peer, Raw { declared_len: 100 << 20, body: vec![0; 1024] }).await.is_err());

    // Mallory holds Bob's card: a real first message is a message request;
    // replaying it is acknowledged as a duplicate and not stored twice.
    let card = ContactCard::from_uri(&bob.card("personal", "Bob").await).unwrap();
    let me = IdentityKeyPair::from_secrets(ProfileKind::Personal, &[66; 32], &[67; 32]);
    let mut session = Session::initiate(&me, &card.bundle(), &mut rand::rng()).unwrap();
    let env = session
        .encrypt(br#"{"v":1,"seq":0,"sent_at_ms":1,"content":{"type":"text","text":"hi"}}"#, &mut rand::rng())
        .unwrap();
    let first = mallory.request(bob_peer, framed(&[env.encode()])).await.unwrap();
    assert_eq!(wire::decode_response(&first).unwrap(), [Ack::Accepted]);
    let again = mallory.request(bob_peer, framed(&[env.encode(), env.encode()])).await.unwrap();
    assert_eq!(wire::decode_response(&again).unwrap(), [Ack::Duplicate, Ack::Duplicate]);
    let requests = bob.call("request.list", json!({})).await;
    assert_eq!(requests.as_array().unwrap().len(), 1);

    // Meanwhile Alice and Bob talk as usual.
    let mut events = alice.subscribe().await;
    let sent = alice.call("message.send", json!({"to": "Bob", "text": "still there?"})).await;
    events.wait_status(sent["message_id"].as_str().unwrap(), "delivered").await;
}

/// History is in the order messages arrived here: a stranger's message
/// dated 2100 does not stay newest for ever, and its date is marked as
/// lying in the future.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_follows_arrival_not_the_senders_clock() {
    let bob = TestNode::start(&[("personal", Personal)]).await;
    let (bob_peer, bob_addr) = peer_and_addr(&bob, "personal").await;
    let mut mallory = Probe::new([70; 32]);
    mallory.connect(bob_peer, bob_addr).await;
    let card = ContactCard::from_uri(&bob.card("personal", "Bob").await).unwrap();
    let me = IdentityKeyPair::from_secrets(ProfileKind::Personal, &[70; 32], &[71; 32]);
    let mut session = Session::initiate(&me, &card.bundle(), &mut rand::rng()).unwrap();
    for (seq, at, text) in [(0, 4_102_444_800_000u64, "from 2100"), (1, 1, "from 1970"), (2, 2, "latest")] {
        let body = json!({"v": 1, "seq": seq, "sent_at_ms": at, "content": {"type": "text", "text": text}});
        let env = session.encrypt(body.to_string().as_bytes(), &mut rand::rng()).unwrap();
        let reply = mallory.request(bob_peer, framed(&[env.encode()])).await.unwrap();
        assert_eq!(wire::decode_response(&reply).unwrap(), [Ack::Accepted]);
    }
    let peer = kabar_node::card::peer_id_of(&me.public().signing).to_string();
    let h = bob.call("message.history", json!({"with": peer})).await;
    let got: Vec<(&str, bool)> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["content"]["text"].as_str().unwrap(), m["sent_at_in_future"].as_bool().unwrap()))
        .collect();
    assert_eq!(got, [("from 2100", true), ("from 1970", false), ("latest", false)]);
}
