//! What travels inside an encrypted envelope: one JSON object per message.
//!
//! ```json
//! {"v":1,"seq":4,"sent_at_ms":1764000000000,"content":{"type":"text","text":"Hello"}}
//! ```
//!
//! `seq` is the sender's per-conversation counter: the receiver shows
//! messages in the sender's order even when they arrive out of order.
//! Content types: `text`, `receipt` (read receipts), `catalog_request`,
//! `catalog`, `order`, `addresses` (address updates), `mailboxes` (mailbox
//! updates). Unknown fields are ignored; unknown types are an error.

use serde::{Deserialize, Serialize};

/// Content format version.
pub const CONTENT_VERSION: u8 = 1;
/// Longest text, in bytes (leaves room in the 64 KiB plaintext limit).
pub const MAX_TEXT_BYTES: usize = 32 * 1024;

/// One message's plaintext.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Format version, [`CONTENT_VERSION`].
    pub v: u8,
    /// Sender's sequence number in this conversation.
    pub seq: u64,
    /// Sender's clock, Unix milliseconds.
    pub sent_at_ms: u64,
    /// The content.
    pub content: Content,
}

/// A catalog item as sent to customers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CatalogEntry {
    /// Item id (16 hex digits).
    pub id: String,
    /// Name.
    pub name: String,
    /// Price in minor units.
    pub price_minor: u64,
    /// ISO 4217 code.
    pub currency: String,
    /// Description.
    pub description: String,
    /// Orderable now.
    pub available: bool,
}

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderLine {
    /// Catalog item id (16 hex digits).
    pub item: String,
    /// How many.
    pub quantity: u32,
}

/// The kinds of content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Content {
    /// A text message. `automatic` marks greeting and away messages.
    Text {
        /// The text.
        text: String,
        /// Set on messages a business sent automatically ("greeting", "away").
        #[serde(default, skip_serializing_if = "Option::is_none")]
        automatic: Option<String>,
    },
    /// Receipts for messages we received (their message ids, hex; at most
    /// [`kabar_storage::MAX_RECEIPT_IDS`] in all): read, or delivered (taken from our mailbox: the sender's own copy waits for
    /// this, as the mailbox host acknowledged it, not we).
    Receipt {
        /// Ids read.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        read: Vec<String>,
        /// Ids stored after we fetched them from our mailbox.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        delivered: Vec<String>,
        /// Ids fetched from our mailbox that we could not decrypt because
        /// their key is gone (evicted skipped key, a sender's rolled-back
        /// state) and never received: the sender encrypts them again
        /// (a decryption-failure receipt).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        retry: Vec<String>,
    },
    /// A customer asks for the catalog.
    CatalogRequest,
    /// A business's catalog.
    Catalog {
        /// The items.
        items: Vec<CatalogEntry>,
    },
    /// A customer's order.
    Order {
        /// Lines.
        items: Vec<OrderLine>,
        /// Optional note.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// The sender's mailboxes, each with the recipient's own deposit
    /// capability (sent when they change, and before the first message to a
    /// contact that has not heard of them). An empty list: none any more.
    Mailboxes {
        /// At most [`kabar_storage::MAX_MAILBOXES`].
        mailboxes: Vec<crate::offline::MailboxOffer>,
    },
    /// The sender's current addresses (multiaddrs, without `/p2p/`), sent
    /// to every contact when they change: contacts keep reaching a profile
    /// whose IP, port or relay changed, without a new card.
    Addresses {
        /// At most [`crate::card::MAX_ADDRESSES`].
        addresses: Vec<String>,
    },
}

impl Content {
    /// A plain text message.
    pub fn text(text: impl Into<String>) -> Self {
        Content::Text { text: text.into(), automatic: None }
    }

    /// True for content the user sees in the conversation (not receipts).
    pub fn is_visible(&self) -> bool {
        !matches!(self, Content::Receipt { .. } | Content::Addresses { .. } | Content::Mailboxes { .. })
    }

    /// A one-line summary for inboxes and logs that never includes text.
    pub fn kind(&self) -> &'static str {
        match self {
            Content::Text { automatic: Some(_), .. } => "automatic",
            Content::Text { .. } => "text",
            Content::Receipt { .. } => "receipt",
            Content::CatalogRequest => "catalog_request",
            Content::Catalog { .. } => "catalog",
            Content::Order { .. } => "order",
            Content::Addresses { .. } => "addresses",
            Content::Mailboxes { .. } => "mailboxes",
        }
    }
}

/// Why content did not parse.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// Not the JSON we expect.
    #[error("malformed message content: {0}")]
    Malformed(String),
    /// A newer content version.
    #[error("unsupported content version {0}")]
    Version(u8),
    /// Text over [`MAX_TEXT_BYTES`].
    #[error("text of {0} bytes is over the {MAX_TEXT_BYTES}-byte limit")]
    TooLong(usize),
}

impl Message {
    /// Encodes as JSON bytes.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Parses JSON bytes and checks version and limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, ContentError> {
        let m: Message = serde_json::from_slice(bytes).map_err(|e| ContentError::Malformed(e.to_string()))?;
        if m.v != CONTENT_VERSION {
            return Err(ContentError::Version(m.v));
        }
        m.content.check()?;
        Ok(m)
    }
}

impl Content {
    /// Checks size limits.
    pub fn check(&self) -> Result<(), ContentError> {
        if let Content::Text { text, .. } = self
            && text.len() > MAX_TEXT_BYTES
        {
            return Err(ContentError::TooLong(text.len()));
        }
        if let Content::Addresses { addresses } = self
            && crate::addresses::parse_list(addresses).is_none()
        {
            return Err(ContentError::Malformed("address update: too many or malformed addresses".into()));
        }
        if let Content::Receipt { read, delivered, retry } = self
            && read.len() + delivered.len() + retry.len() > kabar_storage::MAX_RECEIPT_IDS
        {
            return Err(ContentError::Malformed("receipt: too many ids".into()));
        }
        if let Content::Mailboxes { mailboxes } = self
            && mailboxes.len() > kabar_storage::MAX_MAILBOXES
        {
            return Err(ContentError::Malformed("mailbox update: too many mailboxes".into()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape_is_stable() {
        let m = Message { v: 1, seq: 4, sent_at_ms: 10, content: Content::text("Hello") };
        assert_eq!(
            String::from_utf8(m.encode()).unwrap(),
            r#"{"v":1,"seq":4,"sent_at_ms":10,"content":{"type":"text","text":"Hello"}}"#
        );
        assert_eq!(Message::decode(&m.encode()).unwrap(), m);
        assert!(Message::decode(b"{}").is_err());
        assert!(Message::decode(br#"{"v":2,"seq":0,"sent_at_ms":0,"content":{"type":"catalog_request"}}"#).is_err());
        let long = Message { content: Content::text("x".repeat(MAX_TEXT_BYTES + 1)), ..m };
        assert!(matches!(Message::decode(&long.encode()), Err(ContentError::TooLong(_))));
    }
}
