//! One libp2p swarm per profile, and the event loop that joins it to the
//! profile's [`Engine`].
//!
//! The loop owns the swarm and the engine and `select!`s over swarm events,
//! commands from the control API, a retry tick and shutdown. Every channel is
//! bounded. Inbound requests are rate-limited per peer.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, autonat, connection_limits, dcutr, identify, kad, mdns,
    memory_connection_limits, noise, ping, relay, tcp, yamux,
};

use crate::addresses;
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::budget::BucketMap;
use crate::card::{peer_id_of, signing_key_of};
use crate::courier::{Courier, CourierEvent};
use crate::engine::{Action, Engine, NodeEvent, PeerKey};
use crate::prekey_codec::{PrekeyCodec, PrekeyRequest};
use crate::wire::{Ack, EnvelopeCodec, InflightBudget, PROTOCOL, RejectReason};
use crate::worker::{Report, Worker};

// What the rest of the node says to a profile's loop, and what the loop
// shows of a profile: in `profile.rs`, re-exported here where they were.
pub use crate::profile::{
    Command, EngineJob, HolePunchStatus, JobResult, MailboxChange, PeerStatus, PrekeyStatus, ProfileStatus,
    RelayChange, RelayStatus, now_ms, relay_peer,
};

/// Idle connections close after this long (libp2p's default), except those
/// to peers a conversation is going on with, kept open for
/// [`crate::keep_alive::KEEP`] after their last envelope: a profile meets
/// many peers it has nothing to say to (a DHT query alone connects to
/// dozens), and each open connection costs memory.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Streams a peer may have open at once on one connection, yamux or QUIC
/// (the libraries' defaults are 512 and 256). A profile needs about 30:
/// 16 envelope requests each way, prekeys, identify, ping, Kademlia,
/// hole punching. Each yamux stream may hold up to 256 KiB that the peer
/// sent and we have not read yet, so this bounds that memory at 16 MiB per
/// connection (128 MiB at yamux's default).
pub const MAX_STREAMS_PER_CONNECTION: u16 = 64;
/// QUIC flow-control windows: a stream may have 1 MiB unread, a connection
/// 4 MiB in all (libp2p's defaults: 10 MB and 15 MB). The largest request
/// (4 MiB, `wire::MAX_REQUEST_BYTES`) still passes: a window bounds what is
/// in flight, not what a stream carries.
pub const QUIC_STREAM_WINDOW: u32 = 1024 * 1024;
/// See [`QUIC_STREAM_WINDOW`].
pub const QUIC_CONNECTION_WINDOW: u32 = 4 * 1024 * 1024;

/// yamux with [`MAX_STREAMS_PER_CONNECTION`].
fn yamux_config() -> yamux::Config {
    let mut config = yamux::Config::default();
    config.set_max_num_streams(usize::from(MAX_STREAMS_PER_CONNECTION));
    config
}

/// Retry tick.
pub const TICK: Duration = Duration::from_millis(500);
/// Received-id rows the tick looks at for pruning (a full pass over a
/// million rows takes about half an hour of ticks).
const PRUNE_ROWS_PER_TICK: usize = 256;
/// Inbound requests one peer may make per second (burst up to twice that).
pub const PEER_REQUESTS_PER_SECOND: f64 = 100.0;
/// Inbound `/kabar/prekey/1` requests one peer may make per second (burst
/// up to [`PEER_PREKEY_REQUESTS_BURST`]); over it, a request gets no answer.
/// A contact asks once per [`crate::prekeys::FETCH_EVERY_MS`].
pub const PEER_PREKEY_REQUESTS_PER_SECOND: f64 = 1.0;
/// Burst of [`PEER_PREKEY_REQUESTS_PER_SECOND`].
pub const PEER_PREKEY_REQUESTS_BURST: f64 = 5.0;
/// The prekey counts of `node info` are read again at least every this many
/// ticks (also after anything that may have changed them).
const PREKEY_STATUS_EVERY_TICKS: u32 = 120;
/// Kademlia protocol name: Kabar's own DHT, apart from the IPFS one.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/kabar/kad/1");
/// Identify protocol version string of Kabar nodes and service nodes.
pub const IDENTIFY_PROTOCOL: &str = "/kabar/id/1";
/// A profile announces new addresses (to contacts and the DHT) once they
/// have been stable this long: a start or a network change produces a burst
/// of address events.
pub const ANNOUNCE_AFTER: Duration = Duration::from_secs(2);
/// The profile's address record is published again this often (its DHT
/// lifetime is [`RECORD_TTL`]).
pub const REPUBLISH_EVERY: Duration = Duration::from_secs(20 * 60);
/// Lifetime of an address record on the DHT.
pub const RECORD_TTL: Duration = Duration::from_secs(60 * 60);
/// A failed publish is tried again after this long.
pub const REPUBLISH_RETRY: Duration = Duration::from_secs(15);
/// At most one DHT lookup per peer in this period.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(20);
/// At most this many DHT lookups in flight.
pub const MAX_LOOKUPS: usize = 32;
/// On swarm events, the reachability part of a profile's status (NAT,
/// relays, peers, hole punching) is rebuilt at most this often; every other
/// source (control commands, the engine's answers, the 500 ms retry tick)
/// rebuilds it at once.
pub const STATUS_REFRESH: Duration = Duration::from_millis(100);
/// A relayed connection to a peer is closed this long after a direct
/// connection to the same peer appears (hole punching finishes first).
pub const CLOSE_RELAYED_AFTER: Duration = Duration::from_secs(2);
/// Reserving on a relay is retried with a delay doubling from this…
pub const RESERVE_RETRY_MIN: Duration = Duration::from_secs(1);
/// …to this.
pub const RESERVE_RETRY_MAX: Duration = Duration::from_secs(30);
/// Most hole-punch timings kept for `node info`.
const MAX_TIMINGS: usize = 256;
/// After hole punching to a peer fails (DCUtR gives up after three
/// attempts on one relayed connection), a new relayed connection is opened
/// to punch again after about this long (±50 %, at random), then after
/// twice as long each time…
pub const PUNCH_AGAIN_MIN: Duration = Duration::from_secs(10);
/// …up to this, for as long as the peer stays connected only through relays.
pub const PUNCH_AGAIN_MAX: Duration = Duration::from_secs(300);
/// Most relay circuit addresses remembered per connected peer (from its
/// identify listen addresses), to open a new relayed connection with.
const MAX_CIRCUITS_PER_PEER: usize = 4;

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
    /// where no external address is ever confirmed). Otherwise a profile
    /// serves the DHT once AutoNAT finds it publicly reachable.
    pub kad_server: bool,
    /// Relays (multiaddrs ending in `/p2p/<relay>`) every profile adds to the
    /// list remembered in its store.
    pub relays: Vec<Multiaddr>,
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
            relays: Vec::new(),
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
        pub(super) relay_client: relay::client::Behaviour,
        pub(super) dcutr: dcutr::Behaviour,
        pub(super) autonat: autonat::Behaviour,
        pub(super) envelope: request_response::Behaviour<EnvelopeCodec>,
        pub(super) prekey: request_response::Behaviour<PrekeyCodec>,
        pub(super) identify: identify::Behaviour,
        pub(super) ping: ping::Behaviour,
        pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
        pub(super) mdns: Toggle<mdns::tokio::Behaviour>,
        pub(super) keep: crate::keep_alive::Behaviour,
    }
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
#[error("network: {0}")]
pub struct NetworkError(pub String);

/// Builds the swarm of a profile from its Ed25519 seed (so its PeerId is the
/// profile's identity).
///
/// `inflight` bounds the bytes of inbound envelope requests being read at
/// once, across all the profile's connections (one budget per profile).
pub fn build_swarm(
    seed: &[u8; 32],
    config: &NetworkConfig,
    inflight: InflightBudget,
) -> Result<Swarm<Behaviour>, NetworkError> {
    let mut seed = *seed;
    let keypair = libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).map_err(|e| NetworkError(e.to_string()))?;
    let mdns_enabled = config.mdns;
    let kad_server = config.kad_server;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux_config)
        .map_err(|e| NetworkError(e.to_string()))?
        .with_quic_config(|mut c| {
            c.max_concurrent_stream_limit = u32::from(MAX_STREAMS_PER_CONNECTION);
            c.max_stream_data = QUIC_STREAM_WINDOW;
            c.max_connection_data = QUIC_CONNECTION_WINDOW;
            c
        })
        .with_dns()
        .map_err(|e| NetworkError(e.to_string()))?
        .with_relay_client(noise::Config::new, yamux_config)
        .map_err(|e| NetworkError(e.to_string()))?
        .with_behaviour(|key, relay_client| {
            let peer_id = key.public().to_peer_id();
            // Per peer: a relayed connection, the direct one hole punching
            // makes (both sides may dial at once), and one spare.
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(64))
                .with_max_pending_outgoing(Some(64))
                .with_max_established_incoming(Some(512))
                .with_max_established_outgoing(Some(512))
                .with_max_established_per_peer(Some(4));
            let envelope = request_response::Behaviour::with_codec(
                EnvelopeCodec::new(inflight),
                [(PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(30))
                    .with_max_concurrent_streams(16),
            );
            // One byte in, at most 274 out: a few streams per connection
            // are plenty (a contact asks once per 10 minutes).
            let prekey = request_response::Behaviour::with_codec(
                PrekeyCodec,
                [(crate::prekey_codec::PROTOCOL, ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(Duration::from_secs(30))
                    .with_max_concurrent_streams(4),
            );
            let mut kad = kad_behaviour(peer_id, kad::store::MemoryStoreConfig::default());
            kad.set_mode(Some(if kad_server { kad::Mode::Server } else { kad::Mode::Client }));
            // AutoNAT asks our relays (added as servers at start) and, on the
            // internet, connected peers at public IPs to dial us back.
            let autonat = autonat::Behaviour::new(
                peer_id,
                autonat::Config {
                    boot_delay: Duration::from_secs(1),
                    retry_interval: Duration::from_secs(20),
                    refresh_interval: Duration::from_secs(5 * 60),
                    throttle_server_period: Duration::from_secs(10),
                    ..Default::default()
                },
            );
            let mdns =
                if mdns_enabled { Some(mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)?) } else { None };
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                memory: memory_connection_limits::Behaviour::with_max_percentage(0.9),
                relay_client,
                dcutr: dcutr::Behaviour::new(peer_id),
                autonat,
                envelope,
                prekey,
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version("kabar/0.1".into()),
                ),
                ping: ping::Behaviour::default(),
                kad,
                mdns: Toggle::from(mdns),
                keep: crate::keep_alive::Behaviour::default(),
            })
        })
        .map_err(|e| NetworkError(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_TIMEOUT))
        .build();
    Ok(swarm)
}

