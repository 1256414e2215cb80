//! The hostile actors of `kabar testnet run --hostile K`: peers that speak
//! `/kabar/envelope/1` (node/src/wire.rs) badly, on purpose, against every
//! honest profile while the normal traffic runs, so the report can show that
//! the node's bounds hold (node/src/budget.rs, the in-flight byte budget of
//! `wire`, the connection limits of `network`).
//!
//! Each actor runs four lanes at once, each with its own libp2p swarms
//! (TCP + Noise + Yamux, no identify) and its own pace, and each visits the
//! targets (personal and shop profiles alike) round-robin:
//!
//! | lane | identity | attacks, in turn | pace |
//! |---|---|---|---|
//! | frames | one per actor | 1. garbage: a frame of random bytes (declared length = real length), then a well-framed request of [`GARBAGE_ENVELOPES`] random envelopes (random bytes, well-formed with random keys, cut short, and a prekey message in our own name with a random base key); 2. truncated: declares 4 MiB, sends 1 KiB, closes; 3. held: declares 4 MiB, sends 64 KiB, then holds the stream for [`HOLD`] (one byte a second, which also notices a reset), [`HELD_PER_TARGET`] at once per target | [`FRAME_LANE_PER_SECOND`] frames or envelopes a second |
//! | session | one per actor, a session with each target started once | 5. replays of accepted envelopes (acked duplicate), 6. a forged receipt (256 random ids) and an oversized one (300 ids), 5. a batch of [`MAX_BATCH`] envelopes of the session with a flipped last byte (the tag): undecryptable, then busy | [`SESSION_LANE_PER_SECOND`] envelopes a second |
//! | flood | a fresh one for each attempt | 4. a real X3DH first message from the target's card, over a fresh connection | [`IDENTITIES_PER_SECOND`] a second |
//! | churn | one per actor | 7. dial, close as soon as it is established | [`CHURNS_PER_SECOND`] a second |
//!
//! So an actor sends at most about 200 envelopes, 10 fresh identities and
//! 10 churned connections a second. All actors share one thread with a
//! current-thread tokio runtime: together they never take more than one CPU
//! core, whatever K is. Every wait is bounded (answers [`ANSWER_TIMEOUT`],
//! dials [`DIAL_TIMEOUT`], held streams [`HOLD`]), every buffer and map too
//! (held streams per target, one conversation per target), and
//! [`Hostile::stop`] returns within [`STOP_WAIT`] even if a node hangs.
//!
//! What came back is tallied per attack in a [`HostileReport`]. Nothing is
//! logged: no message text, no key.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use kabar_crypto::envelope::{MIN_CIPHERTEXT, RatchetHeader, padded_len};
use kabar_crypto::primitives::TAG_LEN;
use kabar_crypto::{Envelope, IdentityKeyPair, PrekeyBundle, PrekeyHeader, ProfileKind, Session};
use kabar_node::card::ContactCard;
use kabar_node::content::{CONTENT_VERSION, Content, Message};
use kabar_node::wire::{self, Ack, MAX_BATCH, RejectReason};
use libp2p::futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, OutboundFailure, OutboundRequestId, ProtocolSupport};
use libp2p::swarm::SwarmEvent;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, noise, tcp, yamux};
use rand::rngs::StdRng;
use rand::{Rng, RngExt, SeedableRng};
use serde_json::{Value, json};

/// Frames and envelopes the frames lane of one actor sends a second.
const FRAME_LANE_PER_SECOND: f64 = 50.0;
/// Envelopes the session lane of one actor sends a second (a batch of
/// [`MAX_BATCH`] goes at once, then the lane waits it off).
const SESSION_LANE_PER_SECOND: f64 = 140.0;
/// Fresh identities (session starts) one actor uses a second.
const IDENTITIES_PER_SECOND: f64 = 10.0;
/// Connections one actor churns a second.
const CHURNS_PER_SECOND: f64 = 10.0;
/// Random envelopes in one well-framed garbage request.
const GARBAGE_ENVELOPES: usize = 16;
/// What a truncated or held frame declares: the largest request.
const DECLARED: u32 = wire::MAX_REQUEST_BYTES as u32;
/// What a truncated frame sends before it closes.
const TRUNCATED_SENT: usize = 1024;
/// What a held frame sends before it holds.
const HELD_SENT: usize = 64 * 1024;
/// How long a held frame holds its stream.
const HOLD: Duration = Duration::from_secs(15);
/// Held streams one actor keeps open at once per target.
const HELD_PER_TARGET: usize = 8;
/// Ids in a forged receipt (the most a receipt may carry).
const FORGED_RECEIPT_IDS: usize = 256;
/// Ids in an oversized receipt (over the limit).
const OVERSIZED_RECEIPT_IDS: usize = 300;
/// Longest wait for an answer (or a failure) to one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a churned connection to be established, then closed.
const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait of [`Hostile::stop`] for the actors' thread to end.
const STOP_WAIT: Duration = Duration::from_secs(10);
/// The error a held frame ends with when it held to the end (not a reset).
const HELD_TO_THE_END: &str = "hostile: held to the end";
/// Most bytes of a response read (a real one is at most 514).
const MAX_RESPONSE: usize = 1024;

/// An honest profile to attack.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// Honest node index (for the report).
    pub(crate) node: usize,
    /// "personal" or "shop".
    pub(crate) profile: String,
    /// The profile's PeerId.
    pub(crate) peer_id: PeerId,
    /// Its loopback listen addresses, without `/p2p`.
    pub(crate) addrs: Vec<Multiaddr>,
    /// Its contact card (a `kabar:` URI).
    pub(crate) card: String,
}

