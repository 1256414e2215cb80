//! Standard output, for every command: human lines through the terminal
//! escaping of [`crate::safe`], JSON exactly as serialized, and a reader
//! that went away (`kabar inbox | head -n 1`) a quiet end rather than a
//! panic.
//!
//! Nothing in this crate prints with `println!`, which panics when the
//! write fails: [`outln!`] returns the error, `?` carries it up to `main`,
//! and `main` ends with exit code 0 and no message when it is
//! [`StdoutClosed`], as ripgrep does. Destructors run on the way (the test
//! network's node processes are stopped).

use std::fmt;
use std::io::{self, Write};

use anyhow::{Context, Result};

use crate::safe;

/// The reader of standard output closed it (a broken pipe).
#[derive(Debug)]
pub(crate) struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// A write's outcome: a broken pipe becomes [`StdoutClosed`].
fn written(result: io::Result<()>) -> Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        other => other.context("cannot write to standard output"),
    }
}

/// Writes `text` as it is.
fn write(text: &str) -> Result<()> {
    written(io::stdout().lock().write_all(text.as_bytes()))
}

/// One line of human output; control characters and bidi overrides that
/// are still in it are escaped ([`safe::printable_block`]), newlines kept.
/// Peer text should be escaped where it is put into the line
/// ([`safe::printable`]), so that a newline in it cannot fake a line: this
/// is the net under that.
pub(crate) fn human(args: fmt::Arguments<'_>) -> Result<()> {
    let line = match args.as_str() {
        Some(s) => safe::printable_block(s).into_owned(),
        None => safe::printable_block(&args.to_string()).into_owned(),
    };
    write(&(line + "\n"))
}

/// `text` exactly, then a newline: JSON (`--json`) and generated files
/// (shell completions).
pub(crate) fn exact(text: &str) -> Result<()> {
    write(&format!("{text}\n"))
}

/// Like [`exact`], without the newline.
pub(crate) fn exact_bytes(bytes: &[u8]) -> Result<()> {
    written(io::stdout().lock().write_all(bytes))
}

/// Flushes standard output (a prompt or a partial line shows now).
pub(crate) fn flush() -> Result<()> {
    written(io::stdout().lock().flush())
}

/// `println!` for human output: [`human`], returning its `Result`.
macro_rules! outln {
    () => {
        $crate::out::human(::std::format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::out::human(::std::format_args!($($arg)*))
    };
}
pub(crate) use outln;
