//! Human output: aligned tables and readable times.

use anyhow::Result;
use chrono::{Local, TimeZone};
use serde_json::Value;

use crate::out::outln;
use crate::safe;

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

/// Prints rows with columns padded to their widest cell. Cells are one
/// line each: peer text in them is escaped ([`safe::printable`]) by whoever
/// builds the row, as [`cell`] does.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: &[String]| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        outln!("{}", out.trim_end())
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>())?;
    for row in rows {
        line(row)?;
    }
    Ok(())
}

/// A value of the node's JSON for one line of human output: a string as
/// [`safe::printable`] shows it, a number as written, null as nothing.
pub(crate) fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => safe::printable(s).into_owned(),
        Value::Null => String::new(),
        other => safe::printable(&other.to_string()).into_owned(),
    }
}

/// One line describing message content, for tables and history: what the
/// peer wrote is escaped ([`safe::printable`]); a message's line breaks
/// show as spaces.
pub(crate) fn content(c: &Value) -> String {
    match c["type"].as_str() {
        Some("text") => {
            let text = c["text"].as_str().unwrap_or("").replace('\n', " ");
            let text = safe::printable(&text);
            match c["automatic"].as_str() {
                Some(kind) => format!("[{}] {text}", safe::printable(kind)),
                None => text.into_owned(),
            }
        }
        Some("catalog_request") => "[asked for the catalog]".into(),
        Some("catalog") => {
            let items: Vec<String> = c["items"]
                .as_array()
                .map(|a| a.iter().map(|i| format!("{} {}", cell(&i["name"]), money(i))).collect())
                .unwrap_or_default();
            format!("[catalog] {}", items.join(", "))
        }
        Some("order") => {
            let lines: Vec<String> = c["items"]
                .as_array()
                .map(|a| a.iter().map(|l| format!("{}×{}", cell(&l["quantity"]), cell(&l["item"]))).collect())
                .unwrap_or_default();
            format!("[order] {}", lines.join(", "))
        }
        _ => "[unreadable]".into(),
    }
}

/// "4.50 EUR" from an item with `price_minor` and `currency`.
pub(crate) fn money(item: &Value) -> String {
    let minor = item["price_minor"].as_u64().unwrap_or(0);
    format!("{}.{:02} {}", minor / 100, minor % 100, safe::printable(item["currency"].as_str().unwrap_or("")))
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Nothing that reaches a terminal as a control: no Cc, no bidi override.
    fn tame(s: &str) -> bool {
        !s.chars().any(|c| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'))
    }

    #[test]
    fn content_a_peer_wrote_is_one_escaped_line() {
        let text = json!({"type": "text", "text": "a\x1b[2J\nb\u{9b}", "automatic": "away\x1b]0;t\x07"});
        assert_eq!(content(&text), "[away\\u{1b}]0;t\\u{7}] a\\u{1b}[2J b\\u{9b}");
        let catalog =
            json!({"type": "catalog", "items": [{"name": "Bun\u{202e}", "price_minor": 150, "currency": "EU\x1bR"}]});
        assert_eq!(content(&catalog), "[catalog] Bun\\u{202e} 1.50 EU\\u{1b}R");
        let order = json!({"type": "order", "items": [{"item": "x\ny", "quantity": 2}], "note": "\x1b[2J"});
        assert_eq!(content(&order), "[order] 2×x\\u{a}y");
        for c in [text, catalog, order] {
            assert!(tame(&content(&c)));
        }
        assert_eq!(content(&json!({"type": "text", "text": "Grüße 👋 寿司"})), "Grüße 👋 寿司");
    }

    #[test]
    fn cells_are_escaped_strings_numbers_or_nothing() {
        assert_eq!(cell(&json!("Mal\x1b]0;x\x07\u{2066}")), "Mal\\u{1b}]0;x\\u{7}\\u{2066}");
        assert_eq!(cell(&json!(3)), "3");
        assert_eq!(cell(&Value::Null), "");
        assert_eq!(cell(&json!("Bäckerei Köln")), "Bäckerei Köln");
    }
}
