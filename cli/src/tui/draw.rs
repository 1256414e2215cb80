//! Drawing `kabar tui` from its state. Peer text is escaped before it is
//! drawn ([`crate::safe`]), lines are wrapped and cut by display width (so
//! wide characters and emoji stay whole), and any size of terminal is
//! drawn without panicking (below [`MIN_WIDTH`]×[`MIN_HEIGHT`] it says so).

use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph, Wrap};
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

use super::app::{App, Chat, Focus, Overlay, Profile};
use crate::{output, safe};

/// Smallest terminal drawn in full.
pub(crate) const MIN_WIDTH: u16 = 30;
pub(crate) const MIN_HEIGHT: u16 = 8;
/// Width from which the list and the conversation are side by side.
const SPLIT_WIDTH: u16 = 70;

fn kind_colour(business: bool) -> Color {
    if business { Color::Yellow } else { Color::Cyan }
}

/// `s` cut to `width` columns, with "…" if cut.
pub(crate) fn fit(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w + 1 > width {
            break;
        }
        used += w;
        out.push(c);
    }
    if width > 0 {
        out.push('…');
    }
    out
}

/// `s` broken into rows of at most `width` columns (by character: a
/// messenger's lines are short and may have no spaces, as in CJK).
pub(crate) fn wrap(s: &str, width: usize) -> Vec<String> {
    if width == 0 {
        return Vec::new();
    }
    let mut rows = vec![String::new()];
    let mut used = 0;
    for c in s.chars() {
        let w = c.width().unwrap_or(0);
        if used + w > width {
            rows.push(String::new());
            used = 0;
        }
        if let Some(row) = rows.last_mut() {
            row.push(c);
        }
        used += w;
    }
    rows
}

/// A time for the conversation list, in at most 10 columns: "14:05"
/// today, "Mon" this week, "24 Nov" this year, else "2024-11-24".
pub(crate) fn short_time(ms: u64) -> String {
    use chrono::{Datelike, Local, TimeZone};
    let Some(t) = i64::try_from(ms).ok().and_then(|ms| Local.timestamp_millis_opt(ms).single()) else {
        return String::new();
    };
    let now = Local::now();
    let age = now.signed_duration_since(t);
    if t.date_naive() == now.date_naive() {
        t.format("%H:%M").to_string()
    } else if age.num_days() < 6 && age.num_seconds() >= 0 {
        t.format("%a").to_string()
    } else if t.year() == now.year() {
        t.format("%d %b").to_string()
    } else {
        t.format("%Y-%m-%d").to_string()
    }
}

/// Draws the whole screen.
pub(crate) fn draw(f: &mut Frame<'_>, app: &App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let text = format!("kabar: the terminal is too small ({}×{}); make it at least 30×8", area.width, area.height);
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }), area);
        return;
    }
    let [header, body, footer] =
        Layout::vertical([Constraint::Length(1), Constraint::Min(3), Constraint::Length(1)]).areas(area);
    draw_header(f, header, app);
    draw_footer(f, footer, app);
    match app.profile() {
        Some(p) => draw_body(f, body, app, p),
        None => {
            let text = if app.node_up {
                "Reading the node's profiles…".to_string()
            } else {
                "No kabar node answers on this data directory.\n\nStart one in another terminal: kabar node run\n\nWaiting for it… (q quits)".to_string()
            };
            f.render_widget(Paragraph::new(text).wrap(Wrap { trim: false }).block(Block::bordered()), body);
        }
    }
    if let Some(overlay) = &app.overlay {
        draw_overlay(f, body, app, overlay);
    }
}

