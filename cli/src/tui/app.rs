//! The state of `kabar tui`, and how keys, replies and events change it.
//! No terminal and no socket here: keys come in as crossterm key events,
//! the node's answers and events as JSON, and what the app wants from the
//! node goes out as [`Call`]s, so all of it is tested without either.

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use serde_json::{Value, json};

use super::input::Input;
use crate::output;
use crate::safe;

/// Messages asked for at a time (the latest, then older pages on scroll).
pub(crate) const HISTORY_PAGE: u64 = 50;
/// Messages kept in one open conversation (older ones are dropped from
/// view and loaded again on scroll).
pub(crate) const MAX_SHOWN: usize = 2_000;
/// Messages a page key scrolls by.
pub(crate) const PAGE: usize = 5;
/// Most profiles, conversations, requests, labels and catalog items kept
/// from one answer of the node (it is ours, but bounded all the same).
pub(crate) const MAX_ROWS: usize = 10_000;
/// The label the node gives new customers.
pub(crate) const NEW_CUSTOMER: &str = "New customer";

/// What an answer of the node is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// `profile.list`.
    Profiles,
    /// `conversation.list`.
    Conversations { profile: String },
    /// `message.history` (`older`: a page before what is shown).
    History { profile: String, with: String, older: bool },
    /// `message.send`: the new message is fetched and shown.
    Sent { profile: String, with: String },
    /// `message.status` of a message to show in the open conversation.
    Message { profile: String, with: String },
    /// `request.list`.
    Requests { profile: String },
    /// A change (accept, block, close, reopen, label, read): the lists are
    /// read again.
    Changed { profile: String },
    /// `contact.rename`: the open chat follows its contact's new name.
    Renamed { profile: String, from: String, to: String },
    /// `card.get`.
    Card { profile: String },
    /// `contact.verify`.
    Safety { profile: String, with: String },
    /// `business.label.list`.
    Labels { profile: String },
    /// `business.reply.list`.
    Replies { profile: String },
    /// `business.catalog.list`.
    Catalog { profile: String },
    /// `business.automations.get`.
    Automations { profile: String },
    /// `catalog.request` or `order.place`: told in the footer.
    Told { profile: String, what: String },
}

/// A call the app wants made.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Call {
    pub(crate) method: &'static str,
    pub(crate) params: Value,
    pub(crate) purpose: Purpose,
}

/// What keys go to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Focus {
    /// The conversation list.
    List,
    /// The compose line of the open conversation.
    Compose,
}

/// Which conversations a business profile's list shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Filter {
    All,
    Open,
    Closed,
    Label(String),
}

impl Filter {
    pub(crate) fn name(&self) -> String {
        match self {
            Filter::All => "all".into(),
            Filter::Open => "open".into(),
            Filter::Closed => "closed".into(),
            Filter::Label(l) => format!("label {}", safe::printable(l)),
        }
    }
}

/// One row of the conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conversation {
    /// The contact's name as the node knows it (raw: used in calls).
    pub(crate) contact: String,
    pub(crate) unread: u64,
    pub(crate) closed: bool,
    pub(crate) labels: Vec<String>,
    pub(crate) last_ms: u64,
    /// The last message, one escaped line ("you: " first if ours).
    pub(crate) last: String,
    pub(crate) request: bool,
}

impl Conversation {
    fn from_json(v: &Value) -> Option<Conversation> {
        let last = &v["last_message"];
        let mut line = output::content(&last["content"]);
        if last.is_null() {
            line.clear();
        } else if last["direction"] == "out" {
            line = format!("you: {line}");
        }
        Some(Conversation {
            contact: v["contact"].as_str()?.to_string(),
            unread: v["unread"].as_u64().unwrap_or(0),
            closed: v["status"] == "closed",
            labels: strings(&v["labels"]),
            last_ms: v["last_activity_ms"].as_u64().unwrap_or(0),
            last: line,
            request: v["request"] == true,
        })
    }

    /// A new customer nobody has answered yet.
    pub(crate) fn new_customer(&self) -> bool {
        self.labels.iter().any(|l| l == NEW_CUSTOMER)
    }

    fn shown_by(&self, filter: &Filter) -> bool {
        match filter {
            Filter::All => true,
            Filter::Open => !self.closed,
            Filter::Closed => self.closed,
            Filter::Label(l) => self.labels.contains(l),
        }
    }
}

/// One message of the open conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Message {
    pub(crate) id: String,
    pub(crate) seq: u64,
    pub(crate) out: bool,
    pub(crate) status: String,
    pub(crate) at_ms: u64,
    /// Content as one escaped line.
    pub(crate) text: String,
    /// The catalog it carries, if it is one (for the order picker).
    pub(crate) catalog: Option<Vec<Value>>,
}

impl Message {
    fn from_json(v: &Value) -> Option<Message> {
        Some(Message {
            id: v["id"].as_str()?.to_string(),
            seq: v["seq"].as_u64()?,
            out: v["direction"] == "out",
            status: v["status"].as_str().unwrap_or("").to_string(),
            at_ms: v["sent_at_ms"].as_u64().unwrap_or(0),
            text: output::content(&v["content"]),
            catalog: (v["content"]["type"] == "catalog")
                .then(|| v["content"]["items"].as_array().cloned().unwrap_or_default()),
        })
    }
}

/// The open conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Chat {
    pub(crate) contact: String,
    /// By `seq`, oldest first.
    pub(crate) messages: Vec<Message>,
    /// Nothing older to load.
    pub(crate) all_loaded: bool,
    /// An older page is being asked for.
    pub(crate) loading: bool,
    /// Messages hidden below the view (0: the newest is at the bottom).
    pub(crate) scroll: usize,
}

impl Chat {
    fn new(contact: &str) -> Chat {
        Chat { contact: contact.to_string(), messages: Vec::new(), all_loaded: false, loading: true, scroll: 0 }
    }

    /// Adds or updates messages, keeping `seq` order and at most
    /// [`MAX_SHOWN`] (the oldest go).
    fn merge(&mut self, messages: impl IntoIterator<Item = Message>) {
        for m in messages {
            match self.messages.binary_search_by_key(&m.seq, |x| x.seq) {
                Ok(i) => self.messages[i] = m,
                Err(i) => self.messages.insert(i, m),
            }
        }
        if self.messages.len() > MAX_SHOWN {
            let excess = self.messages.len() - MAX_SHOWN;
            self.messages.drain(..excess);
            self.all_loaded = false;
        }
        self.scroll = self.scroll.min(self.messages.len().saturating_sub(1));
    }

    /// The newest catalog the contact sent, among the messages loaded.
    pub(crate) fn latest_catalog(&self) -> Option<&Vec<Value>> {
        self.messages.iter().rev().find(|m| !m.out && m.catalog.is_some()).and_then(|m| m.catalog.as_ref())
    }
}

/// A pending message request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) name: String,
    pub(crate) peer_id: String,
}

/// One identity hosted by the node, and what the app knows of it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Profile {
    pub(crate) name: String,
    pub(crate) business: bool,
    pub(crate) peer_id: String,
    pub(crate) conversations: Vec<Conversation>,
    /// Index into the conversations the filter shows.
    pub(crate) selected: usize,
    pub(crate) filter: Filter,
    pub(crate) chat: Option<Chat>,
    pub(crate) requests: Vec<Request>,
    pub(crate) labels: Vec<String>,
    /// Quick replies: shortcut (without `/`) and text.
    pub(crate) replies: Vec<(String, String)>,
    pub(crate) catalog: Vec<Value>,
    /// Greeting on, and the away schedule, for the business panel.
    pub(crate) greeting: Option<bool>,
    pub(crate) away: Option<String>,
}

