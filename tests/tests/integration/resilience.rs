//! Offline recipients, restarts and crashes: nothing lost, nothing duplicated.

use std::collections::HashMap;

use kabar_crypto::ProfileKind::Personal;
use kabar_tests::*;
use serde_json::json;

/// Every text exactly once: a map text → count.
fn counts(h: &[(String, String)]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (_, t) in h {
        *m.entry(t.clone()).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_recipient_gets_everything_when_it_comes_back() {
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let mut bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    bob.stop().await;

    let mut events = alice.subscribe().await;
    let mut ids = Vec::new();
    for i in 0..20 {
        let r = alice.call("message.send", json!({"to": "Bob", "text": format!("while you were away {i}")})).await;
        ids.push(r["message_id"].as_str().unwrap().to_string());
    }
    // Bob comes back (on the port he had); he greets his contacts, Alice flushes.
    bob.restart().await;
    for id in &ids {
        events.wait_status(id, "delivered").await;
    }
    let got = history(&bob, "personal", "Alice").await;
    assert_eq!(got.len(), 20);
    let texts: Vec<&str> = got.iter().map(|(_, t)| t.as_str()).collect();
    let expected: Vec<String> = (0..20).map(|i| format!("while you were away {i}")).collect();
    assert_eq!(texts, expected.iter().map(String::as_str).collect::<Vec<_>>(), "in the sender's order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_mid_conversation_loses_and_duplicates_nothing() {
    let mut alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let mut bob_events = bob.subscribe().await;
    for i in 0..10 {
        alice.call("message.send", json!({"to": "Bob", "text": format!("a{i}")})).await;
    }
    alice.restart().await;
    for i in 10..20 {
        alice.call("message.send", json!({"to": "Bob", "text": format!("a{i}")})).await;
    }
    bob_events.wait_received("personal", 20).await;
    let mut alice_events = alice.subscribe().await;
    for i in 0..5 {
        bob.call("message.send", json!({"to": "Alice", "text": format!("b{i}")})).await;
    }
    alice_events.wait_received("personal", 5).await;
    let got = counts(&history(&bob, "personal", "Alice").await);
    assert_eq!(got.len(), 25);
    assert!(got.values().all(|&n| n == 1), "{got:?}");
    assert!(alice.call("message.history", json!({"with": "Bob"})).await["messages"].as_array().unwrap().len() == 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_killed_during_a_1000_message_stream_gets_each_exactly_once() {
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let mut bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let mut bob_events = bob.subscribe().await;
    let mut alice_events = alice.subscribe().await;
    let mut last = String::new();
    for i in 0..1000 {
        let r = alice.call("message.send", json!({"to": "Bob", "text": format!("stream {i}")})).await;
        last = r["message_id"].as_str().unwrap().to_string();
        if i == 300 {
            // Wait until Bob is receiving, then kill him mid-stream.
            bob_events.wait_received("personal", 1).await;
            bob.kill().await;
        }
        if i == 600 {
            bob.boot_again().await;
        }
    }
    let _ = last;
    // Wait until the outbox drains: re-check after every event (a "lagged"
    // notice counts too, since 1,000 messages make more events than a
    // subscription buffers).
    loop {
        let h = alice.call("message.history", json!({"with": "Bob", "limit": 1000})).await;
        let pending = h["messages"].as_array().unwrap().iter().filter(|m| m["status"] != "delivered").count();
        if pending == 0 {
            break;
        }
        alice_events.wait_for("more deliveries", |_| true).await;
    }
    let got = counts(&history(&bob, "personal", "Alice").await);
    assert_eq!(got.len(), 1000);
    assert!(got.values().all(|&n| n == 1), "duplicates: {:?}", got.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>());
}

/// A data directory whose profile list is empty is refused at start with a
/// message that says what to do, and leaves no control socket behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_without_profiles_does_not_start() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    drop(kabar_storage::DataDir::create(&data_dir, b"pw", kabar_storage::KdfParams::TESTNET).unwrap());
    let config = kabar_node::NodeConfig {
        data_dir: data_dir.clone(),
        passphrase: b"pw".to_vec(),
        network: kabar_node::network::NetworkConfig::default(),
        engine: kabar_node::engine::EngineConfig::default(),
    };
    match kabar_node::Node::start(config).await {
        Err(e @ kabar_node::NodeError::NoProfiles(_)) => assert!(e.to_string().contains("kabar profile create"), "{e}"),
        Err(other) => panic!("expected NoProfiles, got {other}"),
        Ok(_) => panic!("a data dir without profiles started"),
    }
    let leftovers: Vec<_> =
        std::fs::read_dir(&data_dir).unwrap().filter_map(Result::ok).map(|e| e.file_name()).collect();
    assert!(!leftovers.iter().any(|n| n.to_string_lossy().ends_with(".sock")), "{leftovers:?}");
}

/// A node stopped and a new one started on the same data directory at once,
/// 100 times: the stopping node never removes the control socket the new
/// one bound (it used to, in about one restart in six).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn back_to_back_restarts_never_remove_the_new_nodes_socket() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let mut dir = kabar_storage::DataDir::create(&data_dir, b"pw", kabar_storage::KdfParams::TESTNET).unwrap();
    dir.create_profile("personal", Personal, 1_700_000_000, &mut rand::rng()).unwrap();
    drop(dir);
    let config = || kabar_node::NodeConfig {
        data_dir: data_dir.clone(),
        passphrase: b"pw".to_vec(),
        network: kabar_node::network::NetworkConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: Vec::new(),
            mdns: false,
            kad_server: false,
            relays: Vec::new(),
        },
        engine: kabar_node::engine::EngineConfig::default(),
    };
    let mut node = kabar_node::Node::start(config()).await.unwrap();
    let socket = node.socket().to_path_buf();
    for round in 0..100 {
        let stopping = tokio::spawn(node.shutdown());
        // Start again at once; until the old node has let go of the
        // profile's database a start fails (and cleans up after itself).
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        node = loop {
            match kabar_node::Node::start(config()).await {
                Ok(n) => break n,
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "round {round}: no restart: {e}");
                    tokio::task::yield_now().await;
                }
            }
        };
        stopping.await.unwrap();
        assert!(
            tokio::net::UnixStream::connect(&socket).await.is_ok(),
            "round {round}: the new node's control socket is gone"
        );
    }
    node.shutdown().await;
    assert!(!socket.exists(), "the last node removes its own socket");
}