/// What the actors need of a target.
#[derive(Debug)]
struct Aim {
    peer: PeerId,
    addrs: Vec<Multiaddr>,
    bundle: PrekeyBundle,
}

/// Running hostile actors; [`Hostile::stop`] ends them (dropping does too,
/// without waiting).
pub(crate) struct Hostile {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: std::sync::mpsc::Receiver<()>,
    thread: Option<std::thread::JoinHandle<()>>,
    report: Shared,
}

type Shared = Arc<Mutex<HostileReport>>;

impl Hostile {
    /// Starts `actors` hostile actors against `targets` on their own thread
    /// with their own tokio runtime. `seed` makes their choices and keys
    /// reproducible.
    pub(crate) fn start(targets: Vec<Target>, actors: usize, seed: u64) -> Result<Hostile> {
        if targets.is_empty() {
            bail!("hostile actors need at least one target");
        }
        let mut aims = Vec::with_capacity(targets.len());
        for t in &targets {
            let card = ContactCard::from_uri(&t.card)
                .with_context(|| format!("the card of node {} profile {}", t.node, t.profile))?;
            if card.peer_id() != t.peer_id {
                bail!("the card of node {} profile {} is not that profile's", t.node, t.profile);
            }
            aims.push(Aim { peer: t.peer_id, addrs: t.addrs.clone(), bundle: card.bundle() });
        }
        let aims: Arc<[Aim]> = aims.into();
        let report: Shared = Arc::new(Mutex::new(HostileReport { actors, ..HostileReport::default() }));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = std::sync::mpsc::sync_channel::<()>(1);
        let shared = report.clone();
        let thread = std::thread::Builder::new().name("kabar-hostile".into()).spawn(move || {
            runtime.block_on(async move {
                for actor in 0..actors {
                    let lane = |n: u64| Lane {
                        actor,
                        aims: aims.clone(),
                        report: shared.clone(),
                        rng: StdRng::seed_from_u64(
                            seed ^ (((actor as u64) << 8) | n).wrapping_mul(0x9e37_79b9_7f4a_7c15),
                        ),
                    };
                    tokio::spawn(lane(0).frames());
                    tokio::spawn(lane(1).session());
                    tokio::spawn(lane(2).flood());
                    tokio::spawn(lane(3).churn());
                }
                // Sent or dropped: either way, stop.
                let _ = stopped.await;
            });
            // Drops every actor, its swarms and their connections.
            runtime.shutdown_timeout(Duration::from_secs(2));
            let _ = done_tx.send(());
        })?;
        Ok(Hostile { stop: Some(stop), done, thread: Some(thread), report })
    }

    /// What the actors did so far (they go on).
    pub(crate) fn report(&self) -> HostileReport {
        self.report.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Stops every actor (waits at most [`STOP_WAIT`], then abandons their
    /// thread) and returns what they did.
    pub(crate) fn stop(mut self) -> HostileReport {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let ended = self.done.recv_timeout(STOP_WAIT).is_ok();
        if ended && let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        let mut report = self.report();
        report.abandoned = !ended;
        report
    }
}

impl Drop for Hostile {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The attacks, as tallied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Garbage,
    Truncated,
    Held,
    Flood,
    SessionStart,
    Replay,
    TagFlip,
    ForgedReceipt,
    OversizedReceipt,
    Churn,
}

/// What one kind of attack sent and what came back. Requests count once in
/// `attempts` and in exactly one outcome (acknowledgements count per
/// envelope), except requests still in flight when the actors stopped.
#[derive(Debug, Default, Clone)]
pub(crate) struct AttackTally {
    /// Requests sent (for churn: dials).
    pub(crate) attempts: u64,
    /// Envelopes in those requests (0 for frames that carry none).
    pub(crate) envelopes: u64,
    /// Envelopes acknowledged as accepted.
    pub(crate) accepted: u64,
    /// Envelopes acknowledged as duplicates.
    pub(crate) duplicate: u64,
    /// Envelopes rejected, by reason (`malformed`, `busy`…; `unknown` for a
    /// reason this version does not know).
    pub(crate) rejected: BTreeMap<&'static str, u64>,
    /// Answers that were not a response frame.
    pub(crate) bad_responses: u64,
    /// Streams reset or closed without an answer (the expected end of a
    /// bad frame; also a request over the node's per-peer request rate, or
    /// a held stream the node gave up on).
    pub(crate) stream_failures: u64,
    /// Held streams that lasted the whole hold.
    pub(crate) held_to_the_end: u64,
    /// Connections established (churn).
    pub(crate) established: u64,
    /// Connections that closed before the answer.
    pub(crate) connection_closed: u64,
    /// Dials that failed (refused, or denied by the node's limits) or
    /// streams the node would not open for the protocol.
    pub(crate) refused: u64,
    /// No answer in time.
    pub(crate) timeouts: u64,
}

impl AttackTally {
    /// Envelopes rejected for `reason`.
    #[cfg(test)]
    pub(crate) fn rejected(&self, reason: RejectReason) -> u64 {
        self.rejected.get(reason_name(reason)).copied().unwrap_or(0)
    }

    fn add(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Acks(acks) => {
                for ack in acks {
                    match ack {
                        Ack::Accepted => self.accepted += 1,
                        Ack::Duplicate => self.duplicate += 1,
                        Ack::Rejected(r) => *self.rejected.entry(reason_name(*r)).or_default() += 1,
                    }
                }
            }
            Outcome::BadResponse => self.bad_responses += 1,
            Outcome::StreamFailed => self.stream_failures += 1,
            Outcome::Held => self.held_to_the_end += 1,
            Outcome::Established => self.established += 1,
            Outcome::ConnectionClosed => self.connection_closed += 1,
            Outcome::Refused => self.refused += 1,
            Outcome::Timeout => self.timeouts += 1,
        }
    }

    /// The non-zero outcomes, e.g. `"60 accepted, 20 busy, 3 timeouts"`.
    fn outcomes(&self) -> String {
        let mut parts = Vec::new();
        let mut part = |n: u64, what: &str| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        part(self.accepted, "accepted");
        part(self.duplicate, "duplicate");
        for (reason, n) in &self.rejected {
            part(*n, reason);
        }
        part(self.bad_responses, "bad responses");
        part(self.stream_failures, "stream failures/resets");
        part(self.held_to_the_end, "held to the end");
        part(self.established, "established");
        part(self.connection_closed, "connections closed");
        part(self.refused, "refused");
        part(self.timeouts, "timeouts");
        if parts.is_empty() { "nothing back yet".to_string() } else { parts.join(", ") }
    }

    fn to_json(&self) -> Value {
        json!({
            "attempts": self.attempts,
            "envelopes": self.envelopes,
            "accepted": self.accepted,
            "duplicate": self.duplicate,
            "rejected": self.rejected,
            "bad_responses": self.bad_responses,
            "stream_failures": self.stream_failures,
            "held_to_the_end": self.held_to_the_end,
            "established": self.established,
            "connection_closed": self.connection_closed,
            "refused": self.refused,
            "timeouts": self.timeouts,
        })
    }
}

fn reason_name(reason: RejectReason) -> &'static str {
    match reason {
        RejectReason::Malformed => "malformed",
        RejectReason::NoSession => "no_session",
        RejectReason::Undecryptable => "undecryptable",
        RejectReason::Blocked => "blocked",
        RejectReason::Storage => "storage",
        RejectReason::UnknownPrekey => "unknown_prekey",
        RejectReason::IdentityMismatch => "identity_mismatch",
        RejectReason::Busy => "busy",
        RejectReason::KeyGone => "key_gone",
        RejectReason::BadContent => "bad_content",
        RejectReason::Unknown(_) => "unknown",
    }
}

