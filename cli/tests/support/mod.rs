//! Shared by the network-lab tests (cli/tests/nat.rs) and the lab benchmark
//! (cli/benches/nat.rs): `kabar serve` and `kabar node run` processes in lab
//! hosts, and a JSON-RPC client of their control sockets.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kabar_lab::{Host, Lab, LabProcess};
use serde_json::{Value, json};

pub const PASSPHRASE: &str = "network lab (not a secret)";
/// Longest wait for any one condition.
pub const WAIT: Duration = Duration::from_secs(90);

pub fn kabar() -> &'static str {
    env!("CARGO_BIN_EXE_kabar")
}

/// A lab, or None (with the reason printed) where labs cannot run here.
pub fn lab() -> Option<Lab> {
    match Lab::available().and_then(|_| Lab::new()) {
        Ok(lab) => Some(lab),
        Err(e) if std::env::var_os("KABAR_LAB_REQUIRED").is_none() => {
            eprintln!("skipping network lab test: {e}");
            None
        }
        Err(e) => panic!("the network lab is required here (KABAR_LAB_REQUIRED) but cannot run: {e}"),
    }
}

/// Polls `f` until it returns Some, at most [`WAIT`].
pub fn wait_until<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    poll(f).unwrap_or_else(|| panic!("timed out waiting for {what}"))
}

/// [`wait_until`], with the end of each node's log in the failure message.
pub fn wait_showing<T>(what: &str, nodes: &[&Node], f: impl FnMut() -> Option<T>) -> T {
    poll(f).unwrap_or_else(|| {
        let logs: Vec<String> =
            nodes.iter().map(|n| format!("--- {} ---\n{}", n.host.name(), n.log_tail(40))).collect();
        panic!("timed out waiting for {what}; the end of each node's log:\n{}", logs.join("\n"))
    })
}

/// Polls `f` every 200 ms until it returns Some, at most [`WAIT`].
fn poll<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A `kabar serve` process.
pub struct Relay {
    pub host: Host,
    pub dir: PathBuf,
    pub address: String,
    pub process: Option<LabProcess>,
}

impl Relay {
    pub fn start(lab: &mut Lab, host: &Host, root: &Path) -> Relay {
        let dir = root.join(format!("serve-{}", host.name()));
        let mut relay = Relay { host: host.clone(), dir, address: String::new(), process: None };
        relay.spawn(lab);
        relay
    }

    pub fn spawn(&mut self, lab: &mut Lab) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.with_extension("log")).unwrap();
        let mut cmd = self.host.command(kabar());
        cmd.args(["--json", "--data-dir"])
            .arg(&self.dir)
            .args(["serve", "--listen", "/ip4/0.0.0.0/tcp/4040", "--listen", "/ip4/0.0.0.0/udp/4040/quic-v1"])
            .arg("--autonat-private")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = lab.spawn(&mut cmd).unwrap();
        let line = process.stdout_lines().unwrap().next_within(Duration::from_secs(30)).unwrap();
        let started: Value = serde_json::from_str(&line).unwrap();
        self.address = format!("/ip4/{}/tcp/4040/p2p/{}", self.host.ip(), started["peer_id"].as_str().unwrap());
        self.process = Some(process);
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }
}

/// A `kabar node run` process with one personal profile, in a lab host.
pub struct Node {
    pub host: Host,
    pub dir: PathBuf,
    pub args: Vec<String>,
    pub process: Option<LabProcess>,
}

