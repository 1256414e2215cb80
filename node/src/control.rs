//! The control API: JSON-RPC 2.0 over a Unix domain socket, one JSON value
//! per line (newline-delimited). Every method is documented in `docs/api.md`.
//!
//! Requests may be batched (a JSON array). A request without `id` is a
//! notification and gets no response. `subscribe` turns the connection into
//! an event stream: the server then also sends `{"jsonrpc":"2.0","method":"event","params":{…}}`
//! lines.
//!
//! Requests are pipelined: a connection reads on while earlier lines run
//! (up to [`PIPELINE_WINDOW`] in flight, [`MAX_IN_FLIGHT`] on the node) and
//! answers each as it completes; lines hand their work to profiles in the
//! order they were read (see `connection`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use kabar_crypto::{ProfileKind, SafetyNumber};
use kabar_storage::{
    AwaySchedule, BusinessHours, BusinessProfile, CatalogItem, ContactId, ConversationStatus, Direction, QuickReply,
};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};

use crate::card::ContactCard;
use crate::content::{Content, Message, OrderLine};
use crate::engine::{Engine, NodeEvent};
use crate::network::{Command, EngineJob, ProfileStatus, now_ms};

/// Socket file name inside the data directory.
pub const SOCKET_FILE: &str = "kabar.sock";
/// Longest request line accepted, in bytes.
pub const MAX_LINE: usize = 1024 * 1024;
/// Most simultaneous control connections.
pub const MAX_CONNECTIONS: usize = 64;
/// Most requests in one batch; a longer batch is refused whole
/// ([`codes::TOO_LARGE`]).
pub const MAX_BATCH_REQUESTS: usize = 64;
/// Largest reply line (a response or a batch of them). A batch stops
/// running requests once its replies reach this; the rest are answered
/// [`codes::TOO_LARGE`]. With [`MAX_LINE`] in and [`MAX_HISTORY_LIMIT`]
/// messages per call, it bounds what one line in flight holds to a few tens
/// of MiB, and [`MAX_IN_FLIGHT`] bounds the lines in flight on the node.
pub const MAX_REPLY: usize = 16 * 1024 * 1024;
/// Most messages one `message.history` call returns.
pub const MAX_HISTORY_LIMIT: u64 = 1_000;
/// Most lines (requests or batches) one connection has in flight: at this
/// many it stops reading until one is answered.
pub const PIPELINE_WINDOW: usize = 16;
/// Most lines in flight on all connections together, each counted from
/// the moment it is read until its reply is written: what the node holds
/// for its clients (replies included) stays what 64 connections with one
/// call each held.
pub const MAX_IN_FLIGHT: usize = 64;
/// A reply or event the client does not take within this long closes its
/// connection: a client that never reads cannot pin the node's memory.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// A JSON-RPC error object.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RpcError {
    /// Code: -32700 parse error, -32600 invalid request, -32601 method not
    /// found, -32602 invalid params, -32603 internal; -32000… Kabar errors.
    pub code: i64,
    /// Plain message.
    pub message: String,
}

/// Kabar error codes (see docs/api.md).
pub mod codes {
    /// The JSON did not parse.
    pub const PARSE_ERROR: i64 = -32700;
    /// Not a valid JSON-RPC request.
    pub const INVALID_REQUEST: i64 = -32600;
    /// No such method.
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// Bad parameters.
    pub const INVALID_PARAMS: i64 = -32602;
    /// Internal error.
    pub const INTERNAL: i64 = -32603;
    /// No such profile, contact, message or item.
    pub const NOT_FOUND: i64 = -32001;
    /// A value broke a rule (over-long field, too many labels…).
    pub const INVALID_VALUE: i64 = -32002;
    /// The operation needs a business profile.
    pub const NOT_BUSINESS: i64 = -32003;
    /// The contact is blocked.
    pub const BLOCKED: i64 = -32004;
    /// A malformed contact card.
    pub const BAD_CARD: i64 = -32005;
    /// Storage failed.
    pub const STORAGE: i64 = -32006;
    /// The node is shutting down.
    pub const SHUTTING_DOWN: i64 = -32007;
    /// A remote service (a mailbox host) could not be reached or refused.
    pub const UNAVAILABLE: i64 = -32008;
    /// A batch, or a reply, over its bound ([`super::MAX_BATCH_REQUESTS`],
    /// [`super::MAX_REPLY`]): ask for less.
    pub const TOO_LARGE: i64 = -32009;
    /// Every control connection slot is taken: try again later (sent, with
    /// `id` `null`, on a connection that is then closed). Also the answer to
    /// a call a profile's engine refused without running it because it is
    /// too far behind (with the call's id; the connection stays open).
    pub const BUSY: i64 = -32010;
    /// The connection was idle too long and is closed (sent with `id`
    /// `null` before closing).
    pub const IDLE: i64 = -32011;
    /// The profile's store is damaged (a page or record that does not read
    /// back): the profile stopped, `node.info` shows it `failed`, and its
    /// other calls are refused with this code.
    pub const DAMAGED: i64 = -32012;
}

impl RpcError {
    /// A new error.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError { code, message: message.into() }
    }

    fn params(message: impl Into<String>) -> Self {
        Self::new(codes::INVALID_PARAMS, message)
    }
}

impl From<kabar_storage::StoreError> for RpcError {
    fn from(e: kabar_storage::StoreError) -> Self {
        use kabar_storage::StoreError as S;
        let code = match &e {
            // Damaged, or unusable after an I/O error: the profile stops.
            e if e.is_damage() || e.is_unusable() => codes::DAMAGED,
            S::NotFound(_) | S::UnknownProfile(_) => codes::NOT_FOUND,
            S::Invalid(_) | S::InvalidProfileName(_) | S::DuplicateProfile(_) => codes::INVALID_VALUE,
            S::NotBusiness(_) => codes::NOT_BUSINESS,
            _ => codes::STORAGE,
        };
        RpcError::new(code, e.to_string())
    }
}

impl From<crate::engine::EngineError> for RpcError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::EngineError as E;
        match e {
            E::Store(s) => s.into(),
            E::Blocked(_) => RpcError::new(codes::BLOCKED, e.to_string()),
            E::UnknownShortcut(_) | E::NoPrekey(_) | E::Content(_) => {
                RpcError::new(codes::INVALID_VALUE, e.to_string())
            }
            E::Crypto(_) | E::Prekey(_) => RpcError::new(codes::INTERNAL, e.to_string()),
        }
    }
}

/// A handle on one running profile.
#[derive(Clone)]
pub struct ProfileHandle {
    /// Commands to its task.
    pub commands: mpsc::Sender<Command>,
    /// Its live status.
    pub status: watch::Receiver<ProfileStatus>,
}

/// Shared state of the control server.
pub struct ControlState {
    /// Profiles by name, in creation order.
    pub profiles: Vec<(String, ProfileHandle)>,
    /// Events of all profiles.
    pub events: broadcast::Sender<NodeEvent>,
    /// Flipped to stop the node.
    pub stop: watch::Sender<bool>,
    /// A connection that sends no request for this long (milliseconds) and
    /// follows no events is closed, so idle clients cannot hold every slot.
    pub idle_ms: std::sync::atomic::AtomicU64,
}

/// A control connection with nothing to do is closed after this long.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Creates the socket: refuses if a live node answers on it, removes a stale
/// one, and restricts it to the owner (0600).
pub async fn bind(data_dir: &Path) -> Result<(UnixListener, PathBuf), std::io::Error> {
    let path = data_dir.join(SOCKET_FILE);
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("a kabar node is already running on {} (stop it with `kabar node stop`)", path.display()),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok((listener, path))
}

/// Which socket file is ours: its device, inode and change time (to the
/// nanosecond) when we bound it. The inode alone is not enough: a file
/// system reuses the inode of a removed socket for the next one at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketId(u64, u64, i64, i64);

impl SocketId {
    /// The id of the file at `path` now, if there is one.
    pub fn of(path: &Path) -> Option<SocketId> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            std::fs::symlink_metadata(path).ok().map(|m| SocketId(m.dev(), m.ino(), m.ctime(), m.ctime_nsec()))
        }
        #[cfg(not(unix))]
        {
            let _ = path;
            None
        }
    }
}

