//! The service node (`kabar serve`): what an always-on machine offers to
//! Kabar profiles behind NATs. It is not a profile: it has its own identity
//! (`service.key` in its data directory), needs no passphrase and holds no
//! messages.
//!
//! - **Circuit relay v2 server**, with limits sized for messaging
//!   ([`relay_config`]): a relayed connection carries envelope requests (up
//!   to 4 MiB each) and the hole-punching exchange, so circuits last longer
//!   and carry more than libp2p's defaults (2 minutes, 128 KiB).
//! - **AutoNAT server**: dials peers back so they learn whether they are
//!   publicly reachable.
//! - **Kademlia in server mode** on `/kabar/kad/1`, storing only valid
//!   address records ([`crate::addresses`]).
//! - identify and ping.
//! - **Offline mailboxes** (`/kabar/mailbox/1`, when
//!   [`ServiceConfig::mailbox`] is set): a [`MailboxHost`] in
//!   `mailboxes.redb`, run on a thread of its own behind a bounded queue so
//!   disk work never blocks the event loop; requests are rate-limited per
//!   remote IP (kept in memory only).

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport, ResponseChannel};
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Swarm, autonat, connection_limits, identify, kad, memory_connection_limits, noise, ping, relay,
    tcp, yamux,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::addresses::MAX_RECORD_BYTES;
use crate::mailbox::rate::{Class, RateLimiter};
use crate::mailbox::wire::{Request as MailboxRequest, Response as MailboxResponse};
use crate::mailbox::{HostError, MailboxCodec, MailboxHost, MailboxLimits, Status as MailboxStatusCode};
use crate::network::{IDENTIFY_PROTOCOL, add_dht_server, kad_behaviour, on_inbound_put};

/// File holding the service identity (32-byte Ed25519 seed, mode 0600).
pub const KEY_FILE: &str = "service.key";
/// Default listen port of a service node (TCP and QUIC).
pub const DEFAULT_PORT: u16 = 4040;

/// What a service node needs to start.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// Its data directory (holds only `service.key`).
    pub data_dir: PathBuf,
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Addresses it is reachable at that it cannot see itself (a public IP
    /// forwarded to it); its listen addresses count as reachable too.
    pub external: Vec<Multiaddr>,
    /// Answer AutoNAT probes from peers at private addresses (a LAN or a
    /// test lab). Off by default: on the internet, a peer on the same LAN
    /// would otherwise be told it is public.
    pub autonat_private: bool,
    /// Host offline mailboxes with these limits (None: no mailbox protocol).
    pub mailbox: Option<MailboxLimits>,
}

impl ServiceConfig {
    /// Defaults: all interfaces, TCP and QUIC on [`DEFAULT_PORT`].
    pub fn new(data_dir: PathBuf) -> Self {
        let listen = [format!("/ip4/0.0.0.0/tcp/{DEFAULT_PORT}"), format!("/ip4/0.0.0.0/udp/{DEFAULT_PORT}/quic-v1")]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        ServiceConfig { data_dir, listen, external: Vec::new(), autonat_private: false, mailbox: None }
    }
}

/// Why a service node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Reading or creating the data directory or key file.
    #[error("service data directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The key file is not 32 bytes.
    #[error("{0} is damaged (it should hold a 32-byte key); move it away to start with a new identity")]
    BadKey(PathBuf),
    /// libp2p refused the configuration or an address.
    #[error("network: {0}")]
    Network(String),
    /// The mailbox store could not be opened.
    #[error(transparent)]
    Mailbox(#[from] HostError),
}

/// The relay limits of a service node.
///
/// Reservations: 1,024 in all, 4 per peer, each for an hour (clients renew).
/// Circuits: 512 in all, 16 per peer, each up to 30 minutes and 64 MiB (a
/// client opens a new one when one ends). Rate limits: 30 reservations per
/// peer per 2 minutes and 120 per IP per minute; 120 new circuits per peer
/// and 600 per IP per minute.
pub fn relay_config() -> relay::Config {
    let per = |n: u32| NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN);
    relay::Config {
        max_reservations: 1024,
        max_reservations_per_peer: 4,
        reservation_duration: Duration::from_secs(3600),
        reservation_rate_limiters: Vec::new(),
        max_circuits: 512,
        max_circuits_per_peer: 16,
        max_circuit_duration: Duration::from_secs(30 * 60),
        max_circuit_bytes: 64 * 1024 * 1024,
        circuit_src_rate_limiters: Vec::new(),
    }
    .reservation_rate_per_peer(per(30), Duration::from_secs(120))
    .reservation_rate_per_ip(per(120), Duration::from_secs(60))
    .circuit_src_per_peer(per(120), Duration::from_secs(60))
    .circuit_src_per_ip(per(600), Duration::from_secs(60))
}

