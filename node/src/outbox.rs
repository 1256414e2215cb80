//! The engine's in-memory index of the outbox: which contacts have entries,
//! in which order, and when each is due. The envelopes stay sealed in the
//! store and are read by message id only when they are transmitted or
//! deposited, so time passing (the tick) costs a walk over this index, never
//! a decryption of the whole outbox. Loaded once when the profile opens.

use std::collections::HashMap;

use kabar_storage::{ContactId, OutboxEntry};

/// What the engine needs of an outbox entry without its envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Queued {
    /// Message id of the envelope.
    pub(crate) id: [u8; 16],
    /// Sequence number in its conversation.
    pub(crate) seq: u64,
    /// When it was queued, Unix ms.
    pub(crate) queued_at_ms: u64,
    /// Delivery attempts so far.
    pub(crate) attempts: u32,
    /// Earliest time of the next attempt, Unix ms.
    pub(crate) next_attempt_at_ms: u64,
    /// The id the user knows the message by (differs from `id` once the
    /// message was encrypted again).
    pub(crate) shown: [u8; 16],
    /// Kept unencrypted (no envelope yet) until the contact's prekeys
    /// arrive; never transmitted as it is.
    pub(crate) unsealed: bool,
}

impl From<&OutboxEntry> for Queued {
    fn from(e: &OutboxEntry) -> Self {
        Queued {
            id: e.message_id,
            seq: e.seq,
            queued_at_ms: e.queued_at_ms,
            attempts: e.attempts,
            next_attempt_at_ms: e.next_attempt_at_ms,
            shown: e.shown_id(),
            // No envelope yet, or a version 1 one (a migrated store): it
            // is encrypted (again) before anything is sent.
            unsealed: e.envelope.first() != Some(&kabar_crypto::envelope::ENVELOPE_VERSION),
        }
    }
}

/// Outbox entries by contact, each contact's in message order.
#[derive(Debug, Default)]
pub(crate) struct OutboxIndex {
    by_contact: HashMap<ContactId, Vec<Queued>>,
    contact_of: HashMap<[u8; 16], ContactId>,
}

impl OutboxIndex {
    /// The index of these entries (the whole outbox, read at start).
    pub(crate) fn new(entries: &[OutboxEntry]) -> Self {
        let mut index = OutboxIndex::default();
        for e in entries {
            index.insert(e.contact, Queued::from(e));
        }
        index
    }

    /// Adds an entry (a message just committed to the outbox).
    pub(crate) fn insert(&mut self, contact: ContactId, queued: Queued) {
        if self.contact_of.insert(queued.id, contact).is_some() {
            self.remove(&queued.id);
            self.contact_of.insert(queued.id, contact);
        }
        let list = self.by_contact.entry(contact).or_default();
        let at = list.partition_point(|q| (q.queued_at_ms, q.seq) <= (queued.queued_at_ms, queued.seq));
        list.insert(at, queued);
    }

    /// Removes an entry (acknowledged, failed, dropped); returns its contact.
    pub(crate) fn remove(&mut self, id: &[u8; 16]) -> Option<ContactId> {
        let contact = self.contact_of.remove(id)?;
        if let Some(list) = self.by_contact.get_mut(&contact) {
            list.retain(|q| &q.id != id);
            if list.is_empty() {
                self.by_contact.remove(&contact);
            }
        }
        Some(contact)
    }

    /// Records a delivery attempt of these entries.
    pub(crate) fn attempted(&mut self, ids: &[[u8; 16]], next_attempt_at_ms: u64) {
        for id in ids {
            let Some(contact) = self.contact_of.get(id) else { continue };
            if let Some(q) = self.by_contact.get_mut(contact).and_then(|l| l.iter_mut().find(|q| &q.id == id)) {
                q.attempts = q.attempts.saturating_add(1);
                q.next_attempt_at_ms = next_attempt_at_ms;
            }
        }
    }

    /// A contact's entries, oldest first.
    /// Marks the entry queued under `id` as waiting unencrypted.
    pub(crate) fn set_unsealed(&mut self, id: &[u8; 16]) {
        let Some(contact) = self.contact_of.get(id) else { return };
        if let Some(q) = self.by_contact.get_mut(contact).and_then(|l| l.iter_mut().find(|q| &q.id == id)) {
            q.unsealed = true;
        }
    }

    /// The entry queued under `id`, if any.
    pub(crate) fn get(&self, id: &[u8; 16]) -> Option<&Queued> {
        let contact = self.contact_of.get(id)?;
        self.by_contact.get(contact)?.iter().find(|q| &q.id == id)
    }

    pub(crate) fn of(&self, contact: &ContactId) -> &[Queued] {
        self.by_contact.get(contact).map_or(&[], Vec::as_slice)
    }

    /// Contacts with something queued.
    pub(crate) fn contacts(&self) -> impl Iterator<Item = (&ContactId, &[Queued])> {
        self.by_contact.iter().map(|(c, l)| (c, l.as_slice()))
    }

    /// Entries queued in all.
    pub(crate) fn len(&self) -> usize {
        self.contact_of.len()
    }

    /// True if nothing is queued.
    pub(crate) fn is_empty(&self) -> bool {
        self.by_contact.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(id: u8, seq: u64, at: u64) -> Queued {
        Queued {
            id: [id; 16],
            seq,
            queued_at_ms: at,
            attempts: 0,
            next_attempt_at_ms: at,
            shown: [id; 16],
            unsealed: false,
        }
    }

    #[test]
    fn entries_stay_in_message_order_and_leave_cleanly() {
        let (a, b) = (ContactId([1; 16]), ContactId([2; 16]));
        let mut index = OutboxIndex::default();
        index.insert(a, q(3, 3, 10));
        index.insert(a, q(1, 1, 10));
        index.insert(b, q(9, 1, 5));
        index.insert(a, q(2, 2, 10));
        assert_eq!(index.of(&a).iter().map(|q| q.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(index.contact_of.len(), 4);
        index.attempted(&[[2; 16]], 99);
        assert_eq!(index.of(&a)[1].attempts, 1);
        assert_eq!(index.of(&a)[1].next_attempt_at_ms, 99);
        assert_eq!(index.remove(&[9; 16]), Some(b));
        assert!(
            index.of(&b).is_empty() && !index.by_contact.contains_key(&b),
            "a contact with nothing queued leaves the index"
        );
        assert_eq!(index.remove(&[9; 16]), None);
        index.insert(a, q(1, 1, 10));
        assert_eq!(index.of(&a).len(), 3, "re-inserting an entry replaces it");
    }
}
