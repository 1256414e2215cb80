//! The control API as a generic JSON-RPC 2.0 client sees it.

use kabar_crypto::ProfileKind::Personal;
use kabar_node::control::codes;
use kabar_tests::*;
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_rpc_errors_and_batches_follow_the_specification() {
    let node = TestNode::start(&[("personal", Personal)]).await;
    let reply = |s: String| serde_json::from_str::<Value>(&s).unwrap();

    let r = reply(node.raw("{not json").await);
    assert_eq!((r["error"]["code"].as_i64(), &r["id"]), (Some(codes::PARSE_ERROR), &Value::Null));
    let r = reply(node.raw(r#"{"jsonrpc":"2.0","id":7,"method":"no.such"}"#).await);
    assert_eq!((r["error"]["code"].as_i64(), &r["id"]), (Some(codes::METHOD_NOT_FOUND), &json!(7)));
    let r = reply(node.raw(r#"{"jsonrpc":"1.0","id":"a","method":"node.info"}"#).await);
    assert_eq!((r["error"]["code"].as_i64(), &r["id"]), (Some(codes::INVALID_REQUEST), &json!("a")));
    let r = reply(node.raw(r#"{"jsonrpc":"2.0","id":2,"method":"message.send","params":{"to":5}}"#).await);
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::INVALID_PARAMS));
    let r = reply(
        node.raw(r#"{"jsonrpc":"2.0","id":3,"method":"message.send","params":{"to":"Nobody","text":"x"}}"#).await,
    );
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::NOT_FOUND));
    let r = reply(node.raw(r#"{"jsonrpc":"2.0","id":4,"method":"contact.add","params":{"card":"kabar:AAAA"}}"#).await);
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::BAD_CARD));
    let r = reply(node.raw("[]").await);
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::INVALID_REQUEST));
    let r = reply(node.raw("42").await);
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::INVALID_REQUEST));

    // A batch: two calls and a notification (no id → no response).
    let r = reply(
        node.raw(r#"[{"jsonrpc":"2.0","id":1,"method":"profile.list"},{"jsonrpc":"2.0","method":"profile.list"},{"jsonrpc":"2.0","id":2,"method":"x"}]"#)
            .await,
    );
    let items = r.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["id"], 1);
    assert_eq!(items[0]["result"][0]["name"], "personal");
    assert_eq!(items[1]["error"]["code"].as_i64(), Some(codes::METHOD_NOT_FOUND));

    // The node is still fine.
    assert_eq!(node.call("profile.list", json!({})).await[0]["kind"], "personal");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_data_directory_is_refused() {
    let node = TestNode::start(&[("personal", Personal)]).await;
    let config = kabar_node::NodeConfig {
        data_dir: node.data_dir.clone(),
        passphrase: b"integration tests".to_vec(),
        network: kabar_node::network::NetworkConfig { mdns: false, ..Default::default() },
        engine: Default::default(),
    };
    let err = kabar_node::Node::start(config).await.err().expect("refused");
    assert!(err.to_string().contains("already running"), "{err}");
}

