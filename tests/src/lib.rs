//! kabar-tests: the shared harness for Kabar's multi-node integration tests.
//!
//! Empty until the node exists; the integration tests live in `tests/` of this
//! crate, built as one binary with a module per area.
