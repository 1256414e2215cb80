//! `kabar send`, `kabar inbox`, `kabar history` and `kabar chat`: messages
//! and conversations.

use std::io::BufRead;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use serde_json::{Value, json};

use super::Ctx;
use crate::client::{Client, TimedOut};
use crate::out::{self, outln};
use crate::output::{self, cell};
use crate::{s, safe, show};

/// `kabar send NAME TEXT [--wait]`. With `--wait` it subscribes before
/// sending and follows the event stream until the message is delivered or
/// read (or refused); it asks `message.status` only if the stream says it
/// lagged (events were dropped).
pub(crate) fn send(ctx: &Ctx, name: &str, text: &str, wait: bool, timeout: u64) -> Result<()> {
    let mut client = ctx.client()?;
    if wait {
        client.subscribe()?;
    }
    // Events that arrive while the send is answered are kept: the message
    // may be delivered before its reply is read.
    let mut early: Vec<Value> = Vec::new();
    let v =
        client.call_with("message.send", ctx.p(json!({"to": name, "text": text})), &mut |e| early.push(e.clone()))?;
    let id = s(&v["message_id"]);
    let mut result = json!({"message_id": id, "status": "sent"});
    if wait {
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut early = early.into_iter();
        let mut last = String::from("sent");
        loop {
            let event = match early.next() {
                Some(e) => Some(e),
                None => client.next_event(deadline)?,
            };
            let Some(event) = event else {
                if ctx.json {
                    result["status"] = json!(last);
                    out::exact(&serde_json::to_string_pretty(&result)?)?;
                }
                return Err(TimedOut(format!(
                    "message {id} not delivered within {timeout} s; it stays queued and will be retried"
                ))
                .into());
            };
            let status = match event["event"].as_str() {
                Some("status_changed") if event["message_id"] == json!(id) => s(&event["status"]),
                // Events were dropped: the stream may have lost ours.
                Some("lagged") => s(&client.call("message.status", ctx.p(json!({"message_id": id})))?["status"]),
                _ => continue,
            };
            last.clone_from(&status);
            // Only the recipient's own acknowledgement counts: "stored" (held
            // by its mailbox while it is offline) is not delivered yet.
            match status.as_str() {
                "delivered" | "read" => {
                    result["status"] = json!(status);
                    break;
                }
                "failed" => bail!("message {id} failed: the recipient refused it"),
                _ => {}
            }
        }
    }
    ctx.show(&result, |o| outln!("{} {}", cell(&o["message_id"]), cell(&o["status"])))
}

/// `kabar inbox`: conversations, unread counts, labels, last messages.
pub(crate) fn inbox(ctx: &Ctx) -> Result<()> {
    let json = ctx.json;
    let v = ctx.client()?.call("conversation.list", ctx.p(json!({})))?;
    show(json, &v, |v| {
        let rows: Vec<Vec<String>> = v
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let last = &c["last_message"];
                let arrow = if last["direction"] == "out" { "you: " } else { "" };
                vec![
                    cell(&c["contact"]),
                    if c["unread"].as_u64().unwrap_or(0) > 0 { cell(&c["unread"]) } else { String::new() },
                    cell(&c["status"]),
                    c["labels"]
                        .as_array()
                        .map(|l| l.iter().map(cell).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default(),
                    output::time(c["last_activity_ms"].as_u64().unwrap_or(0)),
                    format!("{arrow}{}", output::content(&last["content"])),
                ]
            })
            .collect();
        output::table(&["CONTACT", "UNREAD", "STATUS", "LABELS", "WHEN", "LAST MESSAGE"], &rows)
    })
}

/// `kabar history NAME`.
pub(crate) fn history(ctx: &Ctx, name: &str, limit: u64) -> Result<()> {
    let v = ctx.client()?.call("message.history", ctx.p(json!({"with": name, "limit": limit})))?;
    ctx.show(&v, print_history)
}

