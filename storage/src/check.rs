//! Damaged stores: opening a profile database without writing to it, and
//! checking every table and record of it.
//!
//! redb writes to a file as it opens it (its header's shutdown flag, a
//! repair after an unclean shutdown or around damage it can step over) and
//! as it closes it (its allocator state). A start that is refused and
//! `kabar store check` must leave every byte as it was, so both open the
//! file through a `MemoryOverlay`: reads come from the file, writes stay
//! in memory and go with it. The file is opened read-write only for redb's
//! locks, so a database a running node holds is reported in use
//! ([`StoreError::InUse`]); it is never written through this backend.
//!
//! The open runs redb's integrity check, which verifies the checksum of
//! every page of the committed trees: a cleanly closed file is otherwise
//! trusted, and a damaged page then reads as garbage (rows missing, records
//! that fail authentication, or a panic inside redb).
//!
//! redb can panic on bytes it did not write. Every open and scan here runs
//! under `contained`, which turns a panic into [`StoreError::Corrupted`]
//! naming the file: the store boundary never unwinds into its caller.
//!
//! `check_store` reads every row of every table, opens (decrypts and
//! decodes) every sealed record, checks the shape of the clear ones (every
//! `message_index` row, every `message_status` row and every message
//! agreeing on positions), and checks that each conversation's messages
//! are numbered 0 to `next_seq - 1` with none missing: a [`ProfileReport`].

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Bound;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kabar_crypto::{IdentityKeyPair, OneTimePrekey, SignedPrekey};
use redb::backends::FileBackend;
use redb::{BackendError, Builder, Database, ReadTransaction, ReadableDatabase, StorageBackend, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StoreError;
use crate::index::{IndexRow, MessageState, Position, STATUS_SUFFIX, status_key};
use crate::model::*;
use crate::schema::*;
use crate::store::ProfileStore;

/// redb's page cache while checking a file (it only reads through once).
const CHECK_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Damaged rows listed per table; more are counted, not listed.
pub const MAX_LISTED: usize = 100;
/// Overlay block size (redb's page size; any size works).
const BLOCK: u64 = 4096;

/// Runs `f`, turning a panic (redb on bytes it did not write) into
/// [`StoreError::Corrupted`] naming `path`.
pub(crate) fn contained<T>(path: &Path, f: impl FnOnce() -> Result<T, StoreError>) -> Result<T, StoreError> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result.map_err(|e| e.in_file(path)),
        Err(panic) => Err(StoreError::Corrupted {
            path: path.to_path_buf(),
            reason: format!("the database engine failed reading it ({})", panic_text(panic.as_ref())),
        }),
    }
}

/// Drops a store whose file may be damaged: redb's close reads (and, for
/// a store opened by [`open_unwritten`], writes to memory) and could panic
/// on damaged bytes.
pub(crate) fn close(store: ProfileStore) {
    let path = store.path().to_path_buf();
    let _ = contained(&path, || {
        drop(store);
        Ok(())
    });
}

/// The message of a caught panic.
pub fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic".to_string()
    }
}

/// A file under an in-memory layer: redb reads the file and its own writes,
/// which never reach the file. Locks are the file's.
#[derive(Debug)]
struct MemoryOverlay {
    file: FileBackend,
    /// Whether the file is open for writing, which the lock calls need.
    lockable: bool,
    state: Mutex<OverlayState>,
}

#[derive(Debug)]
struct OverlayState {
    /// The length redb sees.
    len: u64,
    /// Bytes of the file at or past this offset are not seen (the length
    /// was cut below it once: what comes back is zeros).
    file_visible: u64,
    /// Blocks written, by index: their bytes replace the file's.
    blocks: HashMap<u64, Box<[u8]>>,
}

fn eof() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "read past the end of the database file")
}

impl MemoryOverlay {
    fn new(file: File, lockable: bool) -> io::Result<Self> {
        let len = file.metadata()?.len();
        let file = FileBackend::new(file).map_err(|e| io::Error::other(e.to_string()))?;
        Ok(MemoryOverlay {
            file,
            lockable,
            state: Mutex::new(OverlayState { len, file_visible: len, blocks: HashMap::new() }),
        })
    }