/// Kademlia on `/kabar/kad/1` that stores only valid address records
/// ([`addresses::accept_put`]); the caller inserts accepted PUTs itself.
pub(crate) fn kad_behaviour(
    peer_id: PeerId,
    store: kad::store::MemoryStoreConfig,
) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config.set_record_ttl(Some(RECORD_TTL));
    config.set_publication_interval(None);
    config.set_record_filtering(kad::StoreInserts::FilterBoth);
    kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::with_config(peer_id, store), config)
}

/// Stores an inbound PUT if it is a valid, not older address record.
pub(crate) fn on_inbound_put(kad: &mut kad::Behaviour<kad::store::MemoryStore>, record: Option<kad::Record>) {
    use kad::store::RecordStore;
    let Some(mut record) = record else { return };
    let existing = kad.store_mut().get(&record.key).map(|r| r.into_owned());
    if addresses::accept_put(&record, existing.as_ref()) {
        // The sender's expiry is not trusted past our own TTL.
        let latest = Instant::now() + RECORD_TTL;
        record.expires = Some(record.expires.map_or(latest, |e| e.min(latest)));
        let _ = kad.store_mut().put(record);
    }
}

/// Puts a peer in the DHT routing table if it serves the DHT (says so in
/// identify), at its dialable addresses (not circuits: relayed peers are DHT
/// clients).
pub(crate) fn add_dht_server(kad: &mut kad::Behaviour<kad::store::MemoryStore>, peer: PeerId, info: identify::Info) {
    if !info.protocols.contains(&KAD_PROTOCOL) {
        return;
    }
    for addr in info.listen_addrs.into_iter().filter(|a| !addresses::is_relayed(a)) {
        kad.add_address(&peer, addr);
    }
}

/// One configured relay of a profile.
struct Relay {
    address: Multiaddr,
    peer: PeerId,
    listener: Option<ListenerId>,
    reserved: bool,
    retry_at: Instant,
    backoff: Duration,
}

/// Reachability state of a profile's loop: relays and reservations, the
/// NAT verdict, how each peer is connected, what is advertised, and DHT
/// publishing and lookups.
struct Reach {
    keypair: libp2p::identity::Keypair,
    kad_server: bool,
    relays: Vec<Relay>,
    public: bool,
    nat: &'static str,
    /// Open connections: peer and whether relayed.
    connections: HashMap<ConnectionId, (PeerId, bool)>,
    /// When the first relayed connection to a peer opened (hole-punch timing).
    relayed_since: HashMap<PeerId, Instant>,
    /// Relayed connections to close (a direct one exists) and when.
    close_relayed: HashMap<PeerId, Instant>,
    /// Peers reached only through relays whose hole punching failed: when
    /// to open a new relayed connection to punch again (None while that
    /// attempt runs), and the delay used last.
    punch_again: HashMap<PeerId, (Option<Instant>, Duration)>,
    /// Connected peers' relay circuit addresses (identify), for `punch_again`.
    circuits: HashMap<PeerId, Vec<Multiaddr>>,
    advertised: Vec<Multiaddr>,
    announce_at: Option<Instant>,
    publish_at: Option<Instant>,
    lookups: HashMap<kad::QueryId, PeerId>,
    last_lookup: HashMap<PeerId, Instant>,
    hole_punch: HolePunchStatus,
    record_published: bool,
    /// The connections and relays the peer list in the status was last
    /// built from (rebuilt only when they change: it names every peer by
    /// its base58 PeerId).
    peers_shown: Option<(u64, Vec<PeerId>)>,
    /// PeerIds in base58, for the status's peer list.
    peer_names: HashMap<PeerId, String>,
    /// The advertised addresses and relays the status last showed.
    advertised_shown: Vec<Multiaddr>,
    relays_shown: Vec<(Multiaddr, bool)>,
    /// Bumped whenever `connections` changes.
    connections_changed: u64,
    /// Relay listeners to remove once their reservation is accepted (or
    /// their listener closes): removing one while its reservation is
    /// pending makes libp2p-relay 0.22 panic when the acceptance arrives
    /// (`priv_client.rs`, "Relay connection exist").
    release_after_accept: Vec<(PeerId, ListenerId)>,
}

impl Reach {
    fn new(keypair: libp2p::identity::Keypair, kad_server: bool) -> Self {
        Reach {
            keypair,
            kad_server,
            relays: Vec::new(),
            public: false,
            nat: "unknown",
            connections: HashMap::new(),
            relayed_since: HashMap::new(),
            close_relayed: HashMap::new(),
            punch_again: HashMap::new(),
            circuits: HashMap::new(),
            release_after_accept: Vec::new(),
            advertised: Vec::new(),
            announce_at: None,
            publish_at: None,
            lookups: HashMap::new(),
            last_lookup: HashMap::new(),
            hole_punch: HolePunchStatus::default(),
            record_published: false,
            peers_shown: None,
            peer_names: HashMap::new(),
            advertised_shown: Vec::new(),
            relays_shown: Vec::new(),
            connections_changed: 0,
        }
    }

    /// Stops listening through a relay: at once if the reservation is
    /// accepted, else once it is (see `release_after_accept`).
    fn release(&mut self, swarm: &mut Swarm<Behaviour>, relay: PeerId, listener: ListenerId, reserved: bool) {
        if reserved {
            swarm.remove_listener(listener);
        } else {
            self.release_after_accept.push((relay, listener));
        }
    }

    fn relay_for_listener(&mut self, id: ListenerId) -> Option<&mut Relay> {
        self.relays.iter_mut().find(|r| r.listener == Some(id))
    }

    fn is_relay(&self, peer: &PeerId) -> bool {
        self.relays.iter().any(|r| &r.peer == peer)
    }

    fn has_direct(&self, peer: &PeerId) -> bool {
        self.connections.values().any(|(p, relayed)| p == peer && !relayed)
    }

    /// Hole punching to `peer` failed: punch again later over a new relayed
    /// connection, if the peer is still reached only through relays.
    fn punch_later(&mut self, peer: PeerId) {
        if self.has_direct(&peer) || !self.connections.values().any(|(p, _)| *p == peer) {
            return;
        }
        let entry = self.punch_again.entry(peer).or_insert((None, PUNCH_AGAIN_MIN / 2));
        if entry.0.is_none() {
            entry.1 = (entry.1 * 2).min(PUNCH_AGAIN_MAX);
            // Both ends usually fail together and would both open a new
            // relayed connection at the same moment: two DCUtR runs whose
            // simultaneous dials share ports then spoil each other. A
            // random spread of ±50 % lets one go first; the other's punch
            // is cancelled when the direct connection appears.
            entry.0 = Some(Instant::now() + entry.1.mul_f64(rand::random_range(0.5..1.5)));
        }
    }