mod behaviour {
    #![allow(missing_docs)] // the derive generates an undocumented event enum
    use super::*;

    /// The behaviours of a service node.
    #[derive(NetworkBehaviour)]
    pub struct ServiceBehaviour {
        pub(super) limits: connection_limits::Behaviour,
        pub(super) memory: memory_connection_limits::Behaviour,
        pub(super) relay: relay::Behaviour,
        pub(super) autonat: autonat::Behaviour,
        pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
        pub(super) identify: identify::Behaviour,
        pub(super) ping: ping::Behaviour,
        pub(super) mailbox: Toggle<request_response::Behaviour<MailboxCodec>>,
    }
}
pub use behaviour::{ServiceBehaviour, ServiceBehaviourEvent};

/// Counters of a running service node.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ServiceStatus {
    /// Its addresses, each ending in `/p2p/<its PeerId>`.
    pub addresses: Vec<String>,
    /// Peers connected now.
    pub connected_peers: usize,
    /// Reservations accepted so far (renewals included).
    pub reservations: u64,
    /// Circuits opened so far.
    pub circuits: u64,
    /// Whether it hosts mailboxes.
    pub mailbox: bool,
    /// Mailboxes it holds (as of its last mailbox write or sweep).
    pub mailboxes: u64,
    /// Mailbox requests answered so far.
    pub mailbox_requests: u64,
}

/// A running service node.
pub struct ServiceNode {
    peer_id: PeerId,
    status: watch::Receiver<ServiceStatus>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    /// Resolves once the mailbox thread has ended and closed its database.
    mailbox_closed: Option<tokio::sync::oneshot::Receiver<()>>,
}

/// Reads the service identity, creating it on first start.
pub fn load_or_create_key(dir: &Path) -> Result<libp2p::identity::Keypair, ServiceError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ServiceError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    let path = dir.join(KEY_FILE);
    let mut seed: [u8; 32] = match std::fs::read(&path) {
        Ok(bytes) => bytes.try_into().map_err(|_| ServiceError::BadKey(path.clone()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let keypair = libp2p::identity::Keypair::generate_ed25519();
            let seed: [u8; 32] = keypair
                .try_into_ed25519()
                .map_err(|e| ServiceError::Network(e.to_string()))?
                .secret()
                .as_ref()
                .try_into()
                .map_err(|_| ServiceError::BadKey(path.clone()))?;
            // Written to a temporary file and renamed: never half a key.
            let tmp = dir.join(format!("{KEY_FILE}.tmp"));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(&seed).and_then(|_| f.sync_all()).map_err(io(&tmp))?;
            std::fs::rename(&tmp, &path).map_err(io(&path))?;
            seed
        }
        Err(e) => return Err(ServiceError::Io { path, source: e }),
    };
    libp2p::identity::Keypair::ed25519_from_bytes(&mut seed).map_err(|e| ServiceError::Network(e.to_string()))
}

