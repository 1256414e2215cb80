//! Inbound `/kabar/envelope/1` request frames share one byte budget per
//! profile: peers that declare 4 MiB, send part of it and stall cannot make
//! the reads hold more than the budget, a read that cannot reserve fails at
//! once with "profile busy", and everything a read reserved is released
//! when it ends, fails, or its future is dropped (the stream was reset).
//!
//! Each peer is an in-memory pipe (a channel read as an `AsyncRead`):
//! everything sent is queued before a read is polled, so one poll reads all
//! of it and then either finishes or waits for more bytes that never come. Polling is by hand with a no-op waker: no sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::TryStreamExt;
use futures::channel::mpsc;
use futures::task::noop_waker_ref;
use kabar_crypto::envelope::MAX_ENVELOPE_LEN;
use kabar_node::wire::{
    DEFAULT_INFLIGHT_BYTES, EnvelopeCodec, InflightBudget, MAX_REQUEST_BYTES, PROTOCOL, encode_request,
};
use libp2p::request_response::Codec;

const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

type Read = Pin<Box<dyn Future<Output = io::Result<Vec<Vec<u8>>>> + Send>>;

/// One inbound stream: the peer's sending side and our pending read.
struct Peer {
    tx: mpsc::Sender<io::Result<Vec<u8>>>,
    read: Read,
}

impl Peer {
    /// Starts reading a request with a clone of `codec`, as libp2p does for
    /// each connection.
    fn new(codec: &EnvelopeCodec) -> Peer {
        // Room for a whole request in 64 KiB pieces.
        let (tx, rx) = mpsc::channel::<io::Result<Vec<u8>>>(MAX_REQUEST_BYTES / (64 * KIB) + 8);
        let mut codec = codec.clone();
        let read = Box::pin(async move {
            let mut io = rx.into_async_read();
            codec.read_request(&PROTOCOL, &mut io).await
        });
        Peer { tx, read }
    }

    /// The peer sends `bytes` in 64 KiB pieces.
    fn send(&mut self, bytes: &[u8]) {
        for piece in bytes.chunks(64 * KIB) {
            self.tx.try_send(Ok(piece.to_vec())).unwrap();
        }
    }

    /// The peer closes its side of the stream.
    fn close(&mut self) {
        self.tx.close_channel();
    }

    fn poll(&mut self) -> Poll<io::Result<Vec<Vec<u8>>>> {
        self.read.as_mut().poll(&mut Context::from_waker(noop_waker_ref()))
    }
}

fn header(declared: usize) -> Vec<u8> {
    (declared as u32).to_be_bytes().to_vec()
}

fn is_busy(err: &io::Error) -> bool {
    err.to_string().contains("profile busy: inbound bytes in flight at the limit")
}

/// Sends a complete small request through `codec` and checks it decodes.
fn assert_small_request_reads(codec: &EnvelopeCodec) {
    let envelopes = vec![vec![1u8; 100], vec![2u8; 2000], vec![]];
    let body = encode_request(&envelopes).unwrap();
    let mut peer = Peer::new(codec);
    peer.send(&header(body.len()));
    peer.send(&body);
    peer.close();
    match peer.poll() {
        Poll::Ready(Ok(read)) => assert_eq!(read, envelopes),
        Poll::Ready(Err(e)) => panic!("a small request failed: {e}"),
        Poll::Pending => panic!("a complete request did not finish"),
    }
    assert_eq!(codec.budget().in_use(), 0, "a finished read holds nothing");
}

