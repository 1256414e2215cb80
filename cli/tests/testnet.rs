//! A small run of `kabar testnet` in the suite, so the command cannot rot:
//! 3 real node processes, a few messages each, and with kills and restarts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

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
}

#[test]
fn kills_and_restarts_lose_and_duplicate_nothing() {
    let r = testnet(&["--nodes", "3", "--messages", "10", "--kill-rate", "0.1", "--timeout", "90"]);
    assert_eq!(r["messages_delivered"], r["messages_sent"]);
    assert_eq!((r["lost"].as_u64(), r["duplicated"].as_u64()), (Some(0), Some(0)));
}
