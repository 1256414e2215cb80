//! The app's link to the node: calls made one after another on a thread of
//! their own (a connection each, so a node that closed an idle connection
//! or restarted costs nothing), and the event stream on another thread,
//! reconnected while the node is away. Both hand what comes back to the
//! app through one bounded channel.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::app::{Call, Purpose};
use crate::client::{Client, NodeError};

/// Calls waiting to be made, and answers and events waiting for the app.
const QUEUE: usize = 1_024;
/// Longest wait for one answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(15);
/// Pause between attempts to reach a node that is away.
const RECONNECT: Duration = Duration::from_millis(500);

/// What comes back from the node.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// The answer to a call: its result, or the error to show.
    Reply(Purpose, Result<Value, String>),
    /// An event of the stream.
    Event(Value),
    /// The event stream opened (true) or was lost (false).
    Node(bool),
}

/// The two threads.
pub(crate) struct Net {
    calls: Option<SyncSender<Call>>,
    incoming: Receiver<Incoming>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Net {
    /// Starts both threads for the node of `data_dir`.
    pub(crate) fn start(data_dir: PathBuf) -> Net {
        let (call_tx, call_rx) = sync_channel::<Call>(QUEUE);
        let (in_tx, incoming) = sync_channel::<Incoming>(QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let calls = {
            let (dir, tx) = (data_dir.clone(), in_tx.clone());
            std::thread::spawn(move || {
                for call in call_rx {
                    let result = make(&dir, &call);
                    if tx.send(Incoming::Reply(call.purpose, result)).is_err() {
                        return;
                    }
                }
            })
        };
        let events = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || follow(&data_dir, &in_tx, &stop))
        };
        Net { calls: Some(call_tx), incoming, stop, threads: vec![calls, events] }
    }

    /// Queues `call` (dropped, with a notice, if the queue is full).
    pub(crate) fn call(&self, call: Call) -> Result<(), String> {
        match &self.calls {
            Some(tx) => tx.try_send(call).map_err(|_| "too many calls waiting for the node".to_string()),
            None => Err("stopped".into()),
        }
    }

    /// What came back since the last time, without waiting.
    pub(crate) fn try_recv(&self) -> Option<Incoming> {
        self.incoming.try_recv().ok()
    }
}

impl Drop for Net {
    /// Stops both threads (each within about half a second, or one call).
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.calls = None;
        // Unblock a thread waiting to hand something over.
        while self.incoming.try_recv().is_ok() {}
        for t in self.threads.drain(..) {
            // Threads blocked on a full channel see it closed once
            // `incoming` is dropped; do not wait on a stuck call.
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// Makes one call on a connection of its own.
fn make(dir: &std::path::Path, call: &Call) -> Result<Value, String> {
    let mut client = Client::connect(dir).map_err(|_| "the node is not running".to_string())?;
    client.set_timeout(CALL_TIMEOUT).map_err(|e| e.to_string())?;
    client.call(call.method, call.params.clone()).map_err(|e| match e.downcast_ref::<NodeError>() {
        Some(n) => n.message.clone(),
        None => format!("{e:#}"),
    })
}

/// Follows the event stream, reconnecting while the node is away, until
/// `stop`.
fn follow(dir: &std::path::Path, tx: &SyncSender<Incoming>, stop: &AtomicBool) {
    let mut up = None;
    while !stop.load(Ordering::Relaxed) {
        if let Ok(mut client) = Client::connect(dir)
            && client.subscribe().is_ok()
        {
            if up != Some(true) && tx.send(Incoming::Node(true)).is_err() {
                return;
            }
            up = Some(true);
            while !stop.load(Ordering::Relaxed) {
                match client.next_event(Instant::now() + RECONNECT) {
                    Ok(Some(event)) => {
                        if tx.send(Incoming::Event(event)).is_err() {
                            return;
                        }
                    }
                    Ok(None) => {}
                    Err(_) => break,
                }
            }
        }
        if up != Some(false) {
            if tx.send(Incoming::Node(false)).is_err() {
                return;
            }
            up = Some(false);
        }
        // Bounded: checked again every RECONNECT until stopped.
        std::thread::sleep(RECONNECT);
    }
}
