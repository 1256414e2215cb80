//! [`ProfileStore`]: one profile's encrypted redb database.
//!
//! The atomic write rules live here:
//! - [`ProfileStore::commit_outgoing`]: ratchet state, message record and
//!   outbox entry in ONE durable transaction, committed before the envelope
//!   leaves the node;
//! - [`ProfileStore::commit_incoming`]: decrypted message, ratchet state,
//!   received id (its `message_index` row) and the consumed one-time prekey
//!   in ONE durable transaction, committed before the acknowledgement goes
//!   out; a duplicate id is reported, never stored twice.
//!
//! Both take batches, so many messages share one fsync.
//!
//! And the rules that keep derived tables exact:
//! - the name index (`contact_names`) changes in the transaction that
//!   names, renames or forgets a contact;
//! - [`ProfileStore::forget_contact`] removes a contact and everything about
//!   it (but its received ids) in one transaction;
//! - a message's status lives in `message_status` (written with the
//!   message, changed alone: a few sealed bytes), never re-sealed into the
//!   message record;
//! - [`ProfileStore::prune_received`] drops received ids with no stored
//!   message after [`RECEIVED_WINDOW_MS`], a bounded number per call.
//! - [`ProfileStore::admit_stranger`] keeps pending strangers within
//!   [`StrangerLimits`], forgetting the oldest in the same transaction.

use std::path::{Path, PathBuf};

use kabar_crypto::{
    IdentityKeyPair, IdentityPublic, OneTimePrekey, OneTimePrekeyPublic, PrekeyBundle, ProfileKind, SignedPrekey,
};
use rand_core::CryptoRng;
use redb::{
    Database, DatabaseError, ReadTransaction, ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StoreError;
use crate::index::{IndexRow, MessageState, Position, RECEIVED_WINDOW_MS, STATUS_SUFFIX, status_key};
use crate::model::*;
use crate::schema::*;
use crate::seal::{RecordKeys, random_bytes};
use crate::skipped::SkippedKeyChanges;

/// One-time prekeys made with a new profile.
pub const INITIAL_ONE_TIME_PREKEYS: u32 = 100;

/// redb's page cache per open profile (its read cache and write buffer),
/// instead of redb's default of 1 GiB. A profile's working set is its
/// tables' upper B-tree levels, the sessions and conversations in use and
/// the latest pages of the conversations open; older pages come back from
/// the kernel's page cache, which memory pressure can take back. Measured
/// against the default on a store of 1,000,000 messages in
/// docs/BENCHMARKS.md ("Send and receive cost as history grows").
pub const PROFILE_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// A message to commit with its ratchet step and outbox entry.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    /// Recipient.
    pub contact: ContactId,
    /// The session state after encrypting this message; `None` for a message
    /// kept unencrypted (empty `envelope`) until the contact's prekeys
    /// arrive, which leaves the session as it is.
    pub session: Option<SessionState>,
    /// The message record (status `Queued`).
    pub message: MessageRecord,
    /// The encoded envelope.
    pub envelope: Vec<u8>,
}

/// A decrypted message to commit with its ratchet step.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    /// Sender.
    pub contact: ContactId,
    /// The session state after decrypting this message, or `None` when a
    /// later item of the same batch carries it (a receiver decrypts a whole
    /// request on one working copy and hands over its state once). The
    /// last state given for a contact is the one written.
    pub session: Option<SessionState>,
    /// The message record; `None` for content that is not shown in the
    /// conversation (read receipts), whose session step and id still commit.
    pub message: Option<MessageRecord>,
    /// The one-time prekey the message's X3DH used, deleted in the same
    /// transaction.
    pub consumed_one_time_prekey: Option<u32>,
    /// The envelope's message id (the same as `message.id` when there is a
    /// message).
    pub received_id: [u8; 16],
}

impl IncomingMessage {
    /// The envelope's message id.
    pub fn id(&self) -> [u8; 16] {
        self.message.as_ref().map_or(self.received_id, |m| m.id)
    }
}

/// One change a receipt made: the id it named, the id of the message record
/// it reached (the id the user knows), and the new status.
pub type ReceiptChange = ([u8; 16], [u8; 16], MessageStatus);

/// What [`ProfileStore::commit_incoming`] did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveOutcome {
    /// Stored, as sequence number `seq` of its conversation if it has a
    /// visible message.
    Stored {
        /// Position in the conversation.
        seq: Option<u64>,
    },
    /// Already received before: nothing stored; acknowledge it again.
    Duplicate,
}

/// Everything one inbound request from one contact changes, committed by
/// [`ProfileStore::commit_inbound`] in ONE durable transaction: a crash
/// leaves all of it or none of it.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The sender.
    pub contact: ContactId,
    /// Its contact record, upserted first: a new stranger, or a known
    /// contact's new identity (empty name: the name stays).
    pub record: Option<Contact>,
    /// The decrypted messages (as for [`ProfileStore::commit_incoming`]).
    pub messages: Vec<IncomingMessage>,
    /// Receipts among them (as for [`ProfileStore::apply_receipt`]).
    pub receipts: Vec<Receipt>,
    /// The sender's mailboxes, replacing those known.
    pub mailboxes: Option<Vec<ContactMailbox>>,
    /// The sender's addresses, replacing those known (ignored if empty).
    pub addresses: Option<Vec<String>>,
    /// Automatic replies (a business's greeting, away message, catalog),
    /// committed as by [`ProfileStore::commit_outgoing`] after the messages;
    /// the session of the last one is the one written.
    pub replies: Vec<OutgoingMessage>,
    /// The away period the replies answered (one away message per period).
    pub away_sent_for_ms: Option<u64>,
    /// A label `(name, colour)` to put on the conversation, created if no
    /// label has that name (none if the business is at [`MAX_LABELS`]).
    pub label: Option<(String, String)>,
    /// The sender is a pending stranger: counted with the bytes of what was
    /// stored, within these limits (as by [`ProfileStore::admit_stranger`]).
    pub stranger: Option<StrangerLimits>,
    /// The changes to the sender's skipped message keys made while
    /// decrypting `messages` (keys added, used, evicted), written with the
    /// session state.
    pub skipped: SkippedKeyChanges,
}

/// A receipt's ids of our messages: read, and delivered.
#[derive(Debug, Clone, Default)]
pub struct Receipt {
    /// Ids read.
    pub read: Vec<[u8; 16]>,
    /// Ids delivered.
    pub delivered: Vec<[u8; 16]>,
}

impl Inbound {
    /// Nothing yet from `contact`.
    pub fn new(contact: ContactId) -> Self {
        Inbound {
            contact,
            record: None,
            messages: Vec::new(),
            receipts: Vec::new(),
            mailboxes: None,
            addresses: None,
            replies: Vec::new(),
            away_sent_for_ms: None,
            label: None,
            stranger: None,
            skipped: SkippedKeyChanges::new(contact),
        }
    }
}

/// What [`ProfileStore::commit_inbound`] did.
#[derive(Debug, Clone, Default)]
pub struct InboundOutcome {
    /// One outcome per message.
    pub messages: Vec<ReceiveOutcome>,
    /// The record upserted recorded a new identity.
    pub identity_change: Option<IdentityChange>,
    /// What the receipts changed.
    pub receipts: Vec<ReceiptChange>,
    /// The known addresses changed.
    pub addresses_changed: bool,
    /// Each reply's sequence number.
    pub replies: Vec<u64>,
    /// Pending strangers forgotten to stay within the limits (possibly the
    /// sender itself, with everything just stored).
    pub evicted: Vec<ContactId>,
}

/// What a batch commit writes once per contact at its end: the session after
/// the contact's last message in the batch, and the conversation state.
#[derive(Default)]
struct BatchState<'a> {
    sessions: std::collections::HashMap<ContactId, &'a SessionState>,
    conversations: std::collections::HashMap<ContactId, Conversation>,
}

/// One profile's encrypted database.
pub struct ProfileStore {
    pub(crate) db: Database,
    pub(crate) keys: RecordKeys,
    name: String,
    kind: ProfileKind,
    path: PathBuf,
    /// Inside a commit group ([`ProfileStore::begin_group`]): writes are
    /// not durable until [`ProfileStore::end_group`].
    grouped: std::sync::atomic::AtomicBool,
    /// Why the store may not be written any more (damage, or an I/O error
    /// redb does not recover from), once its owner found out.
    broken: std::sync::Mutex<Option<String>>,
    /// A commit outside a group was not made durable, and no durable commit
    /// has followed it yet ([`ProfileStore::make_durable`]).
    not_durable: std::sync::atomic::AtomicBool,
    /// The last `message_index` key [`ProfileStore::prune_received`] read
    /// (`None`: start from the first). In memory: a restart starts over.
    prune_cursor: std::sync::Mutex<Option<Vec<u8>>>,
}

impl std::fmt::Debug for ProfileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileStore")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("path", &self.path)
            .finish()
    }
}

/// The key check in [`META`]: which profile the file belongs to.
#[derive(Serialize, serde::Deserialize)]
pub(crate) struct ProfileCheck {
    pub(crate) name: String,
    pub(crate) kind: ProfileKind,
}

pub(crate) fn map_open_error(path: &Path, error: DatabaseError) -> StoreError {
    match error {
        DatabaseError::DatabaseAlreadyOpen => StoreError::InUse(path.to_path_buf()),
        // Not a database, or shorter than the database it holds says.
        DatabaseError::Storage(redb::StorageError::Io(io))
            if matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::UnexpectedEof) =>
        {
            StoreError::Corrupted { path: path.to_path_buf(), reason: io.to_string() }
        }
        DatabaseError::Storage(redb::StorageError::Io(io)) => StoreError::io(format!("opening {}", path.display()), io),
        other => StoreError::Corrupted { path: path.to_path_buf(), reason: other.to_string() },
    }
}

/// The last possible `message_aliases` key of a contact.
fn alias_key_max(contact: &ContactId) -> [u8; 40] {
    let mut key = [0xffu8; 40];
    key[..16].copy_from_slice(&contact.0);
    key
}

fn seq_key(contact: &ContactId, seq: u64) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..16].copy_from_slice(&contact.0);
    key[16..].copy_from_slice(&seq.to_be_bytes());
    key
}

/// The `message_index` row of `id`, parsed; a row of no known shape is
/// [`StoreError::MalformedRecord`].
fn index_row(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    id: &[u8],
) -> Result<Option<IndexRow>, StoreError> {
    match table.get(id)? {
        Some(v) => {
            IndexRow::decode(v.value()).map(Some).ok_or(StoreError::MalformedRecord { table: MESSAGE_INDEX_NAME })
        }
        None => Ok(None),
    }
}

/// The tables a status change reads and writes, opened once per
/// transaction.
struct StatusTables<'tx> {
    index: redb::Table<'tx, &'static [u8], &'static [u8]>,
    /// Records and their status rows.
    messages: redb::Table<'tx, &'static [u8], &'static [u8]>,
}

impl<'tx> StatusTables<'tx> {
    fn open(tx: &'tx WriteTransaction) -> Result<Self, StoreError> {
        Ok(StatusTables { index: tx.open_table(MESSAGE_INDEX)?, messages: tx.open_table(MESSAGES)? })
    }
}

fn u32_value(bytes: &[u8]) -> Option<u32> {
    <[u8; 4]>::try_from(bytes).ok().map(u32::from_be_bytes)
}

fn u64_value(bytes: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(bytes).ok().map(u64::from_be_bytes)
}

/// Key of a pending stranger in [`STRANGERS`]: admission number ‖ contact id.
fn stranger_key(admitted: u64, contact: &ContactId) -> [u8; 24] {
    let mut key = [0u8; 24];
    key[..8].copy_from_slice(&admitted.to_be_bytes());
    key[8..].copy_from_slice(&contact.0);
    key
}

/// One pending stranger: admission number, contact, bytes stored from it.
struct StrangerRow {
    admitted: u64,
    contact: ContactId,
    bytes: u64,
}

/// Every row of [`STRANGERS`], oldest first (clear keys, nothing to open).
fn stranger_rows(table: &impl ReadableTable<&'static [u8], u64>) -> Result<Vec<StrangerRow>, StoreError> {
    let mut rows = Vec::new();
    for row in table.iter()? {
        let (key, bytes) = row?;
        let key = key.value();
        let (Some(admitted), Some(contact)) =
            (key.get(..8).and_then(u64_value), key.get(8..).and_then(|c| <[u8; 16]>::try_from(c).ok()))
        else {
            return Err(StoreError::MalformedRecord { table: STRANGERS_NAME });
        };
        rows.push(StrangerRow { admitted, contact: ContactId(contact), bytes: bytes.value() });
    }
    Ok(rows)
}

/// Removes a contact's row from [`STRANGERS`]; returns whether it had one.
fn remove_stranger(tx: &WriteTransaction, contact: &ContactId) -> Result<bool, StoreError> {
    let mut table = tx.open_table(STRANGERS)?;
    let Some(row) = stranger_rows(&table)?.into_iter().find(|r| r.contact == *contact) else { return Ok(false) };
    table.remove(stranger_key(row.admitted, contact).as_slice())?;
    Ok(true)
}

/// Adds `by` to a u64 BE counter in [`META`].
fn add_to_counter(tx: &WriteTransaction, key: &str, by: u64) -> Result<u64, StoreError> {
    let mut meta = tx.open_table(META)?;
    let value = meta.get(key)?.and_then(|v| u64_value(v.value())).unwrap_or(0).saturating_add(by);
    meta.insert(key, value.to_be_bytes().as_slice())?;
    Ok(value)
}

impl ProfileStore {
    /// Creates a new profile database at `path` with a fresh identity, signed
    /// prekey 1 and [`INITIAL_ONE_TIME_PREKEYS`] one-time prekeys.
    pub(crate) fn create<R: CryptoRng + ?Sized>(
        path: &Path,
        name: &str,
        kind: ProfileKind,
        data_key: &[u8; 32],
        now: u64,
        rng: &mut R,
    ) -> Result<Self, StoreError> {
        // An empty file, owner-only from the start, that redb then
        // initialises (it keeps the file's mode).
        drop(
            crate::header::create_private(path)
                .map_err(|e| StoreError::io(format!("creating {}", path.display()), e))?,
        );
        let db = redb::Builder::new()
            .set_cache_size(PROFILE_CACHE_BYTES)
            .create(path)
            .map_err(|e| map_open_error(path, e))?;
        let store = ProfileStore::assemble(db, path, name, kind, data_key)?;
        let identity = IdentityKeyPair::generate(kind, rng);
        let spk = SignedPrekey::generate(&identity, 1, now, rng);
        let opks = OneTimePrekey::generate_batch(1, INITIAL_ONE_TIME_PREKEYS, rng);
        store.write(|tx| {
            create_all_tables(tx)?;
            let mut meta = tx.open_table(META)?;
            meta.insert(META_SCHEMA, SCHEMA_VERSION.to_be_bytes().as_slice())?;
            let check =
                store.keys.seal(META_NAME, META_PROFILE.as_bytes(), &ProfileCheck { name: name.into(), kind })?;
            meta.insert(META_PROFILE, check.as_slice())?;
            meta.insert(META_CURRENT_SPK, 1u32.to_be_bytes().as_slice())?;
            meta.insert(META_NEXT_OPK, (INITIAL_ONE_TIME_PREKEYS + 1).to_be_bytes().as_slice())?;
            let sealed = store.keys.seal(SECRETS_NAME, b"identity", &identity)?;
            tx.open_table(SECRETS)?.insert("identity", sealed.as_slice())?;
            let sealed = store.keys.seal(SIGNED_PREKEYS_NAME, &1u32.to_be_bytes(), &spk)?;
            tx.open_table(SIGNED_PREKEYS)?.insert(1, sealed.as_slice())?;
            let mut table = tx.open_table(ONE_TIME_PREKEYS)?;
            for opk in &opks {
                let sealed = store.keys.seal(ONE_TIME_PREKEYS_NAME, &opk.id().to_be_bytes(), opk)?;
                table.insert(opk.id(), sealed.as_slice())?;
            }
            Ok(())
        })?;
        Ok(store)
    }

    /// Opens an existing profile database, migrating an older schema. The
    /// file is verified first without writing to it
    /// ([`ProfileStore::open_unwritten`]): a damaged file is refused with
    /// every byte as it was.
    pub(crate) fn open(path: &Path, name: &str, kind: ProfileKind, data_key: &[u8; 32]) -> Result<Self, StoreError> {
        crate::check::close(Self::open_unwritten(path, name, kind, data_key, true)?);
        Self::open_verified(path, name, kind, data_key)
    }

    /// Opens the database at `path` without writing a byte to it: redb
    /// works on a memory layer over the file (`check.rs`), so whatever this
    /// store writes, a migration included, never reaches the file. With
    /// `verify`, redb first checks the checksum of every page. Then the
    /// schema version and the key check are read, and an older schema is
    /// migrated (in memory), so a file this accepts opens and migrates for
    /// real. Damage is [`StoreError::Corrupted`] naming the file, never a
    /// panic.
    /// The store over an opened database, with nothing in flight.
    fn assemble(
        db: Database,
        path: &Path,
        name: &str,
        kind: ProfileKind,
        data_key: &[u8; 32],
    ) -> Result<Self, StoreError> {
        Ok(ProfileStore {
            db,
            keys: RecordKeys::derive(data_key)?,
            name: name.into(),
            kind,
            path: path.into(),
            grouped: std::sync::atomic::AtomicBool::new(false),
            broken: std::sync::Mutex::new(None),
            not_durable: std::sync::atomic::AtomicBool::new(false),
            prune_cursor: std::sync::Mutex::new(None),
        })
    }