impl Node {
    /// A node behind `host`'s NAT (all interfaces, TCP and QUIC) using
    /// `relay` as relay and bootstrap peer; data in `root/<host name>`.
    pub fn start(lab: &mut Lab, host: &Host, root: &Path, relay: &str) -> Node {
        let args = ["--listen", "/ip4/0.0.0.0/tcp/0", "--listen", "/ip4/0.0.0.0/udp/0/quic-v1"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--relay".into(), relay.into(), "--bootstrap".into(), relay.into()])
            .collect();
        Node::start_with(lab, host, &root.join(host.name()), args)
    }

    /// A node with its data in `dir` and these extra `node run` arguments.
    pub fn start_with(lab: &mut Lab, host: &Host, dir: &Path, args: Vec<String>) -> Node {
        let out = Command::new(kabar())
            .args(["--data-dir"])
            .arg(dir)
            .args(["init", "--testnet-kdf"])
            .env("KABAR_PASSPHRASE", PASSPHRASE)
            .output()
            .unwrap();
        assert!(out.status.success(), "init: {}", String::from_utf8_lossy(&out.stderr));
        let mut node = Node { host: host.clone(), dir: dir.to_path_buf(), args, process: None };
        node.spawn(lab);
        node
    }

    pub fn spawn(&mut self, lab: &mut Lab) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.with_extension("log")).unwrap();
        let mut cmd = self.host.command(kabar());
        cmd.args(["--json", "--data-dir"])
            .arg(&self.dir)
            .args(["node", "run", "--no-mdns"])
            .args(&self.args)
            .env("KABAR_PASSPHRASE", PASSPHRASE)
            .env("RUST_LOG", std::env::var("KABAR_LAB_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(log);
        let mut process = lab.spawn(&mut cmd).unwrap();
        let line = process.stdout_lines().unwrap().next_within(Duration::from_secs(30)).unwrap();
        let _: Value = serde_json::from_str(&line).unwrap();
        self.process = Some(process);
    }

    pub fn kill(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.kill();
        }
    }

    /// A JSON-RPC connection to its control socket.
    pub fn connect(&self) -> Rpc {
        Rpc::connect(&self.dir)
    }

