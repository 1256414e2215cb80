//! A small run of `kabar testnet` in the suite, so the command cannot rot:
//! 3 real node processes, a few messages each, and with kills and restarts;
//! 4 nodes of which half are offline at any time, with mailboxes;
//! and 4 nodes behind NATs in the network lab (kabar-lab), which needs root
//! and nftables: without them that test says why and passes, unless
//! KABAR_LAB_REQUIRED is set, where it fails (as in tests/nat.rs).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr, missing_docs)]

use std::process::Command;

use serde_json::Value;

fn testnet(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_kabar")).args(["--json", "testnet", "run"]).args(args).output().unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|_| panic!("no JSON report; stderr: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(out.status.success(), "testnet failed: {report}\n{}", String::from_utf8_lossy(&out.stderr));
    report
}

#[test]
fn a_three_node_network_delivers_everything() {
    let r = testnet(&["--nodes", "3", "--messages", "5", "--timeout", "60"]);
    assert_eq!(r["nodes"], 3);
    assert_eq!(r["messages_sent"], 15);
    assert_eq!(r["messages_delivered"], 15);
    assert_eq!(r["delivery_ratio"], 1.0);
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64()), (Some(0), Some(0)));
    assert!(r["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    assert!(r["peak_rss_kib"]["max"].as_u64().unwrap() > 0);
    assert!(r["died"].as_array().unwrap().is_empty());
    assert_eq!(r["dht_servers"], "service", "the profiles are Kademlia clients of a service node");
}

#[test]
fn kills_and_restarts_lose_and_duplicate_nothing() {
    // The seed fixes which sends are preceded by a kill: this run kills.
    // Every profile a Kademlia server here (the other tests run the
    // default, a service node): both ways of running stay tested.
    let r = testnet(&[
        "--nodes",
        "3",
        "--messages",
        "10",
        "--kill-rate",
        "0.1",
        "--seed",
        "3",
        "--timeout",
        "90",
        "--dht",
        "profiles",
    ]);
    assert_eq!(r["dht_servers"], "profiles");
    let kills = r["kills"].as_u64().unwrap();
    assert!(kills >= 1, "the run really killed a node: {r}");
    let restarts: u64 = r["restarts_per_node"].as_array().unwrap().iter().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(restarts, kills, "every killed node was started again: {r}");
    assert_eq!(r["restarts_per_node"][0], 0, "the bootstrap node is never the victim");
    assert_eq!(r["messages_delivered"], r["messages_sent"]);
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64()), (Some(0), Some(0)));
}

#[test]
fn under_hostile_peers_every_message_arrives_and_the_report_compares_the_halves() {
    let r = testnet(&[
        "--nodes",
        "3",
        "--messages",
        "10",
        "--hostile",
        "2",
        "--hostile-for",
        "4",
        "--seed",
        "5",
        "--timeout",
        "120",
    ]);
    assert_eq!(r["messages_delivered"], r["messages_sent"], "{r}");
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64()), (Some(0), Some(0)));
    assert!(r["died"].as_array().unwrap().is_empty(), "no node died under attack: {r}");
    let h = &r["hostile"];
    assert_eq!(h["actors"], 2);
    assert_eq!(h["calm"]["sent"], 15);
    assert_eq!(h["hostile"]["sent"], 15);
    assert_eq!(h["hostile"]["delivered"], 15, "{h}");
    assert_eq!(h["targets"]["delivery_100_percent"], true);
    // The attacks happened and the nodes' bounds answered them.
    let refused: u64 =
        h["refused"].as_array().unwrap().iter().map(|p| p["guard"]["refused_envelopes"].as_u64().unwrap()).sum();
    assert!(refused > 0, "some envelopes were refused busy: {h}");
    assert!(!h["attack_lines"].as_array().unwrap().is_empty(), "{h}");
    // The CPU was watched after the flood, one window a second.
    let windows = h["cpu_after_flood"]["per_node_windows"].as_array().unwrap();
    assert_eq!(windows.len(), 3);
    assert!(windows.iter().all(|w| w.as_array().unwrap().len() == 15), "{h}");
}