    pub(crate) fn open_unwritten(
        path: &Path,
        name: &str,
        kind: ProfileKind,
        data_key: &[u8; 32],
        verify: bool,
    ) -> Result<Self, StoreError> {
        let db = crate::check::open_unwritten(path, verify)?;
        let store = ProfileStore::assemble(db, path, name, kind, data_key)?;
        crate::check::contained(path, || store.check_and_migrate())?;
        Ok(store)
    }

    /// Opens for real a database [`ProfileStore::open_unwritten`] accepted,
    /// migrating an older schema.
    pub(crate) fn open_verified(
        path: &Path,
        name: &str,
        kind: ProfileKind,
        data_key: &[u8; 32],
    ) -> Result<Self, StoreError> {
        let db = crate::check::contained(path, || {
            redb::Builder::new().set_cache_size(PROFILE_CACHE_BYTES).open(path).map_err(|e| map_open_error(path, e))
        })?;
        let store = ProfileStore::assemble(db, path, name, kind, data_key)?;
        crate::check::contained(path, || store.check_and_migrate())?;
        Ok(store)
    }

    /// Opens every record a node reads when it starts a profile (identity,
    /// current signed prekey, outbox, deposited marks, mailboxes, pending
    /// strangers, relays): a damaged one is reported here, before any file
    /// is written, as [`StoreError::Corrupted`] naming this file.
    pub(crate) fn verify_start_reads(&self) -> Result<(), StoreError> {
        let named = |e: StoreError| match e {
            StoreError::Corrupted { .. } => e.in_file(&self.path),
            e if e.is_damage() => StoreError::Corrupted { path: self.path.clone(), reason: e.to_string() },
            e => e,
        };
        let reads = || -> Result<(), StoreError> {
            self.identity()?;
            self.current_signed_prekey()?;
            self.outbox()?;
            self.deposited()?;
            self.mailboxes()?;
            self.strangers()?;
            self.strangers_evicted()?;
            self.relays()?;
            Ok(())
        };
        reads().map_err(named)
    }