    /// Runs a `kabar` command on this node's data directory (from outside
    /// the namespace, as a user in another terminal would) and returns its
    /// standard output; it must succeed.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(kabar()).arg("--data-dir").arg(&self.dir).args(args).output().unwrap();
        assert!(out.status.success(), "kabar {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn rpc(&self, method: &str, params: Value) -> Value {
        let out = Command::new(kabar())
            .args(["--json", "--data-dir"])
            .arg(&self.dir)
            .args(["rpc", method, &params.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{method} {params}: {}\nlast lines of the node's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail(40)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The last `n` lines of the node's log (its stderr), for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    pub fn profile(&self) -> Value {
        self.rpc("node.info", json!({}))["profiles"][0].clone()
    }

    pub fn peer_id(&self) -> String {
        self.profile()["peer_id"].as_str().unwrap().to_string()
    }

    /// Waits until the profile holds a reservation on its relay and its
    /// card carries the circuit address.
    pub fn wait_reserved(&self) {
        wait_until(&format!("a reservation for {}", self.host.name()), || {
            let p = self.profile();
            let reserved = p["relays"].as_array()?.iter().any(|r| r["reserved"] == true);
            let circuit =
                p["advertised"].as_array()?.iter().any(|a| a.as_str().is_some_and(|a| a.contains("/p2p-circuit")));
            (reserved && circuit).then_some(())
        });
    }

    pub fn card(&self, name: &str) -> String {
        self.rpc("card.get", json!({"name": name}))["card"].as_str().unwrap().to_string()
    }

    /// How this node is connected to `peer` now: "direct", "relayed" or None.
    pub fn connection_to(&self, peer: &str) -> Option<String> {
        let p = self.profile();
        p["peers"].as_array()?.iter().find(|x| x["peer_id"] == peer).map(|x| x["connection"].as_str().unwrap().into())
    }

    /// Sends `texts` to `to` in one batch; returns their ids.
    pub fn send(&self, to: &str, texts: &[String]) -> Vec<String> {
        let v = self.rpc("message.send_batch", json!({"to": to, "texts": texts}));
        v["message_ids"].as_array().unwrap().iter().map(|i| i.as_str().unwrap().to_string()).collect()
    }

    /// Texts received from `from`, in order.
    pub fn received(&self, from: &str) -> Vec<String> {
        let h = self.rpc("message.history", json!({"with": from, "limit": 1000}));
        h["messages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["direction"] == "in" && m["content"]["type"] == "text")
            .map(|m| m["content"]["text"].as_str().unwrap().to_string())
            .collect()
    }

    /// Waits until every one of `ids` is delivered (or read).
    pub fn wait_delivered(&self, ids: &[String]) {
        for id in ids {
            wait_until(&format!("{id} delivered by {}", self.host.name()), || {
                let s = self.rpc("message.status", json!({"message_id": id}));
                matches!(s["status"].as_str(), Some("delivered" | "read")).then_some(())
            });
        }
    }
}

pub fn introduce(a: &Node, a_name: &str, b: &Node, b_name: &str) {
    let (a_card, b_card) = (a.card(a_name), b.card(b_name));
    a.rpc("contact.add", json!({"card": b_card, "name": b_name}));
    b.rpc("contact.add", json!({"card": a_card, "name": a_name}));
}

pub fn texts(tag: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{tag}-{i}")).collect()
}

/// `from` sends `n` messages to `to`; all are delivered, and `to` holds each
/// exactly once, in order, after what it had.
pub fn exchange(from: &Node, to: &Node, to_name: &str, from_name: &str, tag: &str, n: usize) {
    let before = to.received(from_name);
    let sent = texts(tag, n);
    let ids = from.send(to_name, &sent);
    from.wait_delivered(&ids);
    let after = to.received(from_name);
    assert_eq!(after[..before.len()], before[..], "earlier messages changed");
    assert_eq!(after[before.len()..], sent[..], "lost, duplicated or reordered");
}

/// The test's directory: data directories and each process's log
/// (`<host>.log`). KABAR_LAB_KEEP=1 keeps it for reading.
pub fn tmp() -> tempfile::TempDir {
    let mut dir = tempfile::Builder::new().prefix("kabar-lab-").tempdir().unwrap();
    if std::env::var_os("KABAR_LAB_KEEP").is_some() {
        eprintln!("keeping {}", dir.path().display());
        dir.disable_cleanup(true);
    }
    dir
}

/// The name Alice's node gave Carol (a stranger: its PeerId tail).
pub fn carol_name(alice: &Node, carol: &Node) -> String {
    let id = carol.peer_id();
    let contacts = alice.rpc("contact.list", json!({}));
    contacts.as_array().unwrap().iter().find(|c| c["peer_id"] == id.as_str()).unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `card` with its addresses replaced (re-encoded; the signatures cover the
/// keys, not the addresses).
pub fn card_with_addresses(card: &str, addresses: &[String]) -> String {
    let mut parsed = kabar_node::card::ContactCard::from_uri(card).unwrap();
    parsed.addresses = addresses.iter().map(|a| a.parse().unwrap()).collect();
    parsed.to_uri()
}

/// A JSON-RPC 2.0 client of a node's control socket (newline-delimited).
pub struct Rpc {
    reader: std::io::BufReader<std::os::unix::net::UnixStream>,
    writer: std::os::unix::net::UnixStream,
    next_id: u64,
    /// Events read while waiting for a reply.
    pub events: std::collections::VecDeque<Value>,
}

impl Rpc {
    pub fn connect(dir: &Path) -> Rpc {
        let stream = std::os::unix::net::UnixStream::connect(dir.join("kabar.sock")).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        Rpc {
            reader: std::io::BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
            next_id: 1,
            events: Default::default(),
        }
    }

    fn line(&mut self) -> Value {
        use std::io::BufRead;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("a reply in time");
        assert!(n > 0, "the node closed the control socket");
        serde_json::from_str(&line).unwrap()
    }

    /// Calls a method that must succeed.
    pub fn call(&mut self, method: &str, params: Value) -> Value {
        use std::io::Write;
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.writer, "{request}").unwrap();
        loop {
            let v = self.line();
            if v["method"] == "event" {
                self.events.push_back(v["params"].clone());
                continue;
            }
            assert_eq!(v["id"], id);
            assert!(v.get("error").is_none(), "{method} {params}: {}", v["error"]);
            return v["result"].clone();
        }
    }

    /// The next event, or None once the node closed the socket (or after
    /// [`WAIT`] without one).
    pub fn try_next_event(&mut self) -> Option<Value> {
        use std::io::BufRead;
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let v: Value = serde_json::from_str(&line).ok()?;
            if v["method"] == "event" {
                return Some(v["params"].clone());
            }
        }
    }

    /// The next event (waits at most [`WAIT`]).
    pub fn next_event(&mut self) -> Value {
        if let Some(e) = self.events.pop_front() {
            return e;
        }
        loop {
            let v = self.line();
            if v["method"] == "event" {
                return v["params"].clone();
            }
        }
    }
}