    /// Opens a new relayed connection to each peer whose punch is due, so
    /// that DCUtR runs on it again (the peer, listening on its circuit,
    /// starts it). The connection carries on as any other relayed one;
    /// unused, it closes after the idle timeout.
    fn punch_due(&mut self, swarm: &mut Swarm<Behaviour>, now: Instant) {
        let due: Vec<PeerId> =
            self.punch_again.iter().filter(|(_, (at, _))| at.is_some_and(|t| t <= now)).map(|(p, _)| *p).collect();
        for peer in due {
            let Some(circuits) = self.circuits.get(&peer).filter(|c| !c.is_empty()) else {
                self.punch_again.remove(&peer);
                continue;
            };
            if let Some(entry) = self.punch_again.get_mut(&peer) {
                entry.0 = None;
            }
            let opts = DialOpts::peer_id(peer)
                .condition(libp2p::swarm::dial_opts::PeerCondition::Always)
                .addresses(circuits.clone())
                .build();
            match swarm.dial(opts) {
                Ok(()) => {
                    self.hole_punch.retries += 1;
                    tracing::info!(%peer, "hole punching again over a new relayed connection");
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "cannot open a relayed connection to punch again");
                    self.punch_later(peer);
                }
            }
        }
    }

    /// Remembers the relay circuit addresses among a peer's listen addresses.
    fn learn_circuits(&mut self, peer: PeerId, listen_addrs: &[Multiaddr]) {
        let circuits: Vec<Multiaddr> = listen_addrs
            .iter()
            .filter(|a| a.iter().any(|p| p == Protocol::P2pCircuit))
            .take(MAX_CIRCUITS_PER_PEER)
            .map(|a| match a.iter().last() {
                Some(Protocol::P2p(_)) => a.clone(),
                _ => a.clone().with(Protocol::P2p(peer)),
            })
            .collect();
        if circuits.is_empty() {
            self.circuits.remove(&peer);
        } else {
            self.circuits.insert(peer, circuits);
        }
    }

    /// Writes the reachability part of `status`; returns whether its peer
    /// list was rebuilt (the one part too long to compare on every event,
    /// rebuilt only if `peers` is set). Addresses are written out only when
    /// they change: this runs after every event of a busy profile, and what
    /// a card is made of (the advertised addresses) must show at once.
    fn status(&mut self, status: &mut ProfileStatus, peers: bool) -> bool {
        if status.nat != self.nat {
            status.nat = self.nat.to_string();
        }
        let dht = if self.kad_server || self.public { "server" } else { "client" };
        if status.dht != dht {
            status.dht = dht.to_string();
        }
        if self.advertised_shown != self.advertised {
            self.advertised_shown = self.advertised.clone();
            status.advertised = self.advertised.iter().map(|a| a.to_string()).collect();
        }
        let relays_now: Vec<(Multiaddr, bool)> = self.relays.iter().map(|r| (r.address.clone(), r.reserved)).collect();
        if self.relays_shown != relays_now {
            status.relays = relays_now
                .iter()
                .map(|(address, reserved)| RelayStatus { address: address.to_string(), reserved: *reserved })
                .collect();
            self.relays_shown = relays_now;
        }
        status.hole_punch = self.hole_punch.clone();
        status.address_record_published = self.record_published;
        if !peers {
            return false;
        }
        let relays: Vec<PeerId> = self.relays.iter().map(|r| r.peer).collect();
        if self
            .peers_shown
            .as_ref()
            .is_some_and(|(changed, shown)| *changed == self.connections_changed && *shown == relays)
        {
            return false;
        }
        self.peers_shown = Some((self.connections_changed, relays));
        let mut peers: HashMap<PeerId, bool> = HashMap::new();
        for (peer, relayed) in self.connections.values() {
            if !self.is_relay(peer) {
                let direct = peers.entry(*peer).or_insert(false);
                *direct |= !relayed;
            }
        }
        // PeerIds are written out (base58) once per peer, not on every
        // rebuild: a busy profile's list changes many times a second.
        if self.peer_names.len() > 2 * peers.len() + 64 {
            self.peer_names.retain(|p, _| peers.contains_key(p));
        }
        let names = &mut self.peer_names;
        let mut list: Vec<PeerStatus> = peers
            .into_iter()
            .map(|(p, direct)| PeerStatus {
                peer_id: names.entry(p).or_insert_with(|| p.to_string()).clone(),
                connection: if direct { "direct" } else { "relayed" }.to_string(),
            })
            .collect();
        list.sort_by(|a, b| a.peer_id.cmp(&b.peer_id));
        status.peers = list;
        true
    }
}

/// What connects a profile's loop to the rest of the node.
pub struct ProfileLinks {
    /// Commands from the control API.
    pub commands: mpsc::Receiver<Command>,
    /// Events for subscribers.
    pub events: broadcast::Sender<NodeEvent>,
    /// The profile's live status.
    pub status: watch::Sender<ProfileStatus>,
    /// Flips to true when the node stops.
    pub shutdown: watch::Receiver<bool>,
    /// The budget of inbound bytes in flight given to [`build_swarm`].
    pub inflight: InflightBudget,
}