/// What the hostile actors did, per attack.
#[derive(Debug, Default, Clone)]
pub(crate) struct HostileReport {
    /// Actors that ran.
    pub(crate) actors: usize,
    /// 1. Random-byte frames and well-framed random envelopes.
    pub(crate) garbage: AttackTally,
    /// 2. Frames declaring 4 MiB that close after 1 KiB.
    pub(crate) truncated: AttackTally,
    /// 3. Frames declaring 4 MiB held open after 64 KiB.
    pub(crate) held: AttackTally,
    /// 4. First messages (session starts) from fresh identities.
    pub(crate) flood: AttackTally,
    /// The first messages of the long-lived sessions used by 5 and 6.
    pub(crate) session_start: AttackTally,
    /// 5. Accepted envelopes sent again.
    pub(crate) replay: AttackTally,
    /// 5. Batches of session envelopes with a flipped tag.
    pub(crate) tag_flip: AttackTally,
    /// 6. Receipts for ids that are not the target's messages.
    pub(crate) forged_receipt: AttackTally,
    /// 6. Receipts with more ids than allowed.
    pub(crate) oversized_receipt: AttackTally,
    /// 7. Connections closed as soon as they were established.
    pub(crate) churn: AttackTally,
    /// Connections established, all attacks together.
    pub(crate) connections: u64,
    /// Identities used (fresh ones of the flood, and each lane's own).
    pub(crate) identities: u64,
    /// Failures on the attacking side (building a swarm or a message):
    /// 0 unless something is wrong with the actors themselves.
    pub(crate) local_errors: u64,
    /// The actors' thread did not end within [`STOP_WAIT`] and was
    /// abandoned.
    pub(crate) abandoned: bool,
}

impl HostileReport {
    fn tally_mut(&mut self, kind: Kind) -> &mut AttackTally {
        match kind {
            Kind::Garbage => &mut self.garbage,
            Kind::Truncated => &mut self.truncated,
            Kind::Held => &mut self.held,
            Kind::Flood => &mut self.flood,
            Kind::SessionStart => &mut self.session_start,
            Kind::Replay => &mut self.replay,
            Kind::TagFlip => &mut self.tag_flip,
            Kind::ForgedReceipt => &mut self.forged_receipt,
            Kind::OversizedReceipt => &mut self.oversized_receipt,
            Kind::Churn => &mut self.churn,
        }
    }

    /// Every tally with its name, in the order of the attacks.
    pub(crate) fn kinds(&self) -> [(&'static str, &AttackTally); 10] {
        [
            ("garbage", &self.garbage),
            ("truncated", &self.truncated),
            ("held", &self.held),
            ("flood", &self.flood),
            ("session_start", &self.session_start),
            ("replay", &self.replay),
            ("tag_flip", &self.tag_flip),
            ("forged_receipt", &self.forged_receipt),
            ("oversized_receipt", &self.oversized_receipt),
            ("churn", &self.churn),
        ]
    }

    /// A short human summary: one line per attack kind, then the totals.
    pub(crate) fn lines(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .kinds()
            .iter()
            .map(|(name, t)| {
                let what =
                    if *name == "churn" { "dials".to_string() } else { format!("requests, {} envelopes", t.envelopes) };
                format!("{name:<17} {} {what}: {}", t.attempts, t.outcomes())
            })
            .collect();
        out.push(format!(
            "{:<17} {} actors, {} connections, {} identities{}{}",
            "total",
            self.actors,
            self.connections,
            self.identities,
            if self.local_errors > 0 {
                format!(", {} errors on the attacking side", self.local_errors)
            } else {
                String::new()
            },
            if self.abandoned { ", actors abandoned at stop" } else { "" },
        ));
        out
    }

    /// The report as JSON: each kind's tally, and the totals.
    pub(crate) fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> =
            self.kinds().iter().map(|(name, t)| (name.to_string(), t.to_json())).collect();
        json!({
            "actors": self.actors,
            "attacks": kinds,
            "connections": self.connections,
            "identities": self.identities,
            "local_errors": self.local_errors,
            "abandoned": self.abandoned,
        })
    }
}

