//! One libp2p swarm per profile, and the event loop that joins it to the
//! profile's [`Engine`].
//!
//! The loop owns the swarm and the engine and `select!`s over swarm events,
//! commands from the control API, a retry tick and shutdown. Every channel is
//! bounded. Inbound requests are rate-limited per peer.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, connection_limits, identify, kad, mdns, memory_connection_limits, noise,
    ping, tcp, yamux,
};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::card::{peer_id_of, signing_key_of};
use crate::engine::{Action, Engine, NodeEvent, PeerKey};
use crate::wire::{Ack, EnvelopeCodec, PROTOCOL, RejectReason};

/// Idle connections close after this long (libp2p's default, 10 s, would
/// drop a conversation's connection between two messages).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Retry tick.
pub const TICK: Duration = Duration::from_millis(500);
/// Inbound requests one peer may make per second (burst up to twice that).
pub const PEER_REQUESTS_PER_SECOND: f64 = 100.0;
/// Kademlia protocol name: Kabar's own DHT, apart from the IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/kabar/kad/1");

/// Network settings of a node (the same for every profile; each profile
/// gets its own ports).
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// Addresses to listen on (port 0 picks a free port per profile).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start (DHT entry points).
    pub bootstrap: Vec<Multiaddr>,
    /// LAN discovery with mDNS (it skips loopback).
    pub mdns: bool,
    /// Run Kademlia in server mode from the start (local test networks,
    /// where no external address is ever confirmed).
    pub kad_server: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            listen: vec![
                "/ip4/0.0.0.0/tcp/0".parse().unwrap_or_else(|_| Multiaddr::empty()),
                "/ip4/0.0.0.0/udp/0/quic-v1".parse().unwrap_or_else(|_| Multiaddr::empty()),
            ],
            bootstrap: Vec::new(),
            mdns: true,
            kad_server: false,
        }
    }
}

pub use behaviour::{Behaviour, BehaviourEvent};

mod behaviour {
    #![allow(missing_docs)] // the derive generates an undocumented event enum
    use super::*;

