//! Human output: aligned tables and readable times.

use chrono::{Local, TimeZone};
use serde_json::Value;

/// A time as people read it: "14:05" today, "Mon 14:05" this week, else "2026-11-24 14:05".
pub(crate) fn time(ms: u64) -> String {
    let Some(t) = Local.timestamp_millis_opt(ms as i64).single() else { return "-".into() };
    let now = Local::now();
    let age = now.signed_duration_since(t);
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M").to_string()
    } else if age.num_days() < 6 && age.num_seconds() >= 0 {
        t.format("%a %H:%M").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M").to_string()
    }
}

/// Prints rows with columns padded to their widest cell.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

/// One line describing message content, for tables.
pub(crate) fn content(c: &Value) -> String {
    match c["type"].as_str() {
        Some("text") => {
            let text = c["text"].as_str().unwrap_or("").replace('\n', " ");
            match c["automatic"].as_str() {
                Some(kind) => format!("[{kind}] {text}"),
                None => text,
            }
        }
        Some("catalog_request") => "[asked for the catalog]".into(),
        Some("catalog") => {
            let items: Vec<String> = c["items"]
                .as_array()
                .map(|a| a.iter().map(|i| format!("{} {}", i["name"].as_str().unwrap_or(""), money(i))).collect())
                .unwrap_or_default();
            format!("[catalog] {}", items.join(", "))
        }
        Some("order") => {
            let lines: Vec<String> = c["items"]
                .as_array()
                .map(|a| a.iter().map(|l| format!("{}×{}", l["quantity"], l["item"].as_str().unwrap_or(""))).collect())
                .unwrap_or_default();
            format!("[order] {}", lines.join(", "))
        }
        _ => "[unreadable]".into(),
    }
}

/// "4.50 EUR" from an item with `price_minor` and `currency`.
pub(crate) fn money(item: &Value) -> String {
    let minor = item["price_minor"].as_u64().unwrap_or(0);
    format!("{}.{:02} {}", minor / 100, minor % 100, item["currency"].as_str().unwrap_or(""))
}

/// Delivery marks: ✓ sent, ✓ stored (in the recipient's mailbox), ✓✓
/// delivered, ✓✓ read (shown as "read").
pub(crate) fn status(s: &str) -> &'static str {
    match s {
        "queued" => "…",
        "sent" => "✓",
        "stored" => "✓ stored",
        "delivered" => "✓✓",
        "read" => "✓✓ read",
        "failed" => "✗ failed",
        _ => "",
    }
}