    fn lock(&self) -> io::Result<std::sync::MutexGuard<'_, OverlayState>> {
        self.state.lock().map_err(|_| io::Error::other("overlay lock poisoned"))
    }

    /// `out` filled from the file where it is visible, zeros elsewhere.
    fn read_file(&self, state: &OverlayState, offset: u64, out: &mut [u8]) -> io::Result<()> {
        out.fill(0);
        let end = (offset + out.len() as u64).min(state.file_visible);
        if end > offset {
            let n = usize::try_from(end - offset).map_err(io::Error::other)?;
            self.file.read(offset, &mut out[..n])?;
        }
        Ok(())
    }
}

impl StorageBackend for MemoryOverlay {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock()?.len)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let state = self.lock()?;
        let end = offset.checked_add(out.len() as u64).ok_or_else(eof)?;
        if end > state.len {
            return Err(eof());
        }
        self.read_file(&state, offset, out)?;
        if state.blocks.is_empty() || out.is_empty() {
            return Ok(());
        }
        for index in offset / BLOCK..=(end - 1) / BLOCK {
            let Some(block) = state.blocks.get(&index) else { continue };
            let start = (index * BLOCK).max(offset);
            let stop = ((index + 1) * BLOCK).min(end);
            let from = (start - index * BLOCK) as usize..(stop - index * BLOCK) as usize;
            let to = (start - offset) as usize..(stop - offset) as usize;
            out[to].copy_from_slice(&block[from]);
        }
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut state = self.lock()?;
        if len < state.len {
            state.file_visible = state.file_visible.min(len);
            state.blocks.retain(|index, _| index * BLOCK < len);
            let tail = len % BLOCK;
            if tail != 0
                && let Some(block) = state.blocks.get_mut(&(len / BLOCK))
            {
                block[tail as usize..].fill(0);
            }
        }
        state.len = len;
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut state = self.lock()?;
        let end = offset.checked_add(data.len() as u64).ok_or_else(eof)?;
        if data.is_empty() {
            return Ok(());
        }
        for index in offset / BLOCK..=(end - 1) / BLOCK {
            if !state.blocks.contains_key(&index) {
                let mut block = vec![0u8; BLOCK as usize].into_boxed_slice();
                let readable = state.len.saturating_sub(index * BLOCK).min(BLOCK) as usize;
                self.read_file(&state, index * BLOCK, &mut block[..readable])?;
                state.blocks.insert(index, block);
            }
            let start = (index * BLOCK).max(offset);
            let stop = ((index + 1) * BLOCK).min(end);
            let to = (start - index * BLOCK) as usize..(stop - index * BLOCK) as usize;
            let from = (start - offset) as usize..(stop - offset) as usize;
            if let Some(block) = state.blocks.get_mut(&index) {
                block[to].copy_from_slice(&data[from]);
            }
        }
        state.len = state.len.max(end);
        Ok(())
    }

    fn close(&self) -> Result<(), io::Error> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        if !self.lockable {
            return Err(BackendError::Unsupported);
        }
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        if !self.lockable {
            return Err(BackendError::Unsupported);
        }
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        if !self.lockable {
            return Err(BackendError::Unsupported);
        }
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        if !self.lockable {
            return Err(BackendError::Unsupported);
        }
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        if !self.lockable {
            return Err(BackendError::Unsupported);
        }
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        if !self.lockable {
            return Err(BackendError::Unsupported);
        }
        self.file.query_lock_range(start, end)
    }
}

