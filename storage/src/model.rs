//! The records a profile store holds, and the rules they must satisfy.

use kabar_crypto::{IdentityPublic, OneTimePrekeyPublic, SessionSnapshot, SignedPrekeyPublic};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Opaque 16-byte id of a contact (and of its one conversation): a keyed hash
/// of the contact's Ed25519 identity key, meaningless without the profile key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContactId(pub [u8; 16]);

/// A contact of this profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// The contact's libp2p PeerId, as bytes (derived from `identity.signing`).
    pub peer_id: Vec<u8>,
    /// The identity key we currently trust for this contact.
    pub identity: IdentityPublic,
    /// Their signed prekey from their contact card (or fetched online since),
    /// for starting a session.
    pub signed_prekey: Option<SignedPrekeyPublic>,
    /// A one-time prekey they handed us online (`/kabar/prekey/1`) for the
    /// next session start; removed before it is used, so never used twice.
    /// Schema 5.
    pub one_time_prekey: Option<OneTimePrekeyPublic>,
    /// Known addresses (multiaddrs as text).
    pub addresses: Vec<String>,
    /// The name the user gave this contact.
    pub display_name: String,
    /// True once the user compared safety numbers.
    pub verified: bool,
    /// True if the user blocked this contact.
    pub blocked: bool,
    /// Set when the contact's identity key changed; the user must be warned
    /// and `verified` is cleared.
    pub identity_change: Option<IdentityChange>,
    /// When the contact was added, Unix milliseconds.
    pub added_at_ms: u64,
    /// Whether the contact came to us unasked (a message request) and is not
    /// accepted yet.
    pub request: bool,
}

impl Contact {
    /// A contact as a card makes it: trusted identity, its signed prekey,
    /// no addresses, not verified, blocked or a request.
    pub fn new(
        identity: IdentityPublic,
        signed_prekey: Option<SignedPrekeyPublic>,
        display_name: impl Into<String>,
        added_at_ms: u64,
    ) -> Self {
        Contact {
            peer_id: identity.signing.to_vec(),
            identity,
            signed_prekey,
            one_time_prekey: None,
            addresses: Vec::new(),
            display_name: display_name.into(),
            verified: false,
            blocked: false,
            identity_change: None,
            added_at_ms,
            request: false,
        }
    }
}

/// A contact as schema 4 and earlier stored it (before `one_time_prekey`):
/// read only by the migration to schema 5.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ContactV4 {
    pub peer_id: Vec<u8>,
    pub identity: IdentityPublic,
    pub signed_prekey: Option<SignedPrekeyPublic>,
    pub addresses: Vec<String>,
    pub display_name: String,
    pub verified: bool,
    pub blocked: bool,
    pub identity_change: Option<IdentityChange>,
    pub added_at_ms: u64,
    pub request: bool,
}

impl From<ContactV4> for Contact {
    fn from(c: ContactV4) -> Self {
        Contact {
            peer_id: c.peer_id,
            identity: c.identity,
            signed_prekey: c.signed_prekey,
            one_time_prekey: None,
            addresses: c.addresses,
            display_name: c.display_name,
            verified: c.verified,
            blocked: c.blocked,
            identity_change: c.identity_change,
            added_at_ms: c.added_at_ms,
            request: c.request,
        }
    }
}

/// Most message ids one receipt may name.
pub const MAX_RECEIPT_IDS: usize = 256;

/// Most mailboxes a profile registers, and most kept per contact.
pub const MAX_MAILBOXES: usize = 4;

/// Bounds on pending strangers (message requests and new business customers
/// nobody answered yet): past either, the oldest are forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrangerLimits {
    /// Most strangers pending at once.
    pub max_count: usize,
    /// Most bytes of messages stored from all pending strangers together.
    pub max_bytes: u64,
    /// Most bytes of messages stored from one pending stranger: one that
    /// goes past it is forgotten itself, and takes no one else with it.
    pub max_bytes_each: u64,
}

/// 1,000 pending strangers, 16 MiB of their messages, 256 KiB each.
pub const DEFAULT_STRANGER_LIMITS: StrangerLimits =
    StrangerLimits { max_count: 1_000, max_bytes: 16 * 1024 * 1024, max_bytes_each: 256 * 1024 };

/// Where a contact accepts envelopes while it is offline: a mailbox on a
/// service node, and the deposit capability it gave us.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactMailbox {
    /// The service node (multiaddr ending in `/p2p/<PeerId>`).
    pub address: String,
    /// The mailbox id (the mailbox's Ed25519 public key).
    pub mailbox: [u8; 32],
    /// Our deposit tag.
    pub tag: [u8; 16],
    /// The mailbox key's signature over the mailbox id and tag (64 bytes).
    pub signature: Vec<u8>,
}