/// One JSON-RPC call on its own connection to `socket`; `None` if the node
/// is gone (the connection fails or closes before the answer) or refuses.
async fn call_at(socket: &std::path::Path, method: &str, params: serde_json::Value) -> Option<serde_json::Value> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
    let stream = tokio::net::UnixStream::connect(socket).await.ok()?;
    let (read, mut write) = stream.into_split();
    let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    write.write_all(format!("{request}\n").as_bytes()).await.ok()?;
    let mut line = String::new();
    let mut read = tokio::io::BufReader::new(read);
    tokio::time::timeout(std::time::Duration::from_secs(30), read.read_line(&mut line)).await.ok()?.ok()?;
    let reply: serde_json::Value = serde_json::from_str(&line).ok()?;
    reply.get("result").cloned()
}

/// `clients` clients of `from`'s control socket, each sending `per_client`
/// texts `<tag><client>-<i>` to `to` one `message.send` at a time (so the
/// node has several sends in flight, staged and committed together) until
/// the node is gone. Returns the texts whose call was answered, with ids.
fn senders(
    from: &TestNode,
    to: &'static str,
    tag: &'static str,
    clients: usize,
    per_client: usize,
) -> Vec<tokio::task::JoinHandle<Vec<(String, String)>>> {
    (0..clients)
        .map(|c| {
            let socket = from.socket();
            tokio::spawn(async move {
                let mut answered = Vec::new();
                for i in 0..per_client {
                    let text = format!("{tag}{c}-{i}");
                    match call_at(&socket, "message.send", json!({"to": to, "text": text})).await {
                        Some(r) => answered.push((text, r["message_id"].as_str().unwrap().to_string())),
                        None => break,
                    }
                }
                answered
            })
        })
        .collect()
}

/// Alice is killed (tasks aborted, as in a crash) while 8 clients send to
/// Bob through her control socket and Bob's 4 clients send to her: every
/// send she answered reaches Bob exactly once after she is back, and
/// nothing reaches him twice; the same for Bob's sends to her. Concurrent
/// `message.send` calls are staged and committed together
/// (`Engine::stage_sends`), so this crashes that path mid-traffic; a
/// ratchet key used twice would show as a message refused or duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_senders_on_a_profile_killed_mid_traffic_lose_and_duplicate_nothing() {
    let mut alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    let mut bob_events = bob.subscribe().await;
    let from_alice = senders(&alice, "Bob", "a", 8, 40);
    let from_bob = senders(&bob, "Alice", "b", 4, 40);
    bob_events.wait_received("personal", 40).await;
    alice.kill().await;
    let mut alice_answered = Vec::new();
    for task in from_alice {
        alice_answered.extend(task.await.unwrap());
    }
    alice.boot_again().await;
    let mut bob_answered = Vec::new();
    for task in from_bob {
        bob_answered.extend(task.await.unwrap());
    }
    assert!(alice_answered.len() >= 40, "only {} sends answered before the kill", alice_answered.len());
    for (sender, answered, receiver, from) in
        [(&alice, &alice_answered, &bob, "Alice"), (&bob, &bob_answered, &alice, "Bob")]
    {
        let ids: Vec<String> = answered.iter().map(|(_, id)| id.clone()).collect();
        wait_all_delivered(sender, &ids).await;
        let got = counts(&history(receiver, "personal", from).await);
        for (text, _) in answered {
            assert_eq!(got.get(text), Some(&1), "{from}: {text:?} answered, so delivered exactly once");
        }
        assert!(
            got.values().all(|&n| n == 1),
            "{from}: duplicates {:?}",
            got.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
        );
    }
    // No message had to be encrypted again: no ratchet key was used twice
    // (the recipient decrypts only the first use and reports the key gone).
    for (node, name) in [(&alice, "Alice"), (&bob, "Bob")] {
        let guard = node.profile_info("personal").await["guard"].clone();
        assert_eq!(guard["resent_messages"], 0, "{name} encrypted messages again: {guard}");
    }
}
