//! Text from other peers (and from the node's data, which holds it) made
//! safe to print on a terminal.
//!
//! A peer chooses message text, the name on its card, catalog items, order
//! lines and more. Printed raw, an ESC (`\x1b`) starts an ANSI escape
//! sequence: CSI `\x1b[2J` clears the screen, OSC `\x1b]0;…\x07` sets the
//! window title, OSC 8 makes hyperlinks; C1 controls such as U+009B (CSI)
//! do the same on terminals that honour them, `\r` overwrites a line, `\n`
//! fakes one, and bidirectional overrides (U+202E) reorder what is shown.
//!
//! Every such character is replaced by a visible escape, `\u{…}` with its
//! code point in lower-case hexadecimal: ESC shows as `\u{1b}`, U+202E as
//! `\u{202e}`. Everything else, emoji and wide characters included, is left
//! as it is. `--json` output is never passed through here.

use std::borrow::Cow;
use std::fmt::Write;

/// Whether `c` is replaced: a control character (Unicode category Cc: C0,
/// DEL, C1) or a bidirectional embedding, override or isolate (U+202A to
/// U+202E, U+2066 to U+2069).
fn unsafe_char(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// `s` with every unsafe character replaced by `\u{…}`; characters for
/// which `keep` is true stay. Borrowed when nothing is replaced.
fn escape(s: &str, keep: impl Fn(char) -> bool) -> Cow<'_, str> {
    if !s.chars().any(|c| unsafe_char(c) && !keep(c)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if unsafe_char(c) && !keep(c) {
            // Writing to a String cannot fail.
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` for a one-line place (a table cell, a name, a message in a list):
/// every control character, newline and tab included, and every bidi
/// override or isolate is shown as `\u{…}`.
pub(crate) fn printable(s: &str) -> Cow<'_, str> {
    escape(s, |_| false)
}

/// `s` shown as a block of lines: as [`printable`], but a newline stays a
/// newline (each line is escaped all the same).
pub(crate) fn printable_block(s: &str) -> Cow<'_, str> {
    escape(s, |c| c == '\n')
}

/// Serialized JSON (`serde_json`, which escapes C0 controls already) with
/// DEL, C1 controls and bidi overrides written as JSON `\uXXXX` escapes:
/// the same JSON value, safe on a terminal. For the JSON that `kabar rpc`
/// prints without `--json`; `--json` output stays exactly as serialized.
pub(crate) fn printable_json(json: &str) -> Cow<'_, str> {
    if !json.chars().any(unsafe_char) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    for c in json.chars() {
        // Outside strings JSON is ASCII without controls (besides the
        // whitespace newline, space and tab, kept), so each replaced
        // character is inside a string, where `\uXXXX` means it exactly.
        if unsafe_char(c) && !matches!(c, '\n' | '\t' | '\r') {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_run() {
        // A lone ESC, CSI (clear screen), OSC (window title, BEL-terminated).
        assert_eq!(printable("a\x1bb"), "a\\u{1b}b");
        assert_eq!(printable("\x1b[2J"), "\\u{1b}[2J");
        assert_eq!(printable("\x1b]0;title\x07"), "\\u{1b}]0;title\\u{7}");
        // OSC 8 hyperlink, terminated by ST (ESC \).
        assert_eq!(
            printable("\x1b]8;;https://evil.example\x1b\\bank\x1b]8;;\x1b\\"),
            "\\u{1b}]8;;https://evil.example\\u{1b}\\bank\\u{1b}]8;;\\u{1b}\\"
        );
        // C1 controls: the one-character CSI, and the rest of 0x80-0x9f.
        assert_eq!(printable("\u{9b}31mred"), "\\u{9b}31mred");
        assert_eq!(printable("\u{80}\u{9f}"), "\\u{80}\\u{9f}");
        // DEL, NUL, carriage return (overwrites the line), backspace.
        assert_eq!(printable("x\x7fy\0z"), "x\\u{7f}y\\u{0}z");
        assert_eq!(printable("ok\rfake"), "ok\\u{d}fake");
        assert_eq!(printable("a\x08b"), "a\\u{8}b");
    }

    #[test]
    fn bidi_overrides_and_isolates_are_shown() {
        assert_eq!(printable("invoice\u{202e}fdp.exe"), "invoice\\u{202e}fdp.exe");
        for c in ('\u{202a}'..='\u{202e}').chain('\u{2066}'..='\u{2069}') {
            assert_eq!(printable(&c.to_string()), format!("\\u{{{:x}}}", u32::from(c)));
        }
    }

    #[test]
    fn newlines_are_escaped_on_one_line_and_kept_in_a_block() {
        assert_eq!(printable("one\ntwo\tthree"), "one\\u{a}two\\u{9}three");
        assert_eq!(printable_block("one\ntwo"), "one\ntwo");
        assert_eq!(printable_block("one\n\x1b[2Jtwo\r\n"), "one\n\\u{1b}[2Jtwo\\u{d}\n");
    }

    #[test]
    fn ordinary_text_is_unchanged_and_borrowed() {
        for s in [
            "",
            "See you at 8",
            "Grüße aus Köln — 4,50 €",
            "مرحبا بالعالم",
            "שלום",
            "寿司とラーメン",
            "👩‍👩‍👧 🇳🇱 ❤️",
            "a\\u{1b}b",
            "\u{200d}\u{fe0f}",
        ] {
            assert!(matches!(printable(s), Cow::Borrowed(b) if b == s), "{s:?}");
            assert!(matches!(printable_block(s), Cow::Borrowed(b) if b == s), "{s:?}");
        }
    }

    #[test]
    fn json_keeps_its_value_and_loses_the_raw_controls() {
        let value = serde_json::json!({"text": "a\x1b[2J\u{9b}\u{7f}\u{202e}b\nc", "n": 1});
        let serialized = serde_json::to_string_pretty(&value).unwrap_or_default();
        let shown = printable_json(&serialized);
        assert!(!shown.chars().any(|c| unsafe_char(c) && c != '\n'), "{shown}");
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).ok(), Some(value));
        assert!(matches!(printable_json("{\"a\": \"b\"}"), Cow::Borrowed(_)));
    }
}