fn draw_header(f: &mut Frame<'_>, area: Rect, app: &App) {
    let mut spans = vec![Span::styled(" kabar ", Style::new().add_modifier(Modifier::BOLD))];
    for (i, p) in app.profiles.iter().enumerate() {
        let label = format!(" {} {}{} ", i + 1, safe::printable(&p.name), if p.business { " ▪biz" } else { "" });
        let style = if i == app.active {
            Style::new().fg(Color::Black).bg(kind_colour(p.business)).add_modifier(Modifier::BOLD)
        } else {
            Style::new().fg(kind_colour(p.business))
        };
        spans.push(Span::styled(label, style));
        spans.push(Span::raw(" "));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
    // Who you are acting as, on the right, always.
    if let Some(p) = app.profile() {
        let kind = if p.business { "business" } else { "personal" };
        let who = format!(" as {} ({kind}) ", safe::printable(&p.name));
        let width = (who.width() as u16).min(area.width);
        let right = Rect { x: area.x + area.width - width, width, ..area };
        let style = Style::new().fg(Color::Black).bg(kind_colour(p.business)).add_modifier(Modifier::BOLD);
        f.render_widget(Paragraph::new(Span::styled(fit(&who, width as usize), style)), right);
    }
}

fn hints(app: &App) -> String {
    let business = app.profile().is_some_and(|p| p.business);
    match (app.focus, business) {
        (Focus::List, false) => {
            "↑↓ select · Enter open · Tab profile · r requests · c card · s safety · o catalog · ? help · q quit".into()
        }
        (Focus::List, true) => "↑↓ select · Enter open · Tab profile · f filter · x close/reopen · l label · o catalog · c card · ? help · q quit".into(),
        (Focus::Compose, false) => "Enter send · Esc list · PgUp/PgDn scroll · Ctrl-O catalog · Ctrl-S safety · F1 help".into(),
        (Focus::Compose, true) => {
            "Enter send · / + Tab quick reply · Esc list · Ctrl-X close · Ctrl-L label · Ctrl-O catalog · F1 help".into()
        }
    }
}

fn draw_footer(f: &mut Frame<'_>, area: Rect, app: &App) {
    let (text, style) = if !app.node_up && !app.profiles.is_empty() {
        (
            "The node went away; reconnecting… (what is shown may be stale; q quits)".to_string(),
            Style::new().fg(Color::White).bg(Color::Red),
        )
    } else if !app.completions.is_empty() {
        (completion_line(app), Style::new().fg(Color::Yellow))
    } else if let Some(notice) = &app.notice {
        (notice.clone(), Style::new().fg(Color::Magenta))
    } else {
        (hints(app), Style::new().fg(Color::DarkGray))
    };
    f.render_widget(Paragraph::new(Span::styled(fit(&text, area.width as usize), style)), area);
}

/// The quick reply the compose line holds and what it sends, with its
/// place among the matches: `/thanks → Thank you for your order! (1/2, Tab: next)`.
fn completion_line(app: &App) -> String {
    let shown = app.compose.text();
    let place = app.completions.iter().position(|c| c == shown).map_or(0, |i| i + 1);
    let text = app
        .profile()
        .and_then(|p| p.replies.iter().find(|(s, _)| shown.strip_prefix('/') == Some(s.as_str())))
        .map_or(String::new(), |(_, text)| safe::printable(text).into_owned());
    format!("{} → {text} ({place}/{}, Tab: next)", safe::printable(shown), app.completions.len())
}

fn draw_body(f: &mut Frame<'_>, area: Rect, app: &App, p: &Profile) {
    let chat_open = p.chat.is_some();
    if area.width >= SPLIT_WIDTH {
        let list_width = (area.width * 35 / 100).clamp(24, 40);
        let [list, chat] = Layout::horizontal([Constraint::Length(list_width), Constraint::Min(10)]).areas(area);
        draw_list(f, list, app, p);
        draw_chat(f, chat, app, p);
    } else if app.focus == Focus::Compose && chat_open {
        draw_chat(f, area, app, p);
    } else {
        draw_list(f, area, app, p);
    }
}

fn draw_list(f: &mut Frame<'_>, area: Rect, app: &App, p: &Profile) {
    let filter = if p.business { format!(" · {}", p.filter.name()) } else { String::new() };
    let requests =
        if p.requests.is_empty() { String::new() } else { format!(" · {} request(s): r", p.requests.len()) };
    let focused = app.focus == Focus::List && app.overlay.is_none();
    let block = Block::bordered()
        .title(fit(&format!(" {}{filter}{requests} ", safe::printable(&p.name)), area.width.saturating_sub(2) as usize))
        .border_style(if focused { Style::new().fg(kind_colour(p.business)) } else { Style::new() });
    let inner = block.inner(area).width as usize;
    let visible = p.visible();
    if visible.is_empty() {
        let text = if p.conversations.is_empty() {
            "No conversations yet. Share your card (c) and add contacts with `kabar contact add`."
        } else {
            "No conversation matches the filter (f)."
        };
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }).block(block), area);
        return;
    }
    let items: Vec<ListItem<'_>> = visible
        .iter()
        .map(|c| {
            let when = short_time(c.last_ms);
            let mut name = safe::printable(&c.contact).into_owned();
            if c.unread > 0 {
                name = format!("● {name} ({})", c.unread);
            }
            if c.new_customer() {
                name.push_str(" ★new");
            }
            let room = inner.saturating_sub(when.width() + 1);
            let name = fit(&name, room);
            let pad = inner.saturating_sub(name.width() + when.width());
            let bold = if c.unread > 0 { Style::new().add_modifier(Modifier::BOLD) } else { Style::new() };
            let first = Line::from(vec![Span::styled(name, bold), Span::raw(" ".repeat(pad)), Span::raw(when)]);
            let mut second = c.last.clone();
            let labels: Vec<String> = c
                .labels
                .iter()
                .filter(|l| *l != super::app::NEW_CUSTOMER)
                .map(|l| safe::printable(l).into_owned())
                .collect();
            if !labels.is_empty() {
                second = format!("[{}] {second}", labels.join(","));
            }
            if c.closed {
                second = format!("(closed) {second}");
            }
            if c.request {
                second = format!("(request) {second}");
            }
            let second = Line::styled(fit(&format!("  {second}"), inner), Style::new().fg(Color::Gray));
            ListItem::new(vec![first, second])
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(p.selected.min(visible.len() - 1)));
    let list = List::new(items).block(block).highlight_style(Style::new().add_modifier(Modifier::REVERSED));
    f.render_stateful_widget(list, area, &mut state);
}

