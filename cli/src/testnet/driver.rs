//! How the driver talks to many nodes at once, within fixed bounds:
//! [`concurrently`] runs one task per node on a few threads (introducing
//! contacts, waiting for connections, counting), and [`Senders`] carries the
//! traffic with several `message.send` calls in flight per node.
//!
//! A control connection answers its requests in order, one at a time, so
//! calls in flight need connections: at most [`CONNECTIONS_PER_NODE`] per
//! node for sending (a node accepts 64), and at most [`SEND_WORKERS`] calls
//! in flight over the whole network, whatever its size.

use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::{Condvar, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use super::*;

/// Threads of [`concurrently`]: nodes the driver works on at once while
/// introducing, connecting and counting.
pub(super) const AT_ONCE: usize = 16;
/// `message.send` calls in flight at most, over all nodes (one thread each).
pub(super) const SEND_WORKERS: usize = 32;
/// Control connections per node that carry sends (each one call at a time).
pub(super) const CONNECTIONS_PER_NODE: usize = 4;
/// Sends waiting for a worker at most; [`Senders::send`] blocks beyond.
const QUEUED: usize = 2 * SEND_WORKERS;
/// A node closes a control connection after 60 s without a request: an
/// idle connection older than this is closed rather than used again.
const REUSE_WITHIN: Duration = Duration::from_secs(45);
/// A `message.send` not answered within this fails (the node hangs):
/// nothing waits for ever.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a wait for the workers looks at Ctrl-C.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// Runs `task` on every item on at most `threads` threads; the results come
/// back in the items' order. A task that panics panics the caller.
pub(super) fn concurrently<T: Sync, R: Send>(items: &[T], threads: usize, task: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let task = &task;
    let next = &next;
    let mut done: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads.clamp(1, items.len().max(1)))
            .map(|_| {
                s.spawn(move || {
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(k) else { return mine };
                        mine.push((k, task(item)));
                    }
                })
            })
            .collect();
        workers.into_iter().flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
    });
    done.sort_unstable_by_key(|(k, _)| *k);
    done.into_iter().map(|(_, r)| r).collect()
}

/// One message for [`Senders::send`]: node `sent.from` writes `text` to its
/// contact `sent.to_name`.
pub(super) struct SendJob {
    /// Its place in the traffic (the k-th message).
    pub(super) k: usize,
    pub(super) text: String,
    /// `at` is set when the call goes out.
    pub(super) sent: Sent,
}

/// A message its sender's node took (`message.send` answered).
pub(super) struct Taken {
    pub(super) k: usize,
    pub(super) id: String,
    pub(super) sent: Sent,
}

/// One node's side of the senders.
struct Lane {
    dir: PathBuf,
    in_flight: usize,
    /// Open connections not in use, and since when.
    idle: Vec<(Client, Instant)>,
}

struct State {
    queue: VecDeque<SendJob>,
    lanes: Vec<Lane>,
    in_flight: usize,
    taken: Vec<Taken>,
    closing: bool,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits for a change, at most [`CHECK_EVERY`].
    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed.wait_timeout(guard, CHECK_EVERY).unwrap_or_else(PoisonError::into_inner).0
    }
}