/// Runs one profile until `shutdown` flips or the command channel closes.
pub async fn run_profile(mut swarm: Swarm<Behaviour>, mut engine: Engine, config: NetworkConfig, links: ProfileLinks) {
    let ProfileLinks { mut commands, events, status: status_tx, mut shutdown, inflight } = links;
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
    let keypair = match engine.store().identity() {
        Ok(identity) => {
            let mut seed = identity.signing_seed();
            libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).ok()
        }
        Err(_) => None,
    };
    let Some(keypair) = keypair else {
        let reason = damage_reason(engine.store(), "cannot read the profile's identity");
        show_failed(&status_tx, status_tx.borrow().clone(), engine.store().name(), reason);
        // Not closed: closing writes to the damaged file.
        std::mem::forget(engine);
        return;
    };
    let mut reach = Reach::new(keypair, config.kad_server);
    // Relays remembered in the store, plus those given on the command line.
    let mut relay_list = engine.store().relays().unwrap_or_default();
    for r in &config.relays {
        let r = r.to_string();
        if !relay_list.contains(&r) {
            relay_list.push(r);
        }
    }
    if let Err(e) = engine.store().set_relays(&relay_list) {
        tracing::warn!(error = %e, "cannot remember relays");
    }
    for r in relay_list.iter().filter_map(|r| r.parse::<Multiaddr>().ok()) {
        add_relay(&mut swarm, &mut reach, r);
    }
    let (mut courier, mut courier_events) = Courier::new();
    courier.set_mailboxes(engine.mailboxes());
    let mut status = status_tx.borrow().clone();
    let mut pending: HashMap<OutboundRequestId, (PeerKey, Vec<[u8; 16]>)> = HashMap::new();
    let mut limits = request_buckets();
    let mut prekey_limits = prekey_request_buckets();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A Send CSPRNG (ThreadRng is not Send), seeded from the thread RNG.
    let mut rng: rand::rngs::StdRng = rand::SeedableRng::from_rng(&mut rand::rng());
    // The signed prekey schedule and the one-time prekey supply (again from
    // the tick; the engine checks at most once an hour).
    if let Err(e) = engine.maintain_prekeys(now_ms(), &mut rng) {
        tracing::warn!(profile = %engine.store().name(), error = %e, "prekey maintenance failed");
    }
    refresh_prekey_status(&engine, &mut status.prekeys);
    // Ticks since the prekey counts were read; they are read again when
    // something may have changed them, or every PREKEY_STATUS_EVERY_TICKS.
    let mut prekey_status_age: u32 = 0;
    // Store damage found while running: the profile stops (see
    // `stop_damaged`).
    let mut failure: Option<String> = None;

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
    status.guard = engine.guard_status();
    status.outbox = engine.queued();

    // From here on the engine runs on its own thread: the loop never
    // waits on the disk (see `crate::worker`).
    let name = engine.store().name().to_string();
    let mut mailboxes: Vec<kabar_storage::OwnMailbox> = engine.mailboxes().to_vec();
    // Each group's flushes, deferred to its end: what it queued for one
    // peer leaves in one request.
    let flush_group: crate::worker::GroupEnd<Reply> = Box::new(|engine| {
        let result = engine.flush_deferred(now_ms());
        match result {
            Ok(actions) if actions.is_empty() => None,
            result => Some(outcome(engine, "flushing the outbox failed", result)),
        }
    });
    let (worker, mut reports): (EngineWorker, _) = match Worker::start_with(engine, flush_group) {
        Ok(started) => started,
        Err(e) => {
            status.failed = Some(format!("cannot start the profile's engine thread: {e}"));
            status_tx.send_replace(status);
            return;
        }
    };
    // At most one tick's engine work in flight: a slow disk delays ticks,
    // it never piles them up.
    let mut tick_in_flight = false;
    // The loop's state as the replies and event handlers see it (borrowed
    // afresh where it is needed).
    macro_rules! loop_state {
        () => {
            LoopState {
                pending: &mut pending,
                limits: &mut limits,
                prekey_limits: &mut prekey_limits,
                status: &mut status,
                reach: &mut reach,
                courier: &mut courier,
                failure: &mut failure,
                mailboxes: &mut mailboxes,
                tick_in_flight: &mut tick_in_flight,
                inflight: &inflight,
                name: &name,
            }
        };
    }
    // When the reachability part of the status was last rebuilt (it lists
    // every peer by PeerId: too dear to rebuild on every event of a busy
    // profile).
    let mut reach_shown = Instant::now().checked_sub(STATUS_REFRESH).unwrap_or_else(Instant::now);
    // Peers whose next request is paced (`Action::FlushAt`), and when.
    let mut paced: HashMap<PeerKey, u64> = HashMap::new();
    let pace_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(pace_timer);
    let mut pace_armed: Option<u64> = None;

    loop {
        // A swarm event (the busy source) refreshes the reachability part of
        // the status at most every STATUS_REFRESH; anything else (a control
        // command, the engine's answer, the courier, the tick) at once, so
        // what a control call changed is in `node.info` when it answers.
        let mut swarm_event = false;
        let actions: Vec<Action> = tokio::select! {
            _ = shutdown.changed() => break,
            command = commands.recv() => match command {
                None => break,
                Some(Command::Job(job, answer)) => {
                    let snapshot = status.clone();
                    let _ = worker.run_job(job.stages_sends, move |engine, _| {
                        let result = (job.run)(engine, &snapshot).map_err(|mut e| {
                            if e.code == crate::rpc_error::codes::DAMAGED {
                                e.message = damage_reason(engine.store(), &e.message);
                                engine.store().mark_broken(e.message.clone());
                            }
                            e
                        });
                        reply(move |_, ctx| match result {
                            Ok((value, actions)) => {
                                let _ = answer.send(Ok(value));
                                actions
                            }
                            Err(e) => {
                                if e.code == crate::rpc_error::codes::DAMAGED {
                                    ctx.failure.get_or_insert_with(|| e.message.clone());
                                }
                                let _ = answer.send(Err(e));
                                Vec::new()
                            }
                        })
                    });
                    Vec::new()
                }
                Some(Command::Dial(addr)) => {
                    if let Err(e) = swarm.dial(addr) {
                        tracing::warn!(error = %e, "dial failed");
                    }
                    Vec::new()
                }
                Some(Command::Relay(change, answer)) => {
                    change_relays(&mut swarm, &mut reach, &worker, change, answer);
                    Vec::new()
                }
                Some(Command::Mailbox(change, answer)) => {
                    change_mailboxes(&worker, &mut courier, &mailboxes, change, answer);
                    Vec::new()
                }
            },
            Some(event) = courier_events.recv() => {
                // Fetched envelopes may start sessions with our one-time prekeys.
                prekey_status_age = PREKEY_STATUS_EVERY_TICKS;
                on_courier_event(&worker, &mut courier, &mailboxes, event);
                Vec::new()
            }
            _ = tick.tick() => {
                prekey_status_age += 1;
                let refresh = prekey_status_age >= PREKEY_STATUS_EVERY_TICKS;
                if !tick_in_flight {
                    if refresh {
                        prekey_status_age = 0;
                    }
                    let queued = worker.run(move |engine, rng| {
                        let now = now_ms();
                        let result = engine.on_tick(now, rng);
                        let maintained = engine.maintain_prekeys(now, rng);
                        // What committed without an fsync (acknowledgements,
                        // attempts) is durable within a tick.
                        let maintained = maintained.and_then(|m| engine.store().make_durable().map(|_| m).map_err(Into::into));
                        // Received ids past the duplicate window, a few at a
                        // time (protocol.md §8.3).
                        let maintained = maintained.and_then(|m| {
                            engine.store().prune_received(now, PRUNE_ROWS_PER_TICK).map(|_| m).map_err(Into::into)
                        });
                        let counts = if refresh { prekey_counts(engine) } else { None };
                        let mut damage = result.as_ref().err().and_then(|e| damage_of(engine, e));
                        if let Err(e) = &result {
                            tracing::warn!(error = %e, "retry tick failed");
                        }
                        if let Err(e) = &maintained {
                            tracing::warn!(error = %e, "prekey maintenance failed");
                            damage = damage.or_else(|| damage_of(engine, e));
                        }
                        reply(move |_, ctx| {
                            *ctx.tick_in_flight = false;
                            if let Some(d) = damage {
                                ctx.failure.get_or_insert(d);
                            }
                            if let Some((signed_prekey_id, one_time_prekeys, one_time_prekeys_held)) = counts {
                                ctx.status.prekeys.signed_prekey_id = signed_prekey_id;
                                ctx.status.prekeys.one_time_prekeys = one_time_prekeys;
                                ctx.status.prekeys.one_time_prekeys_held = one_time_prekeys_held;
                            }
                            result.unwrap_or_default()
                        })
                    });
                    // Refused (the engine is far behind): the next tick tries.
                    tick_in_flight = queued;
                }
                on_reach_tick(&mut swarm, &mut reach, &worker);
                swarm.behaviour_mut().keep.expire(Instant::now());
                if courier.fetch_due() {
                    courier.fetch_all(&mailboxes);
                }
                Vec::new()
            }
            report = reports.recv() => match report {
                // The worker ended without saying why: never a profile that
                // looks alive and answers nothing.
                None => {
                    failure.get_or_insert_with(|| "the profile's engine stopped unexpectedly".to_string());
                    Vec::new()
                }
                Some(Report::Done(reply)) => {
                    let mut ctx = loop_state!();
                    reply(&mut swarm, &mut ctx)
                }
                Some(Report::Counters { guard, queued }) => {
                    status.guard = guard;
                    status.outbox = queued;
                    Vec::new()
                }
                Some(Report::Failed(reason)) => {
                    failure.get_or_insert(reason);
                    Vec::new()
                }
            },
            () = &mut pace_timer, if pace_armed.is_some() => {
                pace_armed = None;
                let now = now_ms();
                let due: Vec<PeerKey> = paced.iter().filter(|(_, at)| **at <= now).map(|(p, _)| *p).collect();
                paced.retain(|_, at| *at > now);
                if !due.is_empty() {
                    worker.act("paced flush failed", move |engine, _| {
                        let mut actions = Vec::new();
                        for peer in &due {
                            actions.extend(engine.flush_peer(peer, now_ms())?);
                        }
                        Ok(actions)
                    });
                }
                Vec::new()
            }
            event = swarm.select_next_some() => {
                swarm_event = true;
                if matches!(
                    event,
                    SwarmEvent::Behaviour(BehaviourEvent::Envelope(_) | BehaviourEvent::Prekey(_))
                ) {
                    // Received envelopes may start sessions with our one-time
                    // prekeys; prekey requests hand them out.
                    prekey_status_age = PREKEY_STATUS_EVERY_TICKS;
                }
                let mut ctx = loop_state!();
                handle_event(&mut swarm, &worker, &mut ctx, event)
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
                    swarm.behaviour_mut().keep.touch(peer_id, Instant::now());
                    pending.insert(id, (peer, message_ids));
                }
                Action::Deposit { peer, mailbox, message_ids, envelopes } => {
                    tracing::debug!(envelopes = envelopes.len(), "deposit");
                    courier.deposit(peer, mailbox, message_ids, envelopes);
                }
                Action::Revoke { mailbox, tag, revoked } => courier.revoke(mailbox, tag, revoked),
                Action::FlushAt { peer, at_ms } => {
                    let at = paced.entry(peer).or_insert(at_ms);
                    *at = (*at).min(at_ms);
                }
                Action::FetchPrekeys { peer, addresses } => {
                    let peer_id = peer_id_of(&peer);
                    if !swarm.is_connected(&peer_id) {
                        dial(&mut swarm, &peer, &addresses);
                    }
                    tracing::debug!(%peer_id, connected = swarm.is_connected(&peer_id), "fetching prekeys");
                    swarm.behaviour_mut().prekey.send_request(&peer_id, PrekeyRequest);
                }
            }
        }
        // The pace timer at the soonest paced peer (bounded: one entry per
        // peer with queued messages).
        if let Some(soonest) = paced.values().min().copied()
            && pace_armed != Some(soonest)
        {
            let wait = Duration::from_millis(soonest.saturating_sub(now_ms()));
            pace_timer.as_mut().reset(tokio::time::Instant::now() + wait);
            pace_armed = Some(soonest);
        }
        status.connected_peers = swarm.connected_peers().count();
        let rebuild_peers = !swarm_event || reach_shown.elapsed() >= STATUS_REFRESH;
        let peers_rebuilt = reach.status(&mut status, rebuild_peers);
        if rebuild_peers {
            reach_shown = Instant::now();
        }
        if status.mailboxes != courier.states() {
            status.mailboxes = courier.states().to_vec();
        }
        status.deposited = courier.deposited();
        status.frames_refused = inflight.refused();
        // The peer list (hundreds of entries on a busy profile) is compared
        // and copied only when it was rebuilt.
        status_tx.send_if_modified(|s| {
            let peers_changed = peers_rebuilt && s.peers != status.peers;
            let changed = peers_changed
                || s.listen_addrs != status.listen_addrs
                || s.connected_peers != status.connected_peers
                || s.nat != status.nat
                || s.dht != status.dht
                || s.advertised != status.advertised
                || s.relays != status.relays
                || s.hole_punch != status.hole_punch
                || s.address_record_published != status.address_record_published
                || s.mailboxes != status.mailboxes
                || s.deposited != status.deposited
                || s.guard != status.guard
                || s.outbox != status.outbox
                || s.frames_refused != status.frames_refused
                || s.prekeys != status.prekeys;
            if changed {
                let peers = std::mem::take(&mut status.peers);
                let shown = if peers_changed { peers.clone() } else { std::mem::take(&mut s.peers) };
                *s = ProfileStatus { peers: shown, ..status.clone() };
                status.peers = peers;
            }
            changed
        });
        if let Some(reason) = failure.take() {
            stop_damaged(&worker, &status_tx, status, &name, reason);
            return;
        }
    }
    // The engine finishes what was queued, and its store is closed before
    // the node reports it stopped (a restart in this process opens it).
    // What it answers meanwhile still reaches control clients: a send it
    // committed is answered as sent, never "shutting down" (a client told
    // that would send it again). Nothing more goes on the network: what
    // waits to be sent stays in the outbox for the next start.
    let stopping = worker.stop();
    tokio::pin!(stopping);
    let mut last = |report: Report<Reply>, swarm: &mut Swarm<Behaviour>| {
        let Report::Done(reply) = report else { return };
        let mut ctx = loop_state!();
        for action in reply(swarm, &mut ctx) {
            if let Action::Notify(event) = action {
                let _ = events.send(event);
            }
        }
    };
    loop {
        tokio::select! {
            () = &mut stopping => break,
            Some(report) = reports.recv() => last(report, &mut swarm),
        }
    }
    while let Ok(report) = reports.try_recv() {
        last(report, &mut swarm);
    }
    tracing::info!(profile = %name, "profile stopped");
}

