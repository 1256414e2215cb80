//! The engine of one profile on its own thread, off the swarm's event loop,
//! with group commit.
//!
//! The profile's loop never touches the disk: it hands the engine work (a
//! closure over [`Engine`]) and goes on polling the swarm. The worker
//! thread takes everything waiting — sends from any number of control
//! clients, inbound requests from any number of peers, acknowledgements,
//! receipts, ticks — and runs it in order inside one commit group
//! ([`kabar_storage::ProfileStore::begin_group`]): each step commits as
//! before, visible to the next, and one durable commit at the end makes
//! them all durable with one fsync. Only then are the replies (the
//! acknowledgements to send, the envelopes to transmit, the answers to
//! control clients) handed back to the loop: an envelope leaves only after
//! the transaction holding its ratchet state and outbox entry is durable,
//! and an inbound request is answered only after the transaction holding
//! its messages is. Whatever arrives during a group goes into the next one.
//!
//! One thread owns the engine, so it is the one owner of every session's
//! ratchet state: sends and receives for one contact run one after the
//! other, each on the state the previous one committed (or, for
//! consecutive sends that may be staged, [`Worker::run_job`], the state the
//! previous one left staged: their messages are committed together, in one
//! transaction, before any other work runs; [`Engine::stage_sends`]).
//!
//! Bounds: a group holds at most [`GROUP_MAX`] pieces of work; at most
//! [`QUEUE_MAX`] wait. The loop never waits for room: past the bound a
//! piece of work is dropped with a warning, and everything the loop hands
//! over is harmless to lose (a peer's request goes unanswered and is
//! retried, an acknowledgement not recorded means a retransmission the
//! peer acknowledges as a duplicate, a control call is answered "busy",
//! `-32010`, without having run; a tick is tried again at the next one; a
//! deposit's result not recorded lets the next deposit go after
//! `engine::IN_FLIGHT_MAX_MS`). A peer's request waiting here keeps its
//! bytes charged to the profile's inbound budget until it is answered
//! (`wire::InflightBudget::hold`). What feeds the
//! queue is bounded itself (the swarm's streams and per-peer request
//! budgets, at most 64 control calls in flight on the node
//! (`control::MAX_IN_FLIGHT`), the
//! courier's bounded tasks, at most one tick in flight), so the bound is
//! only reached when the disk cannot keep up. Results wait in a bounded
//! channel of [`REPORTS_MAX`]; when it is full the worker waits, not the
//! loop.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;

use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::mpsc;

use crate::engine::Engine;

/// Most pieces of work in one commit group.
pub const GROUP_MAX: usize = 64;
/// Most pieces of work waiting for the engine.
pub const QUEUE_MAX: usize = 4096;
/// Most results waiting for the loop.
pub const REPORTS_MAX: usize = 256;

/// A piece of work for the engine; its result (`R`) goes back to the loop
/// after the group's durable commit.
type Work<R> = Box<dyn FnOnce(&mut Engine, &mut StdRng) -> R + Send>;

/// A piece of work, and whether its sends may be staged
/// ([`Engine::stage_sends`]).
type Job<R> = (bool, Work<R>);

/// What runs at the end of every group, before its durable commit: the
/// outbox flushes the group's work deferred ([`Engine::defer_flushes`]),
/// so what it queued for one peer leaves in one request. Its result, if
/// any, is reported after the group's.
pub type GroupEnd<R> = Box<dyn FnMut(&mut Engine) -> Option<R> + Send>;

/// What the loop tells the worker besides work.
#[derive(Default)]
struct Flags {
    /// Stop now: the work still queued is dropped, unanswered, as in a
    /// crash (the loop is gone).
    halt: AtomicBool,
    /// The store turned out damaged: when stopping, leave it unclosed
    /// (closing writes to the file).
    abandon: AtomicBool,
}

/// What the worker reports besides the work's results.
pub enum Report<R> {
    /// A result, durable.
    Done(R),
    /// After each group, before its results: the engine's counters for the
    /// profile's status.
    Counters {
        /// [`Engine::guard_status`].
        guard: crate::engine::GuardStatus,
        /// [`Engine::queued`].
        queued: usize,
    },
    /// The group's durable commit failed, or a piece of work panicked: the
    /// group's results are dropped (nothing that depends on them leaves)
    /// and the worker has stopped.
    Failed(String),
}