/// Mailbox state kept per contact: where they take deposits, and what we
/// last told them about ours.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactMailboxes {
    /// Their mailboxes (at most 4).
    pub theirs: Vec<ContactMailbox>,
    /// A hash of the set of our mailboxes we last told them about (zero: never).
    pub told: [u8; 16],
}

/// A mailbox this profile registered on a service node.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnMailbox {
    /// The service node (multiaddr ending in `/p2p/<PeerId>`).
    pub address: String,
    /// The mailbox key's Ed25519 seed (secret).
    pub key: [u8; 32],
    /// When it was registered, Unix milliseconds.
    pub added_at_ms: u64,
}

impl std::fmt::Debug for OwnMailbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnMailbox")
            .field("address", &self.address)
            .field("key", &"<redacted>")
            .field("added_at_ms", &self.added_at_ms)
            .finish()
    }
}

impl Drop for OwnMailbox {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

/// A recorded change of a contact's identity key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityChange {
    /// The key trusted before the change.
    pub previous: IdentityPublic,
    /// When the change was seen, Unix milliseconds.
    pub changed_at_ms: u64,
}

/// Most earlier sessions kept per contact (besides the current one).
pub const MAX_PREVIOUS_SESSIONS: usize = 4;

/// The ratchet sessions with one contact: the one we send with, and a few
/// earlier ones still able to decrypt messages in flight (both sides may
/// start a session at the same time; a contact may reinstall).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionState {
    /// The session we encrypt with.
    pub current: SessionSnapshot,
    /// Earlier sessions, newest first, at most [`MAX_PREVIOUS_SESSIONS`].
    pub previous: Vec<SessionSnapshot>,
}

impl SessionState {
    /// A state with one session.
    pub fn new(current: SessionSnapshot) -> Self {
        SessionState { current, previous: Vec::new() }
    }

    /// Makes `session` current; the old current becomes the newest previous
    /// one (the oldest is dropped past the bound).
    pub fn replace_current(&mut self, session: SessionSnapshot) {
        let old = std::mem::replace(&mut self.current, session);
        self.previous.insert(0, old);
        self.previous.truncate(MAX_PREVIOUS_SESSIONS);
    }

    /// Every session, the current one first.
    pub fn all(&self) -> impl Iterator<Item = &SessionSnapshot> {
        std::iter::once(&self.current).chain(&self.previous)
    }

    /// Makes previous session `index` current (after it decrypted a message).
    pub fn promote(&mut self, index: usize, updated: SessionSnapshot) {
        if index < self.previous.len() {
            self.previous.remove(index);
            self.replace_current(updated);
        }
    }
}

/// A session row as schema 6 wrote it (version 2 snapshots, skipped keys
/// inside): read only by the migration to schema 7.
#[derive(Deserialize)]
pub(crate) struct SessionStateV6 {
    pub(crate) current: kabar_crypto::SessionSnapshotV2,
    pub(crate) previous: Vec<kabar_crypto::SessionSnapshotV2>,
}

/// Direction of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Direction {
    /// We sent it.
    Outgoing,
    /// We received it.
    Incoming,
}

/// Delivery status of a message. (JSON: lower-case names.)
///
/// Statuses only move forward, in this order: queued → sent → stored →
/// delivered → read; failed replaces queued, sent or stored only. (The
/// declaration order is the on-disk encoding and must not change: `Stored`
/// came later and is last; [`MessageStatus::rank`] gives the real order.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Persisted with its envelope in the outbox; not yet handed to the network.
    Queued,
    /// Handed to the network at least once.
    Sent,
    /// The recipient acknowledged it (stored durably on their side).
    Delivered,
    /// The recipient read it (an encrypted read receipt came back).
    Read,
    /// Given up after the documented expiry.
    Failed,
    /// Held by the recipient's mailbox (the recipient was unreachable); it
    /// stays in the outbox until the recipient's own acknowledgement.
    Stored,
}

impl MessageStatus {
    /// Position in the forward order queued → sent → stored → delivered →
    /// read → failed.
    pub fn rank(self) -> u8 {
        match self {
            MessageStatus::Queued => 0,
            MessageStatus::Sent => 1,
            MessageStatus::Stored => 2,
            MessageStatus::Delivered => 3,
            MessageStatus::Read => 4,
            MessageStatus::Failed => 5,
        }
    }
}