/// What comes back from the engine's thread, applied on the loop once the
/// engine's writes are durable: it may answer a peer or a control client,
/// and returns the actions to carry out.
type Reply = Box<dyn for<'a, 'b> FnOnce(&'a mut Swarm<Behaviour>, &'a mut LoopState<'b>) -> Vec<Action> + Send>;

/// The engine of a profile, on its own thread.
type EngineWorker = Worker<Reply>;

fn reply(
    f: impl for<'a, 'b> FnOnce(&'a mut Swarm<Behaviour>, &'a mut LoopState<'b>) -> Vec<Action> + Send + 'static,
) -> Reply {
    Box::new(f)
}

/// The engine's actions, or on an error a warning `what` (and the profile
/// stopped if the store is damaged).
fn outcome(engine: &Engine, what: &'static str, result: Result<Vec<Action>, crate::engine::EngineError>) -> Reply {
    match result {
        Ok(actions) => reply(move |_, _| actions),
        Err(e) => {
            tracing::warn!(profile = %engine.store().name(), error = %e, "{what}");
            let damage = damage_of(engine, &e);
            reply(move |_, ctx| {
                if let Some(d) = damage {
                    ctx.failure.get_or_insert(d);
                }
                Vec::new()
            })
        }
    }
}

impl EngineWorker {
    /// Runs `f` on the engine; its actions (or its error, see [`outcome`])
    /// come back to the loop.
    fn act(
        &self,
        what: &'static str,
        f: impl FnOnce(&mut Engine, &mut rand::rngs::StdRng) -> Result<Vec<Action>, crate::engine::EngineError>
        + Send
        + 'static,
    ) {
        // Refused work is harmless to lose (see the worker's notes).
        let _ = self.run(move |engine, rng| {
            let result = f(engine, rng);
            outcome(engine, what, result)
        });
    }
}

/// Why a profile stops on store damage: `message`, naming the database
/// file if it does not already.
fn damage_reason(store: &kabar_storage::ProfileStore, message: &str) -> String {
    let path = store.path().display().to_string();
    if message.contains(&path) { message.to_string() } else { format!("{path}: {message}") }
}

/// Records in `failure` the store damage `e` reports, if it is damage.
fn damage_of(engine: &Engine, e: &crate::engine::EngineError) -> Option<String> {
    let crate::engine::EngineError::Store(s) = e else { return None };
    let reason = if s.is_damage() {
        Some(damage_reason(engine.store(), &s.to_string()))
    } else if s.is_unusable() {
        // Not damage, but the profile cannot write any more: shown failed
        // too, never a dead profile that looks alive.
        Some(format!(
            "profile database {} hit an I/O error (a full or failing disk?) and takes no more writes: {s}; restart the node once the disk is fixed",
            engine.store().path().display()
        ))
    } else {
        None
    };
    // The worker stops before anything else is written (see
    // `worker::group`).
    if let Some(r) = &reason {
        engine.store().mark_broken(r.clone());
    }
    reason
}

/// Shows a profile failed with `reason`: `node info` shows it, its commands
/// are refused (the control socket answers with the reason), its swarm
/// closes.
fn show_failed(status_tx: &watch::Sender<ProfileStatus>, mut status: ProfileStatus, name: &str, reason: String) {
    tracing::error!(profile = %name, %reason, "the profile's store is damaged or unusable; the profile stopped");
    status.failed = Some(reason);
    status.listen_addrs.clear();
    status.advertised.clear();
    status.peers.clear();
    status.connected_peers = 0;
    status_tx.send_replace(status);
}

/// Stops a profile whose store turned out damaged (or unusable) while the
/// node runs ([`show_failed`]). The store is not closed: redb's close
/// writes (its allocator state), and a damaged file is left as it is for
/// `kabar store check` and recovery; it stays locked until the node exits.
fn stop_damaged(
    worker: &EngineWorker,
    status_tx: &watch::Sender<ProfileStatus>,
    status: ProfileStatus,
    name: &str,
    reason: String,
) {
    show_failed(status_tx, status, name, reason);
    worker.abandon();
}

/// Handles what the courier's tasks report.
fn on_courier_event(
    worker: &EngineWorker,
    courier: &mut Courier,
    mailboxes: &[kabar_storage::OwnMailbox],
    event: CourierEvent,
) {
    match event {
        CourierEvent::Deposited { peer, message_ids, result } => {
            courier.deposit_done(result.as_ref().map_or(0, |o| o.accepted));
            worker.act("recording a deposit failed", move |engine, _| {
                engine.on_deposit_result(&peer, &message_ids, result, now_ms())
            });
        }
        CourierEvent::Page { address, items, reply: answer } => {
            let _ = worker.run(move |engine, rng| match engine.on_mailbox_items(&address, &items, now_ms(), rng) {
                Ok((deletable, actions)) => reply(move |_, _| {
                    // Committed and durable: the host may delete these now.
                    let _ = answer.send(deletable);
                    actions
                }),
                Err(e) => {
                    let _ = answer.send(Vec::new());
                    outcome(engine, "storing fetched envelopes failed; they stay in the mailbox", Err(e))
                }
            });
        }
        CourierEvent::Fetched { address, result } => {
            if let Err(e) = &result {
                tracing::info!(error = %e, "fetching a mailbox failed");
            }
            if courier.fetched(&address, &result) {
                // Someone waits for a round that starts after their call.
                courier.fetch_mailbox(mailboxes, &address);
            }
        }
        CourierEvent::Registered { mailbox, result, reply: answer } => {
            if let Err(e) = result {
                let _ = answer
                    .send(Err(crate::rpc_error::RpcError::new(crate::rpc_error::codes::UNAVAILABLE, e.to_string())));
                return;
            }
            let address = mailbox.address.clone();
            let _ = worker.run(move |engine, rng| match engine.add_mailbox(mailbox, now_ms(), rng) {
                Ok(actions) => {
                    let own = engine.mailboxes().to_vec();
                    reply(move |_, ctx| {
                        ctx.courier.set_mailboxes(&own);
                        ctx.courier.fetch_mailbox(&own, &address);
                        let _ = answer.send(Ok(ctx.courier.states().iter().map(|s| s.address.clone()).collect()));
                        *ctx.mailboxes = own;
                        actions
                    })
                }
                Err(e) => {
                    let _ = answer.send(Err(e.into()));
                    reply(|_, _| Vec::new())
                }
            });
        }
    }
}

/// Adds (registers on the host, in a task) or removes a mailbox.
fn change_mailboxes(
    worker: &EngineWorker,
    courier: &mut Courier,
    mailboxes: &[kabar_storage::OwnMailbox],
    change: MailboxChange,
    answer: crate::courier::MailboxReply,
) {
    use crate::rpc_error::{RpcError, codes};
    match change {
        MailboxChange::Add(address) => {
            let text = address.to_string();
            if mailboxes.iter().any(|m| m.address == text) {
                let _ = answer.send(Ok(mailboxes.iter().map(|m| m.address.clone()).collect()));
                return;
            }
            if mailboxes.len() >= kabar_storage::MAX_MAILBOXES {
                let max = kabar_storage::MAX_MAILBOXES;
                let _ = answer.send(Err(RpcError::new(codes::INVALID_VALUE, format!("at most {max} mailboxes"))));
                return;
            }
            let _ = worker.run(move |engine, rng| {
                let key = crate::mailbox::OwnerKey::generate(rng);
                match engine.blocked_tags(&key.to_bytes()) {
                    Ok(revoke) => {
                        let mailbox =
                            kabar_storage::OwnMailbox { address: text, key: key.to_bytes(), added_at_ms: now_ms() };
                        reply(move |_, ctx| {
                            ctx.courier.register(mailbox, revoke, answer);
                            Vec::new()
                        })
                    }
                    Err(e) => {
                        let _ = answer.send(Err(e.into()));
                        reply(|_, _| Vec::new())
                    }
                }
            });
        }
        MailboxChange::Fetch(fetched) => {
            let _ = answer.send(Ok(Vec::new()));
            courier.fetch_now(mailboxes, fetched);
        }
        MailboxChange::Remove(address) => {
            let _ = worker.run(move |engine, rng| match engine.remove_mailbox(&address, now_ms(), rng) {
                Ok((removed, actions)) => {
                    let own = engine.mailboxes().to_vec();
                    reply(move |_, ctx| {
                        if let Some(m) = removed {
                            ctx.courier.unregister(m);
                            ctx.courier.set_mailboxes(&own);
                            let _ = answer.send(Ok(ctx.courier.states().iter().map(|s| s.address.clone()).collect()));
                        } else {
                            let _ =
                                answer.send(Err(RpcError::new(codes::NOT_FOUND, format!("no mailbox at {address}"))));
                        }
                        *ctx.mailboxes = own;
                        actions
                    })
                }
                Err(e) => {
                    let _ = answer.send(Err(e.into()));
                    reply(|_, _| Vec::new())
                }
            });
        }
    }
}

/// Registers a relay: AutoNAT server, DHT entry point, dialled now, and a
/// reservation unless we are public.
fn add_relay(swarm: &mut Swarm<Behaviour>, reach: &mut Reach, address: Multiaddr) -> bool {
    let Some(peer) = relay_peer(&address) else {
        tracing::warn!(%address, "a relay address must end in /p2p/<relay PeerId>; ignored");
        return false;
    };
    if reach.relays.iter().any(|r| r.address == address) {
        return true;
    }
    let plain = addresses::without_peer(&address);
    swarm.add_peer_address(peer, plain.clone());
    swarm.behaviour_mut().kad.add_address(&peer, plain.clone());
    swarm.behaviour_mut().autonat.add_server(peer, Some(plain));
    if let Err(e) = swarm.dial(address.clone()) {
        tracing::debug!(%address, error = %e, "cannot dial relay yet");
    }
    reach.relays.push(Relay {
        address,
        peer,
        listener: None,
        reserved: false,
        retry_at: Instant::now(),
        backoff: RESERVE_RETRY_MIN,
    });
    true
}

fn change_relays(
    swarm: &mut Swarm<Behaviour>,
    reach: &mut Reach,
    worker: &EngineWorker,
    change: RelayChange,
    answer: oneshot::Sender<Result<Vec<String>, crate::rpc_error::RpcError>>,
) {
    use crate::rpc_error::{RpcError, codes};
    let refused = match change {
        RelayChange::Add(address) => {
            if reach.relays.len() >= 16 && !reach.relays.iter().any(|r| r.address == address) {
                Some(RpcError::new(codes::INVALID_VALUE, "at most 16 relays"))
            } else if !add_relay(swarm, reach, address) {
                Some(RpcError::new(codes::INVALID_VALUE, "a relay address must end in /p2p/<relay PeerId>"))
            } else {
                None
            }
        }
        RelayChange::Remove(address) => match reach.relays.iter().position(|r| r.address == address) {
            None => Some(RpcError::new(codes::NOT_FOUND, format!("{address} is not one of this profile's relays"))),
            Some(index) => {
                let relay = reach.relays.remove(index);
                if let Some(listener) = relay.listener {
                    reach.release(swarm, relay.peer, listener, relay.reserved);
                }
                reach.announce_at = Some(Instant::now() + ANNOUNCE_AFTER);
                None
            }
        },
    };
    if let Some(e) = refused {
        let _ = answer.send(Err(e));
        return;
    }
    let list: Vec<String> = reach.relays.iter().map(|r| r.address.to_string()).collect();
    let _ = worker.run(move |engine, _| {
        let stored = engine.store().set_relays(&list).map(|()| list).map_err(Into::into);
        reply(move |_, _| {
            let _ = answer.send(stored);
            Vec::new()
        })
    });
}

/// Timers of reachability: reserve on relays (with backoff), close relayed
/// connections made redundant by direct ones, announce and publish addresses.
fn on_reach_tick(swarm: &mut Swarm<Behaviour>, reach: &mut Reach, worker: &EngineWorker) {
    let now = Instant::now();
    if !reach.public {
        for relay in reach.relays.iter_mut().filter(|r| r.listener.is_none() && r.retry_at <= now) {
            match swarm.listen_on(relay.address.clone().with(Protocol::P2pCircuit)) {
                Ok(id) => relay.listener = Some(id),
                Err(e) => tracing::debug!(relay = %relay.address, error = %e, "cannot reserve"),
            }
            relay.retry_at = now + relay.backoff;
            relay.backoff = (relay.backoff * 2).min(RESERVE_RETRY_MAX);
        }
    }
    reach.punch_due(swarm, now);
    let due: Vec<PeerId> = reach.close_relayed.iter().filter(|(_, t)| **t <= now).map(|(p, _)| *p).collect();
    for peer in due {
        reach.close_relayed.remove(&peer);
        let relayed: Vec<ConnectionId> =
            reach.connections.iter().filter(|(_, (p, relayed))| *p == peer && *relayed).map(|(id, _)| *id).collect();
        for id in relayed {
            swarm.close_connection(id);
        }
    }
    if reach.announce_at.is_some_and(|t| t <= now) {
        reach.announce_at = None;
        let addrs: Vec<String> = reach.advertised.iter().map(|a| a.to_string()).collect();
        worker.act("announcing addresses failed", move |engine, rng| engine.announce_addresses(&addrs, now_ms(), rng));
        reach.publish_at = Some(now);
    }
    if reach.publish_at.is_some_and(|t| t <= now) {
        reach.publish_at = Some(now + REPUBLISH_RETRY);
        if let Some(record) = addresses::sign_record(&reach.keypair, reach.advertised.clone())
            && !reach.advertised.is_empty()
            && let Err(e) = swarm.behaviour_mut().kad.put_record(record, kad::Quorum::One)
        {
            tracing::debug!(error = ?e, "cannot publish the address record");
        }
    }
}

/// Recomputes what the profile advertises; schedules an announcement if it
/// changed.
fn refresh_advertised(swarm: &Swarm<Behaviour>, reach: &mut Reach, status: &ProfileStatus) {
    let external: Vec<Multiaddr> = swarm.external_addresses().cloned().collect();
    let public: Vec<Multiaddr> = external.iter().filter(|a| !addresses::is_relayed(a)).cloned().collect();
    let mut circuits: Vec<Multiaddr> = external.iter().filter(|a| addresses::is_relayed(a)).cloned().collect();
    let mut listen: Vec<Multiaddr> = Vec::new();
    for a in status.listen_addrs.iter().filter_map(|a| a.parse::<Multiaddr>().ok()) {
        if addresses::is_relayed(&a) {
            circuits.push(a);
        } else {
            listen.push(a);
        }
    }
    let advertised = addresses::advertised(&public, &circuits, &listen);
    if advertised != reach.advertised {
        reach.advertised = advertised;
        reach.announce_at = Some(Instant::now() + ANNOUNCE_AFTER);
    }
}

/// Asks the DHT for `peer`'s address record (at most one lookup per peer
/// per [`LOOKUP_EVERY`], at most [`MAX_LOOKUPS`] in flight).
fn lookup(swarm: &mut Swarm<Behaviour>, reach: &mut Reach, peer: PeerId) {
    let now = Instant::now();
    if reach.lookups.len() >= MAX_LOOKUPS
        || reach.lookups.values().any(|p| *p == peer)
        || reach.last_lookup.get(&peer).is_some_and(|t| now.duration_since(*t) < LOOKUP_EVERY)
    {
        return;
    }
    reach.last_lookup.retain(|_, t| now.duration_since(*t) < LOOKUP_EVERY);
    reach.last_lookup.insert(peer, now);
    let id = swarm.behaviour_mut().kad.get_record(addresses::record_key(&peer));
    reach.lookups.insert(id, peer);
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

/// Requests per peer: [`PEER_REQUESTS_PER_SECOND`], bursts up to twice
/// that, in buckets that outlive the peer's connections (a reconnect does
/// not refill them), at most [`crate::budget::MAX_TRACKED_PEERS`] peers.
/// Envelopes inside a request have their own budgets ([`crate::budget`]).
fn request_buckets() -> BucketMap<PeerId> {
    BucketMap::new(crate::budget::MAX_TRACKED_PEERS, PEER_REQUESTS_PER_SECOND, 2.0 * PEER_REQUESTS_PER_SECOND)
}

/// Inbound `/kabar/prekey/1` requests per peer:
/// [`PEER_PREKEY_REQUESTS_PER_SECOND`], bursts up to
/// [`PEER_PREKEY_REQUESTS_BURST`], at most
/// [`crate::budget::MAX_TRACKED_PEERS`] peers. The one-time prekeys handed
/// out have their own budgets ([`crate::prekeys::PER_REQUESTER`],
/// [`crate::prekeys::PER_PROFILE`]).
fn prekey_request_buckets() -> BucketMap<PeerId> {
    BucketMap::new(crate::budget::MAX_TRACKED_PEERS, PEER_PREKEY_REQUESTS_PER_SECOND, PEER_PREKEY_REQUESTS_BURST)
}

/// The prekey counts of `node info` from the store: current signed prekey
/// id, one-time prekeys that can be handed out, one-time prekeys held (the
/// `fetched` counter is kept by the loop).
fn prekey_counts(engine: &Engine) -> Option<(u32, u64, u64)> {
    let store = engine.store();
    let read = || -> Result<(u32, u64, u64), kabar_storage::StoreError> {
        Ok((store.current_signed_prekey()?.id(), store.offerable_one_time_prekeys()?, store.one_time_prekey_count()?))
    };
    read().map_err(|e| tracing::debug!(error = %e, "cannot read the prekey counts")).ok()
}

/// Reads the prekey counts of `node info` into `status`.
fn refresh_prekey_status(engine: &Engine, status: &mut PrekeyStatus) {
    if let Some((signed_prekey_id, one_time_prekeys, one_time_prekeys_held)) = prekey_counts(engine) {
        status.signed_prekey_id = signed_prekey_id;
        status.one_time_prekeys = one_time_prekeys;
        status.one_time_prekeys_held = one_time_prekeys_held;
    }
}

/// `peer` is reachable now: what waits for it goes.
fn reachable(worker: &EngineWorker, peer: &PeerId) {
    if let Some(key) = signing_key_of(peer) {
        worker.act("flushing to a reachable peer failed", move |engine, _| engine.on_peer_reachable(&key, now_ms()));
    }
}

/// The loop's state that events and the engine's replies update.
struct LoopState<'a> {
    /// Store damage found while handling the event (the profile stops).
    failure: &'a mut Option<String>,
    pending: &'a mut HashMap<OutboundRequestId, (PeerKey, Vec<[u8; 16]>)>,
    limits: &'a mut BucketMap<PeerId>,
    /// Inbound prekey requests per peer.
    prekey_limits: &'a mut BucketMap<PeerId>,
    status: &'a mut ProfileStatus,
    reach: &'a mut Reach,
    courier: &'a mut Courier,
    /// The profile's own mailboxes (the engine's, as of its last change).
    mailboxes: &'a mut Vec<kabar_storage::OwnMailbox>,
    /// The tick's engine work has not come back yet.
    tick_in_flight: &'a mut bool,
    /// The profile's inbound budget (see [`crate::wire::InflightBudget`]).
    inflight: &'a crate::wire::InflightBudget,
    /// The profile's name, for logs.
    name: &'a str,
}

/// Handles one swarm event; what needs the engine goes to its thread and
/// comes back as a reply. Returns the actions to carry out now.
fn handle_event(
    swarm: &mut Swarm<Behaviour>,
    worker: &EngineWorker,
    ctx: &mut LoopState<'_>,
    event: SwarmEvent<BehaviourEvent>,
) -> Vec<Action> {
    match event {
        SwarmEvent::NewListenAddr { address, .. } => {
            tracing::info!(profile = %ctx.name, %address, "listening");
            if !addresses::is_relayed(&address)
                && let Some((transport, port)) = transport_port(&address)
            {
                let _ = worker.run(move |engine, _| {
                    if let Err(e) = engine.store().set_listen_port(transport, port) {
                        tracing::warn!(error = %e, "cannot remember the listen port");
                    }
                    reply(|_, _| Vec::new())
                });
            }
            ctx.status.listen_addrs.push(address.to_string());
            refresh_advertised(swarm, ctx.reach, ctx.status);
            Vec::new()
        }
        SwarmEvent::ExpiredListenAddr { address, .. } => {
            ctx.status.listen_addrs.retain(|a| a != &address.to_string());
            if !addresses::is_relayed(&address) {
                // Our address went away (new network, new IP). Public
                // addresses on the same IP are stale, and so may be every
                // direct connection: a TCP connection bound to a vanished
                // address never errors by itself. Peers reconnect on demand
                // and unacknowledged messages are retried.
                let ip = address.iter().find(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_)));
                let stale: Vec<Multiaddr> = swarm
                    .external_addresses()
                    .filter(|a| {
                        !addresses::is_relayed(a)
                            && a.iter().find(|p| matches!(p, Protocol::Ip4(_) | Protocol::Ip6(_))) == ip
                    })
                    .cloned()
                    .collect();
                for a in stale {
                    swarm.remove_external_address(&a);
                }
                let direct: Vec<ConnectionId> =
                    ctx.reach.connections.iter().filter(|(_, (_, relayed))| !relayed).map(|(id, _)| *id).collect();
                for id in direct {
                    swarm.close_connection(id);
                }
            }
            refresh_advertised(swarm, ctx.reach, ctx.status);
            Vec::new()
        }
        SwarmEvent::ListenerClosed { listener_id, addresses: gone, reason } => {
            for a in gone {
                ctx.status.listen_addrs.retain(|s| s != &a.to_string());
            }
            ctx.reach.release_after_accept.retain(|(_, l)| *l != listener_id);
            if let Some(relay) = ctx.reach.relay_for_listener(listener_id) {
                tracing::info!(relay = %relay.address, ?reason, "relay reservation ended; reserving again");
                relay.listener = None;
                relay.reserved = false;
            }
            refresh_advertised(swarm, ctx.reach, ctx.status);
            Vec::new()
        }
        SwarmEvent::ExternalAddrConfirmed { .. } | SwarmEvent::ExternalAddrExpired { .. } => {
            refresh_advertised(swarm, ctx.reach, ctx.status);
            Vec::new()
        }
        SwarmEvent::ConnectionEstablished { peer_id, connection_id, endpoint, .. } => {
            let relayed = endpoint.is_relayed();
            ctx.reach.connections.insert(connection_id, (peer_id, relayed));
            ctx.reach.connections_changed += 1;
            if relayed {
                ctx.reach.relayed_since.entry(peer_id).or_insert_with(Instant::now);
            } else {
                ctx.reach.punch_again.remove(&peer_id);
                if ctx.reach.connections.values().any(|(p, r)| *p == peer_id && *r) {
                    // Messages should take the direct path: the relayed
                    // connection goes once hole punching has finished.
                    ctx.reach.close_relayed.insert(peer_id, Instant::now() + CLOSE_RELAYED_AFTER);
                }
            }
            if let Some(address) = ctx.courier.hosted_by(&peer_id).cloned() {
                // Back in touch with one of our mailbox hosts: fetch.
                ctx.courier.fetch_mailbox(ctx.mailboxes, &address);
            }
            reachable(worker, &peer_id);
            Vec::new()
        }
        SwarmEvent::ConnectionClosed { peer_id, connection_id, num_established, .. } => {
            ctx.reach.connections.remove(&connection_id);
            ctx.reach.connections_changed += 1;
            if !ctx.reach.connections.values().any(|(p, r)| *p == peer_id && *r) {
                ctx.reach.relayed_since.remove(&peer_id);
            }
            if num_established == 0 {
                ctx.reach.close_relayed.remove(&peer_id);
                ctx.reach.punch_again.remove(&peer_id);
                ctx.reach.circuits.remove(&peer_id);
            }
            Vec::new()
        }
        SwarmEvent::Behaviour(BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
            relay_peer_id,
            ..
        })) => {
            // A listener released while its reservation was pending goes now.
            let (due, keep): (Vec<_>, Vec<_>) =
                ctx.reach.release_after_accept.drain(..).partition(|(p, _)| *p == relay_peer_id);
            ctx.reach.release_after_accept = keep;
            for (_, listener) in due {
                swarm.remove_listener(listener);
            }
            // A reservation requested before AutoNAT found the profile public
            // may be accepted after its listener was removed: it is not ours
            // to report (the relay client drops it with the listener).
            for relay in ctx.reach.relays.iter_mut().filter(|r| r.peer == relay_peer_id && r.listener.is_some()) {
                relay.reserved = true;
                relay.backoff = RESERVE_RETRY_MIN;
            }
            refresh_advertised(swarm, ctx.reach, ctx.status);
            Vec::new()
        }
        SwarmEvent::Behaviour(BehaviourEvent::Dcutr(dcutr::Event { remote_peer_id, result })) => {
            let hp = &mut ctx.reach.hole_punch;
            hp.attempts += 1;
            match result {
                Ok(_) => {
                    hp.succeeded += 1;
                    if let Some(since) = ctx.reach.relayed_since.get(&remote_peer_id) {
                        if hp.direct_after_ms.len() == MAX_TIMINGS {
                            hp.direct_after_ms.remove(0);
                        }
                        hp.direct_after_ms.push(since.elapsed().as_millis() as u64);
                    }
                    tracing::info!(peer = %remote_peer_id, "hole punched: direct connection");
                }
                Err(e) => {
                    tracing::info!(peer = %remote_peer_id, error = %e, "hole punching failed; relayed for now");
                    ctx.reach.punch_later(remote_peer_id);
                }
            }
            Vec::new()
        }
        SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged { new, .. })) => {
            let (nat, public) = match new {
                autonat::NatStatus::Public(_) => ("public", true),
                autonat::NatStatus::Private => ("private", false),
                autonat::NatStatus::Unknown => ("unknown", false),
            };
            tracing::info!(profile = %ctx.name, nat, "reachability changed");
            ctx.reach.nat = nat;
            ctx.reach.public = public;
            if !ctx.reach.kad_server {
                swarm.behaviour_mut().kad.set_mode(Some(if public { kad::Mode::Server } else { kad::Mode::Client }));
            }
            if public {
                // Reachable directly: relay slots are not needed.
                let mut releases = Vec::new();
                for relay in ctx.reach.relays.iter_mut() {
                    if let Some(listener) = relay.listener.take() {
                        releases.push((relay.peer, listener, relay.reserved));
                    }
                    relay.reserved = false;
                }
                for (peer, listener, reserved) in releases {
                    ctx.reach.release(swarm, peer, listener, reserved);
                }
            }
            refresh_advertised(swarm, ctx.reach, ctx.status);
            Vec::new()
        }
        SwarmEvent::Behaviour(BehaviourEvent::Envelope(event)) => match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request { request, channel, .. } => {
                    tracing::debug!(profile = %ctx.name, %peer, envelopes = request.len(), "request");
                    swarm.behaviour_mut().keep.touch(peer, Instant::now());
                    let Some(key) = signing_key_of(&peer) else {
                        let _ = swarm
                            .behaviour_mut()
                            .envelope
                            .send_response(channel, vec![Ack::Rejected(RejectReason::IdentityMismatch); request.len()]);
                        return Vec::new();
                    };
                    if !ctx.limits.get(&peer, now_ms()).take(now_ms()) {
                        tracing::debug!(%peer, "request over the per-peer rate; dropped");
                        return Vec::new();
                    }
                    // Its bytes stay charged to the profile's inbound budget
                    // until it is answered: requests waiting for a slow disk
                    // are bounded in bytes, not only in number.
                    let bytes = request.iter().map(|e| 4 + e.len()).sum::<usize>();
                    let Some(held) = ctx.inflight.hold(bytes) else {
                        tracing::debug!(%peer, "profile busy: inbound bytes waiting for the engine at the limit; dropped");
                        return Vec::new();
                    };
                    let _ = worker.run(move |engine, rng| match engine.on_request(&key, &request, now_ms(), rng) {
                        // Sent once the group is durable: acknowledge.
                        Ok((acks, actions)) => reply(move |swarm, _| {
                            drop(held);
                            let _ = swarm.behaviour_mut().envelope.send_response(channel, acks);
                            actions
                        }),
                        Err(e) => {
                            tracing::warn!(error = %e, "receiving failed");
                            let damage = damage_of(engine, &e);
                            reply(move |swarm, ctx| {
                                drop(held);
                                if let Some(d) = damage {
                                    ctx.failure.get_or_insert(d);
                                }
                                let refused = vec![Ack::Rejected(RejectReason::Storage); request.len()];
                                let _ = swarm.behaviour_mut().envelope.send_response(channel, refused);
                                Vec::new()
                            })
                        }
                    });
                    Vec::new()
                }
                request_response::Message::Response { request_id, response } => {
                    if let Some((peer, ids)) = ctx.pending.remove(&request_id) {
                        worker.act("recording acknowledgements failed", move |engine, rng| {
                            engine.on_acks(&peer, &ids, &response, now_ms(), rng)
                        });
                    }
                    Vec::new()
                }
            },
            request_response::Event::OutboundFailure { peer, request_id, error, .. } => {
                tracing::debug!(%peer, %error, "request failed");
                if matches!(error, request_response::OutboundFailure::DialFailure) {
                    // The addresses we know failed: ask the DHT for the
                    // peer's signed address record.
                    lookup(swarm, ctx.reach, peer);
                }
                // Unreachable: what no mailbox holds yet goes to the peer's
                // mailbox.
                if let Some((key, ids)) = ctx.pending.remove(&request_id) {
                    worker.act("recording a failed transmission failed", move |engine, _| {
                        engine.on_transmit_failed(&key, &ids, now_ms())
                    });
                }
                Vec::new()
            }
            _ => Vec::new(),
        },
        SwarmEvent::Behaviour(BehaviourEvent::Prekey(event)) => {
            on_prekey_event(worker, ctx, event);
            Vec::new()
        }
        SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
            ctx.reach.learn_circuits(peer_id, &info.listen_addrs);
            add_dht_server(&mut swarm.behaviour_mut().kad, peer_id, info);
            reachable(worker, &peer_id);
            Vec::new()
        }
        SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => {
            on_kad(swarm, worker, ctx.reach, event);
            Vec::new()
        }
        SwarmEvent::Behaviour(BehaviourEvent::Mdns(mdns::Event::Discovered(list))) => {
            for (peer, addr) in list {
                swarm.add_peer_address(peer, addr.clone());
                swarm.behaviour_mut().kad.add_address(&peer, addr);
                reachable(worker, &peer);
            }
            Vec::new()
        }
        _ => Vec::new(),
    }
}

