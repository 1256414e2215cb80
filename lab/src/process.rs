//! Long-running processes inside the lab ([`LabProcess`]) and reading their output with deadlines
//! ([`OutputLines`]).

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::LabError;

/// The child, shared between its [`LabProcess`] and the [`Lab`](crate::Lab): whichever drops first kills it.
/// `None` once killed and reaped. Holding the `Child` (never a bare pid) means we only ever signal a process we
/// have not yet reaped, so its pid cannot have been reused.
pub(crate) type Slot = Arc<Mutex<Option<Child>>>;

/// SIGKILLs and reaps the child in `slot`, if any. Errors are ignored (it may already have exited).
pub(crate) fn kill_slot(slot: &Slot) {
    let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(mut child) = guard.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A process started with [`Lab::spawn`](crate::Lab::spawn).
///
/// Dropping it SIGKILLs and reaps the process; so does dropping the [`Lab`](crate::Lab), whichever comes first.
/// Its stdin/stdout/stderr pipes (when the command asked for `Stdio::piped()`) are taken out of the `Child` and
/// kept here, so reading them never contends with the lab.
#[derive(Debug)]
pub struct LabProcess {
    pid: u32,
    child: Slot,
    stdin: Option<ChildStdin>,
    stdout: Option<ChildStdout>,
    stderr: Option<ChildStderr>,
    kill_tool: PathBuf,
}

impl LabProcess {
    pub(crate) fn new(mut child: Child, kill_tool: PathBuf) -> (LabProcess, Slot) {
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let pid = child.id();
        let slot = Arc::new(Mutex::new(Some(child)));
        (LabProcess { pid, child: Arc::clone(&slot), stdin, stdout, stderr, kill_tool }, slot)
    }

    /// The process id (that of the program itself: `ip netns exec` execs it).
    pub fn id(&self) -> u32 {
        self.pid
    }

    /// Takes the stdin pipe, if the command had `stdin(Stdio::piped())`.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.stdin.take()
    }

    /// Takes the stdout pipe, if the command had `stdout(Stdio::piped())`.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.stdout.take()
    }

    /// Takes the stderr pipe, if the command had `stderr(Stdio::piped())`.
    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.stderr.take()
    }

    /// Takes stdout and reads it line by line on a helper thread; see [`OutputLines`].
    pub fn stdout_lines(&mut self) -> Result<OutputLines, LabError> {
        OutputLines::new(self.stdout.take().ok_or(LabError::NoStdout)?)
    }

    /// The exit status if the process has exited (reaping it), `None` while it runs.
    /// After [`kill`](Self::kill) there is nothing left to wait for and this returns `None`.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, LabError> {
        let mut guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        match guard.as_mut() {
            Some(child) => child.try_wait().map_err(|source| LabError::Process { pid: self.pid, source }),
            None => Ok(None),
        }
    }

    /// Sends SIGTERM (via `kill -TERM`), for programs that shut down gracefully; does not wait.
    /// Does nothing if the process was already reaped.
    pub fn terminate(&mut self) -> Result<(), LabError> {
        let mut guard = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(child) = guard.as_mut() else { return Ok(()) };
        // Not reaped yet (running or a zombie), so the pid is still ours while we hold the lock.
        if child.try_wait().map_err(|source| LabError::Process { pid: self.pid, source })?.is_some() {
            return Ok(());
        }
        // The exit status is ignored: `kill` fails only if the process vanished in between, which is the goal.
        Command::new(&self.kill_tool)
            .arg("-TERM")
            .arg(self.pid.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(drop)
            .map_err(|source| LabError::Process { pid: self.pid, source })
    }

    /// SIGKILLs the process and waits for it to exit. Does nothing if it was already reaped.
    pub fn kill(&mut self) {
        kill_slot(&self.child);
    }
}

impl Drop for LabProcess {
    fn drop(&mut self) {
        kill_slot(&self.child);
    }
}

/// Lines of a process's output, read on a helper thread so the test can wait with a deadline.
///
/// The thread ends at end of output (e.g. when the process is killed) or once this is dropped and it has a
/// line to hand over. The channel is bounded: unread output eventually blocks the writer, as a pipe would.
#[derive(Debug)]
pub struct OutputLines {
    lines: Receiver<std::io::Result<String>>,
}

impl OutputLines {
    /// Starts reading `reader` line by line (any pipe: a [`LabProcess`]'s stderr, a `std::process::Child`'s stdout).
    pub fn new(reader: impl Read + Send + 'static) -> Result<OutputLines, LabError> {
        let (tx, lines) = sync_channel(256);
        std::thread::Builder::new()
            .name("kabar-lab-output".into())
            .spawn(move || {
                for line in BufReader::new(reader).lines() {
                    let failed = line.is_err();
                    if tx.send(line).is_err() || failed {
                        break;
                    }
                }
            })
            .map_err(LabError::Read)?;
        Ok(OutputLines { lines })
    }

    /// The next line, waiting at most `timeout`.
    pub fn next_within(&self, timeout: Duration) -> Result<String, LabError> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line.map_err(LabError::Read),
            Err(RecvTimeoutError::Timeout) => Err(LabError::Timeout(timeout)),
            Err(RecvTimeoutError::Disconnected) => Err(LabError::OutputClosed),
        }
    }

    /// Skips lines until one satisfies `wanted`, and returns it; fails if none does within `timeout` in total.
    pub fn wait_for(&self, timeout: Duration, mut wanted: impl FnMut(&str) -> bool) -> Result<String, LabError> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(LabError::Timeout(timeout));
            }
            let line = self.next_within(left).map_err(|e| match e {
                LabError::Timeout(_) => LabError::Timeout(timeout),
                other => other,
            })?;
            if wanted(&line) {
                return Ok(line);
            }
        }
    }
}