impl PartialOrd for MessageStatus {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for MessageStatus {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.rank().cmp(&other.rank())
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Envelope message id (see kabar-crypto `MessageId`).
    pub id: [u8; 16],
    /// Ours or theirs.
    pub direction: Direction,
    /// Sender's timestamp, Unix milliseconds.
    pub sent_at_ms: u64,
    /// When we stored an incoming message, Unix milliseconds.
    pub received_at_ms: Option<u64>,
    /// Delivery status.
    pub status: MessageStatus,
    /// The message content (the node's encoded content: text, catalog, order…).
    /// (`serde_bytes`: the same postcard bytes as a sequence of `u8`,
    /// written at once instead of byte by byte.)
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

/// An envelope waiting for the recipient's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// Recipient.
    pub contact: ContactId,
    /// Message id of the envelope.
    pub message_id: [u8; 16],
    /// The message's sequence number in its conversation (keeps the outbox
    /// in the order messages were written).
    pub seq: u64,
    /// The encoded envelope, exactly as it must be (re)sent.
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    /// When it was queued, Unix milliseconds.
    pub queued_at_ms: u64,
    /// Delivery attempts so far.
    pub attempts: u32,
    /// Earliest time of the next attempt, Unix milliseconds.
    pub next_attempt_at_ms: u64,
    /// The id the message is known by (its record's id, the one the user
    /// saw) when this envelope is a re-encryption with another id. Schema 5.
    pub shown_as: Option<[u8; 16]>,
    /// How many times the message was encrypted again after the recipient
    /// reported its key gone. Schema 5.
    pub resends: u32,
}

impl OutboxEntry {
    /// The id the user knows the message by.
    pub fn shown_id(&self) -> [u8; 16] {
        self.shown_as.unwrap_or(self.message_id)
    }
}

/// An outbox entry as schema 4 and earlier stored it: read only by the
/// migration to schema 5.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct OutboxEntryV4 {
    pub contact: ContactId,
    pub message_id: [u8; 16],
    pub seq: u64,
    pub envelope: Vec<u8>,
    pub queued_at_ms: u64,
    pub attempts: u32,
    pub next_attempt_at_ms: u64,
}

impl From<OutboxEntryV4> for OutboxEntry {
    fn from(e: OutboxEntryV4) -> Self {
        OutboxEntry {
            contact: e.contact,
            message_id: e.message_id,
            seq: e.seq,
            envelope: e.envelope,
            queued_at_ms: e.queued_at_ms,
            attempts: e.attempts,
            next_attempt_at_ms: e.next_attempt_at_ms,
            shown_as: None,
            resends: 0,
        }
    }
}

/// Open or closed: business conversations close after the transaction; a
/// new message reopens them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConversationStatus {
    /// Active.
    Open,
    /// Closed by the business.
    Closed,
}

/// Per-conversation state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Conversation {
    /// Next message sequence number in this conversation.
    pub next_seq: u64,
    /// Incoming messages not yet read.
    pub unread: u32,
    /// Applied label ids.
    pub labels: Vec<[u8; 16]>,
    /// Open or closed.
    pub status: ConversationStatus,
    /// Time of the last message either way, Unix milliseconds.
    pub last_activity_ms: u64,
    /// Time of the last incoming message, Unix milliseconds (for greetings
    /// after 14 days of silence).
    pub last_incoming_ms: Option<u64>,
    /// Start of the away period in which the away message was last sent.
    pub away_sent_for_ms: Option<u64>,
}

impl Default for Conversation {
    fn default() -> Self {
        Conversation {
            next_seq: 0,
            unread: 0,
            labels: Vec::new(),
            status: ConversationStatus::Open,
            last_activity_ms: 0,
            last_incoming_ms: None,
            away_sent_for_ms: None,
        }
    }
}

// ---- Business ----------------------------------------------------------------

/// Longest "about" line, in characters (as WhatsApp Business).
pub const MAX_ABOUT: usize = 139;
/// Longest business description, in characters.
pub const MAX_DESCRIPTION: usize = 512;
/// Longest short text field (name, category, address, email, website), in characters.
pub const MAX_SHORT_FIELD: usize = 256;
/// Most labels a business profile may define.
pub const MAX_LABELS: usize = 20;
/// Longest quick-reply text, in characters.
pub const MAX_QUICK_REPLY: usize = 4096;
/// Longest greeting or away message, in characters.
pub const MAX_AUTOMATIC_MESSAGE: usize = 1024;

