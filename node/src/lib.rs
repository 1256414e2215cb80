//! # kabar-node
//!
//! The daemon a user runs: every profile of a data directory on its own
//! libp2p swarm, end-to-end encrypted delivery, and a JSON-RPC control socket.
//! The only crate that knows libp2p and tokio.
//!
//! ## Layout
//! - [`engine`]: the delivery engine of one profile — pure logic over the
//!   profile's store: events in, actions out; tested without sockets.
//! - [`ops`]: the engine's typed operations behind the control API, with
//!   every rule of what a user may do (names, requests, labels, business
//!   settings…).
//! - [`network`]: one swarm per profile and its event loop.
//! - [`profile`]: what the control API says to a profile's loop
//!   ([`profile::Command`]) and the live [`profile::ProfileStatus`].
//! - [`worker`]: each profile's engine on its own thread, off the event
//!   loop, with group commit.
//! - [`wire`]: the `/kabar/envelope/1` request-response protocol and codec.
//! - [`prekeys`]: the `/kabar/prekey/1` protocol (one-time prekeys handed
//!   out online) and the signed prekey schedule; [`prekey_codec`]: its codec.
//! - [`content`]: the JSON content inside envelopes (text, receipts,
//!   catalog, orders).
//! - [`addresses`]: what a profile advertises, and its signed address record on the DHT.
//! - [`card`]: contact cards (`kabar:` URIs).
//! - [`mailbox`]: offline mailboxes (`/kabar/mailbox/1`) a service node
//!   hosts: sealed envelopes kept for an owner who is offline.
//! - [`service`]: the service node (`kabar serve`): relay, AutoNAT, DHT server.
//! - [`control`]: the JSON-RPC 2.0 control API over a Unix socket: framing
//!   and dispatch, one file per method namespace;
//!   [`rpc_error`]: its error object and codes.
//! - [`node`]: starting and stopping a node.

pub mod addresses;
pub mod budget;
pub mod card;
pub mod content;
pub mod control;
pub mod courier;
pub mod engine;
pub mod keep_alive;
pub mod mailbox;
pub mod network;
pub mod node;
pub mod offline;
pub mod ops;
mod outbox;
pub mod pace;
pub mod prekey_codec;
pub mod prekeys;
pub mod profile;
pub mod rpc_error;
pub mod service;
pub mod wire;
pub mod worker;

pub use node::{Node, NodeConfig, NodeError};
