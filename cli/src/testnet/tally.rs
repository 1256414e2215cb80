//! Pure tallies over what a run measured (latencies, connections, hole
//! punching) and the reachability part of the report.

use super::*;

pub(super) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// The first message of each (sender, receiving profile) pair: the two
/// nodes (positions in the node list) and its latency in ms, `None` when it
/// has no delivery time (lost, or confirmed from the store only).
pub(super) fn first_message_latencies(
    sent: &HashMap<String, Sent>,
    delivered: &HashMap<String, Instant>,
) -> Vec<((usize, usize), Option<f64>)> {
    let mut first: HashMap<(usize, usize, &str), (&str, Instant)> = HashMap::new();
    for (id, s) in sent {
        let e = first.entry((s.from, s.to_node, s.to_profile)).or_insert((id, s.at));
        if s.at < e.1 {
            *e = (id, s.at);
        }
    }
    let mut out: Vec<((usize, usize), Option<f64>)> = first
        .into_iter()
        .map(|((from, to, _), (id, at))| {
            ((from, to), delivered.get(id).map(|t| t.duration_since(at).as_secs_f64() * 1000.0))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0).then(a.1.unwrap_or(f64::NAN).total_cmp(&b.1.unwrap_or(f64::NAN))));
    out
}

/// p50 and max of the measured latencies among `first`.
pub(super) fn first_message_summary<'a>(first: impl Iterator<Item = &'a ((usize, usize), Option<f64>)>) -> Value {
    let mut pairs = 0;
    let mut ms: Vec<f64> = Vec::new();
    for (_, latency) in first {
        pairs += 1;
        ms.extend(*latency);
    }
    ms.sort_by(|a, b| a.total_cmp(b));
    json!({"pairs": pairs, "measured": ms.len(), "p50": percentile(&ms, 50.0), "max": ms.last()})
}

/// One profile's reachability, as its node's `node.info` reports it.
#[derive(Debug, Clone, Default)]
pub(super) struct ProfileReach {
    /// Node index.
    pub(super) node: usize,
    pub(super) name: String,
    pub(super) peer_id: String,
    /// AutoNAT's verdict.
    pub(super) autonat: String,
    /// Connected peers other than relays, and whether directly.
    pub(super) peers: Vec<(String, bool)>,
    pub(super) attempts: u64,
    pub(super) succeeded: u64,
    pub(super) direct_after_ms: Vec<u64>,
}

impl ProfileReach {
    pub(super) fn from_info(node: usize, p: &Value) -> ProfileReach {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let hp = &p["hole_punch"];
        ProfileReach {
            node,
            name: s(&p["name"]),
            peer_id: s(&p["peer_id"]),
            autonat: s(&p["nat"]),
            peers: p["peers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|x| (s(&x["peer_id"]), x["connection"] == "direct"))
                .collect(),
            attempts: hp["attempts"].as_u64().unwrap_or(0),
            succeeded: hp["succeeded"].as_u64().unwrap_or(0),
            direct_after_ms: hp["direct_after_ms"].as_array().into_iter().flatten().filter_map(Value::as_u64).collect(),
        }
    }
}

/// Every profile of `nodes`, as `node.info` reports it now.
pub(super) fn reach_snapshot(nodes: &[NodeProc]) -> Result<Vec<ProfileReach>> {
    let mut profiles = Vec::new();
    for node in nodes {
        let info = node.client()?.call("node.info", json!({}))?;
        for p in info["profiles"].as_array().into_iter().flatten() {
            profiles.push(ProfileReach::from_info(node.index, p));
        }
    }
    Ok(profiles)
}

/// Whether every pair of `profiles` still connected through a relay has had
/// its hole-punch outcome. DCUtR reports a failure on one side only (the
/// side reached through the relay, after its last dial), so the pairs are
/// settled once the failures are at least the relayed pairs.
pub(super) fn hole_punching_settled(profiles: &[ProfileReach], nats: &[Nat]) -> bool {
    let failed: u64 = profiles.iter().map(|p| p.attempts.saturating_sub(p.succeeded)).sum();
    let (total, _) = count_connections(profiles, nats);
    failed >= total.relayed as u64
}

/// Connected pairs of profiles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct PairCount {
    pub(super) direct: usize,
    pub(super) relayed: usize,
}

/// The classes of pairs `count_connections` splits by.
pub(super) const PAIR_CLASSES: [&str; 4] = ["ei-ei", "ei-sym", "sym-sym", "same-node"];

/// "ei-ei", "ei-sym" or "sym-sym" by the NATs of two nodes, or "same-node".
pub(super) fn pair_class(a: usize, b: usize, nats: &[Nat]) -> &'static str {
    if a == b {
        return "same-node";
    }
    let sym = |n: usize| nats.get(n) == Some(&Nat::Symmetric);
    match (sym(a), sym(b)) {
        (false, false) => "ei-ei",
        (true, true) => "sym-sym",
        _ => "ei-sym",
    }
}