/// Opens the database at `path` without writing to it: through a
/// [`MemoryOverlay`], with redb's integrity check (every page's checksum)
/// if `verify`. Damage is [`StoreError::Corrupted`] naming the file.
pub(crate) fn open_unwritten(path: &Path, verify: bool) -> Result<Database, StoreError> {
    let corrupted = |reason: &str| StoreError::Corrupted { path: path.to_path_buf(), reason: reason.to_string() };
    let (file, lockable) = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(file) => (file, true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(corrupted("the profile database file is missing"));
        }
        // A copy on read-only media, or without write permission: checked
        // all the same, without redb's locks.
        Err(e) if matches!(e.kind(), io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem) => {
            let file = File::open(path).map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
            (file, false)
        }
        Err(e) => return Err(StoreError::io(format!("opening {}", path.display()), e)),
    };
    let overlay =
        MemoryOverlay::new(file, lockable).map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
    if overlay.lock().map_err(|e| StoreError::io("opening", e))?.len == 0 {
        // redb would make a new database in an empty file.
        return Err(corrupted("the file is empty"));
    }
    contained(path, || {
        Builder::new()
            .set_check_integrity_on_open(verify)
            .set_cache_size(CHECK_CACHE_BYTES)
            .create_with_backend(overlay)
            .map_err(|e| crate::store::map_open_error(path, e))
    })
}

/// What the check (`DataDir::check_profile`) found in one profile.
#[derive(Debug, Clone, Serialize)]
pub struct ProfileReport {
    /// Profile name.
    pub profile: String,
    /// Its database file.
    pub file: PathBuf,
    /// Whether nothing is damaged.
    pub healthy: bool,
    /// Damage to the file as a whole (a page whose checksum fails, a
    /// truncated or unreadable file, a wrong key): `None` if the file
    /// verified. The tables are then read without that check, for what
    /// can still be read (`tables` may be empty).
    pub error: Option<String>,
    /// The schema version the tables were checked at, if it could be read:
    /// the file's, or the current one for an older file (migrated in memory
    /// first, never on disk).
    pub schema_version: Option<u32>,
    /// Every table, in schema order.
    pub tables: Vec<TableReport>,
}

/// What the check found in one table.
#[derive(Debug, Clone, Serialize)]
pub struct TableReport {
    /// Table name.
    pub table: &'static str,
    /// Rows read.
    pub rows: u64,
    /// Rows that failed a check (all of them, even past [`MAX_LISTED`]).
    pub damaged_rows: u64,
    /// The first [`MAX_LISTED`] damaged rows.
    pub damaged: Vec<DamagedRow>,
    /// Why reading the table stopped before its end, if it did.
    pub error: Option<String>,
}

impl TableReport {
    /// Whether the table read to its end with no damaged row.
    pub fn healthy(&self) -> bool {
        self.damaged_rows == 0 && self.error.is_none()
    }

    fn damaged(&mut self, key: &[u8], reason: impl Into<String>) {
        self.damaged_rows += 1;
        if self.damaged.len() < MAX_LISTED {
            self.damaged.push(DamagedRow { key: kabar_crypto::hex::encode(key), reason: reason.into() });
        }
    }
}

/// One damaged row.
#[derive(Debug, Clone, Serialize)]
pub struct DamagedRow {
    /// Its key, hex (keys are opaque ids, never names or text).
    pub key: String,
    /// What is wrong with it.
    pub reason: String,
}

impl ProfileReport {
    /// A report of a profile whose file could not be opened at all.
    pub(crate) fn unreadable(profile: &str, file: &Path, error: &StoreError) -> Self {
        ProfileReport {
            profile: profile.to_string(),
            file: file.to_path_buf(),
            healthy: false,
            error: Some(damage_text(error)),
            schema_version: None,
            tables: Vec::new(),
        }
    }
}

