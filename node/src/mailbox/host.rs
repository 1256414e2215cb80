//! [`MailboxHost`]: the mailboxes of a service node, in their own redb file
//! (`mailboxes.redb` in the service data directory). Synchronous: the
//! service runs it on a thread of its own.
//!
//! Tables (all integers big-endian):
//! - `meta`: `"version"` → schema version (1).
//! - `mailboxes`: mailbox id 32 → record (version 1 ‖ created_ms u64 ‖
//!   last_owner_ms u64 ‖ count u32 ‖ bytes u64 ‖ next_seq u64 ‖ revoked u32).
//! - `items`: mailbox 32 ‖ seq u64 → tag 16 ‖ deposited_at_ms u64 ‖ envelope.
//! - `expiry`: deposited_at_ms u64 ‖ mailbox 32 ‖ seq u64 → () (the TTL sweep's index).
//! - `revoked`: mailbox 32 ‖ tag 16 → ().
//!
//! Invariants: every write is one durable transaction (a deposit is
//! acknowledged only after its commit); a record's count and bytes are the
//! sums of its items; a mailbox's seq only grows, and a new mailbox starts
//! at `created_ms × 1024 + 1`, so a mailbox removed and registered again
//! never reuses a seq its owner saw. Nothing about senders is stored.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use libp2p::PeerId;
use redb::{
    Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};

use super::wire::{MAX_FETCH_BYTES, OwnerAuth, Request, Response};
use super::{Item, MAX_CLOCK_SKEW_MS, MailboxStatus, Status, owner_message, verify};

/// The file name in the service data directory.
pub const FILE: &str = "mailboxes.redb";
const SCHEMA_VERSION: u64 = 1;
const DAY_MS: u64 = 24 * 3600 * 1000;
/// An owner's last-operation time is rewritten at most this often by reads.
const TOUCH_EVERY_MS: u64 = 3600 * 1000;

const META: TableDefinition<'static, &str, u64> = TableDefinition::new("meta");
const MAILBOXES: TableDefinition<'static, &[u8; 32], &[u8]> = TableDefinition::new("mailboxes");
const ITEMS: TableDefinition<'static, &[u8; 40], &[u8]> = TableDefinition::new("items");
const EXPIRY: TableDefinition<'static, &[u8; 48], ()> = TableDefinition::new("expiry");
const REVOKED: TableDefinition<'static, &[u8; 48], ()> = TableDefinition::new("revoked");

/// The limits of a mailbox host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxLimits {
    /// Most mailboxes (default 10,000).
    pub max_mailboxes: u32,
    /// Most envelopes per mailbox (default 10,000).
    pub max_count: u32,
    /// Most envelope bytes per mailbox (default 64 MiB).
    pub max_bytes: u64,
    /// How long an envelope is kept (default 14 days).
    pub ttl_ms: u64,
    /// A mailbox without an owner operation for this long is removed
    /// (default 60 days).
    pub idle_ms: u64,
    /// Most revoked tags per mailbox (default 4,096).
    pub max_revoked: u32,
}

impl Default for MailboxLimits {
    fn default() -> Self {
        MailboxLimits {
            max_mailboxes: 10_000,
            max_count: 10_000,
            max_bytes: 64 * 1024 * 1024,
            ttl_ms: 14 * DAY_MS,
            idle_ms: 60 * DAY_MS,
            max_revoked: 4096,
        }
    }
}

/// Why the mailbox store failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Another process (or another host in this one) has the file open.
    #[error("{0} is in use by another process")]
    InUse(PathBuf),
    /// The file is not a mailbox store, or is damaged.
    #[error("{path} is damaged: {reason}")]
    Corrupted {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing failed.
    #[error("mailbox storage: {0}")]
    Storage(String),
}

macro_rules! storage_errors {
    ($($t:ty),*) => {$(
        impl From<$t> for HostError {
            fn from(e: $t) -> Self {
                HostError::Storage(e.to_string())
            }
        }
    )*};
}
storage_errors!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// A mailbox's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    created_ms: u64,
    last_owner_ms: u64,
    count: u32,
    bytes: u64,
    next_seq: u64,
    revoked: u32,
}

impl Record {
    const LEN: usize = 1 + 8 + 8 + 4 + 8 + 8 + 4;

    fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = 1;
        out[1..9].copy_from_slice(&self.created_ms.to_be_bytes());
        out[9..17].copy_from_slice(&self.last_owner_ms.to_be_bytes());
        out[17..21].copy_from_slice(&self.count.to_be_bytes());
        out[21..29].copy_from_slice(&self.bytes.to_be_bytes());
        out[29..37].copy_from_slice(&self.next_seq.to_be_bytes());
        out[37..41].copy_from_slice(&self.revoked.to_be_bytes());
        out
    }

    fn decode(b: &[u8]) -> Result<Record, HostError> {
        let bad = || HostError::Storage("a mailbox record is damaged".into());
        if b.len() != Self::LEN || b[0] != 1 {
            return Err(bad());
        }
        let u64_at = |i: usize| b.get(i..i + 8).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes);
        let u32_at = |i: usize| b.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_be_bytes);
        Ok(Record {
            created_ms: u64_at(1).ok_or_else(bad)?,
            last_owner_ms: u64_at(9).ok_or_else(bad)?,
            count: u32_at(17).ok_or_else(bad)?,
            bytes: u64_at(21).ok_or_else(bad)?,
            next_seq: u64_at(29).ok_or_else(bad)?,
            revoked: u32_at(37).ok_or_else(bad)?,
        })
    }
}

