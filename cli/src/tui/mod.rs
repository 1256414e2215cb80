//! `kabar tui`: a full-screen messenger for every profile of the running
//! node, as a client of its control socket like every other command.
//!
//! Laid out so the logic is tested without a terminal: [`app`] holds the
//! state and turns keys, answers and events into new state and calls;
//! [`draw`] draws a state; [`net`] talks to the node; this module wires
//! them to the terminal and restores it on every way out (a normal quit,
//! an error, a panic, SIGTERM, SIGHUP or SIGINT).

pub(crate) mod app;
pub(crate) mod draw;
pub(crate) mod input;
pub(crate) mod net;

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Result, bail};
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::commands::Ctx;
use app::App;
use net::{Incoming, Net};

/// How long the loop waits for a key before it looks at the node's news.
const TICK: Duration = Duration::from_millis(50);
/// Most answers and events taken from the node between two draws.
const BATCH: usize = 256;

/// Restores the terminal when dropped, whatever the way out.
struct Restore;

impl Drop for Restore {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// How long the loop has to end by itself after a signal before the
/// signal's thread restores the terminal and ends the process.
const SIGNAL_GRACE: Duration = Duration::from_millis(500);

/// SIGTERM, SIGHUP and SIGINT set `stop`, which the loop reads between two
/// turns. When the terminal is gone (SIGHUP: the SSH session or the
/// terminal window closed), crossterm's wait for input can spin on the dead
/// descriptor without ever returning, and the loop never reads `stop`; so
/// if the process is still here [`SIGNAL_GRACE`] later, this thread
/// restores what it can of the terminal and ends the process itself.
fn watch_signals(stop: Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGHUP, SIGINT])?;
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if signals.forever().next().is_some() {
            stop.store(true, Ordering::Relaxed);
            std::thread::sleep(SIGNAL_GRACE);
            ratatui::restore();
            std::process::exit(0);
        }
    })?;
    Ok(())
}

/// Runs the app until the user quits or a signal asks it to stop.
pub(crate) fn run(ctx: &Ctx, open: Option<&str>) -> Result<()> {
    if !std::io::stdout().is_terminal() || !std::io::stdin().is_terminal() {
        bail!("kabar tui needs a terminal; for scripts use the other commands (docs/cli.md)");
    }
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop))?;
    let net = Net::start(ctx.dir()?);
    let mut app = App::new(&ctx.profile, open);
    let mut terminal = ratatui::try_init()?;
    let _restore = Restore;
    while !app.quit && !stop.load(Ordering::Relaxed) {
        terminal.draw(|f| draw::draw(f, &app))?;
        let mut calls = Vec::new();
        if event::poll(TICK)? {
            match event::read()? {
                Event::Key(key) if key.kind != KeyEventKind::Release => calls.extend(app.on_key(key)),
                Event::Paste(text) => app.on_paste(&text),
                // Drawn again at the new size on the next turn.
                _ => {}
            }
        }
        for _ in 0..BATCH {
            let Some(incoming) = net.try_recv() else { break };
            calls.extend(match incoming {
                Incoming::Reply(purpose, result) => app.on_reply(purpose, result),
                Incoming::Event(e) => app.on_event(&e),
                Incoming::Node(up) => app.on_node(up),
            });
        }
        for call in calls {
            if let Err(e) = net.call(call) {
                app.notice = Some(e);
            }
        }
    }
    Ok(())
}