fn build(keypair: libp2p::identity::Keypair, config: &ServiceConfig) -> Result<Swarm<ServiceBehaviour>, ServiceError> {
    let net = |e: &dyn std::fmt::Display| ServiceError::Network(e.to_string());
    let autonat_private = config.autonat_private;
    let mailbox_on = config.mailbox.is_some();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)
        .map_err(|e| net(&e))?
        .with_quic()
        .with_dns()
        .map_err(|e| net(&e))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_pending_incoming(Some(256))
                .with_max_pending_outgoing(Some(64))
                .with_max_established_incoming(Some(2048))
                .with_max_established_outgoing(Some(256))
                .with_max_established_per_peer(Some(8));
            let store = kad::store::MemoryStoreConfig {
                max_records: 65_536,
                max_value_bytes: MAX_RECORD_BYTES,
                max_providers_per_key: 1,
                max_provided_keys: 1,
            };
            let mut kad = kad_behaviour(peer_id, store);
            kad.set_mode(Some(kad::Mode::Server));
            Ok(ServiceBehaviour {
                limits: connection_limits::Behaviour::new(limits),
                memory: memory_connection_limits::Behaviour::with_max_percentage(0.9),
                relay: relay::Behaviour::new(peer_id, relay_config()),
                autonat: autonat::Behaviour::new(
                    peer_id,
                    autonat::Config {
                        only_global_ips: !autonat_private,
                        use_connected: false,
                        throttle_clients_global_max: 120,
                        throttle_clients_peer_max: 4,
                        ..Default::default()
                    },
                ),
                kad,
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version("kabar-serve/0.1".into()),
                ),
                ping: ping::Behaviour::default(),
                mailbox: Toggle::from(mailbox_on.then(|| {
                    request_response::Behaviour::with_codec(
                        MailboxCodec::default(),
                        [(crate::mailbox::PROTOCOL, ProtocolSupport::Inbound)],
                        request_response::Config::default()
                            .with_request_timeout(Duration::from_secs(30))
                            .with_max_concurrent_streams(16),
                    )
                })),
            })
        })
        .map_err(|e| net(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    Ok(swarm)
}

impl ServiceNode {
    /// Loads or creates the identity, listens and starts serving.
    pub async fn start(config: ServiceConfig) -> Result<ServiceNode, ServiceError> {
        let keypair = load_or_create_key(&config.data_dir)?;
        let mailbox = match config.mailbox {
            Some(limits) => {
                let dir = config.data_dir.clone();
                let host = tokio::task::spawn_blocking(move || MailboxHost::open(&dir, limits))
                    .await
                    .map_err(|e| ServiceError::Network(e.to_string()))??;
                Some(host)
            }
            None => None,
        };
        let mut swarm = build(keypair, &config)?;
        for addr in &config.listen {
            swarm
                .listen_on(addr.clone())
                .map_err(|e| ServiceError::Network(format!("cannot listen on {addr}: {e}")))?;
        }
        for addr in &config.external {
            swarm.add_external_address(addr.clone());
        }
        let peer_id = *swarm.local_peer_id();
        let (status_tx, status) = watch::channel(ServiceStatus::default());
        let (stop, stop_rx) = watch::channel(false);
        let (closed_tx, closed_rx) = tokio::sync::oneshot::channel();
        let mailbox_closed = mailbox.is_some().then_some(closed_rx);
        let mailbox = mailbox.map(|host| MailboxWorker::start(host, peer_id, closed_tx)).transpose()?;
        let task =
            tokio::spawn(run(swarm, config.listen.clone(), config.external.clone(), mailbox, status_tx, stop_rx));
        Ok(ServiceNode { peer_id, status, stop, task, mailbox_closed })
    }

    /// Its PeerId.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Its current counters and addresses.
    pub fn status(&self) -> ServiceStatus {
        self.status.borrow().clone()
    }

    /// Waits until it listens on at least `n` addresses; returns them (each
    /// with `/p2p/`).
    pub async fn wait_listening(&self, n: usize) -> Vec<String> {
        let mut rx = self.status.clone();
        let _ = rx.wait_for(|s| s.addresses.len() >= n).await;
        rx.borrow().addresses.clone()
    }

    /// Waits until it listens somewhere and its addresses have not changed
    /// for `quiet` (a listener on all interfaces reports one address per
    /// interface, one by one), at most `max`; returns them.
    pub async fn wait_addresses(&self, quiet: Duration, max: Duration) -> Vec<String> {
        let mut rx = self.status.clone();
        let deadline = tokio::time::Instant::now() + max;
        let _ = tokio::time::timeout_at(deadline, rx.wait_for(|s| !s.addresses.is_empty())).await;
        loop {
            let before = rx.borrow_and_update().addresses.clone();
            let settle = (tokio::time::Instant::now() + quiet).min(deadline);
            match tokio::time::timeout_at(settle, rx.changed()).await {
                Ok(Ok(())) if tokio::time::Instant::now() < deadline => {
                    if rx.borrow().addresses == before {
                        continue;
                    }
                }
                _ => return before,
            }
        }
    }

    /// Stops gracefully.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }

    /// Stops at once (as a crash would).
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
        // Its mailbox thread ends with the queue (after the job in hand):
        // wait, so the database can be opened again at once.
        if let Some(closed) = self.mailbox_closed {
            let _ = closed.await;
        }
    }
}

