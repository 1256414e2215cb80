//! The delivery engine of one profile: events in, actions out.
//!
//! It owns the profile's [`ProfileStore`] and knows nothing of sockets,
//! libp2p or tokio: the network layer feeds it what happened (a request
//! arrived, acknowledgements came back, a peer became reachable, time
//! passed) and carries out the [`Action`]s it returns. Time comes in as
//! `now_ms`, randomness as an RNG, so tests drive two engines against each
//! other without a network.
//!
//! Rules it keeps:
//! - **Send**: encrypt, commit (ratchet step + message + outbox in one
//!   transaction), then transmit.
//! - **Receive**: decrypt, commit (message + ratchet state + received id in one
//!   transaction), then acknowledge. Duplicates are acknowledged, not stored.
//! - **Retry**: the outbox is retried with capped exponential backoff and
//!   jitter, at once when the peer becomes reachable, and survives restarts
//!   (it lives in the store). A message fails only after [`EngineConfig::expiry_ms`].

use std::collections::{HashMap, HashSet};

use kabar_crypto::{CryptoError, Envelope, IdentityKeyPair, ProfileKind, Session};
use kabar_storage::{
    AwaySchedule, Contact, ContactId, ContactMailbox, DEFAULT_STRANGER_LIMITS, Direction, Inbound, IncomingMessage,
    MAX_PREVIOUS_SESSIONS, MessageRecord, MessageStatus, OutgoingMessage, OwnMailbox, ProfileStore, Receipt,
    ReceiveOutcome, SessionState, SkippedKeyChanges, StoreError, StrangerLimits,
};
use rand_core::CryptoRng;
use serde::Serialize;

use crate::budget::{Budgets, Sender};
use crate::content::{CatalogEntry, Content, Message};
use crate::mailbox::{DepositOutcome, Item, MailboxError, Status};
use crate::offline::{self, MailboxOffer};
use crate::outbox::{OutboxIndex, Queued};
use crate::pace::{Gate, Pacer};
use crate::prekeys::{self, PrekeyBudgets, PrekeyResponse};
use crate::wire::{Ack, RejectReason};

/// A peer, by its Ed25519 identity key (its PeerId is derived from it).
pub type PeerKey = [u8; 32];

/// Greeting again after this much silence from the customer.
pub const GREETING_SILENCE_MS: u64 = 14 * 24 * 3_600_000;
/// Label applied to a business's new customers.
pub const NEW_CUSTOMER_LABEL: &str = "New customer";
/// The colour the [`NEW_CUSTOMER_LABEL`] label is created with.
const NEW_CUSTOMER_COLOUR: &str = "#2e7d32";
/// Direct retries of a message a mailbox holds come at most this often.
pub const STORED_RETRY_MS: u64 = 5 * 60_000;
/// After a refused or failed deposit, the next try for that contact waits
/// this long (or the longest retry delay, if shorter).
pub const DEPOSIT_RETRY_MS: u64 = 30_000;
/// Most envelopes per deposit request.
pub const MAX_DEPOSIT_BATCH: usize = 64;
/// Most envelope bytes per deposit request.
pub const MAX_DEPOSIT_BYTES: usize = 4 * 1024 * 1024;
/// Automatic replies to a pending stranger (greeting, away, catalog) that
/// could not be delivered at once are given up after this long.
pub const STRANGER_REPLY_TTL_MS: u64 = 10 * 60_000;
/// Most outbox entries to pending strangers, all together: beyond it, the
/// automations do not answer strangers.
pub const MAX_STRANGER_QUEUE: usize = 256;

/// An outbox entry handed to the network whose outcome (acknowledgement or
/// failure) has not come back after this long is treated as settled and
/// retried: longer than any request timeout of the network layer, so it
/// only matters when an action was lost with an error.
pub const IN_FLIGHT_MAX_MS: u64 = 5 * 60_000;

/// Most times one message is encrypted again after its recipient reported
/// its key gone; then it fails ([`NodeEvent::ResendFailed`]).
pub const MAX_RESENDS: u32 = 3;

/// Tunables of the engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Most envelopes per request.
    pub max_batch: usize,
    /// First retry delay.
    pub retry_base_ms: u64,
    /// Longest retry delay.
    pub retry_max_ms: u64,
    /// A message still unacknowledged this long after it was queued fails.
    pub expiry_ms: u64,
    /// Most pending strangers (requests, unanswered customers) and their bytes.
    pub strangers: StrangerLimits,
    /// How long the first messages to a contact with no session wait, kept
    /// unencrypted, for its prekeys (`/kabar/prekey/1`) so the session start
    /// can use a one-time prekey; 0: never wait (use what is in hand).
    pub prekey_wait_ms: u64,
    /// Requests per second to one peer, sustained ([`crate::pace`]).
    pub requests_per_second: f64,
    /// Requests to one peer at once.
    pub request_burst: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_batch: crate::wire::MAX_BATCH,
            retry_base_ms: 1_000,
            retry_max_ms: 5 * 60_000,
            expiry_ms: 7 * 24 * 3_600_000,
            strangers: DEFAULT_STRANGER_LIMITS,
            prekey_wait_ms: prekeys::PREKEY_WAIT_MS,
            requests_per_second: crate::pace::REQUESTS_PER_SECOND,
            request_burst: crate::pace::REQUEST_BURST,
        }
    }
}

/// What the network layer must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Flush `peer`'s outbox ([`Engine::flush_peer`]) at `at_ms` (Unix ms):
    /// requests to it are paced ([`crate::pace`]) and the next may leave
    /// then. A later `FlushAt` for the same peer replaces an earlier one
    /// only if it is sooner.
    FlushAt {
        /// The peer.
        peer: PeerKey,
        /// When (Unix ms).
        at_ms: u64,
    },
    /// Send these envelopes to `peer` in one request, then report back with
    /// [`Engine::on_acks`] or [`Engine::on_transmit_failed`].
    Transmit {
        /// Recipient.
        peer: PeerKey,
        /// Addresses we know for it.
        addresses: Vec<String>,
        /// The message ids, in the order of `envelopes`.
        message_ids: Vec<[u8; 16]>,
        /// Encoded envelopes.
        envelopes: Vec<Vec<u8>>,
    },
    /// The recipient could not be reached: deposit these envelopes in its
    /// mailbox, over a connection with a fresh identity, then report back
    /// with [`Engine::on_deposit_result`].
    Deposit {
        /// Recipient.
        peer: PeerKey,
        /// Its mailbox and our capability there.
        mailbox: ContactMailbox,
        /// The message ids, in the order of `envelopes`.
        message_ids: Vec<[u8; 16]>,
        /// Encoded envelopes.
        envelopes: Vec<Vec<u8>>,
    },
    /// Ask `peer` for its current signed prekey and a one-time prekey
    /// (`/kabar/prekey/1`), then report the answer with
    /// [`Engine::on_prekeys`]; a failure needs no report.
    FetchPrekeys {
        /// The contact.
        peer: PeerKey,
        /// Addresses we know for it.
        addresses: Vec<String>,
    },
    /// Revoke (or restore) a deposit tag in one of our mailboxes.
    Revoke {
        /// Our mailbox (its key signs the request).
        mailbox: OwnMailbox,
        /// The tag.
        tag: [u8; 16],
        /// True to revoke, false to restore.
        revoked: bool,
    },
    /// Tell subscribers.
    Notify(NodeEvent),
}

/// Events for control-API subscribers. Never carry message text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A message arrived.
    MessageReceived {
        /// Profile name.
        profile: String,
        /// Contact's display name.
        contact: String,
        /// Message id (hex).
        message_id: String,
        /// Content kind (text, order, catalog…).
        kind: String,
    },
    /// A message whose recipient could no longer decrypt it could not be
    /// encrypted again (see `reason`): it failed.
    ResendFailed {
        /// Profile name.
        profile: String,
        /// Contact's display name.
        contact: String,
        /// Message id (hex).
        message_id: String,
        /// Why.
        reason: String,
    },
    /// One of our messages changed status.
    StatusChanged {
        /// Profile name.
        profile: String,
        /// Message id (hex).
        message_id: String,
        /// New status.
        status: MessageStatus,
    },
    /// A contact's identity key changed: warn the user.
    ContactIdentityChanged {
        /// Profile name.
        profile: String,
        /// Contact's display name.
        contact: String,
    },
    /// A contact told us (inside the end-to-end session) or the DHT told us
    /// (a record signed by the contact) where it is now.
    ContactAddressesChanged {
        /// Profile name.
        profile: String,
        /// Contact's display name.
        contact: String,
    },
    /// A contact's mailbox refused our deposit (its quota is full, our
    /// capability was revoked…): the messages stay in the outbox.
    DepositRefused {
        /// Profile name.
        profile: String,
        /// Contact's display name.
        contact: String,
        /// Why (the mailbox's status: `quota_full`, `revoked`…).
        reason: String,
        /// Messages of that deposit still waiting in the outbox.
        waiting: usize,
    },
    /// A contact told us (inside the end-to-end session) where it takes
    /// deposits while offline.
    ContactMailboxesChanged {
        /// Profile name.
        profile: String,
        /// Contact's display name.
        contact: String,
        /// How many mailboxes it has now.
        mailboxes: usize,
    },
    /// Pending strangers were over the limit: the oldest were dropped with
    /// everything they sent.
    RequestsDropped {
        /// Profile name.
        profile: String,
        /// How many were dropped.
        dropped: usize,
    },
    /// A stranger wrote to a personal profile.
    MessageRequest {
        /// Profile name.
        profile: String,
        /// The name it gave itself (from its first message), or its PeerId.
        contact: String,
    },
}