/// Each unordered pair of `profiles` connected to each other, counted once
/// (direct if either side reports a direct connection): in total, and by
/// the NATs of their nodes (`nats`, by node index). Peers that are not
/// among `profiles` are ignored.
pub(super) fn count_connections(
    profiles: &[ProfileReach],
    nats: &[Nat],
) -> (PairCount, BTreeMap<&'static str, PairCount>) {
    let owner: HashMap<&str, usize> = profiles.iter().enumerate().map(|(k, p)| (p.peer_id.as_str(), k)).collect();
    let mut pairs: BTreeMap<(usize, usize), bool> = BTreeMap::new();
    for (k, p) in profiles.iter().enumerate() {
        for (peer, direct) in &p.peers {
            if let Some(&j) = owner.get(peer.as_str())
                && j != k
            {
                *pairs.entry((k.min(j), k.max(j))).or_insert(false) |= *direct;
            }
        }
    }
    let mut total = PairCount::default();
    let mut by_class: BTreeMap<&'static str, PairCount> =
        PAIR_CLASSES.iter().map(|c| (*c, PairCount::default())).collect();
    for ((a, b), direct) in pairs {
        let class = by_class.entry(pair_class(profiles[a].node, profiles[b].node, nats)).or_default();
        for count in [&mut total, class] {
            if direct {
                count.direct += 1;
            } else {
                count.relayed += 1;
            }
        }
    }
    (total, by_class)
}

/// Hole-punch outcomes summed over `profiles` (per side: both ends of one
/// punch may count it).
pub(super) fn hole_punch_summary(profiles: &[ProfileReach]) -> Value {
    let attempts: u64 = profiles.iter().map(|p| p.attempts).sum();
    let succeeded: u64 = profiles.iter().map(|p| p.succeeded).sum();
    let mut after: Vec<f64> = profiles.iter().flat_map(|p| p.direct_after_ms.iter().map(|&ms| ms as f64)).collect();
    after.sort_by(|a, b| a.total_cmp(b));
    json!({
        "attempts": attempts,
        "succeeded": succeeded,
        "success_rate": (attempts > 0).then(|| succeeded as f64 / attempts as f64),
        "direct_after_ms": {"p50": percentile(&after, 50.0), "p95": percentile(&after, 95.0)},
    })
}

pub(super) fn nat_name(nat: Nat) -> &'static str {
    match nat {
        Nat::EndpointIndependent => "endpoint-independent",
        Nat::Symmetric => "symmetric",
    }
}