fn check_len(field: &str, value: &str, max: usize) -> Result<(), StoreError> {
    let len = value.chars().count();
    if len > max {
        return Err(StoreError::Invalid(format!("{field} is {len} characters; at most {max} allowed")));
    }
    Ok(())
}

/// The public face of a business.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessProfile {
    /// Business name.
    pub name: String,
    /// Category ("Bakery", "Repair shop"…).
    pub category: String,
    /// One line, at most 139 characters.
    pub about: String,
    /// At most 512 characters.
    pub description: String,
    /// Street address.
    pub address: String,
    /// Contact e-mail.
    pub email: String,
    /// Web site.
    pub website: String,
}

impl BusinessProfile {
    /// Checks every field's length; the error names the field.
    pub fn validate(&self) -> Result<(), StoreError> {
        check_len("name", &self.name, MAX_SHORT_FIELD)?;
        check_len("category", &self.category, MAX_SHORT_FIELD)?;
        check_len("about", &self.about, MAX_ABOUT)?;
        check_len("description", &self.description, MAX_DESCRIPTION)?;
        check_len("address", &self.address, MAX_SHORT_FIELD)?;
        check_len("email", &self.email, MAX_SHORT_FIELD)?;
        check_len("website", &self.website, MAX_SHORT_FIELD)?;
        if !self.email.is_empty() && !self.email.contains('@') {
            return Err(StoreError::Invalid(format!("email {:?} has no '@'", self.email)));
        }
        Ok(())
    }
}

/// Opening hours: for each weekday (0 = Monday … 6 = Sunday) an optional
/// window in minutes since local midnight, `open < close ≤ 1440`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BusinessHours {
    /// Windows by weekday, Monday first. `None` = closed that day.
    pub days: [Option<(u16, u16)>; 7],
    /// Offset of the business's local time from UTC, in minutes.
    pub utc_offset_minutes: i16,
}

impl BusinessHours {
    /// Checks every window.
    pub fn validate(&self) -> Result<(), StoreError> {
        for (day, window) in self.days.iter().enumerate() {
            if let Some((open, close)) = window
                && !(open < close && *close <= 1440)
            {
                return Err(StoreError::Invalid(format!(
                    "day {day}: opening {open} must be before closing {close} (≤ 1440)"
                )));
            }
        }
        if self.utc_offset_minutes.unsigned_abs() > 14 * 60 {
            return Err(StoreError::Invalid("UTC offset beyond ±14 hours".into()));
        }
        Ok(())
    }

    /// True if the business is open at `unix_ms`.
    pub fn is_open_at(&self, unix_ms: u64) -> bool {
        let local_min = (unix_ms / 60_000) as i64 + i64::from(self.utc_offset_minutes);
        let day_index = local_min.div_euclid(1440);
        // 1970-01-01 was a Thursday (index 3 with Monday = 0).
        let weekday = (day_index + 3).rem_euclid(7) as usize;
        let minute = local_min.rem_euclid(1440) as u16;
        matches!(self.days[weekday], Some((open, close)) if minute >= open && minute < close)
    }
}

/// When the away message is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AwaySchedule {
    /// Never.
    Off,
    /// Always.
    Always,
    /// Outside the business hours.
    OutsideHours,
    /// Inside a daily window `[start, end)` in local minutes (may wrap midnight).
    Window {
        /// Start, minutes since local midnight.
        start: u16,
        /// End, minutes since local midnight.
        end: u16,
    },
}

/// Automatic messages of a business profile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Automations {
    /// Sent on a customer's first message, and after 14 days of silence.
    pub greeting: Option<String>,
    /// Sent when away, once per away period per conversation.
    pub away_message: Option<String>,
    /// When "away" applies.
    pub away_schedule: AwaySchedule,
}

impl Default for Automations {
    fn default() -> Self {
        Automations { greeting: None, away_message: None, away_schedule: AwaySchedule::Off }
    }
}

impl Automations {
    /// Checks message lengths and the window.
    pub fn validate(&self) -> Result<(), StoreError> {
        if let Some(text) = &self.greeting {
            check_len("greeting", text, MAX_AUTOMATIC_MESSAGE)?;
        }
        if let Some(text) = &self.away_message {
            check_len("away message", text, MAX_AUTOMATIC_MESSAGE)?;
        }
        if let AwaySchedule::Window { start, end } = self.away_schedule
            && (start >= 1440 || end > 1440 || start == end)
        {
            return Err(StoreError::Invalid("away window must be two different times of day".into()));
        }
        Ok(())
    }
}

