//! Sender-side pacing of `/kabar/envelope/1` requests (docs/protocol.md
//! §9.1).
//!
//! A receiver answers at most 100 requests per second per peer, bursts of
//! 200, and drops the rest unanswered; a dropped request costs its
//! envelopes a retry a second later. So a sender never asks for more: each
//! peer gets a token bucket a little below the receiver's
//! ([`REQUESTS_PER_SECOND`], [`REQUEST_BURST`]: the margin absorbs requests
//! that arrive closer together than they left), and at most [`WINDOW`]
//! requests in flight. What cannot go yet stays queued and leaves in the
//! next request, so under load requests grow (up to the batch limit)
//! instead of multiplying: the pacing is where envelopes coalesce.
//!
//! A request whose outcome never comes back (an answer lost with an error)
//! stops counting against the window after `engine::IN_FLIGHT_MAX_MS`.

use std::collections::HashMap;

use crate::budget::BucketMap;
use crate::engine::{IN_FLIGHT_MAX_MS, PeerKey};

/// Requests a sender makes per second to one peer, sustained.
pub const REQUESTS_PER_SECOND: f64 = 90.0;
/// Requests a sender makes to one peer at once.
pub const REQUEST_BURST: f64 = 180.0;
/// Requests in flight to one peer (answers not back yet).
pub const WINDOW: usize = 8;
/// Peers whose buckets are remembered; the oldest is forgotten beyond it.
const MAX_TRACKED_PEERS: usize = crate::budget::MAX_TRACKED_PEERS;

/// Whether a request to a peer may leave now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Yes.
    Go,
    /// Not before this time (Unix ms): the peer's bucket is empty.
    At(u64),
    /// Not until an answer comes back: [`WINDOW`] requests are in flight.
    WindowFull,
}

/// The pacing of one profile's requests, per peer.
#[derive(Debug)]
pub struct Pacer {
    buckets: BucketMap<PeerKey>,
    /// Requests in flight per peer: the first message id of each (names
    /// the request in its outcome) and when it left. Only peers with a
    /// request in flight have an entry; at most [`WINDOW`] each.
    in_flight: HashMap<PeerKey, Vec<([u8; 16], u64)>>,
}

impl Default for Pacer {
    fn default() -> Self {
        Pacer::new(REQUESTS_PER_SECOND, REQUEST_BURST)
    }
}

impl Pacer {
    /// A pacer allowing `per_second` requests per peer, bursts of `burst`.
    pub fn new(per_second: f64, burst: f64) -> Self {
        Pacer { buckets: BucketMap::new(MAX_TRACKED_PEERS, per_second, burst), in_flight: HashMap::new() }
    }

    /// Whether a request to `peer` may leave at `now_ms` (takes nothing).
    pub fn gate(&mut self, peer: &PeerKey, now_ms: u64) -> Gate {
        if let Some(requests) = self.in_flight.get_mut(peer) {
            requests.retain(|(_, since)| now_ms < since.saturating_add(IN_FLIGHT_MAX_MS));
            if requests.len() >= WINDOW {
                return Gate::WindowFull;
            }
        }
        let at = self.buckets.get(peer, now_ms).ready_at(now_ms);
        if at <= now_ms { Gate::Go } else { Gate::At(at) }
    }

    /// A request to `peer` whose first message id is `first` left at
    /// `now_ms` (after [`Pacer::gate`] said [`Gate::Go`]).
    pub fn sent(&mut self, peer: &PeerKey, first: [u8; 16], now_ms: u64) {
        self.buckets.get(peer, now_ms).charge(now_ms);
        self.in_flight.entry(*peer).or_default().push((first, now_ms));
    }

    /// The outcome of the request to `peer` holding `message_ids` came back
    /// (answered or failed).
    pub fn settled(&mut self, peer: &PeerKey, message_ids: &[[u8; 16]]) {
        let Some(first) = message_ids.first() else { return };
        if let Some(requests) = self.in_flight.get_mut(peer) {
            requests.retain(|(id, _)| id != first);
            if requests.is_empty() {
                self.in_flight.remove(peer);
            }
        }
    }

    /// Requests in flight to `peer`.
    pub fn in_flight(&self, peer: &PeerKey) -> usize {
        self.in_flight.get(peer).map_or(0, Vec::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER: PeerKey = [7; 32];

    fn id(n: u8) -> [u8; 16] {
        [n; 16]
    }

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let mut p = Pacer::default();
        let mut sent = 0;
        while p.gate(&PEER, 1_000) == Gate::Go {
            p.sent(&PEER, id(0), 1_000);
            p.settled(&PEER, &[id(0)]);
            sent += 1;
            assert!(sent <= 1_000, "the burst never ends");
        }
        assert_eq!(sent, REQUEST_BURST as usize);
        let Gate::At(at) = p.gate(&PEER, 1_000) else { panic!("an empty bucket must say when") };
        assert_eq!(at, 1_000 + (1000.0 / REQUESTS_PER_SECOND).ceil() as u64);
        assert_eq!(p.gate(&PEER, at), Gate::Go);
        // Over one second after the burst: the sustained rate, never more.
        let mut more = 0;
        for ms in 1_000..2_000 {
            if p.gate(&PEER, ms) == Gate::Go {
                p.sent(&PEER, id(0), ms);
                p.settled(&PEER, &[id(0)]);
                more += 1;
            }
        }
        assert!(more <= REQUESTS_PER_SECOND as usize, "{more} requests in the second after a burst");
        assert!(more >= REQUESTS_PER_SECOND as usize - 1, "{more}");
    }

    #[test]
    fn the_window_closes_and_each_answer_reopens_it() {
        let mut p = Pacer::default();
        for n in 0..WINDOW as u8 {
            assert_eq!(p.gate(&PEER, 0), Gate::Go);
            p.sent(&PEER, id(n), 0);
        }
        assert_eq!(p.gate(&PEER, 0), Gate::WindowFull);
        assert_eq!(p.gate(&[8; 32], 0), Gate::Go, "other peers have their own window");
        // An answer naming a request not in flight changes nothing.
        p.settled(&PEER, &[id(200)]);
        assert_eq!(p.gate(&PEER, 0), Gate::WindowFull);
        p.settled(&PEER, &[id(3), id(99)]);
        assert_eq!(p.in_flight(&PEER), WINDOW - 1);
        assert_eq!(p.gate(&PEER, 0), Gate::Go);
    }

    #[test]
    fn a_request_whose_answer_was_lost_stops_counting() {
        let mut p = Pacer::default();
        for n in 0..WINDOW as u8 {
            p.sent(&PEER, id(n), 0);
        }
        assert_eq!(p.gate(&PEER, IN_FLIGHT_MAX_MS - 1), Gate::WindowFull);
        assert_eq!(p.gate(&PEER, IN_FLIGHT_MAX_MS), Gate::Go);
        assert_eq!(p.in_flight(&PEER), 0);
    }
}