/// `/kabar/prekey/1`: answers requests (within the per-peer budget; a
/// refused request is closed unanswered) and records responses.
fn on_prekey_event(
    worker: &EngineWorker,
    ctx: &mut LoopState<'_>,
    event: request_response::Event<PrekeyRequest, Vec<u8>>,
) {
    match event {
        request_response::Event::Message { peer, message, .. } => match message {
            request_response::Message::Request { channel, .. } => {
                // Dropping `channel` closes the stream without an answer.
                let Some(key) = signing_key_of(&peer) else { return };
                if !ctx.prekey_limits.get(&peer, now_ms()).take(now_ms()) {
                    tracing::debug!(%peer, "prekey request over the per-peer rate; not answered");
                    return;
                }
                let _ = worker.run(move |engine, _| match engine.serve_prekeys(&key, now_ms()) {
                    // The one-time prekey handed out is marked durably
                    // before the answer leaves.
                    Ok(bytes) => reply(move |swarm, ctx| {
                        tracing::debug!(profile = %ctx.name, %peer, "prekeys served");
                        let _ = swarm.behaviour_mut().prekey.send_response(channel, bytes);
                        Vec::new()
                    }),
                    Err(e) => {
                        drop(channel);
                        outcome(engine, "prekey request not answered", Err(e))
                    }
                });
            }
            request_response::Message::Response { response, .. } => {
                let Some(key) = signing_key_of(&peer) else { return };
                let _ = worker.run(move |engine, rng| match engine.on_prekeys(&key, &response, now_ms(), rng) {
                    Ok(actions) => reply(move |_, ctx| {
                        ctx.status.prekeys.fetched += 1;
                        actions
                    }),
                    Err(e) => outcome(engine, "prekey response refused", Err(e)),
                });
            }
        },
        request_response::Event::OutboundFailure { peer, error, .. } => {
            tracing::debug!(%peer, %error, "prekey request failed");
            // What waited for these prekeys goes without them; a peer that
            // could not be dialled is asked again once it is reachable.
            let Some(key) = signing_key_of(&peer) else { return };
            let unreachable = matches!(error, request_response::OutboundFailure::DialFailure);
            worker.act("encrypting what waited for prekeys failed", move |engine, rng| {
                engine.on_prekeys_failed(&key, unreachable, now_ms(), rng)
            });
        }
        _ => {}
    }
}