/// Removes the socket file at `path` only if it is still the one we bound
/// (`ours`): a node started right after this one stopped may have bound its
/// own there, and that one is not ours to remove.
pub fn remove_if_ours(path: &Path, ours: Option<SocketId>) {
    if ours.is_some() && SocketId::of(path) == ours {
        let _ = std::fs::remove_file(path);
    }
}

/// Accepts control connections until `stop` flips.
pub async fn serve(listener: UnixListener, state: Arc<ControlState>) {
    serve_with(listener, state, Limits::DEFAULT).await;
}

/// How connections are bounded: [`Limits::DEFAULT`] in a node, smaller in
/// tests.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// [`PIPELINE_WINDOW`].
    window: usize,
    /// [`MAX_IN_FLIGHT`].
    in_flight: usize,
    /// [`WRITE_TIMEOUT`].
    write_timeout: Duration,
}

impl Limits {
    const DEFAULT: Limits = Limits { window: PIPELINE_WINDOW, in_flight: MAX_IN_FLIGHT, write_timeout: WRITE_TIMEOUT };
}

async fn serve_with(listener: UnixListener, state: Arc<ControlState>, limits: Limits) {
    let mut stop = state.stop.subscribe();
    // A stop sent before this task first ran is already the current value
    // (a new receiver never sees it as a change): without this check a node
    // stopped right after it started would serve, and never stop, for ever.
    if *stop.borrow_and_update() {
        return;
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // Shared by every connection: a request holds one from the moment its
    // line is read until its reply is written.
    let in_flight = Arc::new(Semaphore::new(limits.in_flight));
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let Ok(permit) = slots.clone().try_acquire_owned() else {
                        tracing::warn!("too many control connections; refusing one");
                        // Told why, then closed: a client reports "busy"
                        // instead of taking the closed stream for success.
                        tokio::spawn(async move {
                            let (_, mut write) = stream.into_split();
                            let busy = RpcError::new(
                                codes::BUSY,
                                format!("the node is busy: all {MAX_CONNECTIONS} control connections are in use; try again"),
                            );
                            let _ = tokio::time::timeout(
                                Duration::from_secs(1),
                                write_line(&mut write, &error_response(Value::Null, busy)),
                            )
                            .await;
                        });
                        continue;
                    };
                    let state = state.clone();
                    let in_flight = in_flight.clone();
                    tokio::spawn(async move {
                        let (read, write) = stream.into_split();
                        connection(read, write, state, in_flight, limits).await;
                        drop(permit);
                    });
                }
                Err(e) => tracing::warn!(error = %e, "control accept failed"),
            }
        }
    }
}

/// A line answered, and what it leaves its connection once written.
struct Answered {
    /// The response (an array for a batch); `None` for notifications.
    reply: Option<Value>,
    /// Set by `subscribe`: events flow once `reply` is written.
    events: Option<broadcast::Receiver<NodeEvent>>,
    /// Its share of [`MAX_IN_FLIGHT`], given back once `reply` is written.
    _permit: OwnedSemaphorePermit,
}

/// The connection a call came on, as the call sees it.
struct Caller {
    /// Set by `subscribe`.
    events: Option<broadcast::Receiver<NodeEvent>>,
    /// Fired (or dropped) once this line has handed its work to a profile:
    /// the next line read on the connection may then hand off its own
    /// (see [`connection`]). A batch holds it until it is answered.
    turn: Option<oneshot::Sender<()>>,
}

impl Caller {
    /// Lets the next line on the connection hand off its work.
    fn pass_turn(&mut self) {
        if let Some(turn) = self.turn.take() {
            let _ = turn.send(());
        }
    }
}

/// Serves one connection: reads request lines while earlier ones run (at
/// most `limits.window` lines in flight; then it stops reading, so a client
/// that sends faster than the node answers is held back by the socket, not
/// buffered here), writes each reply as soon as it is ready, and, once
/// subscribed, events between them. Everything is written by this one task.
///
/// Order: lines hand their work to profiles in the order they were read.
/// Each line waits for the previous one to have handed its work off (its
/// command queued on the profile's task, see [`on_profile`]) or to be
/// answered; after that the calls run concurrently and are answered as they
/// complete. A profile's task runs what it is handed in order, so two
/// `message.send` calls read one after the other are sent in that order.
///
/// Closing: at end of input, a bad line, or the node stopping, it stops
/// reading and following events, writes the replies of the lines still in
/// flight (a call the stopping node did not run is answered `-32007`), and
/// closes. A write the client does not take within `limits.write_timeout`
/// closes it at once.
async fn connection<R, W>(read: R, mut write: W, state: Arc<ControlState>, permits: Arc<Semaphore>, limits: Limits)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut lines = BufReader::new(read);
    let mut events: Option<broadcast::Receiver<NodeEvent>> = None;
    let mut stop = state.stop.subscribe();
    // The line being read: a part read stays here when the read is
    // interrupted (a reply or an event to write), with its share of the
    // node's bound in `permit`.
    let mut buf = Vec::new();
    let mut permit: Option<OwnedSemaphorePermit> = None;
    let mut in_flight = FuturesUnordered::new();
    // Fires once the last line read has handed off its work.
    let mut turn: Option<oneshot::Receiver<()>> = None;
    // No more reading: end of input, a bad line, or the node stops.
    let mut closing = false;
    // Written last, after the replies in flight (a bad line's error).
    let mut last_words: Option<Value> = None;
    loop {
        if closing && in_flight.is_empty() {
            break;
        }
        let idle = Duration::from_millis(state.idle_ms.load(std::sync::atomic::Ordering::Relaxed));
        let room = !closing && in_flight.len() < limits.window;
        tokio::select! {
            biased;
            _ = stop.changed(), if !closing => {
                closing = true;
                events = None;
            }
            Some(answered) = in_flight.next(), if !in_flight.is_empty() => {
                let Answered { reply, events: subscribed, _permit } = answered;
                if let Some(reply) = reply
                    && write_line_within(&mut write, &reply, limits.write_timeout).await.is_err()
                {
                    break;
                }
                // Only now: the events follow `subscribe`'s reply.
                if events.is_none() && !closing {
                    events = subscribed;
                }
            }
            read = next_line(&mut lines, &mut buf, &mut permit, &permits), if room => match read {
                Ok(0) => {
                    closing = true;
                    permit = None;
                }
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).into_owned();
                    buf.clear();
                    let Some(share) = permit.take() else { continue };
                    if line.trim().is_empty() {
                        continue;
                    }
                    let (handed_off, next) = oneshot::channel();
                    let after = turn.replace(next);
                    in_flight.push(answer_line(line, state.clone(), after, handed_off, share));
                }
                Err(e) => {
                    closing = true;
                    permit = None;
                    buf.clear();
                    last_words = Some(error_response(Value::Null, RpcError::new(codes::INVALID_REQUEST, e.to_string())));
                }
            },
            event = next_event(&mut events), if !closing => {
                let note = json!({"jsonrpc": "2.0", "method": "event", "params": event});
                if write_line_within(&mut write, &note, limits.write_timeout).await.is_err() {
                    break;
                }
            }
            // Nothing asked, nothing in flight and no events followed: the
            // slot is freed.
            _ = tokio::time::sleep(idle), if events.is_none() && in_flight.is_empty() && !closing => {
                let note = RpcError::new(codes::IDLE, format!("closing an idle control connection after {} s", idle.as_secs()));
                let _ = write_line_within(&mut write, &error_response(Value::Null, note), limits.write_timeout).await;
                break;
            }
        }
    }
    if let Some(words) = last_words {
        let _ = write_line_within(&mut write, &words, limits.write_timeout).await;
    }
}

/// Answers one line once the line before it on its connection has handed
/// off its work (`after` fires or is dropped).
async fn answer_line(
    line: String,
    state: Arc<ControlState>,
    after: Option<oneshot::Receiver<()>>,
    handed_off: oneshot::Sender<()>,
    permit: OwnedSemaphorePermit,
) -> Answered {
    if let Some(after) = after {
        let _ = after.await;
    }
    let mut caller = Caller { events: None, turn: Some(handed_off) };
    let reply = handle_line(&line, &state, &mut caller).await;
    // Answered: whatever it did not hand off, it never will.
    caller.pass_turn();
    Answered { reply, events: caller.events, _permit: permit }
}

