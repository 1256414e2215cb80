//! Per-IP token buckets for mailbox requests. Pure: the caller passes `now`.
//! The table is bounded: when full, buckets that have refilled are dropped
//! first (they hold no information), then the least recently used one.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::wire::Op;

/// The kinds of request limited apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// DEPOSIT: 100 a second, bursts of 500.
    Deposit,
    /// FETCH, DELETE, REVOKE, UNREGISTER, STATUS: 100 a second, bursts of
    /// 400 (a profile's fetch round is up to 100 pages, a FETCH and a DELETE
    /// each).
    Owner,
    /// REGISTER: 10 a minute, bursts of 30.
    Register,
}

impl Class {
    /// The class of an op.
    pub fn of(op: Op) -> Class {
        match op {
            Op::Deposit => Class::Deposit,
            Op::Register => Class::Register,
            _ => Class::Owner,
        }
    }

    /// (tokens per second, burst).
    fn rate(self) -> (f64, f64) {
        match self {
            Class::Deposit => (100.0, 500.0),
            Class::Owner => (100.0, 400.0),
            Class::Register => (10.0 / 60.0, 30.0),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Token buckets per (IP, class), at most `max_entries`.
#[derive(Debug)]
pub struct RateLimiter {
    buckets: HashMap<(IpAddr, Class), Bucket>,
    max_entries: usize,
}

impl RateLimiter {
    /// An empty limiter holding at most `max_entries` buckets.
    pub fn new(max_entries: usize) -> Self {
        RateLimiter { buckets: HashMap::new(), max_entries: max_entries.max(1) }
    }

    /// Takes a token for a request of `class` from `ip`; false if none is left.
    pub fn allow(&mut self, ip: IpAddr, class: Class, now: Instant) -> bool {
        let (rate, burst) = class.rate();
        if !self.buckets.contains_key(&(ip, class)) && self.buckets.len() >= self.max_entries {
            self.evict(now);
        }
        let bucket = self.buckets.entry((ip, class)).or_insert(Bucket { tokens: burst, last: now });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn evict(&mut self, now: Instant) {
        self.buckets.retain(|(_, class), b| {
            let (rate, burst) = class.rate();
            let refill = Duration::from_secs_f64((burst - b.tokens).max(0.0) / rate);
            now.saturating_duration_since(b.last) < refill
        });
        if self.buckets.len() >= self.max_entries
            && let Some(oldest) = self.buckets.iter().min_by_key(|(_, b)| b.last).map(|(k, _)| *k)
        {
            self.buckets.remove(&oldest);
        }
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// True if it holds no bucket.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_refills() {
        let mut r = RateLimiter::new(10);
        let ip: IpAddr = [198, 18, 0, 1].into();
        let t0 = Instant::now();
        for _ in 0..30 {
            assert!(r.allow(ip, Class::Register, t0));
        }
        assert!(!r.allow(ip, Class::Register, t0));
        // Other classes and IPs are apart.
        assert!(r.allow(ip, Class::Owner, t0));
        assert!(r.allow([198, 18, 0, 2].into(), Class::Register, t0));
        assert!(r.allow(ip, Class::Register, t0 + Duration::from_secs(6)));
        assert!(!r.allow(ip, Class::Register, t0 + Duration::from_secs(6)));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut r = RateLimiter::new(4);
        let t0 = Instant::now();
        for i in 0..100u8 {
            let ip: IpAddr = [198, 18, 1, i].into();
            for _ in 0..200 {
                r.allow(ip, Class::Deposit, t0 + Duration::from_millis(u64::from(i)));
            }
            assert!(r.len() <= 4);
        }
    }
}