fn with_report(shared: &Shared, f: impl FnOnce(&mut HostileReport)) {
    f(&mut shared.lock().unwrap_or_else(PoisonError::into_inner));
}

fn note_attempt(shared: &Shared, kind: Kind, envelopes: usize) {
    with_report(shared, |r| {
        let t = r.tally_mut(kind);
        t.attempts += 1;
        t.envelopes += envelopes as u64;
    });
}

fn note_outcome(shared: &Shared, kind: Kind, outcome: &Outcome) {
    with_report(shared, |r| r.tally_mut(kind).add(outcome));
}

// ---- the wire, spoken raw ----------------------------------------------------

/// A raw request: the length the frame header declares, the bytes sent, and
/// whether to hold the stream open afterwards instead of closing it.
#[derive(Debug, Clone)]
struct Raw {
    declared_len: u32,
    body: Vec<u8>,
    hold: bool,
}

impl Raw {
    /// An honest frame around `envelopes` (which may be anything).
    fn framed(envelopes: &[Vec<u8>]) -> Raw {
        let body = wire::encode_request(envelopes).unwrap_or_default();
        Raw { declared_len: body.len() as u32, body, hold: false }
    }
}

/// A request-response codec that writes whatever a [`Raw`] says and reads
/// responses as raw bytes; it serves nothing.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl request_response::Codec for RawCodec {
    type Protocol = StreamProtocol;
    type Request = Raw;
    type Response = Vec<u8>;

    async fn read_request<T: AsyncRead + Unpin + Send>(&mut self, _: &StreamProtocol, _: &mut T) -> io::Result<Raw> {
        Err(io::Error::other("hostile actors serve nothing"))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_RESPONSE {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "response over the size limit"));
        }
        let mut body = vec![0u8; len];
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
        if !req.hold {
            // The handler closes the stream after this.
            return Ok(());
        }
        io.flush().await?;
        // Hold: a byte a second (still far from the declared length), which
        // fails as soon as the node resets the stream. Runs on the
        // connection's task, so the actor goes on meanwhile.
        let seconds = HOLD.as_secs().max(1);
        for _ in 0..seconds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            io.write_all(&[0]).await?;
            io.flush().await?;
        }
        // Not closing: the stream is dropped (reset) with the error.
        Err(io::Error::other(HELD_TO_THE_END))
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        _: &mut T,
        _: Vec<u8>,
    ) -> io::Result<()> {
        Err(io::Error::other("hostile actors serve nothing"))
    }
}

type RawSwarm = Swarm<request_response::Behaviour<RawCodec>>;

/// How one request (or one churned connection) ended.
#[derive(Debug)]
enum Outcome {
    Acks(Vec<Ack>),
    BadResponse,
    StreamFailed,
    Held,
    Established,
    ConnectionClosed,
    Refused,
    Timeout,
}

impl Outcome {
    fn of_response(body: &[u8]) -> Outcome {
        match wire::decode_response(body) {
            Ok(acks) => Outcome::Acks(acks),
            Err(_) => Outcome::BadResponse,
        }
    }

    fn of_failure(error: &OutboundFailure) -> Outcome {
        match error {
            OutboundFailure::DialFailure | OutboundFailure::UnsupportedProtocols => Outcome::Refused,
            OutboundFailure::Timeout => Outcome::Timeout,
            OutboundFailure::ConnectionClosed => Outcome::ConnectionClosed,
            OutboundFailure::Io(e) if e.to_string() == HELD_TO_THE_END => Outcome::Held,
            OutboundFailure::Io(_) => Outcome::StreamFailed,
        }
    }

    /// The first envelope is stored (now, or before: a duplicate).
    fn taken(&self) -> bool {
        matches!(self, Outcome::Acks(acks) if acks.first().is_some_and(|a| matches!(a, Ack::Accepted | Ack::Duplicate)))
    }
}

/// The libp2p keypair of an identity: the node checks that a prekey
/// message's identity is the connection's PeerId.
fn libp2p_key(identity: &IdentityKeyPair) -> Result<Keypair> {
    let mut seed = identity.signing_seed();
    Ok(Keypair::ed25519_from_bytes(&mut *seed)?)
}

/// One swarm and the requests it has in flight; polls the swarm whenever
/// the lane waits, so held streams and late answers are tallied.
struct Driver {
    swarm: RawSwarm,
    report: Shared,
    /// Held requests in flight, by target index (at most
    /// [`HELD_PER_TARGET`] per target).
    held: HashMap<OutboundRequestId, usize>,
}

impl Driver {
    fn new(key: Keypair, report: &Shared) -> Result<Driver> {
        // Held streams last HOLD; anything else is answered at once.
        let timeout = HOLD + Duration::from_secs(5);
        let swarm = libp2p::SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(tcp::Config::default().nodelay(true), noise::Config::new, yamux::Config::default)?
            .with_behaviour(|_| {
                request_response::Behaviour::with_codec(
                    RawCodec,
                    [(wire::PROTOCOL, ProtocolSupport::Outbound)],
                    request_response::Config::default()
                        .with_request_timeout(timeout)
                        .with_max_concurrent_streams(4 * HELD_PER_TARGET),
                )
            })
            .map_err(|e| anyhow!("hostile swarm: {e}"))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
            .build();
        Ok(Driver { swarm, report: report.clone(), held: HashMap::new() })
    }

