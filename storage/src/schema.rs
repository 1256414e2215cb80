//! Every table of a profile database, in one place, and the schema version.
//!
//! Keys are opaque: fixed strings (meta, secrets, business settings), numbers
//! (prekey ids), keyed hashes (contact and conversation ids, quick-reply
//! shortcuts), random ids (catalog items, labels) or envelope message ids.
//! Never a name or any text a user typed. Values marked *sealed* are
//! XChaCha20-Poly1305 records (see `seal.rs`).

use redb::TableDefinition;

/// The schema this build writes. Version history:
/// - 1: first layout.
/// - 2: adds `message_index` (message id → position), so statuses and
///   acknowledgements find a message without scanning. Migration 1 → 2
///   rebuilds it from `messages`.
/// - 3: adds `deposited` and `contact_mailboxes` (offline mailboxes).
///   Migration 2 → 3 creates them empty.
/// - 4: adds `contact_names` (keyed name index, so a lookup by name opens
///   only the contacts of that name) and `strangers` (pending message
///   requests, bounded). Migration 3 → 4 indexes every contact's name and
///   makes every contact still marked `request` a pending stranger, oldest
///   `added_at_ms` first, with a byte count of 0 (the bytes it sent before
///   were not counted).
/// - 5: protocol version 2. Contacts gain `one_time_prekey` (fetched
///   online), outbox entries `shown_as` and `resends`; `meta` gains the
///   one-time prekey hand-out mark; `message_aliases` is new. Migration
///   4 → 5 rewrites every contact, deletes every session (version 1
///   sessions cannot be used by version 2) and keeps the outbox, whose
///   version 1 envelopes the engine encrypts again from their plaintext.
/// - 6: statuses apart from the sealed bodies, and one id table. New
///   `message_status` (position → sealed direction and status: a status
///   change seals two bytes, not the record); `message_index` values say
///   what an id names (`index.rs`), received ids included, so `received` is
///   gone; received ids with no stored message can be pruned after 30 days.
///   Migration 5 → 6 writes a status row per message (from its record),
///   rewrites every index row (aliases from `message_aliases`, received
///   ones from `received`, with their times), keeps every other received id
///   as a row of its own, and deletes `received`.
/// - 7: skipped message keys apart from the session snapshots (version 3
///   snapshots), one row each in `skipped_keys` and `skipped_order`
///   (`skipped.rs`), so a message no longer rewrites up to 2,000 keys.
///   Migration 6 → 7 rewrites every session row without its keys and
///   writes each key as a row, oldest first.
/// - 8: status rows beside their records: a message's status row is in
///   `messages` under its position ‖ `s` (0x73), so storing a message
///   dirties the pages of one table, not two, and a history page is one
///   range scan. Migration 7 → 8 moves (seals again) every
///   `message_status` row and deletes the table.
pub const SCHEMA_VERSION: u32 = 8;

/// Key of the schema version (u32 BE, clear) in [`META`].
pub(crate) const META_SCHEMA: &str = "schema_version";
/// Key of the sealed key check (the profile name and kind) in [`META`].
pub(crate) const META_PROFILE: &str = "profile";
/// Key of the current signed prekey id (u32 BE, clear) in [`META`].
pub(crate) const META_CURRENT_SPK: &str = "current_signed_prekey";
/// Key of the next one-time prekey id (u32 BE, clear) in [`META`].
pub(crate) const META_NEXT_OPK: &str = "next_one_time_prekey";
/// Key of the lowest one-time prekey id not handed out yet (u32 BE, clear)
/// in [`META`]; absent means 0. Schema 5.
pub(crate) const META_NEXT_OFFER_OPK: &str = "next_offer_one_time_prekey";
/// Key of the next stranger admission number (u64 BE, clear) in [`META`]:
/// strictly increasing, never reused. Schema 4.
pub(crate) const META_NEXT_STRANGER: &str = "next_stranger";
/// Key of the number of strangers evicted so far (u64 BE, clear) in
/// [`META`]. Schema 4.
pub(crate) const META_STRANGERS_EVICTED: &str = "strangers_evicted";