/// A batch of history calls cannot make a reply (and the node's memory) as
/// large as it likes: a batch holds at most 64 requests, a history call at
/// most 1,000 messages, and a reply line stops growing at 16 MiB, the rest
/// answered `too_large` with their ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_replies_are_bounded() {
    use kabar_node::control::{MAX_BATCH_REQUESTS, MAX_HISTORY_LIMIT, MAX_REPLY};
    let alice = TestNode::start(&[("personal", Personal)]).await;
    let bob = TestNode::start(&[("personal", Personal)]).await;
    introduce(&alice, "personal", "Alice", &bob, "personal", "Bob").await;
    // 40 messages of 30 KB: one history reply is about 1.2 MB.
    let text = "x".repeat(30_000);
    // (Two calls: one request line is at most 1 MiB.)
    for _ in 0..2 {
        alice.call("message.send_batch", json!({"to": "Bob", "texts": vec![text.clone(); 20]})).await;
    }
    let call = |id: usize| json!({"jsonrpc": "2.0", "id": id, "method": "message.history", "params": {"with": "Bob", "limit": MAX_HISTORY_LIMIT}});

    // 1,000 calls in one batch: refused whole, in a few bytes.
    let batch: Vec<Value> = (0..1_000).map(call).collect();
    let line = alice.raw(&serde_json::to_string(&batch).unwrap()).await;
    assert!(line.len() < 1_000, "{} bytes", line.len());
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::TOO_LARGE), "{r}");

    // 64 calls: the reply stops near 16 MiB; the calls past it are answered
    // too_large, each with its id.
    let batch: Vec<Value> = (0..MAX_BATCH_REQUESTS).map(call).collect();
    let line = alice.raw(&serde_json::to_string(&batch).unwrap()).await;
    assert!(line.len() < MAX_REPLY + 2_000_000, "{} bytes", line.len());
    let items: Vec<Value> = serde_json::from_str(&line).unwrap();
    assert_eq!(items.len(), MAX_BATCH_REQUESTS);
    let answered = items.iter().filter(|r| r["result"]["messages"].as_array().is_some_and(|m| m.len() == 40)).count();
    let refused: Vec<&Value> = items.iter().filter(|r| r["error"]["code"].as_i64() == Some(codes::TOO_LARGE)).collect();
    assert!((10..MAX_BATCH_REQUESTS).contains(&answered), "{answered} answered");
    assert_eq!(answered + refused.len(), MAX_BATCH_REQUESTS);
    assert!(refused.iter().all(|r| r["id"].as_u64().is_some_and(|id| id as usize >= answered)));

    // A history call asking for more than the limit is refused by name.
    let r = alice.try_call("message.history", json!({"with": "Bob", "limit": MAX_HISTORY_LIMIT + 1})).await;
    assert!(matches!(r, Err(RpcFailure { code, .. }) if code == codes::INVALID_PARAMS));
    // The node is still fine.
    assert_eq!(alice.call("profile.list", json!({})).await[0]["kind"], "personal");
}

/// Every control slot held by idle clients: a new client is told the node
/// is busy (an error, not a silently closed stream), and idle connections
/// are closed after the idle time, which frees the slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_control_socket_says_busy_and_idle_connections_are_closed() {
    use kabar_node::control::MAX_CONNECTIONS;
    use tokio::io::AsyncBufReadExt;
    let node = TestNode::start(&[("personal", Personal)]).await;
    // Hold every slot: each holder has made one call (so it is accepted).
    let mut held = Vec::new();
    for _ in 0..MAX_CONNECTIONS {
        let stream = tokio::net::UnixStream::connect(node.socket()).await.unwrap();
        let (read, mut write) = stream.into_split();
        let mut read = tokio::io::BufReader::new(read);
        tokio::io::AsyncWriteExt::write_all(
            &mut write,
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"profile.list\"}\n",
        )
        .await
        .unwrap();
        let mut line = String::new();
        tokio::time::timeout(TIMEOUT, read.read_line(&mut line)).await.unwrap().unwrap();
        held.push((read, write));
    }
    // The 65th is told at once, before it asks anything, and closed.
    let extra = tokio::net::UnixStream::connect(node.socket()).await.unwrap();
    let mut line = String::new();
    tokio::time::timeout(TIMEOUT, tokio::io::BufReader::new(extra).read_line(&mut line)).await.unwrap().unwrap();
    let r: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(r["error"]["code"].as_i64(), Some(codes::BUSY), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("busy"));

    // With a short idle time, the holders are told and closed…
    node.node().set_control_idle(std::time::Duration::from_millis(300));
    // (A holder's wait already running uses the old time: one more request
    // each starts the new one.)
    for (read, write) in &mut held {
        tokio::io::AsyncWriteExt::write_all(write, b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"profile.list\"}\n")
            .await
            .unwrap();
        let mut line = String::new();
        tokio::time::timeout(TIMEOUT, read.read_line(&mut line)).await.unwrap().unwrap();
    }
    for (read, _) in &mut held {
        let mut line = String::new();
        tokio::time::timeout(TIMEOUT, read.read_line(&mut line)).await.unwrap().unwrap();
        let note: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(note["error"]["code"].as_i64(), Some(codes::IDLE), "{note}");
        line.clear();
        let eof = tokio::time::timeout(TIMEOUT, read.read_line(&mut line)).await.unwrap().unwrap();
        assert_eq!(eof, 0, "closed after the note");
    }
    // …and a new client is served again.
    assert_eq!(node.call("profile.list", json!({})).await[0]["kind"], "personal");
}