    /// Tallies a connection, or returns how a request ended.
    fn on_event(
        &mut self,
        event: SwarmEvent<request_response::Event<Raw, Vec<u8>>>,
    ) -> Option<(OutboundRequestId, Outcome)> {
        match event {
            SwarmEvent::ConnectionEstablished { .. } => {
                with_report(&self.report, |r| r.connections += 1);
                None
            }
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { request_id, response },
                ..
            }) => Some((request_id, Outcome::of_response(&response))),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { request_id, error, .. }) => {
                Some((request_id, Outcome::of_failure(&error)))
            }
            _ => None,
        }
    }

    /// A request the lane is not waiting for ended: a held one is tallied,
    /// a late answer to one given up on is dropped.
    fn settle(&mut self, id: OutboundRequestId, outcome: &Outcome) {
        if self.held.remove(&id).is_some() {
            note_outcome(&self.report, Kind::Held, outcome);
        }
    }

    /// Sends `raw` and waits for how it ended (at most [`ANSWER_TIMEOUT`]).
    async fn request(&mut self, aim: &Aim, raw: Raw) -> Outcome {
        let id = self.swarm.behaviour_mut().send_request_with_addresses(&aim.peer, raw, aim.addrs.clone());
        let deadline = tokio::time::sleep(ANSWER_TIMEOUT);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return Outcome::Timeout,
                event = self.swarm.select_next_some() => match self.on_event(event) {
                    Some((rid, outcome)) if rid == id => return outcome,
                    Some((rid, outcome)) => self.settle(rid, &outcome),
                    None => {}
                },
            }
        }
    }

    /// Sends a held frame to target `index`; its end is tallied later.
    fn hold(&mut self, index: usize, aim: &Aim, raw: Raw) {
        let id = self.swarm.behaviour_mut().send_request_with_addresses(&aim.peer, raw, aim.addrs.clone());
        self.held.insert(id, index);
    }

    fn held_at(&self, index: usize) -> usize {
        self.held.values().filter(|&&i| i == index).count()
    }

    /// Waits `wait`, polling the swarm meanwhile.
    async fn idle(&mut self, wait: Duration) {
        if wait.is_zero() {
            return;
        }
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return,
                event = self.swarm.select_next_some() => {
                    if let Some((rid, outcome)) = self.on_event(event) {
                        self.settle(rid, &outcome);
                    }
                }
            }
        }
    }

    /// Dials the target and closes the connection as soon as it is
    /// established (waits at most [`DIAL_TIMEOUT`]).
    async fn churn(&mut self, aim: &Aim) -> Outcome {
        let opts = DialOpts::peer_id(aim.peer).addresses(aim.addrs.clone()).condition(PeerCondition::Always).build();
        let id = opts.connection_id();
        if self.swarm.dial(opts).is_err() {
            return Outcome::Refused;
        }
        let deadline = tokio::time::sleep(DIAL_TIMEOUT);
        tokio::pin!(deadline);
        let mut established = false;
        loop {
            tokio::select! {
                () = &mut deadline => return if established { Outcome::Established } else { Outcome::Timeout },
                event = self.swarm.select_next_some() => {
                    let (opened, failed, closed) = match &event {
                        SwarmEvent::ConnectionEstablished { connection_id, .. } => (*connection_id == id, false, false),
                        SwarmEvent::OutgoingConnectionError { connection_id, .. } => (false, *connection_id == id, false),
                        SwarmEvent::ConnectionClosed { connection_id, .. } => (false, false, *connection_id == id),
                        _ => (false, false, false),
                    };
                    if let Some((rid, outcome)) = self.on_event(event) {
                        self.settle(rid, &outcome);
                    }
                    if opened {
                        established = true;
                        self.swarm.close_connection(id);
                    } else if failed {
                        return Outcome::Refused;
                    } else if closed {
                        return if established { Outcome::Established } else { Outcome::ConnectionClosed };
                    }
                }
            }
        }
    }
}

/// A token bucket over real time; a lane takes tokens before it sends and
/// waits off any debt.
#[derive(Debug)]
struct Pace {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: tokio::time::Instant,
}

impl Pace {
    fn new(per_second: f64, burst: f64) -> Pace {
        Pace { per_second, burst, tokens: burst, at: tokio::time::Instant::now() }
    }

    /// Takes `n` tokens (into debt if need be); returns how long to wait
    /// before sending.
    fn take(&mut self, n: usize) -> Duration {
        let now = tokio::time::Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + refill).min(self.burst) - n as f64;
        self.at = now;
        if self.tokens >= 0.0 { Duration::ZERO } else { Duration::from_secs_f64(-self.tokens / self.per_second) }
    }
}

// ---- the actors ----------------------------------------------------------------

/// One lane of one actor.
struct Lane {
    actor: usize,
    aims: Arc<[Aim]>,
    report: Shared,
    rng: StdRng,
}

/// A long-lived session with one target.
struct Conversation {
    session: Session,
    /// The first message, until it is accepted.
    first: Vec<u8>,
    started: bool,
    seq: u64,
    /// Accepted envelopes to replay (the first and the latest receipt).
    accepted: Vec<Vec<u8>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn message(seq: u64, content: Content) -> Vec<u8> {
    Message { v: CONTENT_VERSION, seq, sent_at_ms: now_ms(), content }.encode()
}

impl Lane {
    /// The target of round `round` (actors start at different targets).
    fn target(&self, round: usize) -> usize {
        (self.actor + round) % self.aims.len()
    }

    fn identity(&mut self) -> IdentityKeyPair {
        with_report(&self.report, |r| r.identities += 1);
        IdentityKeyPair::generate(ProfileKind::Personal, &mut self.rng)
    }

    fn local_error(&self) {
        with_report(&self.report, |r| r.local_errors += 1);
    }