    /// The behaviours of a profile's swarm.
    #[derive(NetworkBehaviour)]
    pub struct Behaviour {
        pub(super) limits: connection_limits::Behaviour,
        pub(super) memory: memory_connection_limits::Behaviour,
        pub(super) envelope: request_response::Behaviour<EnvelopeCodec>,
        pub(super) identify: identify::Behaviour,
        pub(super) ping: ping::Behaviour,
        pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
        pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
    }
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
#[error("network: {0}")]
pub struct NetworkError(pub String);

/// Builds the swarm of a profile from its Ed25519 seed (so its PeerId is the
/// profile's identity).
pub fn build_swarm(seed: &[u8; 32], config: &NetworkConfig) -> Result<Swarm<Behaviour>, NetworkError> {
    let mut seed = *seed;
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).map_err(|e| NetworkError(e.to_string()))?;
    let mdns_enabled = config.mdns;
    let kad_server = config.kad_server;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| NetworkError(e.to_string()))?
        .with_quic()
        .with_dns()
        .map_err(|e| NetworkError(e.to_string()))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(64))
                .with_max_pending_outgoing(Some(64))
                .with_max_established_incoming(Some(512))
                .with_max_established_outgoing(Some(512))
                .with_max_established_per_peer(Some(2));
            let envelope = request_response::Behaviour::with_codec(
                EnvelopeCodec,
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(30))
                    .with_max_concurrent_streams(32),
            );
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad::Config::new(KAD_PROTOCOL),
            );
            if kad_server {
                kad.set_mode(Some(kad::Mode::Server));
            }
            let mdns =
                if mdns_enabled { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?) } else { None };
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                memory: memory_connection_limits::Behaviour::with_max_percentage(0.9),
                envelope,
                identify: identify::Behaviour::new(
                    identify::Config::new("/kabar/id/1".into(), key.public()).with_agent_version("kabar/0.1".into()),
                ),
                ping: ping::Behaviour::default(),
                kad,
                mdns: Toggle::from(mdns),
            })
        })
        .map_err(|e| NetworkError(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the control API asks a profile task to do: run a closure on the
/// engine (reads and writes of the store, sends) and return its JSON result.
pub type EngineJob = Box<dyn FnOnce(&mut Engine, &ProfileStatus) -> JobResult + Send>;
/// A job's result and the actions (transmissions) it produced.
pub type JobResult = Result<(serde_json::Value, Vec<Action>), crate::control::RpcError>;

/// A command to a profile task.
pub enum Command {
    /// Run a job on the engine.
    Job(EngineJob, oneshot::Sender<Result<serde_json::Value, crate::control::RpcError>>),
    /// Dial an address.
    Dial(Multiaddr),
}

/// Live facts about a profile's swarm.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProfileStatus {
    /// Profile name.
    pub name: String,
    /// "personal" or "business".
    pub kind: String,
    /// The profile's PeerId.
    pub peer_id: String,
    /// Where it listens.
    pub listen_addrs: Vec<String>,
    /// Peers connected now.
    pub connected_peers: usize,
}

struct RateLimit {
    tokens: f64,
    last: Instant,
}

/// Runs one profile until `shutdown` flips or the command channel closes.
pub async fn run_profile(
    mut swarm: Swarm<Behaviour>,
    mut engine: Engine,
    config: NetworkConfig,
    mut commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<NodeEvent>,
    status_tx: watch::Sender<ProfileStatus>,
    mut shutdown: watch::Receiver<bool>,
) {
    for addr in &config.listen {
        // A random port (0) becomes the port used last time, if it is free:
        // contacts keep reaching us at the address they know.
        let remembered = remembered_port(addr, engine.store());
        if let Some(preferred) = remembered
            && swarm.listen_on(preferred).is_ok()
        {
            continue;
        }
        if let Err(e) = swarm.listen_on(addr.clone()) {
            tracing::warn!(profile = %engine.store().name(), %addr, error = %e, "cannot listen");
        }
    }
    for addr in &config.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
        }
    }
    let mut status = status_tx.borrow().clone();
    let mut pending: HashMap<OutboundRequestId, (PeerKey, Vec<[u8; 16]>)> = HashMap::new();
    let mut limits: HashMap<PeerId, RateLimit> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A Send CSPRNG (ThreadRng is not Send), seeded from the thread RNG.
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::from_rng(&mut rand::rng());

    // Say hello to contacts (at most 64, newest first): they learn our new
    // address, and messages queued before a restart go out as soon as
    // their peers connect.
    if let Ok(mut contacts) = engine.store().contacts() {
        contacts.retain(|(_, c)| !c.blocked && !c.addresses.is_empty());
        contacts.sort_by_key(|(_, c)| std::cmp::Reverse(c.added_at_ms));
        for (_, c) in contacts.into_iter().take(64) {
            dial(&mut swarm, &c.identity.signing, &c.addresses);
        }
    }

    loop {
        let actions: Vec<Action> = tokio::select! {
            _ = shutdown.changed() => break,
            command = commands.recv() => match command {
                None => break,
                Some(Command::Job(job, reply)) => {
                    match job(&mut engine, &status) {
                        Ok((value, actions)) => {
                            let _ = reply.send(Ok(value));
                            actions
                        }
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            Vec::new()
                        }
                    }
                }
                Some(Command::Dial(addr)) => {
                    if let Err(e) = swarm.dial(addr) {
                        tracing::warn!(error = %e, "dial failed");
                    }
                    Vec::new()
                }
            },
            _ = tick.tick() => engine.on_tick(now_ms()).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "retry tick failed");
                Vec::new()
            }),
            event = swarm.select_next_some() => {
                handle_event(&mut swarm, &mut engine, &mut pending, &mut limits, &mut status, event, &mut rng)
            }
        };
        for action in actions {
            match action {
                Action::Notify(event) => {
                    let _ = events.send(event);
                }
                Action::Transmit { peer, addresses, message_ids, envelopes } => {
                    let peer_id = peer_id_of(&peer);
                    if !swarm.is_connected(&peer_id) {
                        dial(&mut swarm, &peer, &addresses);
                    }
                    tracing::debug!(%peer_id, envelopes = envelopes.len(), connected = swarm.is_connected(&peer_id), "transmit");
                    let id = swarm.behaviour_mut().envelope.send_request(&peer_id, envelopes);
                    pending.insert(id, (peer, message_ids));
                }
            }
        }
        status.connected_peers = swarm.connected_peers().count();
        status_tx.send_if_modified(|s| {
            let changed = s.listen_addrs != status.listen_addrs || s.connected_peers != status.connected_peers;
            if changed {
                *s = status.clone();
            }
            changed
        });
    }
    tracing::info!(profile = %engine.store().name(), "profile stopped");
}