impl Profile {
    fn new(name: &str, business: bool, peer_id: &str) -> Profile {
        Profile {
            name: name.to_string(),
            business,
            peer_id: peer_id.to_string(),
            conversations: Vec::new(),
            selected: 0,
            filter: Filter::All,
            chat: None,
            requests: Vec::new(),
            labels: Vec::new(),
            replies: Vec::new(),
            catalog: Vec::new(),
            greeting: None,
            away: None,
        }
    }

    /// The conversations the filter shows.
    pub(crate) fn visible(&self) -> Vec<&Conversation> {
        self.conversations.iter().filter(|c| c.shown_by(&self.filter)).collect()
    }

    /// The selected conversation, if the list shows any.
    pub(crate) fn selected(&self) -> Option<&Conversation> {
        self.visible().get(self.selected).copied()
    }

    /// The conversation with `contact`, if listed.
    pub(crate) fn conversation(&self, contact: &str) -> Option<&Conversation> {
        self.conversations.iter().find(|c| c.contact == contact)
    }

    fn clamp(&mut self) {
        self.selected = self.selected.min(self.visible().len().saturating_sub(1));
    }

    /// The calls that load everything this profile shows.
    fn load(&self) -> Vec<Call> {
        let p = &self.name;
        let mut calls = vec![
            call("conversation.list", p, json!({}), Purpose::Conversations { profile: p.clone() }),
            call("request.list", p, json!({}), Purpose::Requests { profile: p.clone() }),
        ];
        if self.business {
            calls.push(call("business.label.list", p, json!({}), Purpose::Labels { profile: p.clone() }));
            calls.push(call("business.reply.list", p, json!({}), Purpose::Replies { profile: p.clone() }));
            calls.push(call("business.catalog.list", p, json!({}), Purpose::Catalog { profile: p.clone() }));
            calls.push(call("business.automations.get", p, json!({}), Purpose::Automations { profile: p.clone() }));
        }
        if let Some(chat) = &self.chat {
            calls.push(history(p, &chat.contact, None));
        }
        calls
    }
}

/// A window over the main screen.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Overlay {
    /// Keys and what they do.
    Help,
    /// Message requests: accept, rename, block.
    Requests { selected: usize },
    /// A new name: for a message request (accepting it under that name),
    /// or for a contact in the list (`contact.rename`).
    Rename { request: String, input: Input, accept: bool },
    /// This profile's card, with its QR code.
    Card { card: Option<String> },
    /// The safety number with a contact.
    Safety { with: String, number: Option<String>, verified: bool },
    /// Labels to apply to (or take off) the open or selected conversation.
    Labels { with: String, selected: usize },
    /// A catalog: the business's own (send an item), or one a business
    /// sent (order from it).
    Catalog { with: String, own: bool, items: Vec<Value>, selected: usize, quantities: Vec<u32> },
}

/// The whole app.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct App {
    pub(crate) profiles: Vec<Profile>,
    pub(crate) active: usize,
    pub(crate) focus: Focus,
    pub(crate) compose: Input,
    pub(crate) overlay: Option<Overlay>,
    /// The node answers (its event stream is open).
    pub(crate) node_up: bool,
    /// A line for the footer (an error, or what happened).
    pub(crate) notice: Option<String>,
    /// Quick replies matching what is typed, while completing.
    pub(crate) completions: Vec<String>,
    pub(crate) quit: bool,
    /// The profile to start on (`--profile`) and a conversation to open.
    want_profile: String,
    want_chat: Option<String>,
}

fn call(method: &'static str, profile: &str, mut params: Value, purpose: Purpose) -> Call {
    params["profile"] = json!(profile);
    Call { method, params, purpose }
}

fn history(profile: &str, with: &str, before: Option<u64>) -> Call {
    let mut params = json!({"with": with, "limit": HISTORY_PAGE});
    if let Some(seq) = before {
        params["before"] = json!(seq);
    }
    call(
        "message.history",
        profile,
        params,
        Purpose::History { profile: profile.into(), with: with.into(), older: before.is_some() },
    )
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().into_iter().flatten().filter_map(|s| s.as_str().map(str::to_string)).take(MAX_ROWS).collect()
}

/// A key typed into a one-line field.
fn edit(input: &mut Input, code: KeyCode, modifiers: KeyModifiers) {
    match code {
        KeyCode::Char(c) if !modifiers.contains(KeyModifiers::CONTROL) => input.insert(c),
        KeyCode::Backspace => input.backspace(),
        KeyCode::Delete => input.delete(),
        KeyCode::Left => input.left(),
        KeyCode::Right => input.right(),
        _ => {}
    }
}

impl App {
    /// An app that starts on `profile`, with `chat` open once it is loaded.
    pub(crate) fn new(profile: &str, chat: Option<&str>) -> App {
        App {
            profiles: Vec::new(),
            active: 0,
            focus: Focus::List,
            compose: Input::default(),
            overlay: None,
            node_up: false,
            notice: None,
            completions: Vec::new(),
            quit: false,
            want_profile: profile.to_string(),
            want_chat: chat.map(str::to_string),
        }
    }

    /// The profile being acted as.
    pub(crate) fn profile(&self) -> Option<&Profile> {
        self.profiles.get(self.active)
    }

    fn profile_mut(&mut self) -> Option<&mut Profile> {
        self.profiles.get_mut(self.active)
    }

    fn named(&mut self, name: &str) -> Option<&mut Profile> {
        self.profiles.iter_mut().find(|p| p.name == name)
    }

    /// The node came up (or back): everything is read again.
    pub(crate) fn on_node(&mut self, up: bool) -> Vec<Call> {
        self.node_up = up;
        if up {
            self.notice = None;
            vec![Call { method: "profile.list", params: json!({}), purpose: Purpose::Profiles }]
        } else {
            Vec::new()
        }
    }

    /// An event from the node's stream.
    pub(crate) fn on_event(&mut self, e: &Value) -> Vec<Call> {
        let profile = e["profile"].as_str().unwrap_or("").to_string();
        match e["event"].as_str() {
            Some("message_received") => {
                let contact = e["contact"].as_str().unwrap_or("");
                let mut calls = vec![call(
                    "conversation.list",
                    &profile,
                    json!({}),
                    Purpose::Conversations { profile: profile.clone() },
                )];
                let open = self.named(&profile).and_then(|p| p.chat.as_ref()).is_some_and(|c| c.contact == contact);
                if open {
                    calls.push(call(
                        "message.status",
                        &profile,
                        json!({"message_id": e["message_id"]}),
                        Purpose::Message { profile: profile.clone(), with: contact.to_string() },
                    ));
                    // Shown, hence read.
                    calls.push(call(
                        "conversation.read",
                        &profile,
                        json!({"with": contact}),
                        Purpose::Changed { profile: profile.clone() },
                    ));
                }
                calls
            }
            Some("status_changed") => {
                let id = e["message_id"].as_str().unwrap_or("");
                let status = e["status"].as_str().unwrap_or("");
                if let Some(chat) = self.named(&profile).and_then(|p| p.chat.as_mut())
                    && let Some(m) = chat.messages.iter_mut().find(|m| m.id == id)
                {
                    m.status = status.to_string();
                }
                Vec::new()
            }
            Some("message_request" | "requests_dropped") => {
                let mut calls =
                    vec![call("request.list", &profile, json!({}), Purpose::Requests { profile: profile.clone() })];
                calls.push(call(
                    "conversation.list",
                    &profile,
                    json!({}),
                    Purpose::Conversations { profile: profile.clone() },
                ));
                calls
            }
            // Events were missed: read everything again.
            Some("lagged") => self.profiles.iter().flat_map(Profile::load).collect(),
            _ => Vec::new(),
        }
    }