#[test]
fn with_half_the_nodes_offline_mailboxes_deliver_everything() {
    let r = testnet(&["--nodes", "4", "--offline-rate", "0.5", "--seed", "7", "--timeout", "45"]);
    assert_eq!(r["seed"], 7);
    assert_eq!(r["messages_sent"], 80);
    assert_eq!(r["messages_delivered"], 80, "{r}");
    assert_eq!(r["delivery_ratio"], 1.0);
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64()), (Some(0), Some(0)));
    assert!(r["history_errors"].as_array().unwrap().is_empty(), "{r}");

    let off = &r["offline"];
    assert_eq!(off["down_at_once"], 2);
    assert_eq!(off["mailbox_hosts"].as_array().unwrap().len(), 1);
    assert!(off["stretches"].as_u64().unwrap() >= 4, "{off}");
    assert!(off["nodes_down"].as_u64().unwrap() >= 2, "{off}");
    assert!(off["seconds_down"].as_f64().unwrap() > 0.0, "{off}");
    assert!(off["through_mailbox"].as_u64().unwrap() >= 1, "some messages went through a mailbox: {off}");
    let last = &off["sent_before_going_offline"];
    assert!(last["sent"].as_u64().unwrap() >= 1, "{off}");
    assert_eq!(last["delivered"], last["sent"], "messages sent right before going offline arrive: {off}");
    let via = &off["latency_ms"]["mailbox"];
    assert!(via["count"].as_u64().unwrap() >= 1 && via["max"].as_f64().unwrap() >= via["p50"].as_f64().unwrap());
    assert!(r["died"].as_array().unwrap().is_empty());
}

#[test]
fn behind_nats_every_message_arrives_once_and_the_report_counts_reachability() {
    if let Err(e) = kabar_lab::Lab::available() {
        if std::env::var_os("KABAR_LAB_REQUIRED").is_some() {
            panic!("the network lab is required here (KABAR_LAB_REQUIRED) but cannot run: {e}");
        }
        eprintln!("skipping network lab test: {e}");
        return;
    }
    let r =
        testnet(&["--nat", "--nodes", "4", "--messages", "5", "--symmetric", "0.5", "--seed", "7", "--timeout", "120"]);
    assert_eq!(r["messages_sent"], 20);
    assert_eq!(r["messages_delivered"], 20);
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64()), (Some(0), Some(0)));

    let nat = &r["nat"];
    assert_eq!(nat["seed"], 7);
    assert_eq!(nat["relays"], 1);
    let (sym, ei) = (nat["symmetric_nodes"].as_u64().unwrap(), nat["endpoint_independent_nodes"].as_u64().unwrap());
    assert_eq!(sym + ei, 4);
    let per_node = nat["per_node"].as_array().unwrap();
    assert_eq!(per_node.len(), 4);
    let per_node_sym = per_node.iter().filter(|n| n["nat"] == "symmetric").count() as u64;
    assert_eq!(per_node_sym, sym, "per-node NAT types agree with the counts");

    let c = &r["connections"];
    let (direct, relayed) = (c["direct"].as_u64().unwrap(), c["relayed"].as_u64().unwrap());
    assert!(direct + relayed >= 1, "some profiles are connected: {c}");
    let by_nat: u64 = c["by_nat"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v["direct"].as_u64().unwrap() + v["relayed"].as_u64().unwrap())
        .sum();
    assert_eq!(by_nat, direct + relayed, "every pair has one NAT class");
    let sym_pairs = &c["by_nat"]["sym-sym"];
    assert_eq!(sym_pairs["direct"], 0, "no hole punching between two symmetric NATs: {c}");

    let hp = &r["hole_punch"];
    let (attempts, succeeded) = (hp["attempts"].as_u64().unwrap(), hp["succeeded"].as_u64().unwrap());
    assert!(attempts >= succeeded, "{hp}");
    match hp["success_rate"].as_f64() {
        Some(rate) => assert!((0.0..=1.0).contains(&rate), "{hp}"),
        None => assert_eq!(attempts, 0),
    }
    assert!(hp.get("direct_after_ms").is_some_and(|d| d.get("p50").is_some() && d.get("p95").is_some()), "{hp}");

    let first = &r["time_to_first_delivered_ms"];
    assert!(first["pairs"].as_u64().unwrap() >= 1);
    assert!(first["p50"].as_f64().unwrap() > 0.0 && first["max"].as_f64().unwrap() >= first["p50"].as_f64().unwrap());
}
