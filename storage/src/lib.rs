//! # kabar-storage
//!
//! One encrypted redb database per profile, and the rules that keep messages
//! and keys safe across crashes. Synchronous; knows nothing of libp2p or
//! tokio.
//!
//! ## Layout
//! - [`header`]: the data directory, its header file (profile names and
//!   kinds, Argon2id parameters and salt, wrapped data keys) and passphrase
//!   handling: [`DataDir`].
//! - [`store`]: [`ProfileStore`], one profile's database: identity and
//!   prekeys, contacts (with a keyed name index), sessions, messages and
//!   their statuses, outbox, received ids (pruned after
//!   [`RECEIVED_WINDOW_MS`]), conversations, pending strangers (bounded by
//!   [`StrangerLimits`]) and business data; the atomic send and receive
//!   commits, and forgetting a contact.
//! - [`model`]: the record types and their validation rules.
//! - [`schema`]: every table, and the schema version with its migrations.
//! - `index`: what a message id names (`message_index` rows: messages,
//!   aliases, received ids) and the sealed status kept apart from a
//!   message's body.
//! - `skipped`: skipped message keys, one row each apart from the session
//!   snapshots, and [`SkippedKeyChanges`], what one request changes.
//! - `seal`: record encryption (XChaCha20-Poly1305, table and key as
//!   associated data) and opaque lookup keys.
//! - [`check`]: damaged stores: opening a file without writing to it
//!   (redb's integrity check over a memory layer, panics contained) and
//!   checking every table and record ([`ProfileReport`]).
//! - [`error`]: the error type, [`StoreError`].
//!
//! ## Separation
//! Each profile has its own data key and its own file; nothing in one
//! profile's file names or references another profile (the tests check the
//! raw bytes). On-disk format: `docs/protocol.md`, "Storage".

pub mod check;
pub mod error;
pub mod header;
mod index;
pub mod model;
pub mod schema;
mod seal;
mod skipped;
pub mod store;

pub use check::{DamagedRow, ProfileReport, TableReport};
pub use error::StoreError;
pub use header::{DataDir, KdfParams, ProfileEntry, validate_profile_name};
pub use index::RECEIVED_WINDOW_MS;
pub use model::*;
pub use skipped::SkippedKeyChanges;
pub use store::{
    Inbound, InboundOutcome, IncomingMessage, OutgoingMessage, ProfileStore, Receipt, ReceiptChange, ReceiveOutcome,
};