    /// The node's answer to a call.
    pub(crate) fn on_reply(&mut self, purpose: Purpose, result: Result<Value, String>) -> Vec<Call> {
        let v = match result {
            Ok(v) => v,
            Err(message) => {
                if let Purpose::History { profile, .. } = &purpose
                    && let Some(chat) = self.named(profile).and_then(|p| p.chat.as_mut())
                {
                    chat.loading = false;
                }
                self.notice = Some(format!("error: {}", safe::printable(&message)));
                return Vec::new();
            }
        };
        match purpose {
            Purpose::Profiles => self.on_profiles(&v),
            Purpose::Conversations { profile } => {
                if let Some(p) = self.named(&profile) {
                    // The selection stays on its contact as the list reorders.
                    let was = p.selected().map(|c| c.contact.clone());
                    p.conversations =
                        v.as_array().into_iter().flatten().filter_map(Conversation::from_json).take(MAX_ROWS).collect();
                    if let Some(i) = was.and_then(|was| p.visible().iter().position(|c| c.contact == was)) {
                        p.selected = i;
                    }
                    p.clamp();
                }
                Vec::new()
            }
            Purpose::History { profile, with, older } => {
                let messages: Vec<Message> =
                    v["messages"].as_array().into_iter().flatten().filter_map(Message::from_json).collect();
                let Some(p) = self.named(&profile) else { return Vec::new() };
                let unread = p.conversation(&with).is_some_and(|c| c.unread > 0);
                let Some(chat) = p.chat.as_mut().filter(|c| c.contact == with) else { return Vec::new() };
                // The start is reached when message 0 came, or a page came
                // back empty (a page leaves receipts out, so a short page
                // does not mean there is nothing older).
                if older || chat.messages.is_empty() {
                    chat.all_loaded = messages.first().is_none_or(|m| m.seq == 0);
                }
                chat.loading = false;
                chat.merge(messages);
                // Shown, hence read.
                if unread {
                    return vec![call(
                        "conversation.read",
                        &profile,
                        json!({"with": with}),
                        Purpose::Changed { profile: profile.clone() },
                    )];
                }
                Vec::new()
            }
            Purpose::Sent { profile, with } => vec![
                call(
                    "message.status",
                    &profile,
                    json!({"message_id": v["message_id"]}),
                    Purpose::Message { profile: profile.clone(), with },
                ),
                // Its last message and place in the list.
                call("conversation.list", &profile, json!({}), Purpose::Conversations { profile: profile.clone() }),
            ],
            Purpose::Message { profile, with } => {
                if let Some(chat) = self.named(&profile).and_then(|p| p.chat.as_mut()).filter(|c| c.contact == with)
                    && let Some(m) = Message::from_json(&v)
                {
                    chat.merge([m]);
                }
                Vec::new()
            }
            Purpose::Requests { profile } => {
                if let Some(p) = self.named(&profile) {
                    p.requests = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| {
                            Some(Request {
                                name: r["name"].as_str()?.to_string(),
                                peer_id: r["peer_id"].as_str().unwrap_or("").to_string(),
                            })
                        })
                        .take(MAX_ROWS)
                        .collect();
                }
                if let Some(Overlay::Requests { selected }) = &mut self.overlay {
                    let n = self.profiles.get(self.active).map_or(0, |p| p.requests.len());
                    *selected = (*selected).min(n.saturating_sub(1));
                }
                Vec::new()
            }
            Purpose::Renamed { profile, from, to } => {
                if let Some(p) = self.named(&profile) {
                    if let Some(chat) = p.chat.as_mut().filter(|c| c.contact == from) {
                        chat.contact = to.clone();
                    }
                    if let Some(c) = p.conversations.iter_mut().find(|c| c.contact == from) {
                        c.contact = to;
                    }
                }
                self.notice = Some(format!("renamed {}", safe::printable(v["name"].as_str().unwrap_or(""))));
                vec![
                    call("conversation.list", &profile, json!({}), Purpose::Conversations { profile: profile.clone() }),
                    call("request.list", &profile, json!({}), Purpose::Requests { profile: profile.clone() }),
                ]
            }
            Purpose::Changed { profile } => {
                vec![
                    call("conversation.list", &profile, json!({}), Purpose::Conversations { profile: profile.clone() }),
                    call("request.list", &profile, json!({}), Purpose::Requests { profile: profile.clone() }),
                ]
            }
            Purpose::Card { .. } => {
                if let Some(Overlay::Card { card }) = &mut self.overlay {
                    *card = v["card"].as_str().map(str::to_string);
                }
                Vec::new()
            }
            Purpose::Safety { with, .. } => {
                if let Some(Overlay::Safety { with: w, number, verified }) = &mut self.overlay
                    && *w == with
                {
                    *number = v["safety_number"].as_str().map(str::to_string);
                    *verified = v["verified"] == true;
                }
                Vec::new()
            }
            Purpose::Labels { profile } => {
                if let Some(p) = self.named(&profile) {
                    p.labels = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|l| l["name"].as_str().map(str::to_string))
                        .take(MAX_ROWS)
                        .collect();
                }
                Vec::new()
            }
            Purpose::Replies { profile } => {
                if let Some(p) = self.named(&profile) {
                    p.replies = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| Some((r["shortcut"].as_str()?.to_string(), r["text"].as_str()?.to_string())))
                        .take(MAX_ROWS)
                        .collect();
                }
                Vec::new()
            }
            Purpose::Catalog { profile } => {
                if let Some(p) = self.named(&profile) {
                    p.catalog = v.as_array().cloned().unwrap_or_default().into_iter().take(MAX_ROWS).collect();
                }
                Vec::new()
            }
            Purpose::Automations { profile } => {
                if let Some(p) = self.named(&profile) {
                    p.greeting = Some(v["greeting"].is_string());
                    p.away = Some(match &v["away_schedule"] {
                        Value::String(s) => match s.as_str() {
                            "Off" => "off".into(),
                            "Always" => "always".into(),
                            "OutsideHours" => "outside hours".into(),
                            other => safe::printable(other).into_owned(),
                        },
                        Value::Object(o) => match o.get("Window") {
                            Some(w) => {
                                let hm = |m: &Value| {
                                    let m = m.as_u64().unwrap_or(0);
                                    format!("{:02}:{:02}", m / 60, m % 60)
                                };
                                format!("{}-{}", hm(&w["start"]), hm(&w["end"]))
                            }
                            None => "set".into(),
                        },
                        _ => "off".into(),
                    });
                }
                Vec::new()
            }
            Purpose::Told { profile, what } => {
                self.notice = Some(what);
                vec![call(
                    "conversation.list",
                    &profile,
                    json!({}),
                    Purpose::Conversations { profile: profile.clone() },
                )]
            }
        }
    }

    fn on_profiles(&mut self, v: &Value) -> Vec<Call> {
        let current = self.profile().map(|p| p.name.clone()).unwrap_or_else(|| self.want_profile.clone());
        let mut profiles = Vec::new();
        for p in v.as_array().into_iter().flatten().take(MAX_ROWS) {
            let Some(name) = p["name"].as_str() else { continue };
            // What is known of a profile is kept across a reconnect.
            let kept = self.profiles.iter().position(|x| x.name == name).map(|i| self.profiles.swap_remove(i));
            profiles.push(
                kept.unwrap_or_else(|| {
                    Profile::new(name, p["kind"] == "business", p["peer_id"].as_str().unwrap_or(""))
                }),
            );
        }
        self.profiles = profiles;
        self.active = self.profiles.iter().position(|p| p.name == current).unwrap_or(0);
        if let Some(want) = self.want_chat.take()
            && let Some(p) = self.profile_mut()
        {
            p.chat = Some(Chat::new(&want));
            self.focus = Focus::Compose;
        }
        self.profiles.iter().flat_map(Profile::load).collect()
    }

    /// Text pasted into the terminal: typed into the compose line (or the
    /// rename field).
    pub(crate) fn on_paste(&mut self, text: &str) {
        let input = match &mut self.overlay {
            Some(Overlay::Rename { input, .. }) => input,
            None if self.focus == Focus::Compose => &mut self.compose,
            _ => return,
        };
        for c in text.chars().take(super::input::MAX_INPUT_CHARS) {
            input.insert(c);
        }
    }

    /// A key.
    pub(crate) fn on_key(&mut self, key: KeyEvent) -> Vec<Call> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('q')) {
            self.quit = true;
            return Vec::new();
        }
        // Esc and the next key arrive together over a slow link (or typed
        // fast), and the terminal reads them as Alt and that key: do both.
        if key.modifiers.contains(KeyModifiers::ALT) && !ctrl && !self.profiles.is_empty() {
            let mut calls = self.on_key(KeyEvent::new(KeyCode::Esc, KeyModifiers::NONE));
            calls.extend(self.on_key(KeyEvent::new(key.code, key.modifiers - KeyModifiers::ALT)));
            return calls;
        }
        if self.overlay.is_some() {
            return self.overlay_key(key);
        }
        if self.profiles.is_empty() {
            if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                self.quit = true;
            }
            return Vec::new();
        }
        match self.focus {
            Focus::List => self.list_key(key),
            Focus::Compose => self.compose_key(key),
        }
    }

    fn switch_to(&mut self, index: usize) {
        if index < self.profiles.len() && index != self.active {
            self.active = index;
            self.focus = Focus::List;
            self.compose = Input::default();
            self.completions.clear();
            self.notice = None;
        }
    }

    fn open_selected(&mut self) -> Vec<Call> {
        let Some(p) = self.profile_mut() else { return Vec::new() };
        let Some(contact) = p.selected().map(|c| c.contact.clone()) else { return Vec::new() };
        let profile = p.name.clone();
        if p.chat.as_ref().is_some_and(|c| c.contact == contact) {
            self.focus = Focus::Compose;
            return Vec::new();
        }
        p.chat = Some(Chat::new(&contact));
        self.focus = Focus::Compose;
        self.compose = Input::default();
        vec![history(&profile, &contact, None)]
    }

    /// The contact of the open conversation, else of the selected one.
    fn current_contact(&self) -> Option<String> {
        let p = self.profile()?;
        match (&p.chat, self.focus) {
            (Some(chat), Focus::Compose) => Some(chat.contact.clone()),
            _ => p.selected().map(|c| c.contact.clone()),
        }
    }

    fn scroll(&mut self, up: bool, by: usize) -> Vec<Call> {
        let Some(p) = self.profile_mut() else { return Vec::new() };
        let profile = p.name.clone();
        let Some(chat) = p.chat.as_mut() else { return Vec::new() };
        let len = chat.messages.len();
        if up {
            chat.scroll = (chat.scroll + by).min(len.saturating_sub(1));
            // Near the top of what is loaded: the page before it.
            if chat.scroll + PAGE >= len
                && !chat.all_loaded
                && !chat.loading
                && let Some(oldest) = chat.messages.first().map(|m| m.seq)
            {
                chat.loading = true;
                return vec![history(&profile, &chat.contact, Some(oldest))];
            }
        } else {
            chat.scroll = chat.scroll.saturating_sub(by);
        }
        Vec::new()
    }

    fn list_key(&mut self, key: KeyEvent) -> Vec<Call> {
        let business = self.profile().is_some_and(|p| p.business);
        match key.code {
            KeyCode::Char('q') => self.quit = true,
            KeyCode::Char('?') | KeyCode::F(1) => self.overlay = Some(Overlay::Help),
            KeyCode::Up | KeyCode::Char('k') => {
                if let Some(p) = self.profile_mut() {
                    p.selected = p.selected.saturating_sub(1);
                }
            }
            KeyCode::Down | KeyCode::Char('j') => {
                if let Some(p) = self.profile_mut() {
                    p.selected += 1;
                    p.clamp();
                }
            }
            KeyCode::Enter | KeyCode::Right => return self.open_selected(),
            KeyCode::Tab => self.switch_to((self.active + 1) % self.profiles.len()),
            KeyCode::BackTab => self.switch_to((self.active + self.profiles.len() - 1) % self.profiles.len()),
            KeyCode::Char(c @ '1'..='9') => self.switch_to(c as usize - '1' as usize),
            KeyCode::PageUp => return self.scroll(true, PAGE),
            KeyCode::PageDown => return self.scroll(false, PAGE),
            KeyCode::Char('f') if business => {
                if let Some(p) = self.profile_mut() {
                    p.filter = match &p.filter {
                        Filter::All => Filter::Open,
                        Filter::Open => Filter::Closed,
                        Filter::Closed => p.labels.first().cloned().map_or(Filter::All, Filter::Label),
                        Filter::Label(l) => {
                            let next = p.labels.iter().position(|x| x == l).and_then(|i| p.labels.get(i + 1));
                            next.cloned().map_or(Filter::All, Filter::Label)
                        }
                    };
                    p.clamp();
                }
            }
            KeyCode::Char('r') => {
                self.overlay = Some(Overlay::Requests { selected: 0 });
                let p = self.profile().map(|p| p.name.clone()).unwrap_or_default();
                return vec![call("request.list", &p, json!({}), Purpose::Requests { profile: p.clone() })];
            }
            KeyCode::Char('c') => {
                self.overlay = Some(Overlay::Card { card: None });
                let p = self.profile().map(|p| p.name.clone()).unwrap_or_default();
                return vec![call("card.get", &p, json!({}), Purpose::Card { profile: p.clone() })];
            }
            KeyCode::Char('s') => return self.safety(),
            KeyCode::Char('n') => {
                if let Some(with) = self.current_contact() {
                    self.overlay = Some(Overlay::Rename { request: with, input: Input::default(), accept: false });
                }
            }
            KeyCode::Char('l') if business => return self.labels(),
            KeyCode::Char('x') if business => return self.close_or_reopen(),
            KeyCode::Char('o') => return self.catalog(),
            _ => {}
        }
        Vec::new()
    }

    fn safety(&mut self) -> Vec<Call> {
        let Some(with) = self.current_contact() else { return Vec::new() };
        let p = self.profile().map(|p| p.name.clone()).unwrap_or_default();
        self.overlay = Some(Overlay::Safety { with: with.clone(), number: None, verified: false });
        vec![call("contact.verify", &p, json!({"name": with}), Purpose::Safety { profile: p.clone(), with })]
    }

    fn labels(&mut self) -> Vec<Call> {
        let Some(with) = self.current_contact() else { return Vec::new() };
        self.overlay = Some(Overlay::Labels { with, selected: 0 });
        let p = self.profile().map(|p| p.name.clone()).unwrap_or_default();
        vec![call("business.label.list", &p, json!({}), Purpose::Labels { profile: p.clone() })]
    }

    fn close_or_reopen(&mut self) -> Vec<Call> {
        let Some(with) = self.current_contact() else { return Vec::new() };
        let Some(p) = self.profile() else { return Vec::new() };
        let closed = p.conversation(&with).is_some_and(|c| c.closed);
        let method = if closed { "business.reopen" } else { "business.close" };
        let profile = p.name.clone();
        self.notice = Some(format!(
            "conversation with {} {}",
            safe::printable(&with),
            if closed { "reopened" } else { "closed" }
        ));
        vec![call(method, &profile, json!({"with": with}), Purpose::Changed { profile: profile.clone() })]
    }

    /// The catalog picker: a business's own catalog (send an item), or the
    /// newest catalog the contact sent (order from it; asked for if none).
    fn catalog(&mut self) -> Vec<Call> {
        let Some(with) = self.current_contact() else { return Vec::new() };
        let Some(p) = self.profile() else { return Vec::new() };
        let profile = p.name.clone();
        let (own, items) = if p.business {
            (true, p.catalog.clone())
        } else {
            let sent = p.chat.as_ref().filter(|c| c.contact == with).and_then(Chat::latest_catalog).cloned();
            match sent {
                Some(items) => (false, items),
                None => {
                    return vec![call(
                        "catalog.request",
                        &profile,
                        json!({"to": with}),
                        Purpose::Told {
                            profile: profile.clone(),
                            what: format!(
                                "asked {} for its catalog; press Ctrl-O again when it arrives",
                                safe::printable(&with)
                            ),
                        },
                    )];
                }
            }
        };
        if items.is_empty() {
            self.notice = Some("the catalog is empty".into());
            return Vec::new();
        }
        let quantities = vec![0; items.len()];
        self.overlay = Some(Overlay::Catalog { with, own, items, selected: 0, quantities });
        Vec::new()
    }

    fn compose_key(&mut self, key: KeyEvent) -> Vec<Call> {
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        if key.code != KeyCode::Tab {
            self.completions.clear();
        }
        match key.code {
            KeyCode::Esc => self.focus = Focus::List,
            KeyCode::Enter => return self.send(),
            KeyCode::Tab => self.complete(),
            KeyCode::Char('o') if ctrl => return self.catalog(),
            KeyCode::Char('s') if ctrl => return self.safety(),
            KeyCode::Char('l') if ctrl && self.profile().is_some_and(|p| p.business) => return self.labels(),
            KeyCode::Char('x') if ctrl && self.profile().is_some_and(|p| p.business) => {
                return self.close_or_reopen();
            }
            KeyCode::Char('a') if ctrl => self.compose.home(),
            KeyCode::Char('e') if ctrl => self.compose.end(),
            KeyCode::Char('u') if ctrl => {
                self.compose.take();
            }
            KeyCode::Char(_) if ctrl || key.modifiers.contains(KeyModifiers::ALT) => {}
            KeyCode::Char(c) => self.compose.insert(c),
            KeyCode::Backspace => self.compose.backspace(),
            KeyCode::Delete => self.compose.delete(),
            KeyCode::Left => self.compose.left(),
            KeyCode::Right => self.compose.right(),
            KeyCode::Home => self.compose.home(),
            KeyCode::End => self.compose.end(),
            KeyCode::Up => return self.scroll(true, 1),
            KeyCode::Down => return self.scroll(false, 1),
            KeyCode::PageUp => return self.scroll(true, PAGE),
            KeyCode::PageDown => return self.scroll(false, PAGE),
            KeyCode::F(1) => self.overlay = Some(Overlay::Help),
            _ => {}
        }
        Vec::new()
    }

    /// Tab on a business profile: completes a `/shortcut` to a quick reply
    /// (the next match on each Tab).
    fn complete(&mut self) {
        let Some(p) = self.profile().filter(|p| p.business) else { return };
        let text = self.compose.text().to_string();
        let Some(typed) = text.strip_prefix('/') else { return };
        if self.completions.is_empty() {
            self.completions =
                p.replies.iter().filter(|(s, _)| s.starts_with(typed)).map(|(s, _)| format!("/{s}")).collect();
            if let Some(first) = self.completions.first().cloned() {
                self.compose.set(&first);
            }
        } else if let Some(i) = self.completions.iter().position(|c| *c == text) {
            let next = self.completions[(i + 1) % self.completions.len()].clone();
            self.compose.set(&next);
        }
        if self.completions.is_empty() {
            self.notice = Some(format!("no quick reply starts with /{}", safe::printable(typed)));
        }
    }

    fn send(&mut self) -> Vec<Call> {
        let Some(p) = self.profile() else { return Vec::new() };
        let Some(chat) = &p.chat else { return Vec::new() };
        if self.compose.text().trim().is_empty() {
            return Vec::new();
        }
        let (profile, with) = (p.name.clone(), chat.contact.clone());
        let text = self.compose.take();
        if let Some(chat) = self.profile_mut().and_then(|p| p.chat.as_mut()) {
            chat.scroll = 0;
        }
        vec![call(
            "message.send",
            &profile,
            json!({"to": with, "text": text}),
            Purpose::Sent { profile: profile.clone(), with },
        )]
    }

    fn overlay_key(&mut self, key: KeyEvent) -> Vec<Call> {
        let Some(overlay) = self.overlay.take() else { return Vec::new() };
        let profile = self.profile().map(|p| p.name.clone()).unwrap_or_default();
        let n_requests = self.profile().map_or(0, |p| p.requests.len());
        let n_labels = self.profile().map_or(0, |p| p.labels.len());
        let close = matches!(key.code, KeyCode::Esc | KeyCode::Char('q'));
        let (keep, calls) = match overlay {
            Overlay::Help | Overlay::Card { .. } => (None, Vec::new()),
            Overlay::Requests { .. } if close => (None, Vec::new()),
            Overlay::Requests { selected } => {
                let name = self.profile().and_then(|p| p.requests.get(selected)).map(|r| r.name.clone());
                match (key.code, name) {
                    (KeyCode::Up | KeyCode::Char('k'), _) => {
                        (Some(Overlay::Requests { selected: selected.saturating_sub(1) }), Vec::new())
                    }
                    (KeyCode::Down | KeyCode::Char('j'), _) => (
                        Some(Overlay::Requests { selected: (selected + 1).min(n_requests.saturating_sub(1)) }),
                        Vec::new(),
                    ),
                    (KeyCode::Char('a') | KeyCode::Enter, Some(name)) => (
                        Some(Overlay::Requests { selected }),
                        vec![call(
                            "request.accept",
                            &profile,
                            json!({"name": name}),
                            Purpose::Changed { profile: profile.clone() },
                        )],
                    ),
                    (KeyCode::Char('b'), Some(name)) => (
                        Some(Overlay::Requests { selected }),
                        vec![call(
                            "request.block",
                            &profile,
                            json!({"name": name}),
                            Purpose::Changed { profile: profile.clone() },
                        )],
                    ),
                    (KeyCode::Char('n'), Some(name)) => {
                        (Some(Overlay::Rename { request: name, input: Input::default(), accept: true }), Vec::new())
                    }
                    _ => (Some(Overlay::Requests { selected }), Vec::new()),
                }
            }
            Overlay::Rename { accept: true, request, mut input } => match key.code {
                KeyCode::Esc => (Some(Overlay::Requests { selected: 0 }), Vec::new()),
                KeyCode::Enter if !input.text().trim().is_empty() => (
                    Some(Overlay::Requests { selected: 0 }),
                    vec![call(
                        "request.accept",
                        &profile,
                        json!({"name": request, "rename": input.text().trim()}),
                        Purpose::Changed { profile: profile.clone() },
                    )],
                ),
                code => {
                    edit(&mut input, code, key.modifiers);
                    (Some(Overlay::Rename { request, input, accept: true }), Vec::new())
                }
            },
            Overlay::Rename { accept: false, request, mut input } => match key.code {
                KeyCode::Esc => (None, Vec::new()),
                KeyCode::Enter if !input.text().trim().is_empty() => {
                    let to = input.text().trim().to_string();
                    (
                        None,
                        vec![call(
                            "contact.rename",
                            &profile,
                            json!({"name": request, "to": to}),
                            Purpose::Renamed { profile: profile.clone(), from: request.clone(), to },
                        )],
                    )
                }
                code => {
                    edit(&mut input, code, key.modifiers);
                    (Some(Overlay::Rename { request, input, accept: false }), Vec::new())
                }
            },
            Overlay::Safety { .. } if close => (None, Vec::new()),
            Overlay::Safety { with, number, verified } => match key.code {
                KeyCode::Char('v') if number.is_some() && !verified => (
                    Some(Overlay::Safety { with: with.clone(), number, verified }),
                    vec![call(
                        "contact.verify",
                        &profile,
                        json!({"name": with, "confirm": true}),
                        Purpose::Safety { profile: profile.clone(), with },
                    )],
                ),
                _ => (Some(Overlay::Safety { with, number, verified }), Vec::new()),
            },
            Overlay::Labels { .. } if close => (None, Vec::new()),
            Overlay::Labels { with, selected } => match key.code {
                KeyCode::Up | KeyCode::Char('k') => {
                    (Some(Overlay::Labels { with, selected: selected.saturating_sub(1) }), Vec::new())
                }
                KeyCode::Down | KeyCode::Char('j') => (
                    Some(Overlay::Labels { with, selected: (selected + 1).min(n_labels.saturating_sub(1)) }),
                    Vec::new(),
                ),
                KeyCode::Enter | KeyCode::Char(' ') => {
                    let label = self.profile().and_then(|p| p.labels.get(selected)).cloned();
                    let applied = self
                        .profile()
                        .and_then(|p| p.conversation(&with))
                        .is_some_and(|c| label.as_ref().is_some_and(|l| c.labels.contains(l)));
                    let calls = label
                        .map(|label| {
                            let method = if applied { "business.label.unapply" } else { "business.label.apply" };
                            vec![call(
                                method,
                                &profile,
                                json!({"label": label, "with": with}),
                                Purpose::Changed { profile: profile.clone() },
                            )]
                        })
                        .unwrap_or_default();
                    (Some(Overlay::Labels { with, selected }), calls)
                }
                _ => (Some(Overlay::Labels { with, selected }), Vec::new()),
            },
            Overlay::Catalog { .. } if close => (None, Vec::new()),
            Overlay::Catalog { with, own, items, selected, mut quantities } => {
                let last = items.len().saturating_sub(1);
                match key.code {
                    KeyCode::Up | KeyCode::Char('k') => {
                        let selected = selected.saturating_sub(1);
                        (Some(Overlay::Catalog { with, own, items, selected, quantities }), Vec::new())
                    }
                    KeyCode::Down | KeyCode::Char('j') => {
                        let selected = (selected + 1).min(last);
                        (Some(Overlay::Catalog { with, own, items, selected, quantities }), Vec::new())
                    }
                    KeyCode::Char('+') | KeyCode::Right if !own => {
                        if let Some(q) = quantities.get_mut(selected) {
                            *q = (*q + 1).min(999);
                        }
                        (Some(Overlay::Catalog { with, own, items, selected, quantities }), Vec::new())
                    }
                    KeyCode::Char('-') | KeyCode::Left if !own => {
                        if let Some(q) = quantities.get_mut(selected) {
                            *q = q.saturating_sub(1);
                        }
                        (Some(Overlay::Catalog { with, own, items, selected, quantities }), Vec::new())
                    }
                    KeyCode::Enter if own => {
                        // The item, as a message.
                        let Some(item) = items.get(selected) else { return Vec::new() };
                        let minor = item["price_minor"].as_u64().unwrap_or(0);
                        let mut text = format!(
                            "{} — {}.{:02} {}",
                            item["name"].as_str().unwrap_or(""),
                            minor / 100,
                            minor % 100,
                            item["currency"].as_str().unwrap_or("")
                        );
                        if let Some(d) = item["description"].as_str().filter(|d| !d.is_empty()) {
                            text.push_str(&format!(": {d}"));
                        }
                        (
                            None,
                            vec![call(
                                "message.send",
                                &profile,
                                json!({"to": with, "text": text}),
                                Purpose::Sent { profile: profile.clone(), with },
                            )],
                        )
                    }
                    KeyCode::Enter => {
                        let lines: Vec<Value> = items
                            .iter()
                            .zip(&quantities)
                            .filter(|(_, q)| **q > 0)
                            .map(|(i, q)| json!({"item": i["id"], "quantity": q}))
                            .collect();
                        if lines.is_empty() {
                            self.notice = Some("choose quantities with + and - first".into());
                            self.overlay = Some(Overlay::Catalog { with, own, items, selected, quantities });
                            return Vec::new();
                        }
                        let what = format!("order sent to {}", safe::printable(&with));
                        (
                            None,
                            vec![call(
                                "order.place",
                                &profile,
                                json!({"to": with, "items": lines}),
                                Purpose::Told { profile: profile.clone(), what },
                            )],
                        )
                    }
                    _ => (Some(Overlay::Catalog { with, own, items, selected, quantities }), Vec::new()),
                }
            }
        };
        self.overlay = keep;
        calls
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use ratatui::crossterm::event::{KeyEventKind, KeyEventState};

    use super::*;

    pub(crate) fn key(code: KeyCode) -> KeyEvent {
        KeyEvent { code, modifiers: KeyModifiers::NONE, kind: KeyEventKind::Press, state: KeyEventState::NONE }
    }

    pub(crate) fn ctrl(c: char) -> KeyEvent {
        KeyEvent {
            code: KeyCode::Char(c),
            modifiers: KeyModifiers::CONTROL,
            kind: KeyEventKind::Press,
            state: KeyEventState::NONE,
        }
    }

    pub(crate) fn typed(app: &mut App, text: &str) {
        for c in text.chars() {
            app.on_key(key(KeyCode::Char(c)));
        }
    }

    fn methods(calls: &[Call]) -> Vec<&str> {
        calls.iter().map(|c| c.method).collect()
    }

    /// An app connected to a node with a personal and a business profile,
    /// each with conversations.
    pub(crate) fn loaded() -> App {
        let mut app = App::new("personal", None);
        let calls = app.on_node(true);
        assert_eq!(methods(&calls), ["profile.list"]);
        let calls = app.on_reply(
            Purpose::Profiles,
            Ok(json!([
                {"name": "personal", "kind": "personal", "peer_id": "12D3KooWpersonal"},
                {"name": "shop", "kind": "business", "peer_id": "12D3KooWshop"},
            ])),
        );
        assert!(methods(&calls).contains(&"business.reply.list"));
        assert!(calls.iter().all(|c| c.params["profile"] == "personal" || c.params["profile"] == "shop"));
        app.on_reply(
            Purpose::Conversations { profile: "personal".into() },
            Ok(json!([
                {"contact": "Bob", "unread": 2, "status": "open", "labels": [], "last_activity_ms": 2,
                 "last_message": {"direction": "in", "content": {"type": "text", "text": "hi\x1b[2J"}}},
                {"contact": "Carol", "unread": 0, "status": "open", "labels": [], "last_activity_ms": 1,
                 "last_message": {"direction": "out", "content": {"type": "text", "text": "bye"}}},
            ])),
        );
        app.on_reply(
            Purpose::Conversations { profile: "shop".into() },
            Ok(json!([
                {"contact": "Dana", "unread": 1, "status": "open", "labels": ["New customer"], "last_activity_ms": 5,
                 "last_message": {"direction": "in", "content": {"type": "text", "text": "do you deliver?"}}},
                {"contact": "Eve", "unread": 0, "status": "closed", "labels": ["Paid"], "last_activity_ms": 3,
                 "last_message": null},
            ])),
        );
        app.on_reply(
            Purpose::Replies { profile: "shop".into() },
            Ok(json!([{"shortcut": "thanks", "text": "Thank you!"}, {"shortcut": "hours", "text": "9 to 5"}])),
        );
        app.on_reply(
            Purpose::Labels { profile: "shop".into() },
            Ok(json!([{"name": "New customer"}, {"name": "Paid"}])),
        );
        app
    }

    fn history_reply(app: &mut App, profile: &str, with: &str, seqs: std::ops::Range<u64>, older: bool) -> Vec<Call> {
        let messages: Vec<Value> = seqs
            .map(|s| {
                json!({"id": format!("m{s}"), "seq": s, "direction": if s % 2 == 0 { "in" } else { "out" },
                "status": "delivered", "sent_at_ms": 0, "content": {"type": "text", "text": format!("message {s}")}})
            })
            .collect();
        app.on_reply(
            Purpose::History { profile: profile.into(), with: with.into(), older },
            Ok(json!({"contact": with, "messages": messages})),
        )
    }

    #[test]
    fn opening_a_conversation_loads_it_and_marks_it_read() {
        let mut app = loaded();
        assert_eq!(app.profile().unwrap().name, "personal");
        let calls = app.on_key(key(KeyCode::Enter));
        assert_eq!(methods(&calls), ["message.history"]);
        assert_eq!(calls[0].params, json!({"profile": "personal", "with": "Bob", "limit": HISTORY_PAGE}));
        assert_eq!(app.focus, Focus::Compose);
        let calls = history_reply(&mut app, "personal", "Bob", 0..3, false);
        assert_eq!(methods(&calls), ["conversation.read"], "unread and shown: marked read");
        let chat = app.profile().unwrap().chat.as_ref().unwrap();
        assert_eq!(chat.messages.len(), 3);
        assert!(chat.all_loaded);
        // A reply for another conversation does not land in this one.
        history_reply(&mut app, "personal", "Carol", 10..12, false);
        assert_eq!(app.profile().unwrap().chat.as_ref().unwrap().messages.len(), 3);
    }

    #[test]
    fn enter_sends_as_the_active_profile_and_shows_the_message_with_its_status() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        history_reply(&mut app, "personal", "Bob", 0..1, false);
        typed(&mut app, "See you at 8 👋");
        let calls = app.on_key(key(KeyCode::Enter));
        assert_eq!(methods(&calls), ["message.send"]);
        assert_eq!(calls[0].params, json!({"profile": "personal", "to": "Bob", "text": "See you at 8 👋"}));
        assert_eq!(app.compose.text(), "");
        // Empty lines are not sent.
        assert!(app.on_key(key(KeyCode::Enter)).is_empty());
        let calls = app.on_reply(calls[0].purpose.clone(), Ok(json!({"message_id": "abc"})));
        assert_eq!(methods(&calls), ["message.status", "conversation.list"], "the list shows it as the last");
        app.on_reply(
            calls[0].purpose.clone(),
            Ok(json!({"id": "abc", "seq": 1, "direction": "out", "status": "sent", "sent_at_ms": 0,
                "content": {"type": "text", "text": "See you at 8 👋"}})),
        );
        app.on_event(
            &json!({"event": "status_changed", "profile": "personal", "message_id": "abc", "status": "delivered"}),
        );
        let last = app.profile().unwrap().chat.as_ref().unwrap().messages.last().unwrap().clone();
        assert_eq!((last.text.as_str(), last.status.as_str(), last.out), ("See you at 8 👋", "delivered", true));
        // The same status for the other profile's message of that id changes nothing here.
        app.on_event(&json!({"event": "status_changed", "profile": "shop", "message_id": "abc", "status": "read"}));
        assert_eq!(app.profile().unwrap().chat.as_ref().unwrap().messages.last().unwrap().status, "delivered");
    }

    #[test]
    fn n_renames_the_selected_contact_and_the_open_chat_follows() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        history_reply(&mut app, "personal", "Bob", 0..1, false);
        app.on_key(key(KeyCode::Esc));
        assert!(app.on_key(key(KeyCode::Char('n'))).is_empty());
        assert!(matches!(&app.overlay, Some(Overlay::Rename { request, accept: false, .. }) if request == "Bob"));
        // Typed into the field, not taken as keys ('q' does not quit).
        typed(&mut app, "Bob Quinn");
        assert!(!app.quit);
        let calls = app.on_key(key(KeyCode::Enter));
        assert_eq!(methods(&calls), ["contact.rename"]);
        assert_eq!(calls[0].params, json!({"profile": "personal", "name": "Bob", "to": "Bob Quinn"}));
        assert_eq!(app.overlay, None);
        let calls = app.on_reply(calls[0].purpose.clone(), Ok(json!({"name": "Bob Quinn"})));
        assert_eq!(methods(&calls), ["conversation.list", "request.list"]);
        let p = app.profile().unwrap();
        assert_eq!(p.chat.as_ref().unwrap().contact, "Bob Quinn", "the open chat sends to the new name");
        assert_eq!(p.selected().unwrap().contact, "Bob Quinn");
        // A refused name: the error is shown and nothing changes.
        app.on_key(key(KeyCode::Char('n')));
        typed(&mut app, "Carol");
        let calls = app.on_key(key(KeyCode::Enter));
        app.on_reply(calls[0].purpose.clone(), Err("another contact is already named \"Carol\"".into()));
        assert!(app.notice.as_ref().unwrap().contains("already named"));
        assert_eq!(app.profile().unwrap().chat.as_ref().unwrap().contact, "Bob Quinn");
    }

    #[test]
    fn the_selection_stays_on_its_contact_when_the_list_reorders() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.profile().unwrap().selected().unwrap().contact, "Carol");
        // Bob's new message moves him down: Carol is first now.
        app.on_reply(
            Purpose::Conversations { profile: "personal".into() },
            Ok(json!([
                {"contact": "Carol", "unread": 0, "status": "open", "labels": [], "last_activity_ms": 9,
                 "last_message": null},
                {"contact": "Bob", "unread": 3, "status": "open", "labels": [], "last_activity_ms": 2,
                 "last_message": null},
            ])),
        );
        assert_eq!(app.profile().unwrap().selected().unwrap().contact, "Carol", "Enter opens what is highlighted");
        // A conversation that left the list: the selection stays in range.
        app.on_reply(
            Purpose::Conversations { profile: "personal".into() },
            Ok(json!([{"contact": "Bob", "unread": 0, "status": "open", "labels": [], "last_activity_ms": 2,
                       "last_message": null}])),
        );
        assert_eq!(app.profile().unwrap().selected().unwrap().contact, "Bob");
    }

    #[test]
    fn a_live_arrival_in_the_open_conversation_is_fetched_and_marked_read() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        history_reply(&mut app, "personal", "Bob", 0..1, false);
        let e = json!({"event": "message_received", "profile": "personal", "contact": "Bob", "message_id": "m9", "kind": "text"});
        assert_eq!(methods(&app.on_event(&e)), ["conversation.list", "message.status", "conversation.read"]);
        // Elsewhere: only the list is read again.
        let e = json!({"event": "message_received", "profile": "shop", "contact": "Bob", "message_id": "m9", "kind": "text"});
        assert_eq!(methods(&app.on_event(&e)), ["conversation.list"]);
    }

    #[test]
    fn tab_switches_profile_and_forgets_what_was_typed() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        typed(&mut app, "half a message");
        // Tab in the compose line does not switch identity.
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.profile().unwrap().name, "personal");
        app.on_key(key(KeyCode::Esc));
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.profile().unwrap().name, "shop");
        assert_eq!(app.compose.text(), "", "nothing typed as one identity is sent as another");
        app.on_key(key(KeyCode::Char('1')));
        assert_eq!(app.profile().unwrap().name, "personal");
        app.on_key(key(KeyCode::Char('9')));
        assert_eq!(app.profile().unwrap().name, "personal", "no ninth profile: nothing changes");
    }

    #[test]
    fn slash_completes_quick_replies_on_a_business_profile_only() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        typed(&mut app, "/th");
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.compose.text(), "/th", "a personal profile has no quick replies");
        app.on_key(key(KeyCode::Esc));
        app.on_key(key(KeyCode::Tab));
        app.on_key(key(KeyCode::Enter));
        assert_eq!(app.profile().unwrap().chat.as_ref().unwrap().contact, "Dana");
        typed(&mut app, "/");
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.compose.text(), "/thanks");
        app.on_key(key(KeyCode::Tab));
        assert_eq!(app.compose.text(), "/hours", "Tab again: the next match");
        let calls = app.on_key(key(KeyCode::Enter));
        assert_eq!(calls[0].params, json!({"profile": "shop", "to": "Dana", "text": "/hours"}));
    }

    #[test]
    fn a_business_filters_labels_and_closes_conversations() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Tab));
        let names = |app: &App| app.profile().unwrap().visible().iter().map(|c| c.contact.clone()).collect::<Vec<_>>();
        assert_eq!(names(&app), ["Dana", "Eve"]);
        assert!(app.profile().unwrap().conversations[0].new_customer());
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(names(&app), ["Dana"], "open");
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(names(&app), ["Eve"], "closed");
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(app.profile().unwrap().filter, Filter::Label("New customer".into()));
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(names(&app), ["Eve"], "label Paid");
        app.on_key(key(KeyCode::Char('f')));
        assert_eq!(app.profile().unwrap().filter, Filter::All);
        // Close the selected (open) conversation; reopen the closed one.
        let calls = app.on_key(key(KeyCode::Char('x')));
        assert_eq!(calls[0].method, "business.close");
        assert_eq!(calls[0].params, json!({"profile": "shop", "with": "Dana"}));
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.on_key(key(KeyCode::Char('x')))[0].method, "business.reopen");
        // Labels: Paid is on Eve, so Enter on it takes it off.
        app.on_key(key(KeyCode::Char('l')));
        app.on_key(key(KeyCode::Down));
        let calls = app.on_key(key(KeyCode::Enter));
        assert_eq!(calls[0].method, "business.label.unapply");
        assert_eq!(calls[0].params, json!({"profile": "shop", "label": "Paid", "with": "Eve"}));
        app.on_key(key(KeyCode::Esc));
        assert!(app.overlay.is_none());
        // A personal profile has no business keys.
        app.on_key(key(KeyCode::Tab));
        assert!(app.on_key(key(KeyCode::Char('x'))).is_empty());
    }

    #[test]
    fn requests_are_accepted_renamed_or_blocked() {
        let mut app = loaded();
        let calls = app.on_key(key(KeyCode::Char('r')));
        assert_eq!(methods(&calls), ["request.list"]);
        app.on_reply(
            Purpose::Requests { profile: "personal".into() },
            Ok(json!([{"name": "sinhtgsc", "peer_id": "12D3x"}, {"name": "other", "peer_id": "12D3y"}])),
        );
        app.on_key(key(KeyCode::Down));
        assert_eq!(app.on_key(key(KeyCode::Char('b')))[0].params, json!({"profile": "personal", "name": "other"}));
        app.on_key(key(KeyCode::Up));
        app.on_key(key(KeyCode::Char('n')));
        typed(&mut app, "Carol");
        let calls = app.on_key(key(KeyCode::Enter));
        assert_eq!(calls[0].method, "request.accept");
        assert_eq!(calls[0].params, json!({"profile": "personal", "name": "sinhtgsc", "rename": "Carol"}));
        assert_eq!(
            methods(&app.on_reply(calls[0].purpose.clone(), Ok(json!({})))),
            ["conversation.list", "request.list"]
        );
    }

    #[test]
    fn scrolling_up_loads_older_pages_once_at_a_time() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        history_reply(&mut app, "personal", "Bob", 100..150, false);
        assert!(!app.profile().unwrap().chat.as_ref().unwrap().all_loaded);
        let mut asked = Vec::new();
        for _ in 0..20 {
            asked.extend(app.on_key(key(KeyCode::PageUp)));
        }
        assert_eq!(asked.len(), 1, "one page asked for while it loads");
        assert_eq!(asked[0].params["before"], 100);
        history_reply(&mut app, "personal", "Bob", 80..100, true);
        let chat = app.profile().unwrap().chat.as_ref().unwrap();
        assert_eq!(chat.messages.len(), 70);
        assert!(!chat.all_loaded, "a short page: receipts may have taken the place of messages");
        let asked: Vec<Call> = (0..20).flat_map(|_| app.on_key(key(KeyCode::PageUp))).collect();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].params["before"], 80);
        history_reply(&mut app, "personal", "Bob", 0..0, true);
        let chat = app.profile().unwrap().chat.as_ref().unwrap();
        assert!(chat.all_loaded, "an empty page: the start of the conversation");
        assert!(chat.messages.windows(2).all(|w| w[0].seq < w[1].seq));
        for _ in 0..40 {
            assert!(app.on_key(key(KeyCode::PageUp)).is_empty());
            app.on_key(key(KeyCode::PageDown));
        }
    }

    #[test]
    fn a_customer_orders_from_the_catalog_a_business_sent() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Enter));
        // No catalog yet: it is asked for.
        let calls = app.on_key(ctrl('o'));
        assert_eq!(calls[0].method, "catalog.request");
        let messages = json!({"contact": "Carol", "messages": [{"id": "c1", "seq": 4, "direction": "in", "status": "delivered",
            "sent_at_ms": 0, "content": {"type": "catalog", "items": [
                {"id": "aa", "name": "Bun", "price_minor": 150, "currency": "EUR", "available": true},
                {"id": "bb", "name": "Loaf", "price_minor": 450, "currency": "EUR", "available": true}]}}]});
        app.on_reply(Purpose::History { profile: "personal".into(), with: "Carol".into(), older: false }, Ok(messages));
        assert!(app.on_key(ctrl('o')).is_empty());
        assert!(matches!(app.overlay, Some(Overlay::Catalog { own: false, .. })));
        assert!(app.on_key(key(KeyCode::Enter)).is_empty(), "nothing chosen: nothing ordered");
        app.on_key(key(KeyCode::Down));
        app.on_key(key(KeyCode::Char('+')));
        app.on_key(key(KeyCode::Char('+')));
        let calls = app.on_key(key(KeyCode::Enter));
        assert_eq!(calls[0].method, "order.place");
        assert_eq!(
            calls[0].params,
            json!({"profile": "personal", "to": "Carol", "items": [{"item": "bb", "quantity": 2}]})
        );
        assert!(app.overlay.is_none());
    }

    #[test]
    fn errors_and_a_lost_node_are_told_and_nothing_panics_on_odd_answers() {
        let mut app = loaded();
        app.on_reply(Purpose::Conversations { profile: "personal".into() }, Err("no such \x1b[31m profile".into()));
        assert!(app.notice.as_ref().unwrap().contains("\\u{1b}"), "escaped: {:?}", app.notice);
        app.on_node(false);
        assert!(!app.node_up);
        // Junk in every answer: ignored, never a panic.
        for purpose in [
            Purpose::Profiles,
            Purpose::Conversations { profile: "personal".into() },
            Purpose::History { profile: "personal".into(), with: "Bob".into(), older: true },
            Purpose::Requests { profile: "personal".into() },
            Purpose::Automations { profile: "shop".into() },
            Purpose::Message { profile: "personal".into(), with: "Bob".into() },
        ] {
            for junk in
                [json!(null), json!(7), json!("x"), json!([1, {"name": 3}]), json!({"messages": [{"seq": "a"}]})]
            {
                app.on_reply(purpose.clone(), Ok(junk));
            }
        }
        for junk in [json!(null), json!({"event": 5}), json!({"event": "status_changed"})] {
            app.on_event(&junk);
        }
        // Back: the profiles are read again.
        assert_eq!(methods(&app.on_node(true)), ["profile.list"]);
    }

    #[test]
    fn esc_and_a_key_read_together_as_alt_do_both() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Enter));
        let alt_tab = KeyEvent::new(KeyCode::Tab, KeyModifiers::ALT);
        app.on_key(alt_tab);
        assert_eq!((app.focus, app.profile().unwrap().name.as_str()), (Focus::List, "shop"));
        app.on_key(key(KeyCode::Enter));
        app.on_key(KeyEvent::new(KeyCode::Char('q'), KeyModifiers::ALT));
        assert!(app.quit);
    }

    #[test]
    fn ctrl_c_quits_from_anywhere() {
        let mut app = loaded();
        app.on_key(key(KeyCode::Char('?')));
        app.on_key(ctrl('c'));
        assert!(app.quit);
        let mut app = App::new("personal", None);
        app.on_key(key(KeyCode::Char('q')));
        assert!(app.quit, "q quits while the node is away too");
    }
}