macro_rules! tables {
    ($($(#[$doc:meta])* $name:ident / $label:ident = $str:literal : <$k:ty, $v:ty>;)*) => {$(
        $(#[$doc])*
        pub(crate) const $name: TableDefinition<'static, $k, $v> = TableDefinition::new($str);
        #[doc = concat!("Name of the `", $str, "` table (for errors and associated data).")]
        #[allow(dead_code)]
        pub(crate) const $label: &str = $str;
    )*};
}

tables! {
    /// Schema version, key check, counters.
    META / META_NAME = "meta": <&'static str, &'static [u8]>;
    /// The identity key pair (sealed), under "identity".
    SECRETS / SECRETS_NAME = "secrets": <&'static str, &'static [u8]>;
    /// Signed prekeys by id (sealed).
    SIGNED_PREKEYS / SIGNED_PREKEYS_NAME = "signed_prekeys": <u32, &'static [u8]>;
    /// One-time prekeys by id (sealed); removed when used.
    ONE_TIME_PREKEYS / ONE_TIME_PREKEYS_NAME = "one_time_prekeys": <u32, &'static [u8]>;
    /// Contacts by contact id (sealed).
    CONTACTS / CONTACTS_NAME = "contacts": <&'static [u8], &'static [u8]>;
    /// Name index: keyed hash of a contact's display name ‖ contact id → ().
    /// One row per contact, kept in the transaction that names, renames or
    /// forgets it; several contacts may share a name (one prefix). Schema 4.
    CONTACT_NAMES / CONTACT_NAMES_NAME = "contact_names": <&'static [u8], ()>;
    /// Pending strangers (message requests not acted on): admission number
    /// (u64 BE) ‖ contact id → bytes of messages stored from it (clear:
    /// opaque ids and counts, no time, no name). At most one row per
    /// contact; oldest first. Schema 4.
    STRANGERS / STRANGERS_NAME = "strangers": <&'static [u8], u64>;
    /// Ratchet session snapshots by contact id (sealed).
    SESSIONS / SESSIONS_NAME = "sessions": <&'static [u8], &'static [u8]>;
    /// Skipped message keys: contact id ‖ session tag (8) ‖ chain tag (16)
    /// ‖ counter (u32 BE) → sealed (insertion number, message key). Tags
    /// are keyed hashes of the session's id and the sender's ratchet key.
    /// Schema 7.
    SKIPPED_KEYS / SKIPPED_KEYS_NAME = "skipped_keys": <&'static [u8], &'static [u8]>;
    /// The same keys oldest first: contact id ‖ session tag ‖ insertion
    /// number (u64 BE) ‖ chain tag ‖ counter → () (clear: opaque tags and
    /// counters). Schema 7.
    SKIPPED_ORDER / SKIPPED_ORDER_NAME = "skipped_order": <&'static [u8], ()>;
    /// Messages by conversation id ‖ sequence number (u64 BE) (sealed
    /// records), and since schema 8 each message's direction and status
    /// under the same key ‖ `s` (sealed `MessageState`, authoritative over
    /// the status inside the record), written with it and removed with it.
    MESSAGES / MESSAGES_NAME = "messages": <&'static [u8], &'static [u8]>;
    /// Message id → what it names (clear: a kind byte, opaque ids,
    /// positions and receive times; see `index.rs`): our message, a message
    /// received, another envelope id of our message, or a received id with
    /// nothing stored (a duplicate until pruned). Schema 2; this layout
    /// since schema 6 (before: the bare position).
    MESSAGE_INDEX / MESSAGE_INDEX_NAME = "message_index": <&'static [u8], &'static [u8]>;
    /// Schema 6 and 7: conversation id ‖ sequence number → the message's
    /// direction and status (sealed `MessageState`). Moved into `messages`
    /// and deleted by the migration to 8.
    MESSAGE_STATUS / MESSAGE_STATUS_NAME = "message_status": <&'static [u8], &'static [u8]>;
    /// The other envelope ids of messages encrypted again (or first
    /// encrypted after waiting for prekeys): contact id ‖ seq ‖ envelope id
    /// → () (clear: opaque ids), so forgetting a contact also removes their
    /// `message_index` rows. Schema 5.
    MESSAGE_ALIASES / MESSAGE_ALIASES_NAME = "message_aliases": <&'static [u8], ()>;
    /// Envelopes awaiting acknowledgement, by message id (sealed).
    OUTBOX / OUTBOX_NAME = "outbox": <&'static [u8], &'static [u8]>;
    /// Schema 5 and earlier: ids of messages received, with the time (Unix
    /// ms). Merged into `message_index` and deleted by the migration to 6.
    RECEIVED / RECEIVED_NAME = "received": <&'static [u8], u64>;
    /// Outbox entries a recipient's mailbox holds: message id → when it was
    /// deposited (Unix ms, clear: opaque ids). Schema 3.
    DEPOSITED / DEPOSITED_NAME = "deposited": <&'static [u8], u64>;
    /// Per-contact mailbox state by contact id (sealed). Schema 3.
    CONTACT_MAILBOXES / CONTACT_MAILBOXES_NAME = "contact_mailboxes": <&'static [u8], &'static [u8]>;
    /// Per-conversation state by conversation id (sealed).
    CONVERSATIONS / CONVERSATIONS_NAME = "conversations": <&'static [u8], &'static [u8]>;
    /// Business profile, hours and automations (sealed), by fixed key.
    BUSINESS / BUSINESS_NAME = "business": <&'static str, &'static [u8]>;
    /// Catalog items by item id (sealed).
    CATALOG / CATALOG_NAME = "catalog": <&'static [u8], &'static [u8]>;
    /// Quick replies by keyed hash of the shortcut (sealed).
    QUICK_REPLIES / QUICK_REPLIES_NAME = "quick_replies": <&'static [u8], &'static [u8]>;
    /// Labels by label id (sealed).
    LABELS / LABELS_NAME = "labels": <&'static [u8], &'static [u8]>;
}
