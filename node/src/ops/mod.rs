//! The engine's typed operations behind the control API, as `impl Engine`
//! blocks: what a user may do to a profile, with every rule it is held to
//! (contact names and their uniqueness, requests, verification, labels,
//! business settings, closing conversations, the history's order).
//! The control layer only parses parameters, calls one of these (or an
//! engine method of `engine.rs`: `send`, `set_blocked`, `accept_request`,
//! `mark_read`…) and turns the typed result into JSON.
//!
//! Like the engine, these know nothing of sockets, tokio, libp2p or JSON:
//! typed values in, typed results or [`EngineError`](crate::engine::EngineError)
//! out; time comes in as `now_ms`.
//!
//! ## Layout
//! - [`contacts`]: finding a contact by name or PeerId, the name rule
//!   `contact.add` and `request.accept` share, adding from a card,
//!   requests, verification, this profile's card.
//! - [`messages`]: one message by id, and a page of history in the order
//!   it is shown.
//! - [`conversations`]: the inbox, closing and reopening, labels on a
//!   conversation.
//! - [`business`]: the business profile, hours, greeting and away
//!   message, catalog, quick replies, labels.

pub mod business;
pub mod contacts;
pub mod conversations;
pub mod messages;

pub use contacts::{ContactAdded, ContactRef, NewContact, OwnCard, Verification};
pub use conversations::ConversationSummary;