    /// A lane that cannot even start counts an error and ends.
    fn driver(&mut self) -> Option<(IdentityKeyPair, Driver)> {
        let identity = self.identity();
        match libp2p_key(&identity).and_then(|key| Driver::new(key, &self.report)) {
            Ok(d) => Some((identity, d)),
            Err(_) => {
                self.local_error();
                None
            }
        }
    }

    fn random_bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.rng.fill_bytes(&mut out);
        out
    }

    /// Random envelopes of four sorts: random bytes; well-formed with random
    /// keys and ciphertext (decodes, then finds no session); well-formed but
    /// cut short; a prekey message in `ours`'s name with a random base key
    /// (reaches X3DH, then fails to decrypt, if the session-start budget
    /// lets it).
    fn garbage_envelopes(&mut self, ours: &IdentityKeyPair, aim_index: usize) -> Vec<Vec<u8>> {
        let spk = self.aims[aim_index].bundle.signed_prekey.id;
        (0..GARBAGE_ENVELOPES)
            .map(|i| {
                // A length the decoder accepts (a padding bucket plus the
                // tag), so the envelope reaches the cryptography.
                let len = padded_len(self.rng.random_range(0..=MIN_CIPHERTEXT * 8)) + TAG_LEN;
                let envelope = |rng: &mut StdRng, prekey: Option<PrekeyHeader>| Envelope {
                    prekey,
                    header: RatchetHeader {
                        ratchet_key: rng.random(),
                        previous_chain_length: rng.random_range(0..1_000),
                        counter: rng.random_range(0..1_000),
                        salt: rng.random(),
                    },
                    ciphertext: {
                        let mut c = vec![0u8; len];
                        rng.fill_bytes(&mut c);
                        c
                    },
                };
                match i % 4 {
                    0 => {
                        let n = self.rng.random_range(0..600);
                        self.random_bytes(n)
                    }
                    1 => envelope(&mut self.rng, None).encode(),
                    2 => {
                        let mut e = envelope(&mut self.rng, None).encode();
                        let cut = self.rng.random_range(1..e.len());
                        e.truncate(cut);
                        e
                    }
                    _ => {
                        let header = PrekeyHeader {
                            identity: ours.public(),
                            base_key: self.rng.random(),
                            signed_prekey_id: spk,
                            one_time_prekey_id: None,
                        };
                        envelope(&mut self.rng, Some(header)).encode()
                    }
                }
            })
            .collect()
    }

    /// Attacks 1–3: garbage, truncated and held frames.
    async fn frames(mut self) {
        let Some((identity, mut driver)) = self.driver() else { return };
        let mut pace = Pace::new(FRAME_LANE_PER_SECOND, FRAME_LANE_PER_SECOND);
        for round in 0usize.. {
            let index = self.target(round);

            // 1. Random bytes, honestly framed at the outer length.
            driver.idle(pace.take(1)).await;
            let len = self.rng.random_range(16..4096);
            let raw = Raw { declared_len: len as u32, body: self.random_bytes(len), hold: false };
            note_attempt(&self.report, Kind::Garbage, 0);
            let outcome = driver.request(&self.aims[index], raw).await;
            note_outcome(&self.report, Kind::Garbage, &outcome);

            // 1. A well-framed request of random envelopes.
            let envelopes = self.garbage_envelopes(&identity, index);
            driver.idle(pace.take(envelopes.len())).await;
            note_attempt(&self.report, Kind::Garbage, envelopes.len());
            let outcome = driver.request(&self.aims[index], Raw::framed(&envelopes)).await;
            note_outcome(&self.report, Kind::Garbage, &outcome);

            // 2. Declares 4 MiB, sends 1 KiB, closes.
            driver.idle(pace.take(1)).await;
            let raw = Raw { declared_len: DECLARED, body: self.random_bytes(TRUNCATED_SENT), hold: false };
            note_attempt(&self.report, Kind::Truncated, 0);
            let outcome = driver.request(&self.aims[index], raw).await;
            note_outcome(&self.report, Kind::Truncated, &outcome);

            // 3. Declares 4 MiB, sends 64 KiB, holds: topped up to
            // HELD_PER_TARGET once a visit (a dead target fails at once and
            // must not keep the lane).
            for _ in driver.held_at(index)..HELD_PER_TARGET {
                driver.idle(pace.take(1)).await;
                let raw = Raw { declared_len: DECLARED, body: self.random_bytes(HELD_SENT), hold: true };
                note_attempt(&self.report, Kind::Held, 0);
                driver.hold(index, &self.aims[index], raw);
            }
        }
    }

