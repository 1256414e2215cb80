//! The traffic plan of `--offline-rate` (pure): which node sends when, and
//! which nodes are offline in each round; and the tallies of what the offline
//! stretches did (time down, messages through a mailbox, latency direct and
//! via a mailbox).
//!
//! The plan is a list of [`Step`]s the run executes in order. The traffic is
//! split into rounds; in each round a fixed number of nodes
//! ([`down_at_once`]) is offline, chosen so the stretches rotate over the
//! nodes (those down the round before and those down most often come last).
//! Node 0, everyone's bootstrap peer, stays up. A node going down first
//! sends one of its messages and stops right after (its message must still
//! arrive); messages a node would send while it is down wait until it is
//! back. After the last round every node is back, so each sends exactly its
//! share and none is down at the final count.

use std::collections::BTreeSet;

use rand::RngExt;
use rand::rngs::StdRng;
use serde_json::{Value, json};

use super::tally::percentile;

/// One step of the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Step {
    /// Node (position) sends one message to a contact.
    Send(usize),
    /// Node goes offline (stops).
    Down(usize),
    /// Node comes back (starts again).
    Up(usize),
    /// The end of a round's sends: wait until the round has lasted its stretch.
    Pace,
}

/// How many of `n` nodes are offline at once at `rate`: about `rate × n`,
/// at least one when `rate > 0`, and never node 0.
pub(super) fn down_at_once(n: usize, rate: f64) -> usize {
    if rate <= 0.0 || n < 2 {
        return 0;
    }
    ((rate * n as f64).round() as usize).clamp(1, n - 1)
}

/// The steps of a run: `order` lists the sender of each message in sending
/// order; with `down == 0` it is sent as is. Otherwise it is split into
/// `rounds` rounds with `down` nodes offline in each.
pub(super) fn plan(n: usize, order: &[usize], down: usize, rounds: usize, rng: &mut StdRng) -> Vec<Step> {
    if down == 0 || rounds == 0 || n < 2 {
        return order.iter().map(|&i| Step::Send(i)).collect();
    }
    let down = down.min(n - 1);
    let mut steps = Vec::with_capacity(order.len() + 4 * rounds * down);
    let mut stretches = vec![0usize; n];
    let mut deferred = vec![0usize; n];
    let mut current: BTreeSet<usize> = BTreeSet::new();
    let chunk = order.len().div_ceil(rounds).max(1);
    let mut chunks: Vec<Vec<usize>> = order.chunks(chunk).map(<[usize]>::to_vec).collect();
    chunks.resize(rounds, Vec::new());
    for r in 0..rounds {
        // Who is down this round: not down last round first, then the
        // least often down, ties broken by the seed.
        let mut candidates: Vec<(bool, usize, u64, usize)> =
            (1..n).map(|v| (current.contains(&v), stretches[v], rng.random::<u64>(), v)).collect();
        candidates.sort_unstable();
        let next: BTreeSet<usize> = candidates.iter().take(down).map(|c| c.3).collect();
        for &v in current.difference(&next) {
            steps.push(Step::Up(v));
            steps.extend(std::iter::repeat_n(Step::Send(v), std::mem::take(&mut deferred[v])));
        }
        let (head, tail) = chunks.split_at_mut(r + 1);
        let this = &mut head[r];
        for &v in next.difference(&current) {
            // Last words: one of v's messages (from this round, else a later
            // one), then down at once.
            let from_this = this.iter().position(|&s| s == v).map(|k| this.remove(k));
            let last_words =
                from_this.or_else(|| tail.iter_mut().find_map(|c| c.iter().position(|&s| s == v).map(|k| c.remove(k))));
            if last_words.is_some() {
                steps.push(Step::Send(v));
            }
            steps.push(Step::Down(v));
            stretches[v] += 1;
        }
        current = next;
        for &s in this.iter() {
            if current.contains(&s) { deferred[s] += 1 } else { steps.push(Step::Send(s)) }
        }
        steps.push(Step::Pace);
    }
    for &v in &current {
        steps.push(Step::Up(v));
        steps.extend(std::iter::repeat_n(Step::Send(v), deferred[v]));
    }
    steps
}

/// What the run measured about one message (times in ms since it was sent).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct MessageTimes {
    /// The sender saw `stored` (a mailbox took it).
    pub(super) stored: bool,
    /// The sender saw `delivered` (or `read`) this long after sending.
    pub(super) delivered_ms: Option<f64>,
    /// The sender's history says delivered (or read) at the end.
    pub(super) confirmed: bool,
    /// The sender went offline right after sending it.
    pub(super) last_words: bool,
}

/// One node's offline stretch, in seconds since the traffic started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Stretch {
    pub(super) node: usize,
    pub(super) from_s: f64,
    pub(super) to_s: f64,
}

/// `{count, p50, p95, max}` of latencies in ms.
pub(super) fn latency_summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(|a, b| a.total_cmp(b));
    json!({"count": ms.len(), "p50": percentile(&ms, 50.0), "p95": percentile(&ms, 95.0), "max": ms.last()})
}

