//! Pipelined JSON-RPC on one control connection of a real node (real
//! profiles, engine threads and disk commits): every request answered once,
//! and sends keep the order they were read in. The framing's finer points
//! (the window, overtaking, ordering hand-offs, subscribe, the write
//! timeout) are unit-tested beside it, in
//! `node/src/control/pipelining_tests.rs`, against fake profiles.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;

use kabar_node::Node;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};

mod support;
use support::{TIMEOUT, start};

struct Client {
    lines: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

impl Client {
    async fn connect(node: &Node) -> Client {
        let (read, write) = UnixStream::connect(node.socket()).await.unwrap().into_split();
        Client { lines: BufReader::new(read), write }
    }

    /// Writes every request before reading anything.
    async fn send_all(&mut self, requests: &[Value]) {
        let mut bytes = Vec::new();
        for r in requests {
            bytes.extend(serde_json::to_vec(r).unwrap());
            bytes.push(b'\n');
        }
        self.write.write_all(&bytes).await.unwrap();
    }

    async fn next(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.lines.read_line(&mut line)).await.expect("a reply").unwrap();
        assert!(n > 0, "the node closed the connection");
        serde_json::from_str(&line).unwrap()
    }

    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.send_all(&[json!({"jsonrpc": "2.0", "id": "call", "method": method, "params": params})]).await;
        let reply = self.next().await;
        assert_eq!(reply["id"], "call");
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }
}

fn request(id: usize, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pipelined_request_is_answered_once() {
    let (_tmp, node) = start(&["alice"]).await;
    let mut client = Client::connect(&node).await;
    // Far more than one connection's window (16), mixing calls the control
    // layer answers itself with calls that wait for the engine and its disk.
    let n = 120;
    let mut requests = Vec::new();
    for id in 0..n {
        requests.push(match id % 4 {
            0 => request(id, "node.info", json!({})),
            1 => request(id, "contact.list", json!({})),
            2 => request(id, "card.get", json!({"name": format!("alice {id}")})),
            _ => request(id, "conversation.list", json!({})),
        });
        // Notifications are run, and answered with nothing.
        if id % 10 == 0 {
            requests.push(json!({"jsonrpc": "2.0", "method": "contact.list"}));
        }
    }
    client.send_all(&requests).await;
    let mut seen: HashMap<u64, Value> = HashMap::new();
    for _ in 0..n {
        let reply = client.next().await;
        assert!(reply.get("error").is_none(), "{reply}");
        let id = reply["id"].as_u64().unwrap_or_else(|| panic!("a reply without our id: {reply}"));
        assert!(seen.insert(id, reply.clone()).is_none(), "id {id} answered twice");
    }
    assert_eq!(seen.len(), n);
    for (id, reply) in &seen {
        match id % 4 {
            0 => assert!(reply["result"]["version"].is_string(), "{reply}"),
            2 => assert!(reply["result"]["card"].as_str().unwrap().starts_with("kabar:"), "{reply}"),
            _ => assert!(reply["result"].is_array(), "{reply}"),
        }
    }
    // Nothing more is owed: the next reply is to the next request.
    assert!(client.call("node.info", json!({})).await["version"].is_string());
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_pipelined_on_one_connection_keep_their_order() {
    let (_tmp, node) = start(&["alice", "bob"]).await;
    let mut client = Client::connect(&node).await;
    let card = client.call("card.get", json!({"profile": "bob", "name": "Bob"})).await["card"].clone();
    client.call("contact.add", json!({"profile": "alice", "card": card, "name": "Bob"})).await;

    let n = 60;
    let sends: Vec<Value> = (0..n)
        .map(|i| request(i, "message.send", json!({"profile": "alice", "to": "Bob", "text": format!("m{i}")})))
        .collect();
    client.send_all(&sends).await;
    let mut ids: HashMap<u64, String> = HashMap::new();
    for _ in 0..n {
        let reply = client.next().await;
        assert!(reply.get("error").is_none(), "{reply}");
        let message_id = reply["result"]["message_id"].as_str().unwrap().to_string();
        assert!(ids.insert(reply["id"].as_u64().unwrap(), message_id).is_none());
    }
    assert_eq!(ids.len(), n);

    // Stored, and so shown, in the order the requests were written.
    let history = client.call("message.history", json!({"profile": "alice", "with": "Bob", "limit": 1000})).await;
    let shown: Vec<(String, String)> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["content"]["text"].as_str().unwrap().to_string(), m["id"].as_str().unwrap().to_string()))
        .collect();
    let expected: Vec<(String, String)> = (0..n).map(|i| (format!("m{i}"), ids[&(i as u64)].clone())).collect();
    assert_eq!(shown, expected);
    node.shutdown().await;
}
