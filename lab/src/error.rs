//! The lab's error type.

use std::io;
use std::process::ExitStatus;
use std::time::Duration;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LabError {
    /// The process is not root, and network namespaces need root.
    #[error(
        "the network lab needs root, but the effective uid is {euid}: run the tests as root (or skip the lab tests)"
    )]
    NotRoot {
        /// The effective uid read from `/proc/self/status`.
        euid: u32,
    },
    /// `/proc/self/status` could not be read or has no `Uid:` line.
    #[error("cannot read the effective uid from /proc/self/status: {0}")]
    Uid(io::Error),
    /// A command-line tool the lab shells out to is not installed.
    #[error(
        "`{0}` was not found in PATH, /usr/sbin or /sbin: the network lab needs `ip` (iproute2), `nft` (nftables), `sysctl` (procps) and `kill`"
    )]
    MissingTool(&'static str),
    /// A command could not be started at all.
    #[error("cannot start {command}: {source}")]
    Spawn {
        /// The command, as `Command`'s `Debug` prints it.
        command: String,
        /// Why it could not start.
        source: io::Error,
    },
    /// A setup command ran and exited unsuccessfully.
    #[error("{command} failed ({status}): {stderr}")]
    CommandFailed {
        /// The command, as `Command`'s `Debug` prints it.
        command: String,
        /// How it exited.
        status: ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// The lab has handed out every address of a kind (public addresses or home networks).
    #[error("the lab ran out of {0}")]
    Exhausted(&'static str),
    /// A host (or a command) that belongs to another lab was passed to this one.
    #[error("{0} does not belong to this lab")]
    ForeignHost(String),
    /// [`Lab::spawn`](crate::Lab::spawn) was given a command that does not run inside one of this lab's namespaces.
    #[error("{0} does not run inside this lab: build it with Host::command")]
    NotInLab(String),
    /// Waiting on, signalling or killing a spawned process failed.
    #[error("process {pid}: {source}")]
    Process {
        /// The process id.
        pid: u32,
        /// The underlying error.
        source: io::Error,
    },
    /// The process's stdout was not set to `Stdio::piped()`, or was already taken.
    #[error("the process's stdout was not piped, or was already taken")]
    NoStdout,
    /// No line of output arrived in time.
    #[error("no line of output within {0:?}")]
    Timeout(Duration),
    /// The output ended (the process closed it or exited) before a wanted line arrived.
    #[error("the output ended before the wanted line")]
    OutputClosed,
    /// Reading a line of output failed.
    #[error("reading output: {0}")]
    Read(io::Error),
}