fn item_key(mailbox: &[u8; 32], seq: u64) -> [u8; 40] {
    let mut k = [0u8; 40];
    k[..32].copy_from_slice(mailbox);
    k[32..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn expiry_key(at_ms: u64, mailbox: &[u8; 32], seq: u64) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..8].copy_from_slice(&at_ms.to_be_bytes());
    k[8..40].copy_from_slice(mailbox);
    k[40..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn tag_key(mailbox: &[u8; 32], tag: &[u8; 16]) -> [u8; 48] {
    let mut k = [0u8; 48];
    k[..32].copy_from_slice(mailbox);
    k[32..].copy_from_slice(tag);
    k
}

/// An item value: tag 16 ‖ deposited_at_ms u64 ‖ envelope.
fn split_item(v: &[u8]) -> Result<([u8; 16], u64, &[u8]), HostError> {
    let bad = || HostError::Storage("an item is damaged".into());
    let tag: [u8; 16] = v.get(..16).and_then(|s| s.try_into().ok()).ok_or_else(bad)?;
    let at = v.get(16..24).and_then(|s| s.try_into().ok()).map(u64::from_be_bytes).ok_or_else(bad)?;
    Ok((tag, at, &v[24..]))
}

fn seq_of(key: &[u8; 40]) -> u64 {
    let mut s = [0u8; 8];
    s.copy_from_slice(&key[32..]);
    u64::from_be_bytes(s)
}

/// What one sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Expired envelopes deleted.
    pub items: usize,
    /// Idle mailboxes removed.
    pub mailboxes: usize,
    /// Work was left for the next sweep.
    pub more: bool,
}

/// The mailboxes of a service node.
pub struct MailboxHost {
    db: Database,
    limits: MailboxLimits,
    /// Where the idle-mailbox scan resumes.
    idle_cursor: Option<[u8; 32]>,
}

impl std::fmt::Debug for MailboxHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MailboxHost").field("limits", &self.limits).finish_non_exhaustive()
    }
}

/// The host's redb page cache.
const CACHE_BYTES: usize = 32 * 1024 * 1024;