#[test]
fn stalled_peers_cannot_hold_more_than_the_budget() {
    let budget = InflightBudget::new(2 * MIB);
    let codec = EnvelopeCodec::new(budget.clone());
    let mut stalled = Vec::new();
    let mut busy = 0u64;
    for _ in 0..8 {
        // Declares the largest request, sends 512 KiB of it, then stalls.
        let mut peer = Peer::new(&codec);
        peer.send(&header(MAX_REQUEST_BYTES));
        peer.send(&vec![0u8; 512 * KIB]);
        match peer.poll() {
            Poll::Pending => stalled.push(peer),
            Poll::Ready(Err(e)) if is_busy(&e) => busy += 1,
            Poll::Ready(other) => panic!("unexpected end of a stalled read: {other:?}"),
        }
        assert!(budget.in_use() <= budget.capacity(), "{} > {}", budget.in_use(), budget.capacity());
    }
    assert!(!stalled.is_empty(), "some stalled reads fit in the budget");
    assert!(busy > 0, "eight stalled 512 KiB reads do not fit in 2 MiB: some must be refused");
    assert_eq!(budget.refused(), busy);
    assert!(budget.in_use() >= stalled.len() * 512 * KIB, "the stalled reads are charged for what they hold");

    // Polling again changes nothing: the stalled reads wait for bytes.
    for peer in &mut stalled {
        assert!(peer.poll().is_pending());
    }
    assert!(budget.in_use() <= budget.capacity());

    // A small request is refused while the budget is exhausted…
    let mut peer = Peer::new(&codec);
    peer.send(&header(10));
    peer.send(&[0u8; 10]);
    if budget.capacity() - budget.in_use() < 10 {
        match peer.poll() {
            Poll::Ready(Err(e)) => assert!(is_busy(&e), "{e}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert_eq!(budget.refused(), busy + 1);
    }

    // …and every byte comes back when the stalled streams are reset.
    drop(stalled);
    assert_eq!(budget.in_use(), 0);
    assert_small_request_reads(&codec);
}

#[test]
fn failed_reads_release_what_they_reserved() {
    let budget = InflightBudget::new(MIB);
    let codec = EnvelopeCodec::new(budget.clone());

    // The peer closes the stream early: 300 KiB of a declared 1 MiB.
    let mut peer = Peer::new(&codec);
    peer.send(&header(MIB));
    peer.send(&vec![0u8; 300 * KIB]);
    assert!(peer.poll().is_pending());
    assert!(budget.in_use() >= 300 * KIB);
    peer.close();
    match peer.poll() {
        Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof),
        other => panic!("expected an early end, got {other:?}"),
    }
    assert_eq!(budget.in_use(), 0);

    // A complete frame that does not decode.
    let mut peer = Peer::new(&codec);
    peer.send(&header(200 * KIB));
    peer.send(&vec![0xffu8; 200 * KIB]);
    match peer.poll() {
        Poll::Ready(Err(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidData),
        other => panic!("expected a decoding error, got {other:?}"),
    }
    assert_eq!(budget.in_use(), 0);
    assert_eq!(budget.refused(), 0);
    assert_small_request_reads(&codec);
}

#[test]
fn a_valid_request_decodes_through_the_budgeted_codec() {
    let codec = EnvelopeCodec::default();
    assert_eq!(codec.budget().capacity(), DEFAULT_INFLIGHT_BYTES);
    assert_small_request_reads(&codec);

    // The largest request fits in a budget of exactly one request.
    let codec = EnvelopeCodec::new(InflightBudget::new(MAX_REQUEST_BYTES));
    let mut envelopes = Vec::new();
    let mut room = MAX_REQUEST_BYTES - 2;
    while room > 4 {
        let len = MAX_ENVELOPE_LEN.min(room - 4);
        envelopes.push(vec![envelopes.len() as u8; len]);
        room -= 4 + len;
    }
    let body = encode_request(&envelopes).unwrap();
    assert!(body.len() > MAX_REQUEST_BYTES - 4);
    let mut peer = Peer::new(&codec);
    peer.send(&header(body.len()));
    peer.send(&body);
    peer.close();
    match peer.poll() {
        Poll::Ready(Ok(read)) => assert_eq!(read, envelopes),
        other => panic!("a full request failed: {other:?}"),
    }
    assert_eq!(codec.budget().in_use(), 0);
    assert_eq!(codec.budget().refused(), 0);
}

#[test]
fn clones_share_one_budget() {
    let codec = EnvelopeCodec::new(InflightBudget::new(MIB));
    let clone = codec.clone();
    let mut peer = Peer::new(&clone);
    peer.send(&header(MIB));
    peer.send(&vec![0u8; 100 * KIB]);
    assert!(peer.poll().is_pending());
    assert!(codec.budget().in_use() >= 100 * KIB);
    assert_eq!(codec.budget().in_use(), clone.budget().in_use());
    drop(peer);
    assert_eq!(codec.budget().in_use(), 0);
}

#[test]
fn a_profile_reads_at_most_its_number_of_frames_at_once() {
    let budget = InflightBudget::with_streams(DEFAULT_INFLIGHT_BYTES, 2);
    let codec = EnvelopeCodec::new(budget.clone());
    // Two peers that open a stream and send nothing hold both slots…
    let mut silent: Vec<Peer> = (0..2).map(|_| Peer::new(&codec)).collect();
    for peer in &mut silent {
        assert!(peer.poll().is_pending(), "a silent peer's read waits");
    }
    assert_eq!(budget.streams(), 2);
    // …so a third read is refused at once, even a complete small request.
    let body = encode_request(&[vec![1u8; 100]]).unwrap();
    let mut third = Peer::new(&codec);
    third.send(&header(body.len()));
    third.send(&body);
    third.close();
    match third.poll() {
        Poll::Ready(Err(e)) => assert!(e.to_string().contains("profile busy"), "{e}"),
        other => panic!("a read past the frame slots went on: {other:?}"),
    }
    assert_eq!(budget.refused(), 1);
    // The slots come back when the silent streams are reset.
    drop(silent);
    assert_eq!(budget.streams(), 0);
    assert_small_request_reads(&codec);
}