/// Why an engine operation failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Cryptography failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The contact has no signed prekey to start a session from.
    #[error("no session with {0} and no prekey to start one: add their contact card")]
    NoPrekey(String),
    /// The contact is blocked.
    #[error("{0} is blocked")]
    Blocked(String),
    /// A `/shortcut` with no saved quick reply.
    #[error("no quick reply /{0}; add one with `kabar business reply add`")]
    UnknownShortcut(String),
    /// Bad content.
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    /// A `/kabar/prekey/1` response did not decode or verify.
    #[error(transparent)]
    Prekey(#[from] crate::prekeys::PrekeyError),
    /// No contact has this name (or PeerId).
    #[error("no contact named {0:?}; see `kabar contact list`")]
    NoContact(String),
    /// No message has this id.
    #[error("no such message")]
    NoMessage,
    /// No label has this name.
    #[error("no label named {0:?}")]
    NoLabel(String),
    /// A contact card that is this profile's own.
    #[error("that is this profile's own card")]
    OwnCard,
    /// What was asked (named here) needs a business profile.
    #[error("{0} needs a business profile")]
    NotBusiness(&'static str),
    /// A message request renamed other than by accepting it.
    #[error("{0:?} is a message request: accept it under a name (`kabar requests accept NAME --rename NEW`)")]
    RenameRequest(String),
    /// An away schedule other than `off` with no away message to send.
    #[error("an away schedule needs a \"text\"")]
    AwayWithoutText,
}

/// One working copy of a contact's sessions for a whole request: the
/// current session is decrypted with in place (no copy per envelope), and
/// its state goes to the store once, with the batch. The skipped keys stay
/// in the store: each decrypt looks up the one its envelope needs, and the
/// changes (keys added, used, evicted) go with the batch too.
struct Working {
    current: Session,
    /// Earlier sessions, newest first, at most [`MAX_PREVIOUS_SESSIONS`].
    previous: Vec<kabar_crypto::SessionSnapshot>,
    /// What this request changed in the contact's skipped keys.
    skipped: SkippedKeyChanges,
}

impl Working {
    fn open(contact: ContactId, state: SessionState) -> Result<Self, CryptoError> {
        Ok(Working {
            current: Session::from_snapshot(state.current)?,
            previous: state.previous,
            skipped: SkippedKeyChanges::new(contact),
        })
    }

    /// A first session, made from a prekey message: its keys skipped
    /// before that message go to the store.
    fn first(store: &ProfileStore, contact: ContactId, mut session: Session) -> Result<Self, StoreError> {
        let mut skipped = SkippedKeyChanges::new(contact);
        let id = session.id();
        skipped.record(store, &id, session.take_skipped())?;
        Ok(Working { current: session, previous: Vec::new(), skipped })
    }

    /// True if one of the sessions was made from this X3DH header.
    fn has_prekey_session(&self, header: &kabar_crypto::PrekeyHeader) -> bool {
        self.current.is_same_prekey_session(header)
            || self
                .previous
                .iter()
                .filter_map(|s| Session::from_snapshot(s.clone()).ok())
                .any(|s| s.is_same_prekey_session(header))
    }

    /// Makes `session` current; the old current becomes the newest previous.
    /// A session made from a prekey message brings the keys it skipped
    /// (the store deletes those of a session pushed out, with the batch).
    fn replace_current(&mut self, store: &ProfileStore, mut session: Session) -> Result<(), StoreError> {
        let id = session.id();
        self.skipped.record(store, &id, session.take_skipped())?;
        let old = std::mem::replace(&mut self.current, session);
        self.previous.insert(0, old.snapshot());
        self.previous.truncate(MAX_PREVIOUS_SESSIONS);
        Ok(())
    }

    /// Decrypts `envelope` with `session`, its skipped key looked up in the
    /// store (as this request left it); records the change on success.
    fn decrypt_one(
        skipped: &mut SkippedKeyChanges,
        store: &ProfileStore,
        session: &mut Session,
        envelope: &Envelope,
    ) -> Result<Result<Vec<u8>, CryptoError>, StoreError> {
        let id = session.id();
        let found = skipped.lookup(store, &id, &envelope.header)?;
        Ok(match session.decrypt_with(envelope, found) {
            Ok((plaintext, change)) => {
                skipped.record(store, &id, change)?;
                Ok(plaintext)
            }
            Err(e) => Err(e),
        })
    }

    /// Decrypts with the current session, else with a previous one, which
    /// then becomes current. A failed attempt changes nothing.
    fn decrypt(
        &mut self,
        store: &ProfileStore,
        envelope: &Envelope,
    ) -> Result<Result<Vec<u8>, CryptoError>, StoreError> {
        let first = match Self::decrypt_one(&mut self.skipped, store, &mut self.current, envelope)? {
            Ok(plaintext) => return Ok(Ok(plaintext)),
            Err(e) => e,
        };
        let mut duplicate = first == CryptoError::MessageKeyGone;
        for index in 0..self.previous.len() {
            let mut session = match Session::from_snapshot(self.previous[index].clone()) {
                Ok(s) => s,
                Err(e) => return Ok(Err(e)),
            };
            match Self::decrypt_one(&mut self.skipped, store, &mut session, envelope)? {
                Ok(plaintext) => {
                    self.previous.remove(index);
                    self.replace_current(store, session)?;
                    return Ok(Ok(plaintext));
                }
                Err(CryptoError::MessageKeyGone) => duplicate = true,
                Err(_) => {}
            }
        }
        Ok(Err(if duplicate { CryptoError::MessageKeyGone } else { first }))
    }

    fn state(&self) -> SessionState {
        SessionState { current: self.current.snapshot(), previous: self.previous.clone() }
    }
}

/// Encrypts automatic replies to `contact` on the working session, numbered
/// from `first_seq`; each carries the session state after it. A reply that
/// cannot be encrypted (a catalog too large for one envelope) is left out,
/// with a warning. Returns the replies and, if the away message is among
/// them, the away period it answers.
fn seal_replies<R: CryptoRng + ?Sized>(
    contact: &ContactId,
    first_seq: u64,
    replies: Vec<(Content, Option<u64>)>,
    working: &mut Working,
    now_ms: u64,
    rng: &mut R,
) -> (Vec<OutgoingMessage>, Option<u64>) {
    let mut sealed = Vec::with_capacity(replies.len());
    let mut away_for = None;
    for (content, away) in replies {
        let seq = first_seq + sealed.len() as u64;
        let body = Message { v: crate::content::CONTENT_VERSION, seq, sent_at_ms: now_ms, content }.encode();
        let envelope = match working.current.encrypt(&body, rng) {
            Ok(envelope) => envelope,
            Err(e) => {
                tracing::warn!(error = %e, "an automatic reply does not fit an envelope; left out");
                continue;
            }
        };
        let message = MessageRecord {
            id: envelope.message_id().0,
            direction: Direction::Outgoing,
            sent_at_ms: now_ms,
            received_at_ms: None,
            status: MessageStatus::Queued,
            body,
        };
        sealed.push(OutgoingMessage {
            contact: *contact,
            session: Some(working.state()),
            message,
            envelope: envelope.encode(),
        });
        away_for = away_for.or(away);
    }
    (sealed, away_for)
}

/// A contact name: 1 to 64 characters, not only spaces.
pub fn check_contact_name(name: &str) -> Result<(), StoreError> {
    if name.trim().is_empty() || name.chars().count() > 64 {
        return Err(StoreError::Invalid("a contact name needs 1 to 64 characters".into()));
    }
    Ok(())
}

/// True if an acknowledgement reports an envelope that should not have been
/// sent (it costs the sender's failure budget).
fn is_failure(ack: &Ack) -> bool {
    matches!(
        ack,
        Ack::Rejected(
            RejectReason::Malformed
                | RejectReason::NoSession
                | RejectReason::Undecryptable
                | RejectReason::UnknownPrekey
                | RejectReason::IdentityMismatch
                | RejectReason::KeyGone
                | RejectReason::BadContent
        )
    )
}

/// The engine of one profile.
pub struct Engine {
    store: ProfileStore,
    identity: IdentityKeyPair,
    config: EngineConfig,
    /// Outbox entries handed to the network, and since when. One whose
    /// outcome never came back (an action lost with an error) counts as
    /// settled after [`IN_FLIGHT_MAX_MS`].
    in_flight: HashMap<[u8; 16], u64>,
    /// The outbox without its envelopes: what is queued for whom and when it
    /// is due. Every outbox change in the store goes through it too.
    outbox: OutboxIndex,
    /// Outbox entries a mailbox holds (mirrors the store's `deposited`).
    deposited: HashSet<[u8; 16]>,
    /// Contacts with a deposit under way, since when (one at a time per
    /// contact: the next batch goes when it ends, or when its result has
    /// not come back after [`IN_FLIGHT_MAX_MS`]).
    depositing: HashMap<ContactId, u64>,
    /// Per contact: no deposit before this time, and the mailbox to try.
    deposit_backoff: HashMap<ContactId, (u64, usize)>,
    /// Our own mailboxes (mirrors the store; read on every send).
    own_mailboxes: Vec<OwnMailbox>,
    /// What each peer may still cost (per envelope; survives reconnects).
    budgets: Budgets<PeerKey>,
    /// Pending strangers: message requests and unanswered new customers
    /// (mirrors the store's bounded list).
    strangers: HashSet<ContactId>,
    /// Pending strangers dropped at the limit since the profile was created.
    strangers_dropped: u64,
    /// Budgets of the one-time prekeys this profile hands out.
    prekey_budgets: PrekeyBudgets,
    /// When each contact without a session was last asked for prekeys.
    prekeys_asked: HashMap<ContactId, u64>,
    /// When the prekey schedule is next checked.
    next_prekey_maintenance_ms: u64,
    /// Contacts whose first messages wait unencrypted for their prekeys,
    /// and until when at the latest.
    sealing: HashMap<ContactId, u64>,
    /// Requests per peer: paced to what the receiver answers, a window in
    /// flight ([`crate::pace`]).
    pacer: Pacer,
    /// Inside a group of work ([`Engine::defer_flushes`]): the peers whose
    /// outbox is flushed once, at the group's end, and whether each was
    /// found reachable.
    deferred: Option<HashMap<PeerKey, bool>>,
    /// Whether the work running now may stage its sends ([`Engine::stage_sends`]).
    staging: bool,
    /// Sends staged for one transaction ([`Engine::stage_sends`]).
    staged: Staged,
    /// [`GuardStatus::resent_messages`].
    resent: u64,
}

/// Messages encrypted by consecutive sends of a group of work and not yet
/// committed, with what the next send to the same contact must start from.
#[derive(Default)]
struct Staged {
    /// In order; committed together by [`Engine::commit_staged`].
    batch: Vec<OutgoingMessage>,
    /// Per contact: the session state after its last staged message.
    sessions: HashMap<ContactId, SessionState>,
    /// Per contact: the sequence number its next message takes.
    next_seq: HashMap<ContactId, u64>,
}

/// What the bounds against strangers did (for `node info`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct GuardStatus {
    /// Message requests and unanswered new customers now.
    pub pending_strangers: usize,
    /// The most kept; beyond it the oldest are dropped.
    pub stranger_limit: usize,
    /// Pending strangers dropped at the limit since the profile was created.
    pub strangers_dropped: u64,
    /// Envelopes refused as `busy` (over a budget) since the profile started.
    pub refused_envelopes: u64,
    /// Messages encrypted again since the profile started because their
    /// recipient no longer had the key (it reported it gone). A recipient
    /// that restored a backup, or a skipped key evicted, explains a few;
    /// between two healthy nodes it stays 0, and a ratchet key used twice
    /// would show here (the recipient can decrypt only the first use).
    pub resent_messages: u64,
}

/// How many of envelopes of these lengths, in order, fit in one request
/// ([`crate::wire::MAX_REQUEST_BYTES`]); at least one (any one envelope
/// fits).
fn fitting(lengths: impl Iterator<Item = usize>) -> usize {
    let mut total = 2;
    let mut n = 0;
    for len in lengths {
        total += 4 + len;
        if n > 0 && total > crate::wire::MAX_REQUEST_BYTES {
            break;
        }
        n += 1;
    }
    n
}

fn hex(bytes: &[u8]) -> String {
    kabar_crypto::hex::encode(bytes)
}

impl Engine {
    /// An engine over an opened profile store.
    pub fn new(store: ProfileStore, config: EngineConfig) -> Result<Self, EngineError> {
        let identity = store.identity()?;
        let outbox = OutboxIndex::new(&store.outbox()?);
        let deposited = store.deposited()?.into_iter().collect();
        let own_mailboxes = store.mailboxes()?;
        let strangers = store.strangers()?.into_iter().map(|(c, _)| c).collect();
        let strangers_dropped = store.strangers_evicted()?;
        Ok(Engine {
            store,
            identity,
            config,
            in_flight: HashMap::new(),
            outbox,
            deposited,
            depositing: HashMap::new(),
            deposit_backoff: HashMap::new(),
            own_mailboxes,
            budgets: Budgets::new(0),
            strangers,
            strangers_dropped,
            prekey_budgets: PrekeyBudgets::new(0),
            prekeys_asked: HashMap::new(),
            next_prekey_maintenance_ms: 0,
            sealing: HashMap::new(),
            pacer: Pacer::new(config.requests_per_second, config.request_burst),
            deferred: None,
            staging: false,
            staged: Staged::default(),
            resent: 0,
        })
    }

    // ---- prekeys ------------------------------------------------------------

