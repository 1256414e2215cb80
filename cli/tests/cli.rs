//! End-to-end tests of the built `kabar` binary: two data directories, two
//! node processes, cards exchanged, messages both ways with `--wait`, the
//! business flows, and the error paths with their exit codes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

mod procs;
use procs::*;

#[test]
fn two_nodes_exchange_cards_and_messages_and_run_the_business_flows() {
    let tmp = tempfile::tempdir().unwrap();
    let ann = init(tmp.path(), "ann", None);
    let shop = init(tmp.path(), "shop", Some("shop"));
    let ann_node = RunningNode::start(&ann);
    let shop_node = RunningNode::start(&shop);

    // Cards, both ways.
    let ann_card = ok_json(&ann, &["card", "--name", "Ann"])["card"].as_str().unwrap().to_string();
    let shop_card =
        ok_json(&shop, &["--profile", "shop", "card", "--name", "Marigold"])["card"].as_str().unwrap().to_string();
    assert!(ok(&ann, &["card", "--qr"]).contains('█'), "a QR code is drawn");
    ok(&ann, &["contact", "add", &shop_card, "--name", "Bakery"]);
    ok(&shop, &["--profile", "shop", "contact", "add", &ann_card, "--name", "Ann"]);
    let contacts = ok_json(&ann, &["contact", "list"]);
    assert_eq!(contacts[0]["name"], "Bakery");
    assert_eq!(contacts[0]["kind"], "business");

    // Messages both ways, waiting for delivery.
    let sent = ok_json(&ann, &["send", "Bakery", "Hello, do you have sourdough?", "--wait"]);
    assert_eq!(sent["status"], "delivered");
    let sent = ok_json(&shop, &["--profile", "shop", "send", "Ann", "Yes, 12 left!", "--wait"]);
    assert_eq!(sent["status"], "delivered");
    let history = ok_json(&ann, &["history", "Bakery"]);
    let texts: Vec<&str> =
        history["messages"].as_array().unwrap().iter().map(|m| m["content"]["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["Hello, do you have sourdough?", "Yes, 12 left!"]);
    assert!(ok(&ann, &["history", "Bakery"]).contains("Yes, 12 left!"));

    // Business setup.
    let b = |args: &[&str]| {
        let mut all = vec!["--profile", "shop", "business"];
        all.extend_from_slice(args);
        ok(&shop, &all)
    };
    b(&["profile", "set", "--name", "Marigold Bakery", "--about", "Fresh bread daily"]);
    b(&["greeting", "set", "Welcome to Marigold!"]);
    b(&["away", "set", "--schedule", "always", "--text", "We are away right now."]);
    b(&["reply", "add", "/thanks", "Thank you for your order!"]);
    b(&["catalog", "add", "Sourdough", "--price", "4.50", "--description", "800 g"]);
    b(&["catalog", "add", "Croissant", "--price", "1.8"]);
    b(&["label", "add", "Paid", "--colour", "#00aa00"]);
    assert!(b(&["catalog", "list"]).contains("4.50 EUR"));

    // A new customer (the shop does not know Cleo): greeting and away message.
    let cleo = init(tmp.path(), "cleo", None);
    let cleo_node = RunningNode::start(&cleo);
    ok(&cleo, &["contact", "add", &shop_card, "--name", "Bakery"]);
    ok(&cleo, &["send", "Bakery", "Hi! First time here.", "--wait"]);
    // The automatic answers arrive; fetching the catalog waits on events.
    let catalog = ok_json(&cleo, &["catalog", "Bakery"]);
    assert_eq!(catalog.as_array().unwrap().len(), 2);
    let history = ok_json(&cleo, &["history", "Bakery"]);
    let auto: Vec<&str> = history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["content"]["automatic"].is_string())
        .map(|m| m["content"]["text"].as_str().unwrap())
        .collect();
    assert_eq!(auto, ["Welcome to Marigold!", "We are away right now."]);
    ok(&cleo, &["order", "Bakery", "sourdough", "x2", "Croissant"]);

    // The shop's inbox: Cleo is a new customer with an order.
    let inbox = ok_json(&shop, &["--profile", "shop", "inbox"]);
    let cleo_row =
        inbox.as_array().unwrap().iter().find(|c| c["labels"] == serde_json::json!(["New customer"])).unwrap();
    let cleo_name = cleo_row["contact"].as_str().unwrap().to_string();
    assert!(ok(&shop, &["--profile", "shop", "inbox"]).contains("New customer"));
    let shop_history = ok_json(&shop, &["--profile", "shop", "history", &cleo_name]);
    assert!(shop_history["messages"].as_array().unwrap().iter().any(|m| m["content"]["type"] == "order"));

    // Quick reply, label, close.
    ok(&shop, &["--profile", "shop", "send", &cleo_name, "/thanks", "--wait"]);
    let history = ok_json(&cleo, &["history", "Bakery"]);
    assert_eq!(history["messages"].as_array().unwrap().last().unwrap()["content"]["text"], "Thank you for your order!");
    b(&["label", "apply", "Paid", &cleo_name]);
    b(&["close", &cleo_name]);
    let inbox = ok_json(&shop, &["--profile", "shop", "inbox"]);
    let row = inbox.as_array().unwrap().iter().find(|c| c["contact"] == cleo_name.as_str()).unwrap();
    assert_eq!(row["status"], "closed");
    assert_eq!(row["labels"].as_array().unwrap().len(), 2);
    // The shop names its customer; the conversation follows the name.
    assert!(ok(&shop, &["--profile", "shop", "contact", "rename", &cleo_name, "Cleo"]).contains("renamed to Cleo"));
    let inbox = ok_json(&shop, &["--profile", "shop", "inbox"]);
    assert!(inbox.as_array().unwrap().iter().any(|c| c["contact"] == "Cleo" && c["status"] == "closed"), "{inbox}");
    fails(&shop, &["--profile", "shop", "contact", "rename", "Cleo", "Ann"], 1, "already named");

    // Error paths: clear message, non-zero exit, nothing changed.
    fails(&ann, &["send", "Nobody", "hi"], 1, "no contact named \"Nobody\"");
    fails(&ann, &["contact", "add", "kabar:not-a-card", "--name", "X"], 1, "contact card");
    fails(&shop, &["--profile", "shop", "business", "profile", "set", "--about", &"a".repeat(140)], 1, "about");
    assert!(ok(&shop, &["--profile", "shop", "business", "profile", "show"]).contains("Fresh bread daily"));
    fails(&ann, &["business", "greeting", "set", "x"], 1, "business profile");
    fails(&shop, &["--profile", "shop", "business", "catalog", "add", "Bun", "--price", "cheap"], 1, "not a price");

    // SIGTERM stops a node cleanly; then "no node" is exit code 3, and a
    // message to an offline contact times out with exit code 4.
    assert!(cleo_node.terminate().success());
    assert!(!cleo.join("kabar.sock").exists(), "the socket is removed");
    fails(&cleo, &["inbox"], 3, "node run");
    let shop_status = shop_node.terminate();
    assert!(shop_status.success());
    fails(&ann, &["send", "Bakery", "are you there?", "--wait", "--timeout", "1"], 4, "not delivered within 1 s");
    // Every control connection held by someone else: the CLI says the node
    // is busy and exits 1 (it used to print nothing and exit 0).
    let holders: Vec<std::os::unix::net::UnixStream> = (0..kabar_node::control::MAX_CONNECTIONS)
        .map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(ann.join("kabar.sock")).unwrap();
            use std::io::{BufRead, Write};
            s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"profile.list\"}\n").unwrap();
            let mut line = String::new();
            std::io::BufReader::new(s.try_clone().unwrap()).read_line(&mut line).unwrap();
            s
        })
        .collect();
    fails(&ann, &["send", "Bakery", "anyone?", "--wait"], 1, "busy");
    drop(holders);
    drop(ann_node);
}