    /// Attacks 5 and 6 inside one long-lived session per target: replays,
    /// forged and oversized receipts, tag-flipped batches.
    async fn session(mut self) {
        let Some((identity, mut driver)) = self.driver() else { return };
        let mut pace = Pace::new(SESSION_LANE_PER_SECOND, MAX_BATCH as f64 + 16.0);
        let mut conversations: Vec<Option<Conversation>> = (0..self.aims.len()).map(|_| None).collect();
        for round in 0usize.. {
            let index = self.target(round);
            if conversations[index].is_none() {
                let started =
                    Session::initiate(&identity, &self.aims[index].bundle, &mut self.rng).and_then(|mut s| {
                        let first = s.encrypt(&message(0, Content::text("hello")), &mut self.rng)?.encode();
                        Ok(Conversation { session: s, first, started: false, seq: 1, accepted: Vec::new() })
                    });
                match started {
                    Ok(c) => conversations[index] = Some(c),
                    Err(_) => {
                        self.local_error();
                        driver.idle(pace.take(1)).await;
                        continue;
                    }
                }
            }
            let Some(conv) = conversations[index].as_mut() else { continue };
            let aim = &self.aims[index];

            // The session starts once: the first message until it is taken
            // (the profile's session-start budget is shared with the flood).
            if !conv.started {
                driver.idle(pace.take(1)).await;
                note_attempt(&self.report, Kind::SessionStart, 1);
                let outcome = driver.request(aim, Raw::framed(std::slice::from_ref(&conv.first))).await;
                note_outcome(&self.report, Kind::SessionStart, &outcome);
                if !outcome.taken() {
                    continue;
                }
                conv.started = true;
                conv.accepted.push(conv.first.clone());
            }

            // 5. Replays: every accepted envelope twice in one request.
            let replays: Vec<Vec<u8>> = conv.accepted.iter().chain(conv.accepted.iter()).cloned().collect();
            driver.idle(pace.take(replays.len())).await;
            note_attempt(&self.report, Kind::Replay, replays.len());
            let outcome = driver.request(aim, Raw::framed(&replays)).await;
            note_outcome(&self.report, Kind::Replay, &outcome);

            // 6. A forged receipt (ids that are not the target's messages)
            // and an oversized one.
            for (kind, ids) in
                [(Kind::ForgedReceipt, FORGED_RECEIPT_IDS), (Kind::OversizedReceipt, OVERSIZED_RECEIPT_IDS)]
            {
                let read: Vec<String> =
                    (0..ids).map(|_| kabar_crypto::hex::encode(&self.rng.random::<[u8; 16]>())).collect();
                let plaintext = message(conv.seq, Content::Receipt { read, delivered: Vec::new(), retry: Vec::new() });
                conv.seq += 1;
                let Ok(envelope) = conv.session.encrypt(&plaintext, &mut self.rng) else {
                    self.local_error();
                    continue;
                };
                let envelope = envelope.encode();
                driver.idle(pace.take(1)).await;
                note_attempt(&self.report, kind, 1);
                let outcome = driver.request(aim, Raw::framed(std::slice::from_ref(&envelope))).await;
                note_outcome(&self.report, kind, &outcome);
                if matches!(&outcome, Outcome::Acks(a) if a.first() == Some(&Ack::Accepted)) {
                    // Keep the first message and the latest accepted receipt.
                    conv.accepted.truncate(1);
                    conv.accepted.push(envelope);
                }
            }

            // 5. A full batch of the session's next envelopes, each with a
            // flipped last byte (the tag). Made on a copy: the session's own
            // counters do not move, and none of these ids was ever accepted.
            let mut shadow = conv.session.clone();
            let plaintext = message(conv.seq, Content::text("x"));
            let mut batch = Vec::with_capacity(MAX_BATCH);
            for _ in 0..MAX_BATCH {
                let Ok(envelope) = shadow.encrypt(&plaintext, &mut self.rng) else { break };
                let mut bytes = envelope.encode();
                if let Some(last) = bytes.last_mut() {
                    *last ^= 0x01;
                }
                batch.push(bytes);
            }
            driver.idle(pace.take(batch.len())).await;
            note_attempt(&self.report, Kind::TagFlip, batch.len());
            let outcome = driver.request(aim, Raw::framed(&batch)).await;
            note_outcome(&self.report, Kind::TagFlip, &outcome);
        }
    }

    /// Attack 4: a real first message from a fresh identity over a fresh
    /// connection, again and again.
    async fn flood(mut self) {
        let mut pace = Pace::new(IDENTITIES_PER_SECOND, IDENTITIES_PER_SECOND);
        for round in 0usize.. {
            tokio::time::sleep(pace.take(1)).await;
            let index = self.target(round);
            let identity = self.identity();
            let prepared = Session::initiate(&identity, &self.aims[index].bundle, &mut self.rng)
                .and_then(|mut s| s.encrypt(&message(0, Content::text("hello")), &mut self.rng))
                .map_err(anyhow::Error::from)
                .and_then(|e| Ok((e.encode(), Driver::new(libp2p_key(&identity)?, &self.report)?)));
            let Ok((envelope, mut driver)) = prepared else {
                self.local_error();
                continue;
            };
            note_attempt(&self.report, Kind::Flood, 1);
            let outcome = driver.request(&self.aims[index], Raw::framed(&[envelope])).await;
            note_outcome(&self.report, Kind::Flood, &outcome);
            // The swarm and its connection go with `driver` here.
        }
    }

