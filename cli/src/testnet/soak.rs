//! `--hostile K`: what the driver measures around the hostile actors
//! (`hostile`): the targets, the CPU of every node after the flood, and the
//! part of the report that compares the calm half of the traffic with the
//! hostile half.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::{Value, json};

use super::hostile::Target;
use super::network::NodeProc;
use super::tally::percentile;
use crate::out::outln;

/// CPU share under which a node counts as idle after the flood.
pub(super) const IDLE_CPU: f64 = 0.05;
/// How long after the flood the CPU is watched, in one-second windows.
pub(super) const IDLE_WATCH: Duration = Duration::from_secs(15);

/// Every profile of every node, with its addresses and card.
pub(super) fn targets(nodes: &[NodeProc], cards: &HashMap<(usize, &str), String>) -> Result<Vec<Target>> {
    let mut out = Vec::new();
    for node in nodes {
        let info = node.client()?.call("node.info", json!({}))?;
        for p in info["profiles"].as_array().into_iter().flatten() {
            let profile = p["name"].as_str().unwrap_or_default().to_string();
            let Some(card) = cards.get(&(node.index, profile.as_str())).cloned() else { continue };
            let Ok(peer_id) = p["peer_id"].as_str().unwrap_or_default().parse() else { continue };
            let addrs = p["listen_addrs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|a| a.as_str()?.parse().ok())
                .filter(|a: &libp2p::Multiaddr| a.to_string().starts_with("/ip4/127.0.0.1/tcp/"))
                .collect();
            out.push(Target { node: node.index, profile, peer_id, addrs, card });
        }
    }
    Ok(out)
}

/// The CPU this process (the driver and its hostile actors) uses from now.
pub(super) struct Clock {
    cpu_ns: u64,
    at: Instant,
}

impl Clock {
    pub(super) fn start() -> Clock {
        Clock { cpu_ns: cpu_ns(std::process::id()).unwrap_or(0), at: Instant::now() }
    }

    /// Cores used on average since [`Clock::start`] (1.0: one full core).
    pub(super) fn share(&self) -> f64 {
        let used = cpu_ns(std::process::id()).unwrap_or(0).saturating_sub(self.cpu_ns) as f64;
        used / self.at.elapsed().as_nanos().max(1) as f64
    }
}

/// CPU time of a process so far (all its threads), from
/// `/proc/<pid>/task/*/schedstat` (nanoseconds on the CPU).
fn cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0u64;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let Ok(task) = task else { continue };
        if let Ok(s) = std::fs::read_to_string(task.path().join("schedstat"))
            && let Some(ns) = s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok())
        {
            total += ns;
        }
    }
    Some(total)
}

/// Each node's CPU share in consecutive one-second windows for
/// [`IDLE_WATCH`] from now (the flood just ended).
pub(super) fn watch_cpu(nodes: &[NodeProc]) -> Vec<Vec<f64>> {
    let windows = IDLE_WATCH.as_secs() as usize;
    let mut shares = vec![Vec::with_capacity(windows); nodes.len()];
    let mut last: Vec<Option<u64>> = nodes.iter().map(|n| cpu_ns(n.pid)).collect();
    let mut at = Instant::now();
    for _ in 0..windows {
        std::thread::sleep(Duration::from_secs(1));
        let now = Instant::now();
        let elapsed = now.duration_since(at).as_nanos().max(1) as f64;
        for (i, node) in nodes.iter().enumerate() {
            let cur = cpu_ns(node.pid);
            if let (Some(a), Some(b)) = (last[i], cur) {
                shares[i].push(b.saturating_sub(a) as f64 / elapsed);
            }
            last[i] = cur;
        }
        at = now;
    }
    shares
}

/// Seconds after the flood until a node's CPU stayed under [`IDLE_CPU`]
/// for the rest of the watch (`None`: it never did).
pub(super) fn seconds_to_idle(shares: &[f64]) -> Option<usize> {
    let busy_until = shares.iter().rposition(|s| *s >= IDLE_CPU).map_or(0, |i| i + 1);
    (busy_until < shares.len()).then_some(busy_until)
}

/// One half of the traffic: what was sent and delivered, and the latencies
/// (ms) of the messages sent once their pair was warm (after its first
/// delivery).
pub(super) struct Half {
    pub(super) sent: usize,
    pub(super) delivered: usize,
    pub(super) latencies: Vec<f64>,
}

impl Half {
    fn json(&self) -> Value {
        json!({
            "sent": self.sent,
            "delivered": self.delivered,
            "delivery_ratio": if self.sent == 0 { 1.0 } else { self.delivered as f64 / self.sent as f64 },
            "latency_ms": {"p50": percentile(&self.latencies, 50.0), "p99": percentile(&self.latencies, 99.0), "measured": self.latencies.len()},
        })
    }
}