impl MailboxHost {
    /// Opens (or creates) the store `mailboxes.redb` in `dir`.
    pub fn open(dir: &Path, limits: MailboxLimits) -> Result<MailboxHost, HostError> {
        let path = dir.join(FILE);
        let corrupted = |reason: String| HostError::Corrupted { path: path.clone(), reason };
        // redb's default page cache is 1 GiB and keeps what was written: a
        // host holding a lot would sit near that. Reads here are sequential
        // pages of one mailbox; a small cache costs little.
        // Owner-only, whatever the umask: an empty file made 0600 first
        // (redb initialises it and keeps its mode), and an older one fixed.
        #[cfg(unix)]
        {
            use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
            if !path.exists() {
                let made = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path);
                made.map_err(|e| HostError::Storage(format!("creating {}: {e}", path.display())))?;
            }
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| HostError::Storage(format!("setting permissions of {}: {e}", path.display())))?;
        }
        let db = redb::Builder::new().set_cache_size(CACHE_BYTES).create(&path).map_err(|e| match e {
            DatabaseError::DatabaseAlreadyOpen => HostError::InUse(path.clone()),
            DatabaseError::Storage(redb::StorageError::Io(io)) if io.kind() != std::io::ErrorKind::InvalidData => {
                HostError::Storage(format!("opening {}: {io}", path.display()))
            }
            other => corrupted(other.to_string()),
        })?;
        let mut tx = db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        {
            let mut meta = tx.open_table(META).map_err(|e| corrupted(e.to_string()))?;
            let version = meta.get("version")?.map(|v| v.value());
            match version {
                None => {
                    meta.insert("version", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v) => return Err(corrupted(format!("unknown schema version {v}"))),
            }
            tx.open_table(MAILBOXES).map_err(|e| corrupted(e.to_string()))?;
            tx.open_table(ITEMS).map_err(|e| corrupted(e.to_string()))?;
            tx.open_table(EXPIRY).map_err(|e| corrupted(e.to_string()))?;
            tx.open_table(REVOKED).map_err(|e| corrupted(e.to_string()))?;
        }
        tx.commit()?;
        Ok(MailboxHost { db, limits, idle_cursor: None })
    }

    /// Its limits.
    pub fn limits(&self) -> MailboxLimits {
        self.limits
    }

    /// How many mailboxes it holds.
    pub fn mailbox_count(&self) -> Result<u64, HostError> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(MAILBOXES)?.len()?)
    }

    /// Answers a request that arrived on a connection from `client` to
    /// `host`, at `now_ms` (host clock). Checks owner signatures (bound to
    /// both PeerIds), capabilities, then applies it.
    pub fn handle(&mut self, req: &Request, host: &PeerId, client: &PeerId, now_ms: u64) -> Response {
        let op = req.op();
        if ed25519_dalek::VerifyingKey::from_bytes(req.mailbox()).is_err() {
            return Response::refusal(op, Status::Malformed);
        }
        let status = match req.auth() {
            Some(auth) => self.check_owner(req, auth, host, client, now_ms),
            None => Status::Ok,
        };
        if status != Status::Ok {
            return Response::refusal(op, status);
        }
        let result = match req {
            Request::Register { mailbox, .. } => self.register(mailbox, now_ms),
            Request::Deposit { mailbox, tag, cap_sig, envelopes } => {
                if !verify(mailbox, &super::capability_message(mailbox, tag), cap_sig) {
                    return Response::refusal(op, Status::BadSignature);
                }
                self.deposit(mailbox, tag, envelopes, now_ms)
            }
            Request::Fetch { mailbox, after, max, .. } => self.fetch(mailbox, *after, *max, now_ms),
            Request::Delete { mailbox, seqs, .. } => self.delete(mailbox, seqs, now_ms),
            Request::Revoke { mailbox, tag, revoked, .. } => self.revoke(mailbox, tag, *revoked, now_ms),
            Request::Unregister { mailbox, .. } => self.unregister(mailbox),
            Request::Status { mailbox, .. } => self.status(mailbox, now_ms),
        };
        result.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "mailbox storage");
            Response::refusal(op, Status::Storage)
        })
    }

    fn check_owner(&self, req: &Request, auth: &OwnerAuth, host: &PeerId, client: &PeerId, now_ms: u64) -> Status {
        if auth.time_ms.abs_diff(now_ms) > MAX_CLOCK_SKEW_MS {
            return Status::Stale;
        }
        let Some(unsigned) = req.unsigned_body() else {
            return Status::Malformed;
        };
        if verify(req.mailbox(), &owner_message(host, client, &unsigned), &auth.signature) {
            Status::Ok
        } else {
            Status::BadSignature
        }
    }

    /// Runs `f` in one durable write transaction; commits only if it
    /// returns `commit = true`.
    fn write<T>(
        &self,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(T, bool), HostError>,
    ) -> Result<T, HostError> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::Immediate)?;
        let (out, commit) = f(&tx)?;
        if commit {
            tx.commit()?;
        } else {
            tx.abort()?;
        }
        Ok(out)
    }

    fn register(&self, mailbox: &[u8; 32], now_ms: u64) -> Result<Response, HostError> {
        let max = self.limits.max_mailboxes;
        self.write(|tx| {
            let mut table = tx.open_table(MAILBOXES)?;
            let existing = table.get(mailbox)?.map(|v| Record::decode(v.value())).transpose()?;
            let record = match existing {
                Some(r) => Record { last_owner_ms: now_ms, ..r },
                None if table.len()? >= u64::from(max) => return Ok((Response::Done(Status::HostFull), false)),
                None => Record {
                    created_ms: now_ms,
                    last_owner_ms: now_ms,
                    count: 0,
                    bytes: 0,
                    next_seq: now_ms.saturating_mul(1024).saturating_add(1),
                    revoked: 0,
                },
            };
            table.insert(mailbox, &record.encode()[..])?;
            Ok((Response::Done(Status::Ok), true))
        })
    }

    fn deposit(
        &self,
        mailbox: &[u8; 32],
        tag: &[u8; 16],
        envelopes: &[Vec<u8>],
        now_ms: u64,
    ) -> Result<Response, HostError> {
        let limits = self.limits;
        self.write(|tx| {
            let refuse = |status| Ok((Response::Deposited { status, accepted: 0 }, false));
            let mut table = tx.open_table(MAILBOXES)?;
            let Some(mut record) = table.get(mailbox)?.map(|v| Record::decode(v.value())).transpose()? else {
                return refuse(Status::UnknownMailbox);
            };
            if tx.open_table(REVOKED)?.get(&tag_key(mailbox, tag))?.is_some() {
                return refuse(Status::Revoked);
            }
            let mut items = tx.open_table(ITEMS)?;
            let mut expiry = tx.open_table(EXPIRY)?;
            let mut accepted: u16 = 0;
            let mut status = Status::Ok;
            let mut value = Vec::new();
            for envelope in envelopes {
                let len = envelope.len() as u64;
                if record.count >= limits.max_count || record.bytes.saturating_add(len) > limits.max_bytes {
                    status = Status::QuotaFull;
                    break;
                }
                let seq = record.next_seq;
                value.clear();
                value.extend_from_slice(tag);
                value.extend_from_slice(&now_ms.to_be_bytes());
                value.extend_from_slice(envelope);
                items.insert(&item_key(mailbox, seq), &value[..])?;
                expiry.insert(&expiry_key(now_ms, mailbox, seq), ())?;
                record.next_seq = seq.saturating_add(1);
                record.count += 1;
                record.bytes += len;
                accepted += 1;
            }
            if accepted > 0 {
                table.insert(mailbox, &record.encode()[..])?;
            }
            Ok((Response::Deposited { status, accepted }, accepted > 0))
        })
    }

    /// Reads the record; rewrites its last-owner time if it is an hour old.
    fn touch(&self, mailbox: &[u8; 32], now_ms: u64) -> Result<Option<Record>, HostError> {
        let record = {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(MAILBOXES)?;
            table.get(mailbox)?.map(|v| Record::decode(v.value())).transpose()?
        };
        let Some(record) = record else { return Ok(None) };
        if now_ms.saturating_sub(record.last_owner_ms) < TOUCH_EVERY_MS {
            return Ok(Some(record));
        }
        self.write(|tx| {
            let mut table = tx.open_table(MAILBOXES)?;
            let current = table.get(mailbox)?.map(|v| Record::decode(v.value())).transpose()?;
            match current {
                Some(r) => {
                    let r = Record { last_owner_ms: now_ms, ..r };
                    table.insert(mailbox, &r.encode()[..])?;
                    Ok((Some(r), true))
                }
                None => Ok((None, false)),
            }
        })
    }

    fn fetch(&self, mailbox: &[u8; 32], after: u64, max: u16, now_ms: u64) -> Result<Response, HostError> {
        if self.touch(mailbox, now_ms)?.is_none() {
            return Ok(Response::Done(Status::UnknownMailbox));
        }
        let mut items = Vec::new();
        let mut more = false;
        let Some(first) = after.checked_add(1) else {
            return Ok(Response::Fetched { more, items });
        };
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ITEMS)?;
        let mut bytes = 0usize;
        let (from, to) = (item_key(mailbox, first), item_key(mailbox, u64::MAX));
        for entry in table.range::<&[u8; 40]>(&from..=&to)? {
            let (key, value) = entry?;
            let (tag, deposited_at_ms, envelope) = split_item(value.value())?;
            if items.len() >= usize::from(max) || bytes + envelope.len() > MAX_FETCH_BYTES {
                more = true;
                break;
            }
            bytes += envelope.len();
            items.push(Item { seq: seq_of(key.value()), tag, deposited_at_ms, envelope: envelope.to_vec() });
        }
        Ok(Response::Fetched { more, items })
    }

    fn delete(&self, mailbox: &[u8; 32], seqs: &[u64], now_ms: u64) -> Result<Response, HostError> {
        self.write(|tx| {
            let mut table = tx.open_table(MAILBOXES)?;
            let Some(mut record) = table.get(mailbox)?.map(|v| Record::decode(v.value())).transpose()? else {
                return Ok((Response::Done(Status::UnknownMailbox), false));
            };
            let mut items = tx.open_table(ITEMS)?;
            let mut expiry = tx.open_table(EXPIRY)?;
            let mut deleted: u16 = 0;
            for &seq in seqs {
                let Some(value) = items.remove(&item_key(mailbox, seq))? else { continue };
                let (_, at, envelope) = split_item(value.value())?;
                let len = envelope.len() as u64;
                drop(value);
                expiry.remove(&expiry_key(at, mailbox, seq))?;
                record.count = record.count.saturating_sub(1);
                record.bytes = record.bytes.saturating_sub(len);
                deleted = deleted.saturating_add(1);
            }
            record.last_owner_ms = now_ms;
            table.insert(mailbox, &record.encode()[..])?;
            Ok((Response::Deleted { deleted }, true))
        })
    }

    fn revoke(&self, mailbox: &[u8; 32], tag: &[u8; 16], revoked: bool, now_ms: u64) -> Result<Response, HostError> {
        let max = self.limits.max_revoked;
        self.write(|tx| {
            let mut table = tx.open_table(MAILBOXES)?;
            let Some(mut record) = table.get(mailbox)?.map(|v| Record::decode(v.value())).transpose()? else {
                return Ok((Response::Done(Status::UnknownMailbox), false));
            };
            let mut tags = tx.open_table(REVOKED)?;
            let key = tag_key(mailbox, tag);
            let present = tags.get(&key)?.is_some();
            if revoked && !present {
                if record.revoked >= max {
                    return Ok((Response::Done(Status::QuotaFull), false));
                }
                tags.insert(&key, ())?;
                record.revoked += 1;
            } else if !revoked && present {
                tags.remove(&key)?;
                record.revoked = record.revoked.saturating_sub(1);
            }
            record.last_owner_ms = now_ms;
            table.insert(mailbox, &record.encode()[..])?;
            Ok((Response::Done(Status::Ok), true))
        })
    }

    fn unregister(&self, mailbox: &[u8; 32]) -> Result<Response, HostError> {
        self.write(|tx| {
            if !remove_mailbox(tx, mailbox)? {
                return Ok((Response::Done(Status::UnknownMailbox), false));
            }
            Ok((Response::Done(Status::Ok), true))
        })
    }

    fn status(&self, mailbox: &[u8; 32], now_ms: u64) -> Result<Response, HostError> {
        let Some(r) = self.touch(mailbox, now_ms)? else {
            return Ok(Response::Done(Status::UnknownMailbox));
        };
        Ok(Response::Status(MailboxStatus {
            count: r.count,
            bytes: r.bytes,
            max_count: self.limits.max_count,
            max_bytes: self.limits.max_bytes,
            ttl_ms: self.limits.ttl_ms,
        }))
    }

    /// Deletes expired envelopes (at most `budget`) and idle mailboxes (at
    /// most `budget` records looked at, each removal bounded by the
    /// per-mailbox quota), in one commit each. Call it periodically.
    pub fn sweep(&mut self, now_ms: u64, budget: usize) -> Result<SweepOutcome, HostError> {
        let mut outcome = SweepOutcome::default();
        let cutoff = now_ms.saturating_sub(self.limits.ttl_ms);
        // Expired envelopes: the oldest first, from the expiry index.
        outcome.items = self.write(|tx| {
            let mut expiry = tx.open_table(EXPIRY)?;
            let mut expired = Vec::new();
            let start = [0u8; 48];
            for entry in expiry.range::<&[u8; 48]>(&start..)? {
                let (key, _) = entry?;
                let key = *key.value();
                let at = u64::from_be_bytes([key[0], key[1], key[2], key[3], key[4], key[5], key[6], key[7]]);
                if at > cutoff {
                    break;
                }
                if expired.len() == budget {
                    outcome.more = true;
                    break;
                }
                expired.push(key);
            }
            let mut items = tx.open_table(ITEMS)?;
            let mut table = tx.open_table(MAILBOXES)?;
            let mut records: HashMap<[u8; 32], Option<Record>> = HashMap::new();
            let mut removed = 0;
            for key in &expired {
                expiry.remove(key)?;
                let mut mailbox = [0u8; 32];
                mailbox.copy_from_slice(&key[8..40]);
                let mut item = [0u8; 40];
                item.copy_from_slice(&key[8..]);
                let Some(value) = items.remove(&item)? else { continue };
                let len = split_item(value.value())?.2.len() as u64;
                drop(value);
                let record = match records.get(&mailbox) {
                    Some(r) => *r,
                    None => table.get(&mailbox)?.map(|v| Record::decode(v.value())).transpose()?,
                };
                let record = record.map(|r| Record {
                    count: r.count.saturating_sub(1),
                    bytes: r.bytes.saturating_sub(len),
                    ..r
                });
                records.insert(mailbox, record);
                removed += 1;
            }
            for (mailbox, record) in &records {
                if let Some(r) = record {
                    table.insert(mailbox, &r.encode()[..])?;
                }
            }
            Ok((removed, !expired.is_empty()))
        })?;
        // Idle mailboxes: a bounded scan from where the last one stopped.
        let idle_before = now_ms.saturating_sub(self.limits.idle_ms);
        let mut idle = Vec::new();
        let mut next_cursor = None;
        {
            let tx = self.db.begin_read()?;
            let table = tx.open_table(MAILBOXES)?;
            let start = self.idle_cursor.unwrap_or([0u8; 32]);
            for (looked, entry) in table.range::<&[u8; 32]>(&start..)?.enumerate() {
                let (key, value) = entry?;
                if looked == budget {
                    next_cursor = Some(*key.value());
                    outcome.more = true;
                    break;
                }
                if Record::decode(value.value())?.last_owner_ms < idle_before {
                    idle.push(*key.value());
                }
            }
        }
        self.idle_cursor = next_cursor;
        if !idle.is_empty() {
            outcome.mailboxes = self.write(|tx| {
                let mut n = 0;
                for mailbox in &idle {
                    n += usize::from(remove_mailbox(tx, mailbox)?);
                }
                Ok((n, true))
            })?;
        }
        Ok(outcome)
    }
}