/// The handle the loop keeps.
pub struct Worker<R: Send + 'static> {
    jobs: std_mpsc::SyncSender<Job<R>>,
    flags: Arc<Flags>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<R: Send + 'static> Worker<R> {
    /// Starts the worker thread for `engine`; returns it and the channel of
    /// its reports.
    pub fn start(engine: Engine) -> std::io::Result<(Self, mpsc::Receiver<Report<R>>)> {
        Self::launch(engine, None)
    }

    /// [`Worker::start`], with `end` run at the end of every group (see
    /// [`GroupEnd`]).
    pub fn start_with(engine: Engine, end: GroupEnd<R>) -> std::io::Result<(Self, mpsc::Receiver<Report<R>>)> {
        Self::launch(engine, Some(end))
    }

    fn launch(engine: Engine, end: Option<GroupEnd<R>>) -> std::io::Result<(Self, mpsc::Receiver<Report<R>>)> {
        let (jobs, queue) = std_mpsc::sync_channel(QUEUE_MAX);
        let (reports, received) = mpsc::channel(REPORTS_MAX);
        let name = format!("kabar-engine-{}", engine.store().name());
        let flags = Arc::new(Flags::default());
        let shared = flags.clone();
        let thread =
            std::thread::Builder::new().name(name).spawn(move || work(engine, end, queue, reports, &shared))?;
        Ok((Worker { jobs, flags, thread: Some(thread) }, received))
    }

    /// Queues `f` on the engine; its result comes back as a report. Never
    /// waits: past [`QUEUE_MAX`] the work is dropped (see the module's
    /// notes on bounds) and this returns `false`, as it does once the
    /// worker has stopped.
    #[must_use = "work refused is never done: whoever waits for it must be told"]
    pub fn run(&self, f: impl FnOnce(&mut Engine, &mut StdRng) -> R + Send + 'static) -> bool {
        self.run_job(false, f)
    }

    /// [`Worker::run`], saying whether `f` may stage its sends: inside a
    /// group, consecutive pieces of work that may are run with
    /// [`Engine::stage_sends`] on, so their messages are committed in one
    /// transaction, before the next piece that may not (or the group's end).
    #[must_use = "work refused is never done: whoever waits for it must be told"]
    pub fn run_job(&self, stages_sends: bool, f: impl FnOnce(&mut Engine, &mut StdRng) -> R + Send + 'static) -> bool {
        match self.jobs.try_send((stages_sends, Box::new(f))) {
            Ok(()) => true,
            Err(std_mpsc::TrySendError::Full(_)) => {
                tracing::warn!("the profile's engine is {QUEUE_MAX} pieces of work behind (a slow disk?); one dropped");
                false
            }
            // A stopped worker has reported why.
            Err(std_mpsc::TrySendError::Disconnected(_)) => false,
        }
    }

    /// Marks the store damaged: when the worker stops (after the work
    /// queued so far), it leaves the store unclosed.
    pub fn abandon(&self) {
        self.flags.abandon.store(true, Ordering::Release);
    }

    /// Stops the worker after the work queued so far and waits until the
    /// engine (and its store) is closed.
    pub async fn stop(mut self) {
        let (jobs, _) = std_mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.jobs, jobs));
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl<R: Send + 'static> Drop for Worker<R> {
    /// The loop is gone without [`Worker::stop`] (its task was aborted, as
    /// in a crash): the worker drops what is still queued and closes the
    /// engine now; this waits for it, at most the piece of work in hand, so
    /// the store is closed when the task's end is seen.
    ///
    /// A worker told to [`Worker::abandon`] its store closes nothing, so it
    /// is not waited for (the disk may be failing: the wait could be long).
    fn drop(&mut self) {
        self.flags.halt.store(true, Ordering::Release);
        let (jobs, _) = std_mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.jobs, jobs));
        if self.flags.abandon.load(Ordering::Acquire) {
            return;
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn work<R: Send + 'static>(
    engine: Engine,
    mut end: Option<GroupEnd<R>>,
    queue: std_mpsc::Receiver<Job<R>>,
    reports: mpsc::Sender<Report<R>>,
    flags: &Flags,
) {
    let mut engine = Some(engine);
    run(&mut engine, &mut end, &queue, &reports, flags);
    if let Some(engine) = engine {
        if flags.abandon.load(Ordering::Acquire) {
            std::mem::forget(engine);
        } else {
            drop(engine);
        }
    }
}