/// A catalog item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogItem {
    /// Item id (random, shown to customers).
    pub id: [u8; 8],
    /// Item name.
    pub name: String,
    /// Price in minor units (cents).
    pub price_minor: u64,
    /// ISO 4217 currency code, three upper-case letters.
    pub currency: String,
    /// Description.
    pub description: String,
    /// Whether it can be ordered now.
    pub available: bool,
}

impl CatalogItem {
    /// Checks name, currency and description.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.name.trim().is_empty() {
            return Err(StoreError::Invalid("catalog item needs a name".into()));
        }
        check_len("item name", &self.name, MAX_SHORT_FIELD)?;
        check_len("item description", &self.description, MAX_DESCRIPTION)?;
        if self.currency.len() != 3 || !self.currency.chars().all(|c| c.is_ascii_uppercase()) {
            return Err(StoreError::Invalid(format!(
                "currency {:?} is not an ISO 4217 code such as EUR",
                self.currency
            )));
        }
        Ok(())
    }
}

/// A quick reply: `/shortcut` expands to `text`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuickReply {
    /// Shortcut without the slash: 1–32 characters `[a-z0-9_-]`.
    pub shortcut: String,
    /// The text it expands to.
    pub text: String,
}

impl QuickReply {
    /// Checks shortcut and text.
    pub fn validate(&self) -> Result<(), StoreError> {
        let ok = !self.shortcut.is_empty()
            && self.shortcut.len() <= 32
            && self.shortcut.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            return Err(StoreError::Invalid(format!(
                "shortcut {:?}: use 1-32 characters a-z, 0-9, '-' or '_' (without the slash)",
                self.shortcut
            )));
        }
        if self.text.is_empty() {
            return Err(StoreError::Invalid("quick reply text is empty".into()));
        }
        check_len("quick reply", &self.text, MAX_QUICK_REPLY)
    }
}

/// A label a business applies to conversations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Label {
    /// Label id (random).
    pub id: [u8; 16],
    /// Name, 1–32 characters.
    pub name: String,
    /// Colour as `#rrggbb`.
    pub colour: String,
}

impl Label {
    /// Checks name and colour.
    pub fn validate(&self) -> Result<(), StoreError> {
        if self.name.trim().is_empty() {
            return Err(StoreError::Invalid("label needs a name".into()));
        }
        check_len("label name", &self.name, 32)?;
        let c = self.colour.as_bytes();
        if c.len() != 7 || c[0] != b'#' || !c[1..].iter().all(u8::is_ascii_hexdigit) {
            return Err(StoreError::Invalid(format!("colour {:?} is not #rrggbb", self.colour)));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn business_profile_limits() {
        let mut p = BusinessProfile { name: "Bakery".into(), about: "x".repeat(MAX_ABOUT), ..Default::default() };
        p.validate().unwrap();
        p.about.push('x');
        let err = p.validate().unwrap_err().to_string();
        assert!(err.contains("about") && err.contains("140") && err.contains("139"), "{err}");
        p.about.clear();
        p.description = "é".repeat(MAX_DESCRIPTION);
        p.validate().unwrap();
        p.description.push('é');
        assert!(p.validate().is_err());
    }

    #[test]
    fn hours() {
        let mut h = BusinessHours::default();
        h.days[3] = Some((9 * 60, 17 * 60)); // Thursday
        h.validate().unwrap();
        // 1970-01-01 (a Thursday) 10:00 UTC and 18:00 UTC.
        assert!(h.is_open_at(10 * 3_600_000));
        assert!(!h.is_open_at(18 * 3_600_000));
        // Friday 10:00: closed.
        assert!(!h.is_open_at((24 + 10) * 3_600_000));
        h.days[0] = Some((600, 500));
        assert!(h.validate().is_err());
    }

    #[test]
    fn catalog_and_labels() {
        let mut item = CatalogItem {
            id: [0; 8],
            name: "Sourdough".into(),
            price_minor: 450,
            currency: "EUR".into(),
            description: String::new(),
            available: true,
        };
        item.validate().unwrap();
        item.currency = "euro".into();
        assert!(item.validate().is_err());
        let mut label = Label { id: [0; 16], name: "New customer".into(), colour: "#22aa44".into() };
        label.validate().unwrap();
        label.colour = "green".into();
        assert!(label.validate().is_err());
        assert!(QuickReply { shortcut: "Thanks!".into(), text: "x".into() }.validate().is_err());
    }
}