/// Removes a mailbox, its items, their expiry entries and its revoked tags.
fn remove_mailbox(tx: &redb::WriteTransaction, mailbox: &[u8; 32]) -> Result<bool, HostError> {
    let mut table = tx.open_table(MAILBOXES)?;
    if table.remove(mailbox)?.is_none() {
        return Ok(false);
    }
    // At most max_count keys of 48 bytes: the envelopes are not kept.
    let mut expired = Vec::new();
    let mut damaged = false;
    let mut items = tx.open_table(ITEMS)?;
    let (from, to) = (item_key(mailbox, 0), item_key(mailbox, u64::MAX));
    items.retain_in::<&[u8; 40], _>(&from..=&to, |key, value| {
        match split_item(value) {
            Ok((_, at, _)) => expired.push(expiry_key(at, mailbox, seq_of(key))),
            Err(_) => damaged = true,
        }
        false
    })?;
    let mut expiry = tx.open_table(EXPIRY)?;
    for key in &expired {
        expiry.remove(key)?;
    }
    if damaged {
        tracing::warn!("a removed mailbox had damaged items; their expiry entries go with the sweep");
    }
    let mut tags = tx.open_table(REVOKED)?;
    let (from, to) = (tag_key(mailbox, &[0; 16]), tag_key(mailbox, &[0xff; 16]));
    tags.retain_in::<&[u8; 48], _>(&from..=&to, |_, _| false)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mailbox::OwnerKey;
    use crate::mailbox::wire::OwnerAuth;

    const T0: u64 = 1_764_000_000_000;

    struct Fixture {
        dir: tempfile::TempDir,
        host: MailboxHost,
        host_id: PeerId,
        client: PeerId,
        key: OwnerKey,
    }

    fn limits() -> MailboxLimits {
        MailboxLimits { max_mailboxes: 3, max_count: 5, max_bytes: 100, max_revoked: 2, ..Default::default() }
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let host = MailboxHost::open(dir.path(), limits()).unwrap();
        Fixture { dir, host, host_id: PeerId::random(), client: PeerId::random(), key: OwnerKey::from_bytes(&[1; 32]) }
    }

    fn signed(mut req: Request, key: &OwnerKey, host: &PeerId, client: &PeerId) -> Request {
        let unsigned = req.unsigned_body().unwrap();
        let sig = key.sign(&owner_message(host, client, &unsigned));
        req.auth_mut().unwrap().signature = sig;
        req
    }

    fn auth(time_ms: u64) -> OwnerAuth {
        OwnerAuth { time_ms, signature: [0; 64] }
    }

    impl Fixture {
        fn owner(&mut self, req: Request, now: u64) -> Response {
            let req = signed(req, &self.key, &self.host_id, &self.client);
            self.host.handle(&req, &self.host_id, &self.client, now)
        }

        fn register(&mut self) {
            let mailbox = self.key.mailbox_id();
            assert_eq!(self.owner(Request::Register { mailbox, auth: auth(T0) }, T0), Response::Done(Status::Ok));
        }

        fn deposit(&mut self, tag: [u8; 16], envelopes: Vec<Vec<u8>>, now: u64) -> Response {
            let cap = self.key.capability(tag);
            let req = Request::Deposit { mailbox: cap.mailbox, tag, cap_sig: cap.signature, envelopes };
            self.host.handle(&req, &self.host_id, &PeerId::random(), now)
        }

        fn fetch(&mut self, after: u64, now: u64) -> (Vec<Item>, bool) {
            let mailbox = self.key.mailbox_id();
            match self.owner(Request::Fetch { mailbox, after, max: 256, auth: auth(now) }, now) {
                Response::Fetched { items, more } => (items, more),
                other => panic!("{other:?}"),
            }
        }

        fn reopen(&mut self) {
            let dir = self.dir.path().to_path_buf();
            // Close the file before opening it again.
            let spare = tempfile::tempdir().unwrap();
            drop(std::mem::replace(&mut self.host, MailboxHost::open(spare.path(), limits()).unwrap()));
            self.host = MailboxHost::open(&dir, limits()).unwrap();
        }
    }

    #[test]
    fn deposit_fetch_delete_and_status() {
        let mut f = fixture();
        f.register();
        f.register(); // idempotent
        let r = f.deposit([2; 16], vec![b"one".to_vec(), b"two".to_vec()], T0 + 1);
        assert_eq!(r, Response::Deposited { status: Status::Ok, accepted: 2 });
        let (items, more) = f.fetch(0, T0 + 2);
        assert!(!more);
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].envelope, b"one");
        assert_eq!(items[0].tag, [2; 16]);
        assert_eq!(items[0].deposited_at_ms, T0 + 1);
        assert_eq!(items[1].seq, items[0].seq + 1);
        assert!(f.fetch(items[0].seq, T0 + 2).0.len() == 1);
        let mailbox = f.key.mailbox_id();
        let seqs = vec![items[0].seq, items[0].seq, 12345];
        assert_eq!(f.owner(Request::Delete { mailbox, seqs, auth: auth(T0) }, T0), Response::Deleted { deleted: 1 });
        let status = f.owner(Request::Status { mailbox, auth: auth(T0) }, T0);
        assert_eq!(
            status,
            Response::Status(MailboxStatus { count: 1, bytes: 3, max_count: 5, max_bytes: 100, ttl_ms: 14 * DAY_MS })
        );
    }

    #[test]
    fn quotas_accept_a_prefix() {
        let mut f = fixture();
        f.register();
        // Count: 5 at most.
        let r = f.deposit([2; 16], vec![vec![1; 1]; 7], T0);
        assert_eq!(r, Response::Deposited { status: Status::QuotaFull, accepted: 5 });
        let r = f.deposit([2; 16], vec![vec![1; 1]], T0);
        assert_eq!(r, Response::Deposited { status: Status::QuotaFull, accepted: 0 });
        // Bytes: 100 at most.
        let mut f = fixture();
        f.register();
        let r = f.deposit([2; 16], vec![vec![1; 40], vec![1; 40], vec![1; 40]], T0);
        assert_eq!(r, Response::Deposited { status: Status::QuotaFull, accepted: 2 });
        let r = f.deposit([2; 16], vec![vec![1; 20]], T0);
        assert_eq!(r, Response::Deposited { status: Status::Ok, accepted: 1 });
        // Host: 3 mailboxes at most.
        for seed in 2..=3u8 {
            f.key = OwnerKey::from_bytes(&[seed; 32]);
            f.register();
        }
        f.key = OwnerKey::from_bytes(&[9; 32]);
        let mailbox = f.key.mailbox_id();
        assert_eq!(f.owner(Request::Register { mailbox, auth: auth(T0) }, T0), Response::Done(Status::HostFull));
        assert_eq!(f.host.mailbox_count().unwrap(), 3);
    }

    #[test]
    fn revoked_tags_are_refused_until_restored() {
        let mut f = fixture();
        f.register();
        let mailbox = f.key.mailbox_id();
        let revoke = |tag, revoked| Request::Revoke { mailbox, tag, revoked, auth: auth(T0) };
        assert_eq!(f.owner(revoke([2; 16], true), T0), Response::Done(Status::Ok));
        assert_eq!(f.owner(revoke([2; 16], true), T0), Response::Done(Status::Ok));
        assert_eq!(f.deposit([2; 16], vec![vec![1]], T0), Response::Deposited { status: Status::Revoked, accepted: 0 });
        assert_eq!(f.deposit([3; 16], vec![vec![1]], T0), Response::Deposited { status: Status::Ok, accepted: 1 });
        assert_eq!(f.owner(revoke([3; 16], true), T0), Response::Done(Status::Ok));
        assert_eq!(f.owner(revoke([4; 16], true), T0), Response::Done(Status::QuotaFull));
        assert_eq!(f.owner(revoke([2; 16], false), T0), Response::Done(Status::Ok));
        assert_eq!(f.deposit([2; 16], vec![vec![1]], T0), Response::Deposited { status: Status::Ok, accepted: 1 });
        assert_eq!(f.owner(revoke([4; 16], true), T0), Response::Done(Status::Ok));
    }

    #[test]
    fn bad_capabilities_signatures_and_strangers_are_refused() {
        let mut f = fixture();
        f.register();
        let mailbox = f.key.mailbox_id();
        // A capability signed by another key.
        let forged = OwnerKey::from_bytes(&[5; 32]).capability([2; 16]);
        let req = Request::Deposit { mailbox, tag: [2; 16], cap_sig: forged.signature, envelopes: vec![vec![1]] };
        assert_eq!(
            f.host.handle(&req, &f.host_id, &f.client, T0),
            Response::Deposited { status: Status::BadSignature, accepted: 0 }
        );
        // A valid capability of an unregistered mailbox.
        let stranger = OwnerKey::from_bytes(&[6; 32]);
        let cap = stranger.capability([2; 16]);
        let req = Request::Deposit { mailbox: cap.mailbox, tag: cap.tag, cap_sig: cap.signature, envelopes: vec![] };
        assert_eq!(
            f.host.handle(&req, &f.host_id, &f.client, T0),
            Response::Deposited { status: Status::UnknownMailbox, accepted: 0 }
        );
        // A stranger signing for our mailbox; for its own unknown one.
        let fetch = |mailbox| Request::Fetch { mailbox, after: 0, max: 10, auth: auth(T0) };
        let req = signed(fetch(mailbox), &stranger, &f.host_id, &f.client);
        assert_eq!(f.host.handle(&req, &f.host_id, &f.client, T0), Response::Done(Status::BadSignature));
        let req = signed(fetch(stranger.mailbox_id()), &stranger, &f.host_id, &f.client);
        assert_eq!(f.host.handle(&req, &f.host_id, &f.client, T0), Response::Done(Status::UnknownMailbox));
        // Our own request replayed on another connection, or to another host.
        let req = signed(fetch(mailbox), &f.key, &f.host_id, &f.client);
        assert!(matches!(f.host.handle(&req, &f.host_id, &f.client, T0), Response::Fetched { .. }));
        assert_eq!(f.host.handle(&req, &f.host_id, &PeerId::random(), T0), Response::Done(Status::BadSignature));
        assert_eq!(f.host.handle(&req, &PeerId::random(), &f.client, T0), Response::Done(Status::BadSignature));
        // A mailbox id that is not a point on the curve.
        let bad = (2..100u8)
            .map(|y| {
                let mut id = [0u8; 32];
                id[0] = y;
                id
            })
            .find(|id| ed25519_dalek::VerifyingKey::from_bytes(id).is_err())
            .unwrap();
        let malformed = Request::Status { mailbox: bad, auth: auth(T0) };
        assert_eq!(f.host.handle(&malformed, &f.host_id, &f.client, T0), Response::Done(Status::Malformed));
        // Out of the time window.
        let late = T0 + MAX_CLOCK_SKEW_MS + 1;
        assert_eq!(f.host.handle(&req, &f.host_id, &f.client, late), Response::Done(Status::Stale));
    }

    #[test]
    fn seqs_only_grow_across_deletes_reopen_and_reregister() {
        let mut f = fixture();
        f.register();
        f.deposit([2; 16], vec![vec![1]; 3], T0);
        let (items, _) = f.fetch(0, T0);
        let last = items[2].seq;
        let mailbox = f.key.mailbox_id();
        let seqs = items.iter().map(|i| i.seq).collect();
        f.owner(Request::Delete { mailbox, seqs, auth: auth(T0) }, T0);
        f.reopen();
        f.deposit([2; 16], vec![vec![1]], T0 + 5);
        let (items, _) = f.fetch(0, T0 + 5);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].seq, last + 1);
        // Removed and registered again later: above every seq seen.
        assert_eq!(f.owner(Request::Unregister { mailbox, auth: auth(T0) }, T0), Response::Done(Status::Ok));
        let later = T0 + 1000;
        assert_eq!(f.owner(Request::Register { mailbox, auth: auth(later) }, later), Response::Done(Status::Ok));
        f.deposit([2; 16], vec![vec![1]], later);
        assert!(f.fetch(0, later).0[0].seq > last + 1);
    }

    #[test]
    fn data_survives_reopen() {
        let mut f = fixture();
        f.register();
        f.deposit([2; 16], vec![b"kept".to_vec()], T0);
        let mailbox = f.key.mailbox_id();
        f.owner(Request::Revoke { mailbox, tag: [3; 16], revoked: true, auth: auth(T0) }, T0);
        f.reopen();
        assert_eq!(f.fetch(0, T0).0[0].envelope, b"kept");
        assert_eq!(f.deposit([3; 16], vec![vec![1]], T0), Response::Deposited { status: Status::Revoked, accepted: 0 });
        // The file is in use while open.
        assert!(matches!(MailboxHost::open(f.dir.path(), limits()), Err(HostError::InUse(_))));
    }

    /// The host's file is owner-only (0600), new or found looser.
    #[cfg(unix)]
    #[test]
    fn the_store_file_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let host = MailboxHost::open(dir.path(), limits()).unwrap();
        let file = dir.path().join(FILE);
        assert_eq!(mode(&file), 0o600);
        drop(host);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        drop(MailboxHost::open(dir.path(), limits()).unwrap());
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn fetch_pages_are_bounded() {
        let mut f = fixture();
        f.host.limits.max_count = 1000;
        f.host.limits.max_bytes = 1 << 30;
        f.register();
        for _ in 0..5 {
            f.deposit([2; 16], vec![vec![0; 10]; 64], T0);
        }
        let mailbox = f.key.mailbox_id();
        let page =
            |f: &mut Fixture, after, max| match f.owner(Request::Fetch { mailbox, after, max, auth: auth(T0) }, T0) {
                Response::Fetched { items, more } => (items, more),
                other => panic!("{other:?}"),
            };
        let (items, more) = page(&mut f, 0, 256);
        assert_eq!((items.len(), more), (256, true));
        let (rest, more) = page(&mut f, items[255].seq, 256);
        assert_eq!((rest.len(), more), (64, false));
        let (none, more) = page(&mut f, u64::MAX, 256);
        assert!(none.is_empty() && !more);
    }

    #[test]
    fn the_sweep_removes_expired_items_and_idle_mailboxes() {
        let mut f = fixture();
        f.register();
        f.deposit([2; 16], vec![vec![1; 10]; 3], T0);
        f.deposit([2; 16], vec![vec![1; 10]; 1], T0 + DAY_MS);
        let ttl = limits().ttl_ms;
        assert_eq!(f.host.sweep(T0 + ttl - 1, 100).unwrap(), SweepOutcome::default());
        // Bounded: two per call.
        let out = f.host.sweep(T0 + ttl, 2).unwrap();
        assert_eq!((out.items, out.more), (2, true));
        let out = f.host.sweep(T0 + ttl, 2).unwrap();
        assert_eq!(out.items, 1);
        let now = T0 + ttl;
        let (items, _) = f.fetch(0, now);
        assert_eq!(items.len(), 1);
        let mailbox = f.key.mailbox_id();
        match f.owner(Request::Status { mailbox, auth: auth(now) }, now) {
            Response::Status(s) => assert_eq!((s.count, s.bytes), (1, 10)),
            other => panic!("{other:?}"),
        }
        // Idle for 60 days after the last owner operation (the fetch above).
        let idle = limits().idle_ms;
        assert_eq!(f.host.sweep(now + idle - 1, 100).unwrap().mailboxes, 0);
        assert_eq!(f.host.sweep(now + idle + 1, 100).unwrap().mailboxes, 1);
        assert_eq!(f.host.mailbox_count().unwrap(), 0);
        assert_eq!(
            f.deposit([2; 16], vec![vec![1]], now),
            Response::Deposited { status: Status::UnknownMailbox, accepted: 0 }
        );
    }

    #[test]
    fn unregister_removes_everything() {
        let mut f = fixture();
        f.register();
        f.deposit([2; 16], vec![vec![1; 10]; 3], T0);
        let mailbox = f.key.mailbox_id();
        f.owner(Request::Revoke { mailbox, tag: [3; 16], revoked: true, auth: auth(T0) }, T0);
        assert_eq!(f.owner(Request::Unregister { mailbox, auth: auth(T0) }, T0), Response::Done(Status::Ok));
        assert_eq!(
            f.owner(Request::Unregister { mailbox, auth: auth(T0) }, T0),
            Response::Done(Status::UnknownMailbox)
        );
        let tx = f.host.db.begin_read().unwrap();
        assert!(tx.open_table(MAILBOXES).unwrap().is_empty().unwrap());
        assert!(tx.open_table(ITEMS).unwrap().is_empty().unwrap());
        assert!(tx.open_table(EXPIRY).unwrap().is_empty().unwrap());
        assert!(tx.open_table(REVOKED).unwrap().is_empty().unwrap());
        drop(tx);
        // A new registration starts empty and unrevoked.
        f.register();
        assert_eq!(f.deposit([3; 16], vec![vec![1]], T0), Response::Deposited { status: Status::Ok, accepted: 1 });
        assert_eq!(f.fetch(0, T0).0.len(), 1);
    }

    #[test]
    fn a_garbage_file_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), vec![0x5a; 8192]).unwrap();
        let err = MailboxHost::open(dir.path(), limits()).unwrap_err();
        assert!(matches!(err, HostError::Corrupted { .. }), "{err:?}");
        // A redb file of another schema.
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE)).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(META).unwrap().insert("version", 99).unwrap();
            tx.commit().unwrap();
        }
        assert!(matches!(MailboxHost::open(dir.path(), limits()), Err(HostError::Corrupted { .. })));
    }
}
