//! The compose line (and the rename field): text with a cursor, edited by
//! characters, never by bytes, so wide characters and emoji stay whole.

use unicode_width::UnicodeWidthChar;

/// Longest text the compose line takes (the node takes 32 KiB per text).
pub(crate) const MAX_INPUT_CHARS: usize = 8_192;

/// A line of text being typed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Input {
    text: String,
    /// The cursor, in characters from the start.
    cursor: usize,
}

impl Input {
    /// The text.
    pub(crate) fn text(&self) -> &str {
        &self.text
    }

    /// Replaces the text; the cursor goes to its end.
    pub(crate) fn set(&mut self, text: &str) {
        self.text = text.chars().take(MAX_INPUT_CHARS).collect();
        self.cursor = self.text.chars().count();
    }

    /// Empties the line and returns what it held.
    pub(crate) fn take(&mut self) -> String {
        self.cursor = 0;
        std::mem::take(&mut self.text)
    }

    fn byte_at(&self, chars: usize) -> usize {
        self.text.char_indices().nth(chars).map_or(self.text.len(), |(i, _)| i)
    }

    /// Types `c` at the cursor (control characters are ignored; a newline
    /// from a paste becomes a space).
    pub(crate) fn insert(&mut self, c: char) {
        let c = if c == '\n' || c == '\r' || c == '\t' { ' ' } else { c };
        if c.is_control() || self.text.chars().count() >= MAX_INPUT_CHARS {
            return;
        }
        let at = self.byte_at(self.cursor);
        self.text.insert(at, c);
        self.cursor += 1;
    }

    /// Deletes the character before the cursor.
    pub(crate) fn backspace(&mut self) {
        if self.cursor == 0 {
            return;
        }
        self.cursor -= 1;
        let at = self.byte_at(self.cursor);
        self.text.remove(at);
    }

    /// Deletes the character under the cursor.
    pub(crate) fn delete(&mut self) {
        if self.cursor < self.text.chars().count() {
            let at = self.byte_at(self.cursor);
            self.text.remove(at);
        }
    }

    pub(crate) fn left(&mut self) {
        self.cursor = self.cursor.saturating_sub(1);
    }

    pub(crate) fn right(&mut self) {
        self.cursor = (self.cursor + 1).min(self.text.chars().count());
    }

    pub(crate) fn home(&mut self) {
        self.cursor = 0;
    }

    pub(crate) fn end(&mut self) {
        self.cursor = self.text.chars().count();
    }

    /// What to show in `width` columns, and the cursor's column in it: the
    /// text scrolls left so that the cursor stays in view.
    pub(crate) fn view(&self, width: usize) -> (String, usize) {
        if width == 0 {
            return (String::new(), 0);
        }
        let chars: Vec<char> = self.text.chars().collect();
        let w = |c: &char| c.width().unwrap_or(0);
        // Start as far left as possible while the cursor (one column after
        // the text before it) still fits.
        let mut start = 0;
        let before = |s: usize| chars[s..self.cursor].iter().map(w).sum::<usize>();
        while start < self.cursor && before(start) >= width {
            start += 1;
        }
        let mut shown = String::new();
        let mut used = 0;
        for c in &chars[start..] {
            let cw = w(c);
            if used + cw > width {
                break;
            }
            used += cw;
            shown.push(*c);
        }
        (shown, before(start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_by_character_with_wide_ones_and_emoji() {
        let mut i = Input::default();
        for c in "寿司👋ok".chars() {
            i.insert(c);
        }
        i.left();
        i.left();
        i.backspace();
        assert_eq!(i.text(), "寿司ok");
        i.home();
        i.delete();
        assert_eq!(i.text(), "司ok");
        i.insert('\x1b');
        i.insert('\n');
        assert_eq!(i.text(), " 司ok", "controls dropped, a pasted newline is a space");
        assert_eq!(i.take(), " 司ok");
        assert_eq!(i.text(), "");
        i.backspace();
        i.delete();
        i.left();
        assert_eq!(i.text(), "");
    }

    #[test]
    fn the_view_keeps_the_cursor_visible_in_any_width() {
        let mut i = Input::default();
        i.set(&"x".repeat(30));
        let (shown, col) = i.view(10);
        assert_eq!(col, 9);
        assert!(shown.chars().count() <= 10);
        i.home();
        assert_eq!(i.view(10), ("x".repeat(10), 0));
        i.set("寿寿寿寿寿");
        let (shown, col) = i.view(4);
        assert!(col < 4 && unicode_width::UnicodeWidthStr::width(shown.as_str()) <= 4, "{shown:?} {col}");
        assert_eq!(i.view(0), (String::new(), 0));
        i.set(&"y".repeat(MAX_INPUT_CHARS + 10));
        assert_eq!(i.text().chars().count(), MAX_INPUT_CHARS);
    }
}
