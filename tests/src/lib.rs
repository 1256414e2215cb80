//! kabar-tests: the shared harness for Kabar's multi-node integration tests.
//!
//! [`TestNode`] runs a real node in this process (its own data directory,
//! real swarms on 127.0.0.1, the real control socket) and talks to it only
//! through the JSON-RPC control API, as a client would. [`Events`] is a
//! subscription: tests wait on events with a timeout, never on sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use kabar_crypto::ProfileKind;
use kabar_node::engine::EngineConfig;
use kabar_node::network::NetworkConfig;
use kabar_node::{Node, NodeConfig};
use kabar_storage::{DataDir, KdfParams};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// How long a test waits for any one thing before failing.
pub const TIMEOUT: Duration = Duration::from_secs(30);
const PASSPHRASE: &[u8] = b"integration tests";

/// A node running in this process.
pub struct TestNode {
    _tmp: tempfile::TempDir,
    listen: Vec<libp2p::Multiaddr>,
    bootstrap: Vec<libp2p::Multiaddr>,
    kad_server: bool,
    /// Its data directory.
    pub data_dir: PathBuf,
    node: Option<Node>,
}

/// An error object returned by the control API.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcFailure {
    /// JSON-RPC error code.
    pub code: i64,
    /// Message.
    pub message: String,
}

impl TestNode {
    /// A node with these profiles, listening on 127.0.0.1 (TCP, random ports).
    pub async fn start(profiles: &[(&str, ProfileKind)]) -> TestNode {
        Self::start_on(profiles, "/ip4/127.0.0.1/tcp/0").await
    }

    /// A node with these profiles listening on `listen` (e.g. QUIC:
    /// `/ip4/127.0.0.1/udp/0/quic-v1`).
    pub async fn start_on(profiles: &[(&str, ProfileKind)], listen: &str) -> TestNode {
        Self::start_with(profiles, listen, &[]).await
    }

    /// A node that also dials `bootstrap` at start (DHT entry points, e.g.
    /// a service node).
    pub async fn start_with(profiles: &[(&str, ProfileKind)], listen: &str, bootstrap: &[String]) -> TestNode {
        Self::start_full(profiles, listen, bootstrap, true).await
    }

    /// A node whose profiles are DHT clients (as private profiles are) that
    /// dials `bootstrap` at start.
    pub async fn start_dht_client(profiles: &[(&str, ProfileKind)], bootstrap: &[String]) -> TestNode {
        Self::start_full(profiles, "/ip4/127.0.0.1/tcp/0", bootstrap, false).await
    }

    async fn start_full(
        profiles: &[(&str, ProfileKind)],
        listen: &str,
        bootstrap: &[String],
        kad_server: bool,
    ) -> TestNode {
        // KABAR_TEST_LOG=debug shows the nodes' logs (tracing) on stderr.
        if let Ok(filter) = std::env::var("KABAR_TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                .with_test_writer()
                .try_init();
        }
        let tmp = tempfile::tempdir().unwrap();
        let data_dir = tmp.path().join("data");
        let mut dir = DataDir::create(&data_dir, PASSPHRASE, KdfParams::TESTNET).unwrap();
        for (name, kind) in profiles {
            dir.create_profile(name, *kind, 1_700_000_000, &mut rand::rng()).unwrap();
        }
        drop(dir);
        let mut node = TestNode {
            _tmp: tmp,
            listen: vec![listen.parse().unwrap()],
            bootstrap: bootstrap.iter().map(|a| a.parse().unwrap()).collect(),
            kad_server,
            data_dir,
            node: None,
        };
        node.boot().await;
        node
    }

    fn config(&self) -> NodeConfig {
        NodeConfig {
            data_dir: self.data_dir.clone(),
            passphrase: PASSPHRASE.to_vec(),
            network: NetworkConfig {
                listen: self.listen.clone(),
                bootstrap: self.bootstrap.clone(),
                mdns: false,
                kad_server: self.kad_server,
                relays: Vec::new(),
            },
            engine: EngineConfig { retry_base_ms: 200, retry_max_ms: 2_000, ..EngineConfig::default() },
        }
    }