fn draw_chat(f: &mut Frame<'_>, area: Rect, app: &App, p: &Profile) {
    let Some(chat) = &p.chat else {
        let text = "Pick a conversation on the left and press Enter.";
        f.render_widget(Paragraph::new(text).wrap(Wrap { trim: true }).block(Block::bordered()), area);
        return;
    };
    let conversation = p.conversation(&chat.contact);
    let mut title = format!(" {} ", safe::printable(&chat.contact));
    if p.business
        && let Some(c) = conversation
    {
        title = format!(" {} · {} ", safe::printable(&chat.contact), if c.closed { "closed" } else { "open" });
        let labels: Vec<String> = c.labels.iter().map(|l| safe::printable(l).into_owned()).collect();
        if !labels.is_empty() {
            title.push_str(&format!("· {} ", labels.join(", ")));
        }
    }
    let compose_height = 3;
    let panel_height = u16::from(p.business);
    let [panel, messages, compose] =
        Layout::vertical([Constraint::Length(panel_height), Constraint::Min(1), Constraint::Length(compose_height)])
            .areas(area);
    if p.business {
        let greeting = match p.greeting {
            Some(true) => "greeting on",
            Some(false) => "greeting off",
            None => "greeting ?",
        };
        let away = p.away.as_deref().unwrap_or("?");
        let text = format!(" {greeting} · away: {away} · Ctrl-X close/reopen · Ctrl-L labels");
        f.render_widget(
            Paragraph::new(Span::styled(fit(&text, panel.width as usize), Style::new().fg(Color::Yellow))),
            panel,
        );
    }
    let block = Block::bordered().title(fit(&title, messages.width.saturating_sub(2) as usize));
    let inner = block.inner(messages);
    f.render_widget(block, messages);
    let rows = message_rows(chat, inner.width as usize, inner.height as usize);
    let lines: Vec<Line<'_>> = rows.into_iter().map(|(text, style)| Line::styled(text, style)).collect();
    f.render_widget(Paragraph::new(lines), inner);

    let focused = app.focus == Focus::Compose && app.overlay.is_none();
    let kind = if p.business { "business" } else { "personal" };
    let compose_title = format!(" to {} as {} ({kind}) ", safe::printable(&chat.contact), safe::printable(&p.name));
    let block = Block::bordered()
        .title(fit(&compose_title, compose.width.saturating_sub(2) as usize))
        .border_style(if focused { Style::new().fg(kind_colour(p.business)) } else { Style::new() });
    let inner = block.inner(compose);
    f.render_widget(block, compose);
    let (shown, cursor) = app.compose.view(inner.width.saturating_sub(1) as usize);
    f.render_widget(Paragraph::new(shown), inner);
    if focused && inner.width > 0 && inner.height > 0 {
        f.set_cursor_position(Position { x: inner.x + (cursor as u16).min(inner.width - 1), y: inner.y });
    }
}