    /// The prekey schedule, at most once per [`prekeys::MAINTENANCE_EVERY_MS`]
    /// (call it at start and from the tick): a new signed prekey every
    /// [`prekeys::SIGNED_PREKEY_PERIOD_S`], replaced ones deleted
    /// [`prekeys::SIGNED_PREKEY_GRACE_S`] after their successor became
    /// current, and one-time prekeys refilled.
    pub fn maintain_prekeys<R: CryptoRng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) -> Result<(), EngineError> {
        if now_ms < self.next_prekey_maintenance_ms {
            return Ok(());
        }
        self.next_prekey_maintenance_ms = now_ms + prekeys::MAINTENANCE_EVERY_MS;
        let now = now_ms / 1000;
        let period = prekeys::SIGNED_PREKEY_PERIOD_S;
        if let Some(spk) = self.store.maintain_signed_prekeys(now, period, prekeys::SIGNED_PREKEY_GRACE_S, rng)? {
            tracing::info!(profile = %self.store.name(), id = spk.id(), "signed prekey rotated");
        }
        if self.store.offerable_one_time_prekeys()? < prekeys::ONE_TIME_PREKEY_LOW {
            self.store.replenish_offerable_one_time_prekeys(prekeys::ONE_TIME_PREKEY_TARGET, rng)?;
        }
        Ok(())
    }

    /// Answers a `/kabar/prekey/1` request from `requester`: the current
    /// signed prekey and, within the budgets and while the supply lasts, a
    /// one-time prekey marked handed out (durably) before this returns. A
    /// blocked contact gets [`EngineError::Blocked`] (no answer).
    pub fn serve_prekeys(&mut self, requester: &PeerKey, now_ms: u64) -> Result<Vec<u8>, EngineError> {
        let known = self.store.contact_by_peer_key(requester)?;
        if let Some((_, c)) = &known
            && c.blocked
        {
            return Err(EngineError::Blocked(c.display_name.clone()));
        }
        let is_contact = known.is_some_and(|(id, c)| !c.request && !self.strangers.contains(&id));
        let one_time_prekey = if self.prekey_budgets.admit(requester, is_contact, now_ms) {
            self.store.hand_out_one_time_prekey(prekeys::MAX_ISSUED_ONE_TIME_PREKEYS)?
        } else {
            None
        };
        let response = PrekeyResponse {
            identity: self.identity.public(),
            signed_prekey: self.store.current_signed_prekey()?.public(),
            one_time_prekey,
        };
        Ok(response.encode())
    }

    /// `peer` answered [`Action::FetchPrekeys`]. A verified answer from the
    /// contact's own identity updates its signed prekey (if newer) and keeps
    /// its one-time prekey for the next session start; anything else is
    /// ignored (an identity changes only with a prekey message or a card).
    pub fn on_prekeys<R: CryptoRng + ?Sized>(
        &mut self,
        peer: &PeerKey,
        bytes: &[u8],
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        let response = PrekeyResponse::decode(bytes)?;
        let contact_id = self.store.contact_id_for_key(peer);
        let Some(contact) = self.store.contact(&contact_id)? else { return Ok(Vec::new()) };
        if response.identity != contact.identity {
            tracing::debug!(profile = %self.store.name(), "prekeys from another identity than the contact's; ignored");
            return Ok(Vec::new());
        }
        self.store.update_contact(&contact_id, |c| {
            if c.signed_prekey.is_none_or(|old| old.created_at <= response.signed_prekey.created_at) {
                c.signed_prekey = Some(response.signed_prekey);
            }
            if response.one_time_prekey.is_some() {
                c.one_time_prekey = response.one_time_prekey;
            }
        })?;
        // What waited unencrypted for these prekeys (first messages, or
        // those of a session start the contact refused) goes now.
        self.seal(&contact_id, now_ms, rng)
    }

    /// [`Action::FetchPrekeys`] for a contact with no session and no
    /// one-time prekey in hand, at most once per
    /// [`prekeys::FETCH_EVERY_MS`].
    fn fetch_prekeys(&mut self, peer: &PeerKey, now_ms: u64) -> Result<Option<Action>, EngineError> {
        let contact_id = self.store.contact_id_for_key(peer);
        let Some(contact) = self.store.contact(&contact_id)? else { return Ok(None) };
        // The cheap checks first: this runs on every connection event.
        if contact.blocked
            || contact.one_time_prekey.is_some()
            || self.prekeys_asked.get(&contact_id).is_some_and(|at| now_ms < at + prekeys::FETCH_EVERY_MS)
            || self.store.session(&contact_id)?.is_some()
        {
            return Ok(None);
        }
        if self.prekeys_asked.len() >= 4_096 {
            self.prekeys_asked.retain(|_, at| now_ms < *at + prekeys::FETCH_EVERY_MS);
        }
        self.prekeys_asked.insert(contact_id, now_ms);
        Ok(Some(Action::FetchPrekeys { peer: *peer, addresses: contact.addresses }))
    }

    /// The profile's store.
    pub fn store(&self) -> &ProfileStore {
        &self.store
    }

    /// The profile's own mailboxes.
    pub fn mailboxes(&self) -> &[OwnMailbox] {
        &self.own_mailboxes
    }

    /// The profile's Ed25519 key (its PeerId).
    pub fn peer_key(&self) -> PeerKey {
        self.identity.public().signing
    }

    fn profile(&self) -> String {
        self.store.name().to_string()
    }

    fn contact_or_err(&self, id: &ContactId) -> Result<Contact, EngineError> {
        self.store.contact(id)?.ok_or_else(|| StoreError::NotFound("contact".into()).into())
    }

    // ---- send ---------------------------------------------------------------

    /// Expands a business's `/shortcut` into its quick reply.
    fn expand(&self, content: Content) -> Result<Content, EngineError> {
        if self.store.kind() != ProfileKind::Business {
            return Ok(content);
        }
        match content {
            Content::Text { text, automatic: None } if text.starts_with('/') && !text.contains(char::is_whitespace) => {
                let shortcut = &text[1..];
                match self.store.quick_reply(shortcut)? {
                    Some(reply) => Ok(Content::text(reply.text)),
                    None => Err(EngineError::UnknownShortcut(shortcut.to_string())),
                }
            }
            other => Ok(other),
        }
    }

    /// Encrypts, commits and queues `content` for `contact`; returns the
    /// message id and the actions (a transmission).
    pub fn send<R: CryptoRng + ?Sized>(
        &mut self,
        contact: &ContactId,
        content: Content,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<([u8; 16], Vec<Action>), EngineError> {
        let (ids, actions) = self.send_many(contact, vec![content], now_ms, rng)?;
        let id = ids.first().copied().ok_or_else(|| StoreError::NotFound("queued message".into()))?;
        Ok((id, actions))
    }

    /// Encrypts and commits one message without transmitting it.
    fn queue<R: CryptoRng + ?Sized>(
        &mut self,
        contact_id: &ContactId,
        content: Content,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<[u8; 16], EngineError> {
        let ids = self.queue_many(contact_id, vec![content], now_ms, rng)?;
        ids.first().copied().ok_or_else(|| StoreError::NotFound("queued message".into()).into())
    }

    /// Encrypts several messages to one contact and commits them all in ONE
    /// durable transaction (group commit: one fsync for the batch). Each
    /// message's session state is the one after encrypting it.
    fn queue_many<R: CryptoRng + ?Sized>(
        &mut self,
        contact_id: &ContactId,
        contents: Vec<Content>,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<[u8; 16]>, EngineError> {
        let contact = self.contact_or_err(contact_id)?;
        if contact.blocked {
            return Err(EngineError::Blocked(contact.display_name));
        }
        let stored = match self.staged.sessions.get(contact_id) {
            Some(state) => Some(state.clone()),
            None => self.store.session(contact_id)?,
        };
        let waits = self.waits_for_prekeys(contact_id, &contact, stored.is_some(), now_ms)?;
        // Staged only under an existing session: a new one (a prekey used
        // up) or messages kept unencrypted take the ordinary path, after
        // what is staged.
        let stage = self.staging && self.deferred.is_some() && stored.is_some() && !waits;
        if !stage {
            self.commit_staged()?;
        }
        let (mut state, mut session) = if waits {
            (None, None)
        } else {
            let (state, session) = self.sending_session(contact_id, &contact, stored, false, rng)?;
            (state, Some(session))
        };
        let first_seq = match self.staged.next_seq.get(contact_id) {
            Some(seq) => *seq,
            None => self.store.conversation(contact_id)?.next_seq,
        };
        let mut batch = Vec::with_capacity(contents.len());
        for (i, content) in contents.into_iter().enumerate() {
            let seq = first_seq + i as u64;
            let body = Message { v: crate::content::CONTENT_VERSION, seq, sent_at_ms: now_ms, content }.encode();
            let (id, envelope, snapshot) = match session.as_mut() {
                Some(session) => {
                    let envelope = session.encrypt(&body, rng)?;
                    let snapshot = match &state {
                        Some(state) => SessionState { current: session.snapshot(), previous: state.previous.clone() },
                        None => SessionState::new(session.snapshot()),
                    };
                    (envelope.message_id().0, envelope.encode(), Some(snapshot))
                }
                // Kept unencrypted under a random id (the one the user
                // sees) until the prekeys arrive.
                None => {
                    let mut id = [0u8; 16];
                    rng.fill_bytes(&mut id);
                    (id, Vec::new(), None)
                }
            };
            let message = MessageRecord {
                id,
                direction: Direction::Outgoing,
                sent_at_ms: now_ms,
                received_at_ms: None,
                status: MessageStatus::Queued,
                body,
            };
            batch.push(OutgoingMessage { contact: *contact_id, session: snapshot, message, envelope });
        }
        state.take();
        let ids = batch.iter().map(|m| m.message.id).collect();
        if stage {
            if let Some(last) = batch.last().and_then(|m| m.session.clone()) {
                self.staged.sessions.insert(*contact_id, last);
            }
            self.staged.next_seq.insert(*contact_id, first_seq + batch.len() as u64);
            self.staged.batch.append(&mut batch);
        } else {
            self.commit_queued(&batch)?;
        }
        Ok(ids)
    }

    /// Commits outgoing messages in one transaction and adds them to the
    /// outbox index, queued (and due) when the first of them was written,
    /// in the index as in the store.
    fn commit_queued(&mut self, batch: &[OutgoingMessage]) -> Result<(), EngineError> {
        let Some(now_ms) = batch.first().map(|m| m.message.sent_at_ms) else { return Ok(()) };
        let seqs = self.store.commit_outgoing(batch, now_ms)?;
        for (item, seq) in batch.iter().zip(seqs) {
            let queued = Queued {
                id: item.message.id,
                seq,
                queued_at_ms: now_ms,
                attempts: 0,
                next_attempt_at_ms: now_ms,
                shown: item.message.id,
                unsealed: item.envelope.is_empty(),
            };
            self.outbox.insert(item.contact, queued);
        }
        Ok(())
    }

    /// Whether the work that runs next may stage its sends: a `message.send`
    /// may (the worker says so), anything else may not. While staging is on
    /// inside a group of work ([`Engine::defer_flushes`]), a send under an
    /// existing session encrypts its message with the state the contact's
    /// previous staged send left (kept here, one owner as ever) and keeps it
    /// in memory instead of committing a transaction of its own; the staged
    /// messages of consecutive sends are committed together, in ONE
    /// transaction, as soon as anything else is to run: turning staging off
    /// commits them (so the next piece of work reads them from the store),
    /// and so does [`Engine::flush_deferred`], before anything leaves. Like
    /// every commit of the group, it is durable only with the group's end;
    /// a failed commit is the group's failure (the worker drops every result
    /// of the group, those of the staged sends too).
    pub fn stage_sends(&mut self, on: bool) -> Result<(), EngineError> {
        if !on {
            self.commit_staged()?;
        }
        self.staging = on;
        Ok(())
    }

    /// Commits the staged messages ([`Engine::stage_sends`]), if any.
    fn commit_staged(&mut self) -> Result<(), EngineError> {
        let staged = std::mem::take(&mut self.staged);
        self.commit_queued(&staged.batch)
    }

    /// Messages staged and not yet committed ([`Engine::stage_sends`]).
    pub fn staged(&self) -> usize {
        self.staged.batch.len()
    }

    /// True if messages to `contact` now are kept unencrypted until its
    /// prekeys arrive (at most [`EngineConfig::prekey_wait_ms`]): it has no
    /// session and we hold no one-time prekey of it, and either we are
    /// already waiting, or an answer to a request may still come, or we may
    /// ask now (the next flush asks). Asked lately with nothing usable: no.
    fn waits_for_prekeys(
        &mut self,
        contact_id: &ContactId,
        contact: &Contact,
        has_session: bool,
        now_ms: u64,
    ) -> Result<bool, EngineError> {
        let wait = self.config.prekey_wait_ms;
        if contact.signed_prekey.is_some() && self.outbox.of(contact_id).iter().any(|q| q.unsealed) {
            // Older messages still wait unencrypted: new ones go after them.
            self.sealing.entry(*contact_id).or_insert(now_ms);
            return Ok(true);
        }
        if wait == 0 || contact.one_time_prekey.is_some() || contact.signed_prekey.is_none() {
            return Ok(false);
        }
        if self.sealing.contains_key(contact_id) {
            return Ok(true);
        }
        if has_session {
            return Ok(false);
        }
        let deadline = match self.prekeys_asked.get(contact_id) {
            Some(at) if now_ms < at + wait => at + wait,
            Some(at) if now_ms < at + prekeys::FETCH_EVERY_MS => return Ok(false),
            _ => now_ms + wait,
        };
        self.sealing.insert(*contact_id, deadline);
        Ok(true)
    }

    /// Encrypts the messages to `contact_id` kept unencrypted while waiting
    /// for its prekeys (with a one-time prekey if one arrived), and
    /// transmits them.
    fn seal<R: CryptoRng + ?Sized>(
        &mut self,
        contact_id: &ContactId,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        self.sealing.remove(contact_id);
        let ids: Vec<[u8; 16]> = self.outbox.of(contact_id).iter().filter(|q| q.unsealed).map(|q| q.id).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut actions = match self.encrypt_queued(contact_id, &ids, false, now_ms, rng) {
            Ok(actions) => actions,
            Err(e) => {
                // Tried again at the next deadline (the tick), in order.
                self.sealing.insert(*contact_id, now_ms + self.config.prekey_wait_ms.max(prekeys::PREKEY_WAIT_MS));
                return Err(e);
            }
        };
        let peer = self.contact_or_err(contact_id)?.identity.signing;
        actions.extend(self.flush_peer(&peer, now_ms)?);
        Ok(actions)
    }

    /// A `/kabar/prekey/1` request to `peer` failed (unreachable, no
    /// answer): what waited for its prekeys is encrypted without them. If
    /// the peer could not be reached at all (`unreachable`: the request
    /// never got to it), it is asked again the next time it is reachable
    /// rather than after [`prekeys::FETCH_EVERY_MS`]; a peer that was
    /// reached and did not answer waits the full period.
    pub fn on_prekeys_failed<R: CryptoRng + ?Sized>(
        &mut self,
        peer: &PeerKey,
        unreachable: bool,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        let contact_id = self.store.contact_id_for_key(peer);
        if unreachable {
            self.prekeys_asked.remove(&contact_id);
        }
        self.seal(&contact_id, now_ms, rng)
    }

    /// The session to encrypt to `contact` with, given its stored `state`
    /// (read once by the caller), and that state: the current session, or a
    /// new one started from the contact's prekeys. A one-time prekey fetched
    /// online is forgotten (durably) before its first use, so it is never
    /// used twice; without one, X3DH runs on the signed prekey alone.
    /// `fresh`: a new session even if there is one (the current one becomes
    /// the newest previous, so what is in flight under it still decrypts),
    /// when the contact has a signed prekey.
    fn sending_session<R: CryptoRng + ?Sized>(
        &mut self,
        contact_id: &ContactId,
        contact: &Contact,
        mut state: Option<SessionState>,
        fresh: bool,
        rng: &mut R,
    ) -> Result<(Option<SessionState>, Session), EngineError> {
        if fresh && contact.signed_prekey.is_some() {
            let session = self.initiate_session(contact_id, contact, rng)?;
            if let Some(state) = state.as_mut() {
                state.replace_current(session.snapshot());
            }
            return Ok((state, session));
        }
        let session = match &state {
            Some(state) => Session::from_snapshot(state.current.clone())?,
            None => self.initiate_session(contact_id, contact, rng)?,
        };
        Ok((state, session))
    }

    /// A new initiator session from the contact's prekeys.
    fn initiate_session<R: CryptoRng + ?Sized>(
        &mut self,
        contact_id: &ContactId,
        contact: &Contact,
        rng: &mut R,
    ) -> Result<Session, EngineError> {
        let spk = contact.signed_prekey.ok_or_else(|| EngineError::NoPrekey(contact.display_name.clone()))?;
        let one_time_prekey = contact.one_time_prekey;
        if one_time_prekey.is_some() {
            self.store.update_contact(contact_id, |c| c.one_time_prekey = None)?;
        }
        let bundle = kabar_crypto::PrekeyBundle { identity: contact.identity, signed_prekey: spk, one_time_prekey };
        Ok(Session::initiate(&self.identity, &bundle, rng)?)
    }

    /// Encrypts queued messages to `contact_id` again under the current
    /// session (a new one if there is none), because the recipient reported
    /// their keys gone: a `key_gone` acknowledgement or a receipt's `retry`
    /// list. Only entries still in the outbox for that contact count. The
    /// message keeps the id the user knows; its new envelope gets a new
    /// wire id. A message already encrypted again [`MAX_RESENDS`] times, or
    /// to a blocked contact, fails instead, with [`NodeEvent::ResendFailed`].
    fn resend<R: CryptoRng + ?Sized>(
        &mut self,
        contact_id: &ContactId,
        ids: &[[u8; 16]],
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        let mut actions = self.encrypt_queued(contact_id, ids, true, now_ms, rng)?;
        let peer = self.contact_or_err(contact_id)?.identity.signing;
        actions.extend(self.flush_peer(&peer, now_ms)?);
        Ok(actions)
    }

    /// Encrypts queued messages (again) under the current session, or a new
    /// one, in one transaction (the caller flushes; the new entries are due
    /// at once). `resend`: the recipient
    /// reported their keys gone (counted, bounded by [`MAX_RESENDS`]);
    /// otherwise a first encryption (messages kept unencrypted, version 1
    /// envelopes of a migrated store), not counted.
    fn encrypt_queued<R: CryptoRng + ?Sized>(
        &mut self,
        contact_id: &ContactId,
        ids: &[[u8; 16]],
        resend: bool,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        let queued: Vec<[u8; 16]> =
            ids.iter().filter(|id| self.outbox.of(contact_id).iter().any(|q| &q.id == *id)).copied().collect();
        if queued.is_empty() {
            return Ok(Vec::new());
        }
        let contact = self.contact_or_err(contact_id)?;
        let mut actions = Vec::new();
        let mut session: Option<(Option<SessionState>, Session)> = None;
        let mut items = Vec::new();
        let entries = self.store.outbox_entries(&queued)?;
        // A message its recipient could not decrypt even once encrypted
        // again under the current session (our state was rolled back behind
        // the recipient's: a restored backup) goes under a new session.
        let fresh = resend && entries.iter().any(|e| e.resends >= 1);
        for entry in entries {
            let shown = entry.shown_id();
            let record = self.store.message(&entry.message_id)?.map(|(_, _, r)| r);
            let impossible = if contact.blocked {
                Some("the contact is blocked")
            } else if resend && entry.resends >= MAX_RESENDS {
                Some("the recipient still cannot decrypt it after it was encrypted again")
            } else if record.is_none() {
                Some("the message is no longer stored")
            } else {
                None
            };
            if let Some(reason) = impossible {
                tracing::info!(profile = %self.store.name(), reason, "a message could not be sent again");
                self.store.fail_message(&entry.message_id)?;
                self.forget_queued(&entry.message_id);
                actions.push(Action::Notify(NodeEvent::ResendFailed {
                    profile: self.profile(),
                    contact: contact.display_name.clone(),
                    message_id: hex(&shown),
                    reason: reason.to_string(),
                }));
                actions.push(self.status_event(&shown, MessageStatus::Failed));
                continue;
            }
            let Some(record) = record else { continue };
            if session.is_none() {
                let stored = self.store.session(contact_id)?;
                session = Some(self.sending_session(contact_id, &contact, stored, fresh, rng)?);
            }
            let Some((_, current)) = session.as_mut() else { continue };
            let envelope = current.encrypt(&record.body, rng)?;
            items.push((entry.message_id, envelope.message_id().0, envelope.encode()));
        }
        if let Some((state, current)) = session
            && !items.is_empty()
        {
            let new_state = match state {
                Some(state) => SessionState { current: current.snapshot(), previous: state.previous },
                None => SessionState::new(current.snapshot()),
            };
            let fresh = self.store.reencrypt_outbox(&items, &new_state, resend, now_ms)?;
            if resend {
                self.resent += fresh.len() as u64;
            }
            tracing::debug!(profile = %self.store.name(), count = fresh.len(), resend, "queued messages encrypted");
            for (old, _, _) in &items {
                self.forget_queued(old);
            }
            for entry in &fresh {
                self.outbox.insert(*contact_id, Queued::from(entry));
            }
        }
        Ok(actions)
    }

    /// True while `id` was handed to the network less than
    /// [`IN_FLIGHT_MAX_MS`] ago and its outcome has not come back.
    fn is_in_flight(&self, id: &[u8; 16], now_ms: u64) -> bool {
        self.in_flight.get(id).is_some_and(|since| now_ms < since.saturating_add(IN_FLIGHT_MAX_MS))
    }

    /// Forgets an outbox entry in memory (the store already dropped it).
    fn forget_queued(&mut self, id: &[u8; 16]) {
        self.outbox.remove(id);
        self.deposited.remove(id);
        self.in_flight.remove(id);
    }

    /// Outbox entries still holding a version 1 envelope (a store migrated
    /// from protocol version 1), or none (kept unencrypted for prekeys when
    /// the node stopped), encrypted under a version 2 session. Call once at
    /// start.
    pub fn upgrade_outbox<R: CryptoRng + ?Sized>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        let all: Vec<[u8; 16]> = self.outbox.contacts().flat_map(|(_, l)| l.iter().map(|q| q.id)).collect();
        let mut old: HashMap<ContactId, Vec<[u8; 16]>> = HashMap::new();
        for entry in self.store.outbox_entries(&all)? {
            if entry.envelope.first() != Some(&kabar_crypto::envelope::ENVELOPE_VERSION) {
                old.entry(entry.contact).or_default().push(entry.message_id);
            }
        }
        let mut actions = Vec::new();
        for (contact, ids) in old {
            match self.encrypt_queued(&contact, &ids, false, now_ms, rng) {
                Ok(more) => actions.extend(more),
                Err(e) => {
                    tracing::warn!(profile = %self.store.name(), error = %e, "an old outbox entry could not be upgraded")
                }
            }
        }
        Ok(actions)
    }

    /// Like [`Engine::send`] for several texts to one contact, committed
    /// together (one durable transaction) and transmitted together.
    pub fn send_many<R: CryptoRng + ?Sized>(
        &mut self,
        contact: &ContactId,
        contents: Vec<Content>,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(Vec<[u8; 16]>, Vec<Action>), EngineError> {
        // Writing by hand settles a pending stranger.
        self.settle(contact)?;
        self.send_contents(contact, contents, now_ms, rng)
    }

    /// Commits and transmits contents to one contact (with a mailbox update
    /// first if it needs one), without settling it.
    fn send_contents<R: CryptoRng + ?Sized>(
        &mut self,
        contact: &ContactId,
        contents: Vec<Content>,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(Vec<[u8; 16]>, Vec<Action>), EngineError> {
        let mut expanded = Vec::with_capacity(contents.len() + 1);
        // A contact that has not heard of our current mailboxes hears of
        // them first, in the same commit.
        let update = self.mailbox_update_for(contact)?;
        if let Some((content, _)) = &update {
            expanded.push(content.clone());
        }
        for content in contents {
            let content = self.expand(content)?;
            content.check()?;
            expanded.push(content);
        }
        let mut ids = self.queue_many(contact, expanded, now_ms, rng)?;
        if let Some((_, hash)) = update {
            ids.remove(0);
            self.store.update_contact_mailboxes(contact, |m| m.told = hash)?;
        }
        let peer = self.contact_or_err(contact)?.identity.signing;
        Ok((ids, self.flush_peer(&peer, now_ms)?))
    }

    /// Transmits the outbox entries for `peer` that are not in flight (up to
    /// a batch), regardless of their retry time — except those a mailbox
    /// holds, which wait for their (slow) retry time unless the peer is
    /// known to be reachable ([`Engine::on_peer_reachable`]).
    pub fn flush_peer(&mut self, peer: &PeerKey, now_ms: u64) -> Result<Vec<Action>, EngineError> {
        self.flush(peer, now_ms, false)
    }

    fn flush(&mut self, peer: &PeerKey, now_ms: u64, reachable: bool) -> Result<Vec<Action>, EngineError> {
        if let Some(deferred) = &mut self.deferred {
            *deferred.entry(*peer).or_default() |= reachable;
            return Ok(Vec::new());
        }
        self.flush_now(peer, now_ms, reachable)
    }

    /// From now until [`Engine::flush_deferred`], flushing a peer's outbox
    /// only notes the peer: the worker runs a group of work (many sends,
    /// many answers) and then flushes each peer once, so what the group
    /// queued for one peer leaves in one request.
    pub fn defer_flushes(&mut self) {
        self.deferred.get_or_insert_with(HashMap::new);
    }

    /// Flushes the peers noted since [`Engine::defer_flushes`], and flushes
    /// at once again from now on.
    pub fn flush_deferred(&mut self, now_ms: u64) -> Result<Vec<Action>, EngineError> {
        self.stage_sends(false)?;
        let Some(peers) = self.deferred.take() else { return Ok(Vec::new()) };
        let mut actions = Vec::new();
        for (peer, reachable) in peers {
            actions.extend(self.flush_now(&peer, now_ms, reachable)?);
        }
        Ok(actions)
    }

    fn flush_now(&mut self, peer: &PeerKey, now_ms: u64, reachable: bool) -> Result<Vec<Action>, EngineError> {
        let contact_id = self.store.contact_id_for_key(peer);
        let mut actions = Vec::new();
        if self.sealing.contains_key(&contact_id) {
            actions.extend(self.fetch_prekeys(peer, now_ms)?);
        }
        let chosen: Vec<Queued> = self
            .outbox
            .of(&contact_id)
            .iter()
            .filter(|e| !e.unsealed && !self.is_in_flight(&e.id, now_ms))
            .filter(|e| reachable || e.next_attempt_at_ms <= now_ms || !self.deposited.contains(&e.id))
            .take(self.config.max_batch)
            .copied()
            .collect();
        if chosen.is_empty() {
            return Ok(actions);
        }
        match self.pacer.gate(peer, now_ms) {
            Gate::Go => {}
            // They wait queued, and leave together in the next request.
            Gate::At(at_ms) => {
                actions.push(Action::FlushAt { peer: *peer, at_ms });
                return Ok(actions);
            }
            // An answer coming back flushes again (`on_acks`), a failure
            // leaves them to their retry time.
            Gate::WindowFull => return Ok(actions),
        }
        let mut ids: Vec<[u8; 16]> = chosen.iter().map(|e| e.id).collect();
        let mut entries = self.store.outbox_entries(&ids)?;
        if entries.len() != ids.len() {
            // The index and the store disagree (they never should): trust
            // the store for these entries.
            tracing::warn!(profile = %self.store.name(), "outbox index out of step with the store");
            for id in &ids {
                if !entries.iter().any(|e| &e.message_id == id) {
                    self.outbox.remove(id);
                }
            }
            return Ok(actions);
        }
        // One request holds at most MAX_REQUEST_BYTES: the rest leave in
        // the next (large messages, a catalog, fill a request long before
        // the batch limit).
        let fits = fitting(entries.iter().map(|e| e.envelope.len()));
        entries.truncate(fits);
        ids.truncate(fits);
        let chosen = &chosen[..fits];
        let contact = self.contact_or_err(&contact_id)?;
        let attempts = chosen.iter().map(|e| e.attempts).max().unwrap_or(0);
        let mut delay = self.backoff(attempts, &ids[0]);
        if ids.iter().all(|id| self.deposited.contains(id)) {
            // A mailbox holds them all: direct retries slow down, never stop.
            delay = delay.max(STORED_RETRY_MS);
        }
        let sent = self.store.record_attempts(&self.attempts_after(&ids), now_ms + delay)?;
        self.outbox.attempted(&ids, now_ms + delay);
        self.in_flight.extend(ids.iter().map(|id| (*id, now_ms)));
        self.pacer.sent(peer, ids[0], now_ms);
        actions.extend(sent.iter().map(|id| self.status_event(id, MessageStatus::Sent)));
        actions.push(Action::Transmit {
            peer: *peer,
            addresses: contact.addresses,
            message_ids: ids,
            envelopes: entries.into_iter().map(|e| e.envelope).collect(),
        });
        Ok(actions)
    }

    /// Each of these outbox entries with its attempts once one more is
    /// made (the count [`ProfileStore::record_attempts`] takes; the store's
    /// own lags by the first attempt, which it does not write).
    fn attempts_after(&self, ids: &[[u8; 16]]) -> Vec<([u8; 16], u32)> {
        ids.iter().filter_map(|id| self.outbox.get(id).map(|q| (*id, q.attempts.saturating_add(1)))).collect()
    }

    /// Capped exponential backoff with ±20 % jitter (deterministic per
    /// message, so tests are repeatable).
    fn backoff(&self, attempts: u32, id: &[u8; 16]) -> u64 {
        let base = self.config.retry_base_ms.saturating_mul(1u64 << attempts.min(20)).min(self.config.retry_max_ms);
        let jitter = u64::from(u16::from_be_bytes([id[0], id[1]])) % 401; // 0..=400 per mille
        base * (800 + jitter) / 1000
    }

    /// The recipient answered a [`Action::Transmit`].
    pub fn on_acks<R: CryptoRng + ?Sized>(
        &mut self,
        peer: &PeerKey,
        message_ids: &[[u8; 16]],
        acks: &[Ack],
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        let mut delivered = Vec::new();
        let mut key_gone = Vec::new();
        let mut unknown_prekey = Vec::new();
        let mut actions = Vec::new();
        // All of them first: an error below must not leave some in flight
        // for ever (never retried nor expired).
        for id in message_ids {
            self.in_flight.remove(id);
        }
        self.pacer.settled(peer, message_ids);
        for (i, id) in message_ids.iter().enumerate() {
            match acks.get(i) {
                Some(Ack::Accepted | Ack::Duplicate) => delivered.push(*id),
                // The recipient cannot decrypt it (its key is gone, or the
                // sessions went out of step: our state was restored from a
                // backup): encrypted again, the second time under a new
                // session, at most MAX_RESENDS times.
                Some(Ack::Rejected(RejectReason::KeyGone | RejectReason::Undecryptable)) => key_gone.push(*id),
                Some(Ack::Rejected(RejectReason::UnknownPrekey)) => unknown_prekey.push(*id),
                Some(Ack::Rejected(reason)) if !reason.is_transient() => {
                    tracing::warn!(profile = %self.store.name(), ?reason, "message rejected by recipient");
                    let shown = self.shown_id(id);
                    self.store.fail_message(id)?;
                    self.outbox.remove(id);
                    actions.push(self.status_event(&shown, MessageStatus::Failed));
                }
                // Transient rejection or a missing ack: retried later.
                _ => {}
            }
        }
        let shown: Vec<[u8; 16]> = delivered.iter().map(|id| self.shown_id(id)).collect();
        self.store.acknowledge(&delivered)?;
        for id in &delivered {
            self.deposited.remove(id);
            self.outbox.remove(id);
        }
        actions.extend(shown.iter().map(|id| self.status_event(id, MessageStatus::Delivered)));
        if !key_gone.is_empty() {
            let contact_id = self.store.contact_id_for_key(peer);
            actions.extend(self.resend(&contact_id, &key_gone, now_ms, rng)?);
        }
        if !unknown_prekey.is_empty() {
            actions.extend(self.on_stale_prekey(peer, &unknown_prekey, now_ms)?);
        }
        actions.extend(self.flush_peer(peer, now_ms)?);
        Ok(actions)
    }

    /// The contact refused our session start as `unknown_prekey`: the signed
    /// prekey we used is gone (our card was older than its grace). If it
    /// never answered that session, the session is dropped and its current
    /// prekeys fetched; when they arrive ([`Engine::on_prekeys`]) what is
    /// queued is encrypted again under a new session. The queued envelopes
    /// stay until then (the refusal is transient).
    fn on_stale_prekey(
        &mut self,
        peer: &PeerKey,
        refused: &[[u8; 16]],
        now_ms: u64,
    ) -> Result<Vec<Action>, EngineError> {
        let contact_id = self.store.contact_id_for_key(peer);
        let Some(state) = self.store.session(&contact_id)? else { return Ok(Vec::new()) };
        let current = Session::from_snapshot(state.current)?;
        // Only a refusal of the session start we are still waiting on
        // (same base key): an older session's refusal changes nothing.
        let Some(pending) = current.pending_prekey() else { return Ok(Vec::new()) };
        let ours = self.store.outbox_entries(refused)?.iter().any(|e| {
            Envelope::decode(&e.envelope)
                .ok()
                .and_then(|env| env.prekey)
                .is_some_and(|h| h.base_key == pending.base_key)
        });
        if !ours {
            return Ok(Vec::new());
        }
        tracing::info!(profile = %self.store.name(), "a session start was refused (unknown prekey); fetching the contact's prekeys");
        self.store.drop_session(&contact_id)?;
        // A one-time prekey we hold may be the one it no longer has.
        self.store.update_contact(&contact_id, |c| c.one_time_prekey = None)?;
        // Everything encrypted under the refused session waits, unencrypted,
        // for the new one.
        let sealed: Vec<[u8; 16]> = self.outbox.of(&contact_id).iter().filter(|q| !q.unsealed).map(|q| q.id).collect();
        for id in self.store.unseal_outbox(&sealed)? {
            self.in_flight.remove(&id);
            self.deposited.remove(&id);
            self.outbox.set_unsealed(&id);
        }
        self.sealing.insert(contact_id, now_ms + self.config.prekey_wait_ms);
        self.prekeys_asked.remove(&contact_id);
        Ok(self.fetch_prekeys(peer, now_ms)?.into_iter().collect())
    }

    /// The id the user knows a queued message by (its wire id unless it was
    /// encrypted again).
    fn shown_id(&self, id: &[u8; 16]) -> [u8; 16] {
        self.outbox.get(id).map_or(*id, |q| q.shown)
    }

    /// A status change of the message queued as `id` (reported under the id
    /// the user knows).
    fn status_event(&self, id: &[u8; 16], status: MessageStatus) -> Action {
        let shown = self.shown_id(id);
        Action::Notify(NodeEvent::StatusChanged { profile: self.profile(), message_id: hex(&shown), status })
    }

    /// A transmission failed (dial failure on every known address, timeout,
    /// connection closed): the messages stay in the outbox and are retried
    /// after their backoff. The recipient counts as unreachable: the ones no
    /// mailbox holds yet go to its mailbox, if it has one
    /// ([`Action::Deposit`]).
    pub fn on_transmit_failed(
        &mut self,
        peer: &PeerKey,
        message_ids: &[[u8; 16]],
        now_ms: u64,
    ) -> Result<Vec<Action>, EngineError> {
        for id in message_ids {
            self.in_flight.remove(id);
        }
        self.pacer.settled(peer, message_ids);
        self.deposit(peer, now_ms)
    }

    /// The next deposit for `peer`, if it has a mailbox, none is under way,
    /// and the contact is not in a pause after a refusal: the outbox entries
    /// already tried directly that no mailbox holds and that are not being
    /// transmitted, up to a batch.
    fn deposit(&mut self, peer: &PeerKey, now_ms: u64) -> Result<Vec<Action>, EngineError> {
        let contact_id = self.store.contact_id_for_key(peer);
        let (not_before, index) = self.deposit_backoff.get(&contact_id).copied().unwrap_or((0, 0));
        let under_way =
            self.depositing.get(&contact_id).is_some_and(|since| now_ms < since.saturating_add(IN_FLIGHT_MAX_MS));
        if now_ms < not_before || under_way {
            return Ok(Vec::new());
        }
        let theirs = self.store.contact_mailboxes(&contact_id)?.theirs;
        let Some(mailbox) = theirs.get(index % theirs.len().max(1)).cloned() else { return Ok(Vec::new()) };
        let eligible: Vec<[u8; 16]> = self
            .outbox
            .of(&contact_id)
            .iter()
            .filter(|e| {
                e.attempts > 0 && !e.unsealed && !self.deposited.contains(&e.id) && !self.is_in_flight(&e.id, now_ms)
            })
            .take(MAX_DEPOSIT_BATCH)
            .map(|e| e.id)
            .collect();
        let (mut ids, mut envelopes, mut bytes) = (Vec::new(), Vec::new(), 0);
        for entry in self.store.outbox_entries(&eligible)? {
            if bytes + entry.envelope.len() > MAX_DEPOSIT_BYTES {
                break;
            }
            bytes += entry.envelope.len();
            ids.push(entry.message_id);
            envelopes.push(entry.envelope);
        }
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.depositing.insert(contact_id, now_ms);
        Ok(vec![Action::Deposit { peer: *peer, mailbox, message_ids: ids, envelopes }])
    }

    /// A deposit finished. What the mailbox stored is marked `stored` (and
    /// stays in the outbox until the recipient acknowledges it; receipts and
    /// other content the user never sees are done once stored). A refusal is
    /// reported ([`NodeEvent::DepositRefused`]) and the rest waits; a failure
    /// to reach the mailbox tries the contact's next mailbox later.
    pub fn on_deposit_result(
        &mut self,
        peer: &PeerKey,
        message_ids: &[[u8; 16]],
        result: Result<DepositOutcome, MailboxError>,
        now_ms: u64,
    ) -> Result<Vec<Action>, EngineError> {
        let contact_id = self.store.contact_id_for_key(peer);
        self.depositing.remove(&contact_id);
        let (accepted, refused) = match result {
            Ok(outcome) => {
                (outcome.accepted.min(message_ids.len()), (outcome.status != Status::Ok).then_some(outcome.status))
            }
            Err(MailboxError::Refused(status)) => (0, Some(status)),
            Err(e) => {
                tracing::debug!(profile = %self.store.name(), error = %e, "deposit failed");
                let pause = self.deposit_pause();
                let entry = self.deposit_backoff.entry(contact_id).or_insert((0, 0));
                *entry = (now_ms + pause, entry.1 + 1);
                return Ok(Vec::new());
            }
        };
        // Only what is still queued under these envelope ids (one encrypted
        // again meanwhile is queued under another).
        let stored: Vec<[u8; 16]> =
            message_ids[..accepted].iter().filter(|id| self.outbox.get(id).is_some()).copied().collect();
        let stored = &stored[..];
        let mut actions = Vec::new();
        let (mut visible, mut done) = (Vec::new(), Vec::new());
        for id in stored {
            let shown = match self.store.message(id)? {
                Some((_, _, record)) => Message::decode(&record.body).is_ok_and(|m| m.content.is_visible()),
                None => false,
            };
            if shown { visible.push(*id) } else { done.push(*id) }
        }
        self.store.mark_deposited(&visible, now_ms)?;
        // Direct retries of what a mailbox holds slow down.
        self.store.record_attempts(&self.attempts_after(&visible), now_ms + STORED_RETRY_MS)?;
        self.outbox.attempted(&visible, now_ms + STORED_RETRY_MS);
        self.deposited.extend(visible.iter().copied());
        self.store.acknowledge(&done)?;
        // The mailbox, not the recipient, took these: lost, they would be
        // deposited again (the host keeps no ids), so they are made durable.
        self.store.make_durable()?;
        for id in &done {
            self.outbox.remove(id);
        }
        actions.extend(visible.iter().map(|id| self.status_event(id, MessageStatus::Stored)));
        if let Some(status) = refused {
            let pause = self.deposit_pause();
            let entry = self.deposit_backoff.entry(contact_id).or_insert((0, 0));
            entry.0 = now_ms + pause;
            let contact = self.store.contact(&contact_id)?.map(|c| c.display_name).unwrap_or_default();
            tracing::info!(profile = %self.store.name(), reason = %status, "a mailbox refused a deposit");
            actions.push(Action::Notify(NodeEvent::DepositRefused {
                profile: self.profile(),
                contact,
                reason: serde_json::to_value(status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                waiting: message_ids.len() - accepted,
            }));
        } else {
            self.deposit_backoff.remove(&contact_id);
            // The next batch, if more waits.
            actions.extend(self.deposit(peer, now_ms)?);
        }
        Ok(actions)
    }

    /// The pause after a refused or failed deposit.
    fn deposit_pause(&self) -> u64 {
        DEPOSIT_RETRY_MS.min(self.config.retry_max_ms)
    }

    /// The peer became reachable (connected, identified, discovered): flush
    /// its outbox now.
    pub fn on_peer_reachable(&mut self, peer: &PeerKey, now_ms: u64) -> Result<Vec<Action>, EngineError> {
        let mut actions: Vec<Action> = self.fetch_prekeys(peer, now_ms)?.into_iter().collect();
        actions.extend(self.flush(peer, now_ms, true)?);
        Ok(actions)
    }

    /// Time passed: retry what is due, fail what expired.
    pub fn on_tick<R: CryptoRng + ?Sized>(&mut self, now_ms: u64, rng: &mut R) -> Result<Vec<Action>, EngineError> {
        let mut actions = Vec::new();
        // First messages that waited long enough for prekeys go without.
        let overdue: Vec<ContactId> =
            self.sealing.iter().filter(|(_, deadline)| **deadline <= now_ms).map(|(c, _)| *c).collect();
        for contact in overdue {
            match self.seal(&contact, now_ms, rng) {
                Ok(more) => actions.extend(more),
                Err(e) => {
                    tracing::warn!(profile = %self.store.name(), error = %e, "encrypting waiting messages failed")
                }
            }
        }
        if self.outbox.is_empty() {
            return Ok(actions);
        }
        let mut due_peers = Vec::new();
        let mut expired = Vec::new();
        for (contact, entries) in self.outbox.contacts() {
            let expiry = self.expiry_for(contact);
            let mut due = false;
            for entry in entries.iter().filter(|e| !self.is_in_flight(&e.id, now_ms)) {
                if now_ms.saturating_sub(entry.queued_at_ms) > expiry {
                    expired.push(entry.id);
                } else {
                    due |= entry.next_attempt_at_ms <= now_ms;
                }
            }
            if due {
                due_peers.push(*contact);
            }
        }
        for id in expired {
            self.store.fail_message(&id)?;
            actions.push(self.status_event(&id, MessageStatus::Failed));
            self.forget_queued(&id);
        }
        for contact in due_peers {
            if let Some(c) = self.store.contact(&contact)? {
                actions.extend(self.flush_peer(&c.identity.signing, now_ms)?);
            }
        }
        Ok(actions)
    }

    /// Peers with queued messages, and the addresses we know for them.
    pub fn pending_peers(&self) -> Result<Vec<(PeerKey, Vec<String>)>, EngineError> {
        let mut out = Vec::new();
        for (contact, _) in self.outbox.contacts() {
            if let Some(c) = self.store.contact(contact)? {
                out.push((c.identity.signing, c.addresses));
            }
        }
        Ok(out)
    }

    // ---- receive ------------------------------------------------------------

    /// A request with `envelopes` arrived from `peer` (authenticated by the
    /// transport). Decrypts and commits everything in one transaction, then
    /// returns one acknowledgement per envelope, and follow-up actions
    /// (notifications, automatic replies). Send the acknowledgements only
    /// after this returns: by then everything is durable.
    pub fn on_request<R: CryptoRng + ?Sized>(
        &mut self,
        peer: &PeerKey,
        envelopes: &[Vec<u8>],
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(Vec<Ack>, Vec<Action>), EngineError> {
        self.receive(peer, envelopes, None, now_ms, rng)
    }

    /// [`Engine::on_request`]; `unauthenticated` (a budget key) when the
    /// envelopes only claim to come from `peer` (mailbox items under the
    /// card tag): their budgets are a stranger's under that key, not
    /// `peer`'s, so forgeries cannot spend a contact's budgets.
    fn receive<R: CryptoRng + ?Sized>(
        &mut self,
        peer: &PeerKey,
        envelopes: &[Vec<u8>],
        unauthenticated: Option<PeerKey>,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(Vec<Ack>, Vec<Action>), EngineError> {
        // Cheap checks first: who it is (one keyed lookup), blocked, budgets;
        // cryptography only for what passes them.
        let contact_id = self.store.contact_id_for_key(peer);
        let mut contact = self.store.contact(&contact_id)?;
        if contact.as_ref().is_some_and(|c| c.blocked) {
            // What was stored before the block is still a duplicate: a
            // sender whose acknowledgement was lost (it is not made durable
            // on its own) must not see a delivered message fail.
            let mut acks = Vec::with_capacity(envelopes.len());
            for bytes in envelopes {
                let received = match Envelope::decode(bytes) {
                    Ok(envelope) => self.store.is_received(&envelope.message_id().0)?,
                    Err(_) => false,
                };
                acks.push(if received { Ack::Duplicate } else { Ack::Rejected(RejectReason::Blocked) });
            }
            return Ok((acks, Vec::new()));
        }
        let sender =
            if contact.is_some() && !self.strangers.contains(&contact_id) { Sender::Settled } else { Sender::Stranger };
        let (budget_key, budget_sender) = match &unauthenticated {
            Some(key) => (key, Sender::Stranger),
            None => (peer, sender),
        };
        let conversation_before = self.store.conversation(&contact_id)?;
        let mut sessions: Option<Working> = match self
            .store
            .session(&contact_id)?
            .map(|s| Working::open(contact_id, s))
            .transpose()
        {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(profile = %self.store.name(), error = %e, "a stored session does not open; treated as none");
                None
            }
        };
        let mut acks = vec![Ack::Rejected(RejectReason::Malformed); envelopes.len()];
        // Envelopes that reached the batch (their ack comes with the commit).
        let mut reached = vec![false; envelopes.len()];
        let mut batch: Vec<IncomingMessage> = Vec::new();
        let mut batch_index: Vec<usize> = Vec::new();
        let mut contents: Vec<Option<Message>> = Vec::new();
        let mut seen = HashSet::new();
        let mut new_contact = None;
        let mut identity_changed = false;
        for (i, bytes) in envelopes.iter().enumerate() {
            if i > 0 && !reached[i - 1] && is_failure(&acks[i - 1]) {
                self.budgets.failed(budget_key, budget_sender, now_ms);
            }
            if !self.budgets.admit(budget_key, budget_sender, now_ms) {
                acks[i] = Ack::Rejected(RejectReason::Busy);
                continue;
            }
            let Ok(envelope) = Envelope::decode(bytes) else { continue };
            let id = envelope.message_id().0;
            if !seen.insert(id) || self.store.is_received(&id)? {
                acks[i] = Ack::Duplicate;
                continue;
            }
            let mut consumed = None;
            let plaintext = match &envelope.prekey {
                Some(header) if &header.identity.signing != peer => {
                    acks[i] = Ack::Rejected(RejectReason::IdentityMismatch);
                    continue;
                }
                Some(header) if !sessions.as_ref().is_some_and(|s| s.has_prekey_session(header)) => {
                    if budget_sender == Sender::Stranger && !self.budgets.admit_session_start(budget_key, now_ms) {
                        acks[i] = Ack::Rejected(RejectReason::Busy);
                        continue;
                    }
                    let Some(spk) = self.store.signed_prekey(header.signed_prekey_id)? else {
                        acks[i] = Ack::Rejected(RejectReason::UnknownPrekey);
                        continue;
                    };
                    let opk = match header.one_time_prekey_id {
                        Some(opk_id) => match self.store.one_time_prekey(opk_id)? {
                            Some(opk) => Some(opk),
                            None => {
                                acks[i] = Ack::Rejected(RejectReason::UnknownPrekey);
                                continue;
                            }
                        },
                        None => None,
                    };
                    match Session::respond(&self.identity, &spk, opk.as_ref(), &envelope) {
                        Ok((s, plaintext)) => {
                            consumed = header.one_time_prekey_id;
                            // Both sides may have started a session at once:
                            // keep ours among the previous ones, it may still
                            // have messages in flight.
                            match sessions.as_mut() {
                                Some(working) => working.replace_current(&self.store, s)?,
                                None => sessions = Some(Working::first(&self.store, contact_id, s)?),
                            }
                            match &contact {
                                None => {
                                    let c = self.stranger(&header.identity, now_ms);
                                    new_contact = Some(c.clone());
                                    contact = Some(c);
                                }
                                Some(c) if c.identity != header.identity => {
                                    identity_changed = true;
                                    let mut updated = c.clone();
                                    updated.identity = header.identity;
                                    contact = Some(updated);
                                }
                                Some(_) => {}
                            }
                            plaintext
                        }
                        Err(_) => {
                            acks[i] = Ack::Rejected(RejectReason::Undecryptable);
                            continue;
                        }
                    }
                }
                _ => {
                    let Some(state) = sessions.as_mut() else {
                        acks[i] = Ack::Rejected(RejectReason::NoSession);
                        continue;
                    };
                    match state.decrypt(&self.store, &envelope)? {
                        Ok(p) => p,
                        // Its id was never received (checked above): not a
                        // duplicate but a message lost for this session. The
                        // sender encrypts it again.
                        Err(CryptoError::MessageKeyGone) => {
                            acks[i] = Ack::Rejected(RejectReason::KeyGone);
                            continue;
                        }
                        Err(_) => {
                            acks[i] = Ack::Rejected(RejectReason::Undecryptable);
                            continue;
                        }
                    }
                }
            };
            // Content that does not decode (text over the limit, not UTF-8,
            // malformed, a type or version we do not know) is refused by
            // name, never acknowledged and dropped: the sender records the
            // refusal and shows it.
            let Ok(decoded) = Message::decode(&plaintext) else {
                tracing::debug!(profile = %self.store.name(), "content that does not decode; refused");
                acks[i] = Ack::Rejected(RejectReason::BadContent);
                continue;
            };
            let parsed = Some(decoded);
            let visible = parsed.as_ref().is_some_and(|m| m.content.is_visible());
            let record = visible.then(|| MessageRecord {
                id,
                direction: Direction::Incoming,
                sent_at_ms: parsed.as_ref().map_or(now_ms, |m| m.sent_at_ms),
                received_at_ms: Some(now_ms),
                status: MessageStatus::Delivered,
                body: plaintext.clone(),
            });
            batch.push(IncomingMessage {
                contact: contact_id,
                session: None, // the last item gets the state, after the loop
                message: record,
                consumed_one_time_prekey: consumed,
                received_id: id,
            });
            batch_index.push(i);
            reached[i] = true;
            contents.push(parsed);
        }
        if let Some(last) = envelopes.len().checked_sub(1)
            && !reached[last]
            && is_failure(&acks[last])
        {
            self.budgets.failed(budget_key, budget_sender, now_ms);
        }
        let Some(last) = batch.last_mut() else { return Ok((acks, Vec::new())) };
        last.session = sessions.as_ref().map(Working::state);
        // Everything this request changes goes into ONE transaction: the
        // contact record (a stranger becomes a contact only with its
        // messages), the messages, receipts, mailbox and address updates,
        // the automatic replies with their conversation changes, and the
        // stranger accounting. A crash leaves all of it or none of it.
        let reply_seq = conversation_before.next_seq + batch.iter().filter(|m| m.message.is_some()).count() as u64;
        let mut inbound = Inbound::new(contact_id);
        inbound.messages = batch;
        if let Some(working) = sessions.as_mut() {
            inbound.skipped = std::mem::replace(&mut working.skipped, SkippedKeyChanges::new(contact_id));
        }
        if let Some(c) = &contact
            && (new_contact.is_some() || identity_changed)
        {
            inbound.record = Some(if new_contact.is_some() {
                c.clone()
            } else {
                Contact { display_name: String::new(), ..c.clone() }
            });
        }
        if sender == Sender::Stranger {
            inbound.stranger = Some(self.config.strangers);
        }
        let ids = |list: &[String]| -> Vec<[u8; 16]> {
            list.iter()
                .filter_map(|h| kabar_crypto::hex::decode(h))
                .filter_map(|b| <[u8; 16]>::try_from(b).ok())
                .collect()
        };
        let mut retries = Vec::new();
        let mut visible_received = false;
        let mut catalog_requested = false;
        for content in contents.iter().flatten().map(|m| &m.content) {
            match content {
                Content::Receipt { read, delivered, retry } => {
                    inbound.receipts.push(Receipt { read: ids(read), delivered: ids(delivered) });
                    retries.extend(ids(retry));
                }
                Content::Mailboxes { mailboxes } => inbound.mailboxes = Some(offline::accept_offers(mailboxes)),
                // An empty list changes nothing (the last non-empty one wins).
                Content::Addresses { addresses } if !addresses.is_empty() => {
                    inbound.addresses = Some(addresses.clone());
                }
                Content::Addresses { .. } => {}
                content => {
                    visible_received = true;
                    catalog_requested |= matches!(content, Content::CatalogRequest);
                }
            }
        }
        if self.store.kind() == ProfileKind::Business
            && visible_received
            && let Some(working) = sessions.as_mut()
        {
            if new_contact.is_some() {
                inbound.label = Some((NEW_CUSTOMER_LABEL.into(), NEW_CUSTOMER_COLOUR.into()));
            }
            let stranger = sender == Sender::Stranger;
            // An automatic reply that cannot be made is left out; it never
            // costs the messages their acknowledgement.
            match self.automatic_replies(stranger, &conversation_before, catalog_requested, now_ms) {
                Ok(replies) => {
                    let (sealed, away) = seal_replies(&contact_id, reply_seq, replies, working, now_ms, rng);
                    inbound.replies = sealed;
                    inbound.away_sent_for_ms = away;
                }
                Err(e) => tracing::warn!(profile = %self.store.name(), error = %e, "automatic replies not made"),
            }
        }
        let outcome = match self.store.commit_inbound(&inbound, now_ms) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "could not store received messages");
                for i in &batch_index {
                    acks[*i] = Ack::Rejected(RejectReason::Storage);
                }
                return Ok((acks, Vec::new()));
            }
        };
        // Durable from here on: nothing below may turn into a refusal.
        for (result, &i) in outcome.messages.iter().zip(&batch_index) {
            acks[i] = match result {
                ReceiveOutcome::Stored { .. } => Ack::Accepted,
                ReceiveOutcome::Duplicate => Ack::Duplicate,
            };
        }
        let name = contact.as_ref().map(|c| c.display_name.clone()).unwrap_or_default();
        let mut actions = Vec::new();
        if identity_changed {
            actions.push(Action::Notify(NodeEvent::ContactIdentityChanged {
                profile: self.profile(),
                contact: name.clone(),
            }));
        }
        if new_contact.as_ref().is_some_and(|c| c.request) {
            actions.push(Action::Notify(NodeEvent::MessageRequest { profile: self.profile(), contact: name.clone() }));
        }
        for (id, shown, status) in &outcome.receipts {
            self.deposited.remove(id);
            self.outbox.remove(id);
            actions.push(Action::Notify(NodeEvent::StatusChanged {
                profile: self.profile(),
                message_id: hex(shown),
                status: *status,
            }));
        }
        if let Some(mailboxes) = &inbound.mailboxes {
            self.deposit_backoff.remove(&contact_id);
            actions.push(Action::Notify(NodeEvent::ContactMailboxesChanged {
                profile: self.profile(),
                contact: name.clone(),
                mailboxes: mailboxes.len(),
            }));
        }
        if outcome.addresses_changed {
            actions.push(Action::Notify(NodeEvent::ContactAddressesChanged {
                profile: self.profile(),
                contact: name.clone(),
            }));
        }
        let stored = outcome.messages.iter().zip(inbound.messages.iter().zip(&contents));
        for (_, (item, parsed)) in stored.filter(|(o, _)| matches!(o, ReceiveOutcome::Stored { .. })) {
            let Some(content) = parsed.as_ref().map(|m| &m.content) else { continue };
            if matches!(content, Content::Receipt { .. } | Content::Mailboxes { .. } | Content::Addresses { .. }) {
                continue;
            }
            actions.push(Action::Notify(NodeEvent::MessageReceived {
                profile: self.profile(),
                contact: name.clone(),
                message_id: hex(&item.message.as_ref().map_or([0; 16], |m| m.id)),
                kind: content.kind().to_string(),
            }));
        }
        if sender == Sender::Stranger {
            self.strangers.insert(contact_id);
            self.strangers_dropped += outcome.evicted.len() as u64;
            for gone in &outcome.evicted {
                self.forget_locally(gone);
            }
            if !outcome.evicted.is_empty() {
                let dropped = outcome.evicted.len();
                tracing::info!(profile = %self.store.name(), dropped, "pending strangers over the limit: the oldest dropped");
                actions.push(Action::Notify(NodeEvent::RequestsDropped { profile: self.profile(), dropped }));
            }
            if outcome.evicted.contains(&contact_id) {
                return Ok((acks, actions));
            }
        }
        for (reply, &seq) in inbound.replies.iter().zip(&outcome.replies) {
            let id = reply.message.id;
            let queued = Queued {
                id,
                seq,
                queued_at_ms: now_ms,
                attempts: 0,
                next_attempt_at_ms: now_ms,
                shown: id,
                unsealed: false,
            };
            self.outbox.insert(contact_id, queued);
        }
        // A lost retry request costs nothing: the message stays queued, its
        // next attempt meets `key_gone` again, and that re-encrypts it.
        if !retries.is_empty() {
            match self.resend(&contact_id, &retries, now_ms, rng) {
                Ok(more) => actions.extend(more),
                Err(e) => tracing::warn!(profile = %self.store.name(), error = %e, "re-encrypting on request failed"),
            }
        }
        if !inbound.replies.is_empty() {
            match self.flush_peer(peer, now_ms) {
                Ok(more) => actions.extend(more),
                Err(e) => tracing::warn!(profile = %self.store.name(), error = %e, "sending automatic replies failed"),
            }
        }
        Ok((acks, actions))
    }

    /// Forgets the in-memory state of a contact the store forgot.
    fn forget_locally(&mut self, contact: &ContactId) {
        self.strangers.remove(contact);
        for q in self.outbox.of(contact).to_vec() {
            self.outbox.remove(&q.id);
            self.in_flight.remove(&q.id);
            self.deposited.remove(&q.id);
        }
        self.depositing.remove(contact);
        self.deposit_backoff.remove(contact);
    }

    /// The user acted on a contact (wrote to it, accepted, renamed, blocked
    /// or added it by card): it is no longer a pending stranger, never
    /// evicted, and its budgets are a contact's.
    pub fn settle(&mut self, contact: &ContactId) -> Result<(), EngineError> {
        // The store first: if it fails, the stranger is still pending in
        // both, and settling again retries.
        if self.strangers.contains(contact) {
            self.store.settle_stranger(contact)?;
            self.strangers.remove(contact);
        }
        Ok(())
    }

    /// Messages waiting in the outbox (not yet acknowledged by their
    /// recipient, nor done once deposited in its mailbox).
    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    /// Pending strangers, and what the budgets refused.
    pub fn guard_status(&self) -> GuardStatus {
        GuardStatus {
            pending_strangers: self.strangers.len(),
            stranger_limit: self.config.strangers.max_count,
            strangers_dropped: self.strangers_dropped,
            refused_envelopes: self.budgets.refused,
            resent_messages: self.resent,
        }
    }

    /// Outbox entries to pending strangers.
    fn queued_to_strangers(&self) -> usize {
        self.strangers.iter().map(|c| self.outbox.of(c).len()).sum()
    }

    /// How long an outbox entry to `contact` lives: a pending stranger gets
    /// automatic replies only for [`STRANGER_REPLY_TTL_MS`].
    fn expiry_for(&self, contact: &ContactId) -> u64 {
        if self.strangers.contains(contact) {
            STRANGER_REPLY_TTL_MS.min(self.config.expiry_ms)
        } else {
            self.config.expiry_ms
        }
    }

    /// A page of envelopes fetched from our mailbox at `address`. Each is
    /// attributed by its tag (a contact's tag; the card tag with a prekey
    /// message names its sender), received as if it came directly, and
    /// committed. Returns the host's sequence numbers that may be deleted
    /// now (everything committed, duplicate, unknown or refused for good —
    /// a sender keeps its copy until it hears from us, so nothing is lost),
    /// and the actions, among them a `delivered` receipt to each sender.
    pub fn on_mailbox_items<R: CryptoRng + ?Sized>(
        &mut self,
        address: &str,
        items: &[Item],
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(Vec<u64>, Vec<Action>), EngineError> {
        let Some(own) = self.own_mailboxes.iter().find(|m| m.address == address).cloned() else {
            return Ok((Vec::new(), Vec::new()));
        };
        let card = offline::card_tag(&own.key);
        let mut by_tag: HashMap<[u8; 16], PeerKey> = HashMap::new();
        for (_, c) in self.store.contacts()? {
            by_tag.insert(offline::tag(&own.key, &c.identity.signing), c.identity.signing);
        }
        let mut deletable = Vec::new();
        // Anyone with our card can deposit under the card tag and claim any
        // identity in the prekey header: those items are budgeted as a
        // stranger's under this key, never as the identity they claim.
        let mut card_key = [0u8; 32];
        card_key[..16].copy_from_slice(&card);
        card_key[16..].copy_from_slice(b"card tag budget\0");
        // (sender, came under the card tag) in order of first appearance,
        // with their items.
        let mut groups: Vec<((PeerKey, bool), Vec<&Item>)> = Vec::new();
        for item in items {
            let sender = match by_tag.get(&item.tag) {
                Some(peer) => Some((*peer, false)),
                None if item.tag == card => {
                    Envelope::decode(&item.envelope).ok().and_then(|e| e.prekey.map(|h| (h.identity.signing, true)))
                }
                None => None,
            };
            match sender {
                Some(key) => match groups.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, list)) => list.push(item),
                    None => groups.push((key, vec![item])),
                },
                // Unknown or stale tag, or not attributable: the sender
                // still holds it and retries directly.
                None => deletable.push(item.seq),
            }
        }
        let mut actions = Vec::new();
        for ((peer, by_card), list) in groups {
            let envelopes: Vec<Vec<u8>> = list.iter().map(|i| i.envelope.clone()).collect();
            let (acks, more) = self.receive(&peer, &envelopes, by_card.then_some(card_key), now_ms, rng)?;
            actions.extend(more);
            let contact_id = self.store.contact_id_for_key(&peer);
            let mut delivered = Vec::new();
            let mut retry = Vec::new();
            for (item, ack) in list.iter().zip(&acks) {
                if matches!(ack, Ack::Rejected(RejectReason::Storage | RejectReason::Busy)) {
                    // Not committed, or over a budget for now: fetched again
                    // next time (the sender thinks it is deposited and only
                    // retries directly, slowly).
                    continue;
                }
                deletable.push(item.seq);
                let Ok(envelope) = Envelope::decode(&item.envelope) else { continue };
                let id = envelope.message_id().0;
                // Under a contact's own tag: what it sent and we cannot
                // decrypt goes back to it (it ignores ids it does not have).
                if *ack == Ack::Rejected(RejectReason::KeyGone)
                    || (!by_card && *ack == Ack::Rejected(RejectReason::Undecryptable))
                {
                    retry.push(hex(&id));
                }
                // A duplicate too: fetched again after a crash that came
                // between storing it and queueing this receipt (the host
                // deletes only after both). The sender applies it once.
                if !matches!(ack, Ack::Accepted | Ack::Duplicate) {
                    continue;
                }
                let stored_from_them = self
                    .store
                    .message(&id)?
                    .is_some_and(|(from, _, m)| from == contact_id && m.direction == Direction::Incoming);
                if stored_from_them {
                    delivered.push(hex(&id));
                }
            }
            if delivered.is_empty() && retry.is_empty() {
                continue;
            }
            let receipt = Content::Receipt { read: Vec::new(), delivered, retry };
            match self.queue(&contact_id, receipt, now_ms, rng) {
                Ok(_) => actions.extend(self.flush_peer(&peer, now_ms)?),
                Err(EngineError::Blocked(_) | EngineError::NoPrekey(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((deletable, actions))
    }

    // ---- our mailboxes --------------------------------------------------------

    /// The mailbox update `contact` has not had yet, with the marker to
    /// record once it is queued (`None` if it is up to date, blocked, or we
    /// have never had mailboxes).
    fn mailbox_update_for(&self, contact_id: &ContactId) -> Result<Option<(Content, [u8; 16])>, EngineError> {
        let own = &self.own_mailboxes;
        let hash = offline::set_hash(own);
        let contact = self.contact_or_err(contact_id)?;
        if contact.blocked || self.store.contact_mailboxes(contact_id)?.told == hash {
            return Ok(None);
        }
        let mailboxes = own
            .iter()
            .map(|m| MailboxOffer::from_stored(&offline::offer(m, offline::tag(&m.key, &contact.identity.signing))))
            .collect();
        Ok(Some((Content::Mailboxes { mailboxes }, hash)))
    }

    /// Tells every contact (not blocked, not a pending message request)
    /// that has not heard of our current mailboxes about them, each with its
    /// own capability, inside the end-to-end session.
    pub fn announce_mailboxes<R: CryptoRng + ?Sized>(
        &mut self,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        let mut actions = Vec::new();
        for (id, contact) in self.store.contacts()? {
            if contact.request {
                continue;
            }
            let Some((update, hash)) = self.mailbox_update_for(&id)? else { continue };
            match self.queue(&id, update, now_ms, rng) {
                Ok(_) => {
                    self.store.update_contact_mailboxes(&id, |m| m.told = hash)?;
                    actions.extend(self.flush_peer(&contact.identity.signing, now_ms)?);
                }
                Err(EngineError::NoPrekey(_) | EngineError::Blocked(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(actions)
    }

    /// The tags of blocked contacts in the mailbox with key seed `seed`
    /// (revoked when the mailbox is registered).
    pub fn blocked_tags(&self, seed: &[u8; 32]) -> Result<Vec<[u8; 16]>, EngineError> {
        Ok(self
            .store
            .contacts()?
            .into_iter()
            .filter(|(_, c)| c.blocked)
            .map(|(_, c)| offline::tag(seed, &c.identity.signing))
            .collect())
    }

    /// A mailbox was registered: remember it and tell contacts.
    pub fn add_mailbox<R: CryptoRng + ?Sized>(
        &mut self,
        mailbox: OwnMailbox,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        let mut list = self.own_mailboxes.clone();
        list.retain(|m| m.address != mailbox.address);
        list.push(mailbox);
        self.store.set_mailboxes(&list)?;
        self.own_mailboxes = list;
        self.announce_mailboxes(now_ms, rng)
    }

    /// Forgets our mailbox at `address` and tells contacts; returns it (to
    /// unregister from the host) if there was one.
    pub fn remove_mailbox<R: CryptoRng + ?Sized>(
        &mut self,
        address: &str,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<(Option<OwnMailbox>, Vec<Action>), EngineError> {
        let mut list = self.own_mailboxes.clone();
        let Some(index) = list.iter().position(|m| m.address == address) else { return Ok((None, Vec::new())) };
        let removed = list.remove(index);
        self.store.set_mailboxes(&list)?;
        self.own_mailboxes = list;
        Ok((Some(removed), self.announce_mailboxes(now_ms, rng)?))
    }

    /// What a contact card says about our mailboxes (the card tag in each).
    pub fn card_mailboxes(&self) -> Result<Vec<ContactMailbox>, EngineError> {
        Ok(self.own_mailboxes.iter().map(|m| offline::offer(m, offline::card_tag(&m.key))).collect())
    }

    /// Blocks or unblocks a contact (a block also settles a message
    /// request): its deposit tag in each of our mailboxes is revoked or
    /// restored, and a block drops everything still queued to it (those
    /// messages fail), automatic replies included.
    pub fn set_blocked(&mut self, contact: &ContactId, blocked: bool) -> Result<(Contact, Vec<Action>), EngineError> {
        let c = self.store.update_contact(contact, |c| {
            c.blocked = blocked;
            c.request = false;
        })?;
        self.settle(contact)?;
        let mut actions = Vec::new();
        if blocked {
            for id in self.store.drop_outbox_for(contact)? {
                actions.push(self.status_event(&id, MessageStatus::Failed));
                self.forget_queued(&id);
            }
            self.deposit_backoff.remove(contact);
            self.sealing.remove(contact);
        }
        actions.extend(self.own_mailboxes.iter().cloned().map(|m| {
            let tag = offline::tag(&m.key, &c.identity.signing);
            Action::Revoke { mailbox: m, tag, revoked: blocked }
        }));
        Ok((c, actions))
    }

    /// A contact record for someone who wrote first.
    fn stranger(&self, identity: &kabar_crypto::IdentityPublic, now_ms: u64) -> Contact {
        let peer = crate::card::peer_id_of(&identity.signing).to_string();
        Contact {
            peer_id: identity.signing.to_vec(),
            identity: *identity,
            signed_prekey: None,
            one_time_prekey: None,
            addresses: Vec::new(),
            display_name: format!("{}…", &peer[peer.len().saturating_sub(8)..]),
            verified: false,
            blocked: false,
            identity_change: None,
            added_at_ms: now_ms,
            // A stranger is a message request in a personal profile; in a
            // business profile, a new customer.
            request: self.store.kind() == ProfileKind::Personal,
        }
    }

    /// The greeting, away message and catalog a business answers a
    /// customer's messages with; the away message comes with the period it
    /// answers (one away message per period). Reads only; nothing is
    /// committed.
    fn automatic_replies(
        &self,
        stranger: bool,
        before: &kabar_storage::Conversation,
        catalog_requested: bool,
        now_ms: u64,
    ) -> Result<Vec<(Content, Option<u64>)>, EngineError> {
        if stranger && self.queued_to_strangers() >= MAX_STRANGER_QUEUE {
            tracing::debug!(profile = %self.store.name(), "automatic replies to strangers at their limit; not answering");
            return Ok(Vec::new());
        }
        let settings = self.store.automations()?;
        let mut replies = Vec::new();
        let first_or_silent = before.last_incoming_ms.is_none_or(|t| now_ms.saturating_sub(t) >= GREETING_SILENCE_MS);
        if let Some(greeting) = &settings.greeting
            && first_or_silent
        {
            replies.push((Content::Text { text: greeting.clone(), automatic: Some("greeting".into()) }, None));
        }
        if let Some(away) = &settings.away_message
            && let Some(period) = self.away_period(settings.away_schedule, now_ms)?
            && before.away_sent_for_ms != Some(period)
        {
            replies.push((Content::Text { text: away.clone(), automatic: Some("away".into()) }, Some(period)));
        }
        if catalog_requested {
            let items = self
                .store
                .catalog()?
                .into_iter()
                .map(|i| CatalogEntry {
                    id: hex(&i.id),
                    name: i.name,
                    price_minor: i.price_minor,
                    currency: i.currency,
                    description: i.description,
                    available: i.available,
                })
                .collect();
            replies.push((Content::Catalog { items }, None));
        }
        Ok(replies)
    }

    /// If the business is away at `now_ms`, the start of the current away
    /// period (one away message per period per conversation).
    fn away_period(&self, schedule: AwaySchedule, now_ms: u64) -> Result<Option<u64>, EngineError> {
        const DAY: u64 = 86_400_000;
        const STEP: u64 = 15 * 60_000;
        Ok(match schedule {
            AwaySchedule::Off => None,
            // Always away: one away message per conversation per day.
            AwaySchedule::Always => Some(now_ms - now_ms % DAY),
            AwaySchedule::OutsideHours => {
                let hours = self.store.business_hours()?;
                if hours.is_open_at(now_ms) {
                    None
                } else {
                    // Walk back to the moment the business closed (at most a week).
                    let mut t = now_ms - now_ms % STEP;
                    let mut steps = 0;
                    while steps < 7 * 96 && !hours.is_open_at(t.saturating_sub(STEP)) {
                        t = t.saturating_sub(STEP);
                        steps += 1;
                    }
                    Some(t)
                }
            }
            AwaySchedule::Window { start, end } => {
                let offset = i64::from(self.store.business_hours()?.utc_offset_minutes) * 60_000;
                let local = now_ms as i64 + offset;
                let day_start = local - local.rem_euclid(DAY as i64);
                let minute = (local.rem_euclid(DAY as i64) / 60_000) as u16;
                let (inside, start_day) = if start < end {
                    (minute >= start && minute < end, day_start)
                } else if minute >= start {
                    (true, day_start)
                } else {
                    (minute < end, day_start - DAY as i64)
                };
                inside.then(|| (start_day + i64::from(start) * 60_000 - offset).max(0) as u64)
            }
        })
    }

    // ---- addresses ----------------------------------------------------------

    /// Replaces a contact's known addresses (from its address update or its
    /// signed DHT record). Returns whether anything changed.
    fn set_contact_addresses(&self, contact: &ContactId, addresses: &[String]) -> Result<bool, EngineError> {
        let Some(existing) = self.store.contact(contact)? else { return Ok(false) };
        if existing.addresses == addresses || addresses.is_empty() {
            return Ok(false);
        }
        let update =
            Contact { display_name: String::new(), signed_prekey: None, addresses: addresses.to_vec(), ..existing };
        self.store.upsert_contact(update)?;
        Ok(true)
    }

    /// The DHT gave us `peer`'s signed address record: remember its
    /// addresses (if it is a contact) and flush its outbox.
    pub fn on_addresses_found(
        &mut self,
        peer: &PeerKey,
        addresses: &[String],
        now_ms: u64,
    ) -> Result<Vec<Action>, EngineError> {
        let contact = self.store.contact_id_for_key(peer);
        let mut actions = Vec::new();
        if self.set_contact_addresses(&contact, addresses)?
            && let Some(c) = self.store.contact(&contact)?
        {
            actions.push(Action::Notify(NodeEvent::ContactAddressesChanged {
                profile: self.profile(),
                contact: c.display_name,
            }));
        }
        actions.extend(self.flush(peer, now_ms, true)?);
        Ok(actions)
    }

    /// The profile's reachable addresses are now `addresses`. If they differ
    /// from what contacts were last told, each contact (not blocked, not a
    /// pending message request, with a session or a prekey) gets an
    /// encrypted address update, queued like any message (durable, retried).
    pub fn announce_addresses<R: CryptoRng + ?Sized>(
        &mut self,
        addresses: &[String],
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        if addresses.is_empty() || self.store.announced_addresses()? == addresses {
            return Ok(Vec::new());
        }
        let mut actions = Vec::new();
        for (id, contact) in self.store.contacts()? {
            if contact.blocked || contact.request {
                continue;
            }
            let update = Content::Addresses { addresses: addresses.to_vec() };
            match self.queue(&id, update, now_ms, rng) {
                Ok(_) => actions.extend(self.flush_peer(&contact.identity.signing, now_ms)?),
                Err(EngineError::NoPrekey(_) | EngineError::Blocked(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // Remembered only once every update is queued: a crash in between
        // announces again on the next start.
        self.store.set_announced_addresses(addresses)?;
        Ok(actions)
    }

    // ---- reading ------------------------------------------------------------

    /// Marks a conversation read: unread count to zero, our copies of their
    /// messages to `Read`, and an encrypted read receipt to the sender.
    pub fn mark_read<R: CryptoRng + ?Sized>(
        &mut self,
        contact: &ContactId,
        now_ms: u64,
        rng: &mut R,
    ) -> Result<Vec<Action>, EngineError> {
        let unread = self.store.conversation(contact)?.unread as usize;
        if unread == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<[u8; 16]> = self
            .store
            .history(contact, unread.max(1) * 4, None)?
            .into_iter()
            .filter(|(_, m)| m.direction == Direction::Incoming && m.status == MessageStatus::Delivered)
            .map(|(_, m)| m.id)
            .collect();
        if ids.is_empty() {
            self.store.mark_read(contact, &ids)?;
            return Ok(Vec::new());
        }
        // One receipt per MAX_RECEIPT_IDS ids.
        let receipts = ids
            .chunks(kabar_storage::MAX_RECEIPT_IDS)
            .map(|chunk| Content::Receipt {
                read: chunk.iter().map(|id| hex(id)).collect(),
                delivered: Vec::new(),
                retry: Vec::new(),
            })
            .collect();
        // Reading is not answering: a pending stranger stays pending. The
        // receipts are queued first, then the messages marked read (one
        // transaction each): a crash between them leaves the messages
        // unread, and reading them again queues the receipts again, which
        // the sender applies once (statuses only move forward).
        let actions = match self.send_contents(contact, receipts, now_ms, rng) {
            Ok((_, actions)) => actions,
            // No way to send a receipt (blocked, no prekey, a session that
            // does not open): reading still counts.
            Err(e) => {
                tracing::debug!(profile = %self.store.name(), error = %e, "no read receipt");
                Vec::new()
            }
        };
        self.store.mark_read(contact, &ids)?;
        Ok(actions)
    }

    /// Adds (or updates) a contact from its card, with its mailboxes, and
    /// settles it if it was a pending stranger, in one transaction. Returns
    /// its id and whether its identity changed.
    pub fn add_contact(
        &mut self,
        contact: Contact,
        mailboxes: &[ContactMailbox],
    ) -> Result<(ContactId, bool), EngineError> {
        let (id, change) = self.store.add_contact(contact, mailboxes)?;
        self.strangers.remove(&id);
        Ok((id, change.is_some()))
    }

    /// Accepts a message request (optionally under a new name, checked as
    /// every contact name is), settling it, in one transaction.
    pub fn accept_request(&mut self, id: &ContactId, rename: Option<String>) -> Result<Contact, EngineError> {
        if let Some(name) = &rename {
            // The rule `contact.add` applies too (crate::ops::contacts).
            self.check_name_for(name, id)?;
        }
        let contact = self.store.settle_contact(id, |c| {
            c.request = false;
            if let Some(name) = rename {
                c.display_name = name;
            }
        })?;
        self.strangers.remove(id);
        Ok(contact)
    }

    /// Groups consecutive transmissions per peer (helper for callers that
    /// collect many actions).
    pub fn transmissions(actions: &[Action]) -> HashMap<PeerKey, usize> {
        let mut out = HashMap::new();
        for a in actions {
            if let Action::Transmit { peer, envelopes, .. } = a {
                *out.entry(*peer).or_insert(0) += envelopes.len();
            }
        }
        out
    }
}