async fn next_event(events: &mut Option<broadcast::Receiver<NodeEvent>>) -> Value {
    match events {
        None => std::future::pending().await,
        Some(rx) => loop {
            match rx.recv().await {
                Ok(e) => return serde_json::to_value(e).unwrap_or(Value::Null),
                Err(broadcast::error::RecvError::Lagged(n)) => return json!({"event": "lagged", "missed": n}),
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        },
    }
}

/// Reads the next request line into `buf`. Before the first byte of a line
/// it waits for input, then takes a share of the node's bound on requests
/// in flight into `permit` (so an idle connection holds none). Safe to
/// cancel: what was read of the line stays in `buf`, the share in `permit`.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    permit: &mut Option<OwnedSemaphorePermit>,
    permits: &Arc<Semaphore>,
) -> std::io::Result<usize> {
    if permit.is_none() {
        if r.fill_buf().await?.is_empty() {
            return Ok(0);
        }
        match permits.clone().acquire_owned().await {
            Ok(share) => *permit = Some(share),
            // Never closed.
            Err(_) => return Ok(0),
        }
    }
    read_line(r, buf).await
}

/// Reads one line, refusing lines over [`MAX_LINE`]. Safe to cancel: what
/// was read stays in `buf`.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    loop {
        let available = r.fill_buf().await?;
        if available.is_empty() {
            return Ok(buf.len());
        }
        let (used, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (available.len(), false),
        };
        buf.extend_from_slice(&available[..used]);
        r.consume(used);
        if buf.len() > MAX_LINE {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "request line over 1 MiB"));
        }
        if done {
            return Ok(buf.len());
        }
    }
}

async fn write_line<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, value: &Value) -> std::io::Result<()> {
    let mut bytes = serde_json::to_vec(value).unwrap_or_default();
    bytes.push(b'\n');
    w.write_all(&bytes).await?;
    w.flush().await
}

/// [`write_line`], given up (an error) if the client does not take the
/// line within `limit`.
async fn write_line_within<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    value: &Value,
    limit: Duration,
) -> std::io::Result<()> {
    match tokio::time::timeout(limit, write_line(w, value)).await {
        Ok(written) => written,
        Err(_) => {
            tracing::debug!("a control client took no reply for {} s; closing it", limit.as_secs());
            Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "the client does not read"))
        }
    }
}

fn error_response(id: Value, error: RpcError) -> Value {
    json!({"jsonrpc": "2.0", "error": error, "id": id})
}

/// Handles one line: a request, a notification or a batch.
async fn handle_line(line: &str, state: &ControlState, caller: &mut Caller) -> Option<Value> {
    let parsed: Value = match serde_json::from_str(line) {
        Ok(v) => v,
        Err(e) => {
            return Some(error_response(Value::Null, RpcError::new(codes::PARSE_ERROR, format!("parse error: {e}"))));
        }
    };
    match parsed {
        Value::Array(items) if items.is_empty() => {
            Some(error_response(Value::Null, RpcError::new(codes::INVALID_REQUEST, "empty batch")))
        }
        Value::Array(items) if items.len() > MAX_BATCH_REQUESTS => Some(error_response(
            Value::Null,
            RpcError::new(
                codes::TOO_LARGE,
                format!("a batch holds at most {MAX_BATCH_REQUESTS} requests; this one has {}", items.len()),
            ),
        )),
        Value::Array(items) => {
            // A batch hands off its requests one after the other, and the
            // next line waits until the whole batch is answered.
            let held = caller.turn.take();
            let mut out = Vec::new();
            let mut size = 0usize;
            for item in items {
                if size >= MAX_REPLY {
                    // Not run: the replies so far already reach the bound.
                    let id = item.get("id").cloned();
                    if let Some(id) = id {
                        out.push(error_response(id, too_large()));
                    }
                    continue;
                }
                if let Some(r) = handle_request(item, state, caller).await {
                    let r = bounded(r);
                    size += serde_json::to_vec(&r).map_or(0, |b| b.len());
                    out.push(r);
                }
            }
            drop(held);
            (!out.is_empty()).then_some(Value::Array(out))
        }
        other => handle_request(other, state, caller).await.map(bounded),
    }
}

fn too_large() -> RpcError {
    RpcError::new(
        codes::TOO_LARGE,
        format!("the reply would be over {MAX_REPLY} bytes: ask for less (a smaller limit, or a page with \"before\")"),
    )
}

/// A response whose encoding is over [`MAX_REPLY`] becomes a
/// [`codes::TOO_LARGE`] error with its id.
fn bounded(response: Value) -> Value {
    if serde_json::to_vec(&response).map_or(0, |b| b.len()) <= MAX_REPLY {
        return response;
    }
    error_response(response.get("id").cloned().unwrap_or(Value::Null), too_large())
}

async fn handle_request(request: Value, state: &ControlState, caller: &mut Caller) -> Option<Value> {
    let Value::Object(obj) = request else {
        return Some(error_response(Value::Null, RpcError::new(codes::INVALID_REQUEST, "a request must be an object")));
    };
    let id = obj.get("id").cloned();
    // A valid id is a string, a number or null; anything else is invalid.
    if let Some(bad) = &id
        && !(bad.is_string() || bad.is_number() || bad.is_null())
    {
        return Some(error_response(
            Value::Null,
            RpcError::new(codes::INVALID_REQUEST, "id must be a string, number or null"),
        ));
    }
    let reply_id = id.clone().unwrap_or(Value::Null);
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Some(error_response(reply_id, RpcError::new(codes::INVALID_REQUEST, "\"jsonrpc\" must be \"2.0\"")));
    }
    let Some(Value::String(method)) = obj.get("method") else {
        return Some(error_response(reply_id, RpcError::new(codes::INVALID_REQUEST, "\"method\" must be a string")));
    };
    let params = match obj.get("params") {
        None => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p.clone(),
        Some(Value::Array(_)) => {
            return id.map(|id| error_response(id, RpcError::params("params must be an object (named parameters)")));
        }
        Some(_) => {
            return Some(error_response(reply_id, RpcError::new(codes::INVALID_REQUEST, "params must be an object")));
        }
    };
    let result = call(method, &params, state, caller).await;
    // Notifications get no response, even on error.
    let id = id?;
    Some(match result {
        Ok(value) => json!({"jsonrpc": "2.0", "result": value, "id": id}),
        Err(error) => error_response(id, error),
    })
}

// ---- parameters ------------------------------------------------------------------

fn str_param<'a>(params: &'a Value, name: &str) -> Result<&'a str, RpcError> {
    params
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| RpcError::params(format!("missing string parameter \"{name}\"")))
}

fn opt_str<'a>(params: &'a Value, name: &str) -> Result<Option<&'a str>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(RpcError::params(format!("\"{name}\" must be a string"))),
    }
}

fn opt_u64(params: &Value, name: &str) -> Result<Option<u64>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_u64().map(Some).ok_or_else(|| RpcError::params(format!("\"{name}\" must be a non-negative integer")))
        }
    }
}

fn opt_bool(params: &Value, name: &str) -> Result<Option<bool>, RpcError> {
    match params.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(RpcError::params(format!("\"{name}\" must be true or false"))),
    }
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= 1440).then_some(h * 60 + m)
}

fn hex_id<const N: usize>(s: &str) -> Result<[u8; N], RpcError> {
    kabar_crypto::hex::decode(s)
        .and_then(|b| <[u8; N]>::try_from(b).ok())
        .ok_or_else(|| RpcError::params(format!("{s:?} is not a {}-digit hex id", 2 * N)))
}

/// Finds a contact by display name (or PeerId).
fn contact_by(engine: &Engine, who: &str) -> Result<(ContactId, kabar_storage::Contact), RpcError> {
    let store = engine.store();
    if let Some(found) = store.contact_by_name(who)? {
        return Ok(found);
    }
    // A PeerId names the Ed25519 key: one keyed lookup, no scan.
    who.parse::<libp2p::PeerId>()
        .ok()
        .and_then(|peer| crate::card::signing_key_of(&peer))
        .map(|key| store.contact_by_peer_key(&key))
        .transpose()?
        .flatten()
        .ok_or_else(|| RpcError::new(codes::NOT_FOUND, format!("no contact named {who:?}; see `kabar contact list`")))
}