    async fn boot(&mut self) {
        let node = Node::start(self.config()).await.unwrap();
        tokio::time::timeout(TIMEOUT, node.wait_listening()).await.expect("node listens");
        self.node = Some(node);
    }

    /// Stops gracefully.
    pub async fn stop(&mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    /// Stops abruptly (tasks aborted, as in a crash between two events).
    pub async fn kill(&mut self) {
        if let Some(node) = self.node.take() {
            node.kill().await;
        }
    }

    /// Starts again on the same data directory (new ports).
    pub async fn restart(&mut self) {
        self.stop().await;
        self.boot().await;
    }

    /// Starts again after [`TestNode::kill`].
    pub async fn boot_again(&mut self) {
        self.boot().await;
    }

    /// Starts again after [`TestNode::stop`] or [`TestNode::kill`], giving
    /// back the error if the node refuses to start.
    pub async fn try_boot_again(&mut self) -> Result<(), kabar_node::NodeError> {
        let node = Node::start(self.config()).await?;
        tokio::time::timeout(TIMEOUT, node.wait_listening()).await.expect("node listens");
        self.node = Some(node);
        Ok(())
    }

    /// The passphrase of every test node's data directory.
    pub fn passphrase() -> &'static [u8] {
        PASSPHRASE
    }

    /// The running node (panics if it is stopped).
    pub fn node(&self) -> &Node {
        self.node.as_ref().expect("the node is running")
    }

    /// Its control socket's path.
    pub fn socket(&self) -> PathBuf {
        self.data_dir.join(kabar_node::control::SOCKET_FILE)
    }

    /// Sends one raw line and returns the raw reply line.
    pub async fn raw(&self, line: &str) -> String {
        let stream = UnixStream::connect(self.socket()).await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(line.as_bytes()).await.unwrap();
        write.write_all(b"\n").await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(TIMEOUT, BufReader::new(read).read_line(&mut reply)).await.unwrap().unwrap();
        reply
    }

    /// Calls a method; `Err` carries the JSON-RPC error.
    pub async fn try_call(&self, method: &str, params: Value) -> Result<Value, RpcFailure> {
        let request = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let reply: Value = serde_json::from_str(&self.raw(&request.to_string()).await).unwrap();
        assert_eq!(reply["jsonrpc"], "2.0");
        assert_eq!(reply["id"], 1);
        match reply.get("error") {
            Some(e) => {
                Err(RpcFailure { code: e["code"].as_i64().unwrap(), message: e["message"].as_str().unwrap().into() })
            }
            None => Ok(reply["result"].clone()),
        }
    }

    /// Calls a method that must succeed.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        match self.try_call(method, params.clone()).await {
            Ok(v) => v,
            Err(e) => panic!("{method} {params} failed: {e:?}"),
        }
    }

    /// The contact card of a profile.
    pub async fn card(&self, profile: &str, name: &str) -> String {
        self.call("card.get", json!({"profile": profile, "name": name})).await["card"].as_str().unwrap().to_string()
    }

    /// The PeerId and listen addresses of a profile.
    pub async fn profile_info(&self, profile: &str) -> Value {
        let info = self.call("node.info", json!({})).await;
        info["profiles"].as_array().unwrap().iter().find(|p| p["name"] == profile).cloned().unwrap()
    }

    /// A profile's live status (kabar_node::network::ProfileStatus).
    pub fn status_watch(&self, profile: &str) -> tokio::sync::watch::Receiver<kabar_node::network::ProfileStatus> {
        self.node.as_ref().and_then(|n| n.status_watch(profile)).expect("a running node with that profile")
    }

    /// Subscribes to events.
    pub async fn subscribe(&self) -> Events {
        let stream = UnixStream::connect(self.socket()).await.unwrap();
        let (read, mut write) = stream.into_split();
        write.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"subscribe\"}\n").await.unwrap();
        let mut events = Events { lines: BufReader::new(read), _write: write };
        let first = events.next_line().await;
        assert_eq!(first["result"]["subscribed"], true);
        events
    }
}

