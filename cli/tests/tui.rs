//! `kabar tui` driven in tmux (send-keys, capture-pane) against two running
//! nodes: open it, pick a contact, send and see the message delivered,
//! receive a reply live, resize the window, switch to the business tab,
//! answer a customer with a quick reply and close the conversation, quit
//! with the terminal restored; and the node going away and coming back.
//!
//! Needs tmux: `.ci/run` installs it and sets KABAR_TMUX_REQUIRED, so CI
//! fails rather than skips without it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, clippy::print_stderr, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

mod procs;
use procs::*;

/// Longest wait for the screen to show something.
const WAIT: Duration = Duration::from_secs(30);

/// A tmux server of its own, killed on drop; its socket is in a temporary
/// directory of its own, removed with it (`-L` would leave the socket file
/// in /tmp/tmux-UID after the server is killed).
struct Tmux {
    socket: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmux {
    /// A server with one 80×24 window running `command`, or None (with the
    /// reason printed) where tmux is missing and not required.
    fn start(command: &str) -> Option<Tmux> {
        if Command::new("tmux").arg("-V").output().is_err() {
            assert!(
                std::env::var_os("KABAR_TMUX_REQUIRED").is_none(),
                "tmux is required here (KABAR_TMUX_REQUIRED) but not installed"
            );
            eprintln!("skipping the tmux test: tmux is not installed");
            return None;
        }
        // One server per test: the tests of this file run in parallel.
        let dir = tempfile::tempdir().unwrap();
        let tmux = Tmux { socket: dir.path().join("tmux"), _dir: dir };
        let out = tmux.run(&["new-session", "-d", "-s", "t", "-x", "80", "-y", "24", command]);
        assert!(out.status.success(), "tmux: {}", String::from_utf8_lossy(&out.stderr));
        // The window keeps the size asked for, whatever clients attach.
        tmux.run(&["set-option", "-t", "t", "window-size", "manual"]);
        Some(tmux)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux").arg("-S").arg(&self.socket).args(["-f", "/dev/null"]).args(args).output().unwrap()
    }

    /// Types `keys` (tmux key names, or literal text with `literal`).
    fn keys(&self, keys: &[&str], literal: bool) {
        let mut args = vec!["send-keys", "-t", "t"];
        if literal {
            args.push("-l");
        }
        args.extend_from_slice(keys);
        assert!(self.run(&args).status.success());
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.run(&["capture-pane", "-p", "-t", "t"]).stdout).into_owned()
    }

    /// Waits until the screen shows `needle` (checked every 50 ms, at most
    /// [`WAIT`]); returns the screen.
    fn wait_for(&self, needle: &str) -> String {
        self.wait_until(needle, |s| s.contains(needle))
    }

    fn wait_until(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; the screen:\n{screen}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn resize(&self, width: u16, height: u16) {
        let (w, h) = (width.to_string(), height.to_string());
        assert!(self.run(&["resize-window", "-t", "t", "-x", &w, "-y", &h]).status.success());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

/// The command tmux runs: the TUI, then a line saying how it ended, then a
/// wait (so the line can be read; the server is killed at the end anyway).
fn tui_command(dir: &Path) -> String {
    format!("{BIN} --data-dir '{}' tui; echo \"TUI-EXITED $?\"; stty -a | grep -o ' -icanon' ; sleep 60", dir.display())
}

/// A child process of `parent` (from /proc: no procps needed).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // "pid (comm) state ppid …": the command name may hold spaces.
        let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent).then_some(pid)
    })
}