#[test]
fn bad_passphrase_and_bad_arguments_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path(), "d", None);
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&dir)
        .args(["node", "run", "--no-mdns"])
        .env("KABAR_PASSPHRASE", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong passphrase"));
    fails(&dir, &["init"], 1, "already exists");
    fails(&tmp.path().join("nowhere"), &["node", "run"], 1, "kabar init");
    fails(&dir, &["node", "run", "--listen", "not-an-address"], 1, "not a multiaddr");
    fails(&dir, &["profile", "create", "Bad Name", "--kind", "personal"], 1, "invalid profile name");
    // clap: usage errors exit with 2.
    let out = kabar(&dir, &["send"]);
    assert_eq!(out.status.code(), Some(2));
    ok(&dir, &["profile", "create", "second", "--kind", "business"]);
    assert!(ok(&dir, &["profile", "list"]).contains("second"));
    assert!(ok(&dir, &["completions", "bash"]).contains("kabar"));
}

#[test]
fn chat_sends_typed_lines_shows_arrivals_and_leaves_on_end_of_input() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let ann = init(tmp.path(), "ann", None);
    let bob = init(tmp.path(), "bob", None);
    let _ann_node = RunningNode::start(&ann);
    let _bob_node = RunningNode::start(&bob);
    let ann_card = ok_json(&ann, &["card"])["card"].as_str().unwrap().to_string();
    let bob_card = ok_json(&bob, &["card"])["card"].as_str().unwrap().to_string();
    ok(&ann, &["contact", "add", &bob_card, "--name", "Bob"]);
    ok(&bob, &["contact", "add", &ann_card, "--name", "Ann"]);
    ok(&bob, &["send", "Ann", "before the chat", "--wait"]);

    let mut chat = Command::new(BIN)
        .arg("--data-dir")
        .arg(&ann)
        .args(["chat", "Bob"])
        .env("KABAR_PASSPHRASE", PASS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = chat.stdin.take().unwrap();
    let mut out = BufReader::new(chat.stdout.take().unwrap());
    let mut read_until = |needle: &str| {
        let mut line = String::new();
        loop {
            line.clear();
            assert!(out.read_line(&mut line).unwrap() > 0, "chat ended before {needle:?}");
            if line.contains(needle) {
                return;
            }
        }
    };
    read_until("before the chat"); // history is shown
    writeln!(stdin, "typed in the chat").unwrap();
    read_until("✓✓"); // delivered mark for our line
    ok(&bob, &["send", "Ann", "an answer while chatting", "--wait"]);
    read_until("an answer while chatting");
    drop(stdin); // Ctrl-D
    assert!(chat.wait().unwrap().success());
    let history = ok_json(&bob, &["history", "Ann"]);
    assert!(history["messages"].as_array().unwrap().iter().any(|m| m["content"]["text"] == "typed in the chat"));
}