    /// Reads the schema version (refusing a newer one) and the key check
    /// (the file is this profile's, and the data key opens it), then
    /// migrates an older schema.
    fn check_and_migrate(&self) -> Result<(), StoreError> {
        let corrupted = |reason: &str| StoreError::Corrupted { path: self.path.clone(), reason: reason.into() };
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META).map_err(|_| corrupted("not a Kabar profile database (no meta table)"))?;
        let version =
            meta.get(META_SCHEMA)?.and_then(|v| u32_value(v.value())).ok_or_else(|| corrupted("no schema version"))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::UnsupportedSchema { found: version, supported: SCHEMA_VERSION });
        }
        let check = meta.get(META_PROFILE)?.ok_or_else(|| corrupted("no profile check record"))?;
        let check: ProfileCheck = self.keys.open(META_NAME, META_PROFILE.as_bytes(), check.value()).map_err(|_| {
            corrupted("its key check does not open with this profile's key (damaged, or from another data directory)")
        })?;
        if check.name != self.name || check.kind != self.kind {
            return Err(corrupted("the database belongs to another profile"));
        }
        drop(meta);
        drop(tx);
        if version < SCHEMA_VERSION {
            self.migrate(version)?;
        }
        Ok(())
    }

    /// Brings a database from `from` up to [`SCHEMA_VERSION`] in one
    /// transaction.
    fn migrate(&self, from: u32) -> Result<(), StoreError> {
        self.write(|tx| {
            // Contacts as the old schema wrote them (read once, for every step).
            let old_contacts: Vec<(Vec<u8>, ContactV4)> =
                if from < 5 { self.all_sealed(&tx.open_table(CONTACTS)?, CONTACTS_NAME)? } else { Vec::new() };
            if from < 5 {
                tx.open_table(MESSAGE_ALIASES)?;
                // 4 → 5 (protocol version 2): contacts gain a fetched
                // one-time prekey (none yet); every session is a version 1
                // session, which version 2 cannot use, so all are dropped
                // (the next message starts a new X3DH). Outbox entries keep
                // their version 1 envelopes: the engine encrypts each again
                // from its stored plaintext when it starts.
                let mut table = tx.open_table(CONTACTS)?;
                for (key, contact) in &old_contacts {
                    self.put_sealed(&mut table, CONTACTS_NAME, key, &Contact::from(contact.clone()))?;
                }
                drop(table);
                let sessions: Vec<Vec<u8>> = tx
                    .open_table(SESSIONS)?
                    .iter()?
                    .map(|r| r.map(|(k, _)| k.value().to_vec()))
                    .collect::<Result<_, _>>()?;
                let mut table = tx.open_table(SESSIONS)?;
                for key in sessions {
                    table.remove(key.as_slice())?;
                }
                drop(table);
                let entries: Vec<(Vec<u8>, OutboxEntryV4)> = self.all_sealed(&tx.open_table(OUTBOX)?, OUTBOX_NAME)?;
                let mut table = tx.open_table(OUTBOX)?;
                for (key, entry) in entries {
                    self.put_sealed(&mut table, OUTBOX_NAME, &key, &OutboxEntry::from(entry))?;
                }
            }
            if from < 4 {
                // 3 → 4: index every name; every contact still marked
                // `request` becomes a pending stranger, oldest added first,
                // with 0 bytes (what it sent before was not counted).
                let contacts = &old_contacts;
                let mut names = tx.open_table(CONTACT_NAMES)?;
                let mut requests = Vec::new();
                for (key, contact) in contacts {
                    let id = <[u8; 16]>::try_from(key.as_slice())
                        .map_err(|_| StoreError::MalformedRecord { table: CONTACTS_NAME })?;
                    let id = ContactId(id);
                    names.insert(self.name_key(&contact.display_name, &id).as_slice(), ())?;
                    if contact.request {
                        requests.push((contact.added_at_ms, id));
                    }
                }
                drop(names);
                requests.sort();
                let mut strangers = tx.open_table(STRANGERS)?;
                let first = add_to_counter(tx, META_NEXT_STRANGER, requests.len() as u64)? - requests.len() as u64;
                for (admitted, (_, id)) in (first..).zip(&requests) {
                    strangers.insert(stranger_key(admitted, id).as_slice(), 0)?;
                }
            }
            if from < 3 {
                // 2 → 3: the mailbox tables, empty.
                tx.open_table(DEPOSITED)?;
                tx.open_table(CONTACT_MAILBOXES)?;
            }
            if from < 2 {
                // 1 → 2: build the message index from the messages.
                let messages = tx.open_table(MESSAGES)?;
                let mut index = tx.open_table(MESSAGE_INDEX)?;
                for row in messages.iter()? {
                    let (key, value) = row?;
                    let record: MessageRecord = self.keys.open(MESSAGES_NAME, key.value(), value.value())?;
                    index.insert(record.id.as_slice(), key.value())?;
                }
            }
            if from < 6 {
                // After 1 → 2: it needs the index in the schema 5 layout.
                self.migrate_to_6(tx)?;
            }
            if from < 7 {
                self.migrate_to_7(tx)?;
            }
            if from < 8 {
                // After 5 → 6, which writes the status rows this moves.
                self.migrate_to_8(tx)?;
            }
            tx.open_table(META)?.insert(META_SCHEMA, SCHEMA_VERSION.to_be_bytes().as_slice())?;
            Ok(())
        })
    }

    /// 6 → 7: every session row rewritten with version 3 snapshots, and
    /// the skipped keys they held written as rows of their own, oldest
    /// first (`skipped.rs`).
    fn migrate_to_7(&self, tx: &WriteTransaction) -> Result<(), StoreError> {
        tx.open_table(SKIPPED_KEYS)?;
        tx.open_table(SKIPPED_ORDER)?;
        let old: Vec<(Vec<u8>, SessionStateV6)> = self.all_sealed(&tx.open_table(SESSIONS)?, SESSIONS_NAME)?;
        for (key, state) in old {
            let contact = ContactId(
                <[u8; 16]>::try_from(key.as_slice())
                    .map_err(|_| StoreError::MalformedRecord { table: SESSIONS_NAME })?,
            );
            let mut changes = SkippedKeyChanges::new(contact);
            let mut upgrade =
                |old: kabar_crypto::SessionSnapshotV2| -> Result<kabar_crypto::SessionSnapshot, StoreError> {
                    let mut fallback = [0u8; 16];
                    random_bytes(&mut fallback)?;
                    let (snapshot, keys) =
                        old.upgrade(fallback).map_err(|_| StoreError::MalformedRecord { table: SESSIONS_NAME })?;
                    let added =
                        kabar_crypto::SkippedChange { used: None, added: keys.iter().cloned().collect(), evict: 0 };
                    changes.record(self, &snapshot.id(), added)?;
                    Ok(snapshot)
                };
            let current = upgrade(state.current)?;
            let previous = state.previous.into_iter().map(&mut upgrade).collect::<Result<Vec<_>, _>>()?;
            let state = SessionState { current, previous };
            self.put_sealed(&mut tx.open_table(SESSIONS)?, SESSIONS_NAME, &key, &state)?;
            changes.write_in(self, tx)?;
        }
        Ok(())
    }

    /// 7 → 8: every `message_status` row moved beside its record in
    /// `messages` (under [`status_key`], sealed again for its new table
    /// and key); a status row whose message is gone (only in a damaged
    /// store) is dropped; `message_status` deleted.
    fn migrate_to_8(&self, tx: &WriteTransaction) -> Result<(), StoreError> {
        let states: Vec<(Vec<u8>, MessageState)> =
            self.all_sealed(&tx.open_table(MESSAGE_STATUS)?, MESSAGE_STATUS_NAME)?;
        let mut messages = tx.open_table(MESSAGES)?;
        for (key, state) in states {
            let position: Position =
                key.as_slice().try_into().map_err(|_| StoreError::MalformedRecord { table: MESSAGE_STATUS_NAME })?;
            if messages.get(position.as_slice())?.is_some() {
                self.put_sealed(&mut messages, MESSAGES_NAME, &status_key(&position), &state)?;
            }
        }
        drop(messages);
        tx.delete_table(MESSAGE_STATUS)?;
        Ok(())
    }

    /// 5 → 6: a `message_status` row per message (its record's direction
    /// and status); every `message_index` row in the schema 6 layout (an
    /// id in `received` is a received message, one in `message_aliases`
    /// another envelope id of ours, any other our message); every received
    /// id with no index row a row of its own, with its time; `received`
    /// deleted.
    fn migrate_to_6(&self, tx: &WriteTransaction) -> Result<(), StoreError> {
        let malformed = |table| StoreError::MalformedRecord { table };
        // Each message's own id (the id the user knows), by position.
        let mut own_ids: std::collections::HashMap<Vec<u8>, [u8; 16]> = std::collections::HashMap::new();
        {
            let messages = tx.open_table(MESSAGES)?;
            let mut statuses = tx.open_table(MESSAGE_STATUS)?;
            for row in messages.iter()? {
                let (key, value) = row?;
                let record: MessageRecord = self.keys.open(MESSAGES_NAME, key.value(), value.value())?;
                let state = MessageState { direction: record.direction, status: record.status };
                self.put_sealed(&mut statuses, MESSAGE_STATUS_NAME, key.value(), &state)?;
                own_ids.insert(key.value().to_vec(), record.id);
            }
        }
        let aliases: std::collections::HashSet<Vec<u8>> = tx
            .open_table(MESSAGE_ALIASES)?
            .iter()?
            .map(|r| r.map(|(k, _)| k.value().to_vec()))
            .collect::<Result<_, _>>()?;
        let mut received: std::collections::BTreeMap<Vec<u8>, u64> = tx
            .open_table(RECEIVED)?
            .iter()?
            .map(|r| r.map(|(k, v)| (k.value().to_vec(), v.value())))
            .collect::<Result<_, _>>()?;
        let mut index = tx.open_table(MESSAGE_INDEX)?;
        let old: Vec<(Vec<u8>, Vec<u8>)> = index
            .iter()?
            .map(|r| r.map(|(k, v)| (k.value().to_vec(), v.value().to_vec())))
            .collect::<Result<_, _>>()?;
        for (id, value) in old {
            let position: Position = value.as_slice().try_into().map_err(|_| malformed(MESSAGE_INDEX_NAME))?;
            let alias_key = [value.as_slice(), id.as_slice()].concat();
            let row = if let Some(at) = received.remove(&id) {
                IndexRow::Incoming(position, at)
            } else if aliases.contains(&alias_key) {
                let id: [u8; 16] = id.as_slice().try_into().map_err(|_| malformed(MESSAGE_INDEX_NAME))?;
                IndexRow::Alias(position, own_ids.get(&value).copied().unwrap_or(id))
            } else {
                IndexRow::Outgoing(position)
            };
            index.insert(id.as_slice(), row.encode().as_slice())?;
        }
        // Received, nothing stored: receipts, and forgotten contacts' messages.
        for (id, at) in received {
            if id.len() != 16 {
                return Err(malformed(RECEIVED_NAME));
            }
            index.insert(id.as_slice(), IndexRow::Received(at).encode().as_slice())?;
        }
        drop(index);
        tx.delete_table(RECEIVED)?;
        Ok(())
    }

    /// Profile name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Profile kind.
    pub fn kind(&self) -> ProfileKind {
        self.kind
    }

    /// Database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    // ---- transactions -----------------------------------------------------

    /// Runs `f` in one durable write transaction; commits only if `f`
    /// succeeds. Inside a commit group the transaction commits at once but
    /// becomes durable only with the group ([`ProfileStore::end_group`]).
    fn write<T>(&self, f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let durability = if self.grouped.load(std::sync::atomic::Ordering::Relaxed) {
            redb::Durability::None
        } else {
            redb::Durability::Immediate
        };
        self.write_with(durability, f)
    }

    /// Starts a commit group (group commit, as databases do with their
    /// logs): the transactions that follow commit in order, each visible to
    /// the next, but none is durable until [`ProfileStore::end_group`] makes
    /// them all durable with one fsync. The caller holds back everything
    /// that depends on them (acknowledgements, envelopes, replies) until
    /// then; a crash before it loses the whole group and nothing else.
    pub fn begin_group(&self) {
        self.grouped.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Records that the store was found damaged or unusable (`reason`, the
    /// first one kept): its owner stops using it, and [`ProfileStore::end_group`]
    /// refuses to make anything durable.
    pub fn mark_broken(&self, reason: impl Into<String>) {
        let mut broken = self.broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        broken.get_or_insert_with(|| reason.into());
    }

    /// Why the store was marked broken ([`ProfileStore::mark_broken`]).
    pub fn broken(&self) -> Option<String> {
        self.broken.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Ends a commit group: one durable commit makes every transaction since
    /// [`ProfileStore::begin_group`] durable. An error means none of them
    /// may be relied on (nothing that depends on them may leave).
    pub fn end_group(&self) -> Result<(), StoreError> {
        self.grouped.store(false, std::sync::atomic::Ordering::Relaxed);
        if let Some(reason) = self.broken() {
            return Err(StoreError::Database(format!("not made durable: the store was found broken: {reason}")));
        }
        self.write_with(redb::Durability::Immediate, |_| Ok(()))
    }

    /// Runs `f` in one write transaction with the given durability.
    fn write_with<T>(
        &self,
        durability: redb::Durability,
        f: impl FnOnce(&WriteTransaction) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(durability)?;
        let out = f(&tx)?;
        tx.commit()?;
        let grouped = self.grouped.load(std::sync::atomic::Ordering::Relaxed);
        if matches!(durability, redb::Durability::Immediate) {
            self.not_durable.store(false, std::sync::atomic::Ordering::Relaxed);
        } else if !grouped {
            self.not_durable.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(out)
    }

    /// Makes durable what committed without an fsync outside a commit
    /// group (acknowledgements, delivery attempts), with one empty durable
    /// commit; nothing to do if nothing waits, or inside a group (its end
    /// does it). Returns whether it committed. The node calls it on every
    /// retry tick, so such a commit stays at risk for about 500 ms at most.
    pub fn make_durable(&self) -> Result<bool, StoreError> {
        if self.grouped.load(std::sync::atomic::Ordering::Relaxed)
            || !self.not_durable.load(std::sync::atomic::Ordering::Relaxed)
        {
            return Ok(false);
        }
        self.write_with(redb::Durability::Immediate, |_| Ok(()))?;
        Ok(true)
    }

    fn read(&self) -> Result<ReadTransaction, StoreError> {
        Ok(self.db.begin_read()?)
    }

    fn get_sealed<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<T>, StoreError> {
        match table.get(key)? {
            Some(value) => Ok(Some(self.keys.open(name, key, value.value())?)),
            None => Ok(None),
        }
    }

    fn put_sealed<T: Serialize>(
        &self,
        table: &mut redb::Table<'_, &'static [u8], &'static [u8]>,
        name: &'static str,
        key: &[u8],
        value: &T,
    ) -> Result<(), StoreError> {
        let sealed = self.keys.seal(name, key, value)?;
        table.insert(key, sealed.as_slice())?;
        Ok(())
    }

    /// Every record of a table, opened and sorted by `key`.
    fn list_sorted<T: DeserializeOwned, K: Ord>(
        &self,
        table: redb::TableDefinition<'static, &'static [u8], &'static [u8]>,
        name: &'static str,
        key: impl Fn(&T) -> K,
    ) -> Result<Vec<T>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(table)?;
        let mut items: Vec<T> = self.all_sealed(&table, name)?.into_iter().map(|(_, item)| item).collect();
        items.sort_by_key(|item| key(item));
        Ok(items)
    }

    fn all_sealed<T: DeserializeOwned>(
        &self,
        table: &impl ReadableTable<&'static [u8], &'static [u8]>,
        name: &'static str,
    ) -> Result<Vec<(Vec<u8>, T)>, StoreError> {
        let mut out = Vec::new();
        for row in table.iter()? {
            let (key, value) = row?;
            out.push((key.value().to_vec(), self.keys.open(name, key.value(), value.value())?));
        }
        Ok(out)
    }

    // ---- identity and prekeys ---------------------------------------------

    /// The profile's identity key pair.
    pub fn identity(&self) -> Result<IdentityKeyPair, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(SECRETS)?;
        let value = table.get("identity")?.ok_or_else(|| StoreError::NotFound("identity".into()))?;
        self.keys.open(SECRETS_NAME, b"identity", value.value())
    }

    /// A signed prekey by id (current or kept after rotation).
    pub fn signed_prekey(&self, id: u32) -> Result<Option<SignedPrekey>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(SIGNED_PREKEYS)?;
        match table.get(id)? {
            Some(v) => Ok(Some(self.keys.open(SIGNED_PREKEYS_NAME, &id.to_be_bytes(), v.value())?)),
            None => Ok(None),
        }
    }

    /// The current signed prekey.
    pub fn current_signed_prekey(&self) -> Result<SignedPrekey, StoreError> {
        let id = {
            let tx = self.read()?;
            let meta = tx.open_table(META)?;
            let v = meta.get(META_CURRENT_SPK)?.ok_or_else(|| StoreError::NotFound("current signed prekey".into()))?;
            u32_value(v.value()).ok_or(StoreError::MalformedRecord { table: META_NAME })?
        };
        self.signed_prekey(id)?.ok_or_else(|| StoreError::NotFound(format!("signed prekey {id}")))
    }

    /// Makes a new signed prekey current; older ones stay until
    /// [`ProfileStore::remove_signed_prekey`] so messages in flight still open.
    pub fn rotate_signed_prekey<R: CryptoRng + ?Sized>(
        &self,
        now: u64,
        rng: &mut R,
    ) -> Result<SignedPrekey, StoreError> {
        let identity = self.identity()?;
        let id = self.current_signed_prekey()?.id().wrapping_add(1);
        let spk = SignedPrekey::generate(&identity, id, now, rng);
        self.write(|tx| {
            let sealed = self.keys.seal(SIGNED_PREKEYS_NAME, &id.to_be_bytes(), &spk)?;
            tx.open_table(SIGNED_PREKEYS)?.insert(id, sealed.as_slice())?;
            tx.open_table(META)?.insert(META_CURRENT_SPK, id.to_be_bytes().as_slice())?;
            Ok(())
        })?;
        Ok(spk)
    }

    /// Deletes an old signed prekey (never the current one).
    pub fn remove_signed_prekey(&self, id: u32) -> Result<(), StoreError> {
        if self.current_signed_prekey()?.id() == id {
            return Err(StoreError::Invalid("cannot remove the current signed prekey".into()));
        }
        self.write(|tx| {
            tx.open_table(SIGNED_PREKEYS)?.remove(id)?;
            Ok(())
        })
    }

    /// A one-time prekey by id, if still unused.
    pub fn one_time_prekey(&self, id: u32) -> Result<Option<OneTimePrekey>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(ONE_TIME_PREKEYS)?;
        match table.get(id)? {
            Some(v) => Ok(Some(self.keys.open(ONE_TIME_PREKEYS_NAME, &id.to_be_bytes(), v.value())?)),
            None => Ok(None),
        }
    }

    /// Number of unused one-time prekeys.
    pub fn one_time_prekey_count(&self) -> Result<u64, StoreError> {
        Ok(self.read()?.open_table(ONE_TIME_PREKEYS)?.len()?)
    }

    /// Adds one-time prekeys until `target` are unused; returns how many were made.
    pub fn replenish_one_time_prekeys<R: CryptoRng + ?Sized>(
        &self,
        target: u32,
        rng: &mut R,
    ) -> Result<u32, StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(ONE_TIME_PREKEYS)?;
            let have = u32::try_from(table.len()?).unwrap_or(u32::MAX);
            if have >= target {
                return Ok(0);
            }
            let mut meta = tx.open_table(META)?;
            let next = meta.get(META_NEXT_OPK)?.and_then(|v| u32_value(v.value())).unwrap_or(1);
            let count = target - have;
            for opk in OneTimePrekey::generate_batch(next, count, rng) {
                let sealed = self.keys.seal(ONE_TIME_PREKEYS_NAME, &opk.id().to_be_bytes(), &opk)?;
                table.insert(opk.id(), sealed.as_slice())?;
            }
            meta.insert(META_NEXT_OPK, next.wrapping_add(count).to_be_bytes().as_slice())?;
            Ok(count)
        })
    }

    /// Hands out one one-time prekey, at most once ever: the lowest id not
    /// handed out yet is marked handed out in a durable transaction before it
    /// is returned (persist before answering). Its secret stays until a
    /// prekey message uses it, or until more than `max_issued` handed-out
    /// keys wait unused (the oldest are deleted then). `None` when the
    /// supply is empty.
    pub fn hand_out_one_time_prekey(&self, max_issued: u32) -> Result<Option<OneTimePrekeyPublic>, StoreError> {
        self.write(|tx| {
            let mut meta = tx.open_table(META)?;
            let next = meta.get(META_NEXT_OFFER_OPK)?.and_then(|v| u32_value(v.value())).unwrap_or(0);
            let mut table = tx.open_table(ONE_TIME_PREKEYS)?;
            let found = match table.range(next..)?.next() {
                Some(row) => {
                    let (id, v) = row?;
                    let opk: OneTimePrekey =
                        self.keys.open(ONE_TIME_PREKEYS_NAME, &id.value().to_be_bytes(), v.value())?;
                    Some(opk.public())
                }
                None => None,
            };
            let Some(public) = found else { return Ok(None) };
            meta.insert(META_NEXT_OFFER_OPK, public.id.saturating_add(1).to_be_bytes().as_slice())?;
            // Handed out and unused: ids below the new mark still in the table.
            let issued: Vec<u32> =
                table.range(..=public.id)?.map(|r| r.map(|(k, _)| k.value())).collect::<Result<_, _>>()?;
            let excess = issued.len().saturating_sub(max_issued as usize);
            for id in &issued[..excess] {
                table.remove(*id)?;
            }
            Ok(Some(public))
        })
    }

    /// One-time prekeys that can still be handed out.
    pub fn offerable_one_time_prekeys(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let next = tx.open_table(META)?.get(META_NEXT_OFFER_OPK)?.and_then(|v| u32_value(v.value())).unwrap_or(0);
        let table = tx.open_table(ONE_TIME_PREKEYS)?;
        let mut count = 0u64;
        for row in table.range(next..)? {
            row?;
            count += 1;
        }
        Ok(count)
    }

    /// Adds one-time prekeys (after every existing id) until `target` can be
    /// handed out; returns how many were made.
    pub fn replenish_offerable_one_time_prekeys<R: CryptoRng + ?Sized>(
        &self,
        target: u32,
        rng: &mut R,
    ) -> Result<u32, StoreError> {
        let have = u32::try_from(self.offerable_one_time_prekeys()?).unwrap_or(u32::MAX);
        if have >= target {
            return Ok(0);
        }
        let count = target - have;
        self.write(|tx| {
            let mut meta = tx.open_table(META)?;
            let next = meta.get(META_NEXT_OPK)?.and_then(|v| u32_value(v.value())).unwrap_or(1);
            let mut table = tx.open_table(ONE_TIME_PREKEYS)?;
            for opk in OneTimePrekey::generate_batch(next, count, rng) {
                let sealed = self.keys.seal(ONE_TIME_PREKEYS_NAME, &opk.id().to_be_bytes(), &opk)?;
                table.insert(opk.id(), sealed.as_slice())?;
            }
            meta.insert(META_NEXT_OPK, next.wrapping_add(count).to_be_bytes().as_slice())?;
            Ok(count)
        })
    }

    /// The signed prekeys kept (current and previous), by id: `(id,
    /// created_at)`.
    pub fn signed_prekey_ids(&self) -> Result<Vec<(u32, u64)>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(SIGNED_PREKEYS)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (id, v) = row?;
            let spk: SignedPrekey = self.keys.open(SIGNED_PREKEYS_NAME, &id.value().to_be_bytes(), v.value())?;
            out.push((id.value(), spk.public().created_at));
        }
        Ok(out)
    }

    /// The signed prekey schedule: makes a new signed prekey current when the
    /// current one is `period` seconds old (or from the future), and deletes
    /// every earlier one whose successor became current at least `grace`
    /// seconds ago (a session start made with it may still be in flight
    /// until then). Returns the new current key if it rotated.
    pub fn maintain_signed_prekeys<R: CryptoRng + ?Sized>(
        &self,
        now: u64,
        period: u64,
        grace: u64,
        rng: &mut R,
    ) -> Result<Option<SignedPrekey>, StoreError> {
        let current = self.current_signed_prekey()?;
        let created = current.public().created_at;
        let rotated = if created.saturating_add(period) <= now || created > now.saturating_add(period) {
            Some(self.rotate_signed_prekey(now, rng)?)
        } else {
            None
        };
        let current_id = self.current_signed_prekey()?.id();
        let mut kept = self.signed_prekey_ids()?;
        kept.sort_by_key(|(_, created_at)| *created_at);
        let expired: Vec<u32> = kept
            .windows(2)
            .filter(|w| w[0].0 != current_id && w[1].1.saturating_add(grace) <= now)
            .map(|w| w[0].0)
            .collect();
        if !expired.is_empty() {
            self.write(|tx| {
                let mut table = tx.open_table(SIGNED_PREKEYS)?;
                for id in &expired {
                    table.remove(*id)?;
                }
                Ok(())
            })?;
        }
        Ok(rotated)
    }

    /// A bundle with the current signed prekey and, if `with_one_time` and one
    /// is left, a one-time prekey handed out for it (durably marked, never
    /// handed out again: see [`ProfileStore::hand_out_one_time_prekey`]).
    pub fn prekey_bundle(&self, with_one_time: bool) -> Result<PrekeyBundle, StoreError> {
        let identity = self.identity()?;
        let spk = self.current_signed_prekey()?;
        let one_time_prekey = if with_one_time { self.hand_out_one_time_prekey(u32::MAX)? } else { None };
        Ok(PrekeyBundle { identity: identity.public(), signed_prekey: spk.public(), one_time_prekey })
    }

    // ---- network hints ----------------------------------------------------

    /// The port this profile listened on last time for a transport (`"tcp"`
    /// or `"udp"`), so a restarted node keeps its address.
    pub fn listen_port(&self, transport: &str) -> Result<Option<u16>, StoreError> {
        let key = format!("listen_port_{transport}");
        let tx = self.read()?;
        let meta = tx.open_table(META)?;
        let value = meta.get(key.as_str())?.and_then(|v| <[u8; 2]>::try_from(v.value()).ok()).map(u16::from_be_bytes);
        Ok(value)
    }

    /// Remembers the port this profile listens on for a transport.
    pub fn set_listen_port(&self, transport: &str, port: u16) -> Result<(), StoreError> {
        if self.listen_port(transport)? == Some(port) {
            return Ok(());
        }
        let key = format!("listen_port_{transport}");
        self.write(|tx| {
            tx.open_table(META)?.insert(key.as_str(), port.to_be_bytes().as_slice())?;
            Ok(())
        })
    }

    /// The relays this profile reserves a slot on (multiaddrs ending in
    /// `/p2p/<relay>`), in the order they were added.
    pub fn relays(&self) -> Result<Vec<String>, StoreError> {
        self.meta_list("relays")
    }

    /// Replaces the list of relays (at most 16, each at most 512 bytes).
    pub fn set_relays(&self, relays: &[String]) -> Result<(), StoreError> {
        if relays.len() > 16 || relays.iter().any(|r| r.len() > 512) {
            return Err(StoreError::Invalid("at most 16 relays of at most 512 bytes each".into()));
        }
        self.set_meta_list("relays", relays)
    }

    /// The addresses this profile last announced to its contacts.
    pub fn announced_addresses(&self) -> Result<Vec<String>, StoreError> {
        self.meta_list("announced_addresses")
    }

    /// Remembers the addresses announced to contacts.
    pub fn set_announced_addresses(&self, addresses: &[String]) -> Result<(), StoreError> {
        self.set_meta_list("announced_addresses", addresses)
    }

    /// A list kept sealed in [`META`] (addresses say where the user is).
    fn meta_list(&self, key: &str) -> Result<Vec<String>, StoreError> {
        let tx = self.read()?;
        let meta = tx.open_table(META)?;
        let Some(value) = meta.get(key)? else { return Ok(Vec::new()) };
        self.keys.open(META_NAME, key.as_bytes(), value.value())
    }

    fn set_meta_list(&self, key: &str, values: &[String]) -> Result<(), StoreError> {
        if self.meta_list(key)? == values {
            return Ok(());
        }
        let sealed = self.keys.seal(META_NAME, key.as_bytes(), &values)?;
        self.write(|tx| {
            tx.open_table(META)?.insert(key, sealed.as_slice())?;
            Ok(())
        })
    }

    // ---- contacts ---------------------------------------------------------

    /// The opaque id of the contact with this identity.
    pub fn contact_id(&self, identity: &IdentityPublic) -> ContactId {
        self.contact_id_for_key(&identity.signing)
    }

    /// The opaque id of the contact with this Ed25519 key (its PeerId).
    pub fn contact_id_for_key(&self, signing: &[u8; 32]) -> ContactId {
        ContactId(self.keys.blind("contact", signing))
    }

    /// Key of a contact's row in [`CONTACT_NAMES`]: keyed hash of the name ‖
    /// contact id.
    fn name_key(&self, name: &str, contact: &ContactId) -> [u8; 32] {
        let mut key = [0u8; 32];
        key[..16].copy_from_slice(&self.keys.blind("contact-name", name.as_bytes()));
        key[16..].copy_from_slice(&contact.0);
        key
    }

    /// Moves a contact's name-index row from name `old` to name `new` (`None`:
    /// no row), inside `tx`.
    fn reindex_name(
        &self,
        tx: &WriteTransaction,
        contact: &ContactId,
        old: Option<&str>,
        new: Option<&str>,
    ) -> Result<(), StoreError> {
        if old == new {
            return Ok(());
        }
        let mut names = tx.open_table(CONTACT_NAMES)?;
        if let Some(old) = old {
            names.remove(self.name_key(old, contact).as_slice())?;
        }
        if let Some(new) = new {
            names.insert(self.name_key(new, contact).as_slice(), ())?;
        }
        Ok(())
    }

    /// Adds a contact, or updates it if its Ed25519 identity is known. If the
    /// rest of its identity (X25519 key, kind) changed, the change is recorded
    /// in [`Contact::identity_change`], `verified` is cleared, and the change
    /// is returned so the user can be warned. The name index follows a new
    /// name in the same transaction.
    pub fn upsert_contact(&self, contact: Contact) -> Result<(ContactId, Option<IdentityChange>), StoreError> {
        contact.identity.verify().map_err(|e| StoreError::Invalid(format!("contact identity: {e}")))?;
        self.write(|tx| self.upsert_contact_in(tx, contact))
    }

    /// [`ProfileStore::upsert_contact`] inside `tx` (the identity is checked
    /// by the caller).
    fn upsert_contact_in(
        &self,
        tx: &WriteTransaction,
        contact: Contact,
    ) -> Result<(ContactId, Option<IdentityChange>), StoreError> {
        let id = self.contact_id(&contact.identity);
        let mut table = tx.open_table(CONTACTS)?;
        let existing: Option<Contact> = self.get_sealed(&table, CONTACTS_NAME, &id.0)?;
        let old_name = existing.as_ref().map(|c| c.display_name.clone());
        let (stored, change) = match existing {
            None => (contact, None),
            Some(mut old) => {
                let mut change = None;
                let changed = old.identity != contact.identity;
                if changed {
                    let c = IdentityChange { previous: old.identity, changed_at_ms: contact.added_at_ms };
                    old.identity = contact.identity;
                    old.verified = false;
                    old.identity_change = Some(c.clone());
                    // Prekeys of the previous identity mean nothing now.
                    old.one_time_prekey = None;
                    old.signed_prekey = None;
                    change = Some(c);
                }
                if !contact.display_name.is_empty() {
                    old.display_name = contact.display_name;
                    old.request = old.request && contact.request;
                }
                // The newer signed prekey wins (a card is older than one
                // fetched online).
                if let Some(new) = contact.signed_prekey
                    && old.signed_prekey.is_none_or(|o| o.created_at <= new.created_at)
                {
                    old.signed_prekey = Some(new);
                }
                if !contact.addresses.is_empty() {
                    old.addresses = contact.addresses;
                }
                (old, change)
            }
        };
        self.put_sealed(&mut table, CONTACTS_NAME, &id.0, &stored)?;
        drop(table);
        self.reindex_name(tx, &id, old_name.as_deref(), Some(&stored.display_name))?;
        Ok((id, change))
    }

    /// A contact by id.
    pub fn contact(&self, id: &ContactId) -> Result<Option<Contact>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(CONTACTS)?;
        self.get_sealed(&table, CONTACTS_NAME, &id.0)
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<(ContactId, Contact)>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(CONTACTS)?;
        Ok(self
            .all_sealed(&table, CONTACTS_NAME)?
            .into_iter()
            .filter_map(|(k, c)| Some((ContactId(k.try_into().ok()?), c)))
            .collect())
    }

    /// The contact with this display name (names are compared exactly; of
    /// several with the same name, the lowest contact id). Opens only the
    /// contacts the name index lists under that name.
    pub fn contact_by_name(&self, name: &str) -> Result<Option<(ContactId, Contact)>, StoreError> {
        let mut start = [0u8; 32];
        start[..16].copy_from_slice(&self.keys.blind("contact-name", name.as_bytes()));
        let mut end = start;
        end[16..].fill(0xff);
        let tx = self.read()?;
        let names = tx.open_table(CONTACT_NAMES)?;
        let contacts = tx.open_table(CONTACTS)?;
        for row in names.range(start.as_slice()..=end.as_slice())? {
            let (key, _) = row?;
            let id = key
                .value()
                .get(16..)
                .and_then(|c| <[u8; 16]>::try_from(c).ok())
                .ok_or(StoreError::MalformedRecord { table: CONTACT_NAMES_NAME })?;
            if let Some(contact) = self.get_sealed::<Contact>(&contacts, CONTACTS_NAME, &id)?
                && contact.display_name == name
            {
                return Ok(Some((ContactId(id), contact)));
            }
        }
        Ok(None)
    }

    /// The contact with this Ed25519 key (its PeerId), with its id.
    pub fn contact_by_peer_key(&self, signing: &[u8; 32]) -> Result<Option<(ContactId, Contact)>, StoreError> {
        let id = self.contact_id_for_key(signing);
        Ok(self.contact(&id)?.map(|contact| (id, contact)))
    }

    /// Changes a contact in place (verify, block, accept a request, rename…);
    /// a rename moves its name-index row in the same transaction.
    pub fn update_contact(&self, id: &ContactId, f: impl FnOnce(&mut Contact)) -> Result<Contact, StoreError> {
        self.write(|tx| self.update_contact_in(tx, id, f))
    }

    fn update_contact_in(
        &self,
        tx: &WriteTransaction,
        id: &ContactId,
        f: impl FnOnce(&mut Contact),
    ) -> Result<Contact, StoreError> {
        let mut table = tx.open_table(CONTACTS)?;
        let mut contact: Contact =
            self.get_sealed(&table, CONTACTS_NAME, &id.0)?.ok_or_else(|| StoreError::NotFound("contact".into()))?;
        let old_name = contact.display_name.clone();
        f(&mut contact);
        self.put_sealed(&mut table, CONTACTS_NAME, &id.0, &contact)?;
        drop(table);
        self.reindex_name(tx, id, Some(&old_name), Some(&contact.display_name))?;
        Ok(contact)
    }

    /// Adds (or updates) a contact the user added by its card, with the
    /// mailboxes the card names, and settles it if it was a pending
    /// stranger: ONE durable transaction (see
    /// [`ProfileStore::upsert_contact`]).
    pub fn add_contact(
        &self,
        contact: Contact,
        mailboxes: &[ContactMailbox],
    ) -> Result<(ContactId, Option<IdentityChange>), StoreError> {
        contact.identity.verify().map_err(|e| StoreError::Invalid(format!("contact identity: {e}")))?;
        self.write(|tx| {
            let (id, change) = self.upsert_contact_in(tx, contact)?;
            remove_stranger(tx, &id)?;
            if !mailboxes.is_empty() {
                self.update_contact_mailboxes_in(tx, &id, |m| m.theirs = mailboxes.to_vec())?;
            }
            Ok((id, change))
        })
    }

    /// Changes a contact the user acted on (accepted, renamed) and settles it
    /// if it was a pending stranger, in ONE durable transaction.
    pub fn settle_contact(&self, id: &ContactId, f: impl FnOnce(&mut Contact)) -> Result<Contact, StoreError> {
        self.write(|tx| {
            let contact = self.update_contact_in(tx, id, f)?;
            remove_stranger(tx, id)?;
            Ok(contact)
        })
    }

    /// Removes a contact and everything about it in ONE durable transaction:
    /// its record and name-index row, session, conversation state, every
    /// message of the conversation with its index row, its outbox entries
    /// with their deposited marks, its mailbox state and its pending-stranger
    /// row. Its received ids stay (the index rows of its received messages
    /// become rows of received ids with nothing stored, with their receive
    /// times, pruned as any after [`RECEIVED_WINDOW_MS`]), so a replayed
    /// envelope is a duplicate, not a new stranger. Returns the ids of the outbox entries removed (their
    /// messages are gone too). [`StoreError::NotFound`] if there is no such
    /// contact; then nothing changes.
    pub fn forget_contact(&self, id: &ContactId) -> Result<Vec<[u8; 16]>, StoreError> {
        self.write(|tx| {
            if tx.open_table(CONTACTS)?.get(id.0.as_slice())?.is_none() {
                return Err(StoreError::NotFound("contact".into()));
            }
            self.forget_in(tx, id)
        })
    }

    /// [`ProfileStore::forget_contact`]'s removals inside `tx`, for whatever
    /// of the contact exists. Opens each table once at a time.
    fn forget_in(&self, tx: &WriteTransaction, id: &ContactId) -> Result<Vec<[u8; 16]>, StoreError> {
        let contact: Option<Contact> = {
            let mut contacts = tx.open_table(CONTACTS)?;
            let contact = self.get_sealed(&contacts, CONTACTS_NAME, &id.0)?;
            contacts.remove(id.0.as_slice())?;
            contact
        };
        if let Some(contact) = &contact {
            self.reindex_name(tx, id, Some(&contact.display_name), None)?;
        }
        tx.open_table(SESSIONS)?.remove(id.0.as_slice())?;
        crate::skipped::delete_under(tx, &id.0)?;
        tx.open_table(CONVERSATIONS)?.remove(id.0.as_slice())?;
        tx.open_table(CONTACT_MAILBOXES)?.remove(id.0.as_slice())?;
        remove_stranger(tx, id)?;

        let mut messages = tx.open_table(MESSAGES)?;
        let mut found: Vec<(Vec<u8>, MessageRecord)> = Vec::new();
        let mut status_keys = Vec::new();
        let last = status_key(&seq_key(id, u64::MAX));
        for row in messages.range(seq_key(id, 0).as_slice()..=last.as_slice())? {
            let (key, value) = row?;
            if key.value().len() == last.len() {
                status_keys.push(key.value().to_vec());
            } else {
                found.push((key.value().to_vec(), self.keys.open(MESSAGES_NAME, key.value(), value.value())?));
            }
        }
        let mut index = tx.open_table(MESSAGE_INDEX)?;
        // Envelope ids of messages encrypted again point here too.
        let mut aliases = tx.open_table(MESSAGE_ALIASES)?;
        let mut alias_keys = Vec::new();
        for row in aliases.range(seq_key(id, 0).as_slice()..=alias_key_max(id).as_slice())? {
            alias_keys.push(row?.0.value().to_vec());
        }
        let points_here = |row: Option<IndexRow>, key: &[u8]| row.and_then(|r| r.position()).is_some_and(|p| p == key);
        for key in &alias_keys {
            let Ok(alias) = <[u8; 16]>::try_from(&key[24..]) else { continue };
            if points_here(index_row(&index, &alias)?, &key[..24]) {
                index.remove(alias.as_slice())?;
            }
            aliases.remove(key.as_slice())?;
        }
        for key in &status_keys {
            messages.remove(key.as_slice())?;
        }
        for (key, record) in &found {
            messages.remove(key.as_slice())?;
            // Only rows that point here: another conversation's message with
            // the same id keeps its own.
            let row = index_row(&index, &record.id)?;
            if points_here(row, key) {
                match row.and_then(|r| r.received_at()) {
                    // Still a duplicate: received, nothing stored.
                    Some(at) => index.insert(record.id.as_slice(), IndexRow::Received(at).encode().as_slice())?,
                    None => index.remove(record.id.as_slice())?,
                };
            }
        }
        // What is queued to it: under the record's id, or (encrypted again)
        // under one of its aliases.
        let outgoing = found.iter().filter(|(_, r)| r.direction == Direction::Outgoing).map(|(_, r)| r.id);
        let aliases = alias_keys.iter().filter_map(|k| <[u8; 16]>::try_from(&k[24..]).ok());
        let mut outbox = tx.open_table(OUTBOX)?;
        let mut deposited = tx.open_table(DEPOSITED)?;
        let mut removed = Vec::new();
        for wire in outgoing.chain(aliases) {
            let queued_here =
                self.get_sealed::<OutboxEntry>(&outbox, OUTBOX_NAME, &wire)?.is_some_and(|e| e.contact == *id);
            if queued_here {
                outbox.remove(wire.as_slice())?;
                deposited.remove(wire.as_slice())?;
                removed.push(wire);
            }
        }
        Ok(removed)
    }

    // ---- pending strangers ------------------------------------------------

    /// Records that `bytes` of messages from contact `id` were stored while it
    /// is a stranger (a message request, or a business customer nobody
    /// answered yet): a new stranger is pending from now on, a pending one
    /// adds `bytes` to its count. If `id` alone is now over
    /// `limits.max_bytes_each`, it is forgotten (as by
    /// [`ProfileStore::forget_contact`]) and no one else. Otherwise, while
    /// more than `limits.max_count` strangers are pending or their bytes
    /// exceed `limits.max_bytes`, the oldest pending one other than `id` is
    /// forgotten; `id` itself goes only when it is the last one left and
    /// still over a limit. All in ONE durable
    /// transaction. Returns the forgotten contacts, oldest first, and adds
    /// their number to [`ProfileStore::strangers_evicted`].
    pub fn admit_stranger(
        &self,
        id: &ContactId,
        bytes: u64,
        limits: StrangerLimits,
    ) -> Result<Vec<ContactId>, StoreError> {
        self.write(|tx| self.admit_stranger_in(tx, id, bytes, limits))
    }

    /// [`ProfileStore::admit_stranger`] inside `tx`.
    fn admit_stranger_in(
        &self,
        tx: &WriteTransaction,
        id: &ContactId,
        bytes: u64,
        limits: StrangerLimits,
    ) -> Result<Vec<ContactId>, StoreError> {
        let mut table = tx.open_table(STRANGERS)?;
        let mut rows = stranger_rows(&table)?;
        match rows.iter_mut().find(|r| r.contact == *id) {
            Some(row) => {
                row.bytes = row.bytes.saturating_add(bytes);
                table.insert(stranger_key(row.admitted, id).as_slice(), row.bytes)?;
            }
            None => {
                let admitted = add_to_counter(tx, META_NEXT_STRANGER, 1)? - 1;
                table.insert(stranger_key(admitted, id).as_slice(), bytes)?;
                rows.push(StrangerRow { admitted, contact: *id, bytes });
            }
        }
        drop(table);
        if rows.iter().any(|r| r.contact == *id && r.bytes > limits.max_bytes_each) {
            self.forget_in(tx, id)?;
            add_to_counter(tx, META_STRANGERS_EVICTED, 1)?;
            return Ok(vec![*id]);
        }
        let mut count = rows.len();
        let mut total = rows.iter().fold(0u64, |sum, r| sum.saturating_add(r.bytes));
        let oldest_first = rows.iter().filter(|r| r.contact != *id).chain(rows.iter().filter(|r| r.contact == *id));
        let mut evicted = Vec::new();
        for row in oldest_first {
            if count <= limits.max_count && total <= limits.max_bytes {
                break;
            }
            self.forget_in(tx, &row.contact)?;
            evicted.push(row.contact);
            count -= 1;
            total = total.saturating_sub(row.bytes);
        }
        if !evicted.is_empty() {
            add_to_counter(tx, META_STRANGERS_EVICTED, evicted.len() as u64)?;
        }
        Ok(evicted)
    }

    /// The user acted on contact `id` (accepted it, renamed it, wrote to it,
    /// added it by card): it is no longer a pending stranger and is never
    /// evicted. Returns whether it was pending. When it was not, only reads
    /// (no write transaction).
    pub fn settle_stranger(&self, id: &ContactId) -> Result<bool, StoreError> {
        let pending = {
            let tx = self.read()?;
            stranger_rows(&tx.open_table(STRANGERS)?)?.iter().any(|r| r.contact == *id)
        };
        if !pending {
            return Ok(false);
        }
        self.write(|tx| remove_stranger(tx, id))
    }

    /// The pending strangers with the bytes stored from each, oldest first.
    pub fn strangers(&self) -> Result<Vec<(ContactId, u64)>, StoreError> {
        let tx = self.read()?;
        Ok(stranger_rows(&tx.open_table(STRANGERS)?)?.into_iter().map(|r| (r.contact, r.bytes)).collect())
    }

    /// How many pending strangers were evicted to keep within the limits,
    /// since schema 4.
    pub fn strangers_evicted(&self) -> Result<u64, StoreError> {
        let tx = self.read()?;
        let meta = tx.open_table(META)?;
        Ok(meta.get(META_STRANGERS_EVICTED)?.and_then(|v| u64_value(v.value())).unwrap_or(0))
    }

    // ---- sessions and messages ---------------------------------------------

    /// The ratchet sessions with a contact (their skipped keys stay in
    /// the store: [`SkippedKeyChanges::lookup`]).
    pub fn session(&self, contact: &ContactId) -> Result<Option<SessionState>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(SESSIONS)?;
        self.get_sealed(&table, SESSIONS_NAME, &contact.0)
    }

    /// Contact id ‖ session tag: where a session's skipped keys are.
    pub(crate) fn session_prefix(&self, contact: &ContactId, session: &[u8; 16]) -> crate::skipped::SessionPrefix {
        let mut prefix = [0u8; 24];
        prefix[..16].copy_from_slice(&contact.0);
        prefix[16..].copy_from_slice(&self.keys.blind("session", session)[..8]);
        prefix
    }

    /// The opaque tag of a sender's ratchet key in [`SKIPPED_KEYS`].
    pub(crate) fn chain_tag(&self, ratchet_key: &[u8; 32]) -> [u8; 16] {
        self.keys.blind("skipped-chain", ratchet_key)
    }

    /// Writes a contact's session state; the skipped keys of a session it
    /// no longer holds (pushed past [`MAX_PREVIOUS_SESSIONS`], or replaced)
    /// are deleted with it.
    fn put_session_in(
        &self,
        tx: &WriteTransaction,
        contact: &ContactId,
        state: &SessionState,
    ) -> Result<(), StoreError> {
        let mut sessions = tx.open_table(SESSIONS)?;
        let old: Option<SessionState> = self.get_sealed(&sessions, SESSIONS_NAME, &contact.0)?;
        self.put_sealed(&mut sessions, SESSIONS_NAME, &contact.0, state)?;
        drop(sessions);
        let kept: Vec<[u8; 16]> = state.all().map(|s| s.id()).collect();
        for gone in old.iter().flat_map(|o| o.all()).map(|s| s.id()).filter(|id| !kept.contains(id)) {
            crate::skipped::delete_under(tx, &self.session_prefix(contact, &gone))?;
        }
        Ok(())
    }

    /// Writes a message, its status row and its index row (a received one
    /// if `received_at`, the time it was received), and updates the
    /// conversation in `batch` (written once per conversation by
    /// `finish_batch`).
    fn store_message(
        &self,
        tx: &WriteTransaction,
        batch: &mut BatchState<'_>,
        contact: &ContactId,
        message: &MessageRecord,
        received_at: Option<u64>,
    ) -> Result<u64, StoreError> {
        let incoming = received_at.is_some();
        let conversation = self.conversation_in(tx, batch, contact)?;
        let seq = conversation.next_seq;
        conversation.next_seq += 1;
        conversation.status = ConversationStatus::Open;
        let at = message.received_at_ms.unwrap_or(message.sent_at_ms);
        conversation.last_activity_ms = conversation.last_activity_ms.max(at);
        if incoming {
            conversation.unread = conversation.unread.saturating_add(1);
            conversation.last_incoming_ms = Some(at);
        }
        let key = seq_key(contact, seq);
        let mut messages = tx.open_table(MESSAGES)?;
        self.put_sealed(&mut messages, MESSAGES_NAME, &key, message)?;
        let state = MessageState { direction: message.direction, status: message.status };
        self.put_sealed(&mut messages, MESSAGES_NAME, &status_key(&key), &state)?;
        drop(messages);
        let row = match received_at {
            Some(at) => IndexRow::Incoming(key, at),
            None => IndexRow::Outgoing(key),
        };
        tx.open_table(MESSAGE_INDEX)?.insert(message.id.as_slice(), row.encode().as_slice())?;
        Ok(seq)
    }

    /// The conversation of `contact` in `batch`, read from `tx` the first time.
    fn conversation_in<'b>(
        &self,
        tx: &WriteTransaction,
        batch: &'b mut BatchState<'_>,
        contact: &ContactId,
    ) -> Result<&'b mut Conversation, StoreError> {
        Ok(match batch.conversations.entry(*contact) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let table = tx.open_table(CONVERSATIONS)?;
                v.insert(self.get_sealed(&table, CONVERSATIONS_NAME, &contact.0)?.unwrap_or_default())
            }
        })
    }

    /// Writes the last session state and the conversation state of each
    /// contact of a batch, once.
    fn finish_batch(&self, tx: &WriteTransaction, state: BatchState<'_>) -> Result<(), StoreError> {
        for (contact, session) in state.sessions {
            self.put_session_in(tx, &contact, session)?;
        }
        let mut conversations = tx.open_table(CONVERSATIONS)?;
        for (contact, conversation) in state.conversations {
            self.put_sealed(&mut conversations, CONVERSATIONS_NAME, &contact.0, &conversation)?;
        }
        Ok(())
    }

    /// Commits outgoing messages: for each, the session state after the
    /// ratchet step, the message record and the outbox entry, all in ONE
    /// durable transaction. Call before the envelopes leave the node. Returns
    /// each message's sequence number in its conversation.
    pub fn commit_outgoing(&self, batch: &[OutgoingMessage], now_ms: u64) -> Result<Vec<u64>, StoreError> {
        self.write(|tx| {
            let mut state = BatchState::default();
            let mut seqs = Vec::with_capacity(batch.len());
            for item in batch {
                seqs.push(self.queue_in(tx, &mut state, item, now_ms)?);
            }
            self.finish_batch(tx, state)?;
            Ok(seqs)
        })
    }

    /// One outgoing message inside `tx`: its record, its outbox entry, and
    /// its session in `state`. Returns its sequence number.
    fn queue_in<'a>(
        &self,
        tx: &WriteTransaction,
        state: &mut BatchState<'a>,
        item: &'a OutgoingMessage,
        now_ms: u64,
    ) -> Result<u64, StoreError> {
        if let Some(session) = &item.session {
            state.sessions.insert(item.contact, session);
        }
        let seq = self.store_message(tx, state, &item.contact, &item.message, None)?;
        let entry = OutboxEntry {
            contact: item.contact,
            message_id: item.message.id,
            seq,
            envelope: item.envelope.clone(),
            queued_at_ms: now_ms,
            attempts: 0,
            next_attempt_at_ms: now_ms,
            shown_as: None,
            resends: 0,
        };
        self.put_sealed(&mut tx.open_table(OUTBOX)?, OUTBOX_NAME, &item.message.id, &entry)?;
        Ok(seq)
    }

    /// Replaces outbox entries by the same messages encrypted (again), in
    /// ONE durable transaction: for each `(old id, new id, envelope)` the new
    /// entry (due now, attempts 0, known to the user by the original id) and
    /// an index entry so statuses and receipts under the new id reach the
    /// same message record (the old id keeps its index entry: it is the
    /// user's id); then `session`, the state after the last of them.
    /// `resend` counts this as one more re-encryption (a recipient reported
    /// the key gone); a first encryption of a message kept unencrypted does
    /// not. Returns the new entries; an `old` no longer queued is skipped.
    pub fn reencrypt_outbox(
        &self,
        items: &[([u8; 16], [u8; 16], Vec<u8>)],
        session: &SessionState,
        resend: bool,
        now_ms: u64,
    ) -> Result<Vec<OutboxEntry>, StoreError> {
        let resend = &resend;
        self.write(|tx| {
            let mut out = Vec::with_capacity(items.len());
            let mut contact = None;
            for (old, new_id, envelope) in items {
                let mut outbox = tx.open_table(OUTBOX)?;
                let Some(entry): Option<OutboxEntry> = self.get_sealed(&outbox, OUTBOX_NAME, old)? else {
                    continue;
                };
                let mut index = tx.open_table(MESSAGE_INDEX)?;
                let position = index_row(&index, old)?
                    .and_then(|r| r.position())
                    .ok_or(StoreError::MalformedRecord { table: MESSAGE_INDEX_NAME })?;
                index.insert(new_id.as_slice(), IndexRow::Alias(position, entry.shown_id()).encode().as_slice())?;
                drop(index);
                let alias = [position.as_slice(), new_id.as_slice()].concat();
                tx.open_table(MESSAGE_ALIASES)?.insert(alias.as_slice(), ())?;
                outbox.remove(old.as_slice())?;
                let fresh = OutboxEntry {
                    message_id: *new_id,
                    envelope: envelope.clone(),
                    // A first encryption keeps the attempts made so far
                    // (a version 1 envelope that was tried); a resend is a
                    // new message for the recipient.
                    attempts: if *resend { 0 } else { entry.attempts },
                    next_attempt_at_ms: now_ms,
                    shown_as: Some(entry.shown_id()),
                    resends: entry.resends.saturating_add(u32::from(*resend)),
                    ..entry
                };
                self.put_sealed(&mut outbox, OUTBOX_NAME, new_id, &fresh)?;
                drop(outbox);
                tx.open_table(DEPOSITED)?.remove(old.as_slice())?;
                contact = Some(fresh.contact);
                out.push(fresh);
            }
            if let Some(contact) = contact {
                self.put_session_in(tx, &contact, session)?;
            }
            Ok(out)
        })
    }

    /// Empties the envelopes of these outbox entries (their session start
    /// was refused): they wait, unencrypted, to be encrypted again under a
    /// new session. Returns the entries changed.
    pub fn unseal_outbox(&self, ids: &[[u8; 16]]) -> Result<Vec<[u8; 16]>, StoreError> {
        self.write(|tx| {
            let mut outbox = tx.open_table(OUTBOX)?;
            let mut changed = Vec::new();
            for id in ids {
                let Some(mut entry): Option<OutboxEntry> = self.get_sealed(&outbox, OUTBOX_NAME, id)? else {
                    continue;
                };
                entry.envelope.clear();
                self.put_sealed(&mut outbox, OUTBOX_NAME, id, &entry)?;
                changed.push(*id);
            }
            Ok(changed)
        })
    }

    /// Deletes the session state with `contact` (a session start the
    /// contact refused: its next message starts a new one).
    pub fn drop_session(&self, contact: &ContactId) -> Result<(), StoreError> {
        self.write(|tx| {
            tx.open_table(SESSIONS)?.remove(contact.0.as_slice())?;
            crate::skipped::delete_under(tx, &contact.0)
        })
    }

    /// True if a message with this id was received before (and, if nothing
    /// of it is stored, less than [`RECEIVED_WINDOW_MS`] ago, or not pruned
    /// yet: see [`ProfileStore::prune_received`]).
    pub fn is_received(&self, message_id: &[u8; 16]) -> Result<bool, StoreError> {
        let tx = self.read()?;
        Ok(index_row(&tx.open_table(MESSAGE_INDEX)?, message_id)?.and_then(|r| r.received_at()).is_some())
    }

    /// Prunes received ids: drops the `message_index` rows of ids received
    /// more than [`RECEIVED_WINDOW_MS`] before `now_ms` with nothing stored
    /// under them (receipts' envelopes, messages of forgotten contacts). The
    /// ids of stored messages stay as long as their messages. Bounded work:
    /// reads at most `max_rows` index rows per call, going on after the last
    /// row the previous call read (from the first again after the last, and
    /// after a restart), and removes at most as many, in one transaction
    /// that is not durable on its own (a crash only brings back rows a later
    /// call removes again). Returns how many rows it removed. Meant for the
    /// node's maintenance tick.
    pub fn prune_received(&self, now_ms: u64, max_rows: usize) -> Result<usize, StoreError> {
        let Some(cutoff) = now_ms.checked_sub(RECEIVED_WINDOW_MS) else { return Ok(0) };
        let expired = |row: Option<IndexRow>| matches!(row, Some(IndexRow::Received(at)) if at < cutoff);
        let mut cursor = self.prune_cursor.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (old, next) = {
            let tx = self.read()?;
            let index = tx.open_table(MESSAGE_INDEX)?;
            let rows = match cursor.as_deref() {
                Some(after) => index.range::<&[u8]>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))?,
                None => index.range::<&[u8]>(..)?,
            };
            let (mut old, mut last, mut read) = (Vec::new(), None, 0);
            for row in rows.take(max_rows) {
                let (key, value) = row?;
                read += 1;
                if expired(IndexRow::decode(value.value())) {
                    old.push(key.value().to_vec());
                }
                last = Some(key.value().to_vec());
            }
            // Fewer rows than asked for: the end; the next call starts over.
            (old, if read < max_rows { None } else { last })
        };
        *cursor = next;
        if old.is_empty() {
            return Ok(0);
        }
        self.write_with(redb::Durability::None, |tx| {
            let mut index = tx.open_table(MESSAGE_INDEX)?;
            let mut removed = 0;
            for key in &old {
                if expired(index_row(&index, key)?) {
                    index.remove(key.as_slice())?;
                    removed += 1;
                }
            }
            Ok(removed)
        })
    }

    /// Commits received messages: for each, the message, the session state
    /// after decryption, the received id and the consumed one-time prekey, all
    /// in ONE durable transaction. Call before acknowledging. A message whose
    /// id was already received (earlier, or earlier in this batch) is
    /// reported as [`ReceiveOutcome::Duplicate`] and not stored.
    pub fn commit_incoming(&self, batch: &[IncomingMessage], now_ms: u64) -> Result<Vec<ReceiveOutcome>, StoreError> {
        self.write(|tx| {
            let mut state = BatchState::default();
            let outcomes = self.incoming_in(tx, &mut state, batch, now_ms)?;
            self.finish_batch(tx, state)?;
            Ok(outcomes)
        })
    }

    fn incoming_in<'a>(
        &self,
        tx: &WriteTransaction,
        state: &mut BatchState<'a>,
        batch: &'a [IncomingMessage],
        now_ms: u64,
    ) -> Result<Vec<ReceiveOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(batch.len());
        for item in batch {
            if let Some(session) = &item.session {
                state.sessions.insert(item.contact, session);
            }
            let mut index = tx.open_table(MESSAGE_INDEX)?;
            if index_row(&index, &item.id())?.and_then(|r| r.received_at()).is_some() {
                outcomes.push(ReceiveOutcome::Duplicate);
                continue;
            }
            // A stored message's index row is its received id (written
            // with it below); anything else gets a row of its own.
            if item.message.is_none() {
                index.insert(item.id().as_slice(), IndexRow::Received(now_ms).encode().as_slice())?;
            }
            drop(index);
            if let Some(id) = item.consumed_one_time_prekey
                && tx.open_table(ONE_TIME_PREKEYS)?.remove(id)?.is_none()
            {
                return Err(StoreError::PrekeyUsed(id));
            }
            let seq = match &item.message {
                Some(message) => Some(self.store_message(tx, state, &item.contact, message, Some(now_ms))?),
                None => None,
            };
            outcomes.push(ReceiveOutcome::Stored { seq });
        }
        Ok(outcomes)
    }

    /// Commits everything one inbound request from one contact changes (see
    /// [`Inbound`]) in ONE durable transaction, in this order: the contact
    /// record, the messages, the automatic replies and their conversation
    /// changes, the receipts, the mailboxes and addresses, and last the
    /// stranger accounting (which may forget the sender and all of it).
    /// Call before acknowledging.
    pub fn commit_inbound(&self, inbound: &Inbound, now_ms: u64) -> Result<InboundOutcome, StoreError> {
        if let Some(record) = &inbound.record {
            record.identity.verify().map_err(|e| StoreError::Invalid(format!("contact identity: {e}")))?;
        }
        let contact = &inbound.contact;
        self.write(|tx| {
            let mut out = InboundOutcome::default();
            if let Some(record) = &inbound.record {
                out.identity_change = self.upsert_contact_in(tx, record.clone())?.1;
            }
            let mut state = BatchState::default();
            out.messages = self.incoming_in(tx, &mut state, &inbound.messages, now_ms)?;
            let bytes: u64 = out
                .messages
                .iter()
                .zip(&inbound.messages)
                .filter(|(o, _)| matches!(o, ReceiveOutcome::Stored { .. }))
                .filter_map(|(_, item)| item.message.as_ref().map(|m| m.body.len() as u64))
                .sum();
            for reply in &inbound.replies {
                out.replies.push(self.queue_in(tx, &mut state, reply, now_ms)?);
            }
            let label = match &inbound.label {
                Some((name, colour)) => self.label_named_in(tx, name, colour)?,
                None => None,
            };
            inbound.skipped.write_in(self, tx)?;
            if inbound.away_sent_for_ms.is_some() || label.is_some() {
                let conversation = self.conversation_in(tx, &mut state, contact)?;
                if let Some(period) = inbound.away_sent_for_ms {
                    conversation.away_sent_for_ms = Some(period);
                }
                if let Some(label) = label
                    && !conversation.labels.contains(&label)
                {
                    conversation.labels.push(label);
                }
            }
            self.finish_batch(tx, state)?;
            for receipt in &inbound.receipts {
                let changes = {
                    let tables = StatusTables::open(tx)?;
                    self.receipt_changes((&tables.index, &tables.messages), contact, &receipt.read, &receipt.delivered)?
                };
                self.apply_receipt_changes(tx, &changes)?;
                for change in changes {
                    out.receipts.retain(|(id, _, _)| *id != change.0);
                    out.receipts.push(change);
                }
            }
            if let Some(theirs) = &inbound.mailboxes {
                let theirs: Vec<ContactMailbox> =
                    theirs.iter().filter(|m| m.address.len() <= 512).take(MAX_MAILBOXES).cloned().collect();
                self.update_contact_mailboxes_in(tx, contact, |m| m.theirs = theirs)?;
            }
            if let Some(addresses) = &inbound.addresses {
                out.addresses_changed = self.set_addresses_in(tx, contact, addresses)?;
            }
            if let Some(limits) = inbound.stranger {
                out.evicted = self.admit_stranger_in(tx, contact, bytes, limits)?;
            }
            Ok(out)
        })
    }

    /// Replaces a contact's known addresses inside `tx`; whether they changed.
    fn set_addresses_in(
        &self,
        tx: &WriteTransaction,
        contact: &ContactId,
        addresses: &[String],
    ) -> Result<bool, StoreError> {
        let existing: Option<Contact> = self.get_sealed(&tx.open_table(CONTACTS)?, CONTACTS_NAME, &contact.0)?;
        let Some(existing) = existing else { return Ok(false) };
        if existing.addresses == addresses || addresses.is_empty() {
            return Ok(false);
        }
        let update =
            Contact { display_name: String::new(), signed_prekey: None, addresses: addresses.to_vec(), ..existing };
        self.upsert_contact_in(tx, update)?;
        Ok(true)
    }

    /// The id of the label named `name`, created with `colour` if there is
    /// none; `None` at [`MAX_LABELS`].
    fn label_named_in(&self, tx: &WriteTransaction, name: &str, colour: &str) -> Result<Option<[u8; 16]>, StoreError> {
        self.require_business()?;
        let mut table = tx.open_table(LABELS)?;
        let existing: Vec<(Vec<u8>, Label)> = self.all_sealed(&table, LABELS_NAME)?;
        if let Some((_, label)) = existing.iter().find(|(_, l)| l.name == name) {
            return Ok(Some(label.id));
        }
        if existing.len() >= MAX_LABELS {
            return Ok(None);
        }
        let mut label = Label { id: [0; 16], name: name.into(), colour: colour.into() };
        label.validate()?;
        random_bytes(&mut label.id)?;
        self.put_sealed(&mut table, LABELS_NAME, &label.id, &label)?;
        Ok(Some(label.id))
    }

    /// A message by id (its own, or another envelope id of it), with its
    /// conversation, sequence number and current status.
    pub fn message(&self, message_id: &[u8; 16]) -> Result<Option<(ContactId, u64, MessageRecord)>, StoreError> {
        let tx = self.read()?;
        let Some(key) = index_row(&tx.open_table(MESSAGE_INDEX)?, message_id)?.and_then(|r| r.position()) else {
            return Ok(None);
        };
        let messages = tx.open_table(MESSAGES)?;
        let Some(mut record): Option<MessageRecord> = self.get_sealed(&messages, MESSAGES_NAME, &key)? else {
            return Ok(None);
        };
        if let Some(state) = self.message_state(&messages, &key)? {
            record.status = state.status;
        }
        let (contact, seq) = key.split_at(16);
        let (Ok(contact), Ok(seq)) = (<[u8; 16]>::try_from(contact), <[u8; 8]>::try_from(seq)) else {
            return Err(StoreError::MalformedRecord { table: MESSAGE_INDEX_NAME });
        };
        Ok(Some((ContactId(contact), u64::from_be_bytes(seq), record)))
    }

    /// The direction and status of the message at `position`: its status
    /// row or, without one (only in a damaged store), what its record was
    /// written with. `None` if no message is there.
    fn message_state(
        &self,
        messages: &impl ReadableTable<&'static [u8], &'static [u8]>,
        position: &Position,
    ) -> Result<Option<MessageState>, StoreError> {
        if let Some(state) = self.get_sealed(messages, MESSAGES_NAME, &status_key(position))? {
            return Ok(Some(state));
        }
        let record: Option<MessageRecord> = self.get_sealed(messages, MESSAGES_NAME, position)?;
        Ok(record.map(|r| MessageState { direction: r.direction, status: r.status }))
    }

    fn advance_status(
        &self,
        tx: &WriteTransaction,
        message_id: &[u8; 16],
        status: MessageStatus,
    ) -> Result<bool, StoreError> {
        self.advance_in(&mut StatusTables::open(tx)?, message_id, status)
    }

    /// Moves the status of the message `message_id` names forward (see
    /// [`MessageState::allows`]), writing only its status row.
    /// Returns whether it changed.
    fn advance_in(
        &self,
        tables: &mut StatusTables<'_>,
        message_id: &[u8; 16],
        status: MessageStatus,
    ) -> Result<bool, StoreError> {
        let Some(position) = index_row(&tables.index, message_id)?.and_then(|r| r.position()) else {
            return Ok(false);
        };
        let Some(mut state) = self.message_state(&tables.messages, &position)? else {
            return Ok(false);
        };
        if !state.allows(status) {
            return Ok(false);
        }
        state.status = status;
        self.put_sealed(&mut tables.messages, MESSAGES_NAME, &status_key(&position), &state)?;
        Ok(true)
    }

    /// Applies a receipt from `contact`: `delivered` ids become `Delivered`
    /// and `read` ids `Read`, each leaving the outbox (a message read was
    /// delivered). Only ids of this profile's own messages **to that
    /// contact** count; others are ignored (a contact cannot touch other
    /// conversations or its own incoming messages). At most
    /// [`MAX_RECEIPT_IDS`] ids; checked with reads first, then one durable
    /// transaction, and none when nothing applies. Returns what changed.
    pub fn apply_receipt(
        &self,
        contact: &ContactId,
        read: &[[u8; 16]],
        delivered: &[[u8; 16]],
    ) -> Result<Vec<ReceiptChange>, StoreError> {
        let changes = {
            let tx = self.read()?;
            let tables = (&tx.open_table(MESSAGE_INDEX)?, &tx.open_table(MESSAGES)?);
            self.receipt_changes(tables, contact, read, delivered)?
        };
        if !changes.is_empty() {
            self.write(|tx| self.apply_receipt_changes(tx, &changes))?;
        }
        Ok(changes)
    }

    /// What a receipt from `contact` changes (see
    /// [`ProfileStore::apply_receipt`]), read from `message_index` and
    /// `messages` (the status rows).
    fn receipt_changes<T: ReadableTable<&'static [u8], &'static [u8]>>(
        &self,
        (index, messages): (&T, &T),
        contact: &ContactId,
        read: &[[u8; 16]],
        delivered: &[[u8; 16]],
    ) -> Result<Vec<ReceiptChange>, StoreError> {
        if read.len() + delivered.len() > MAX_RECEIPT_IDS {
            return Err(StoreError::Invalid(format!("a receipt names at most {MAX_RECEIPT_IDS} messages")));
        }
        let wanted = delivered
            .iter()
            .map(|id| (id, MessageStatus::Delivered))
            .chain(read.iter().map(|id| (id, MessageStatus::Read)));
        // (id in the receipt, the record's own id, new status)
        let mut changes: Vec<ReceiptChange> = Vec::new();
        for (id, status) in wanted {
            let (position, shown) = match index_row(index, id)? {
                Some(IndexRow::Outgoing(position)) => (position, *id),
                Some(IndexRow::Alias(position, shown)) => (position, shown),
                _ => continue,
            };
            if position[..16] != contact.0 {
                continue;
            }
            let Some(state) = self.message_state(messages, &position)? else { continue };
            if state.direction == Direction::Outgoing && state.allows(status) {
                changes.retain(|(c, _, _)| c != id);
                changes.push((*id, shown, status));
            }
        }
        Ok(changes)
    }

    fn apply_receipt_changes(&self, tx: &WriteTransaction, changes: &[ReceiptChange]) -> Result<(), StoreError> {
        let ids: Vec<([u8; 16], MessageStatus)> = changes.iter().map(|(id, _, status)| (*id, *status)).collect();
        self.settle_in(tx, &ids)
    }

    /// Removes these messages' outbox entries and deposited marks and moves
    /// each one's status forward, opening each table once.
    fn settle_in(&self, tx: &WriteTransaction, ids: &[([u8; 16], MessageStatus)]) -> Result<(), StoreError> {
        let mut outbox = tx.open_table(OUTBOX)?;
        let mut deposited = tx.open_table(DEPOSITED)?;
        let mut tables = StatusTables::open(tx)?;
        for (id, status) in ids {
            outbox.remove(id.as_slice())?;
            deposited.remove(id.as_slice())?;
            self.advance_in(&mut tables, id, *status)?;
        }
        Ok(())
    }

    /// Moves a message's status forward (never back). Returns whether it changed.
    pub fn set_message_status(&self, message_id: &[u8; 16], status: MessageStatus) -> Result<bool, StoreError> {
        self.write(|tx| self.advance_status(tx, message_id, status))
    }

    /// Marks messages of a conversation read and its unread count zero, in
    /// ONE durable transaction.
    pub fn mark_read(&self, contact: &ContactId, message_ids: &[[u8; 16]]) -> Result<(), StoreError> {
        self.write(|tx| {
            let mut tables = StatusTables::open(tx)?;
            for id in message_ids {
                self.advance_in(&mut tables, id, MessageStatus::Read)?;
            }
            drop(tables);
            let mut table = tx.open_table(CONVERSATIONS)?;
            let mut conversation: Conversation =
                self.get_sealed(&table, CONVERSATIONS_NAME, &contact.0)?.unwrap_or_default();
            conversation.unread = 0;
            self.put_sealed(&mut table, CONVERSATIONS_NAME, &contact.0, &conversation)?;
            Ok(())
        })
    }

    /// The latest `limit` messages of a conversation before sequence number
    /// `before` (all if `None`), oldest first, with their sequence numbers.
    ///
    /// Never a partial history: a conversation's messages are numbered 0 to
    /// its `next_seq - 1` and only ever removed all together, so a page
    /// with a number missing or out of place is [`StoreError::Corrupted`];
    /// a record that fails to open is an error too, never skipped.
    pub fn history(
        &self,
        contact: &ContactId,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<(u64, MessageRecord)>, StoreError> {
        let tx = self.read()?;
        let next_seq = match tx.open_table(CONVERSATIONS)?.get(contact.0.as_slice())? {
            Some(v) => self.keys.open::<Conversation>(CONVERSATIONS_NAME, &contact.0, v.value())?.next_seq,
            None => 0,
        };
        let gap = |reason: String| StoreError::Corrupted {
            path: self.path.clone(),
            reason: format!("a conversation's history is incomplete: {reason}"),
        };
        let table = tx.open_table(MESSAGES)?;
        let start = seq_key(contact, 0);
        let end = seq_key(contact, before.unwrap_or(u64::MAX));
        // The numbers this page must hold, newest first: `below - 1` down.
        let mut below = before.unwrap_or(u64::MAX).min(next_seq);
        let mut out = Vec::with_capacity(limit.min(1024));
        // Going back, each message's status row comes just before its
        // record (`status`: the last one met, until its record).
        let mut status: Option<(Vec<u8>, Vec<u8>)> = None;
        for row in table.range(start.as_slice()..end.as_slice())?.rev() {
            if out.len() == limit {
                break;
            }
            let (key, value) = row?;
            if key.value().len() == 25 && key.value()[24] == STATUS_SUFFIX {
                status = Some((key.value().to_vec(), value.value().to_vec()));
                continue;
            }
            let seq = key.value().get(16..).and_then(|s| <[u8; 8]>::try_from(s).ok()).map(u64::from_be_bytes);
            match seq {
                Some(seq) if below > 0 && seq == below - 1 => below = seq,
                Some(seq) if seq >= below => {
                    return Err(gap(format!("message {seq} is out of place (the conversation counts {next_seq})")));
                }
                Some(_) => return Err(gap(format!("message {} is missing", below - 1))),
                None => return Err(StoreError::MalformedRecord { table: MESSAGES_NAME }),
            }
            let mut record: MessageRecord = self.keys.open(MESSAGES_NAME, key.value(), value.value())?;
            // A status row of another message (only in a damaged store) is
            // passed over: the record keeps the status it was written with.
            if let Some((k, v)) = status.take().filter(|(k, _)| k[..24] == *key.value()) {
                record.status = self.keys.open::<MessageState>(MESSAGES_NAME, &k, &v)?.status;
            }
            out.push((below, record));
        }
        if out.len() < limit && below > 0 {
            return Err(gap(format!("message {} is missing", below - 1)));
        }
        out.reverse();
        Ok(out)
    }

    // ---- outbox -------------------------------------------------------------

    /// Every outbox entry, oldest first (per conversation in message order).
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(OUTBOX)?;
        let mut entries: Vec<OutboxEntry> = self.all_sealed(&table, OUTBOX_NAME)?.into_iter().map(|(_, e)| e).collect();
        entries.sort_by_key(|e| (e.queued_at_ms, e.contact, e.seq));
        Ok(entries)
    }

    /// The outbox entries with these message ids, in the order given, in one
    /// read transaction; ids not in the outbox are skipped.
    pub fn outbox_entries(&self, ids: &[[u8; 16]]) -> Result<Vec<OutboxEntry>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(OUTBOX)?;
        let mut entries = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(entry) = self.get_sealed(&table, OUTBOX_NAME, id)? {
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Records one delivery attempt of several messages in one transaction:
    /// each message's status becomes `Sent`, and, from its second attempt
    /// on, its outbox entry takes the attempt count and `next_attempt_at_ms`.
    /// `attempts` pairs each message id with its attempts so far, this one
    /// included (the caller's count: the stored one lags it by one). Returns
    /// the ids whose status changed (became `Sent` now).
    ///
    /// A first attempt leaves its outbox entry as it was queued (0 attempts,
    /// due at once) and writes only the message's two-byte status: rewriting
    /// the entry would re-seal its whole envelope for a count that only
    /// matters once a retry's backoff grows. After a restart such an entry
    /// is sent again at once, as it would be anyway after a crash that lost
    /// this transaction, and the recipient answers `duplicate` if it already
    /// has it.
    ///
    /// Not durable on its own (`Durability::None`): it becomes durable with
    /// the next durable commit. Losing it in a crash only loses the attempt
    /// count and the retry time (the message is retried at once after a
    /// restart) and the `sent` status (it shows `queued` until delivered).
    pub fn record_attempts(
        &self,
        attempts: &[([u8; 16], u32)],
        next_attempt_at_ms: u64,
    ) -> Result<Vec<[u8; 16]>, StoreError> {
        self.write_with(redb::Durability::None, |tx| {
            let mut table = tx.open_table(OUTBOX)?;
            let mut tables = StatusTables::open(tx)?;
            let mut sent = Vec::new();
            for (id, count) in attempts {
                if *count > 1
                    && let Some(mut entry) = self.get_sealed::<OutboxEntry>(&table, OUTBOX_NAME, id)?
                {
                    entry.attempts = *count;
                    entry.next_attempt_at_ms = next_attempt_at_ms;
                    self.put_sealed(&mut table, OUTBOX_NAME, id, &entry)?;
                }
                if self.advance_in(&mut tables, id, MessageStatus::Sent)? {
                    sent.push(*id);
                }
            }
            Ok(sent)
        })
    }

    /// The recipient acknowledged these messages: their outbox entries go and
    /// their status becomes `Delivered`, in one transaction.
    ///
    /// Not made durable on its own (`Durability::None`): it becomes durable
    /// with the next durable commit of this store. A crash before that loses
    /// only acknowledgements, and losing one is harmless: the message is
    /// back in the outbox as `sent`, is sent again, and the recipient, which
    /// stored it durably before acknowledging and keeps its id, answers
    /// `duplicate` without storing it again; the status then becomes
    /// `delivered` again. So `delivered` can be reported without waiting for
    /// an fsync of its own.
    pub fn acknowledge(&self, message_ids: &[[u8; 16]]) -> Result<(), StoreError> {
        let ids: Vec<([u8; 16], MessageStatus)> =
            message_ids.iter().map(|id| (*id, MessageStatus::Delivered)).collect();
        self.write_with(redb::Durability::None, |tx| self.settle_in(tx, &ids))
    }

    /// Drops every outbox entry for `contact` in one transaction (the
    /// contact was blocked): their messages become `Failed`. Returns their ids.
    pub fn drop_outbox_for(&self, contact: &ContactId) -> Result<Vec<[u8; 16]>, StoreError> {
        let ids: Vec<[u8; 16]> =
            self.outbox()?.into_iter().filter(|e| e.contact == *contact).map(|e| e.message_id).collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        let failed: Vec<([u8; 16], MessageStatus)> = ids.iter().map(|id| (*id, MessageStatus::Failed)).collect();
        self.write(|tx| self.settle_in(tx, &failed))?;
        Ok(ids)
    }

    /// Gives up on a message: its outbox entry goes and its status becomes `Failed`.
    pub fn fail_message(&self, message_id: &[u8; 16]) -> Result<(), StoreError> {
        self.write(|tx| self.settle_in(tx, &[(*message_id, MessageStatus::Failed)]))
    }

    /// A recipient's mailbox took these outbox entries: they are marked
    /// deposited (not deposited again) and their status becomes `Stored`,
    /// durably. They stay in the outbox until the recipient acknowledges them.
    pub fn mark_deposited(&self, message_ids: &[[u8; 16]], now_ms: u64) -> Result<(), StoreError> {
        self.write(|tx| {
            for id in message_ids {
                if tx.open_table(OUTBOX)?.get(id.as_slice())?.is_none() {
                    continue;
                }
                tx.open_table(DEPOSITED)?.insert(id.as_slice(), now_ms)?;
                self.advance_status(tx, id, MessageStatus::Stored)?;
            }
            Ok(())
        })
    }

    /// Ids of the outbox entries a mailbox holds.
    pub fn deposited(&self) -> Result<Vec<[u8; 16]>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(DEPOSITED)?;
        let mut out = Vec::new();
        for row in table.iter()? {
            let (key, _) = row?;
            out.push(
                <[u8; 16]>::try_from(key.value()).map_err(|_| StoreError::MalformedRecord { table: DEPOSITED_NAME })?,
            );
        }
        Ok(out)
    }

    // ---- mailboxes ------------------------------------------------------------

    /// The mailboxes this profile registered, in the order they were added.
    pub fn mailboxes(&self) -> Result<Vec<OwnMailbox>, StoreError> {
        let tx = self.read()?;
        let meta = tx.open_table(META)?;
        let Some(value) = meta.get("mailboxes")? else { return Ok(Vec::new()) };
        self.keys.open(META_NAME, b"mailboxes", value.value())
    }

    /// Replaces the list of this profile's mailboxes (at most 4).
    pub fn set_mailboxes(&self, mailboxes: &[OwnMailbox]) -> Result<(), StoreError> {
        if mailboxes.len() > MAX_MAILBOXES || mailboxes.iter().any(|m| m.address.len() > 512) {
            return Err(StoreError::Invalid(format!("at most {MAX_MAILBOXES} mailboxes of at most 512 bytes each")));
        }
        let sealed = self.keys.seal(META_NAME, b"mailboxes", &mailboxes)?;
        self.write(|tx| {
            tx.open_table(META)?.insert("mailboxes", sealed.as_slice())?;
            Ok(())
        })
    }

    /// A contact's mailbox state (empty if none).
    pub fn contact_mailboxes(&self, contact: &ContactId) -> Result<ContactMailboxes, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(CONTACT_MAILBOXES)?;
        Ok(self.get_sealed(&table, CONTACT_MAILBOXES_NAME, &contact.0)?.unwrap_or_default())
    }

    /// Changes a contact's mailbox state.
    pub fn update_contact_mailboxes(
        &self,
        contact: &ContactId,
        f: impl FnOnce(&mut ContactMailboxes),
    ) -> Result<ContactMailboxes, StoreError> {
        self.write(|tx| self.update_contact_mailboxes_in(tx, contact, f))
    }

    fn update_contact_mailboxes_in(
        &self,
        tx: &WriteTransaction,
        contact: &ContactId,
        f: impl FnOnce(&mut ContactMailboxes),
    ) -> Result<ContactMailboxes, StoreError> {
        let mut table = tx.open_table(CONTACT_MAILBOXES)?;
        let mut state: ContactMailboxes =
            self.get_sealed(&table, CONTACT_MAILBOXES_NAME, &contact.0)?.unwrap_or_default();
        f(&mut state);
        if state.theirs.len() > MAX_MAILBOXES || state.theirs.iter().any(|m| m.address.len() > 512) {
            return Err(StoreError::Invalid(format!("at most {MAX_MAILBOXES} mailboxes per contact")));
        }
        self.put_sealed(&mut table, CONTACT_MAILBOXES_NAME, &contact.0, &state)?;
        Ok(state)
    }

    // ---- conversations ------------------------------------------------------

    /// Every conversation, with its contact id.
    pub fn conversations(&self) -> Result<Vec<(ContactId, Conversation)>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(CONVERSATIONS)?;
        Ok(self
            .all_sealed(&table, CONVERSATIONS_NAME)?
            .into_iter()
            .filter_map(|(k, c)| Some((ContactId(k.try_into().ok()?), c)))
            .collect())
    }

    /// A conversation's state (default if none yet).
    pub fn conversation(&self, contact: &ContactId) -> Result<Conversation, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(CONVERSATIONS)?;
        Ok(self.get_sealed(&table, CONVERSATIONS_NAME, &contact.0)?.unwrap_or_default())
    }

    /// Changes a conversation's state in place (read, close, labels…).
    pub fn update_conversation(
        &self,
        contact: &ContactId,
        f: impl FnOnce(&mut Conversation),
    ) -> Result<Conversation, StoreError> {
        self.write(|tx| {
            let mut table = tx.open_table(CONVERSATIONS)?;
            let mut conversation: Conversation =
                self.get_sealed(&table, CONVERSATIONS_NAME, &contact.0)?.unwrap_or_default();
            f(&mut conversation);
            self.put_sealed(&mut table, CONVERSATIONS_NAME, &contact.0, &conversation)?;
            Ok(conversation)
        })
    }

    // ---- business -----------------------------------------------------------

    fn require_business(&self) -> Result<(), StoreError> {
        match self.kind {
            ProfileKind::Business => Ok(()),
            ProfileKind::Personal => Err(StoreError::NotBusiness(self.name.clone())),
        }
    }

    fn business_get<T: DeserializeOwned + Default>(&self, key: &'static str) -> Result<T, StoreError> {
        self.require_business()?;
        let tx = self.read()?;
        let table = tx.open_table(BUSINESS)?;
        match table.get(key)? {
            Some(v) => self.keys.open(BUSINESS_NAME, key.as_bytes(), v.value()),
            None => Ok(T::default()),
        }
    }

    fn business_put<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), StoreError> {
        self.require_business()?;
        self.write(|tx| {
            let sealed = self.keys.seal(BUSINESS_NAME, key.as_bytes(), value)?;
            tx.open_table(BUSINESS)?.insert(key, sealed.as_slice())?;
            Ok(())
        })
    }

    /// The business profile.
    pub fn business_profile(&self) -> Result<BusinessProfile, StoreError> {
        self.business_get("profile")
    }

    /// Replaces the business profile; over-long fields are rejected.
    pub fn set_business_profile(&self, profile: &BusinessProfile) -> Result<(), StoreError> {
        profile.validate()?;
        self.business_put("profile", profile)
    }

    /// Opening hours.
    pub fn business_hours(&self) -> Result<BusinessHours, StoreError> {
        self.business_get("hours")
    }

    /// Replaces the opening hours.
    pub fn set_business_hours(&self, hours: &BusinessHours) -> Result<(), StoreError> {
        hours.validate()?;
        self.business_put("hours", hours)
    }

    /// Greeting and away settings.
    pub fn automations(&self) -> Result<Automations, StoreError> {
        self.business_get("automations")
    }

    /// Replaces greeting and away settings.
    pub fn set_automations(&self, automations: &Automations) -> Result<(), StoreError> {
        automations.validate()?;
        self.business_put("automations", automations)
    }

    /// Adds (or replaces, same id) a catalog item; a zero id gets a random one.
    pub fn put_catalog_item(&self, mut item: CatalogItem) -> Result<CatalogItem, StoreError> {
        self.require_business()?;
        item.validate()?;
        if item.id == [0; 8] {
            random_bytes(&mut item.id)?;
        }
        self.write(|tx| {
            self.put_sealed(&mut tx.open_table(CATALOG)?, CATALOG_NAME, &item.id, &item)?;
            Ok(())
        })?;
        Ok(item)
    }

    /// The catalog, by name.
    pub fn catalog(&self) -> Result<Vec<CatalogItem>, StoreError> {
        self.require_business()?;
        self.list_sorted(CATALOG, CATALOG_NAME, |i: &CatalogItem| i.name.clone())
    }

    /// Removes a catalog item.
    pub fn remove_catalog_item(&self, id: &[u8; 8]) -> Result<(), StoreError> {
        self.require_business()?;
        self.write(|tx| match tx.open_table(CATALOG)?.remove(id.as_slice())? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound("catalog item".into())),
        })
    }

    /// Saves a quick reply (replacing one with the same shortcut).
    pub fn put_quick_reply(&self, reply: &QuickReply) -> Result<(), StoreError> {
        self.require_business()?;
        reply.validate()?;
        let key = self.keys.blind("quick-reply", reply.shortcut.as_bytes());
        self.write(|tx| self.put_sealed(&mut tx.open_table(QUICK_REPLIES)?, QUICK_REPLIES_NAME, &key, reply))
    }

    /// The quick reply for `/shortcut` (pass it without the slash).
    pub fn quick_reply(&self, shortcut: &str) -> Result<Option<QuickReply>, StoreError> {
        self.require_business()?;
        let key = self.keys.blind("quick-reply", shortcut.as_bytes());
        let tx = self.read()?;
        let table = tx.open_table(QUICK_REPLIES)?;
        self.get_sealed(&table, QUICK_REPLIES_NAME, &key)
    }

    /// All quick replies, by shortcut.
    pub fn quick_replies(&self) -> Result<Vec<QuickReply>, StoreError> {
        self.require_business()?;
        self.list_sorted(QUICK_REPLIES, QUICK_REPLIES_NAME, |r: &QuickReply| r.shortcut.clone())
    }

    /// Removes a quick reply.
    pub fn remove_quick_reply(&self, shortcut: &str) -> Result<(), StoreError> {
        self.require_business()?;
        let key = self.keys.blind("quick-reply", shortcut.as_bytes());
        self.write(|tx| match tx.open_table(QUICK_REPLIES)?.remove(key.as_slice())? {
            Some(_) => Ok(()),
            None => Err(StoreError::NotFound(format!("quick reply /{shortcut}"))),
        })
    }

    /// Defines a label (at most [`MAX_LABELS`], names unique).
    pub fn add_label(&self, name: &str, colour: &str) -> Result<Label, StoreError> {
        self.require_business()?;
        let mut label = Label { id: [0; 16], name: name.into(), colour: colour.into() };
        label.validate()?;
        random_bytes(&mut label.id)?;
        self.write(|tx| {
            let mut table = tx.open_table(LABELS)?;
            let existing: Vec<(Vec<u8>, Label)> = self.all_sealed(&table, LABELS_NAME)?;
            if existing.len() >= MAX_LABELS {
                return Err(StoreError::Invalid(format!("a business may define at most {MAX_LABELS} labels")));
            }
            if existing.iter().any(|(_, l)| l.name == label.name) {
                return Err(StoreError::Invalid(format!("a label named {:?} already exists", label.name)));
            }
            self.put_sealed(&mut table, LABELS_NAME, &label.id, &label)?;
            Ok(())
        })?;
        Ok(label)
    }

    /// All labels, by name.
    pub fn labels(&self) -> Result<Vec<Label>, StoreError> {
        self.require_business()?;
        self.list_sorted(LABELS, LABELS_NAME, |l: &Label| l.name.clone())
    }

    /// Removes a label, and takes it off every conversation, in one transaction.
    pub fn remove_label(&self, id: &[u8; 16]) -> Result<(), StoreError> {
        self.require_business()?;
        self.write(|tx| {
            if tx.open_table(LABELS)?.remove(id.as_slice())?.is_none() {
                return Err(StoreError::NotFound("label".into()));
            }
            let mut table = tx.open_table(CONVERSATIONS)?;
            for (key, mut conversation) in self.all_sealed::<Conversation>(&table, CONVERSATIONS_NAME)? {
                if conversation.labels.contains(id) {
                    conversation.labels.retain(|l| l != id);
                    self.put_sealed(&mut table, CONVERSATIONS_NAME, &key, &conversation)?;
                }
            }
            Ok(())
        })
    }
}