/// Two nodes: Ann (personal) and Ben, who runs a personal and a business
/// profile (`shop`). Ann is Ben's friend and a customer of his shop.
#[test]
fn a_person_and_a_shop_chat_in_the_tui_over_two_nodes() {
    let tmp = tempfile::tempdir().unwrap();
    let ann = init(tmp.path(), "ann", None);
    let ben = init(tmp.path(), "ben", Some("shop"));
    let _ann_node = RunningNode::start(&ann);
    let mut ben_node = Some(RunningNode::start(&ben));
    let card = |dir: &Path, profile: &str, name: &str| -> String {
        ok_json(dir, &["--profile", profile, "card", "--name", name])["card"].as_str().unwrap().to_string()
    };
    let (ann_card, ben_card, shop_card) =
        (card(&ann, "personal", "Ann"), card(&ben, "personal", "Ben"), card(&ben, "shop", "Marigold"));
    ok(&ann, &["contact", "add", &ben_card, "--name", "Ben"]);
    ok(&ann, &["contact", "add", &shop_card, "--name", "Bakery"]);
    ok(&ben, &["contact", "add", &ann_card, "--name", "Ann"]);
    ok(&ben, &["--profile", "shop", "business", "reply", "add", "/thanks", "Thank you for your order!"]);
    ok(&ann, &["send", "Ben", "Are you at the market today?", "--wait"]);
    // A new customer for the shop.
    ok(&ann, &["send", "Bakery", "Do you have sourdough?", "--wait"]);

    let Some(tmux) = Tmux::start(&tui_command(&ben)) else { return };
    let screen = tmux.wait_for("Ann (1)");
    assert!(screen.contains("as personal (personal)"), "{screen}");

    // Open the conversation (the first in the list), send, see it delivered.
    tmux.keys(&["Enter"], false);
    tmux.wait_for("Are you at the market today?");
    tmux.keys(&["Yes, until 2 — come by 👋"], true);
    tmux.keys(&["Enter"], false);
    tmux.wait_until("the message delivered (✓✓)", |s| {
        s.lines().any(|l| l.contains("you: Yes, until 2") && l.contains("✓✓"))
    });
    let history = ok_json(&ann, &["history", "Ben"]);
    assert_eq!(history["messages"].as_array().unwrap().last().unwrap()["content"]["text"], "Yes, until 2 — come by 👋");

    // A reply arrives live.
    ok(&ann, &["send", "Ben", "On my way!", "--wait"]);
    tmux.wait_for("Ann: On my way!");

    // Resize in the middle: wider, then back to 80×24; still whole.
    tmux.resize(120, 40);
    tmux.wait_until("the wider window drawn", |s| s.lines().any(|l| l.trim_end().chars().count() > 100));
    tmux.resize(80, 24);
    // Redrawn at 24 rows: the compose line's box starts on row 21 of 24.
    tmux.wait_until("the conversation redrawn at 80×24", |s| {
        s.lines().nth(20).is_some_and(|l| l.contains("┌ to Ann as personal")) && s.contains("Ann: On my way!")
    });

    // The business tab: the new customer, a quick reply, then close.
    tmux.keys(&["Escape"], false);
    tmux.wait_for("↑↓ select");
    tmux.keys(&["Tab"], false);
    let screen = tmux.wait_for("as shop (business)");
    tmux.wait_for("★new");
    assert!(!screen.contains("Are you at the market"), "the business tab shows only the shop's data:\n{screen}");
    tmux.keys(&["Enter"], false);
    tmux.wait_for("Do you have sourdough?");
    tmux.keys(&["/th"], true);
    tmux.keys(&["Tab"], false);
    tmux.wait_for("/thanks");
    tmux.keys(&["Enter"], false);
    tmux.wait_for("you: Thank you for your order!");
    let history = ok_json(&ann, &["history", "Bakery"]);
    let texts: Vec<&str> =
        history["messages"].as_array().unwrap().iter().filter_map(|m| m["content"]["text"].as_str()).collect();
    assert!(texts.contains(&"Thank you for your order!"), "{texts:?}");
    tmux.keys(&["C-x"], false);
    tmux.wait_for("· closed");
    let inbox = ok_json(&ben, &["--profile", "shop", "inbox"]);
    assert_eq!(inbox[0]["status"], "closed", "{inbox}");

    // The node goes away: the app says so and waits; it comes back.
    ben_node.take().unwrap().terminate();
    tmux.wait_for("The node went away");
    ben_node = Some(RunningNode::start(&ben));
    tmux.wait_until("the node back", |s| !s.contains("The node went away") && s.contains("as shop (business)"));

    // Quit: the terminal is restored (canonical mode back, the shell's line shown).
    tmux.keys(&["Escape"], false);
    tmux.wait_for("↑↓ select");
    tmux.keys(&["q"], true);
    let screen = tmux.wait_for("TUI-EXITED 0");
    assert!(!screen.contains("-icanon"), "the terminal is back in canonical mode:\n{screen}");
    drop(ben_node);
}

/// The app on a data directory with no node running (it waits for one, and
/// says so), in tmux: the directory, the server, and the app's pid.
fn solo_tui() -> Option<(tempfile::TempDir, Tmux, u32)> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path(), "solo", None);
    let tmux = Tmux::start(&tui_command(&dir))?;
    tmux.wait_for("No kabar node answers");
    let pid = tmux.run(&["list-panes", "-t", "t", "-F", "#{pane_pid}"]).stdout;
    let shell: u32 = String::from_utf8_lossy(&pid).trim().parse().unwrap();
    // The TUI is the shell's child.
    let tui = child_of(shell).expect("the TUI runs under the pane's shell");
    Some((tmp, tmux, tui))
}

/// SIGTERM (a closed SSH session's service manager, `kill`) ends the app
/// with the terminal restored.
#[test]
fn sigterm_restores_the_terminal() {
    let Some((_tmp, tmux, tui)) = solo_tui() else { return };
    assert!(Command::new("kill").args(["-TERM", &tui.to_string()]).status().unwrap().success());
    let screen = tmux.wait_for("TUI-EXITED");
    assert!(screen.contains("TUI-EXITED 0"), "{screen}");
    assert!(!screen.contains("-icanon"), "the terminal is back in canonical mode:\n{screen}");
}

/// The terminal goes away under the app (the SSH session or the window
/// closed: here the tmux server is killed): the app ends, instead of
/// spinning on the dead terminal for ever.
#[test]
fn the_app_ends_when_its_terminal_goes_away() {
    let Some((_tmp, tmux, tui)) = solo_tui() else { return };
    drop(tmux);
    // Gone, or a zombie nobody reaped yet (state Z): either way it ended.
    let ended = || {
        std::fs::read_to_string(format!("/proc/{tui}/stat"))
            .map_or(true, |stat| stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')))
    };
    let deadline = Instant::now() + WAIT;
    while !ended() {
        if Instant::now() > deadline {
            // Do not leave it spinning.
            let _ = Command::new("kill").args(["-KILL", &tui.to_string()]).status();
            panic!("the TUI (pid {tui}) still runs {WAIT:?} after its terminal went away");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
