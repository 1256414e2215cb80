//! kabar-storage: one encrypted redb database per profile.
//!
//! Not built yet: this crate is laid out so the workspace has its final shape.
//! The storage issue fills it with the per-profile store and the atomic write
//! rules (ratchet state, message and outbox entry in one durable transaction).