fn message_json(seq: u64, m: &kabar_storage::MessageRecord) -> Value {
    let parsed = Message::decode(&m.body).ok();
    json!({
        "id": kabar_crypto::hex::encode(&m.id),
        "seq": seq,
        "direction": match m.direction { Direction::Outgoing => "out", Direction::Incoming => "in" },
        "status": m.status,
        "sent_at_ms": m.sent_at_ms,
        "received_at_ms": m.received_at_ms,
        // The sender's clock, for information only: marked when it says
        // the message was sent after it arrived (more than a minute).
        "sent_at_in_future": m.received_at_ms.is_some_and(|r| m.sent_at_ms > r.saturating_add(60_000)),
        "sender_seq": parsed.as_ref().map(|p| p.seq),
        "content": parsed.map(|p| serde_json::to_value(p.content).unwrap_or(Value::Null)),
    })
}

fn contact_json(c: &kabar_storage::Contact) -> Value {
    json!({
        "name": c.display_name,
        "peer_id": crate::card::peer_id_of(&c.identity.signing).to_string(),
        "kind": c.identity.kind.to_string(),
        "verified": c.verified,
        "blocked": c.blocked,
        "request": c.request,
        "identity_changed": c.identity_change.is_some(),
        "addresses": c.addresses,
        // A one-time prekey fetched over /kabar/prekey/1 waits for the next
        // session start with this contact.
        "one_time_prekey": c.one_time_prekey.is_some(),
    })
}

/// Runs `job` on the named profile's task. Once the job is handed off,
/// the next line on the caller's connection may hand off its own.
async fn on_profile(
    state: &ControlState,
    params: &Value,
    job: EngineJob,
    caller: &mut Caller,
) -> Result<Value, RpcError> {
    let name = match opt_str(params, "profile")? {
        Some(n) => n.to_string(),
        None => state
            .profiles
            .first()
            .map(|(n, _)| n.clone())
            .ok_or_else(|| RpcError::new(codes::NOT_FOUND, "no profiles"))?,
    };
    let handle = state
        .profiles
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, h)| h.clone())
        .ok_or_else(|| RpcError::new(codes::NOT_FOUND, format!("no profile named {name:?}")))?;
    let handed = hand_off(&name, &handle, |tx| Command::Job(job, tx)).await;
    caller.pass_turn();
    wait_reply(&name, &handle, handed?).await?
}