/// Whether a profile (from `node.info`) holds a relay reservation and
/// advertises a circuit address.
pub(super) fn holds_reservation(profile: &Value) -> bool {
    let reserved = profile["relays"].as_array().is_some_and(|r| r.iter().any(|r| r["reserved"] == true));
    let circuit = profile["advertised"]
        .as_array()
        .is_some_and(|a| a.iter().any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit"))));
    reserved && circuit
}

/// Waits, at most `timeout`, until every profile of every node holds a relay
/// reservation and advertises a circuit address (so its card carries one).
pub(super) fn wait_reserved(
    nodes: &[NodeProc],
    timeout: Duration,
    interrupt: &Interrupt,
    progress: &ProgressBar,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        interrupt.check()?;
        let mut waiting = Vec::new();
        for node in nodes {
            let info = node.client()?.call("node.info", json!({}))?;
            let profiles = info["profiles"].as_array().map(Vec::as_slice).unwrap_or_default();
            if profiles.is_empty() || !profiles.iter().all(holds_reservation) {
                waiting.push(node.index);
            }
        }
        progress.set_position((nodes.len() - waiting.len()) as u64);
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("within {timeout:?}, nodes {waiting:?} did not all hold a relay reservation with a circuit address");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The report's reachability fields (`nat`, `connections`, `hole_punch`,
/// `time_to_first_delivered_ms`).
pub(super) fn reachability_report(
    lab: &NatLab,
    profiles: &[ProfileReach],
    reserved_after: Duration,
    (settled, settle): (bool, Duration),
    first: &[((usize, usize), Option<f64>)],
) -> Value {
    let symmetric = lab.nats.iter().filter(|n| **n == Nat::Symmetric).count();
    let mut per_node: BTreeMap<usize, Value> = BTreeMap::new();
    for p in profiles {
        let entry = per_node
            .entry(p.node)
            .or_insert_with(|| json!({"node": p.node, "nat": nat_name(lab.nats[p.node]), "autonat": {}}));
        entry["autonat"][&p.name] = json!(p.autonat);
    }
    let (total, by_class) = count_connections(profiles, &lab.nats);
    let counts = |c: PairCount| json!({"direct": c.direct, "relayed": c.relayed});
    let mut first_ms = first_message_summary(first.iter());
    first_ms["by_nat"] = PAIR_CLASSES
        .iter()
        .filter(|c| **c != "same-node")
        .map(|c| {
            let class = first.iter().filter(|((a, b), _)| pair_class(*a, *b, &lab.nats) == *c);
            (c.to_string(), first_message_summary(class))
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    let mut hole_punch = hole_punch_summary(profiles);
    hole_punch["settled"] = json!(settled);
    hole_punch["settle_ms"] = json!(settle.as_millis() as u64);
    json!({
        "nat": {
            "seed": lab.seed,
            "symmetric_nodes": symmetric,
            "endpoint_independent_nodes": lab.nats.len() - symmetric,
            "relays": lab.relays.len(),
            "relay_addresses": lab.relays.iter().map(|r| r.address.as_str()).collect::<Vec<_>>(),
            "time_to_reserve_ms": reserved_after.as_millis() as u64,
            "per_node": per_node.into_values().collect::<Vec<_>>(),
        },
        "connections": {
            "direct": total.direct,
            "relayed": total.relayed,
            "by_nat": by_class.into_iter().map(|(k, c)| (k.to_string(), counts(c))).collect::<serde_json::Map<_, _>>(),
        },
        "hole_punch": hole_punch,
        "time_to_first_delivered_ms": first_ms,
    })
}

/// The text form of [`reachability_report`].
pub(super) fn print_reachability(r: &Value) -> Result<()> {
    let nat = &r["nat"];
    let ms = |v: &Value| v.as_f64().map_or_else(|| "n/a".to_string(), |v| format!("{v:.0} ms"));
    let relays = nat["relays"].as_u64().unwrap_or(0);
    outln!("  reachability")?;
    outln!(
        "    NATs                {} endpoint-independent, {} symmetric (seed {}; {relays} relay{})",
        nat["endpoint_independent_nodes"],
        nat["symmetric_nodes"],
        nat["seed"],
        if relays == 1 { "" } else { "s" }
    )?;
    let per_node: Vec<String> = nat["per_node"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            let kind = if n["nat"] == "symmetric" { "sym" } else { "EI" };
            format!("{:02} {kind}", n["node"].as_u64().unwrap_or(0))
        })
        .collect();
    for (k, chunk) in per_node.chunks(10).enumerate() {
        outln!("    {:<20}{}", if k == 0 { "per node" } else { "" }, chunk.join(", "))?;
    }
    let mut verdicts: BTreeMap<String, usize> = BTreeMap::new();
    for n in nat["per_node"].as_array().into_iter().flatten() {
        for v in n["autonat"].as_object().into_iter().flat_map(|o| o.values()) {
            *verdicts.entry(v.as_str().unwrap_or("?").to_string()).or_default() += 1;
        }
    }
    let verdicts: Vec<String> = verdicts.iter().map(|(v, n)| format!("{n} {v}")).collect();
    outln!("    AutoNAT (profiles)  {}", verdicts.join(", "))?;
    outln!(
        "    relay slots after   {:.2} s (every profile reserved, circuit address advertised)",
        nat["time_to_reserve_ms"].as_f64().unwrap_or(0.0) / 1000.0
    )?;
    let c = &r["connections"];
    let hp = &r["hole_punch"];
    let settle_s = hp["settle_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    outln!("    connected pairs     {} direct, {} relayed (pairs of profiles)", c["direct"], c["relayed"])?;
    if hp["settled"] == true {
        outln!("      counted           once hole punching settled, {settle_s:.1} s after the traffic")?;
    } else {
        outln!(
            "      counted           {settle_s:.1} s after the traffic; hole punching had NOT settled (attempts running)"
        )?;
    }
    let classes: Vec<String> = PAIR_CLASSES
        .iter()
        .filter(|k| **k != "same-node" || c["by_nat"][**k] != json!({"direct": 0, "relayed": 0}))
        .map(|k| format!("{k} {}/{}", c["by_nat"][*k]["direct"], c["by_nat"][*k]["relayed"]))
        .collect();
    outln!("      by NAT pair       {} (direct/relayed)", classes.join(", "))?;
    let rate = hp["success_rate"].as_f64().map_or_else(|| "n/a".to_string(), |r| format!("{:.1} %", 100.0 * r));
    outln!("    hole punching       {} attempts, {} succeeded ({rate})", hp["attempts"], hp["succeeded"])?;
    outln!("      (per-side outcomes summed over profiles: a success may count on both ends, a failure on one)")?;
    outln!(
        "    direct after        p50 {}, p95 {} (relayed connection → direct)",
        ms(&hp["direct_after_ms"]["p50"]),
        ms(&hp["direct_after_ms"]["p95"])
    )?;
    let f = &r["time_to_first_delivered_ms"];
    outln!(
        "    first message       p50 {}, max {} over {} of {} sender → receiver pairs",
        ms(&f["p50"]),
        ms(&f["max"]),
        f["measured"],
        f["pairs"]
    )?;
    outln!("      (send → delivered of each pair's first message: includes connection set-up through the relay)")?;
    let classes: Vec<String> = PAIR_CLASSES
        .iter()
        .filter(|c| f["by_nat"][**c]["measured"].as_u64().unwrap_or(0) > 0)
        .map(|c| format!("{c} {} / {}", ms(&f["by_nat"][*c]["p50"]), ms(&f["by_nat"][*c]["max"])))
        .collect();
    outln!("      by NAT pair       {} (p50 / max)", classes.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(node: usize, id: &str, peers: &[(&str, bool)]) -> ProfileReach {
        ProfileReach {
            node,
            peer_id: id.into(),
            peers: peers.iter().map(|(p, d)| (p.to_string(), *d)).collect(),
            ..ProfileReach::default()
        }
    }

    #[test]
    fn a_pair_counts_once_and_is_direct_if_either_side_says_so() {
        let nats = [Nat::EndpointIndependent, Nat::EndpointIndependent, Nat::Symmetric];
        let profiles = [
            profile(0, "a", &[("b", false), ("c", false), ("relay", false)]),
            profile(1, "b", &[("a", true)]),
            profile(2, "c", &[("a", false)]),
            profile(2, "c-shop", &[("c", true)]),
        ];
        let (total, by) = count_connections(&profiles, &nats);
        assert_eq!(total, PairCount { direct: 2, relayed: 1 });
        assert_eq!(by["ei-ei"], PairCount { direct: 1, relayed: 0 });
        assert_eq!(by["ei-sym"], PairCount { direct: 0, relayed: 1 });
        assert_eq!(by["same-node"], PairCount { direct: 1, relayed: 0 });
        assert_eq!(by["sym-sym"], PairCount::default());
    }

    #[test]
    fn hole_punching_settles_once_each_relayed_pair_has_failed() {
        let nats = [Nat::Symmetric, Nat::Symmetric];
        let mut a = profile(0, "a", &[("b", false)]);
        let b = profile(1, "b", &[("a", false)]);
        assert!(!hole_punching_settled(&[a.clone(), b.clone()], &nats));
        a.attempts = 1;
        assert!(hole_punching_settled(&[a, b], &nats));
    }

    #[test]
    fn only_the_first_message_of_a_pair_counts() {
        let t0 = Instant::now();
        let sent_at = |from, to_node, ms| Sent {
            from,
            to_node,
            to_profile: "personal",
            to_name: String::new(),
            tag: String::new(),
            at: t0 + Duration::from_millis(ms),
            hostile: false,
        };
        let sent: HashMap<String, Sent> = [
            ("m1".to_string(), sent_at(0, 1, 0)),
            ("m2".to_string(), sent_at(0, 1, 10)),
            ("m3".to_string(), sent_at(1, 0, 5)),
        ]
        .into_iter()
        .collect();
        let delivered: HashMap<String, Instant> =
            [("m1".to_string(), t0 + Duration::from_millis(500)), ("m2".to_string(), t0 + Duration::from_millis(20))]
                .into_iter()
                .collect();
        // m3 (the first of 1 → 0) has no delivery time.
        let first = first_message_latencies(&sent, &delivered);
        assert_eq!(first, vec![((0, 1), Some(500.0)), ((1, 0), None)]);
        let summary = first_message_summary(first.iter());
        assert_eq!((summary["pairs"].as_u64(), summary["measured"].as_u64()), (Some(2), Some(1)));
        assert_eq!((summary["p50"].as_f64(), summary["max"].as_f64()), (Some(500.0), Some(500.0)));
    }

    #[test]
    fn hole_punch_outcomes_sum_over_profiles() {
        let mut a = profile(0, "a", &[]);
        (a.attempts, a.succeeded, a.direct_after_ms) = (3, 2, vec![100, 300]);
        let mut b = profile(1, "b", &[]);
        (b.attempts, b.succeeded, b.direct_after_ms) = (1, 1, vec![200]);
        let s = hole_punch_summary(&[a, b]);
        assert_eq!((s["attempts"].as_u64(), s["succeeded"].as_u64()), (Some(4), Some(3)));
        assert_eq!(s["success_rate"], 0.75);
        assert_eq!(s["direct_after_ms"]["p50"], 200.0);
        assert!(hole_punch_summary(&[]).get("success_rate").is_some_and(Value::is_null));
    }
}
