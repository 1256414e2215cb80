//! What a message id names (`message_index` rows, schema 6), and a
//! message's status kept apart from its sealed body (its status row in
//! `messages`, beside the record, since schema 8).
//!
//! An index value is a kind byte and clear, opaque fields (ids, positions,
//! times); nothing typed:
//!
//! ```text
//! 0x01 ‖ position (24)                       our message (the record's own id)
//! 0x02 ‖ position (24) ‖ received_at (u64)   a message received and stored
//! 0x03 ‖ position (24) ‖ shown id (16)       another envelope id of our message (encrypted again)
//! 0x04 ‖ received_at (u64)                   received, nothing stored under it
//! ```
//!
//! `position` is contact id ‖ seq (u64 BE), the key of the message's
//! record in `messages`; its status row is under `position ‖ 0x73`. Kinds 0x02 and 0x04 are the received
//! ids: duplicates. A 0x04 row is a received envelope whose content is not
//! shown (a receipt) or whose message left with its contact; only those
//! are pruned, after [`RECEIVED_WINDOW_MS`].

use serde::{Deserialize, Serialize};

use crate::model::{Direction, MessageStatus};

/// How long the id of a received envelope with no stored message is kept
/// to recognise duplicates: 30 days. A copy of an envelope reaches us at
/// most 7 days after its sender queued it (direct retries stop then,
/// protocol.md §9.1) or 14 days after a mailbox took it (deposits happen
/// within those 7 days): 21 days after the first copy at the latest, so 30
/// days leave 9 days for clocks that disagree.
pub const RECEIVED_WINDOW_MS: u64 = 30 * 86_400_000;

/// A message's record key in `messages`: contact id ‖ seq.
pub(crate) type Position = [u8; 24];

/// The last byte of a status row's key (`s`).
pub(crate) const STATUS_SUFFIX: u8 = 0x73;

/// The key of a message's status row in `messages`: its position ‖ `s`.
/// It sorts right after the record's own key, so the two share a page and
/// a range scan of a conversation meets each status row beside its
/// record (after it, going forward; before it, going back).
pub(crate) fn status_key(position: &Position) -> [u8; 25] {
    let mut key = [STATUS_SUFFIX; 25];
    key[..24].copy_from_slice(position);
    key
}

/// One `message_index` row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IndexRow {
    /// Our message, under its record's own id.
    Outgoing(Position),
    /// A message received and stored, and when (Unix ms).
    Incoming(Position, u64),
    /// Another envelope id of our message, and the id the user knows it by.
    Alias(Position, [u8; 16]),
    /// A received id with nothing stored under it, and when (Unix ms).
    Received(u64),
}

const OUTGOING: u8 = 1;
const INCOMING: u8 = 2;
const ALIAS: u8 = 3;
const RECEIVED: u8 = 4;

impl IndexRow {
    /// The row's bytes.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(41);
        match self {
            IndexRow::Outgoing(position) => {
                out.push(OUTGOING);
                out.extend_from_slice(position);
            }
            IndexRow::Incoming(position, at) => {
                out.push(INCOMING);
                out.extend_from_slice(position);
                out.extend_from_slice(&at.to_be_bytes());
            }
            IndexRow::Alias(position, shown) => {
                out.push(ALIAS);
                out.extend_from_slice(position);
                out.extend_from_slice(shown);
            }
            IndexRow::Received(at) => {
                out.push(RECEIVED);
                out.extend_from_slice(&at.to_be_bytes());
            }
        }
        out
    }

    /// Parses a row; `None` if it is not one of the four shapes.
    pub(crate) fn decode(bytes: &[u8]) -> Option<IndexRow> {
        let (&kind, rest) = bytes.split_first()?;
        let position = |rest: &[u8]| -> Option<Position> { rest.get(..24)?.try_into().ok() };
        let u64_at = |b: &[u8]| -> Option<u64> { Some(u64::from_be_bytes(b.try_into().ok()?)) };
        match (kind, rest.len()) {
            (OUTGOING, 24) => Some(IndexRow::Outgoing(position(rest)?)),
            (INCOMING, 32) => Some(IndexRow::Incoming(position(rest)?, u64_at(&rest[24..])?)),
            (ALIAS, 40) => Some(IndexRow::Alias(position(rest)?, rest[24..].try_into().ok()?)),
            (RECEIVED, 8) => Some(IndexRow::Received(u64_at(rest)?)),
            _ => None,
        }
    }

    /// Where the message is, if one is stored under this id.
    pub(crate) fn position(&self) -> Option<Position> {
        match self {
            IndexRow::Outgoing(p) | IndexRow::Incoming(p, _) | IndexRow::Alias(p, _) => Some(*p),
            IndexRow::Received(_) => None,
        }
    }

    /// When it was received, if it is a received id (a duplicate).
    pub(crate) fn received_at(&self) -> Option<u64> {
        match self {
            IndexRow::Incoming(_, at) | IndexRow::Received(at) => Some(*at),
            IndexRow::Outgoing(_) | IndexRow::Alias(..) => None,
        }
    }
}

/// A message's direction and status: the sealed value of its status row
/// (`messages`, under [`status_key`]), so a status change seals two bytes,
/// not the body.
/// (The record in `messages` keeps the status it was written with; this
/// one is authoritative.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MessageState {
    /// Ours or theirs.
    pub(crate) direction: Direction,
    /// The current status.
    pub(crate) status: MessageStatus,
}

impl MessageState {
    /// Whether `status` may replace this one: statuses only move forward
    /// (queued → sent → stored → delivered → read); failed replaces queued,
    /// sent or stored only.
    pub(crate) fn allows(&self, status: MessageStatus) -> bool {
        match status {
            MessageStatus::Failed => {
                matches!(self.status, MessageStatus::Queued | MessageStatus::Sent | MessageStatus::Stored)
            }
            s => self.status != MessageStatus::Failed && s > self.status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_bad_shapes_are_refused() {
        let position = [7u8; 24];
        for row in [
            IndexRow::Outgoing(position),
            IndexRow::Incoming(position, 42),
            IndexRow::Alias(position, [9; 16]),
            IndexRow::Received(u64::MAX),
        ] {
            let bytes = row.encode();
            assert_eq!(IndexRow::decode(&bytes), Some(row));
            assert_eq!(IndexRow::decode(&bytes[..bytes.len() - 1]), None);
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(IndexRow::decode(&longer), None);
        }
        // A schema 5 row (a bare position) is not a schema 6 row.
        assert_eq!(IndexRow::decode(&position), None);
        assert_eq!(IndexRow::decode(&[]), None);
        assert_eq!(IndexRow::Received(5).received_at(), Some(5));
        assert_eq!(IndexRow::Alias(position, [1; 16]).received_at(), None);
    }

    #[test]
    fn statuses_only_move_forward() {
        let state = |status| MessageState { direction: Direction::Outgoing, status };
        assert!(state(MessageStatus::Queued).allows(MessageStatus::Sent));
        assert!(state(MessageStatus::Stored).allows(MessageStatus::Delivered));
        assert!(!state(MessageStatus::Delivered).allows(MessageStatus::Stored));
        assert!(!state(MessageStatus::Read).allows(MessageStatus::Read));
        assert!(state(MessageStatus::Stored).allows(MessageStatus::Failed));
        assert!(!state(MessageStatus::Delivered).allows(MessageStatus::Failed));
        assert!(!state(MessageStatus::Failed).allows(MessageStatus::Read));
    }
}