/// Sends a profile's task a command carrying a reply channel, and waits for
/// the reply.
async fn ask<T>(
    name: &str,
    handle: &ProfileHandle,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<T, RpcError> {
    let handed = hand_off(name, handle, command).await?;
    wait_reply(name, handle, handed).await
}

/// Queues a command carrying a reply channel on a profile's task (the
/// first half of [`ask`]); returns the channel.
async fn hand_off<T>(
    name: &str,
    handle: &ProfileHandle,
    command: impl FnOnce(oneshot::Sender<T>) -> Command,
) -> Result<oneshot::Receiver<T>, RpcError> {
    let (tx, rx) = oneshot::channel();
    if handle.commands.send(command(tx)).await.is_err() {
        return Err(gone(name, handle).await);
    }
    Ok(rx)
}

/// Waits for the reply to a command [`hand_off`] queued.
async fn wait_reply<T>(name: &str, handle: &ProfileHandle, rx: oneshot::Receiver<T>) -> Result<T, RpcError> {
    match rx.await {
        Ok(reply) => Ok(reply),
        Err(_) => Err(gone(name, handle).await),
    }
}

/// Why a profile's task dropped a call unanswered: it failed (the reason
/// `node.info` shows), the node is stopping (its status channel closes when
/// the task ends), or, if neither shows within [`GONE_WAIT`], its engine is
/// so far behind that it refused the call without running it
/// ([`crate::worker::QUEUE_MAX`]).
async fn gone(name: &str, handle: &ProfileHandle) -> RpcError {
    let mut status = handle.status.clone();
    match tokio::time::timeout(GONE_WAIT, status.wait_for(|s| s.failed.is_some())).await {
        Ok(Ok(s)) => {
            RpcError::new(codes::DAMAGED, format!("profile {name} stopped: {}", s.failed.as_deref().unwrap_or("")))
        }
        Ok(Err(_)) => RpcError::new(codes::SHUTTING_DOWN, "the node is shutting down"),
        Err(_) => RpcError::new(
            codes::BUSY,
            format!(
                "profile {name} is busy: its engine is too far behind (a slow disk?) and did not run this call; try again"
            ),
        ),
    }
}

/// How long [`gone`] waits to learn why a profile dropped a call.
const GONE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The profile named by `params.profile`; without one, the only profile.
/// (Mailboxes are per profile: registering one for every profile at once
/// would tie the profiles together at the host by time and address.)
fn one_profile(state: &ControlState, params: &Value) -> Result<(String, ProfileHandle), RpcError> {
    let mut selected = selected_profiles(state, params)?;
    if selected.len() != 1 {
        return Err(RpcError::params("name the profile (\"profile\"): this node runs several"));
    }
    Ok(selected.remove(0))
}

/// The profile named by `params.profile`, or every profile if none is named.
fn selected_profiles(state: &ControlState, params: &Value) -> Result<Vec<(String, ProfileHandle)>, RpcError> {
    match opt_str(params, "profile")? {
        None => Ok(state.profiles.clone()),
        Some(name) => state
            .profiles
            .iter()
            .find(|(n, _)| n == name)
            .map(|p| vec![p.clone()])
            .ok_or_else(|| RpcError::new(codes::NOT_FOUND, format!("no profile named {name:?}"))),
    }
}

fn ok(value: Value) -> crate::network::JobResult {
    Ok((value, Vec::new()))
}

/// Dispatches one method.
async fn call(method: &str, params: &Value, state: &ControlState, caller: &mut Caller) -> Result<Value, RpcError> {
    let p = params.clone();
    let job: EngineJob = match method {
        "node.info" => {
            let profiles: Vec<ProfileStatus> = state.profiles.iter().map(|(_, h)| h.status.borrow().clone()).collect();
            return Ok(json!({"version": env!("CARGO_PKG_VERSION"), "profiles": profiles}));
        }
        "profile.list" => {
            let profiles: Vec<Value> = state
                .profiles
                .iter()
                .map(|(_, h)| {
                    let s = h.status.borrow();
                    json!({"name": s.name, "kind": s.kind, "peer_id": s.peer_id})
                })
                .collect();
            return Ok(Value::Array(profiles));
        }
        "node.stop" => {
            let _ = state.stop.send(true);
            return Ok(json!({"stopping": true}));
        }
        "subscribe" => {
            caller.events = Some(state.events.subscribe());
            return Ok(json!({"subscribed": true}));
        }
        "node.dial" => {
            let addr: libp2p::Multiaddr =
                str_param(params, "address")?.parse().map_err(|e| RpcError::params(format!("bad multiaddr: {e}")))?;
            // From one profile only: dialling from all at once would show
            // the peer that they run on one node.
            let (name, handle) = one_profile(state, params)?;
            if handle.commands.send(Command::Dial(addr.clone())).await.is_err() {
                return Err(gone(&name, &handle).await);
            }
            return Ok(json!({"dialing": addr.to_string(), "profile": name}));
        }
        "relay.add" | "relay.remove" => {
            let address: libp2p::Multiaddr =
                str_param(params, "address")?.parse().map_err(|e| RpcError::params(format!("bad multiaddr: {e}")))?;
            if crate::network::relay_peer(&address).is_none() {
                return Err(RpcError::new(codes::INVALID_VALUE, "a relay address must end in /p2p/<relay PeerId>"));
            }
            let change = if method == "relay.add" {
                crate::network::RelayChange::Add(address)
            } else {
                crate::network::RelayChange::Remove(address)
            };
            let mut out = serde_json::Map::new();
            for (name, handle) in selected_profiles(state, params)? {
                let list = ask(&name, &handle, |tx| Command::Relay(change.clone(), tx)).await??;
                out.insert(name, json!(list));
            }
            return Ok(json!({"relays": out}));
        }
        "mailbox.add" | "mailbox.remove" => {
            let address = str_param(params, "address")?;
            let change = if method == "mailbox.add" {
                let address: libp2p::Multiaddr =
                    address.parse().map_err(|e| RpcError::params(format!("bad multiaddr: {e}")))?;
                if crate::network::relay_peer(&address).is_none() {
                    return Err(RpcError::new(codes::INVALID_VALUE, "a mailbox address must end in /p2p/<PeerId>"));
                }
                crate::network::MailboxChange::Add(address)
            } else {
                crate::network::MailboxChange::Remove(address.to_string())
            };
            let (name, handle) = one_profile(state, params)?;
            let list = ask(&name, &handle, |tx| Command::Mailbox(change, tx)).await??;
            return Ok(json!({"profile": name, "mailboxes": list}));
        }
        "mailbox.fetch" => {
            let (name, handle) = one_profile(state, params)?;
            let (answer, fetched) = oneshot::channel();
            let change = crate::network::MailboxChange::Fetch(answer);
            ask(&name, &handle, |tx| Command::Mailbox(change, tx)).await??;
            let Ok(mut result) = fetched.await else { return Err(gone(&name, &handle).await) };
            result["profile"] = json!(name);
            return Ok(result);
        }
        "mailbox.list" => {
            let mut out = serde_json::Map::new();
            for (name, handle) in selected_profiles(state, params)? {
                out.insert(name, json!(handle.status.borrow().mailboxes));
            }
            return Ok(json!({"mailboxes": out}));
        }
        "relay.list" => {
            let mut out = serde_json::Map::new();
            for (name, handle) in selected_profiles(state, params)? {
                out.insert(name, json!(handle.status.borrow().relays));
            }
            return Ok(json!({"relays": out}));
        }
        "card.get" => Box::new(move |engine, status| {
            let name = opt_str(&p, "name")?.map(str::to_string).unwrap_or_else(|| status.name.clone());
            let identity = engine.store().identity()?.public();
            let spk = engine.store().current_signed_prekey()?.public();
            // Public addresses, relay circuits, then listen addresses
            // (crate::addresses::advertised).
            let addresses = status.advertised.iter().filter_map(|a| a.parse().ok()).collect();
            let mailboxes = engine.card_mailboxes()?;
            let card = ContactCard { identity, signed_prekey: spk, display_name: name, addresses, mailboxes };
            ok(json!({"card": card.to_uri(), "peer_id": card.peer_id().to_string()}))
        }),
        "contact.add" => Box::new(move |engine, _| {
            let card = ContactCard::from_uri(str_param(&p, "card")?)
                .map_err(|e| RpcError::new(codes::BAD_CARD, e.to_string()))?;
            let name = opt_str(&p, "name")?.map(str::to_string).unwrap_or_else(|| card.display_name.clone());
            crate::engine::check_contact_name(&name)?;
            let store = engine.store();
            if store.identity()?.public().signing == card.identity.signing {
                return Err(RpcError::new(codes::INVALID_VALUE, "that is this profile's own card"));
            }
            if let Some((existing, _)) = store.contact_by_name(&name)?
                && existing != store.contact_id(&card.identity)
            {
                return Err(RpcError::new(codes::INVALID_VALUE, format!("another contact is already named {name:?}")));
            }
            let contact = kabar_storage::Contact {
                peer_id: card.identity.signing.to_vec(),
                identity: card.identity,
                signed_prekey: Some(card.signed_prekey),
                one_time_prekey: None,
                addresses: card.addresses.iter().map(|a| a.to_string()).collect(),
                display_name: name,
                verified: false,
                blocked: false,
                identity_change: None,
                added_at_ms: now_ms(),
                request: false,
            };
            // Adding someone's card settles a stranger with that identity
            // (one transaction with the contact and its mailboxes).
            let (id, changed) = engine.add_contact(contact, &card.mailboxes)?;
            let stored =
                engine.store().contact(&id)?.ok_or_else(|| RpcError::new(codes::INTERNAL, "contact vanished"))?;
            let mut v = contact_json(&stored);
            v["identity_change_warning"] = json!(changed);
            let actions = engine.on_peer_reachable(&card.identity.signing, now_ms())?;
            Ok((v, actions))
        }),
        "contact.list" => Box::new(move |engine, _| {
            let list: Vec<Value> = engine.store().contacts()?.iter().map(|(_, c)| contact_json(c)).collect();
            ok(Value::Array(list))
        }),
        "contact.verify" => Box::new(move |engine, _| {
            let (id, c) = contact_by(engine, str_param(&p, "name")?)?;
            let ours = engine.store().identity()?.public();
            let number = SafetyNumber::new(&ours, &c.identity);
            let confirm = opt_bool(&p, "confirm")?.unwrap_or(false);
            if confirm {
                engine.store().update_contact(&id, |c| {
                    c.verified = true;
                    c.identity_change = None;
                })?;
            }
            ok(
                json!({"name": c.display_name, "safety_number": number.display(), "digits": number.digits(), "qr_payload": number.qr_payload(), "verified": confirm || c.verified}),
            )
        }),
        "contact.block" | "contact.unblock" | "request.block" => {
            let block = method != "contact.unblock";
            Box::new(move |engine, _| {
                let (id, _) = contact_by(engine, str_param(&p, "name")?)?;
                // Also revokes (or restores) its deposit tag in our mailboxes.
                let (c, actions) = engine.set_blocked(&id, block)?;
                Ok((contact_json(&c), actions))
            })
        }
        "request.list" => Box::new(move |engine, _| {
            let list: Vec<Value> = engine
                .store()
                .contacts()?
                .iter()
                .filter(|(_, c)| c.request && !c.blocked)
                .map(|(_, c)| contact_json(c))
                .collect();
            ok(Value::Array(list))
        }),
        "request.accept" => Box::new(move |engine, _| {
            let (id, _) = contact_by(engine, str_param(&p, "name")?)?;
            let rename = opt_str(&p, "rename")?.map(str::to_string);
            ok(contact_json(&engine.accept_request(&id, rename)?))
        }),
        "message.send" => Box::new(move |engine, _| {
            let (id, _) = contact_by(engine, str_param(&p, "to")?)?;
            let text = str_param(&p, "text")?;
            if text.is_empty() {
                return Err(RpcError::params("text is empty"));
            }
            let (message_id, actions) = engine.send(&id, Content::text(text), now_ms(), &mut rand::rng())?;
            Ok((json!({"message_id": kabar_crypto::hex::encode(&message_id)}), actions))
        }),
        "message.send_batch" => Box::new(move |engine, _| {
            let (id, _) = contact_by(engine, str_param(&p, "to")?)?;
            let texts =
                p.get("texts").and_then(Value::as_array).ok_or_else(|| RpcError::params("missing \"texts\" array"))?;
            if texts.is_empty() || texts.len() > crate::wire::MAX_BATCH {
                return Err(RpcError::params(format!("\"texts\" needs 1 to {} texts", crate::wire::MAX_BATCH)));
            }
            let mut contents = Vec::with_capacity(texts.len());
            for t in texts {
                match t.as_str() {
                    Some(text) if !text.is_empty() => contents.push(Content::text(text)),
                    _ => return Err(RpcError::params("each text must be a non-empty string")),
                }
            }
            let (ids, actions) = engine.send_many(&id, contents, now_ms(), &mut rand::rng())?;
            let ids: Vec<String> = ids.iter().map(|i| kabar_crypto::hex::encode(i)).collect();
            Ok((json!({"message_ids": ids}), actions))
        }),
        "message.status" => Box::new(move |engine, _| {
            let id = hex_id::<16>(str_param(&p, "message_id")?)?;
            let (_, seq, record) =
                engine.store().message(&id)?.ok_or_else(|| RpcError::new(codes::NOT_FOUND, "no such message"))?;
            ok(message_json(seq, &record))
        }),
        "message.history" => Box::new(move |engine, _| {
            let (id, c) = contact_by(engine, str_param(&p, "with")?)?;
            let limit = opt_u64(&p, "limit")?.unwrap_or(50);
            if limit == 0 || limit > MAX_HISTORY_LIMIT {
                return Err(RpcError::params(format!("\"limit\" must be 1 to {MAX_HISTORY_LIMIT}")));
            }
            let limit = limit as usize;
            let before = opt_u64(&p, "before")?;
            // In the order messages were stored here (sent, or arrived): a
            // sender's clock cannot move its message anywhere else (a date
            // in 2100 does not stay "newest" for ever). Within a run of
            // messages that arrived with nothing of ours between them, the
            // sender's own numbering orders them (retransmissions and
            // mailboxes may deliver them out of order).
            let mut messages: Vec<(u64, kabar_storage::MessageRecord)> = engine
                .store()
                .history(&id, limit * 2, before)?
                .into_iter()
                .filter(|(_, m)| Message::decode(&m.body).map(|x| x.content.is_visible()).unwrap_or(true))
                .collect();
            for run in messages.chunk_by_mut(|a, b| a.1.direction == b.1.direction) {
                if run[0].1.direction == Direction::Incoming {
                    run.sort_by_key(|(seq, m)| Message::decode(&m.body).map_or(*seq, |x| x.seq));
                }
            }
            let start = messages.len().saturating_sub(limit);
            let list: Vec<Value> = messages[start..].iter().map(|(s, m)| message_json(*s, m)).collect();
            ok(json!({"contact": c.display_name, "messages": list}))
        }),
        "conversation.list" => Box::new(move |engine, _| {
            let store = engine.store();
            let labels: HashMap<[u8; 16], String> = match store.kind() {
                ProfileKind::Business => store.labels()?.into_iter().map(|l| (l.id, l.name)).collect(),
                ProfileKind::Personal => HashMap::new(),
            };
            let mut list = Vec::new();
            for (id, conv) in store.conversations()? {
                let Some(c) = store.contact(&id)? else { continue };
                let last = store.history(&id, 1, None)?.pop();
                list.push(json!({
                    "contact": c.display_name,
                    "unread": conv.unread,
                    "status": match conv.status { ConversationStatus::Open => "open", ConversationStatus::Closed => "closed" },
                    "labels": conv.labels.iter().filter_map(|l| labels.get(l)).collect::<Vec<_>>(),
                    "last_activity_ms": conv.last_activity_ms,
                    "request": c.request,
                    "last_message": last.map(|(s, m)| message_json(s, &m)),
                }));
            }
            list.sort_by_key(|v| std::cmp::Reverse(v["last_activity_ms"].as_u64().unwrap_or(0)));
            ok(Value::Array(list))
        }),
        "conversation.read" => Box::new(move |engine, _| {
            let (id, _) = contact_by(engine, str_param(&p, "with")?)?;
            let actions = engine.mark_read(&id, now_ms(), &mut rand::rng())?;
            Ok((json!({"read": true}), actions))
        }),
        "business.close" | "business.reopen" => {
            let close = method == "business.close";
            Box::new(move |engine, _| {
                if engine.store().kind() != ProfileKind::Business {
                    return Err(RpcError::new(codes::NOT_BUSINESS, "closing conversations needs a business profile"));
                }
                let (id, _) = contact_by(engine, str_param(&p, "with")?)?;
                engine.store().update_conversation(&id, |c| {
                    c.status = if close { ConversationStatus::Closed } else { ConversationStatus::Open };
                })?;
                ok(json!({"status": if close { "closed" } else { "open" }}))
            })
        }
        "business.profile.get" => Box::new(move |engine, _| {
            ok(serde_json::to_value(engine.store().business_profile()?).unwrap_or(Value::Null))
        }),
        "business.profile.set" => Box::new(move |engine, _| {
            let mut profile: BusinessProfile = engine.store().business_profile()?;
            for (field, slot) in [
                ("name", &mut profile.name),
                ("category", &mut profile.category),
                ("about", &mut profile.about),
                ("description", &mut profile.description),
                ("address", &mut profile.address),
                ("email", &mut profile.email),
                ("website", &mut profile.website),
            ] {
                if let Some(v) = opt_str(&p, field)? {
                    *slot = v.to_string();
                }
            }
            engine.store().set_business_profile(&profile)?;
            ok(serde_json::to_value(profile).unwrap_or(Value::Null))
        }),
        "business.hours.set" => Box::new(move |engine, _| {
            // {"days": {"mon": "09:00-17:00", ...}, "utc_offset_minutes": 60}
            let mut hours = BusinessHours::default();
            let names = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
            if let Some(days) = p.get("days").and_then(Value::as_object) {
                for (key, value) in days {
                    let day = names
                        .iter()
                        .position(|n| n == key)
                        .ok_or_else(|| RpcError::params(format!("unknown day {key:?} (use mon…sun)")))?;
                    let text = value.as_str().ok_or_else(|| RpcError::params("hours must be \"HH:MM-HH:MM\""))?;
                    let (a, b) =
                        text.split_once('-').ok_or_else(|| RpcError::params("hours must be \"HH:MM-HH:MM\""))?;
                    let (a, b) = (
                        parse_hhmm(a).ok_or_else(|| RpcError::params("bad time"))?,
                        parse_hhmm(b).ok_or_else(|| RpcError::params("bad time"))?,
                    );
                    hours.days[day] = Some((a, b));
                }
            }
            if let Some(v) = p.get("utc_offset_minutes") {
                hours.utc_offset_minutes = v
                    .as_i64()
                    .and_then(|x| i16::try_from(x).ok())
                    .ok_or_else(|| RpcError::params("bad utc_offset_minutes"))?;
            }
            engine.store().set_business_hours(&hours)?;
            ok(serde_json::to_value(hours).unwrap_or(Value::Null))
        }),
        "business.greeting.set" => Box::new(move |engine, _| {
            let mut a = engine.store().automations()?;
            a.greeting = opt_str(&p, "text")?.map(str::to_string);
            engine.store().set_automations(&a)?;
            ok(serde_json::to_value(a).unwrap_or(Value::Null))
        }),
        "business.away.set" => Box::new(move |engine, _| {
            let mut a = engine.store().automations()?;
            let schedule = str_param(&p, "schedule")?;
            a.away_schedule = match schedule {
                "off" => AwaySchedule::Off,
                "always" => AwaySchedule::Always,
                "outside-hours" => AwaySchedule::OutsideHours,
                window => {
                    let (s, e) = window
                        .split_once('-')
                        .ok_or_else(|| RpcError::params("schedule: always, outside-hours, off or HH:MM-HH:MM"))?;
                    AwaySchedule::Window {
                        start: parse_hhmm(s).ok_or_else(|| RpcError::params("bad start time"))?,
                        end: parse_hhmm(e).ok_or_else(|| RpcError::params("bad end time"))?,
                    }
                }
            };
            if let Some(text) = opt_str(&p, "text")? {
                a.away_message = Some(text.to_string());
            }
            if a.away_schedule == AwaySchedule::Off {
                a.away_message = None;
            } else if a.away_message.is_none() {
                return Err(RpcError::params("an away schedule needs a \"text\""));
            }
            engine.store().set_automations(&a)?;
            ok(serde_json::to_value(a).unwrap_or(Value::Null))
        }),
        "business.catalog.add" => Box::new(move |engine, _| {
            let item = CatalogItem {
                id: [0; 8],
                name: str_param(&p, "name")?.to_string(),
                price_minor: opt_u64(&p, "price_minor")?.ok_or_else(|| RpcError::params("missing \"price_minor\""))?,
                currency: opt_str(&p, "currency")?.unwrap_or("EUR").to_string(),
                description: opt_str(&p, "description")?.unwrap_or("").to_string(),
                available: opt_bool(&p, "available")?.unwrap_or(true),
            };
            let item = engine.store().put_catalog_item(item)?;
            ok(catalog_json(&item))
        }),
        "business.catalog.list" => {
            Box::new(move |engine, _| ok(Value::Array(engine.store().catalog()?.iter().map(catalog_json).collect())))
        }
        "business.catalog.remove" => Box::new(move |engine, _| {
            engine.store().remove_catalog_item(&hex_id::<8>(str_param(&p, "id")?)?)?;
            ok(json!({"removed": true}))
        }),
        "business.reply.add" => Box::new(move |engine, _| {
            let reply = QuickReply {
                shortcut: str_param(&p, "shortcut")?.trim_start_matches('/').to_string(),
                text: str_param(&p, "text")?.to_string(),
            };
            engine.store().put_quick_reply(&reply)?;
            ok(serde_json::to_value(reply).unwrap_or(Value::Null))
        }),
        "business.reply.list" => {
            Box::new(move |engine, _| ok(serde_json::to_value(engine.store().quick_replies()?).unwrap_or(Value::Null)))
        }
        "business.reply.remove" => Box::new(move |engine, _| {
            engine.store().remove_quick_reply(str_param(&p, "shortcut")?.trim_start_matches('/'))?;
            ok(json!({"removed": true}))
        }),
        "business.label.add" => Box::new(move |engine, _| {
            let label =
                engine.store().add_label(str_param(&p, "name")?, opt_str(&p, "colour")?.unwrap_or("#607d8b"))?;
            ok(json!({"id": kabar_crypto::hex::encode(&label.id), "name": label.name, "colour": label.colour}))
        }),
        "business.label.list" => Box::new(move |engine, _| {
            let labels: Vec<Value> = engine
                .store()
                .labels()?
                .iter()
                .map(|l| json!({"id": kabar_crypto::hex::encode(&l.id), "name": l.name, "colour": l.colour}))
                .collect();
            ok(Value::Array(labels))
        }),
        "business.label.apply" | "business.label.unapply" => {
            let apply = method == "business.label.apply";
            Box::new(move |engine, _| {
                let label_name = str_param(&p, "label")?;
                let label = engine
                    .store()
                    .labels()?
                    .into_iter()
                    .find(|l| l.name == label_name)
                    .ok_or_else(|| RpcError::new(codes::NOT_FOUND, format!("no label named {label_name:?}")))?;
                let (id, _) = contact_by(engine, str_param(&p, "with")?)?;
                let conv = engine.store().update_conversation(&id, |c| {
                    c.labels.retain(|l| *l != label.id);
                    if apply {
                        c.labels.push(label.id);
                    }
                })?;
                ok(json!({"labels": conv.labels.len()}))
            })
        }
        "business.label.remove" => Box::new(move |engine, _| {
            let label_name = str_param(&p, "name")?;
            let label = engine
                .store()
                .labels()?
                .into_iter()
                .find(|l| l.name == label_name)
                .ok_or_else(|| RpcError::new(codes::NOT_FOUND, format!("no label named {label_name:?}")))?;
            engine.store().remove_label(&label.id)?;
            ok(json!({"removed": true}))
        }),
        "catalog.request" => Box::new(move |engine, _| {
            let (id, _) = contact_by(engine, str_param(&p, "to")?)?;
            let (message_id, actions) = engine.send(&id, Content::CatalogRequest, now_ms(), &mut rand::rng())?;
            Ok((json!({"message_id": kabar_crypto::hex::encode(&message_id)}), actions))
        }),
        "order.place" => Box::new(move |engine, _| {
            let (id, _) = contact_by(engine, str_param(&p, "to")?)?;
            let items =
                p.get("items").and_then(Value::as_array).ok_or_else(|| RpcError::params("missing \"items\" array"))?;
            let mut lines = Vec::new();
            for item in items {
                let line: OrderLine = serde_json::from_value(item.clone())
                    .map_err(|e| RpcError::params(format!("bad order line: {e}")))?;
                if line.quantity == 0 {
                    return Err(RpcError::params("quantity must be at least 1"));
                }
                lines.push(line);
            }
            if lines.is_empty() {
                return Err(RpcError::params("an order needs at least one item"));
            }
            let note = opt_str(&p, "note")?.map(str::to_string);
            let (message_id, actions) =
                engine.send(&id, Content::Order { items: lines, note }, now_ms(), &mut rand::rng())?;
            Ok((json!({"message_id": kabar_crypto::hex::encode(&message_id)}), actions))
        }),
        other => return Err(RpcError::new(codes::METHOD_NOT_FOUND, format!("method not found: {other}"))),
    };
    on_profile(state, params, job, caller).await
}

fn catalog_json(item: &CatalogItem) -> Value {
    json!({
        "id": kabar_crypto::hex::encode(&item.id),
        "name": item.name,
        "price_minor": item.price_minor,
        "currency": item.currency,
        "description": item.description,
        "available": item.available,
    })
}

#[cfg(test)]
mod pipelining_tests {
    //! The connection's framing, driven by hand: fake profiles whose calls
    //! the test answers, in-memory pipes for the socket, and [`Harness::settle`]
    //! to run the connection until it waits only on the test (no sleeps).

    use std::future::Future;
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::task::{Context, Wake, Waker};

    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream};

    use super::*;

    type Answer = oneshot::Sender<Result<Value, RpcError>>;

    /// A profile's task played by the test: calls wait until it answers.
    struct FakeProfile {
        commands: mpsc::Receiver<Command>,
        status: Option<watch::Sender<ProfileStatus>>,
    }

    impl FakeProfile {
        /// The calls handed to it so far, oldest first (their jobs dropped
        /// unrun: the test answers for them).
        fn calls(&mut self) -> Vec<Answer> {
            let mut out = Vec::new();
            while let Ok(command) = self.commands.try_recv() {
                match command {
                    Command::Job(_, answer) => out.push(answer),
                    _ => panic!("only jobs expected"),
                }
            }
            out
        }

        /// Waits for the next call handed to it.
        async fn next_call(&mut self) -> Answer {
            let command = tokio::time::timeout(Duration::from_secs(20), self.commands.recv())
                .await
                .expect("a call reaches the profile")
                .expect("the profile's channel is open");
            match command {
                Command::Job(_, answer) => answer,
                _ => panic!("only jobs expected"),
            }
        }
    }

    fn fake_state(names: &[&str]) -> (Arc<ControlState>, Vec<FakeProfile>) {
        let mut profiles = Vec::new();
        let mut fakes = Vec::new();
        for name in names {
            let (commands, received) = mpsc::channel(64);
            let (status, watched) = watch::channel(ProfileStatus { name: name.to_string(), ..Default::default() });
            profiles.push((name.to_string(), ProfileHandle { commands, status: watched }));
            fakes.push(FakeProfile { commands: received, status: Some(status) });
        }
        let state = ControlState {
            profiles,
            events: broadcast::channel(16).0,
            stop: watch::channel(false).0,
            idle_ms: std::sync::atomic::AtomicU64::new(60_000),
        };
        (Arc::new(state), fakes)
    }

    /// A request line for `profile`'s engine (answered by the test).
    fn slow(id: impl Into<Value>, profile: &str) -> Value {
        json!({"jsonrpc": "2.0", "id": id.into(), "method": "contact.list", "params": {"profile": profile}})
    }

    /// A request the connection answers itself.
    fn fast(id: impl Into<Value>) -> Value {
        json!({"jsonrpc": "2.0", "id": id.into(), "method": "node.info"})
    }

    struct Woken(AtomicBool);

    impl Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// One connection, run by hand.
    struct Harness {
        conn: Pin<Box<dyn Future<Output = ()> + Send>>,
        to_node: DuplexStream,
        from_node: BufReader<DuplexStream>,
        permits: Arc<Semaphore>,
        state: Arc<ControlState>,
        profiles: Vec<FakeProfile>,
        finished: bool,
    }

    impl Harness {
        fn new(profiles: &[&str], limits: Limits) -> Harness {
            let (state, profiles) = fake_state(profiles);
            let (to_node, node_reads) = tokio::io::duplex(1 << 20);
            let (node_writes, from_node) = tokio::io::duplex(1 << 20);
            let permits = Arc::new(Semaphore::new(limits.in_flight));
            let conn = Box::pin(connection(node_reads, node_writes, state.clone(), permits.clone(), limits));
            Harness { conn, to_node, from_node: BufReader::new(from_node), permits, state, profiles, finished: false }
        }

        async fn send(&mut self, requests: &[Value]) {
            let mut bytes = Vec::new();
            for r in requests {
                bytes.extend(serde_json::to_vec(r).unwrap());
                bytes.push(b'\n');
            }
            self.to_node.write_all(&bytes).await.unwrap();
        }

        /// Polls the connection until a poll ends with nothing having woken
        /// it: it then waits only on the test (input, an answer, a stop).
        async fn settle(&mut self) {
            let woken = Arc::new(Woken(AtomicBool::new(false)));
            let waker = Waker::from(woken.clone());
            for _ in 0..100_000 {
                if self.finished {
                    return;
                }
                woken.0.store(false, Ordering::SeqCst);
                if self.conn.as_mut().poll(&mut Context::from_waker(&waker)).is_ready() {
                    self.finished = true;
                    return;
                }
                if !woken.0.load(Ordering::SeqCst) {
                    return;
                }
                // Lets tokio's cooperative budget refill.
                tokio::task::yield_now().await;
            }
            panic!("the connection never settled");
        }

        /// The lines the node has written so far.
        async fn lines(&mut self) -> Vec<Value> {
            let mut out = Vec::new();
            loop {
                let mut line = String::new();
                match futures::FutureExt::now_or_never(self.from_node.read_line(&mut line)) {
                    Some(Ok(0)) | None => return out,
                    Some(read) => {
                        read.unwrap();
                        out.push(serde_json::from_str(&line).unwrap());
                    }
                }
            }
        }
    }

    fn ids(lines: &[Value]) -> Vec<Value> {
        lines.iter().map(|l| l["id"].clone()).collect()
    }

    const LIMITS: Limits = Limits { window: 4, in_flight: 64, write_timeout: Duration::from_secs(30) };

    #[tokio::test]
    async fn a_full_window_stops_reading_until_a_reply_is_written() {
        let mut h = Harness::new(&["p"], LIMITS);
        let requests: Vec<Value> = (0..10).map(|i| slow(i, "p")).collect();
        h.send(&requests).await;
        h.settle().await;
        // Ten lines wait in the pipe; the connection took the window's four.
        let mut held = h.profiles[0].calls();
        assert_eq!(held.len(), 4, "lines read past the window");
        assert_eq!(h.permits.available_permits(), 60, "each line in flight holds one node-wide permit");
        assert!(h.lines().await.is_empty());
        let mut answered = Vec::new();
        for next in 0..10 {
            held.remove(0).send(Ok(json!(next))).unwrap();
            h.settle().await;
            let lines = h.lines().await;
            assert_eq!(ids(&lines), vec![json!(next)], "one answer, one reply");
            answered.extend(lines);
            // One reply written, one more line read: never more than four.
            held.extend(h.profiles[0].calls());
            assert_eq!(held.len(), (9 - next).min(4), "after {} answers", next + 1);
        }
        assert_eq!(h.permits.available_permits(), 64, "every permit given back");
        for (i, reply) in answered.iter().enumerate() {
            assert_eq!(reply["result"], json!(i), "{reply}");
        }
        assert!(!h.finished);
    }

    #[tokio::test]
    async fn a_fast_reply_overtakes_a_slow_one() {
        let mut h = Harness::new(&["p"], LIMITS);
        h.send(&[slow("slow", "p"), fast("fast")]).await;
        h.settle().await;
        let held = h.profiles[0].calls();
        assert_eq!(held.len(), 1);
        let lines = h.lines().await;
        assert_eq!(ids(&lines), vec![json!("fast")], "node.info answered while contact.list runs");
        assert!(lines[0]["result"]["version"].is_string());
        for answer in held {
            answer.send(Ok(json!("done"))).unwrap();
        }
        h.settle().await;
        let lines = h.lines().await;
        assert_eq!(ids(&lines), vec![json!("slow")]);
        assert_eq!(lines[0]["result"], "done");
    }

    #[tokio::test]
    async fn work_reaches_the_profiles_in_the_order_it_was_read() {
        let mut h = Harness::new(&["p", "q"], Limits { window: 8, ..LIMITS });
        // A batch hands off its requests one after the other; the lines
        // after it wait for it, even to another profile.
        let batch = json!([slow("a1", "p"), slow("a2", "p")]);
        h.send(&[batch, slow("b", "p"), slow("c", "q"), slow("d", "p")]).await;
        h.settle().await;
        let first = h.profiles[0].calls();
        assert_eq!(first.len(), 1, "only the batch's first request is handed off");
        assert!(h.profiles[1].calls().is_empty(), "nothing after the batch is handed off before it is answered");
        first.into_iter().for_each(|c| c.send(Ok(json!("first on p"))).unwrap());
        h.settle().await;
        let second = h.profiles[0].calls();
        assert_eq!(second.len(), 1);
        assert!(h.profiles[1].calls().is_empty());
        second.into_iter().for_each(|c| c.send(Ok(json!("second on p"))).unwrap());
        h.settle().await;
        // The batch answered: the three lines after it are handed off, in
        // their order, and answered in reverse.
        let lines = h.lines().await;
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0][0]["result"], "first on p");
        assert_eq!(lines[0][1]["result"], "second on p");
        let mut on_p = h.profiles[0].calls();
        let on_q = h.profiles[1].calls();
        assert_eq!((on_p.len(), on_q.len()), (2, 1));
        let d = on_p.pop().unwrap();
        d.send(Ok(json!("fourth on p"))).unwrap();
        h.settle().await;
        on_q.into_iter().for_each(|c| c.send(Ok(json!("c first on q"))).unwrap());
        h.settle().await;
        on_p.pop().unwrap().send(Ok(json!("third on p"))).unwrap();
        h.settle().await;
        let lines = h.lines().await;
        assert_eq!(ids(&lines), vec![json!("d"), json!("c"), json!("b")], "answered as they complete");
        assert_eq!(lines[0]["result"], "fourth on p", "d was handed off after b");
        assert_eq!(lines[2]["result"], "third on p");
    }

    #[tokio::test]
    async fn events_start_after_the_subscribe_reply() {
        let mut h = Harness::new(&["p"], LIMITS);
        // Subscribed at once, answered only when the batch is.
        h.send(&[json!([{"jsonrpc": "2.0", "id": "sub", "method": "subscribe"}, slow("slow", "p")])]).await;
        h.settle().await;
        let held = h.profiles[0].calls();
        assert_eq!(held.len(), 1);
        let event = NodeEvent::ContactIdentityChanged { profile: "p".into(), contact: "Bob".into() };
        h.state.events.send(event.clone()).unwrap();
        h.settle().await;
        assert!(h.lines().await.is_empty(), "no event before the reply to subscribe");
        held.into_iter().for_each(|c| c.send(Ok(json!([]))).unwrap());
        h.settle().await;
        let lines = h.lines().await;
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0][0]["result"]["subscribed"], true);
        assert_eq!(lines[1]["method"], "event", "the event sent in between is kept, and follows");
        assert_eq!(lines[1]["params"], serde_json::to_value(event).unwrap());
        // Later events flow while calls are in flight.
        h.send(&[slow("slow2", "p")]).await;
        h.settle().await;
        let _held = h.profiles[0].calls();
        h.state.events.send(NodeEvent::ContactIdentityChanged { profile: "p".into(), contact: "Eve".into() }).unwrap();
        h.settle().await;
        assert_eq!(h.lines().await[0]["params"]["contact"], "Eve");
    }

    #[tokio::test]
    async fn stopping_answers_what_is_in_flight_and_closes() {
        let mut h = Harness::new(&["p"], LIMITS);
        h.send(&[slow(1, "p"), slow(2, "p")]).await;
        h.settle().await;
        let held = h.profiles[0].calls();
        assert_eq!(held.len(), 2);
        // The node stops: the profile's task ends without answering.
        h.state.stop.send(true).unwrap();
        h.settle().await;
        assert!(!h.finished, "the calls in flight are answered first");
        drop(held);
        h.profiles[0].status = None;
        h.settle().await;
        let lines = h.lines().await;
        assert_eq!(ids(&lines).len(), 2);
        for line in &lines {
            assert_eq!(line["error"]["code"], codes::SHUTTING_DOWN, "{line}");
        }
        assert!(h.finished, "then the connection closes");
        let mut rest = Vec::new();
        h.from_node.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_closed_and_others_are_served() {
        let dir = tempfile::tempdir().unwrap();
        let (listener, path) = bind(dir.path()).await.unwrap();
        let (state, mut profiles) = fake_state(&["p"]);
        // The stuck client's window is the whole node's bound: the other
        // client is served only once the stuck one is closed.
        let limits = Limits { window: 16, in_flight: 16, write_timeout: Duration::from_millis(300) };
        let server = tokio::spawn(serve_with(listener, state.clone(), limits));

        let mut stuck = UnixStream::connect(&path).await.unwrap();
        let mut bytes = Vec::new();
        for i in 0..16 {
            bytes.extend(serde_json::to_vec(&slow(i, "p")).unwrap());
            bytes.push(b'\n');
        }
        stuck.write_all(&bytes).await.unwrap();
        // Far more than a socket buffer holds: the first reply's write
        // cannot finish while the client does not read.
        let big = "x".repeat(4 << 20);
        for i in 0..16 {
            let answer = profiles[0].next_call().await;
            answer.send(Ok(if i == 0 { json!(big) } else { json!(i) })).unwrap();
        }

        let other = UnixStream::connect(&path).await.unwrap();
        let (read, mut write) = other.into_split();
        write.write_all(format!("{}\n", fast("other")).as_bytes()).await.unwrap();
        let mut reply = String::new();
        tokio::time::timeout(Duration::from_secs(20), BufReader::new(read).read_line(&mut reply))
            .await
            .expect("the other client is answered once the stuck one is closed")
            .unwrap();
        let reply: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(reply["id"], "other");

        // The stuck client finds its connection closed, its replies cut.
        let mut got = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), stuck.read_to_end(&mut got))
            .await
            .expect("the stuck connection is closed")
            .unwrap();
        assert!(got.len() < big.len(), "not even the first reply was finished");
        let _ = state.stop.send(true);
        server.await.unwrap();
    }
}
