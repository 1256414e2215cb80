//! What a peer may cost a profile, counted per envelope (not per request),
//! in token buckets that survive reconnects: they live in size-capped maps
//! keyed by the peer's identity, the oldest entry evicted when full.
//!
//! | bucket | per | rate | burst | what takes a token |
//! |---|---|---|---|---|
//! | failures | peer | [`FAILURES_PER_SECOND`] | [`FAILURE_BURST`] | an envelope that fails (malformed, undecryptable, unknown prekey, no session) |
//! | stranger failures | profile | [`PROFILE_STRANGER_FAILURES_PER_SECOND`] | [`PROFILE_STRANGER_FAILURE_BURST`] | the same, from all strangers together |
//! | stranger envelopes | peer | [`STRANGER_ENVELOPES_PER_SECOND`] | [`STRANGER_ENVELOPE_BURST`] | any envelope from a peer that is not a settled contact |
//! | stranger envelopes | profile | [`PROFILE_STRANGER_ENVELOPES_PER_SECOND`] | [`PROFILE_STRANGER_ENVELOPE_BURST`] | the same, from all strangers together |
//! | session starts | peer | one per [`SESSION_START_EVERY_MS`] | [`SESSION_START_BURST`] | a prekey envelope that would start a session with a stranger |
//! | session starts | profile | [`PROFILE_SESSION_STARTS_PER_MINUTE`] a minute | the same | the same, from all strangers together |
//!
//! An envelope over a budget is refused before any cryptography, with the
//! transient reason `busy`: an honest sender retries later. Settled contacts
//! (known, not blocked, not a pending message request) only ever meet the
//! failure budget, which an honest peer does not reach.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// Failed envelopes a peer may send per second, sustained.
pub const FAILURES_PER_SECOND: f64 = 20.0;
/// Failed envelopes a peer may send at once (one full request).
pub const FAILURE_BURST: f64 = 256.0;
/// Failed envelopes all strangers together may send a profile per second
/// (a failing envelope can cost up to about a millisecond of the profile's
/// loop: skipped message keys are derived before its tag fails).
pub const PROFILE_STRANGER_FAILURES_PER_SECOND: f64 = 100.0;
/// Failed envelopes all strangers together may send a profile at once.
pub const PROFILE_STRANGER_FAILURE_BURST: f64 = 512.0;
/// Envelopes a stranger may send per second, sustained.
pub const STRANGER_ENVELOPES_PER_SECOND: f64 = 50.0;
/// Envelopes a stranger may send at once (one full request).
pub const STRANGER_ENVELOPE_BURST: f64 = 256.0;
/// Envelopes all strangers together may send a profile per second.
pub const PROFILE_STRANGER_ENVELOPES_PER_SECOND: f64 = 500.0;
/// Envelopes all strangers together may send a profile at once.
pub const PROFILE_STRANGER_ENVELOPE_BURST: f64 = 2_000.0;
/// A stranger may start a session once per this long, sustained.
pub const SESSION_START_EVERY_MS: u64 = 10_000;
/// Session starts a stranger may make at once.
pub const SESSION_START_BURST: f64 = 3.0;
/// Session starts from strangers a profile takes per minute (and at once).
pub const PROFILE_SESSION_STARTS_PER_MINUTE: f64 = 60.0;
/// Peers remembered per bucket map; the oldest is forgotten beyond it.
pub const MAX_TRACKED_PEERS: usize = 4_096;

/// A token bucket over caller-supplied time (Unix ms).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    last_ms: u64,
    per_ms: f64,
    burst: f64,
}

impl Bucket {
    /// A full bucket refilling `per_second`, holding at most `burst`.
    pub fn new(per_second: f64, burst: f64, now_ms: u64) -> Self {
        Bucket { tokens: burst, last_ms: now_ms, per_ms: per_second / 1000.0, burst }
    }