/// The `offline` part of the report: the schedule and what went through a
/// mailbox. A message went through a mailbox when its sender saw `stored`;
/// latencies are split into direct, through a mailbox, and (neither) sent
/// right before the sender went offline, which arrive once it is back.
pub(super) fn offline_report(times: &[MessageTimes], stretches: &[Stretch]) -> Value {
    let through = times.iter().filter(|t| t.stored && t.confirmed).count();
    let latencies = |class: &dyn Fn(&MessageTimes) -> bool| -> Vec<f64> {
        times.iter().filter(|t| class(t)).filter_map(|t| t.delivered_ms).collect()
    };
    let direct = latencies(&|t| !t.stored && !t.last_words);
    let via = latencies(&|t| t.stored);
    let last_words = latencies(&|t| !t.stored && t.last_words);
    let nodes: BTreeSet<usize> = stretches.iter().map(|s| s.node).collect();
    let seconds: f64 = stretches.iter().map(|s| s.to_s - s.from_s).sum();
    json!({
        "stretches": stretches.len(),
        "nodes_down": nodes.len(),
        "seconds_down": seconds,
        "through_mailbox": through,
        "confirmed_without_event": times.iter().filter(|t| t.confirmed && t.delivered_ms.is_none()).count(),
        "sent_before_going_offline": {
            "sent": times.iter().filter(|t| t.last_words).count(),
            "delivered": times.iter().filter(|t| t.last_words && t.confirmed).count(),
        },
        "latency_ms": {
            "direct": latency_summary(direct),
            "mailbox": latency_summary(via),
            "sender_went_offline": latency_summary(last_words),
        },
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use rand::SeedableRng;

    use super::*;

    fn order(n: usize, m: usize) -> Vec<usize> {
        (0..n * m).map(|k| k % n).collect()
    }

    /// Replays `steps`: every send comes from a node that is up, every node
    /// sends `m`, at most `down` are down at once, all are up at the end.
    fn check(steps: &[Step], n: usize, m: usize, down: usize) -> usize {
        let mut up = vec![true; n];
        let mut sent = vec![0; n];
        let mut stretches = 0;
        for s in steps {
            match *s {
                Step::Send(i) => {
                    assert!(up[i], "node {i} sends while down");
                    sent[i] += 1;
                }
                Step::Down(i) => {
                    assert!(up[i] && i != 0);
                    up[i] = false;
                    stretches += 1;
                    assert!(up.iter().filter(|u| !**u).count() <= down);
                }
                Step::Up(i) => {
                    assert!(!up[i]);
                    up[i] = true;
                }
                Step::Pace => {}
            }
        }
        assert!(up.iter().all(|u| *u), "every node is back at the end");
        assert_eq!(sent, vec![m; n]);
        stretches
    }

    #[test]
    fn about_rate_times_n_down_never_node_0() {
        assert_eq!(down_at_once(10, 0.0), 0);
        assert_eq!(down_at_once(10, 0.3), 3);
        assert_eq!(down_at_once(4, 0.5), 2);
        assert_eq!(down_at_once(10, 0.01), 1);
        assert_eq!(down_at_once(4, 1.0), 3);
    }

    #[test]
    fn plans_keep_every_message_and_bring_everyone_back() {
        for (n, m, rate, rounds) in [(4, 5, 0.5, 4), (10, 20, 0.3, 4), (3, 1, 1.0, 6), (2, 3, 0.5, 2), (5, 0, 0.4, 3)] {
            let down = down_at_once(n, rate);
            let steps = plan(n, &order(n, m), down, rounds, &mut StdRng::seed_from_u64(7));
            let stretches = check(&steps, n, m, down);
            assert!(stretches >= down, "n={n}");
            assert_eq!(steps.iter().filter(|s| **s == Step::Pace).count(), rounds);
        }
    }

    #[test]
    fn stretches_rotate_and_a_node_goes_down_right_after_sending() {
        let steps = plan(10, &order(10, 20), 3, 4, &mut StdRng::seed_from_u64(42));
        let downs: BTreeSet<usize> =
            steps.iter().filter_map(|s| if let Step::Down(v) = s { Some(*v) } else { None }).collect();
        assert_eq!(downs.len(), 9, "12 stretches over the 9 nodes that may go down: {steps:?}");
        let last_words = steps.windows(2).filter(|w| matches!(w, [Step::Send(a), Step::Down(b)] if a == b)).count();
        assert_eq!(last_words, 12);
    }

    #[test]
    fn a_seed_repeats_the_plan_and_rate_0_sends_in_order() {
        let o = order(6, 4);
        let a = plan(6, &o, 2, 4, &mut StdRng::seed_from_u64(1));
        assert_eq!(a, plan(6, &o, 2, 4, &mut StdRng::seed_from_u64(1)));
        let plain = plan(6, &o, 0, 4, &mut StdRng::seed_from_u64(1));
        assert_eq!(plain, o.iter().map(|&i| Step::Send(i)).collect::<Vec<_>>());
    }

    #[test]
    fn the_report_splits_direct_and_mailbox() {
        let t = |stored, ms: Option<f64>, confirmed| MessageTimes {
            stored,
            delivered_ms: ms,
            confirmed,
            last_words: false,
        };
        let last = MessageTimes { last_words: true, ..t(false, Some(3000.0), true) };
        let times =
            [t(false, Some(5.0), true), t(true, Some(900.0), true), t(true, None, true), t(false, None, false), last];
        let stretches = [Stretch { node: 1, from_s: 0.0, to_s: 3.0 }, Stretch { node: 2, from_s: 3.0, to_s: 4.5 }];
        let r = offline_report(&times, &stretches);
        assert_eq!(r["stretches"], 2);
        assert_eq!(r["nodes_down"], 2);
        assert_eq!(r["seconds_down"], 4.5);
        assert_eq!(r["through_mailbox"], 2);
        assert_eq!(r["confirmed_without_event"], 1);
        assert_eq!(r["latency_ms"]["direct"]["count"], 1);
        assert_eq!(r["latency_ms"]["mailbox"]["max"], 900.0);
        assert_eq!(r["latency_ms"]["sender_went_offline"]["p50"], 3000.0);
        assert_eq!(r["sent_before_going_offline"], json!({"sent": 1, "delivered": 1}));
    }
}
