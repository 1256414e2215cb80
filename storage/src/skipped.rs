//! Skipped message keys, one row per key (schema 7), apart from the session
//! snapshots: a message costs writes for the keys it adds or uses, never
//! for every key a session holds.
//!
//! - [`SKIPPED_KEYS`]: contact id (16) ‖ session tag (8) ‖ chain tag (16) ‖
//!   counter (u32 BE) → sealed [`StoredKey`] (insertion number, message
//!   key). Found by the envelope's header: the chain tag is a keyed hash of
//!   the sender's ratchet key, the session tag of the session's id.
//! - [`SKIPPED_ORDER`]: contact id ‖ session tag ‖ insertion number (u64 BE)
//!   ‖ chain tag ‖ counter → (): the same keys oldest first, so evicting the
//!   oldest reads no more rows than it deletes.
//!
//! [`SkippedKeyChanges`] is what one request changes: lookups see the
//! changes made so far, and [`crate::ProfileStore::commit_inbound`] writes
//! them in the transaction of the messages and the session.

use std::collections::{HashMap, HashSet, VecDeque};

use kabar_crypto::{RatchetHeader, SkippedChange, SkippedKey, SkippedLookup};
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::error::StoreError;
use crate::model::ContactId;
use crate::schema::{SKIPPED_KEYS, SKIPPED_KEYS_NAME, SKIPPED_ORDER, SKIPPED_ORDER_NAME};
use crate::store::ProfileStore;

/// Length of a [`SKIPPED_KEYS`] key.
pub(crate) const KEY_LEN: usize = 16 + 8 + 16 + 4;
/// Length of a [`SKIPPED_ORDER`] key.
pub(crate) const ORDER_LEN: usize = 16 + 8 + 8 + 16 + 4;

/// The sealed value of one skipped key.
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub(crate) struct StoredKey {
    /// Insertion number within its session: the eviction order.
    pub(crate) order: u64,
    pub(crate) message_key: [u8; 32],
}

/// Contact id ‖ session tag: the prefix of one session's rows in both tables.
pub(crate) type SessionPrefix = [u8; 24];

/// A key's (chain tag, counter) within its session.
type Slot = ([u8; 16], u32);

pub(crate) fn key_of(prefix: &SessionPrefix, slot: &Slot) -> [u8; KEY_LEN] {
    let mut key = [0u8; KEY_LEN];
    key[..24].copy_from_slice(prefix);
    key[24..40].copy_from_slice(&slot.0);
    key[40..].copy_from_slice(&slot.1.to_be_bytes());
    key
}

pub(crate) fn order_key(prefix: &SessionPrefix, order: u64, slot: &Slot) -> [u8; ORDER_LEN] {
    let mut key = [0u8; ORDER_LEN];
    key[..24].copy_from_slice(prefix);
    key[24..32].copy_from_slice(&order.to_be_bytes());
    key[32..48].copy_from_slice(&slot.0);
    key[48..].copy_from_slice(&slot.1.to_be_bytes());
    key
}

/// The (chain tag, counter) an order key names.
pub(crate) fn slot_of_order(key: &[u8]) -> Option<Slot> {
    if key.len() != ORDER_LEN {
        return None;
    }
    Some((key[32..48].try_into().ok()?, u32::from_be_bytes(key[48..].try_into().ok()?)))
}

/// Every key of `prefix` (a contact, or a session) in a table, from the
/// first row whose key starts with it to the last.
pub(crate) fn prefix_range(prefix: &[u8], len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut low = vec![0u8; len];
    let mut high = vec![0xffu8; len];
    low[..prefix.len()].copy_from_slice(prefix);
    high[..prefix.len()].copy_from_slice(prefix);
    (low, high)
}

/// Deletes every skipped key under `prefix` (a contact id, or a session
/// prefix) from both tables.
pub(crate) fn delete_under(tx: &WriteTransaction, prefix: &[u8]) -> Result<(), StoreError> {
    let mut keys = tx.open_table(SKIPPED_KEYS)?;
    let (low, high) = prefix_range(prefix, KEY_LEN);
    keys.retain_in(low.as_slice()..=high.as_slice(), |_, _| false)?;
    let mut order = tx.open_table(SKIPPED_ORDER)?;
    let (low, high) = prefix_range(prefix, ORDER_LEN);
    order.retain_in(low.as_slice()..=high.as_slice(), |_, _| false)?;
    Ok(())
}

/// One session's changes so far.
#[derive(Default, Clone)]
struct SessionChanges {
    /// Keys added and not used or evicted since, oldest first.
    added: VecDeque<(Slot, SkippedKey)>,
    /// Stored keys deleted (used or evicted).
    removed: HashSet<Slot>,
}

/// The skipped keys of one contact's sessions as a request changes them
/// (see the module doc). `Debug` shows counts only.
#[derive(Clone)]
pub struct SkippedKeyChanges {
    contact: ContactId,
    sessions: HashMap<[u8; 16], SessionChanges>,
}

impl std::fmt::Debug for SkippedKeyChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let added: usize = self.sessions.values().map(|s| s.added.len()).sum();
        let removed: usize = self.sessions.values().map(|s| s.removed.len()).sum();
        f.debug_struct("SkippedKeyChanges").field("added", &added).field("removed", &removed).finish()
    }
}

impl SkippedKeyChanges {
    /// No change yet to `contact`'s skipped keys.
    pub fn new(contact: ContactId) -> Self {
        SkippedKeyChanges { contact, sessions: HashMap::new() }
    }

    /// True if nothing changed.
    pub fn is_empty(&self) -> bool {
        self.sessions.values().all(|s| s.added.is_empty() && s.removed.is_empty())
    }