/// The traffic's senders: [`SEND_WORKERS`] threads taking sends from one
/// queue, each call on a connection of its node (at most
/// [`CONNECTIONS_PER_NODE`] per node). A send's `at` is taken just before
/// its call goes out, so latency (to the `delivered` event) does not include
/// the wait in the queue.
pub(super) struct Senders {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl Senders {
    /// Starts the workers for `nodes` (by position); connections open on
    /// first use.
    pub(super) fn start(nodes: &[NodeProc], progress: &ProgressBar) -> Result<Senders> {
        let lanes = nodes.iter().map(|n| Lane { dir: n.dir.clone(), in_flight: 0, idle: Vec::new() }).collect();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::with_capacity(QUEUED),
                lanes,
                in_flight: 0,
                taken: Vec::new(),
                closing: false,
            }),
            changed: Condvar::new(),
        });
        // Built first, so that if a thread fails to start, dropping it
        // closes those already started.
        let mut senders = Senders { shared, workers: Vec::with_capacity(SEND_WORKERS) };
        for w in 0..SEND_WORKERS.min(nodes.len() * CONNECTIONS_PER_NODE) {
            let (shared, progress) = (senders.shared.clone(), progress.clone());
            let worker = std::thread::Builder::new()
                .name(format!("testnet-send-{w}"))
                .spawn(move || work(&shared, &progress))
                .context("starting a sender thread")?;
            senders.workers.push(worker);
        }
        Ok(senders)
    }

    /// Queues a send; waits while [`QUEUED`] sends are waiting already.
    pub(super) fn send(&self, job: SendJob, interrupt: &Interrupt) -> Result<()> {
        let mut st = self.shared.lock();
        while st.queue.len() >= QUEUED {
            interrupt.check()?;
            st = self.shared.wait(st);
        }
        st.queue.push_back(job);
        drop(st);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Waits until every queued send has been answered (or failed), and
    /// returns the messages taken since the last call.
    pub(super) fn settle(&self, interrupt: &Interrupt) -> Result<Vec<Taken>> {
        let mut st = self.shared.lock();
        while !st.queue.is_empty() || st.in_flight > 0 {
            interrupt.check()?;
            st = self.shared.wait(st);
        }
        Ok(std::mem::take(&mut st.taken))
    }

    /// Closes the idle connections to node `node` (position): it stopped or
    /// restarts. Call after [`Senders::settle`], with nothing in flight.
    pub(super) fn forget(&self, node: usize) {
        if let Some(lane) = self.shared.lock().lanes.get_mut(node) {
            lane.idle.clear();
        }
    }

    /// Settles, stops the workers and returns the messages taken since the
    /// last [`Senders::settle`].
    pub(super) fn finish(mut self, interrupt: &Interrupt) -> Result<Vec<Taken>> {
        let taken = self.settle(interrupt)?;
        self.shared.lock().closing = true;
        self.shared.changed.notify_all();
        for w in self.workers.drain(..) {
            w.join().map_err(|_| anyhow!("a sender thread panicked"))?;
        }
        Ok(taken)
    }
}

impl Drop for Senders {
    /// The run ended early (an error, Ctrl-C): sends still queued are
    /// dropped, idle workers end, and one in a call ends with it (at most
    /// [`CALL_TIMEOUT`]).
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        st.closing = true;
        st.queue.clear();
        drop(st);
        self.shared.changed.notify_all();
    }
}

/// A worker: takes the first queued send whose node has a connection to
/// spare, calls `message.send` on it, and keeps the connection for later.
fn work(shared: &Shared, progress: &ProgressBar) {
    loop {
        let mut st = shared.lock();
        let (mut job, dir, client) = loop {
            let State { queue, lanes, in_flight, closing, .. } = &mut *st;
            if *closing && !queue.is_empty() {
                // Dropped (see `Drop`); `finish` closes with an empty queue.
                return;
            }
            if let Some(pos) = queue.iter().position(|j| lanes[j.sent.from].in_flight < CONNECTIONS_PER_NODE)
                && let Some(job) = queue.remove(pos)
            {
                let lane = &mut lanes[job.sent.from];
                lane.in_flight += 1;
                *in_flight += 1;
                let mut client = None;
                while let Some((c, since)) = lane.idle.pop() {
                    if since.elapsed() < REUSE_WITHIN {
                        client = Some(c);
                        break;
                    }
                }
                break (job, lane.dir.clone(), client);
            }
            if *closing {
                return;
            }
            st = shared.wait(st);
        };
        drop(st);
        // Room in the queue.
        shared.changed.notify_all();
        let from = job.sent.from;
        let params = json!({"profile": "personal", "to": job.sent.to_name, "text": job.text});
        let result = client.map_or_else(|| Client::connect(&dir), Ok).and_then(|mut c| {
            c.set_timeout(CALL_TIMEOUT)?;
            job.sent.at = Instant::now();
            c.call("message.send", params).map(|v| (c, v))
        });
        let mut st = shared.lock();
        st.in_flight -= 1;
        st.lanes[from].in_flight -= 1;
        let failed = match result {
            Ok((c, v)) => {
                let id = v["message_id"].as_str().unwrap_or_default().to_string();
                st.taken.push(Taken { k: job.k, id, sent: job.sent });
                st.lanes[from].idle.push((c, Instant::now()));
                None
            }
            Err(e) => Some(e),
        };
        drop(st);
        shared.changed.notify_all();
        if let Some(e) = failed {
            progress.println(format!("node {from}: send failed: {e:#}"));
        }
        progress.inc(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrently_keeps_the_order_and_runs_each_item_once() {
        let items: Vec<usize> = (0..100).collect();
        let calls = AtomicUsize::new(0);
        let out = concurrently(&items, 7, |&i| {
            calls.fetch_add(1, Ordering::Relaxed);
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(calls.load(Ordering::Relaxed), 100);
        assert!(concurrently(&[] as &[usize], 4, |&i| i).is_empty());
    }
}