/// An event subscription.
pub struct Events {
    lines: BufReader<tokio::net::unix::OwnedReadHalf>,
    _write: tokio::net::unix::OwnedWriteHalf,
}

impl Events {
    async fn next_line(&mut self) -> Value {
        let mut line = String::new();
        let n = tokio::time::timeout(TIMEOUT, self.lines.read_line(&mut line)).await.expect("event in time").unwrap();
        assert!(n > 0, "event stream closed");
        serde_json::from_str(&line).unwrap()
    }

    /// Waits (up to [`TIMEOUT`]) for an event matching `pred`.
    pub async fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            let line = tokio::time::timeout(remaining, self.next_line())
                .await
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
            if line["method"] == "event" && pred(&line["params"]) {
                return line["params"].clone();
            }
        }
    }

    /// Waits until message `id` reaches `status`.
    pub async fn wait_status(&mut self, id: &str, status: &str) {
        self.wait_for(&format!("{id} {status}"), |e| {
            e["event"] == "status_changed" && e["message_id"] == id && e["status"] == status
        })
        .await;
    }

    /// Waits until every message of `ids` has reached `status` (in any order).
    pub async fn wait_statuses(&mut self, ids: &[String], status: &str) {
        let mut waiting: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        while !waiting.is_empty() {
            let what = format!("{} more {status}", waiting.len());
            let e = self
                .wait_for(&what, |e| {
                    e["event"] == "status_changed"
                        && e["status"] == status
                        && e["message_id"].as_str().is_some_and(|id| waiting.contains(id))
                })
                .await;
            waiting.remove(e["message_id"].as_str().unwrap_or(""));
        }
    }

    /// Waits until `n` messages have arrived on `profile`.
    pub async fn wait_received(&mut self, profile: &str, n: usize) {
        for i in 0..n {
            self.wait_for(&format!("message {i} on {profile}"), |e| {
                e["event"] == "message_received" && e["profile"] == profile
            })
            .await;
        }
    }
}

/// Waits until every message in `ids` sent by `node` is delivered.
pub async fn wait_all_delivered(node: &TestNode, ids: &[String]) {
    let mut events = node.subscribe().await;
    loop {
        let mut pending = Vec::new();
        for id in ids {
            let m = node.call("message.status", json!({"message_id": id})).await;
            if !matches!(m["status"].as_str(), Some("delivered" | "read")) {
                pending.push(m);
            }
        }
        if pending.is_empty() {
            return;
        }
        events.wait_for("a delivery", |e| e["event"] == "status_changed" || e["event"] == "lagged").await;
    }
}

/// Adds each side's card to the other under the given names.
pub async fn introduce(a: &TestNode, a_profile: &str, a_name: &str, b: &TestNode, b_profile: &str, b_name: &str) {
    let a_card = a.card(a_profile, a_name).await;
    let b_card = b.card(b_profile, b_name).await;
    a.call("contact.add", json!({"profile": a_profile, "card": b_card, "name": b_name})).await;
    b.call("contact.add", json!({"profile": b_profile, "card": a_card, "name": a_name})).await;
}

/// The texts of a conversation, oldest first, as `(direction, text)`.
pub async fn history(node: &TestNode, profile: &str, with: &str) -> Vec<(String, String)> {
    let h = node.call("message.history", json!({"profile": profile, "with": with, "limit": 1000})).await;
    h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let c = &m["content"];
            let text = match c["type"].as_str().unwrap() {
                "text" => c["text"].as_str().unwrap().to_string(),
                other => format!("<{other}>"),
            };
            (m["direction"].as_str().unwrap().to_string(), text)
        })
        .collect()
}