/// Mailbox jobs waiting for the mailbox thread; when full, a request is
/// answered RATE_LIMITED at once.
const MAILBOX_QUEUE: usize = 256;
/// How often the mailbox thread sweeps expired envelopes and idle mailboxes.
const SWEEP_EVERY: Duration = Duration::from_secs(10 * 60);
/// Expired envelopes (and mailbox records looked at) per sweep round.
const SWEEP_BUDGET: usize = 1024;
/// Sweep rounds per sweep: at most this many commits delay requests.
const SWEEP_ROUNDS: usize = 16;
/// Connections whose IP is remembered for rate limiting (beyond the
/// connection limits, so never reached in practice).
const MAX_TRACKED_CONNECTIONS: usize = 4096;
/// Rate-limit buckets kept.
const MAX_RATE_BUCKETS: usize = 8192;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

enum MailboxJob {
    Request { id: u64, request: Box<MailboxRequest>, client: PeerId },
    Sweep,
}

/// The mailbox side of the event loop: the queue to the mailbox thread, the
/// response channels waiting for it, and the per-IP rate limits.
struct MailboxWorker {
    jobs: mpsc::Sender<MailboxJob>,
    replies: mpsc::Receiver<(u64, MailboxResponse)>,
    thread: std::thread::JoinHandle<()>,
    mailboxes: Arc<AtomicU64>,
    /// At most MAILBOX_QUEUE × 2 + 1: inserted only when a job is queued.
    pending: HashMap<u64, ResponseChannel<MailboxResponse>>,
    connections: HashMap<ConnectionId, IpAddr>,
    limiter: RateLimiter,
    next_id: u64,
    answered: u64,
}

impl MailboxWorker {
    /// Starts the mailbox thread; it owns `host` and ends when the queue closes.
    fn start(
        mut host: MailboxHost,
        me: PeerId,
        closed: tokio::sync::oneshot::Sender<()>,
    ) -> Result<MailboxWorker, ServiceError> {
        let (jobs, mut job_rx) = mpsc::channel::<MailboxJob>(MAILBOX_QUEUE);
        let (reply_tx, replies) = mpsc::channel(MAILBOX_QUEUE);
        let mailboxes = Arc::new(AtomicU64::new(host.mailbox_count().unwrap_or(0)));
        let count = mailboxes.clone();
        let thread = std::thread::Builder::new()
            .name("kabar-mailbox".into())
            .spawn(move || {
                while let Some(job) = job_rx.blocking_recv() {
                    match job {
                        MailboxJob::Request { id, request, client } => {
                            let response = host.handle(&request, &me, &client, now_ms());
                            if matches!(*request, MailboxRequest::Register { .. } | MailboxRequest::Unregister { .. })
                                && let Ok(n) = host.mailbox_count()
                            {
                                count.store(n, Ordering::Relaxed);
                            }
                            if reply_tx.blocking_send((id, response)).is_err() {
                                break;
                            }
                        }
                        MailboxJob::Sweep => {
                            for _ in 0..SWEEP_ROUNDS {
                                match host.sweep(now_ms(), SWEEP_BUDGET) {
                                    Ok(out) => {
                                        tracing::debug!(items = out.items, mailboxes = out.mailboxes, "mailbox sweep");
                                        if !out.more {
                                            break;
                                        }
                                    }
                                    Err(e) => {
                                        tracing::warn!(error = %e, "mailbox sweep");
                                        break;
                                    }
                                }
                            }
                            if let Ok(n) = host.mailbox_count() {
                                count.store(n, Ordering::Relaxed);
                            }
                        }
                    }
                }
                // The database is closed before anyone hears the thread ended.
                drop(host);
                let _ = closed.send(());
            })
            .map_err(|e| ServiceError::Mailbox(HostError::Storage(format!("cannot start the mailbox thread: {e}"))))?;
        Ok(MailboxWorker {
            jobs,
            replies,
            thread,
            mailboxes,
            pending: HashMap::new(),
            connections: HashMap::new(),
            limiter: RateLimiter::new(MAX_RATE_BUCKETS),
            next_id: 0,
            answered: 0,
        })
    }