/// The rows of the conversation that fill `height` rows of `width`
/// columns, bottom-aligned, ending at the newest message not scrolled away.
pub(crate) fn message_rows(chat: &Chat, width: usize, height: usize) -> Vec<(String, Style)> {
    let end = chat.messages.len().saturating_sub(chat.scroll);
    let mut rows: Vec<(String, Style)> = Vec::new();
    let contact = safe::printable(&chat.contact).into_owned();
    for m in chat.messages[..end].iter().rev() {
        if rows.len() >= height {
            break;
        }
        let who = if m.out { "you" } else { contact.as_str() };
        let mark = if m.out { format!(" {}", output::status(&m.status)) } else { String::new() };
        let line = format!("{} {who}: {}{mark}", output::time(m.at_ms), m.text);
        let style = if m.out { Style::new().fg(Color::Cyan) } else { Style::new() };
        for row in wrap(&line, width).into_iter().rev() {
            rows.push((row, style));
        }
    }
    if rows.len() < height && end > 0 || chat.messages.is_empty() {
        let note = if chat.loading {
            "loading…"
        } else if chat.all_loaded {
            "— start of the conversation —"
        } else {
            "PgUp: older messages"
        };
        rows.push((fit(note, width), Style::new().fg(Color::DarkGray)));
    }
    rows.truncate(height);
    rows.reverse();
    rows
}

/// A rectangle of at most `width`×`height` in the middle of `area`.
fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect { x: area.x + (area.width - width) / 2, y: area.y + (area.height - height) / 2, width, height }
}

fn help_lines() -> Vec<&'static str> {
    vec![
        "Conversation list",
        "  ↑ ↓ or j k   select            Enter   open the conversation",
        "  Tab, 1–9     switch profile     r       message requests",
        "  c            your card + QR     s       safety number",
        "  o            catalog            n       rename the contact",
        "  q            quit",
        "  business:    f filter · x close/reopen · l labels",
        "Conversation",
        "  Enter        send               Esc     back to the list",
        "  PgUp PgDn    scroll (older pages load as you go)",
        "  Ctrl-O       catalog: order, or send an item (business)",
        "  Ctrl-S       safety number      Ctrl-U  clear the line",
        "  business:    /short + Tab quick reply · Ctrl-X close · Ctrl-L labels",
        "Anywhere: Ctrl-C quits · F1 this help · Esc closes a window",
    ]
}

