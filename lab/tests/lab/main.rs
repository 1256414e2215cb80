//! The network lab's own tests, one binary with a module per area. They need root and the lab's tools; without
//! them each test prints why and passes, unless `KABAR_LAB_REQUIRED` is set, which turns that into a failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr)]

mod address;
mod cleanup;
mod cut;
mod nat;
mod probe;