    fn refill(&mut self, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.last_ms) as f64;
        self.tokens = (self.tokens + elapsed * self.per_ms).min(self.burst);
        self.last_ms = self.last_ms.max(now_ms);
    }

    /// True if at least one token is left (takes none).
    pub fn has(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        self.tokens >= 1.0
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        self.refill(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// When the next token is there (Unix ms): `now_ms` if one is left.
    pub fn ready_at(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        if self.tokens >= 1.0 || self.per_ms <= 0.0 {
            return now_ms;
        }
        now_ms + ((1.0 - self.tokens) / self.per_ms).ceil() as u64
    }

    /// Takes one token even into debt (a cost already paid).
    pub fn charge(&mut self, now_ms: u64) {
        self.refill(now_ms);
        self.tokens = (self.tokens - 1.0).max(-self.burst);
    }
}

/// Buckets by key, at most `cap` of them; the least recently created is
/// evicted first. A peer that is evicted comes back with a full bucket, so
/// the cap must exceed the peers one node can juggle at once (the connection
/// limits keep that far below [`MAX_TRACKED_PEERS`]).
#[derive(Debug)]
pub struct BucketMap<K> {
    buckets: HashMap<K, Bucket>,
    order: VecDeque<K>,
    cap: usize,
    per_second: f64,
    burst: f64,
}

impl<K: Hash + Eq + Clone> BucketMap<K> {
    /// An empty map of buckets refilling `per_second` up to `burst`.
    pub fn new(cap: usize, per_second: f64, burst: f64) -> Self {
        BucketMap { buckets: HashMap::new(), order: VecDeque::new(), cap: cap.max(1), per_second, burst }
    }

    /// The bucket of `key`, created full if new.
    pub fn get(&mut self, key: &K, now_ms: u64) -> &mut Bucket {
        if !self.buckets.contains_key(key) {
            while self.buckets.len() >= self.cap {
                let Some(old) = self.order.pop_front() else { break };
                self.buckets.remove(&old);
            }
            self.order.push_back(key.clone());
            self.buckets.insert(key.clone(), Bucket::new(self.per_second, self.burst, now_ms));
        }
        self.buckets.get_mut(key).unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True if no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

/// Who sent an envelope, as far as the budgets care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sender {
    /// A known contact, not blocked, not a pending request.
    Settled,
    /// Anyone else.
    Stranger,
}

/// All budgets of one profile.
#[derive(Debug)]
pub struct Budgets<K> {
    failures: BucketMap<K>,
    stranger_envelopes: BucketMap<K>,
    session_starts: BucketMap<K>,
    profile_envelopes: Bucket,
    profile_failures: Bucket,
    profile_starts: Bucket,
    /// Envelopes refused so far (for `node info`).
    pub refused: u64,
}

impl<K: Hash + Eq + Clone> Budgets<K> {
    /// Fresh budgets.
    pub fn new(now_ms: u64) -> Self {
        Budgets {
            failures: BucketMap::new(MAX_TRACKED_PEERS, FAILURES_PER_SECOND, FAILURE_BURST),
            stranger_envelopes: BucketMap::new(
                MAX_TRACKED_PEERS,
                STRANGER_ENVELOPES_PER_SECOND,
                STRANGER_ENVELOPE_BURST,
            ),
            session_starts: BucketMap::new(
                MAX_TRACKED_PEERS,
                1000.0 / SESSION_START_EVERY_MS as f64,
                SESSION_START_BURST,
            ),
            profile_envelopes: Bucket::new(
                PROFILE_STRANGER_ENVELOPES_PER_SECOND,
                PROFILE_STRANGER_ENVELOPE_BURST,
                now_ms,
            ),
            profile_failures: Bucket::new(PROFILE_STRANGER_FAILURES_PER_SECOND, PROFILE_STRANGER_FAILURE_BURST, now_ms),
            profile_starts: Bucket::new(
                PROFILE_SESSION_STARTS_PER_MINUTE / 60.0,
                PROFILE_SESSION_STARTS_PER_MINUTE,
                now_ms,
            ),
            refused: 0,
        }
    }

    /// May this envelope be looked at? Takes what it costs up front; a
    /// failure is charged afterwards with [`Budgets::failed`].
    pub fn admit(&mut self, peer: &K, sender: Sender, now_ms: u64) -> bool {
        let ok = self.failures.get(peer, now_ms).has(now_ms)
            && match sender {
                Sender::Settled => true,
                Sender::Stranger => {
                    self.stranger_envelopes.get(peer, now_ms).has(now_ms)
                        && self.profile_envelopes.has(now_ms)
                        && self.profile_failures.has(now_ms)
                        && {
                            self.stranger_envelopes.get(peer, now_ms).take(now_ms);
                            self.profile_envelopes.take(now_ms)
                        }
                }
            };
        if !ok {
            self.refused += 1;
        }
        ok
    }

    /// May this stranger start a session now? Takes a token of its own and
    /// of the profile's.
    pub fn admit_session_start(&mut self, peer: &K, now_ms: u64) -> bool {
        let ok = self.session_starts.get(peer, now_ms).has(now_ms) && self.profile_starts.has(now_ms) && {
            self.session_starts.get(peer, now_ms).take(now_ms);
            self.profile_starts.take(now_ms)
        };
        if !ok {
            self.refused += 1;
        }
        ok
    }

    /// The envelope failed (malformed, undecryptable…).
    pub fn failed(&mut self, peer: &K, sender: Sender, now_ms: u64) {
        self.failures.get(peer, now_ms).charge(now_ms);
        if sender == Sender::Stranger {
            self.profile_failures.charge(now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_with_time_up_to_its_burst() {
        let mut b = Bucket::new(10.0, 5.0, 0);
        assert_eq!((0..10).filter(|_| b.take(0)).count(), 5);
        assert!(!b.take(0));
        assert!(b.take(100), "10/s gives one token per 100 ms");
        assert!(!b.take(100));
        assert_eq!((0..10).filter(|_| b.take(60_000)).count(), 5, "never more than the burst");
    }

    #[test]
    fn a_bucket_map_forgets_the_oldest_beyond_its_cap() {
        let mut m = BucketMap::new(2, 1.0, 1.0);
        assert!(m.get(&1, 0).take(0));
        assert!(m.get(&2, 0).take(0));
        assert!(!m.get(&1, 0).take(0), "the bucket of 1 is remembered");
        assert!(m.get(&3, 0).take(0));
        assert_eq!(m.len(), 2);
        assert!(m.get(&1, 0).take(0), "1 was the oldest: forgotten, back full");
    }

    #[test]
    fn failures_stop_a_peer_before_any_work_and_spare_others() {
        let mut b = Budgets::new(0);
        for _ in 0..FAILURE_BURST as usize {
            assert!(b.admit(&1, Sender::Settled, 0));
            b.failed(&1, Sender::Settled, 0);
        }
        assert!(!b.admit(&1, Sender::Settled, 0), "out of failures");
        assert!(b.admit(&2, Sender::Settled, 0), "another peer has its own budget");
        assert_eq!(b.refused, 1);
        // Debt is repaid with time: 20/s, so 1 s later about 20 tokens.
        assert!(b.admit(&1, Sender::Settled, 1_000));
    }

    #[test]
    fn failing_strangers_share_a_profile_budget_and_contacts_do_not_touch_it() {
        let mut b = Budgets::new(0);
        let burst = PROFILE_STRANGER_FAILURE_BURST as usize;
        let mut admitted = 0;
        for peer in 0..1_000u32 {
            // Each stranger fails a few envelopes, well within its own budget.
            for _ in 0..4 {
                if b.admit(&peer, Sender::Stranger, 0) {
                    admitted += 1;
                    b.failed(&peer, Sender::Stranger, 0);
                }
            }
        }
        assert_eq!(admitted, burst, "all strangers together fail at most the profile's burst");
        assert!(!b.admit(&5_000, Sender::Stranger, 0), "a new stranger waits too");
        assert!(b.admit(&6_000, Sender::Settled, 0), "a contact is not held by strangers' failures");
        assert!(b.admit(&5_000, Sender::Stranger, 1_000), "and it refills (100/s)");
    }

    #[test]
    fn strangers_share_a_profile_budget_and_session_starts_are_scarce() {
        let mut b = Budgets::new(0);
        let per_peer = STRANGER_ENVELOPE_BURST as usize;
        assert_eq!((0..1_000).filter(|_| b.admit(&1, Sender::Stranger, 0)).count(), per_peer);
        assert!(b.admit(&1, Sender::Settled, 0), "the same peer once settled is not counted");
        let many: usize = (2..1_000u32).map(|p| (0..64).filter(|_| b.admit(&p, Sender::Stranger, 0)).count()).sum();
        assert_eq!(many + per_peer, PROFILE_STRANGER_ENVELOPE_BURST as usize, "all strangers share one budget");

        let starts = (0..10).filter(|_| b.admit_session_start(&7, 0)).count();
        assert_eq!(starts, SESSION_START_BURST as usize);
        let from_many = (100..1_000u32).filter(|p| b.admit_session_start(p, 0)).count();
        assert_eq!(starts + from_many, PROFILE_SESSION_STARTS_PER_MINUTE as usize);
        assert!(b.admit_session_start(&8, 1_000), "the profile budget refills (one a second)");
    }
}