fn create_all_tables(tx: &WriteTransaction) -> Result<(), StoreError> {
    tx.open_table(META)?;
    tx.open_table(SECRETS)?;
    tx.open_table(SIGNED_PREKEYS)?;
    tx.open_table(ONE_TIME_PREKEYS)?;
    tx.open_table(CONTACTS)?;
    tx.open_table(CONTACT_NAMES)?;
    tx.open_table(STRANGERS)?;
    tx.open_table(SESSIONS)?;
    tx.open_table(SKIPPED_KEYS)?;
    tx.open_table(SKIPPED_ORDER)?;
    tx.open_table(MESSAGES)?;
    tx.open_table(MESSAGE_INDEX)?;
    tx.open_table(MESSAGE_ALIASES)?;
    tx.open_table(OUTBOX)?;
    tx.open_table(DEPOSITED)?;
    tx.open_table(CONTACT_MAILBOXES)?;
    tx.open_table(CONVERSATIONS)?;
    tx.open_table(BUSINESS)?;
    tx.open_table(CATALOG)?;
    tx.open_table(QUICK_REPLIES)?;
    tx.open_table(LABELS)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::header::{DataDir, KdfParams};

    fn store(dir: &tempfile::TempDir) -> (DataDir, ProfileStore) {
        let mut data = DataDir::create(dir.path(), b"pw", KdfParams::TESTNET).unwrap();
        let store = data.create_profile("personal", ProfileKind::Personal, 1, &mut rand::rng()).unwrap();
        (data, store)
    }

    fn contact(store: &ProfileStore, name: &str) -> ContactId {
        contact_at(store, name, false, 0)
    }

    fn contact_at(store: &ProfileStore, name: &str, request: bool, added_at_ms: u64) -> ContactId {
        let identity = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng()).public();
        let c = Contact {
            peer_id: identity.signing.to_vec(),
            identity,
            signed_prekey: None,
            one_time_prekey: None,
            addresses: vec![],
            display_name: name.into(),
            verified: false,
            blocked: false,
            identity_change: None,
            added_at_ms,
            request,
        };
        store.upsert_contact(c).unwrap().0
    }

    /// A real session snapshot, as the node persists one.
    fn test_session(store: &ProfileStore) -> SessionState {
        let bob = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
        let spk = SignedPrekey::generate(&bob, 1, 0, &mut rand::rng());
        let bundle = PrekeyBundle { identity: bob.public(), signed_prekey: spk.public(), one_time_prekey: None };
        let session = kabar_crypto::Session::initiate(&store.identity().unwrap(), &bundle, &mut rand::rng()).unwrap();
        SessionState::new(session.snapshot())
    }

    /// Seals made by `f`, and the plaintext bytes they sealed.
    fn seals(f: impl FnOnce()) -> (u64, u64) {
        crate::seal::SEALED.with(|c| c.set((0, 0)));
        f();
        crate::seal::SEALED.with(std::cell::Cell::get)
    }

    /// What each step of a message's life seals (1 KiB body, a real session
    /// snapshot, a 1,316-byte envelope); printed with `--nocapture`.
    #[test]
    #[allow(clippy::print_stderr)]
    fn seals_per_message() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store(&dir);
        let alice = contact(&store, "Alice");
        let session = test_session(&store);
        let record = |id: u8, direction: Direction, status: MessageStatus| MessageRecord {
            id: [id; 16],
            direction,
            sent_at_ms: 1,
            received_at_ms: None,
            status,
            body: vec![7; 1024],
        };
        let out = OutgoingMessage {
            contact: alice,
            session: Some(session.clone()),
            message: record(1, Direction::Outgoing, MessageStatus::Queued),
            envelope: vec![1; 1316],
        };
        let inc = IncomingMessage {
            contact: alice,
            session: Some(session.clone()),
            message: Some(record(2, Direction::Incoming, MessageStatus::Delivered)),
            consumed_one_time_prekey: None,
            received_id: [2; 16],
        };
        let steps = [
            ("sent: commit_outgoing", seals(|| drop(store.commit_outgoing(&[out], 1).unwrap()))),
            ("sent: record_attempts (first)", seals(|| drop(store.record_attempts(&[([1; 16], 1)], 2).unwrap()))),
            ("sent: record_attempts (retry)", seals(|| drop(store.record_attempts(&[([1; 16], 2)], 3).unwrap()))),
            ("sent: acknowledge", seals(|| store.acknowledge(&[[1; 16]]).unwrap())),
            ("sent: apply_receipt (read)", seals(|| drop(store.apply_receipt(&alice, &[[1; 16]], &[]).unwrap()))),
            ("received: commit_incoming", seals(|| drop(store.commit_incoming(&[inc], 3).unwrap()))),
            ("received: mark_read", seals(|| store.mark_read(&alice, &[[2; 16]]).unwrap())),
        ];
        for (step, (count, bytes)) in &steps {
            eprintln!("{step:30} {count} seals, {bytes} bytes sealed");
        }
        // Schema 5: acknowledge, apply_receipt and mark_read re-sealed the
        // whole record (1,046 bytes each). Now a status change seals its
        // two-byte state; mark_read also seals the conversation.
        assert_eq!(steps[3].1, (1, 2));
        assert_eq!(steps[4].1, (1, 2));
        assert_eq!(steps[6].1.0, 2);
        assert!(steps[6].1.1 < 16);
        // Each message is sealed once, with its status (2 bytes) beside it.
        assert_eq!(steps[0].1.0, 5, "message, status, outbox entry, session, conversation");
        assert_eq!(steps[5].1.0, 4, "message, status, session, conversation");
        // A first attempt seals only the status; a retry re-seals the
        // outbox entry (its count and time), the status being sent already.
        assert_eq!(steps[1].1, (1, 2));
        assert_eq!(steps[2].1.0, 1);
        assert!(steps[2].1.1 > 1316, "the entry with its envelope");
        assert_eq!(store.message(&[1; 16]).unwrap().unwrap().2.status, MessageStatus::Read);
        assert_eq!(store.message(&[2; 16]).unwrap().unwrap().2.status, MessageStatus::Read);
    }

    fn incoming_item(contact: ContactId, id: u8, shown: bool) -> IncomingMessage {
        IncomingMessage {
            contact,
            session: None,
            message: shown.then(|| MessageRecord {
                id: [id; 16],
                direction: Direction::Incoming,
                sent_at_ms: 1,
                received_at_ms: Some(1),
                status: MessageStatus::Delivered,
                body: b"hi".to_vec(),
            }),
            consumed_one_time_prekey: None,
            received_id: [id; 16],
        }
    }

    /// The rows of `message_index`, parsed.
    fn index_rows(store: &ProfileStore) -> Vec<([u8; 16], IndexRow)> {
        let tx = store.read().unwrap();
        let table = tx.open_table(MESSAGE_INDEX).unwrap();
        table
            .iter()
            .unwrap()
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.value().try_into().unwrap(), IndexRow::decode(v.value()).unwrap())
            })
            .collect()
    }

    #[test]
    fn received_ids_are_index_rows_and_outlive_a_forgotten_contact() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store(&dir);
        let dave = contact(&store, "Dave");
        let items = [incoming_item(dave, 1, true), incoming_item(dave, 2, false), incoming_item(dave, 1, true)];
        let outcomes = store.commit_incoming(&items, 100).unwrap();
        assert_eq!(
            outcomes,
            [ReceiveOutcome::Stored { seq: Some(0) }, ReceiveOutcome::Stored { seq: None }, ReceiveOutcome::Duplicate]
        );
        assert_eq!(
            index_rows(&store),
            [([1; 16], IndexRow::Incoming(seq_key(&dave, 0), 100)), ([2; 16], IndexRow::Received(100))]
        );
        store.forget_contact(&dave).unwrap();
        // Nothing of Dave is stored, but both ids are still received, with
        // their receive times; no status row is left.
        assert_eq!(index_rows(&store), [([1; 16], IndexRow::Received(100)), ([2; 16], IndexRow::Received(100))]);
        assert_eq!(store.read().unwrap().open_table(MESSAGES).unwrap().len().unwrap(), 0);
        let dave = contact(&store, "Dave");
        assert_eq!(store.commit_incoming(&[incoming_item(dave, 1, true)], 200).unwrap(), [ReceiveOutcome::Duplicate]);
        assert!(store.history(&dave, 10, None).unwrap().is_empty());
    }

    #[test]
    fn history_shows_each_message_s_current_status_and_its_status_row_sits_beside_its_record() {
        use MessageStatus::*;
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store(&dir);
        let alice = contact(&store, "Alice");
        let bob = contact(&store, "Bob");
        let items: Vec<IncomingMessage> = (1..=3).map(|i| incoming_item(alice, i, true)).collect();
        store.commit_incoming(&items, 100).unwrap();
        store.commit_incoming(&[incoming_item(bob, 9, true)], 100).unwrap();
        let outgoing = |id: u8| OutgoingMessage {
            contact: alice,
            session: None,
            message: MessageRecord {
                id: [id; 16],
                direction: Direction::Outgoing,
                sent_at_ms: 2,
                received_at_ms: None,
                status: Queued,
                body: b"yes".to_vec(),
            },
            envelope: vec![1],
        };
        store.commit_outgoing(&[outgoing(10), outgoing(11)], 100).unwrap();
        store.mark_read(&alice, &[[2; 16]]).unwrap();
        store.acknowledge(&[[10; 16]]).unwrap();
        let statuses =
            |page: Vec<(u64, MessageRecord)>| page.into_iter().map(|(s, r)| (s, r.status)).collect::<Vec<_>>();
        assert_eq!(
            statuses(store.history(&alice, 10, None).unwrap()),
            [(0, Delivered), (1, Read), (2, Delivered), (3, Delivered), (4, Queued)]
        );
        assert_eq!(statuses(store.history(&alice, 2, Some(4)).unwrap()), [(2, Delivered), (3, Delivered)]);
        assert_eq!(statuses(store.history(&alice, 2, Some(2)).unwrap()), [(0, Delivered), (1, Read)]);
        assert_eq!(statuses(store.history(&bob, 10, None).unwrap()), [(0, Delivered)]);
        // In `messages`: each record, then its status row (position ‖ `s`).
        let tx = store.read().unwrap();
        let keys: Vec<Vec<u8>> =
            tx.open_table(MESSAGES).unwrap().iter().unwrap().map(|r| r.unwrap().0.value().to_vec()).collect();
        assert_eq!(keys.len(), 12);
        for pair in keys.chunks(2) {
            assert_eq!(pair[0].len(), 24);
            assert_eq!(pair[1], status_key(&pair[0].as_slice().try_into().unwrap()));
        }
    }

    #[test]
    fn the_check_finds_damage_in_the_index_and_status_rows() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store(&dir);
        let alice = contact(&store, "Alice");
        store.commit_incoming(&[incoming_item(alice, 1, true), incoming_item(alice, 2, true)], 100).unwrap();
        assert!(crate::check::check_store(&store, None).healthy);
        store
            .write(|tx| {
                tx.open_table(MESSAGES)?.remove(status_key(&seq_key(&alice, 0)).as_slice())?;
                tx.open_table(MESSAGE_INDEX)?.insert([2u8; 16].as_slice(), seq_key(&alice, 1).as_slice())?;
                Ok(())
            })
            .unwrap();
        let report = crate::check::check_store(&store, None);
        let damaged = |table: &str| report.tables.iter().find(|t| t.table == table).unwrap().damaged.clone();
        assert_eq!(damaged(MESSAGES_NAME)[0].reason, "has no status row");
        assert!(damaged(MESSAGE_INDEX_NAME)[0].reason.contains("no known shape"), "{report:#?}");
        // Without its status row a message shows the status it was written with.
        assert_eq!(store.message(&[1; 16]).unwrap().unwrap().2.status, MessageStatus::Delivered);
    }

    #[test]
    fn what_committed_without_an_fsync_is_made_durable_once_and_groups_wait_for_their_end() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store(&dir);
        assert!(!store.make_durable().unwrap(), "nothing waits after durable commits");
        store.acknowledge(&[[7; 16]]).unwrap();
        assert!(store.make_durable().unwrap(), "an acknowledgement waits for a durable commit");
        assert!(!store.make_durable().unwrap(), "and only once");
        store.acknowledge(&[[8; 16]]).unwrap();
        contact(&store, "Alice");
        assert!(!store.make_durable().unwrap(), "a durable commit after it made it durable");
        store.begin_group();
        store.acknowledge(&[[9; 16]]).unwrap();
        assert!(!store.make_durable().unwrap(), "inside a group, its end does it");
        store.end_group().unwrap();
        assert!(!store.make_durable().unwrap());
    }

    #[test]
    fn a_modified_record_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store(&dir);
        let id = contact(&store, "Alice");
        store
            .write(|tx| {
                let mut table = tx.open_table(CONTACTS)?;
                let mut sealed = table.get(id.0.as_slice())?.unwrap().value().to_vec();
                let last = sealed.len() - 1;
                sealed[last] ^= 0x01;
                table.insert(id.0.as_slice(), sealed.as_slice())?;
                Ok(())
            })
            .unwrap();
        assert!(matches!(store.contact(&id), Err(StoreError::TamperedRecord { table: "contacts" })));
    }

    #[test]
    fn a_record_moved_to_another_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store(&dir);
        let alice = contact(&store, "Alice");
        let bob = contact(&store, "Bob");
        store
            .write(|tx| {
                let mut table = tx.open_table(CONTACTS)?;
                let sealed = table.get(alice.0.as_slice())?.unwrap().value().to_vec();
                table.insert(bob.0.as_slice(), sealed.as_slice())?;
                Ok(())
            })
            .unwrap();
        assert!(store.contact(&alice).unwrap().is_some());
        assert!(matches!(store.contact(&bob), Err(StoreError::TamperedRecord { .. })));
    }

    #[test]
    fn a_newer_schema_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (data, store) = store(&dir);
        store
            .write(|tx| {
                tx.open_table(META)?.insert(META_SCHEMA, 99u32.to_be_bytes().as_slice())?;
                Ok(())
            })
            .unwrap();
        drop(store);
        match data.open_profile("personal") {
            Err(StoreError::UnsupportedSchema { found: 99, supported: SCHEMA_VERSION }) => {}
            other => panic!("expected UnsupportedSchema, got {other:?}"),
        }
        // Still 99: nothing was rewritten.
        let db = Database::open(dir.path().join("profiles/personal.redb")).unwrap();
        let tx = db.begin_read().unwrap();
        let v = tx.open_table(META).unwrap().get(META_SCHEMA).unwrap().unwrap().value().to_vec();
        assert_eq!(v, 99u32.to_be_bytes());
    }

    /// Rewrites messages, statuses and received ids in the layout schema 5
    /// and earlier wrote: the status inside the record, a bare position in
    /// `message_index`, received ids in `received`.
    fn messages_to_v5_layout(store: &ProfileStore, tx: &WriteTransaction) -> Result<(), StoreError> {
        let mut states: Vec<(Vec<u8>, MessageState)> = Vec::new();
        for row in tx.open_table(MESSAGES)?.iter()? {
            let (key, value) = row?;
            if key.value().len() == 25 {
                states.push((key.value().to_vec(), store.keys.open(MESSAGES_NAME, key.value(), value.value())?));
            }
        }
        let mut messages = tx.open_table(MESSAGES)?;
        for (key, state) in states {
            messages.remove(key.as_slice())?;
            let mut record: MessageRecord = store.get_sealed(&messages, MESSAGES_NAME, &key[..24])?.unwrap();
            record.status = state.status;
            store.put_sealed(&mut messages, MESSAGES_NAME, &key[..24], &record)?;
        }
        let rows: Vec<(Vec<u8>, IndexRow)> = tx
            .open_table(MESSAGE_INDEX)?
            .iter()?
            .map(|r| r.map(|(k, v)| (k.value().to_vec(), IndexRow::decode(v.value()).unwrap())))
            .collect::<Result<_, _>>()?;
        let mut index = tx.open_table(MESSAGE_INDEX)?;
        let mut received = tx.open_table(RECEIVED)?;
        for (id, row) in rows {
            match row.position() {
                Some(position) => index.insert(id.as_slice(), position.as_slice())?,
                None => index.remove(id.as_slice())?,
            };
            if let Some(at) = row.received_at() {
                received.insert(id.as_slice(), at)?;
            }
        }
        Ok(())
    }

    /// Turns a current database into what schema 1 wrote: no message index.
    fn downgrade_to_schema_1(store: &ProfileStore) {
        store
            .write(|tx| {
                contacts_to_v4_layout(store, tx)?;
                messages_to_v5_layout(store, tx)?;
                tx.delete_table(MESSAGE_INDEX)?;
                tx.open_table(META)?.insert(META_SCHEMA, 1u32.to_be_bytes().as_slice())?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn schema_1_is_migrated_and_its_messages_stay_reachable() {
        let dir = tempfile::tempdir().unwrap();
        let (data, store) = store(&dir);
        let alice = contact(&store, "Alice");
        let session = {
            let bob = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
            let spk = SignedPrekey::generate(&bob, 1, 0, &mut rand::rng());
            let bundle = PrekeyBundle { identity: bob.public(), signed_prekey: spk.public(), one_time_prekey: None };
            kabar_crypto::Session::initiate(&store.identity().unwrap(), &bundle, &mut rand::rng()).unwrap().snapshot()
        };
        let ids: Vec<[u8; 16]> = (0..5u8).map(|i| [i + 1; 16]).collect();
        let batch: Vec<OutgoingMessage> = ids
            .iter()
            .map(|id| OutgoingMessage {
                contact: alice,
                session: Some(SessionState::new(session.clone())),
                message: MessageRecord {
                    id: *id,
                    direction: Direction::Outgoing,
                    sent_at_ms: 1,
                    received_at_ms: None,
                    status: MessageStatus::Queued,
                    body: b"hi".to_vec(),
                },
                envelope: vec![1, 2, 3],
            })
            .collect();
        store.commit_outgoing(&batch, 1).unwrap();
        downgrade_to_schema_1(&store);
        drop(store);

        let store = data.open_profile("personal").unwrap();
        let tx = store.read().unwrap();
        let version = tx.open_table(META).unwrap().get(META_SCHEMA).unwrap().unwrap().value().to_vec();
        assert_eq!(version, SCHEMA_VERSION.to_be_bytes());
        drop(tx);
        for (seq, id) in ids.iter().enumerate() {
            let (who, at, record) = store.message(id).unwrap().expect("indexed by the migration");
            assert_eq!((who, at, record.id), (alice, seq as u64, *id));
        }
        store.acknowledge(&[ids[2]]).unwrap();
        assert_eq!(store.message(&ids[2]).unwrap().unwrap().2.status, MessageStatus::Delivered);
    }

    /// Rows of a table, read raw.
    fn row_count(store: &ProfileStore, name: &str) -> u64 {
        let tx = store.read().unwrap();
        match name {
            CONTACT_NAMES_NAME => tx.open_table(CONTACT_NAMES).unwrap().len().unwrap(),
            STRANGERS_NAME => tx.open_table(STRANGERS).unwrap().len().unwrap(),
            other => panic!("no row count for {other}"),
        }
    }

    #[test]
    fn a_name_lookup_opens_only_the_contacts_of_that_name() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store(&dir);
        let alice = contact(&store, "Alice");
        let bob = contact(&store, "Bob");
        assert_eq!(row_count(&store, CONTACT_NAMES_NAME), 2);
        // Bob's record no longer opens: a lookup of Alice that opened every
        // contact would fail.
        store
            .write(|tx| {
                let mut table = tx.open_table(CONTACTS)?;
                let mut sealed = table.get(bob.0.as_slice())?.unwrap().value().to_vec();
                sealed[30] ^= 0x01;
                table.insert(bob.0.as_slice(), sealed.as_slice())?;
                Ok(())
            })
            .unwrap();
        assert_eq!(store.contact_by_name("Alice").unwrap().unwrap().0, alice);
        assert!(store.contact_by_name("Carol").unwrap().is_none());
        assert!(matches!(store.contact_by_name("Bob"), Err(StoreError::TamperedRecord { .. })));
    }

    /// Turns a current database into what schema 3 wrote: no name index, no
    /// pending strangers, no stranger counters.
    /// Rewrites every contact in the layout schema 4 and earlier wrote.
    fn contacts_to_v4_layout(store: &ProfileStore, tx: &WriteTransaction) -> Result<(), StoreError> {
        let contacts: Vec<(Vec<u8>, Contact)> = store.all_sealed(&tx.open_table(CONTACTS)?, CONTACTS_NAME)?;
        let mut table = tx.open_table(CONTACTS)?;
        for (key, c) in contacts {
            let old = ContactV4 {
                peer_id: c.peer_id,
                identity: c.identity,
                signed_prekey: c.signed_prekey,
                addresses: c.addresses,
                display_name: c.display_name,
                verified: c.verified,
                blocked: c.blocked,
                identity_change: c.identity_change,
                added_at_ms: c.added_at_ms,
                request: c.request,
            };
            store.put_sealed(&mut table, CONTACTS_NAME, &key, &old)?;
        }
        Ok(())
    }

    fn downgrade_to_schema_3(store: &ProfileStore) {
        store
            .write(|tx| {
                contacts_to_v4_layout(store, tx)?;
                messages_to_v5_layout(store, tx)?;
                tx.delete_table(CONTACT_NAMES)?;
                tx.delete_table(STRANGERS)?;
                let mut meta = tx.open_table(META)?;
                meta.remove(META_NEXT_STRANGER)?;
                meta.remove(META_STRANGERS_EVICTED)?;
                meta.insert(META_SCHEMA, 3u32.to_be_bytes().as_slice())?;
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn schema_3_is_migrated_requests_become_pending_strangers_and_names_are_indexed() {
        let dir = tempfile::tempdir().unwrap();
        let (data, store) = store(&dir);
        let alice = contact(&store, "Alice");
        let late = contact_at(&store, "Sam", true, 50);
        let early = contact_at(&store, "Sam", true, 20);
        let bob = contact_at(&store, "Bob", true, 30);
        store.update_contact(&bob, |c| c.request = false).unwrap(); // accepted
        downgrade_to_schema_3(&store);
        drop(store);

        let store = data.open_profile("personal").unwrap();
        let tx = store.read().unwrap();
        let version = tx.open_table(META).unwrap().get(META_SCHEMA).unwrap().unwrap().value().to_vec();
        assert_eq!(version, SCHEMA_VERSION.to_be_bytes());
        drop(tx);
        assert_eq!(row_count(&store, CONTACT_NAMES_NAME), 4);
        assert_eq!(store.contact_by_name("Alice").unwrap().unwrap().0, alice);
        assert_eq!(store.contact_by_name("Bob").unwrap().unwrap().0, bob);
        assert_eq!(store.contact_by_name("Sam").unwrap().unwrap().0, early.min(late));
        // Requests are pending, oldest added first, with no bytes counted.
        assert_eq!(store.strangers().unwrap(), [(early, 0), (late, 0)]);
        assert_eq!(store.strangers_evicted().unwrap(), 0);

        // Admission numbers go on after the migrated ones.
        let new = contact_at(&store, "New", true, 60);
        let limits = StrangerLimits { max_count: 2, max_bytes: 1_000, max_bytes_each: 1_000 };
        assert_eq!(store.admit_stranger(&new, 10, limits).unwrap(), [early]);
        assert_eq!(store.strangers().unwrap(), [(late, 0), (new, 10)]);
        assert_eq!(store.contact_by_name("Sam").unwrap().unwrap().0, late);
        assert_eq!(row_count(&store, CONTACT_NAMES_NAME), 4);
        assert_eq!(row_count(&store, STRANGERS_NAME), 2);
    }

    /// What a protocol version 1 build (schema 4) left: contacts in the old
    /// layout, version 1 sessions, an outbox entry holding a version 1
    /// envelope. Opening it migrates: contacts and history stay, sessions go,
    /// the outbox entry stays for the engine to encrypt again.
    #[test]
    fn schema_4_protocol_1_store_is_migrated_sessions_dropped_outbox_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (data, store) = store(&dir);
        let alice = contact(&store, "Alice");
        let bob = IdentityKeyPair::generate(ProfileKind::Personal, &mut rand::rng());
        let spk = SignedPrekey::generate(&bob, 1, 0, &mut rand::rng());
        let bundle = PrekeyBundle { identity: bob.public(), signed_prekey: spk.public(), one_time_prekey: None };
        let mut session =
            kabar_crypto::Session::initiate(&store.identity().unwrap(), &bundle, &mut rand::rng()).unwrap();
        let envelope = session.encrypt(b"queued under version 1", &mut rand::rng()).unwrap();
        let id = envelope.message_id().0;
        let mut v1_envelope = envelope.encode();
        v1_envelope[0] = 1;
        let message = MessageRecord {
            id,
            direction: Direction::Outgoing,
            sent_at_ms: 5,
            received_at_ms: None,
            status: MessageStatus::Queued,
            body: b"queued".to_vec(),
        };
        let item = OutgoingMessage {
            contact: alice,
            session: Some(SessionState::new(session.snapshot())),
            message,
            envelope: v1_envelope.clone(),
        };
        store.commit_outgoing(&[item], 5).unwrap();
        store
            .write(|tx| {
                contacts_to_v4_layout(&store, tx)?;
                messages_to_v5_layout(&store, tx)?;
                tx.open_table(META)?.insert(META_SCHEMA, 4u32.to_be_bytes().as_slice())?;
                Ok(())
            })
            .unwrap();
        // The old layout does not read as the new one.
        assert!(store.contact(&alice).is_err());
        drop(store);

        let store = data.open_profile("personal").unwrap();
        let tx = store.read().unwrap();
        let version = tx.open_table(META).unwrap().get(META_SCHEMA).unwrap().unwrap().value().to_vec();
        assert_eq!(version, SCHEMA_VERSION.to_be_bytes());
        drop(tx);
        let migrated = store.contact(&alice).unwrap().unwrap();
        assert_eq!(migrated.display_name, "Alice");
        assert_eq!(migrated.one_time_prekey, None);
        assert!(store.session(&alice).unwrap().is_none(), "version 1 sessions are dropped");
        let outbox = store.outbox().unwrap();
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].envelope, v1_envelope);
        assert_eq!(store.message(&id).unwrap().unwrap().2.body, b"queued");
        assert_eq!(store.contact_by_name("Alice").unwrap().unwrap().0, alice);
    }

    #[test]
    fn one_time_prekeys_are_handed_out_once_and_replenished() {
        let dir = tempfile::tempdir().unwrap();
        let (data, store) = store(&dir);
        let total = store.offerable_one_time_prekeys().unwrap();
        assert_eq!(total, u64::from(INITIAL_ONE_TIME_PREKEYS));
        let first = store.hand_out_one_time_prekey(1_000).unwrap().unwrap();
        let second = store.hand_out_one_time_prekey(1_000).unwrap().unwrap();
        assert_ne!(first.id, second.id);
        // Handed out is durable: a reopened store does not offer it again.
        drop(store);
        let store = data.open_profile("personal").unwrap();
        let third = store.hand_out_one_time_prekey(1_000).unwrap().unwrap();
        assert!(third.id > second.id);
        assert_eq!(store.offerable_one_time_prekeys().unwrap(), total - 3);
        // The secrets stay for the prekey messages that will use them.
        assert!(store.one_time_prekey(first.id).unwrap().is_some());
        // The supply runs out: None, then replenishing makes more, after
        // every id handed out.
        while store.hand_out_one_time_prekey(1_000).unwrap().is_some() {}
        assert_eq!(store.offerable_one_time_prekeys().unwrap(), 0);
        assert_eq!(store.replenish_offerable_one_time_prekeys(10, &mut rand::rng()).unwrap(), 10);
        let fresh = store.hand_out_one_time_prekey(1_000).unwrap().unwrap();
        assert!(fresh.id > third.id);
        // Handed out but never used: at most `max_issued` kept, oldest first.
        let kept = store.hand_out_one_time_prekey(5).unwrap().unwrap();
        assert_eq!(store.one_time_prekey_count().unwrap(), 5 + 8);
        assert!(store.one_time_prekey(first.id).unwrap().is_none());
        assert!(store.one_time_prekey(kept.id).unwrap().is_some());
    }

    #[test]
    fn signed_prekeys_rotate_on_schedule_and_old_ones_leave_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let (_, store) = store(&dir);
        let day = 86_400;
        let first = store.current_signed_prekey().unwrap();
        assert_eq!(first.public().created_at, 1);
        assert!(store.maintain_signed_prekeys(6 * day, 7 * day, 28 * day, &mut rand::rng()).unwrap().is_none());
        let second = store.maintain_signed_prekeys(7 * day + 1, 7 * day, 28 * day, &mut rand::rng()).unwrap().unwrap();
        assert_eq!(second.id(), first.id() + 1);
        assert_eq!(store.current_signed_prekey().unwrap().id(), second.id());
        // The old key stays through the grace counted from the rotation.
        assert!(store.signed_prekey(first.id()).unwrap().is_some());
        store.maintain_signed_prekeys(7 * day + 1 + 28 * day - 1, 70 * day, 28 * day, &mut rand::rng()).unwrap();
        assert!(store.signed_prekey(first.id()).unwrap().is_some());
        store.maintain_signed_prekeys(7 * day + 1 + 28 * day, 70 * day, 28 * day, &mut rand::rng()).unwrap();
        assert!(store.signed_prekey(first.id()).unwrap().is_none());
        assert!(store.signed_prekey(second.id()).unwrap().is_some());
    }
}