    fn connected(&mut self, id: ConnectionId, remote: &Multiaddr) {
        let ip = remote.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            // An IPv6 host usually holds a whole /64.
            Protocol::Ip6(ip) => {
                let mut segments = ip.segments();
                segments[4..].fill(0);
                Some(IpAddr::V6(segments.into()))
            }
            _ => None,
        });
        if let Some(ip) = ip
            && self.connections.len() < MAX_TRACKED_CONNECTIONS
        {
            self.connections.insert(id, ip);
        }
    }

    /// Queues a request for the mailbox thread, or answers at once.
    fn on_request(
        &mut self,
        behaviour: &mut request_response::Behaviour<MailboxCodec>,
        connection: ConnectionId,
        client: PeerId,
        request: MailboxRequest,
        channel: ResponseChannel<MailboxResponse>,
    ) {
        let op = request.op();
        // Connections of unknown IP share one bucket.
        let ip = self.connections.get(&connection).copied().unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let refuse = |behaviour: &mut request_response::Behaviour<MailboxCodec>, channel, status| {
            let _ = behaviour.send_response(channel, MailboxResponse::refusal(op, status));
        };
        if !self.limiter.allow(ip, Class::of(op), Instant::now()) {
            return refuse(behaviour, channel, MailboxStatusCode::RateLimited);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        match self.jobs.try_send(MailboxJob::Request { id, request: Box::new(request), client }) {
            Ok(()) => {
                self.pending.insert(id, channel);
            }
            Err(mpsc::error::TrySendError::Full(_)) => refuse(behaviour, channel, MailboxStatusCode::RateLimited),
            Err(mpsc::error::TrySendError::Closed(_)) => refuse(behaviour, channel, MailboxStatusCode::Storage),
        }
    }

    fn on_reply(&mut self, behaviour: &mut request_response::Behaviour<MailboxCodec>, id: u64, res: MailboxResponse) {
        self.answered += 1;
        if let Some(channel) = self.pending.remove(&id) {
            // The client may have gone: nothing to do then.
            let _ = behaviour.send_response(channel, res);
        }
    }

    /// Closes the queue and waits for the thread (so the file is closed).
    async fn stop(self) {
        let MailboxWorker { jobs, replies, thread, .. } = self;
        drop(jobs);
        drop(replies);
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

async fn next_reply(mailbox: &mut Option<MailboxWorker>) -> Option<(u64, MailboxResponse)> {
    match mailbox {
        Some(m) => m.replies.recv().await,
        None => std::future::pending().await,
    }
}

fn is_loopback(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| {
        matches!(p, Protocol::Ip4(ip) if ip.is_loopback()) || matches!(p, Protocol::Ip6(ip) if ip.is_loopback())
    })
}

async fn run(
    mut swarm: Swarm<ServiceBehaviour>,
    listen: Vec<Multiaddr>,
    external: Vec<Multiaddr>,
    mut mailbox: Option<MailboxWorker>,
    status_tx: watch::Sender<ServiceStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let me = *swarm.local_peer_id();
    let listens_elsewhere = listen.iter().any(|a| !is_loopback(a));
    let mut status = ServiceStatus {
        addresses: external.iter().map(|a| a.clone().with(Protocol::P2p(me)).to_string()).collect(),
        mailbox: mailbox.is_some(),
        ..Default::default()
    };
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            reply = next_reply(&mut mailbox) => match (reply, mailbox.as_mut(), swarm.behaviour_mut().mailbox.as_mut()) {
                (Some((id, res)), Some(m), Some(behaviour)) => m.on_reply(behaviour, id, res),
                _ => {
                    tracing::error!("the mailbox thread ended; mailboxes are off");
                    mailbox = None;
                }
            },
            _ = sweep.tick(), if mailbox.is_some() => {
                if let Some(m) = &mailbox {
                    // A sweep waits for the next tick if the queue is full.
                    let _ = m.jobs.try_send(MailboxJob::Sweep);
                }
            }
            event = swarm.select_next_some() => match event {
                SwarmEvent::ConnectionEstablished { connection_id, endpoint, .. } => {
                    if let Some(m) = &mut mailbox {
                        m.connected(connection_id, endpoint.get_remote_address());
                    }
                }
                SwarmEvent::ConnectionClosed { connection_id, .. } => {
                    if let Some(m) = &mut mailbox {
                        m.connections.remove(&connection_id);
                    }
                }
                SwarmEvent::Behaviour(ServiceBehaviourEvent::Mailbox(request_response::Event::Message {
                    peer,
                    connection_id,
                    message: request_response::Message::Request { request, channel, .. },
                })) => {
                    if let (Some(m), Some(behaviour)) = (mailbox.as_mut(), swarm.behaviour_mut().mailbox.as_mut()) {
                        m.on_request(behaviour, connection_id, peer, request, channel);
                    }
                }
                SwarmEvent::Behaviour(ServiceBehaviourEvent::Mailbox(request_response::Event::InboundFailure {
                    error, ..
                })) => tracing::debug!(%error, "mailbox request failed"),
                SwarmEvent::NewListenAddr { address, .. } => {
                    // An always-on machine: its listen addresses are where
                    // peers reach it (relay reservations carry them), except
                    // loopback when it also listens elsewhere.
                    if !is_loopback(&address) || !listens_elsewhere {
                        swarm.add_external_address(address.clone());
                    }
                    let full = address.with(Protocol::P2p(me)).to_string();
                    tracing::info!(address = %full, "listening");
                    if !status.addresses.contains(&full) {
                        status.addresses.push(full);
                    }
                }
                SwarmEvent::ExpiredListenAddr { address, .. } => {
                    swarm.remove_external_address(&address);
                    let full = address.with(Protocol::P2p(me)).to_string();
                    status.addresses.retain(|a| a != &full);
                }
                SwarmEvent::Behaviour(ServiceBehaviourEvent::Relay(event)) => match event {
                    relay::Event::ReservationReqAccepted { src_peer_id, .. } => {
                        tracing::debug!(peer = %src_peer_id, "reservation accepted");
                        status.reservations += 1;
                    }
                    relay::Event::CircuitReqAccepted { .. } => status.circuits += 1,
                    other => tracing::debug!(event = ?other, "relay"),
                },
                SwarmEvent::Behaviour(ServiceBehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. })) => {
                    add_dht_server(&mut swarm.behaviour_mut().kad, peer_id, info);
                }
                SwarmEvent::Behaviour(ServiceBehaviourEvent::Kad(kad::Event::InboundRequest {
                    request: kad::InboundRequest::PutRecord { record, .. },
                })) => on_inbound_put(&mut swarm.behaviour_mut().kad, record),
                _ => {}
            }
        }
        status.connected_peers = swarm.connected_peers().count();
        if let Some(m) = &mailbox {
            status.mailboxes = m.mailboxes.load(Ordering::Relaxed);
            status.mailbox_requests = m.answered;
        }
        status_tx.send_if_modified(|s| {
            let changed = *s != status;
            if changed {
                *s = status.clone();
            }
            changed
        });
    }
    if let Some(m) = mailbox {
        m.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_identity_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_key(dir.path()).unwrap().public().to_peer_id();
        let b = load_or_create_key(dir.path()).unwrap().public().to_peer_id();
        assert_eq!(a, b);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        assert!(matches!(load_or_create_key(dir.path()), Err(ServiceError::BadKey(_))));
    }

    #[test]
    fn relay_limits_are_above_libp2p_defaults() {
        let ours = relay_config();
        let default = relay::Config::default();
        assert!(ours.max_circuit_duration > default.max_circuit_duration);
        assert!(ours.max_circuit_bytes >= 16 * crate::wire::MAX_REQUEST_BYTES as u64);
    }
}
