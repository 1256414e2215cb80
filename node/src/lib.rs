//! kabar-node: the only crate that knows libp2p and tokio.
//!
//! Not built yet: this crate is laid out so the workspace has its final shape.
//! The node issue fills it with one swarm per profile, the delivery engine and
//! the JSON-RPC control socket.
