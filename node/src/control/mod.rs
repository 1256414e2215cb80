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
//!
//! ## Layout
//! - this file: the socket, connections, framing, pipelining and limits,
//!   and handing a call to a profile's task ([`on_profile`]).
//! - `dispatch.rs`: routes a method by its namespace.
//! - one file per namespace, each parsing its parameters, calling one
//!   typed engine method (`crate::ops`, `crate::engine`) or the profile's
//!   task, and turning the result into JSON: `node.rs` (`node.*`,
//!   `profile.list`, `subscribe`), `relay.rs`, `mailbox.rs`, `card.rs`,
//!   `contact.rs` (`contact.*`, `request.*`), `message.rs`,
//!   `conversation.rs`, `business.rs`, `customer.rs` (`catalog.*`,
//!   `order.*`); `params.rs`: parameter parsing shared by them.
//!
//! Rules about what a user may do (names, blocking, labels, business
//! settings…) are the engine's: nothing here writes a profile's store.

mod business;
mod card;
mod contact;
mod conversation;
mod customer;
mod dispatch;
mod mailbox;
mod message;
mod node;
mod params;
mod relay;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, oneshot, watch};

use crate::engine::NodeEvent;
use crate::profile::{Command, EngineJob, ProfileStatus};
pub use crate::rpc_error::{RpcError, codes};
use params::opt_str;

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
    let result = dispatch::call(method, &params, state, caller).await;
    // Notifications get no response, even on error.
    let id = id?;
    Some(match result {
        Ok(value) => json!({"jsonrpc": "2.0", "result": value, "id": id}),
        Err(error) => error_response(id, error),
    })
}

// ---- handing calls to profiles ------------------------------------------------

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

#[cfg(test)]
mod pipelining_tests;
