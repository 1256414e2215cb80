//! Kabar's multi-node integration tests: one binary, a module per area. Each
//! test runs real nodes in this process on 127.0.0.1 and drives them through
//! the JSON-RPC control socket.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::needless_range_loop,
    missing_docs,
    unreachable_pub
)]

mod api;
mod business;
mod damage;
mod disk;
mod hostile;
mod mailbox;
mod messaging;
mod network;
mod prekeys;
mod reachability;
mod resilience;
mod separation;