    /// Attack 7: connections closed as soon as they are established.
    async fn churn(mut self) {
        let Some((_, mut driver)) = self.driver() else { return };
        let mut pace = Pace::new(CHURNS_PER_SECOND, CHURNS_PER_SECOND);
        for round in 0usize.. {
            driver.idle(pace.take(1)).await;
            let index = self.target(round);
            note_attempt(&self.report, Kind::Churn, 0);
            let outcome = driver.churn(&self.aims[index]).await;
            note_outcome(&self.report, Kind::Churn, &outcome);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Instant;

    use kabar_node::engine::EngineConfig;
    use kabar_node::network::NetworkConfig;
    use kabar_node::{Node, NodeConfig};
    use kabar_storage::{DataDir, KdfParams};

    use super::*;
    use crate::client::Client;

    const PASSPHRASE: &[u8] = b"pw";

    /// Waits until message `id` is reported `delivered` on `events`.
    fn wait_delivered(events: &mut Client, id: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while let Some(e) = events.next_event(deadline).unwrap() {
            if e["event"] == "status_changed" && e["message_id"] == id && e["status"] == "delivered" {
                return;
            }
        }
        panic!("message {id} not delivered within {within:?}");
    }

    fn send(client: &mut Client, text: &str) -> String {
        let sent = client.call("message.send", json!({"profile": "personal", "to": "Shop", "text": text})).unwrap();
        sent["message_id"].as_str().unwrap().to_string()
    }

    fn targets(client: &mut Client) -> Vec<Target> {
        let info = client.call("node.info", json!({})).unwrap();
        ["personal", "shop"]
            .iter()
            .map(|name| {
                let p = info["profiles"].as_array().unwrap().iter().find(|p| p["name"] == *name).unwrap();
                let card = client.call("card.get", json!({"profile": name, "name": name})).unwrap();
                Target {
                    node: 0,
                    profile: name.to_string(),
                    peer_id: p["peer_id"].as_str().unwrap().parse().unwrap(),
                    addrs: p["listen_addrs"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .filter_map(|a| a.as_str()?.parse().ok())
                        .filter(|a: &Multiaddr| a.to_string().starts_with("/ip4/127.0.0.1/tcp/"))
                        .collect(),
                    card: card["card"].as_str().unwrap().to_string(),
                }
            })
            .collect()
    }

    /// What the test waits for: every attack tried, and each defence seen.
    fn defences_seen(r: &HostileReport) -> bool {
        r.kinds().iter().all(|(_, t)| t.attempts > 0)
            && r.flood.accepted > 0
            && r.flood.rejected(RejectReason::Busy) > 0
            && r.replay.duplicate > 0
            && r.tag_flip.rejected(RejectReason::Undecryptable) > 0
            && r.tag_flip.rejected(RejectReason::Busy) > 0
            && r.churn.established > 0
    }

    fn start_node(rt: &tokio::runtime::Runtime, data_dir: &Path) -> Node {
        let mut dir = DataDir::create(data_dir, PASSPHRASE, KdfParams::TESTNET).unwrap();
        dir.create_profile("personal", ProfileKind::Personal, 1_700_000_000, &mut rand::rng()).unwrap();
        dir.create_profile("shop", ProfileKind::Business, 1_700_000_000, &mut rand::rng()).unwrap();
        drop(dir);
        let config = NodeConfig {
            data_dir: data_dir.to_path_buf(),
            passphrase: PASSPHRASE.to_vec(),
            network: NetworkConfig {
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
                bootstrap: Vec::new(),
                mdns: false,
                kad_server: false,
                relays: Vec::new(),
            },
            engine: EngineConfig { retry_base_ms: 200, retry_max_ms: 2_000, ..EngineConfig::default() },
        };
        rt.block_on(async {
            let node = Node::start(config).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), node.wait_listening()).await.unwrap();
            node
        })
    }

    #[test]
    fn hostile_actors_meet_every_defence_and_the_node_carries_on() {
        // KABAR_TEST_LOG=warn shows the node's logs on stderr.
        if let Ok(filter) = std::env::var("KABAR_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let node = start_node(&rt, &data_dir);
        let mut client = Client::connect(&data_dir).unwrap();
        let targets = targets(&mut client);
        assert!(targets.iter().all(|t| !t.addrs.is_empty()));
        // The node's own two profiles are contacts of each other: their
        // conversation is the honest traffic.
        let (personal, shop) = (targets[0].card.clone(), targets[1].card.clone());
        client.call("contact.add", json!({"profile": "personal", "card": shop, "name": "Shop"})).unwrap();
        client.call("contact.add", json!({"profile": "shop", "card": personal, "name": "Pat"})).unwrap();
        let mut events = Client::connect(&data_dir).unwrap();
        events.subscribe().unwrap();

        let targets_again = targets.clone();
        let hostile = Hostile::start(targets, 2, 7).unwrap();
        // While the actors attack, a contact's message is delivered.
        let during = send(&mut client, "during the attack");
        wait_delivered(&mut events, &during, Duration::from_secs(10));
        let deadline = Instant::now() + Duration::from_secs(15);
        while !defences_seen(&hostile.report()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        let stopping = Instant::now();
        let report = hostile.stop();
        assert!(stopping.elapsed() < STOP_WAIT + Duration::from_secs(1));
        let lines = report.lines().join("\n");
        assert!(defences_seen(&report), "{lines}");
        assert!(!report.abandoned, "{lines}");
        assert_eq!(report.local_errors, 0, "{lines}");
        // Bad frames never get an answer, and nothing from garbage is taken.
        assert_eq!(report.truncated.accepted + report.garbage.accepted, 0, "{lines}");
        // Every actor holds streams at every target; none is ever answered.
        assert!(report.held.attempts >= 2 * 2 * HELD_PER_TARGET as u64, "{lines}");
        assert_eq!(report.held.accepted + report.held.bad_responses, 0, "{lines}");
        assert!(report.truncated.stream_failures > 0, "{lines}");
        assert!(report.identities >= report.flood.attempts, "{lines}");

        // Afterwards the node answers and delivers as before.
        let info = client.call("node.info", json!({})).unwrap();
        assert_eq!(info["profiles"].as_array().unwrap().len(), 2);
        let after = send(&mut client, "after the attack");
        wait_delivered(&mut events, &after, Duration::from_secs(10));
        let json = report.to_json();
        assert_eq!(json["attacks"]["flood"]["accepted"], report.flood.accepted);
        assert_eq!(json["attacks"].as_object().unwrap().len(), report.kinds().len());

        // Against a node that is gone, actors find only refusals, and stop
        // in time all the same.
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(10), node.shutdown()).await.unwrap() });
        let hostile = Hostile::start(targets_again, 1, 8).unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while hostile.report().flood.refused == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let stopping = Instant::now();
        let report = hostile.stop();
        assert!(stopping.elapsed() < STOP_WAIT + Duration::from_secs(1));
        let lines = report.lines().join("\n");
        assert!(report.flood.refused > 0 && report.churn.refused > 0, "{lines}");
        assert_eq!(report.flood.accepted + report.churn.established, 0, "{lines}");
    }
}