/// What a report says of an error: a damaged file's reason (the report
/// names the file), else the error.
fn damage_text(e: &StoreError) -> String {
    match e {
        StoreError::Corrupted { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// Checks the store of an open profile (see the module doc); `error` is
/// the damage already found in the file as a whole, if any.
pub(crate) fn check_store(store: &ProfileStore, error: Option<&StoreError>) -> ProfileReport {
    let path = store.path();
    let mut report = ProfileReport {
        profile: store.name().to_string(),
        file: path.to_path_buf(),
        healthy: false,
        error: error.map(damage_text),
        schema_version: None,
        tables: Vec::new(),
    };
    let tx = match contained(path, || Ok(store.db.begin_read()?)) {
        Ok(tx) => tx,
        Err(e) => {
            report.error.get_or_insert(damage_text(&e));
            return report;
        }
    };
    let scan = Scan { store, tx: &tx };
    let mut schema = None;
    report.tables.push(scan.table((META_NAME, META), str_key, bytes, |key, value| {
        let key = std::str::from_utf8(key).map_err(|_| "key is not text".to_string())?;
        scan.meta_row(key, value, &mut schema)
    }));
    report.schema_version = schema;
    report.tables.push(scan.table((SECRETS_NAME, SECRETS), str_key, bytes, |key, value| match key {
        b"identity" => scan.sealed::<IdentityKeyPair>(SECRETS_NAME, key, value).map(drop),
        _ => Err("unknown key".into()),
    }));
    report.tables.push(scan.table((SIGNED_PREKEYS_NAME, SIGNED_PREKEYS), u32_key, bytes, |key, value| {
        let spk: SignedPrekey = scan.sealed(SIGNED_PREKEYS_NAME, key, value)?;
        if spk.id().to_be_bytes() != key {
            return Err(format!("holds signed prekey {} under another id", spk.id()));
        }
        Ok(())
    }));
    report.tables.push(scan.table((ONE_TIME_PREKEYS_NAME, ONE_TIME_PREKEYS), u32_key, bytes, |key, value| {
        let opk: OneTimePrekey = scan.sealed(ONE_TIME_PREKEYS_NAME, key, value)?;
        if opk.id().to_be_bytes() != key {
            return Err(format!("holds one-time prekey {} under another id", opk.id()));
        }
        Ok(())
    }));
    report.tables.push(scan.sealed_table::<Contact>(CONTACTS, CONTACTS_NAME, 16));
    report.tables.push(scan.table((CONTACT_NAMES_NAME, CONTACT_NAMES), slice_key, unit, |key, _| key_len(key, 32)));
    report.tables.push(scan.table((STRANGERS_NAME, STRANGERS), slice_key, u64_value, |key, _| key_len(key, 24)));
    // Sessions, and how many skipped keys each says it holds (schema 7:
    // the keys are rows of their own; each must belong to a session, and
    // each session hold as many as it counts).
    let mut held: HashMap<crate::skipped::SessionPrefix, usize> = HashMap::new();
    let mut sessions = scan.table((SESSIONS_NAME, SESSIONS), slice_key, bytes, |key, value| {
        key_len(key, 16)?;
        let state: SessionState = scan.sealed(SESSIONS_NAME, key, value)?;
        let contact = ContactId(split_position(key).0);
        for session in state.all() {
            held.insert(store.session_prefix(&contact, &session.id()), session.skipped_keys());
        }
        Ok(())
    });
    let mut orders: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut counted: HashMap<crate::skipped::SessionPrefix, usize> = HashMap::new();
    report.tables.push(scan.table((SKIPPED_KEYS_NAME, SKIPPED_KEYS), slice_key, bytes, |key, value| {
        key_len(key, crate::skipped::KEY_LEN)?;
        let stored: crate::skipped::StoredKey = scan.sealed(SKIPPED_KEYS_NAME, key, value)?;
        orders.insert(key.to_vec(), stored.order);
        let prefix: crate::skipped::SessionPrefix = key[..24].try_into().map_err(|_| "short key".to_string())?;
        if !held.contains_key(&prefix) {
            return Err("a skipped key of no stored session".into());
        }
        *counted.entry(prefix).or_default() += 1;
        Ok(())
    }));
    report.tables.push(scan.table((SKIPPED_ORDER_NAME, SKIPPED_ORDER), slice_key, unit, |key, _| {
        key_len(key, crate::skipped::ORDER_LEN)?;
        let prefix: crate::skipped::SessionPrefix = key[..24].try_into().map_err(|_| "short key".to_string())?;
        let slot = crate::skipped::slot_of_order(key).ok_or_else(|| "malformed key".to_string())?;
        let order = key.get(24..32).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes);
        match orders.get(crate::skipped::key_of(&prefix, &slot).as_slice()) {
            Some(o) if Some(*o) == order => Ok(()),
            _ => Err("names no skipped key (or one with another insertion number)".into()),
        }
    }));
    let mut miscounted: Vec<([u8; 16], String)> = held
        .iter()
        .filter(|(prefix, n)| counted.get(*prefix).copied().unwrap_or(0) != **n)
        .map(|(prefix, n)| {
            let rows = counted.get(prefix).copied().unwrap_or(0);
            (split_position(prefix).0, format!("a session counts {n} skipped keys; {rows} are stored"))
        })
        .collect();
    miscounted.sort();
    for (contact, reason) in miscounted {
        sessions.damaged(&contact, reason);
    }
    let at = report.tables.iter().position(|t| t.table == SKIPPED_KEYS_NAME).unwrap_or(0);
    report.tables.insert(at, sessions);
    // Whether a row is in `messages` (records by position, status rows by
    // position ‖ `s`).
    let stored_messages = contained(path, || Ok(tx.open_table(MESSAGES)?));
    let has = |table: &Result<redb::ReadOnlyTable<&'static [u8], &'static [u8]>, StoreError>,
               name: &str,
               position: &[u8]|
     -> Result<bool, String> {
        match table {
            Ok(table) => {
                contained(path, || Ok(redb::ReadableTable::get(table, position)?.is_some())).map_err(|e| e.to_string())
            }
            Err(e) => Err(format!("the {name} table cannot be read: {}", damage_text(e))),
        }
    };
    // Messages: each conversation's sequence numbers, to compare with its
    // `next_seq` below; each record has its status row and each status row
    // its record.
    let mut numbered: HashMap<[u8; 16], (u64, u64)> = HashMap::new();
    let mut messages = scan.table((MESSAGES_NAME, MESSAGES), slice_key, bytes, |key, value| {
        if key.len() == 25 && key[24] == STATUS_SUFFIX {
            scan.sealed::<MessageState>(MESSAGES_NAME, key, value)?;
            if !has(&stored_messages, MESSAGES_NAME, &key[..24])? {
                return Err("the status of a message that is not stored".into());
            }
            return Ok(());
        }
        key_len(key, 24)?;
        scan.sealed::<MessageRecord>(MESSAGES_NAME, key, value)?;
        let (contact, seq) = split_position(key);
        let (count, top) = numbered.entry(contact).or_insert((0, 0));
        *count += 1;
        *top = (*top).max(seq);
        let position: Position = key.try_into().map_err(|_| "a key of no known shape".to_string())?;
        if !has(&stored_messages, MESSAGES_NAME, &status_key(&position))? {
            return Err("has no status row".into());
        }
        Ok(())
    });
    // Each index row has one of the known shapes, and one naming a message
    // points at a stored one (rows leave with their message, when its
    // conversation is forgotten).
    report.tables.push(scan.table((MESSAGE_INDEX_NAME, MESSAGE_INDEX), slice_key, bytes, |key, value| {
        key_len(key, 16)?;
        let row = IndexRow::decode(value).ok_or_else(|| format!("a {}-byte value of no known shape", value.len()))?;
        match row.position() {
            Some(position) if !has(&stored_messages, MESSAGES_NAME, &position)? => {
                Err(format!("points at message position {}, which is not stored", kabar_crypto::hex::encode(&position)))
            }
            _ => Ok(()),
        }
    }));
    report.tables.push(scan.table((MESSAGE_ALIASES_NAME, MESSAGE_ALIASES), slice_key, unit, |key, _| key_len(key, 40)));
    report.tables.push(scan.sealed_table::<OutboxEntry>(OUTBOX, OUTBOX_NAME, 16));
    report.tables.push(scan.table((DEPOSITED_NAME, DEPOSITED), slice_key, u64_value, |key, _| key_len(key, 16)));
    report.tables.push(scan.sealed_table::<ContactMailboxes>(CONTACT_MAILBOXES, CONTACT_MAILBOXES_NAME, 16));
    let mut conversations = HashMap::new();
    report.tables.push(scan.table((CONVERSATIONS_NAME, CONVERSATIONS), slice_key, bytes, |key, value| {
        key_len(key, 16)?;
        let conversation: Conversation = scan.sealed(CONVERSATIONS_NAME, key, value)?;
        conversations.insert(split_position(key).0, conversation.next_seq);
        Ok(())
    }));
    // Every conversation's messages are numbered 0..next_seq, none missing
    // (messages are only ever removed with their whole conversation).
    let mut gaps: Vec<([u8; 16], String)> = Vec::new();
    for (contact, (count, top)) in &numbered {
        let next = conversations.get(contact).copied().unwrap_or(0);
        if *count != next || top + 1 != next {
            gaps.push((*contact, format!("conversation has {count} messages numbered up to {top}; it counts {next}")));
        }
    }
    for (contact, next) in &conversations {
        if *next > 0 && !numbered.contains_key(contact) {
            gaps.push((*contact, format!("conversation counts {next} messages; none is stored")));
        }
    }
    gaps.sort();
    for (contact, reason) in gaps {
        messages.damaged(&contact, reason);
    }
    report.tables.insert(report.tables.iter().position(|t| t.table == MESSAGE_INDEX_NAME).unwrap_or(0), messages);
    report.tables.push(scan.table((BUSINESS_NAME, BUSINESS), str_key, bytes, |key, value| match key {
        b"profile" => scan.sealed::<BusinessProfile>(BUSINESS_NAME, key, value).map(drop),
        b"hours" => scan.sealed::<BusinessHours>(BUSINESS_NAME, key, value).map(drop),
        b"automations" => scan.sealed::<Automations>(BUSINESS_NAME, key, value).map(drop),
        _ => Err("unknown key".into()),
    }));
    report.tables.push(scan.sealed_table::<CatalogItem>(CATALOG, CATALOG_NAME, 8));
    report.tables.push(scan.sealed_table::<QuickReply>(QUICK_REPLIES, QUICK_REPLIES_NAME, 16));
    report.tables.push(scan.sealed_table::<Label>(LABELS, LABELS_NAME, 16));
    report.healthy = report.error.is_none() && report.tables.iter().all(TableReport::healthy);
    report
}

fn split_position(key: &[u8]) -> ([u8; 16], u64) {
    let mut contact = [0u8; 16];
    contact.copy_from_slice(&key[..16]);
    let seq = key.get(16..24).and_then(|s| <[u8; 8]>::try_from(s).ok()).map_or(0, u64::from_be_bytes);
    (contact, seq)
}

fn key_len(key: &[u8], len: usize) -> Result<(), String> {
    if key.len() == len { Ok(()) } else { Err(format!("key is {} bytes, not {len}", key.len())) }
}

fn str_key(key: &str) -> Vec<u8> {
    key.as_bytes().to_vec()
}

fn u32_key(key: u32) -> Vec<u8> {
    key.to_be_bytes().to_vec()
}

fn slice_key(key: &[u8]) -> Vec<u8> {
    key.to_vec()
}

fn bytes(value: &[u8]) -> Vec<u8> {
    value.to_vec()
}

fn unit(_: ()) -> Vec<u8> {
    Vec::new()
}

fn u64_value(value: u64) -> Vec<u8> {
    value.to_be_bytes().to_vec()
}

/// One read transaction over a store, to scan its tables.
struct Scan<'a> {
    store: &'a ProfileStore,
    tx: &'a ReadTransaction,
}

impl Scan<'_> {
    /// Opens a sealed record (decrypts and decodes it).
    fn sealed<T: DeserializeOwned>(&self, table: &'static str, key: &[u8], value: &[u8]) -> Result<T, String> {
        self.store.keys.open(table, key, value).map_err(|e| e.to_string())
    }

    /// A table whose every value is a sealed `T` under a `key_len`-byte key.
    fn sealed_table<T: DeserializeOwned>(
        &self,
        table: TableDefinition<'static, &'static [u8], &'static [u8]>,
        name: &'static str,
        key_bytes: usize,
    ) -> TableReport {
        self.table((name, table), slice_key, bytes, |key, value| {
            key_len(key, key_bytes)?;
            self.sealed::<T>(name, key, value).map(drop)
        })
    }

    /// Reads every row of `table`, giving `check` its key and value as
    /// bytes (`key` and `value` turn them into bytes); a row `check`
    /// refuses is a damaged row. A read error, or a panic, ends the table.
    fn table<K: redb::Key + 'static, V: redb::Value + 'static>(
        &self,
        (name, table): (&'static str, TableDefinition<'static, K, V>),
        key: impl for<'k> Fn(K::SelfType<'k>) -> Vec<u8>,
        value: impl for<'v> Fn(V::SelfType<'v>) -> Vec<u8>,
        mut check: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> TableReport {
        let mut report = TableReport { table: name, rows: 0, damaged_rows: 0, damaged: Vec::new(), error: None };
        let path = self.store.path();
        let read = contained(path, || {
            let handle = self.tx.open_table(table)?;
            for row in redb::ReadableTable::iter(&handle)? {
                let (k, v) = row?;
                let (k, v) = (key(k.value()), value(v.value()));
                report.rows += 1;
                if let Err(reason) = check(&k, &v) {
                    report.damaged(&k, reason);
                }
            }
            Ok(())
        });
        if let Err(e) = read {
            report.error = Some(damage_text(&e));
        }
        report
    }

    fn meta_row(&self, key: &str, value: &[u8], schema: &mut Option<u32>) -> Result<(), String> {
        let fixed = |len: usize| {
            if value.len() == len { Ok(()) } else { Err(format!("value is {} bytes, not {len}", value.len())) }
        };
        match key {
            META_SCHEMA => {
                fixed(4)?;
                *schema = <[u8; 4]>::try_from(value).ok().map(u32::from_be_bytes);
                Ok(())
            }
            META_PROFILE => {
                let check: crate::store::ProfileCheck = self.sealed(META_NAME, key.as_bytes(), value)?;
                if check.name != self.store.name() || check.kind != self.store.kind() {
                    return Err("names another profile".into());
                }
                Ok(())
            }
            META_CURRENT_SPK | META_NEXT_OPK | META_NEXT_OFFER_OPK => fixed(4),
            META_NEXT_STRANGER | META_STRANGERS_EVICTED => fixed(8),
            "listen_port_tcp" | "listen_port_udp" => fixed(2),
            "relays" | "announced_addresses" => self.sealed::<Vec<String>>(META_NAME, key.as_bytes(), value).map(drop),
            "mailboxes" => self.sealed::<Vec<OwnMailbox>>(META_NAME, key.as_bytes(), value).map(drop),
            _ => Err("unknown key".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overlay_reads_its_own_writes_and_never_writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        let original: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &original).unwrap();
        let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
        let overlay = MemoryOverlay::new(file, true).unwrap();
        let read = |offset: u64, len: usize| {
            let mut out = vec![0u8; len];
            overlay.read(offset, &mut out).map(|()| out)
        };
        assert_eq!(read(0, 10_000).unwrap(), original);
        // Across a block boundary.
        overlay.write(4090, &[1; 10]).unwrap();
        let mut expected = original[4085..4105].to_vec();
        expected[5..15].fill(1);
        assert_eq!(read(4085, 20).unwrap(), expected);
        // Past the end: the file grows, the gap reads as zeros.
        overlay.write(12_000, &[2; 4]).unwrap();
        assert_eq!(overlay.len().unwrap(), 12_004);
        assert_eq!(read(10_000, 2_000).unwrap(), vec![0; 2_000]);
        assert_eq!(read(12_000, 4).unwrap(), vec![2; 4]);
        // Cut, then grown again: what was cut (file or written) is zeros.
        overlay.set_len(4095).unwrap();
        overlay.set_len(9_000).unwrap();
        assert_eq!(read(4090, 5).unwrap(), vec![1; 5]);
        assert_eq!(read(4095, 4_905).unwrap(), vec![0; 4_905]);
        assert!(read(8_999, 2).is_err(), "past the end");
        overlay.sync_data().unwrap();
        overlay.close().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), original, "the file is untouched");
    }

    #[test]
    fn a_panic_is_a_corrupted_error_naming_the_file() {
        let path = Path::new("/data/profiles/p.redb");
        let error = contained::<()>(path, || panic!("index out of bounds")).unwrap_err();
        match error {
            StoreError::Corrupted { path: p, reason } => {
                assert_eq!(p, path);
                assert!(reason.contains("index out of bounds"), "{reason}");
            }
            other => panic!("expected Corrupted, got {other:?}"),
        }
    }
}