fn draw_overlay(f: &mut Frame<'_>, area: Rect, app: &App, overlay: &Overlay) {
    let Some(p) = app.profile() else { return };
    let (title, lines, width): (String, Vec<Line<'_>>, u16) = match overlay {
        Overlay::Help => (" Keys ".into(), help_lines().into_iter().map(Line::raw).collect(), 76),
        Overlay::Requests { selected } => {
            let mut lines: Vec<Line<'_>> = if p.requests.is_empty() {
                vec![Line::raw("No message requests.")]
            } else {
                p.requests
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let text = format!(
                            "{} {}  {}",
                            if i == *selected { "›" } else { " " },
                            safe::printable(&r.name),
                            safe::printable(&r.peer_id)
                        );
                        let style =
                            if i == *selected { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
                        Line::styled(text, style)
                    })
                    .collect()
            };
            lines.push(Line::raw(""));
            lines.push(Line::styled("a accept · n accept as… · b block · Esc close", Style::new().fg(Color::DarkGray)));
            (format!(" Message requests · {} ", safe::printable(&p.name)), lines, 70)
        }
        Overlay::Rename { request, input, accept } => {
            let (shown, _) = input.view(40);
            let (title, what, keys) = if *accept {
                (" Accept as ", "Accept", "Enter accept · Esc back")
            } else {
                (" Rename ", "Rename", "Enter rename · Esc cancel")
            };
            (
                title.into(),
                vec![
                    Line::raw(format!("{what} {} as:", safe::printable(request))),
                    Line::styled(format!("{shown}▏"), Style::new().add_modifier(Modifier::BOLD)),
                    Line::raw(""),
                    Line::styled(keys, Style::new().fg(Color::DarkGray)),
                ],
                50,
            )
        }
        Overlay::Card { card } => {
            let mut lines = Vec::new();
            match card {
                None => lines.push(Line::raw("Reading the card…")),
                Some(card) => {
                    let qr = crate::commands::profile::qr_code(card).unwrap_or_default();
                    let qr_fits = qr.lines().all(|l| l.width() + 2 <= area.width as usize)
                        && qr.lines().count() + 6 <= area.height as usize;
                    if qr_fits {
                        lines.extend(qr.lines().map(|l| Line::raw(l.to_string())));
                    } else {
                        lines.push(Line::styled(
                            "(make the window larger to see the QR code)",
                            Style::new().fg(Color::DarkGray),
                        ));
                    }
                    for row in wrap(&safe::printable(card), area.width.saturating_sub(4) as usize) {
                        lines.push(Line::raw(row));
                    }
                }
            }
            (format!(" Card of {} ", safe::printable(&p.name)), lines, area.width)
        }
        Overlay::Safety { with, number, verified } => {
            let mut lines = vec![Line::raw(format!("Safety number with {}:", safe::printable(with))), Line::raw("")];
            match number {
                None => lines.push(Line::raw("…")),
                Some(n) => {
                    for row in wrap(&safe::printable(n), 36) {
                        lines.push(Line::styled(format!("  {row}"), Style::new().add_modifier(Modifier::BOLD)));
                    }
                }
            }
            lines.push(Line::raw(""));
            lines.push(if *verified {
                Line::styled("✓ verified", Style::new().fg(Color::Green))
            } else {
                Line::raw("Compare it in person or on a call; if it matches press v.")
            });
            lines.push(Line::styled("Esc close", Style::new().fg(Color::DarkGray)));
            (" Safety number ".into(), lines, 64)
        }
        Overlay::Labels { with, selected } => {
            let applied: Vec<String> = p.conversation(with).map(|c| c.labels.clone()).unwrap_or_default();
            let mut lines: Vec<Line<'_>> = p
                .labels
                .iter()
                .enumerate()
                .map(|(i, l)| {
                    let mark = if applied.contains(l) { "[x]" } else { "[ ]" };
                    let style =
                        if i == *selected { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
                    Line::styled(format!("{mark} {}", safe::printable(l)), style)
                })
                .collect();
            if lines.is_empty() {
                lines.push(Line::raw("No labels; add some with `kabar business label add`."));
            }
            lines.push(Line::styled("Enter apply/remove · Esc close", Style::new().fg(Color::DarkGray)));
            (format!(" Labels · {} ", safe::printable(with)), lines, 50)
        }
        Overlay::Catalog { with, own, items, selected, quantities } => {
            let mut lines: Vec<Line<'_>> = items
                .iter()
                .enumerate()
                .map(|(i, item)| {
                    let qty =
                        if *own { String::new() } else { format!("  ×{}", quantities.get(i).copied().unwrap_or(0)) };
                    let text = format!("{}  {}{qty}", output::cell(&item["name"]), output::money(item));
                    let style =
                        if i == *selected { Style::new().add_modifier(Modifier::REVERSED) } else { Style::new() };
                    Line::styled(text, style)
                })
                .collect();
            lines.push(Line::raw(""));
            let hint = if *own {
                "Enter send the item · Esc close"
            } else {
                "+/- quantity · Enter place the order · Esc close"
            };
            lines.push(Line::styled(hint, Style::new().fg(Color::DarkGray)));
            let title = if *own {
                format!(" Send an item to {} ", safe::printable(with))
            } else {
                format!(" Order from {} ", safe::printable(with))
            };
            (title, lines, 60)
        }
    };
    let height = (lines.len() as u16).saturating_add(2);
    let rect = centered(area, width, height);
    f.render_widget(Clear, rect);
    let block = Block::bordered().title(fit(&title, rect.width.saturating_sub(2) as usize));
    let lines: Vec<Line<'_>> = lines;
    f.render_widget(Paragraph::new(lines).block(block), rect);
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use ratatui::crossterm::event::KeyCode;
    use serde_json::json;

    use super::super::app::Purpose;
    use super::super::app::tests::{key, loaded, typed};
    use super::*;

    /// The drawn screen as text, one string per row.
    fn screen(app: &App, width: u16, height: u16) -> Vec<String> {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).unwrap();
        terminal.draw(|f| draw(f, app)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..height)
            .map(|y| {
                let mut row = String::new();
                for x in 0..width {
                    row.push_str(buffer[(x, y)].symbol());
                }
                row
            })
            .collect()
    }

    fn contains(rows: &[String], needle: &str) -> bool {
        rows.iter().any(|r| r.contains(needle))
    }

    #[test]
    fn the_header_says_which_identity_you_act_as() {
        let mut app = loaded();
        let rows = screen(&app, 80, 24);
        assert!(rows[0].contains("as personal (personal)"), "{}", rows[0]);
        app.on_key(key(KeyCode::Tab));
        let rows = screen(&app, 80, 24);
        assert!(rows[0].contains("as shop (business)"), "{}", rows[0]);
        assert!(contains(&rows, "● Dana (1) ★new"), "{rows:#?}");
        assert!(contains(&rows, "(closed)"), "{rows:#?}");
    }

    #[test]
    fn the_footer_shows_what_a_quick_reply_sends() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Tab));
        app.on_key(key(KeyCode::Enter));
        typed(&mut app, "/");
        app.on_key(key(KeyCode::Tab));
        let rows = screen(&app, 80, 24);
        assert!(rows[23].contains("/thanks → Thank you! (1/2, Tab: next)"), "{}", rows[23]);
        app.on_key(key(KeyCode::Tab));
        let rows = screen(&app, 80, 24);
        assert!(rows[23].contains("/hours → 9 to 5 (2/2, Tab: next)"), "{}", rows[23]);
    }

    #[test]
    fn a_conversation_shows_messages_marks_and_the_compose_line_at_80_by_24() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        app.on_reply(
            Purpose::History { profile: "personal".into(), with: "Bob".into(), older: false },
            Ok(json!({"contact": "Bob", "messages": [
                {"id": "a", "seq": 0, "direction": "in", "status": "delivered", "sent_at_ms": 0,
                 "content": {"type": "text", "text": "hi\x1b[2J there"}},
                {"id": "b", "seq": 1, "direction": "out", "status": "read", "sent_at_ms": 0,
                 "content": {"type": "text", "text": "hello 寿司 👋"}},
            ]})),
        );
        typed(&mut app, "draft");
        let rows = screen(&app, 80, 24);
        assert!(contains(&rows, "Bob: hi\\u{1b}[2J there"), "escaped: {rows:#?}");
        assert!(contains(&rows, "you: hello"), "{rows:#?}");
        assert!(contains(&rows, "✓✓ read"), "{rows:#?}");
        assert!(contains(&rows, "to Bob as personal (personal)"), "{rows:#?}");
        assert!(contains(&rows, "draft"), "{rows:#?}");
        assert!(contains(&rows, "start of the conversation"), "{rows:#?}");
    }

    #[test]
    fn any_size_and_any_text_draws_without_panicking() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        let long = "x".repeat(5_000) + &"寿".repeat(300) + &"👋🏽".repeat(100);
        app.on_reply(
            Purpose::History { profile: "personal".into(), with: "Bob".into(), older: false },
            Ok(json!({"contact": "Bob", "messages": [
                {"id": "a", "seq": 0, "direction": "in", "status": "delivered", "sent_at_ms": 0,
                 "content": {"type": "text", "text": long}},
                {"id": "b", "seq": 1, "direction": "out", "status": "sent", "sent_at_ms": u64::MAX,
                 "content": {"type": "text", "text": "\u{202e}\u{0}\r\n"}},
            ]})),
        );
        typed(&mut app, &"寿".repeat(100));
        let mut states = vec![app.clone()];
        for code in [KeyCode::F(1), KeyCode::Esc, KeyCode::Char('c'), KeyCode::Esc, KeyCode::Char('r')] {
            let mut next = states.last().unwrap().clone();
            next.on_key(key(code));
            states.push(next);
        }
        for state in &states {
            for (w, h) in [(1, 1), (5, 3), (29, 7), (30, 8), (40, 10), (80, 24), (81, 25), (200, 60), (0, 0)] {
                screen(state, w, h);
            }
        }
        let rows = screen(&app, 10, 4);
        assert!(rows.join("").contains("too"), "{rows:?}");
    }

    #[test]
    fn wrapping_and_cutting_keep_wide_characters_whole() {
        assert_eq!(wrap("寿司寿司", 3), ["寿", "司", "寿", "司"]);
        assert_eq!(wrap("abcdef", 4), ["abcd", "ef"]);
        assert!(wrap("x", 0).is_empty());
        assert_eq!(fit("寿司寿司", 5), "寿司…");
        assert_eq!(fit("short", 10), "short");
        assert_eq!(fit("abc", 0), "");
    }

    #[test]
    fn rows_fill_from_the_bottom_and_scroll() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        let messages: Vec<serde_json::Value> = (0..30)
            .map(|s| {
                json!({"id": format!("m{s}"), "seq": s, "direction": "in", "status": "delivered", "sent_at_ms": 0,
                "content": {"type": "text", "text": format!("message {s}")}})
            })
            .collect();
        app.on_reply(
            Purpose::History { profile: "personal".into(), with: "Bob".into(), older: false },
            Ok(json!({"contact": "Bob", "messages": messages})),
        );
        let chat = app.profile().unwrap().chat.clone().unwrap();
        let rows = message_rows(&chat, 40, 5);
        assert_eq!(rows.len(), 5);
        assert!(rows[4].0.ends_with("message 29"), "{rows:?}");
        app.on_key(key(KeyCode::PageUp));
        let chat = app.profile().unwrap().chat.clone().unwrap();
        let rows = message_rows(&chat, 40, 5);
        assert!(rows[4].0.ends_with("message 24"), "{rows:?}");
    }
}