    /// What session `session` (its [`kabar_crypto::Session::id`]) holds for
    /// `header`, stored or added by this request, and not used or evicted
    /// since.
    pub fn lookup(
        &self,
        store: &ProfileStore,
        session: &[u8; 16],
        header: &RatchetHeader,
    ) -> Result<SkippedLookup, StoreError> {
        let prefix = store.session_prefix(&self.contact, session);
        let chain = store.chain_tag(&header.ratchet_key);
        let slot = (chain, header.counter);
        let changes = self.sessions.get(session);
        let pending = changes.map(|c| &c.added);
        let removed = |s: &Slot| changes.is_some_and(|c| c.removed.contains(s));
        if let Some((_, key)) = pending.and_then(|p| p.iter().find(|(s, _)| *s == slot)) {
            return Ok(SkippedLookup { key: Some(key.clone()), chain_held: true });
        }
        let tx = store.db.begin_read()?;
        let table = tx.open_table(SKIPPED_KEYS)?;
        let mut found = None;
        if !removed(&slot) {
            let key = key_of(&prefix, &slot);
            if let Some(value) = table.get(key.as_slice())? {
                let stored: StoredKey = store.keys.open(SKIPPED_KEYS_NAME, &key, value.value())?;
                found = Some(SkippedKey::new(header.ratchet_key, header.counter, stored.message_key));
            }
        }
        let mut chain_held = found.is_some() || pending.is_some_and(|p| p.iter().any(|(s, _)| s.0 == chain));
        if !chain_held {
            let mut chain_prefix = [0u8; 40];
            chain_prefix[..24].copy_from_slice(&prefix);
            chain_prefix[24..].copy_from_slice(&chain);
            let (low, high) = prefix_range(&chain_prefix, KEY_LEN);
            for row in table.range(low.as_slice()..=high.as_slice())? {
                let (key, _) = row?;
                let counter = key.value().get(40..).and_then(|c| <[u8; 4]>::try_from(c).ok());
                let counter = counter.ok_or(StoreError::MalformedRecord { table: SKIPPED_KEYS_NAME })?;
                if !removed(&(chain, u32::from_be_bytes(counter))) {
                    chain_held = true;
                    break;
                }
            }
        }
        Ok(SkippedLookup { key: found, chain_held })
    }

    /// Records one decrypt's change to session `session`; the keys it
    /// evicts are chosen now (the oldest held: stored ones first, then
    /// those added by this request).
    pub fn record(
        &mut self,
        store: &ProfileStore,
        session: &[u8; 16],
        change: SkippedChange,
    ) -> Result<(), StoreError> {
        let prefix = store.session_prefix(&self.contact, session);
        let changes = self.sessions.entry(*session).or_default();
        if let Some((ratchet_key, counter)) = change.used {
            let slot = (store.chain_tag(&ratchet_key), counter);
            match changes.added.iter().position(|(s, _)| *s == slot) {
                Some(i) => {
                    changes.added.remove(i);
                }
                None => {
                    changes.removed.insert(slot);
                }
            }
        }
        for key in change.added {
            changes.added.push_back(((store.chain_tag(&key.ratchet_key), key.counter), key));
        }
        let mut evict = change.evict;
        if evict > 0 {
            let tx = store.db.begin_read()?;
            let order = tx.open_table(SKIPPED_ORDER)?;
            let (low, high) = prefix_range(&prefix, ORDER_LEN);
            for row in order.range(low.as_slice()..=high.as_slice())? {
                if evict == 0 {
                    break;
                }
                let (key, _) = row?;
                let slot =
                    slot_of_order(key.value()).ok_or(StoreError::MalformedRecord { table: SKIPPED_ORDER_NAME })?;
                if changes.removed.insert(slot) {
                    evict -= 1;
                }
            }
        }
        let from_added = evict.min(changes.added.len());
        changes.added.drain(..from_added);
        Ok(())
    }

    /// Writes the changes inside `tx`: deletions first, then the keys
    /// added, numbered after the newest key each session holds.
    pub(crate) fn write_in(&self, store: &ProfileStore, tx: &WriteTransaction) -> Result<(), StoreError> {
        let mut keys = tx.open_table(SKIPPED_KEYS)?;
        let mut order = tx.open_table(SKIPPED_ORDER)?;
        for (session, changes) in &self.sessions {
            let prefix = store.session_prefix(&self.contact, session);
            for slot in &changes.removed {
                let key = key_of(&prefix, slot);
                let Some(value) = keys.remove(key.as_slice())? else { continue };
                let stored: StoredKey = store.keys.open(SKIPPED_KEYS_NAME, &key, value.value())?;
                drop(value);
                order.remove(order_key(&prefix, stored.order, slot).as_slice())?;
            }
            if changes.added.is_empty() {
                continue;
            }
            let (low, high) = prefix_range(&prefix, ORDER_LEN);
            let first = match order.range(low.as_slice()..=high.as_slice())?.next_back().transpose()? {
                Some((key, _)) => key
                    .value()
                    .get(24..32)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map_or(0, |b| u64::from_be_bytes(b).saturating_add(1)),
                None => 0,
            };
            for (next, (slot, key)) in (first..).zip(&changes.added) {
                let row = key_of(&prefix, slot);
                let stored = StoredKey { order: next, message_key: *key.message_key() };
                let sealed = store.keys.seal(SKIPPED_KEYS_NAME, &row, &stored)?;
                keys.insert(row.as_slice(), sealed.as_slice())?;
                order.insert(order_key(&prefix, next, slot).as_slice(), ())?;
            }
        }
        Ok(())
    }
}
