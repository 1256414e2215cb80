//! A peer that declares a large frame and sends a few bytes costs a few
//! bytes: the frame readers of `/kabar/envelope/1` and `/kabar/mailbox/1`
//! grow their buffer with what arrives. This test binary's allocator is
//! capped at 1 MiB above what is allocated when a read starts: a reader that
//! reserved the declared 4 MiB up front would abort the binary.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::alloc::System;

use cap::Cap;
use futures::executor::block_on;
use libp2p::request_response::Codec;

#[global_allocator]
static ALLOCATOR: Cap<System> = Cap::new(System, usize::MAX);

/// A frame that claims `declared` bytes and carries 10.
fn short_frame(declared: u32) -> futures::io::Cursor<Vec<u8>> {
    let mut bytes = declared.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0u8; 10]);
    futures::io::Cursor::new(bytes)
}

/// Runs `f` with at most 1 MiB more to allocate than now.
fn with_one_more_mib<T>(f: impl FnOnce() -> T) -> T {
    ALLOCATOR.set_limit(ALLOCATOR.allocated() + 1024 * 1024).unwrap();
    let out = f();
    ALLOCATOR.set_limit(usize::MAX).unwrap();
    out
}

#[test]
fn a_frame_that_claims_megabytes_and_sends_ten_bytes_costs_kilobytes() {
    let declared = 4 * 1024 * 1024;
    let mut envelope = kabar_node::wire::EnvelopeCodec::default();
    let mut frame = short_frame(declared);
    let read = with_one_more_mib(|| block_on(envelope.read_request(&kabar_node::wire::PROTOCOL, &mut frame)));
    assert!(read.is_err(), "a truncated frame is an error of the stream");

    let mut mailbox = kabar_node::mailbox::MailboxCodec::default();
    let mut frame = short_frame(declared);
    let read = with_one_more_mib(|| block_on(mailbox.read_request(&kabar_node::mailbox::PROTOCOL, &mut frame)));
    assert!(read.is_err());
}
