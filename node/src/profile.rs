//! What the rest of the node says to one profile's loop, and what the loop
//! shows of the profile: the [`Command`]s the control socket sends (an
//! [`EngineJob`] to run on the engine, a dial, a relay or mailbox change)
//! and the live [`ProfileStatus`] behind `node.info`.
//!
//! Shared by the control layer ([`crate::control`]) and the swarm loop
//! ([`crate::network`]), so that neither imports the other.

use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use serde::Serialize;
use tokio::sync::oneshot;

use crate::engine::{Action, Engine};
use crate::rpc_error::RpcError;

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// What the control API asks a profile task to do: run a closure on the
/// engine (reads and writes of the store, sends) and return its JSON result.
pub struct EngineJob {
    /// The closure.
    pub run: JobFn,
    /// Whether its sends may be staged and committed with the sends of the
    /// jobs around it ([`Engine::stage_sends`]): true only for a job that
    /// does nothing but look up a contact and send (`message.send`).
    pub stages_sends: bool,
}

impl EngineJob {
    /// A job.
    pub fn new(run: impl FnOnce(&mut Engine, &ProfileStatus) -> JobResult + Send + 'static) -> Self {
        EngineJob { run: Box::new(run), stages_sends: false }
    }

    /// A job that only looks up a contact and sends ([`EngineJob::stages_sends`]).
    pub fn staging_sends(run: impl FnOnce(&mut Engine, &ProfileStatus) -> JobResult + Send + 'static) -> Self {
        EngineJob { run: Box::new(run), stages_sends: true }
    }
}
/// The closure of an [`EngineJob`].
pub type JobFn = Box<dyn FnOnce(&mut Engine, &ProfileStatus) -> JobResult + Send>;
/// A job's result and the actions (transmissions) it produced.
pub type JobResult = Result<(serde_json::Value, Vec<Action>), RpcError>;

/// A change to a profile's relays.
#[derive(Debug, Clone)]
pub enum RelayChange {
    /// Add a relay (remembered in the store) and reserve on it if needed.
    Add(Multiaddr),
    /// Forget a relay and drop its reservation.
    Remove(Multiaddr),
}

/// A command to a profile task.
pub enum Command {
    /// Run a job on the engine.
    Job(EngineJob, oneshot::Sender<Result<serde_json::Value, RpcError>>),
    /// Dial an address.
    Dial(Multiaddr),
    /// Add or remove a relay; answers with the profile's relay list.
    Relay(RelayChange, oneshot::Sender<Result<Vec<String>, RpcError>>),
    /// Add or remove one of the profile's mailboxes; answers with its list.
    Mailbox(MailboxChange, crate::courier::MailboxReply),
}

/// A change to a profile's mailboxes.
#[derive(Debug)]
pub enum MailboxChange {
    /// Register a mailbox on this service node (multiaddr with `/p2p/`).
    Add(Multiaddr),
    /// Forget the mailbox on this service node and delete it there.
    Remove(String),
    /// Fetch every mailbox now; answers when fresh rounds have ended.
    Fetch(crate::courier::FetchReply),
}

/// A relay of a profile, and whether it holds a slot for us now.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RelayStatus {
    /// The relay's multiaddr (with `/p2p/`).
    pub address: String,
    /// A reservation is active: peers can reach us through it.
    pub reserved: bool,
}

/// A connected peer and how we are connected to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// Its PeerId.
    pub peer_id: String,
    /// "direct" or "relayed" (a direct connection is listed if there is one).
    pub connection: String,
}

/// Hole punching (DCUtR) outcomes of a profile.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HolePunchStatus {
    /// Attempts that finished (either way).
    pub attempts: u64,
    /// Attempts that gave a direct connection.
    pub succeeded: u64,
    /// New relayed connections opened to punch again after a failure.
    pub retries: u64,
    /// For the latest successes (at most 256): milliseconds from the
    /// relayed connection to the direct one.
    pub direct_after_ms: Vec<u64>,
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
    /// AutoNAT's verdict: "public", "private" or "unknown".
    pub nat: String,
    /// Its Kademlia mode: "server" (answers DHT queries: public, or forced
    /// with `--dht-server`) or "client".
    pub dht: String,
    /// What its card, address updates and DHT record carry.
    pub advertised: Vec<String>,
    /// Its relays.
    pub relays: Vec<RelayStatus>,
    /// Connected peers other than its relays, direct or relayed.
    pub peers: Vec<PeerStatus>,
    /// Hole punching so far.
    pub hole_punch: HolePunchStatus,
    /// Its signed address record has been stored on at least one DHT node
    /// since the profile started.
    pub address_record_published: bool,
    /// Its mailboxes, and how fetching them went.
    pub mailboxes: Vec<crate::courier::MailboxState>,
    /// Envelopes it deposited in contacts' mailboxes since it started.
    pub deposited: u64,
    /// Messages in its outbox now: not yet acknowledged by their recipient
    /// (those a mailbox holds included), or not yet deposited.
    pub outbox: usize,
    /// What the bounds against strangers did.
    pub guard: crate::engine::GuardStatus,
    /// Inbound request frames refused since start because the profile's
    /// bytes in flight were at their limit (the stream is reset).
    pub frames_refused: u64,
    /// Its prekeys (`/kabar/prekey/1`).
    pub prekeys: PrekeyStatus,
    /// Why the profile stopped while the node runs on, naming its database
    /// file: its store turned out damaged (a page or record that does not
    /// read back), or its task failed. `None` while it runs.
    pub failed: Option<String>,
}

/// A profile's prekeys, as `node info` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PrekeyStatus {
    /// The id of its current signed prekey.
    pub signed_prekey_id: u32,
    /// One-time prekeys it can still hand out.
    pub one_time_prekeys: u64,
    /// One-time prekeys in its store: those it can hand out, and those
    /// handed out that no session start has used yet.
    pub one_time_prekeys_held: u64,
    /// Prekey responses it received since start that decoded and verified
    /// (one from another identity than the contact's is counted, and ignored).
    pub fetched: u64,
}

/// The relay's PeerId from a relay multiaddr (it must end in `/p2p/<id>`).
pub fn relay_peer(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}