/// The transport ("tcp" or "udp") and port of a listen address.
fn transport_port(addr: &Multiaddr) -> Option<(&'static str, u16)> {
    use libp2p::multiaddr::Protocol;
    addr.iter().find_map(|p| match p {
        Protocol::Tcp(port) => Some(("tcp", port)),
        Protocol::Udp(port) => Some(("udp", port)),
        _ => None,
    })
}

/// `addr` with its port 0 replaced by the port remembered for its transport.
fn remembered_port(addr: &Multiaddr, store: &kabar_storage::ProfileStore) -> Option<Multiaddr> {
    use libp2p::multiaddr::Protocol;
    let (transport, port) = transport_port(addr)?;
    if port != 0 {
        return None;
    }
    let remembered = store.listen_port(transport).ok()??;
    Some(
        addr.iter()
            .map(|p| match p {
                Protocol::Tcp(0) => Protocol::Tcp(remembered),
                Protocol::Udp(0) => Protocol::Udp(remembered),
                other => other,
            })
            .collect(),
    )
}

fn dial(swarm: &mut Swarm<Behaviour>, peer: &PeerKey, addresses: &[String]) {
    let peer_id = peer_id_of(peer);
    let addrs: Vec<Multiaddr> = addresses.iter().filter_map(|a| a.parse().ok()).collect();
    for a in &addrs {
        swarm.add_peer_address(peer_id, a.clone());
        swarm.behaviour_mut().kad.add_address(&peer_id, a.clone());
    }
    let opts = DialOpts::peer_id(peer_id).addresses(addrs).extend_addresses_through_behaviour().build();
    if let Err(e) = swarm.dial(opts) {
        tracing::debug!(%peer_id, error = %e, "dial not started");
    }
}

/// Token bucket per peer: [`PEER_REQUESTS_PER_SECOND`], bursts up to twice
/// that. The map holds only connected peers (entries go when the last
/// connection closes), so it is bounded by the connection limits.
fn allow(limits: &mut HashMap<PeerId, RateLimit>, peer: PeerId, now: Instant) -> bool {
    let entry = limits.entry(peer).or_insert(RateLimit { tokens: 2.0 * PEER_REQUESTS_PER_SECOND, last: now });
    let elapsed = now.duration_since(entry.last).as_secs_f64();
    entry.tokens = (entry.tokens + elapsed * PEER_REQUESTS_PER_SECOND).min(2.0 * PEER_REQUESTS_PER_SECOND);
    entry.last = now;
    if entry.tokens >= 1.0 {
        entry.tokens -= 1.0;
        true
    } else {
        false
    }
}

fn reachable(engine: &mut Engine, peer: &PeerId) -> Vec<Action> {
    match signing_key_of(peer) {
        Some(key) => engine.on_peer_reachable(&key, now_ms()).unwrap_or_default(),
        None => Vec::new(),
    }
}