/// `kabar serve --mailbox` on loopback; its log (RUST_LOG=info) goes to
/// `log`. Returns the process and its address.
fn mailbox_host(dir: &Path, log: &Path) -> (RunningNode, String) {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(dir)
        .args(["--json", "serve", "--mailbox", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let started: Value = serde_json::from_str(&line).expect("serve prints a JSON line when it is up");
    assert_eq!(started["mailbox"], true);
    let address = started["addresses"][0].as_str().unwrap().to_string();
    (RunningNode { child }, address)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// docs/cli.md, "A shop's mailbox": a customer writes while the shop is
/// closed, the shop answers while the customer is away; neither is ever
/// online at the same time as the other, and the mailbox host keeps no
/// message text and no sender PeerId, on disk or in its log.
#[test]
fn a_shop_and_a_customer_who_are_never_online_together_talk_through_mailboxes() {
    let tmp = tempfile::tempdir().unwrap();
    let host_dir = tmp.path().join("host");
    let host_log = tmp.path().join("host.log");
    let (host, address) = mailbox_host(&host_dir, &host_log);
    let ann = init(tmp.path(), "ann", None);
    let shop = init(tmp.path(), "shop", Some("shop"));
    let ann_node = RunningNode::start(&ann);
    let shop_node = RunningNode::start(&shop);

    ok(&shop, &["--profile", "shop", "mailbox", "add", &address]);
    ok(&ann, &["mailbox", "add", &address]);
    let listed = ok_json(&shop, &["mailbox", "list"]);
    assert_eq!(listed["mailboxes"]["shop"][0]["address"], address.as_str());
    assert!(ok(&shop, &["node", "info"]).contains(&format!("mailbox       {address}")));
    let ann_card = ok_json(&ann, &["card", "--name", "Ann"]);
    let shop_card = ok_json(&shop, &["--profile", "shop", "card", "--name", "Marigold"]);
    ok(&ann, &["contact", "add", shop_card["card"].as_str().unwrap(), "--name", "Bakery"]);
    ok(&shop, &["--profile", "shop", "contact", "add", ann_card["card"].as_str().unwrap(), "--name", "Ann"]);

    // The shop closes; Ann writes: the message waits in the shop's mailbox.
    shop_node.terminate();
    let question = "Two sourdough loaves for Saturday, please";
    // `--wait` waits for the shop itself: it times out (exit 4) while the
    // mailbox holds the message, which is then `stored`.
    fails(&ann, &["send", "Bakery", question, "--wait", "--timeout", "5"], 4, "not delivered");
    let history = ok_json(&ann, &["history", "Bakery"]);
    let last = history["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "stored", "{last}");
    ann_node.terminate();

    // The shop opens while Ann is away: it fetches her message and leaves
    // its answer and a delivery receipt in her mailbox.
    let shop_node = RunningNode::start(&shop);
    // (It fetches on start by itself; `mailbox fetch` returns once a round
    // begun after the call has ended, so the message is stored by then.)
    let fetched = ok_json(&shop, &["--profile", "shop", "mailbox", "fetch"]);
    assert_eq!(fetched["errors"], serde_json::json!([]), "{fetched}");
    assert!(ok(&shop, &["--profile", "shop", "history", "Ann"]).contains(question));
    let answer = "Reserved: 2 sourdough, pick up from 9";
    fails(&shop, &["--profile", "shop", "send", "Ann", answer, "--wait", "--timeout", "5"], 4, "not delivered");
    let history = ok_json(&shop, &["--profile", "shop", "history", "Ann"]);
    let last = history["messages"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["status"], "stored", "{last}");
    shop_node.terminate();

    // Ann comes back: the answer is there, and her question shows delivered.
    let _ann_node = RunningNode::start(&ann);
    ok(&ann, &["mailbox", "fetch"]);
    let history = ok_json(&ann, &["history", "Bakery"]);
    let messages = history["messages"].as_array().unwrap();
    let texts: Vec<&str> = messages.iter().map(|m| m["content"]["text"].as_str().unwrap()).collect();
    assert_eq!(texts, [question, answer]);
    assert_eq!(messages[0]["status"], "delivered", "{history}");

    // What the host kept: no text, no sender PeerId (text or binary).
    drop(host);
    let ann_peer: libp2p::PeerId = ann_card["peer_id"].as_str().unwrap().parse().unwrap();
    let shop_peer: libp2p::PeerId = shop_card["peer_id"].as_str().unwrap().parse().unwrap();
    let mut files = vec![host_log.clone()];
    files.extend(std::fs::read_dir(&host_dir).unwrap().map(|e| e.unwrap().path()));
    assert!(files.iter().any(|f| f.ends_with("mailboxes.redb")));
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [question.as_bytes(), answer.as_bytes(), b"Saturday", b"Marigold"] {
            assert!(!contains(&bytes, needle), "{} holds {:?}", file.display(), String::from_utf8_lossy(needle));
        }
        for peer in [ann_peer, shop_peer] {
            assert!(!contains(&bytes, peer.to_string().as_bytes()), "{} names {peer}", file.display());
            assert!(!contains(&bytes, &peer.to_bytes()), "{} holds {peer} in binary", file.display());
        }
    }
}

/// Runs `args` with standard output read up to its first line and then
/// closed, as `kabar … | head -n 1` does; asserts that the command still
/// wrote (so its output outgrew the pipe's buffer), then ended quietly with
/// exit code 0, as ripgrep does: no panic, nothing on stderr.
fn ends_quietly_when_the_reader_leaves(dir: Option<&Path>, args: &[&str]) {
    let mut command = Command::new(BIN);
    if let Some(dir) = dir {
        command.arg("--data-dir").arg(dir).env("KABAR_PASSPHRASE", PASS);
    }
    let mut child = command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    assert!(stdout.read_line(&mut line).unwrap() > 0, "kabar {args:?} printed nothing");
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "kabar {args:?} panicked: {stderr}");
    assert_eq!(stderr, "", "kabar {args:?} printed to stderr");
    assert_eq!(out.status.code(), Some(0), "kabar {args:?}");
}

/// `kabar … | head -n 1` without a node: outputs far larger than a pipe's
/// buffer (about 1.4 MB and 170 KB), so the command is still writing when
/// the pipe closes.
#[test]
fn a_command_whose_reader_closes_the_pipe_ends_quietly() {
    ends_quietly_when_the_reader_leaves(None, &["demo", "--messages", "10000"]);
    ends_quietly_when_the_reader_leaves(None, &["completions", "bash"]);
}

/// `kabar history … | head -n 1` against a node, human and --json: 200
/// messages of 1,000 characters.
#[test]
fn a_conversation_piped_into_head_ends_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let ann = init(tmp.path(), "ann", None);
    let bob = init(tmp.path(), "bob", None);
    let _ann_node = RunningNode::start(&ann);
    let bob_node = RunningNode::start(&bob);
    let bob_card = ok_json(&bob, &["card"])["card"].as_str().unwrap().to_string();
    drop(bob_node); // the messages stay queued: the history is Ann's own
    ok(&ann, &["contact", "add", &bob_card, "--name", "Bob"]);
    let texts: Vec<String> = (0..200).map(|i| format!("{i:03} {}", "x".repeat(996))).collect();
    for batch in texts.chunks(100) {
        let params = serde_json::json!({"profile": "personal", "to": "Bob", "texts": batch}).to_string();
        ok(&ann, &["rpc", "message.send_batch", &params]);
    }
    ends_quietly_when_the_reader_leaves(Some(&ann), &["history", "Bob", "--limit", "200"]);
    ends_quietly_when_the_reader_leaves(Some(&ann), &["--json", "history", "Bob", "--limit", "200"]);
}

/// A contact name a peer chose (the name on its card): an OSC that sets the
/// window title, a CSI that clears the screen, a right-to-left override.
const EVIL_NAME: &str = "Mal\x1b]0;pwned\x07\x1b[2J\u{202e}yrol";
/// Message text a peer wrote: CSI, OSC, the one-byte C1 CSI, DEL, a bidi
/// override, and a carriage return and newline before a fake line.
const EVIL_TEXT: &str = "hi\x1b[2J\x1b]0;pwned\x07 \u{9b}31mred\u{7f} \u{202e}txt.exe\r\nFAKE 12:00 Bank: send money";

/// Human output with no raw control character (newlines aside) and no bidi
/// override: whatever a peer wrote shows as `\u{…}`.
fn assert_tame(out: &str, what: &str) {
    let raw = out
        .chars()
        .find(|c| (c.is_control() && *c != '\n') || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}'));
    assert_eq!(raw, None, "{what} printed a raw control character: {out:?}");
    assert!(!out.lines().any(|l| l.starts_with("FAKE")), "{what} let a peer fake a line: {out:?}");
}

/// docs/cli.md, "Peer text on the terminal": what a peer controls (its
/// card's name, message text, catalog items) cannot drive the terminal in
/// human output, and `--json` keeps it exactly.
#[test]
fn escape_sequences_from_a_peer_are_shown_not_run() {
    let tmp = tempfile::tempdir().unwrap();
    let ann = init(tmp.path(), "ann", None);
    let shop = init(tmp.path(), "shop", Some("shop"));
    let _ann_node = RunningNode::start(&ann);
    let _shop_node = RunningNode::start(&shop);

    // Ann files the shop under the name its card suggests (as a client that
    // does not ask for one does), and the shop writes to her.
    let shop_card =
        ok_json(&shop, &["--profile", "shop", "card", "--name", EVIL_NAME])["card"].as_str().unwrap().to_string();
    let params = serde_json::json!({"profile": "personal", "card": shop_card}).to_string();
    ok(&ann, &["rpc", "contact.add", &params]);
    let ann_card = ok_json(&ann, &["card"])["card"].as_str().unwrap().to_string();
    ok(&shop, &["--profile", "shop", "contact", "add", &ann_card, "--name", "Ann"]);
    let sent = ok_json(&shop, &["--profile", "shop", "send", "Ann", EVIL_TEXT, "--wait"]);
    assert_eq!(sent["status"], "delivered");
    let item = "Sour\x1b[31mdough";
    let description = "800 g \x1b]8;;https://evil.example\x07click\x1b]8;;\x07";
    ok(
        &shop,
        &["--profile", "shop", "business", "catalog", "add", item, "--price", "4.50", "--description", description],
    );

    // Human output: escaped, one message per line.
    let history = ok(&ann, &["history", EVIL_NAME]);
    assert_tame(&history, "history");
    assert!(
        history.contains("hi\\u{1b}[2J\\u{1b}]0;pwned\\u{7} \\u{9b}31mred\\u{7f} \\u{202e}txt.exe\\u{d} FAKE"),
        "{history}"
    );
    assert!(history.contains("Mal\\u{1b}]0;pwned\\u{7}\\u{1b}[2J\\u{202e}yrol"), "{history}");
    let inbox = ok(&ann, &["inbox"]);
    assert_tame(&inbox, "inbox");
    assert!(inbox.contains("Mal\\u{1b}]0;pwned"), "{inbox}");
    let contacts = ok(&ann, &["contact", "list"]);
    assert_tame(&contacts, "contact list");
    assert!(contacts.contains("\\u{202e}yrol"), "{contacts}");
    assert_tame(&ok(&ann, &["contact", "verify", EVIL_NAME]), "contact verify");
    let catalog = ok(&ann, &["catalog", EVIL_NAME]);
    assert_tame(&catalog, "catalog");
    assert!(catalog.contains("Sour\\u{1b}[31mdough"), "{catalog}");
    assert_tame(&ok(&ann, &["rpc", "message.history", &serde_json::json!({"with": EVIL_NAME}).to_string()]), "rpc");

    // --json: exactly what the peer sent.
    let history = ok_json(&ann, &["history", EVIL_NAME]);
    assert_eq!(history["contact"], EVIL_NAME);
    assert_eq!(history["messages"][0]["content"]["text"], EVIL_TEXT);
    let catalog = ok_json(&ann, &["catalog", EVIL_NAME]);
    assert_eq!(catalog[0]["name"], item);
    assert_eq!(catalog[0]["description"], description);
    let rpc: Value = serde_json::from_str(&ok(&ann, &["rpc", "contact.list"])).unwrap();
    assert_eq!(rpc[0]["name"], EVIL_NAME);

    // An error that quotes the name: escaped on stderr, exact in --json.
    assert_tame(&ok(&ann, &["contact", "block", EVIL_NAME]), "contact block");
    let out = kabar(&ann, &["--json", "send", EVIL_NAME, "hello?"]);
    assert_eq!(out.status.code(), Some(1));
    assert_tame(&String::from_utf8(out.stderr).unwrap(), "an error");
    let error: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(error["error"]["message"], format!("{EVIL_NAME} is blocked"));
}

/// Every file under `root` and its bytes.
fn snapshot(root: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.insert(path.clone(), std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// The recovery paths of docs/cli.md, "Damaged profiles": `store check`
/// finds a damaged profile (exit 5) without changing a byte, `node run`
/// refuses to start (exit 5, naming the file); the profile's file restored
/// from a backup checks healthy again; damaged again, `profile remove
/// --yes` moves it aside, then the check passes and the node runs the
/// other profile; `store check` refuses while the node runs.
#[test]
fn a_damaged_profile_is_checked_refused_removed_and_the_rest_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = init(tmp.path(), "d", Some("shop"));
    let v = ok_json(&dir, &["store", "check"]);
    assert_eq!(v["healthy"], true, "{v}");
    assert_eq!(v["profiles"].as_array().unwrap().len(), 2);

    // A backup, then damage to the shop's meta table (every copy of a key
    // in it).
    let shop = dir.join("profiles/shop.redb");
    let backup = std::fs::read(&shop).unwrap();
    let mut bytes = backup.clone();
    let needle = b"schema_version";
    let hits: Vec<usize> =
        (0..=bytes.len() - needle.len()).filter(|&i| &bytes[i..i + needle.len()] == needle).collect();
    assert!(!hits.is_empty());
    for i in hits {
        bytes[i] ^= 0x20;
    }
    std::fs::write(&shop, &bytes).unwrap();
    let before = snapshot(&dir);

    let out = kabar(&dir, &["--json", "store", "check"]);
    assert_eq!(out.status.code(), Some(5), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["healthy"], false);
    assert_eq!(v["profiles"][0]["profile"], "personal");
    assert_eq!(v["profiles"][0]["healthy"], true);
    assert_eq!(v["profiles"][1]["profile"], "shop");
    assert_eq!(v["profiles"][1]["healthy"], false);
    assert!(v["profiles"][1]["error"].as_str().unwrap().contains("corrupted"), "{v}");
    let human = kabar(&dir, &["store", "check"]);
    assert_eq!(human.status.code(), Some(5));
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("personal: healthy") && text.contains("shop: DAMAGED"), "{text}");
    assert!(String::from_utf8_lossy(&human.stderr).contains("Damaged profiles"));
    assert!(!String::from_utf8_lossy(&human.stderr).contains("panicked"), "no panic message");
    assert_eq!(snapshot(&dir), before, "the check changed a file");

    fails(&dir, &["node", "run", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"], 5, &shop.display().to_string());
    assert_eq!(snapshot(&dir), before, "the refused start changed a file");

    std::fs::write(&shop, &backup).unwrap();
    assert_eq!(ok_json(&dir, &["store", "check"])["healthy"], true, "restored from the backup");
    std::fs::write(&shop, &bytes).unwrap();

    fails(&dir, &["profile", "remove", "shop"], 1, "--yes");
    let v = ok_json(&dir, &["profile", "remove", "shop", "--yes"]);
    let moved = PathBuf::from(v["moved_to"].as_str().unwrap());
    assert!(moved.starts_with(dir.join("removed")), "{moved:?}");
    assert_eq!(std::fs::read(&moved).unwrap(), bytes);
    assert_eq!(ok_json(&dir, &["store", "check"])["healthy"], true);

    let node = RunningNode::start(&dir);
    fails(&dir, &["store", "check"], 1, "node is running");
    fails(&dir, &["profile", "remove", "personal", "--yes"], 1, "node is running");
    assert!(node.terminate().success());
}