/// What was measured around the hostile half.
pub(super) struct SoakFigures {
    pub(super) actors: usize,
    pub(super) calm: Half,
    pub(super) hostile: Half,
    /// Peak RSS (KiB) per node at the end of the calm half, and at the end.
    pub(super) rss_calm: Vec<u64>,
    pub(super) rss_end: Vec<u64>,
    /// CPU shares per node after the flood.
    pub(super) cpu_after: Vec<Vec<f64>>,
    /// What each node's profiles refused (`guard` and `frames_refused` of `node.info`).
    pub(super) guards: Vec<Value>,
    pub(super) attacks: Value,
    /// Cores the driver and its actors used while attacking (the nodes
    /// share the machine with them).
    pub(super) attacker_cpu: f64,
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}

impl SoakFigures {
    /// The `hostile` part of the report, with the targets checked.
    pub(super) fn report(&self) -> Value {
        let max = |v: &[u64]| v.iter().copied().max().unwrap_or(0);
        let p99 = |h: &Half| percentile(&h.latencies, 99.0);
        let idle_after_10s: Vec<f64> = self
            .cpu_after
            .iter()
            .map(|w| {
                let tail = w.get(10..).unwrap_or(&[]);
                if tail.is_empty() { 0.0 } else { tail.iter().sum::<f64>() / tail.len() as f64 }
            })
            .collect();
        let to_idle: Vec<Option<usize>> = self.cpu_after.iter().map(|w| seconds_to_idle(w)).collect();
        let worst_idle = idle_after_10s.iter().copied().fold(0.0, f64::max);
        let p99_ratio = ratio(p99(&self.hostile), p99(&self.calm));
        let rss_ratio = ratio(max(&self.rss_end) as f64, max(&self.rss_calm) as f64);
        let all_delivered = self.calm.delivered == self.calm.sent && self.hostile.delivered == self.hostile.sent;
        json!({
            "actors": self.actors,
            "calm": self.calm.json(),
            "hostile": self.hostile.json(),
            "p99_ratio": p99_ratio,
            "peak_rss_kib": {"calm_max": max(&self.rss_calm), "end_max": max(&self.rss_end), "ratio": rss_ratio, "calm_per_node": self.rss_calm, "end_per_node": self.rss_end},
            "cpu_after_flood": {"per_node_windows": self.cpu_after, "mean_from_10s_per_node": idle_after_10s, "max_from_10s": worst_idle, "seconds_to_idle": to_idle},
            "refused": self.guards,
            "attacks": self.attacks,
            "attacker_cores": self.attacker_cpu,
            "targets": {
                "delivery_100_percent": all_delivered,
                "p99_at_most_2x_calm": p99_ratio <= 2.0,
                "rss_at_most_1_5x_calm": rss_ratio <= 1.5,
                "idle_cpu_under_5_percent_within_10s": to_idle.iter().all(|t| t.is_some_and(|s| s <= 10)),
            },
        })
    }
}

/// Prints the `hostile` part of the report for people.
pub(super) fn print_soak(r: &Value) -> Result<()> {
    let f = |v: &Value| v.as_f64().unwrap_or(0.0);
    outln!("  hostile actors        {} (second half of the traffic)", r["actors"])?;
    for half in ["calm", "hostile"] {
        let h = &r[half];
        outln!(
            "  {half:<8} half         {}/{} delivered, p50 {:.2} ms, p99 {:.2} ms",
            h["delivered"],
            h["sent"],
            f(&h["latency_ms"]["p50"]),
            f(&h["latency_ms"]["p99"])
        )?;
    }
    outln!("  p99 hostile / calm    {:.2}x (target ≤ 2)", f(&r["p99_ratio"]))?;
    outln!("  attackers' CPU        {:.2} cores (on the same machine as the nodes)", f(&r["attacker_cores"]))?;
    outln!(
        "  peak RSS              calm {} KiB, end {} KiB: {:.2}x (target ≤ 1.5)",
        r["peak_rss_kib"]["calm_max"],
        r["peak_rss_kib"]["end_max"],
        f(&r["peak_rss_kib"]["ratio"])
    )?;
    outln!(
        "  CPU after the flood   worst node {:.1} % from 10 s on; seconds to idle (< 5 %) per node: {}",
        100.0 * f(&r["cpu_after_flood"]["max_from_10s"]),
        r["cpu_after_flood"]["seconds_to_idle"]
    )?;
    if let Some(lines) = r["attack_lines"].as_array() {
        for l in lines {
            outln!("  attack                {}", l.as_str().unwrap_or_default())?;
        }
    }
    let t = &r["targets"];
    outln!(
        "  targets               delivery 100 %: {}, p99 ≤ 2x: {}, RSS ≤ 1.5x: {}, idle within 10 s: {}",
        t["delivery_100_percent"],
        t["p99_at_most_2x_calm"],
        t["rss_at_most_1_5x_calm"],
        t["idle_cpu_under_5_percent_within_10s"]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_idle_from_the_first_window_after_which_it_stays_under_5_percent() {
        assert_eq!(seconds_to_idle(&[0.9, 0.5, 0.01, 0.02]), Some(2));
        assert_eq!(seconds_to_idle(&[0.01, 0.9, 0.01]), Some(2), "a spike later counts");
        assert_eq!(seconds_to_idle(&[0.01, 0.01]), Some(0));
        assert_eq!(seconds_to_idle(&[0.01, 0.3]), None, "still busy at the end");
    }
}