pub(crate) fn chat(dir: &Path, profile: &str, name: &str) -> Result<()> {
    let mut client = Client::connect(dir)?;
    let history = client.call("message.history", json!({"profile": profile, "with": name, "limit": 20}))?;
    let contact = s(&history["contact"]);
    let shown = cell(&history["contact"]);
    outln!("── chat with {shown} ({}) · type and press Enter · Ctrl-D leaves ──", safe::printable(profile))?;
    print_history(&history)?;
    client.call("conversation.read", json!({"profile": profile, "with": name}))?;
    let mut events = Client::connect(dir)?;
    events.subscribe()?;
    // Lines typed by the user arrive through a bounded channel.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Option<String>>(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(l) => {
                    if tx.send(Some(l)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let mut mine: Vec<String> = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(Some(line)) if line.trim().is_empty() => {}
            Ok(Some(line)) => {
                match client.call("message.send", json!({"profile": profile, "to": name, "text": line})) {
                    Ok(v) => mine.push(s(&v["message_id"])),
                    Err(e) => eprintln!("! {}", safe::printable_block(&format!("{e:#}"))),
                }
            }
            Ok(None) | Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        if let Some(e) = events.next_event(Instant::now() + Duration::from_millis(100))? {
            match e["event"].as_str() {
                Some("message_received") if e["profile"] == json!(profile) && e["contact"] == json!(contact) => {
                    let m =
                        client.call("message.status", json!({"profile": profile, "message_id": e["message_id"]}))?;
                    outln!("{}", history_line(&m, &shown))?;
                    client.call("conversation.read", json!({"profile": profile, "with": name}))?;
                }
                Some("status_changed") if mine.iter().any(|id| e["message_id"] == json!(id)) => {
                    outln!("{:>11}  {}", "", output::status(e["status"].as_str().unwrap_or("")))?;
                }
                _ => {}
            }
        }
        out::flush()?;
    }
    Ok(())
}

/// `kabar history` (and the start of `kabar chat`) for humans.
pub(crate) fn print_history(v: &Value) -> Result<()> {
    let contact = cell(&v["contact"]);
    for m in v["messages"].as_array().into_iter().flatten() {
        outln!("{}", history_line(m, &contact))?;
    }
    Ok(())
}

/// One message of a conversation with `contact` (already escaped) as a line
/// of `kabar history` and `kabar chat`: peer text escaped, one line.
pub(crate) fn history_line(m: &Value, contact: &str) -> String {
    let who = if m["direction"] == "out" { "you" } else { contact };
    let mark = if m["direction"] == "out" { output::status(m["status"].as_str().unwrap_or("")) } else { "" };
    // The sender's clock, marked when it lies in the future.
    let future = if m["sent_at_in_future"] == true { "(future!) " } else { "" };
    let line = format!(
        "{:>11}  {:<12} {future}{} {}",
        output::time(m["sent_at_ms"].as_u64().unwrap_or(0)),
        who,
        output::content(&m["content"]),
        mark
    );
    line.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history line of a message from a contact whose name (from its card)
    /// and text carry escape sequences: shown escaped, on one line.
    #[test]
    fn a_history_line_shows_a_peers_escapes_on_one_line() {
        let v = json!({"contact": "Mal\x1b]0;pwned\x07\u{202e}", "messages": [{
            "direction": "in", "status": "delivered", "sent_at_ms": 0,
            "content": {"type": "text", "text": "hi\x1b[2J\u{9b}31m\u{7f}\r\nFAKE line"},
        }]});
        let line = history_line(&v["messages"][0], &cell(&v["contact"]));
        assert!(!line.chars().any(char::is_control), "{line:?}");
        assert!(
            line.contains("Mal\\u{1b}]0;pwned\\u{7}\\u{202e} hi\\u{1b}[2J\\u{9b}31m\\u{7f}\\u{d} FAKE line"),
            "{line}"
        );
    }
}