fn on_kad(swarm: &mut Swarm<Behaviour>, worker: &EngineWorker, reach: &mut Reach, event: kad::Event) -> Vec<Action> {
    match event {
        kad::Event::RoutingUpdated { peer, .. } => {
            if reach.publish_at.is_none() && !reach.advertised.is_empty() {
                // First DHT peer: publish our record now.
                reach.publish_at = Some(Instant::now());
            }
            if !swarm.is_connected(&peer) {
                reachable(worker, &peer);
            }
            Vec::new()
        }
        kad::Event::InboundRequest { request: kad::InboundRequest::PutRecord { record, .. } } => {
            on_inbound_put(&mut swarm.behaviour_mut().kad, record);
            Vec::new()
        }
        kad::Event::OutboundQueryProgressed { id, result, step, .. } => match result {
            kad::QueryResult::PutRecord(Ok(_)) => {
                reach.record_published = true;
                reach.publish_at = Some(Instant::now() + REPUBLISH_EVERY);
                Vec::new()
            }
            kad::QueryResult::PutRecord(Err(e)) => {
                tracing::debug!(error = ?e, "publishing the address record failed; retrying");
                Vec::new()
            }
            kad::QueryResult::GetRecord(result) => {
                let Some(&wanted) = reach.lookups.get(&id) else { return Vec::new() };
                if step.last {
                    reach.lookups.remove(&id);
                }
                let kad::GetRecordOk::FoundRecord(found) = (match result {
                    Ok(ok) => ok,
                    Err(_) => return Vec::new(),
                }) else {
                    return Vec::new();
                };
                let Ok(record) = addresses::verify_record(&found.record) else {
                    tracing::debug!(peer = %wanted, "ignoring an invalid address record");
                    return Vec::new();
                };
                if record.peer != wanted {
                    return Vec::new();
                }
                // Found: stop the query, remember and dial.
                reach.lookups.remove(&id);
                if let Some(mut q) = swarm.behaviour_mut().kad.query_mut(&id) {
                    q.finish();
                }
                let Some(key) = signing_key_of(&wanted) else { return Vec::new() };
                let addrs: Vec<String> = record.addresses.iter().map(|a| a.to_string()).collect();
                tracing::info!(peer = %wanted, addresses = addrs.len(), "found on the DHT");
                dial(swarm, &key, &addrs);
                worker.act("cannot record found addresses", move |engine, _| {
                    engine.on_addresses_found(&key, &addrs, now_ms())
                });
                Vec::new()
            }
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flooding_peer_is_held_to_its_rate_and_others_are_not_affected() {
        let mut limits = request_buckets();
        let (flood, quiet) = (PeerId::random(), PeerId::random());
        let t0 = 1_000_000;
        let burst = (0..1_000).filter(|_| limits.get(&flood, t0).take(t0)).count();
        assert_eq!(burst, 2 * PEER_REQUESTS_PER_SECOND as usize);
        assert!(limits.get(&quiet, t0).take(t0), "another peer has its own bucket");
        // One second later: one second's worth more, not another burst.
        let t1 = t0 + 1_000;
        let more = (0..1_000).filter(|_| limits.get(&flood, t1).take(t1)).count();
        assert_eq!(more, PEER_REQUESTS_PER_SECOND as usize);
    }

    /// What a card is made of (the advertised addresses) reaches the status
    /// on every event; only the peer list waits for its rebuild.
    #[test]
    fn advertised_addresses_show_at_once_and_only_the_peer_list_waits() {
        let mut reach = Reach::new(libp2p::identity::Keypair::generate_ed25519(), true);
        let mut status = ProfileStatus::default();
        reach.advertised = vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()];
        reach.connections.insert(ConnectionId::new_unchecked(1), (PeerId::random(), false));
        reach.connections_changed += 1;
        assert!(!reach.status(&mut status, false), "the peer list is not rebuilt");
        assert_eq!(status.advertised, ["/ip4/127.0.0.1/tcp/4001"]);
        assert_eq!(status.dht, "server");
        assert!(status.peers.is_empty());
        assert!(reach.status(&mut status, true));
        assert_eq!(status.peers.len(), 1);
        assert!(!reach.status(&mut status, true), "unchanged: not rebuilt again");
    }
}
