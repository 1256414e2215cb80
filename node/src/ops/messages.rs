//! Messages: one by id, and a page of a conversation's history in the
//! order it is shown.

use kabar_storage::{ContactId, Direction, MessageRecord};

use crate::content::Message;
use crate::engine::{Engine, EngineError};

/// Rows a history page may read to find its visible messages, at least.
const MIN_ROWS_SCANNED: usize = 256;

impl Engine {
    /// The message with this id, and its number in its conversation.
    pub fn message_record(&self, id: &[u8; 16]) -> Result<(u64, MessageRecord), EngineError> {
        let (_, seq, record) = self.store().message(id)?.ok_or(EngineError::NoMessage)?;
        Ok((seq, record))
    }

    /// The latest `limit` visible messages with a contact (before `seq`
    /// `before`, if given), oldest first, with their numbers.
    ///
    /// In the order messages were stored here (sent, or arrived): a
    /// sender's clock cannot move its message anywhere else (a date in 2100
    /// does not stay "newest" for ever). Within a run of messages that
    /// arrived with nothing of ours between them, the sender's own
    /// numbering orders them (retransmissions and mailboxes may deliver
    /// them out of order). Receipts and other invisible content are left
    /// out: older rows are read in their place, up to `2 × limit` rows (at
    /// least 256) in all, so a page may hold fewer than `limit` messages
    /// although older ones exist; ask again before its first.
    pub fn history_page(
        &self,
        contact: &ContactId,
        limit: usize,
        before: Option<u64>,
    ) -> Result<Vec<(u64, MessageRecord)>, EngineError> {
        // Receipts take rows too: read older rows until `limit` visible
        // messages or the start of the history, bounded so that a history
        // of nothing but receipts costs a bounded read.
        let budget = (limit.saturating_mul(2)).max(MIN_ROWS_SCANNED);
        let chunk = limit.saturating_mul(2).clamp(1, budget);
        let mut messages: Vec<(u64, MessageRecord)> = Vec::new();
        let mut scanned = 0;
        let mut before = before;
        while messages.len() < limit && scanned < budget {
            let rows = self.store().history(contact, chunk.min(budget - scanned), before)?;
            let Some(&(oldest, _)) = rows.first() else { break };
            let full = rows.len() == chunk.min(budget - scanned);
            scanned += rows.len();
            before = Some(oldest);
            let visible = rows
                .into_iter()
                .filter(|(_, m)| Message::decode(&m.body).map(|x| x.content.is_visible()).unwrap_or(true));
            messages.splice(0..0, visible);
            if !full || oldest == 0 {
                break;
            }
        }
        for run in messages.chunk_by_mut(|a, b| a.1.direction == b.1.direction) {
            if run[0].1.direction == Direction::Incoming {
                run.sort_by_key(|(seq, m)| Message::decode(&m.body).map_or(*seq, |x| x.seq));
            }
        }
        let start = messages.len().saturating_sub(limit);
        messages.drain(..start);
        Ok(messages)
    }
}