/// The worker's loop; leaves `slot` empty if it stopped on a failure (the
/// engine was leaked).
fn run<R: Send + 'static>(
    slot: &mut Option<Engine>,
    end: &mut Option<GroupEnd<R>>,
    queue: &std_mpsc::Receiver<Job<R>>,
    reports: &mpsc::Sender<Report<R>>,
    flags: &Flags,
) {
    let Some(engine) = slot.as_mut() else { return };
    let mut rng = StdRng::from_rng(&mut rand::rng());
    while let Ok(first) = queue.recv() {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_MAX {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (done, failed) = group(engine, end, jobs, &mut rng, flags);
        if let Some(reason) = failed {
            tracing::error!(profile = %engine.store().name(), %reason, "the profile's engine stopped");
            let _ = reports.blocking_send(Report::Failed(reason));
            // Whatever the store holds now is not known to be durable and
            // consistent with what left: never close it normally.
            if let Some(engine) = slot.take() {
                std::mem::forget(engine);
            }
            return;
        }
        if flags.halt.load(Ordering::Acquire) {
            return;
        }
        let Some((done, guard, queued)) = done else { return };
        // The counters first: whoever sees a result (a control client's
        // answer) then sees a status at least as new.
        let _ = reports.blocking_send(Report::Counters { guard, queued });
        for result in done {
            // Waits while the loop is behind; never the other way round.
            if reports.blocking_send(Report::Done(result)).is_err() {
                break;
            }
        }
    }
}

/// Runs one group of work: each piece in order (flushes deferred), the
/// group's end ([`GroupEnd`]), then (with more than one piece) the group's
/// durable commit, then the engine's counters. Returns the
/// results and counters, or why the engine must stop: a piece of work, the
/// durable commit or the counters panicked, the commit failed, or a piece
/// of work found the store broken ([`kabar_storage::ProfileStore::mark_broken`]:
/// nothing more is written, not even the group's commit). `None` results
/// without a failure: halted.
#[allow(clippy::type_complexity)]
fn group<R>(
    engine: &mut Engine,
    end: &mut Option<GroupEnd<R>>,
    jobs: Vec<Job<R>>,
    rng: &mut StdRng,
    flags: &Flags,
) -> (Option<(Vec<R>, crate::engine::GuardStatus, usize)>, Option<String>) {
    let path = engine.store().path().display().to_string();
    let stopped = |panic: Box<dyn std::any::Any + Send>| {
        format!(
            "{path}: the profile stopped on an internal error (a damaged page, or a bug): {}",
            kabar_storage::check::panic_text(panic.as_ref())
        )
    };
    let grouped = jobs.len() > 1;
    if grouped {
        engine.store().begin_group();
    }
    if end.is_some() {
        engine.defer_flushes();
    }
    let unstaged = |e: crate::engine::EngineError| format!("{path}: the staged sends could not be committed: {e}");
    let mut done = Vec::with_capacity(jobs.len() + 1);
    for (stages_sends, f) in jobs {
        if flags.halt.load(Ordering::Acquire) {
            // Unanswered, as in a crash; what committed stays.
            return (None, None);
        }
        // Sends staged by the work before are committed before any other
        // work reads the store; a failure fails the group (their results
        // are among it).
        match catch_unwind(AssertUnwindSafe(|| engine.stage_sends(grouped && stages_sends))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return (None, Some(unstaged(e))),
            Err(panic) => return (None, Some(stopped(panic))),
        }
        match catch_unwind(AssertUnwindSafe(|| f(engine, rng))) {
            Ok(result) => done.push(result),
            Err(panic) => return (None, Some(stopped(panic))),
        }
        if let Some(reason) = engine.store().broken() {
            return (None, Some(reason));
        }
    }
    let finish = catch_unwind(AssertUnwindSafe(|| {
        engine.stage_sends(false).map_err(unstaged)?;
        let tail = end.as_mut().and_then(|end| end(engine));
        if let Some(reason) = engine.store().broken() {
            return Err(reason);
        }
        let durable = if grouped { engine.store().end_group() } else { Ok(()) };
        durable
            .map(|()| (tail, engine.guard_status(), engine.queued()))
            .map_err(|e| format!("profile database {path} could not make its last writes durable: {e}"))
    }));
    match finish {
        Ok(Ok((tail, guard, queued))) => {
            done.extend(tail);
            (Some((done, guard, queued)), None)
        }
        Ok(Err(reason)) => (None, Some(reason)),
        Err(panic) => (None, Some(stopped(panic))),
    }
}
