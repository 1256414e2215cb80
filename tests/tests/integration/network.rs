//! Larger networks: a 20-node mesh, and churn (kills and restarts during
//! traffic) with nothing lost and nothing duplicated.

use std::collections::HashMap;

use kabar_crypto::ProfileKind::Personal;
use kabar_tests::*;
use rand::RngExt;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_node_mesh_where_everyone_messages_each_contact() {
    const N: usize = 20;
    let mut nodes = Vec::new();
    for _ in 0..N {
        nodes.push(TestNode::start(&[("personal", Personal)]).await);
    }
    let mut contacts: Vec<Vec<usize>> = vec![Vec::new(); N];
    for i in 0..N {
        for k in 1..=2 {
            let j = (i + k) % N;
            introduce(&nodes[i], "personal", &format!("n{i}"), &nodes[j], "personal", &format!("n{j}")).await;
            contacts[i].push(j);
            contacts[j].push(i);
        }
    }
    let mut sent: Vec<Vec<String>> = vec![Vec::new(); N];
    for i in 0..N {
        for &j in &contacts[i] {
            let r = nodes[i]
                .call("message.send", json!({"to": format!("n{j}"), "text": format!("from n{i} to n{j}")}))
                .await;
            sent[i].push(r["message_id"].as_str().unwrap().to_string());
        }
    }
    for i in 0..N {
        wait_all_delivered(&nodes[i], &sent[i]).await;
    }
    for i in 0..N {
        for &j in &contacts[i] {
            let h: Vec<_> =
                history(&nodes[j], "personal", &format!("n{i}")).await.into_iter().filter(|(d, _)| d == "in").collect();
            assert_eq!(h, [("in".to_string(), format!("from n{i} to n{j}"))]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_kills_and_restarts_during_traffic_lose_and_duplicate_nothing() {
    const N: usize = 4;
    let mut nodes = Vec::new();
    for _ in 0..N {
        nodes.push(TestNode::start(&[("personal", Personal)]).await);
    }
    for i in 0..N {
        for j in i + 1..N {
            introduce(&nodes[i], "personal", &format!("n{i}"), &nodes[j], "personal", &format!("n{j}")).await;
        }
    }
    let mut rng = rand::rng();
    let mut alive = [true; N];
    let mut sent: Vec<Vec<(usize, String, String)>> = vec![Vec::new(); N];
    for round in 0..120 {
        // Now and then a node dies abruptly, or a dead one comes back.
        if round % 10 == 5 {
            let v = rng.random_range(0..N);
            if alive[v] {
                nodes[v].kill().await;
            } else {
                nodes[v].boot_again().await;
            }
            alive[v] = !alive[v];
        }
        let i = rng.random_range(0..N);
        if !alive[i] {
            continue;
        }
        let j = (i + rng.random_range(1..N)) % N;
        let text = format!("churn {round} n{i}→n{j}");
        let r = nodes[i].call("message.send", json!({"to": format!("n{j}"), "text": text})).await;
        sent[i].push((j, r["message_id"].as_str().unwrap().to_string(), text));
    }
    for (v, up) in alive.iter_mut().enumerate() {
        if !*up {
            nodes[v].boot_again().await;
            *up = true;
        }
    }
    for i in 0..N {
        let ids: Vec<String> = sent[i].iter().map(|(_, id, _)| id.clone()).collect();
        wait_all_delivered(&nodes[i], &ids).await;
    }
    for i in 0..N {
        for j in 0..N {
            if i == j {
                continue;
            }
            let mut counts: HashMap<String, usize> = HashMap::new();
            for (_, t) in history(&nodes[j], "personal", &format!("n{i}")).await {
                *counts.entry(t).or_insert(0) += 1;
            }
            for (to, _, text) in sent[i].iter().filter(|(to, _, _)| *to == j) {
                assert_eq!(counts.get(text).copied(), Some(1), "n{i}→n{to}: {text:?} must arrive exactly once");
            }
            assert!(counts.values().all(|&c| c == 1));
        }
    }
}