fn handle_event<R: rand_core::CryptoRng + ?Sized>(
    swarm: &mut Swarm<Behaviour>,
    engine: &mut Engine,
    pending: &mut HashMap<OutboundRequestId, (PeerKey, Vec<[u8; 16]>)>,
    limits: &mut HashMap<PeerId, RateLimit>,
    status: &mut ProfileStatus,
    event: SwarmEvent<BehaviourEvent>,
    rng: &mut R,
) -> Vec<Action> {
    match event {
        SwarmEvent::NewListenAddr { address, .. } => {
            tracing::info!(profile = %engine.store().name(), %address, "listening");
            if let Some((transport, port)) = transport_port(&address)
                && let Err(e) = engine.store().set_listen_port(transport, port)
            {
                tracing::warn!(error = %e, "cannot remember the listen port");
            }
            status.listen_addrs.push(address.to_string());
            Vec::new()
        }
        SwarmEvent::ExpiredListenAddr { address, .. } => {
            status.listen_addrs.retain(|a| a != &address.to_string());
            Vec::new()
        }
        SwarmEvent::ConnectionEstablished { peer_id, .. } => reachable(engine, &peer_id),
        SwarmEvent::ConnectionClosed { peer_id, num_established: 0, .. } => {
            limits.remove(&peer_id);
            Vec::new()
        }
        SwarmEvent::Behaviour(BehaviourEvent::Envelope(event)) => match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    tracing::debug!(profile = %engine.store().name(), %peer, envelopes = request.len(), "request");
                    let Some(key) = signing_key_of(&peer) else {
                        let _ = swarm
                            .behaviour_mut()
                            .envelope
                            .send_response(channel, vec![Ack::Rejected(RejectReason::IdentityMismatch); request.len()]);
                        return Vec::new();
                    };
                    if !allow(limits, peer, Instant::now()) {
                        tracing::debug!(%peer, "request over the per-peer rate; dropped");
                        return Vec::new();
                    }
                    match engine.on_request(&key, &request, now_ms(), rng) {
                        Ok((acks, actions)) => {
                            // Everything is durable now: acknowledge.
                            let _ = swarm.behaviour_mut().envelope.send_response(channel, acks);
                            actions
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "receiving failed");
                            let _ = swarm
                                .behaviour_mut()
                                .envelope
                                .send_response(channel, vec![Ack::Rejected(RejectReason::Storage); request.len()]);
                            Vec::new()
                        }
                    }
                }
                request_response::Message::Response { request_id, response } => match pending.remove(&request_id) {
                    Some((peer, ids)) => engine.on_acks(&peer, &ids, &response, now_ms()).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "recording acknowledgements failed");
                        Vec::new()
                    }),
                    None => Vec::new(),
                },
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                tracing::debug!(%peer, %error, "request failed");
                if let Some((_, ids)) = pending.remove(&request_id) {
                    engine.on_transmit_failed(&ids);
                }
                if matches!(error, request_response::OutboundFailure::DialFailure) {
                    // Ask the DHT where the peer is now.
                    swarm.behaviour_mut().kad.get_closest_peers(peer);
                }
                Vec::new()
            }
            _ => Vec::new(),
        },
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
            for addr in info.listen_addrs {
                swarm.behaviour_mut().kad.add_address(&peer_id, addr);
            }
            reachable(engine, &peer_id)
        }
        SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated { peer, .. })) => {
            if swarm.is_connected(&peer) { Vec::new() } else { reachable(engine, &peer) }
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
            let mut actions = Vec::new();
            for (peer, addr) in list {
                swarm.add_peer_address(peer, addr.clone());
                swarm.behaviour_mut().kad.add_address(&peer, addr);
                actions.extend(reachable(engine, &peer));
            }
            actions
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_peer_is_held_to_its_rate_and_others_are_not_affected() {
        let mut limits = HashMap::new();
        let (flood, quiet) = (PeerId::random(), PeerId::random());
        let t0 = Instant::now();
        let burst = (0..1_000).filter(|_| allow(&mut limits, flood, t0)).count();
        assert_eq!(burst, 2 * PEER_REQUESTS_PER_SECOND as usize);
        assert!(allow(&mut limits, quiet, t0), "another peer has its own bucket");
        // One second later: one second's worth more, not another burst.
        let t1 = t0 + Duration::from_secs(1);
        let more = (0..1_000).filter(|_| allow(&mut limits, flood, t1)).count();
        assert_eq!(more, PEER_REQUESTS_PER_SECOND as usize);
    }
}
