//! A blocking JSON-RPC client of the node's control socket.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

/// Exit code when no node is running.
pub(crate) const EXIT_NO_NODE: u8 = 3;
/// Exit code when `--wait` timed out.
pub(crate) const EXIT_TIMEOUT: u8 = 4;

/// An error the node returned, with its JSON-RPC code.
#[derive(Debug)]
pub(crate) struct NodeError {
    pub(crate) code: i64,
    pub(crate) message: String,
}

impl std::fmt::Display for NodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for NodeError {}

/// No node answers on the socket.
#[derive(Debug)]
pub(crate) struct NoNode(pub(crate) PathBuf);

impl std::fmt::Display for NoNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no kabar node is running for {}; start one with `kabar --data-dir {} node run`",
            self.0.display(),
            self.0.display()
        )
    }
}

impl std::error::Error for NoNode {}

/// `--wait` ran out of time.
#[derive(Debug)]
pub(crate) struct TimedOut(pub(crate) String);

impl std::fmt::Display for TimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

/// A connection to the node.
pub(crate) struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub(crate) fn connect(data_dir: &Path) -> Result<Client> {
        let socket = data_dir.join(kabar_node::control::SOCKET_FILE);
        let stream = UnixStream::connect(&socket).map_err(|_| NoNode(data_dir.to_path_buf()))?;
        let writer = stream.try_clone()?;
        Ok(Client { reader: BufReader::new(stream), writer, next_id: 1 })
    }

    /// Gives up on a reply after `limit` (none by default): a call that
    /// takes longer fails with a timeout error.
    pub(crate) fn set_timeout(&self, limit: std::time::Duration) -> Result<()> {
        self.reader.get_ref().set_read_timeout(Some(limit))?;
        Ok(())
    }

    fn read_value(&mut self) -> Result<Value> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(anyhow!("the node went away (it closed the connection)"));
        }
        serde_json::from_str(&line).context("the node sent malformed JSON")
    }

    /// Calls `method`; events that arrive meanwhile are handed to `on_event`.
    pub(crate) fn call_with(&mut self, method: &str, params: Value, on_event: &mut dyn FnMut(&Value)) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        if let Err(e) =
            writeln!(self.writer, "{}", json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
        {
            // The node may have said why before closing (busy, idle).
            if let Ok(reply) = self.read_value()
                && let Some(err) = reply.get("error")
            {
                return Err(NodeError {
                    code: err["code"].as_i64().unwrap_or(0),
                    message: err["message"].as_str().unwrap_or("error").to_string(),
                }
                .into());
            }
            return Err(anyhow!("the node went away ({e})"));
        }
        loop {
            let reply = self.read_value()?;
            if reply.get("method") == Some(&json!("event")) {
                on_event(&reply["params"]);
                continue;
            }
            // An error with no id is about the connection itself (the node
            // is busy, or closes an idle connection): nothing will follow.
            if reply["id"].is_null()
                && let Some(e) = reply.get("error")
            {
                return Err(NodeError {
                    code: e["code"].as_i64().unwrap_or(0),
                    message: e["message"].as_str().unwrap_or("error").to_string(),
                }
                .into());
            }
            if reply["id"] != json!(id) {
                continue;
            }
            return match reply.get("error") {
                Some(e) => Err(NodeError {
                    code: e["code"].as_i64().unwrap_or(0),
                    message: e["message"].as_str().unwrap_or("error").to_string(),
                }
                .into()),
                None => Ok(reply["result"].clone()),
            };
        }
    }

    /// Calls `method`.
    pub(crate) fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.call_with(method, params, &mut |_| {})
    }

    /// Subscribes this connection to events.
    pub(crate) fn subscribe(&mut self) -> Result<()> {
        self.call("subscribe", json!({}))?;
        Ok(())
    }

    /// Waits for the next event until `deadline`; `None` on timeout.
    pub(crate) fn next_event(&mut self, deadline: Instant) -> Result<Option<Value>> {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            self.writer.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
            let value = match self.read_value() {
                Ok(v) => v,
                Err(e) => {
                    let timed_out = e.downcast_ref::<std::io::Error>().is_some_and(|io| {
                        matches!(io.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
                    });
                    if timed_out {
                        return Ok(None);
                    }
                    return Err(e);
                }
            };
            self.writer.set_read_timeout(None)?;
            if value.get("method") == Some(&json!("event")) {
                return Ok(Some(value["params"].clone()));
            }
        }
    }
}
