//! The delivery engine without sockets: two or three engines wired by hand,
//! with loss, duplication, reordering, restarts, strangers and the business
//! automations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use kabar_crypto::ProfileKind;
use kabar_node::content::{Content, Message};
use kabar_node::engine::{Action, Engine, EngineConfig, NEW_CUSTOMER_LABEL, PeerKey};
use kabar_node::wire::{Ack, RejectReason};
use kabar_storage::*;

const T0: u64 = 1_764_000_000_000; // a Monday, 2025-11-24 16:00 UTC

/// The engines here never wait for prekeys before a first message (there
/// is no network to answer), except where a test says so.
fn config() -> EngineConfig {
    EngineConfig { prekey_wait_ms: 0, ..EngineConfig::default() }
}

struct Party {
    _tmp: tempfile::TempDir,
    dir: DataDir,
    name: String,
    engine: Option<Engine>,
}

impl Party {
    fn new(name: &str, kind: ProfileKind) -> Party {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = DataDir::create(tmp.path(), b"pw", KdfParams::TESTNET).unwrap();
        let store = dir.create_profile(name, kind, T0 / 1000, &mut rand::rng()).unwrap();
        let engine = Engine::new(store, config()).unwrap();
        Party { _tmp: tmp, dir, name: name.into(), engine: Some(engine) }
    }

    fn e(&mut self) -> &mut Engine {
        self.engine.as_mut().unwrap()
    }

    fn key(&mut self) -> PeerKey {
        self.e().peer_key()
    }

    fn store(&mut self) -> &ProfileStore {
        self.e().store()
    }

    /// Adds `other` as a contact from its card data.
    fn knows(&mut self, other: &mut Party, as_name: &str) -> ContactId {
        let identity = other.store().identity().unwrap().public();
        let spk = other.store().current_signed_prekey().unwrap().public();
        let contact = Contact::new(identity, Some(spk), as_name, T0);
        self.store().upsert_contact(contact).unwrap().0
    }

    fn contact_of(&mut self, other: &mut Party) -> ContactId {
        let key = other.key();
        self.store().contact_id_for_key(&key)
    }

    /// Restarts with an engine that waits for prekeys (see [`waiting`]).
    fn restart_waiting(&mut self) {
        drop(self.engine.take());
        let store = self.dir.open_profile(&self.name).unwrap();
        let config = EngineConfig { prekey_wait_ms: kabar_node::prekeys::PREKEY_WAIT_MS, ..EngineConfig::default() };
        self.engine = Some(Engine::new(store, config).unwrap());
    }

    fn restart(&mut self) {
        drop(self.engine.take());
        let store = self.dir.open_profile(&self.name).unwrap();
        self.engine = Some(Engine::new(store, config()).unwrap());
    }
}

/// Alice and Bob (personal), each holding the other's card: Alice's id of
/// Bob, Bob's id of Alice.
fn alice_and_bob() -> (Party, Party, ContactId, ContactId) {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    let b_alice = b.knows(&mut a, "Alice");
    (a, b, a_bob, b_alice)
}

/// One transmission: recipient, message ids, envelopes.
type Transmission = (PeerKey, Vec<[u8; 16]>, Vec<Vec<u8>>);

/// The transmissions among `actions`.
fn transmits(actions: &[Action]) -> Vec<Transmission> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Transmit { peer, message_ids, envelopes, .. } => {
                Some((*peer, message_ids.clone(), envelopes.clone()))
            }
            _ => None,
        })
        .collect()
}

/// Delivers every transmission in `actions` from `from` to `to`, feeds the
/// acks back, and keeps going with the follow-up actions of both sides until
/// nothing is left. Returns how many envelopes went each way.
fn pump(from: &mut Party, to: &mut Party, mut actions: Vec<Action>, now: u64) -> usize {
    let mut moved = 0;
    let mut back: Vec<Action> = Vec::new();
    let (from_key, to_key) = (from.key(), to.key());
    for _ in 0..50 {
        if actions.is_empty() && back.is_empty() {
            break;
        }
        for (peer, ids, envs) in transmits(&actions) {
            assert_eq!(peer, to_key);
            moved += envs.len();
            let (acks, follow) = to.e().on_request(&from_key, &envs, now, &mut rand::rng()).unwrap();
            back.extend(follow);
            let more = from.e().on_acks(&to_key, &ids, &acks, now, &mut rand::rng()).unwrap();
            actions = more;
        }
        if transmits(&actions).is_empty() {
            actions.clear();
        }
        for (peer, ids, envs) in transmits(&std::mem::take(&mut back)) {
            assert_eq!(peer, from_key);
            moved += envs.len();
            let (acks, follow) = from.e().on_request(&to_key, &envs, now, &mut rand::rng()).unwrap();
            actions.extend(follow);
            back.extend(to.e().on_acks(&from_key, &ids, &acks, now, &mut rand::rng()).unwrap());
        }
    }
    // The engine's in-memory outbox index agrees with the store.
    for p in [from, to] {
        let stored = p.store().outbox().unwrap().len();
        assert_eq!(p.e().queued(), stored, "{}: outbox index out of step with the store", p.name);
    }
    moved
}

fn texts(p: &mut Party, c: &ContactId) -> Vec<(Direction, String)> {
    p.store()
        .history(c, 10_000, None)
        .unwrap()
        .into_iter()
        .filter_map(|(_, m)| match Message::decode(&m.body).ok()?.content {
            Content::Text { text, .. } => Some((m.direction, text)),
            Content::Order { .. } => Some((m.direction, "<order>".into())),
            Content::Catalog { items } => Some((m.direction, format!("<catalog {}>", items.len()))),
            Content::CatalogRequest => Some((m.direction, "<catalog request>".into())),
            Content::Receipt { .. } | Content::Addresses { .. } | Content::Mailboxes { .. } => None,
        })
        .collect()
}

fn status(p: &mut Party, id: &[u8; 16]) -> MessageStatus {
    p.store().message(id).unwrap().unwrap().2.status
}

#[test]
fn messages_go_both_ways_and_reach_delivered_then_read() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();

    let (id, actions) = a.e().send(&a_bob, Content::text("hi Bob"), T0, &mut rand::rng()).unwrap();
    assert_eq!(status(&mut a, &id), MessageStatus::Sent);
    assert_eq!(pump(&mut a, &mut b, actions, T0), 1);
    assert_eq!(status(&mut a, &id), MessageStatus::Delivered);
    assert!(a.store().outbox().unwrap().is_empty());
    assert_eq!(texts(&mut b, &b_alice), [(Direction::Incoming, "hi Bob".to_string())]);
    assert_eq!(b.store().conversation(&b_alice).unwrap().unread, 1);

    let (reply, actions) = b.e().send(&b_alice, Content::text("hi Alice"), T0 + 1, &mut rand::rng()).unwrap();
    pump(&mut b, &mut a, actions, T0 + 1);
    assert_eq!(status(&mut b, &reply), MessageStatus::Delivered);

    // Bob reads: Alice's message becomes Read on Alice's side.
    let actions = b.e().mark_read(&b_alice, T0 + 2, &mut rand::rng()).unwrap();
    pump(&mut b, &mut a, actions, T0 + 2);
    assert_eq!(status(&mut a, &id), MessageStatus::Read);
    assert_eq!(b.store().conversation(&b_alice).unwrap().unread, 0);
}

#[test]
fn lost_requests_are_retried_with_backoff_and_survive_a_restart() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();
    let (id, actions) = a.e().send(&a_bob, Content::text("are you there?"), T0, &mut rand::rng()).unwrap();
    let (_, ids, _) = transmits(&actions).remove(0);
    // The request is lost.
    a.e().on_transmit_failed(&[0; 32], &ids, T0).unwrap();
    // Not due yet: nothing is retried immediately.
    assert!(transmits(&a.e().on_tick(T0 + 100, &mut rand::rng()).unwrap()).is_empty());
    // Alice's node restarts; the outbox is still there.
    a.restart();
    let actions = a.e().on_tick(T0 + 5_000, &mut rand::rng()).unwrap();
    assert_eq!(transmits(&actions).len(), 1);
    pump(&mut a, &mut b, actions, T0 + 5_000);
    assert_eq!(status(&mut a, &id), MessageStatus::Delivered);
    assert_eq!(texts(&mut b, &b_alice).len(), 1);
    // The next backoff is longer than the first. A first attempt writes
    // only the message's status: its entry stays as queued (due at once
    // after a restart); the count and time are stored from the second on.
    let (_, actions) = a.e().send(&a_bob, Content::text("again"), T0 + 6_000, &mut rand::rng()).unwrap();
    let (_, ids, _) = transmits(&actions).remove(0);
    a.e().on_transmit_failed(&[0; 32], &ids, T0).unwrap();
    let queued = a.store().outbox().unwrap().remove(0);
    assert_eq!((queued.attempts, queued.next_attempt_at_ms), (0, T0 + 6_000));
    assert_eq!(status(&mut a, &ids[0]), MessageStatus::Sent);
    // The first backoff is 1 s ± 20 %: not due before 800 ms, due at 1.2 s.
    assert!(transmits(&a.e().on_tick(T0 + 6_000 + 799, &mut rand::rng()).unwrap()).is_empty());
    let first_due = T0 + 6_000 + 1_200;
    let actions = a.e().on_tick(first_due, &mut rand::rng()).unwrap();
    a.e().on_transmit_failed(&[0; 32], &transmits(&actions)[0].1, T0).unwrap();
    let entry = a.store().outbox().unwrap().remove(0);
    assert_eq!(entry.attempts, 2);
    assert!(entry.next_attempt_at_ms - first_due >= 1_600, "backoff doubles");
    // Reachability flushes at once, whatever the backoff says.
    assert_eq!(transmits(&a.e().on_peer_reachable(&b.key(), first_due + 1).unwrap()).len(), 1);
}

#[test]
fn duplicates_are_acknowledged_and_stored_once_and_order_is_the_senders() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();
    let mut all = Vec::new();
    for i in 0..5 {
        let (id, actions) = a.e().send(&a_bob, Content::text(format!("m{i}")), T0 + i, &mut rand::rng()).unwrap();
        let (_, ids, envs) = transmits(&actions).remove(0);
        a.e().on_transmit_failed(&[0; 32], &ids, T0).unwrap();
        // The retransmission carries the earlier ones too; keep this one.
        let at = ids.iter().position(|x| *x == id).unwrap();
        all.push(envs[at].clone());
    }
    // They arrive in reverse order, one request each, then all again.
    let key = a.key();
    for env in all.iter().rev() {
        let (acks, _) = b.e().on_request(&key, std::slice::from_ref(env), T0 + 10, &mut rand::rng()).unwrap();
        assert_eq!(acks, [Ack::Accepted]);
    }
    let (acks, _) = b.e().on_request(&key, &all, T0 + 11, &mut rand::rng()).unwrap();
    assert_eq!(acks, vec![Ack::Duplicate; 5]);
    let history = b.store().history(&b_alice, 100, None).unwrap();
    assert_eq!(history.len(), 5);
    let mut by_sender: Vec<(u64, String)> = history
        .iter()
        .map(|(_, m)| {
            let msg = Message::decode(&m.body).unwrap();
            let Content::Text { text, .. } = msg.content else { panic!() };
            (msg.seq, text)
        })
        .collect();
    by_sender.sort();
    assert_eq!(by_sender.iter().map(|(_, t)| t.as_str()).collect::<Vec<_>>(), ["m0", "m1", "m2", "m3", "m4"]);
}

#[test]
fn garbage_and_foreign_envelopes_are_rejected_without_harm() {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let mut m = Party::new("mallory", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    b.knows(&mut a, "Alice");
    let (_, actions) = a.e().send(&a_bob, Content::text("hello"), T0, &mut rand::rng()).unwrap();
    let (_, _, envs) = transmits(&actions).remove(0);
    let mallory = m.key();
    // Mallory replays Alice's prekey message as her own: identity mismatch.
    let (acks, _) = b.e().on_request(&mallory, &envs, T0, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Rejected(RejectReason::IdentityMismatch)]);
    // Garbage.
    let (acks, _) = b.e().on_request(&mallory, &[vec![1, 2, 3], vec![]], T0, &mut rand::rng()).unwrap();
    assert_eq!(acks, vec![Ack::Rejected(RejectReason::Malformed); 2]);
    // A tampered envelope from Alice.
    let mut bad = envs[0].clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let alice = a.key();
    let (acks, _) = b.e().on_request(&alice, &[bad], T0, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Rejected(RejectReason::Undecryptable)]);
    // The genuine one still goes through afterwards.
    let (acks, _) = b.e().on_request(&alice, &envs, T0, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Accepted]);
    assert!(b.store().contacts().unwrap().iter().all(|(_, c)| c.display_name != "mallory"));
}

#[test]
fn a_stranger_becomes_a_message_request_and_blocking_rejects() {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob"); // Bob does not know Alice.
    let (_, actions) = a.e().send(&a_bob, Content::text("remember me?"), T0, &mut rand::rng()).unwrap();
    let (_, ids, envs) = transmits(&actions).remove(0);
    let alice = a.key();
    let (acks, events) = b.e().on_request(&alice, &envs, T0, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Accepted]);
    assert!(events.iter().any(|e| matches!(e, Action::Notify(kabar_node::engine::NodeEvent::MessageRequest { .. }))));
    let b_alice = b.contact_of(&mut a);
    let contact = b.store().contact(&b_alice).unwrap().unwrap();
    assert!(contact.request);
    a.e().on_acks(&b.key(), &ids, &acks, T0, &mut rand::rng()).unwrap();
    // Bob blocks: further messages are rejected and not stored.
    b.store().update_contact(&b_alice, |c| c.blocked = true).unwrap();
    let (id2, actions) = a.e().send(&a_bob, Content::text("hello??"), T0 + 1, &mut rand::rng()).unwrap();
    pump(&mut a, &mut b, actions, T0 + 1);
    assert_eq!(status(&mut a, &id2), MessageStatus::Failed);
    assert_eq!(texts(&mut b, &b_alice).len(), 1);
}

/// Accepting a request settles the stranger in the same transaction as the
/// contact change, and a new name is held to the rules of every contact
/// name: two contacts never share one.
#[test]
fn accepting_a_request_settles_it_and_checks_the_new_name() {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let mut c = Party::new("carol", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob"); // Bob does not know Alice.
    b.knows(&mut c, "Carol");
    let (_, actions) = a.e().send(&a_bob, Content::text("remember me?"), T0, &mut rand::rng()).unwrap();
    pump(&mut a, &mut b, actions, T0);
    let b_alice = b.contact_of(&mut a);
    assert_eq!(b.store().strangers().unwrap().len(), 1);
    for taken in ["Carol", " ", &"x".repeat(65)] {
        let refused = b.e().accept_request(&b_alice, Some(taken.to_string()));
        assert!(matches!(refused, Err(kabar_node::engine::EngineError::Store(StoreError::Invalid(_)))), "{taken:?}");
    }
    assert!(b.store().contact(&b_alice).unwrap().unwrap().request, "a refused accept changes nothing");
    assert_eq!(b.store().strangers().unwrap().len(), 1);
    let accepted = b.e().accept_request(&b_alice, Some("Alice A.".into())).unwrap();
    assert!(!accepted.request);
    assert_eq!(b.store().contact_by_name("Alice A.").unwrap().unwrap().0, b_alice);
    assert!(b.store().strangers().unwrap().is_empty(), "accepted: no longer a pending stranger");
    assert_eq!(b.e().guard_status().pending_strangers, 0);
}

#[test]
fn business_greets_new_customers_labels_them_and_sends_away_once_per_period() {
    let mut shop = Party::new("shop", ProfileKind::Business);
    let mut cust = Party::new("customer", ProfileKind::Personal);
    let c_shop = cust.knows(&mut shop, "Bakery");
    shop.store()
        .set_automations(&Automations {
            greeting: Some("Welcome to Marigold!".into()),
            away_message: Some("We are closed, back at 9:00".into()),
            away_schedule: AwaySchedule::OutsideHours,
        })
        .unwrap();
    let mut hours = BusinessHours::default();
    hours.days[0] = Some((9 * 60, 17 * 60)); // Mondays 9-17 UTC
    shop.store().set_business_hours(&hours).unwrap();

    // Monday 16:00 UTC: open. First message: greeting, no away message.
    let (_, actions) = cust.e().send(&c_shop, Content::text("Hello"), T0, &mut rand::rng()).unwrap();
    pump(&mut cust, &mut shop, actions, T0);
    let s_cust = shop.contact_of(&mut cust);
    let conv = shop.store().conversation(&s_cust).unwrap();
    let label = shop.store().labels().unwrap().into_iter().find(|l| l.name == NEW_CUSTOMER_LABEL).unwrap();
    assert_eq!(conv.labels, [label.id]);
    assert!(!shop.store().contact(&s_cust).unwrap().unwrap().request, "a customer, not a request");
    assert_eq!(
        texts(&mut cust, &c_shop),
        [(Direction::Outgoing, "Hello".into()), (Direction::Incoming, "Welcome to Marigold!".into())]
    );

    // Monday 18:00: closed. Away message once; a second message in the same
    // closed period gets nothing.
    let evening = T0 + 2 * 3_600_000;
    for text in ["Are you open?", "Hello?"] {
        let (_, actions) = cust.e().send(&c_shop, Content::text(text), evening, &mut rand::rng()).unwrap();
        pump(&mut cust, &mut shop, actions, evening);
    }
    let got = texts(&mut cust, &c_shop);
    assert_eq!(got.iter().filter(|(_, t)| t.starts_with("We are closed")).count(), 1, "{got:?}");
    assert_eq!(got.iter().filter(|(_, t)| t.starts_with("Welcome")).count(), 1);
    // Next Monday evening: a new away period.
    let next_week = evening + 7 * 86_400_000;
    let (_, actions) = cust.e().send(&c_shop, Content::text("Hi again"), next_week, &mut rand::rng()).unwrap();
    pump(&mut cust, &mut shop, actions, next_week);
    let got = texts(&mut cust, &c_shop);
    assert_eq!(got.iter().filter(|(_, t)| t.starts_with("We are closed")).count(), 2);
    // After 14 days of silence the greeting comes again.
    let later = next_week + 15 * 86_400_000 - 7 * 3_600_000; // a Monday, open
    let (_, actions) = cust.e().send(&c_shop, Content::text("Back"), later, &mut rand::rng()).unwrap();
    pump(&mut cust, &mut shop, actions, later);
    assert_eq!(texts(&mut cust, &c_shop).iter().filter(|(_, t)| t.starts_with("Welcome")).count(), 2);
}

#[test]
fn quick_replies_catalog_and_orders() {
    let mut shop = Party::new("shop", ProfileKind::Business);
    let mut cust = Party::new("customer", ProfileKind::Personal);
    let c_shop = cust.knows(&mut shop, "Bakery");
    let s_cust = shop.knows(&mut cust, "Dana");
    shop.store()
        .put_quick_reply(&QuickReply { shortcut: "thanks".into(), text: "Thank you for your order!".into() })
        .unwrap();
    let item = shop
        .store()
        .put_catalog_item(CatalogItem {
            id: [0; 8],
            name: "Sourdough".into(),
            price_minor: 450,
            currency: "EUR".into(),
            description: "800 g".into(),
            available: true,
        })
        .unwrap();

    let (_, actions) = cust.e().send(&c_shop, Content::CatalogRequest, T0, &mut rand::rng()).unwrap();
    pump(&mut cust, &mut shop, actions, T0);
    assert!(texts(&mut cust, &c_shop).contains(&(Direction::Incoming, "<catalog 1>".into())));

    let order = Content::Order {
        items: vec![kabar_node::content::OrderLine { item: kabar_crypto::hex::encode(&item.id), quantity: 2 }],
        note: None,
    };
    let (_, actions) = cust.e().send(&c_shop, order, T0 + 1, &mut rand::rng()).unwrap();
    pump(&mut cust, &mut shop, actions, T0 + 1);
    assert!(texts(&mut shop, &s_cust).contains(&(Direction::Incoming, "<order>".into())));

    let (_, actions) = shop.e().send(&s_cust, Content::text("/thanks"), T0 + 2, &mut rand::rng()).unwrap();
    pump(&mut shop, &mut cust, actions, T0 + 2);
    assert_eq!(texts(&mut cust, &c_shop).last().unwrap().1, "Thank you for your order!");
    assert!(shop.e().send(&s_cust, Content::text("/nope"), T0 + 3, &mut rand::rng()).is_err());
    // A personal profile sends "/thanks" as it is.
    let (_, actions) = cust.e().send(&c_shop, Content::text("/thanks"), T0 + 4, &mut rand::rng()).unwrap();
    pump(&mut cust, &mut shop, actions, T0 + 4);
    assert_eq!(texts(&mut shop, &s_cust).last().unwrap().1, "/thanks");
}

/// An automatic reply that cannot be made (here a catalog too large for one
/// envelope) is left out: the customer's message, already durable, is still
/// acknowledged as accepted, and the other automations go out.
#[test]
fn an_automatic_reply_that_fails_never_turns_a_stored_message_into_a_refusal() {
    let mut shop = Party::new("shop", ProfileKind::Business);
    let mut cust = Party::new("customer", ProfileKind::Personal);
    let c_shop = cust.knows(&mut shop, "Bakery");
    shop.store().set_automations(&Automations { greeting: Some("Welcome!".into()), ..Automations::default() }).unwrap();
    for i in 0..200 {
        let description = format!("{i:03} {}", "x".repeat(MAX_DESCRIPTION - 4));
        let item = CatalogItem {
            id: [0; 8],
            name: format!("Loaf {i}"),
            price_minor: 450,
            currency: "EUR".into(),
            description,
            available: true,
        };
        shop.store().put_catalog_item(item).unwrap();
    }
    let (id, actions) = cust.e().send(&c_shop, Content::CatalogRequest, T0, &mut rand::rng()).unwrap();
    let (peer, ids, envelopes) = transmits(&actions).remove(0);
    assert_eq!(peer, shop.key());
    let (acks, follow) = shop.e().on_request(&cust.key(), &envelopes, T0, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Accepted], "the request is stored: it must be acknowledged");
    let s_cust = shop.contact_of(&mut cust);
    let expected = [(Direction::Incoming, "<catalog request>".to_string()), (Direction::Outgoing, "Welcome!".into())];
    assert_eq!(texts(&mut shop, &s_cust), expected);
    cust.e().on_acks(&shop.key(), &ids, &acks, T0, &mut rand::rng()).unwrap();
    assert_eq!(status(&mut cust, &id), MessageStatus::Delivered);
    pump(&mut shop, &mut cust, follow, T0);
    assert_eq!(texts(&mut cust, &c_shop).last().unwrap().1, "Welcome!");
}

#[test]
fn a_message_fails_only_after_the_expiry() {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    let (id, actions) = a.e().send(&a_bob, Content::text("into the void"), T0, &mut rand::rng()).unwrap();
    a.e().on_transmit_failed(&[0; 32], &transmits(&actions)[0].1, T0).unwrap();
    let expiry = EngineConfig::default().expiry_ms;
    // Retried (never failed) right up to the expiry.
    let actions = a.e().on_tick(T0 + expiry, &mut rand::rng()).unwrap();
    assert_eq!(status(&mut a, &id), MessageStatus::Sent);
    a.e().on_transmit_failed(&[0; 32], &transmits(&actions)[0].1, T0).unwrap();
    let actions = a.e().on_tick(T0 + expiry + 1, &mut rand::rng()).unwrap();
    assert!(transmits(&actions).is_empty());
    assert_eq!(status(&mut a, &id), MessageStatus::Failed);
    assert!(a.store().outbox().unwrap().is_empty());
}

#[test]
fn both_sides_starting_a_session_at_once_lose_nothing() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();
    let (ak, bk) = (a.key(), b.key());
    // Each sends before hearing from the other: two X3DH sessions cross.
    let mut from_a = Vec::new();
    let mut from_b = Vec::new();
    for i in 0..3 {
        let (_, act) = a.e().send(&a_bob, Content::text(format!("a{i}")), T0, &mut rand::rng()).unwrap();
        let (_, ids, envs) = transmits(&act).remove(0);
        a.e().on_transmit_failed(&[0; 32], &ids, T0).unwrap();
        from_a.push(envs.last().unwrap().clone());
        let (_, act) = b.e().send(&b_alice, Content::text(format!("b{i}")), T0, &mut rand::rng()).unwrap();
        let (_, ids, envs) = transmits(&act).remove(0);
        b.e().on_transmit_failed(&[0; 32], &ids, T0).unwrap();
        from_b.push(envs.last().unwrap().clone());
    }
    // Interleaved delivery: a0 to Bob, b0 to Alice, then the rest.
    let deliver = |to: &mut Party, from: &PeerKey, env: &Vec<u8>| {
        to.e().on_request(from, std::slice::from_ref(env), T0, &mut rand::rng()).unwrap().0
    };
    assert_eq!(deliver(&mut b, &ak, &from_a[0]), [Ack::Accepted]);
    assert_eq!(deliver(&mut a, &bk, &from_b[0]), [Ack::Accepted]);
    for env in &from_a[1..] {
        assert_eq!(deliver(&mut b, &ak, env), [Ack::Accepted]);
    }
    for env in &from_b[1..] {
        assert_eq!(deliver(&mut a, &bk, env), [Ack::Accepted]);
    }
    // The conversation goes on both ways afterwards, through the engines.
    for round in 0..3 {
        let (id, act) =
            a.e().send(&a_bob, Content::text(format!("later a{round}")), T0 + 10, &mut rand::rng()).unwrap();
        pump(&mut a, &mut b, act, T0 + 10);
        assert_eq!(status(&mut a, &id), MessageStatus::Delivered);
        let (id, act) =
            b.e().send(&b_alice, Content::text(format!("later b{round}")), T0 + 10, &mut rand::rng()).unwrap();
        pump(&mut b, &mut a, act, T0 + 10);
        assert_eq!(status(&mut b, &id), MessageStatus::Delivered);
    }
    assert_eq!(texts(&mut b, &b_alice).iter().filter(|(d, _)| *d == Direction::Incoming).count(), 6);
    assert_eq!(texts(&mut a, &a_bob).iter().filter(|(d, _)| *d == Direction::Incoming).count(), 6);
}

#[test]
fn a_retransmission_long_after_is_still_acknowledged_as_a_duplicate() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();
    let (_, actions) = a.e().send(&a_bob, Content::text("first"), T0, &mut rand::rng()).unwrap();
    let (_, _, envs) = transmits(&actions).remove(0);
    let alice = a.key();
    assert_eq!(b.e().on_request(&alice, &envs, T0, &mut rand::rng()).unwrap().0, [Ack::Accepted]);
    // The ack is lost; many ratchet steps later the old envelope comes again
    // (its chain is long forgotten by the ratchet).
    for i in 0..30 {
        let (_, act) = b.e().send(&b_alice, Content::text(format!("b{i}")), T0 + 1, &mut rand::rng()).unwrap();
        pump(&mut b, &mut a, act, T0 + 1);
        let (_, act) = a.e().send(&a_bob, Content::text(format!("a{i}")), T0 + 1, &mut rand::rng()).unwrap();
        pump(&mut a, &mut b, act, T0 + 1);
    }
    assert_eq!(b.e().on_request(&alice, &envs, T0 + 2, &mut rand::rng()).unwrap().0, [Ack::Duplicate]);
}

#[test]
fn a_batch_of_sends_commits_together_and_arrives_in_order() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();
    let contents: Vec<Content> = (0..50).map(|i| Content::text(format!("batch {i}"))).collect();
    let (ids, actions) = a.e().send_many(&a_bob, contents, T0, &mut rand::rng()).unwrap();
    assert_eq!(ids.len(), 50);
    // One request carries the whole batch.
    assert_eq!(transmits(&actions).len(), 1);
    assert_eq!(transmits(&actions)[0].2.len(), 50);
    pump(&mut a, &mut b, actions, T0);
    assert!(ids.iter().all(|id| status(&mut a, id) == MessageStatus::Delivered));
    let got: Vec<String> = texts(&mut b, &b_alice).into_iter().map(|(_, t)| t).collect();
    assert_eq!(got, (0..50).map(|i| format!("batch {i}")).collect::<Vec<_>>());
    // Then single sends go on from the same session.
    let (id, actions) = a.e().send(&a_bob, Content::text("after"), T0 + 1, &mut rand::rng()).unwrap();
    pump(&mut a, &mut b, actions, T0 + 1);
    assert_eq!(status(&mut a, &id), MessageStatus::Delivered);
}

#[test]
fn new_addresses_reach_every_contact_once_and_replace_what_they_hold() {
    let mut alice = Party::new("alice", ProfileKind::Personal);
    let mut bob = Party::new("bob", ProfileKind::Personal);
    let mut blocked = Party::new("mallory", ProfileKind::Personal);
    let bob_id = alice.knows(&mut bob, "Bob");
    alice.knows(&mut blocked, "Mallory");
    let m = alice.contact_of(&mut blocked);
    alice.store().update_contact(&m, |c| c.blocked = true).unwrap();
    bob.knows(&mut alice, "Alice");
    let alice_at_bob = bob.contact_of(&mut alice);

    let addrs = vec![
        "/ip4/198.18.0.9/tcp/4001".to_string(),
        "/ip4/198.18.0.1/tcp/4040/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN/p2p-circuit".to_string(),
    ];
    let actions = alice.e().announce_addresses(&addrs, T0, &mut rand::rng()).unwrap();
    let sent = transmits(&actions);
    assert_eq!(sent.len(), 1, "one update, to Bob only (not to the blocked contact)");
    pump(&mut alice, &mut bob, actions, T0);
    assert_eq!(bob.store().contact(&alice_at_bob).unwrap().unwrap().addresses, addrs);
    assert!(texts(&mut bob, &alice_at_bob).is_empty(), "an address update is not a visible message");
    assert!(texts(&mut alice, &bob_id).is_empty());

    // The same addresses again (a restart): nothing is sent.
    alice.restart();
    assert!(transmits(&alice.e().announce_addresses(&addrs, T0 + 1, &mut rand::rng()).unwrap()).is_empty());

    // Malformed or oversized updates from a contact are dropped, the stored
    // addresses stay.
    let too_many: Vec<String> = (0..9).map(|i| format!("/ip4/10.0.0.{i}/tcp/1")).collect();
    assert!(Content::Addresses { addresses: too_many }.check().is_err());
    assert!(Content::Addresses { addresses: vec!["nonsense".into()] }.check().is_err());
}

/// A mailbox host reduced to what the engine sees: deposits under a tag,
/// pages in order, deletes.
#[derive(Default)]
struct FakeMailbox {
    next: u64,
    items: Vec<kabar_node::mailbox::Item>,
}

impl FakeMailbox {
    fn deposit(&mut self, tag: [u8; 16], envelopes: &[Vec<u8>]) {
        for e in envelopes {
            self.next += 1;
            let item = kabar_node::mailbox::Item { seq: self.next, tag, deposited_at_ms: T0, envelope: e.clone() };
            self.items.push(item);
        }
    }

    fn delete(&mut self, seqs: &[u64]) {
        self.items.retain(|i| !seqs.contains(&i.seq));
    }
}

const HOST: &str = "/ip4/198.18.0.1/tcp/4040/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

/// Registers a mailbox for `p` and returns the mailbox updates it queued.
fn add_mailbox(p: &mut Party, address: &str) -> Vec<Action> {
    let key = kabar_node::mailbox::OwnerKey::generate(&mut rand::rng());
    let own = OwnMailbox { address: address.into(), key: key.to_bytes(), added_at_ms: T0 };
    p.e().add_mailbox(own, T0, &mut rand::rng()).unwrap()
}

/// Plays every transmission in `actions` as failed (the peer is offline)
/// and every resulting deposit into `mailbox`; returns the other actions.
fn offline_deliver(from: &mut Party, mailbox: &mut FakeMailbox, actions: Vec<Action>, now: u64) -> Vec<Action> {
    let mut rest = Vec::new();
    let mut queue = actions;
    for _ in 0..20 {
        let mut next = Vec::new();
        for a in queue {
            match a {
                Action::Transmit { peer, message_ids, .. } => {
                    next.extend(from.e().on_transmit_failed(&peer, &message_ids, now).unwrap());
                }
                Action::Deposit { peer, mailbox: m, message_ids, envelopes } => {
                    assert_eq!(m.address, HOST);
                    mailbox.deposit(m.tag, &envelopes);
                    let ok = kabar_node::mailbox::DepositOutcome {
                        accepted: envelopes.len(),
                        status: kabar_node::mailbox::Status::Ok,
                    };
                    next.extend(from.e().on_deposit_result(&peer, &message_ids, Ok(ok), now).unwrap());
                }
                other => rest.push(other),
            }
        }
        if next.is_empty() {
            break;
        }
        queue = next;
    }
    rest
}

#[test]
fn never_online_together_messages_go_through_mailboxes_with_delivery_receipts() {
    let (mut alice, mut bob, bob_id, alice_id) = alice_and_bob();
    // Both register a mailbox while online; contacts hear of it inside the session.
    let a = add_mailbox(&mut bob, HOST);
    assert_eq!(transmits(&a).len(), 1, "one mailbox update, to Alice");
    pump(&mut bob, &mut alice, a, T0);
    assert_eq!(alice.store().contact_mailboxes(&bob_id).unwrap().theirs.len(), 1);
    let a = add_mailbox(&mut alice, HOST);
    pump(&mut alice, &mut bob, a, T0);
    assert_eq!(bob.store().contact_mailboxes(&alice_id).unwrap().theirs.len(), 1);
    assert!(texts(&mut bob, &alice_id).is_empty(), "mailbox updates are not visible messages");

    // Bob is offline: Alice's 50 messages go to Bob's mailbox.
    let (mut bob_box, mut alice_box) = (FakeMailbox::default(), FakeMailbox::default());
    let mut ids = Vec::new();
    for i in 0..50 {
        let (id, actions) = alice.e().send(&bob_id, Content::text(format!("m{i}")), T0 + 1, &mut rand::rng()).unwrap();
        ids.push(id);
        let left = offline_deliver(&mut alice, &mut bob_box, actions, T0 + 1);
        assert!(transmits(&left).is_empty());
    }
    assert_eq!(bob_box.items.len(), 50);
    for id in &ids {
        assert_eq!(status(&mut alice, id), MessageStatus::Stored);
    }
    assert_eq!(alice.store().outbox().unwrap().len(), 50, "stored is not delivered: the outbox keeps them");
    // Retries slow down: nothing is due a minute later.
    assert!(transmits(&alice.e().on_tick(T0 + 60_000, &mut rand::rng()).unwrap()).is_empty());
    alice.restart(); // Alice goes offline too.

    // Bob comes back and fetches, in pages, twice (a page seen again after a
    // lost delete): every message once, in order.
    let page: Vec<_> = bob_box.items[..30].to_vec();
    let (deletable, actions) = bob.e().on_mailbox_items(HOST, &page, T0 + 2, &mut rand::rng()).unwrap();
    assert_eq!(deletable.len(), 30);
    let receipts = offline_deliver(&mut bob, &mut alice_box, actions, T0 + 2);
    assert!(transmits(&receipts).is_empty());
    let (again, actions) = bob.e().on_mailbox_items(HOST, &page, T0 + 3, &mut rand::rng()).unwrap();
    assert_eq!(again.len(), 30, "duplicates are deleted too");
    // A page seen again (its delete lost, or a crash between the commit and
    // the receipt) is reported delivered again: the sender applies it once.
    let receipts = offline_deliver(&mut bob, &mut alice_box, actions, T0 + 3);
    assert!(transmits(&receipts).is_empty());
    assert_eq!(alice_box.items.len(), 2, "a second receipt for the page seen again");
    bob_box.delete(&deletable);
    let rest: Vec<_> = bob_box.items.clone();
    let (deletable, actions) = bob.e().on_mailbox_items(HOST, &rest, T0 + 4, &mut rand::rng()).unwrap();
    bob_box.delete(&deletable);
    assert!(bob_box.items.is_empty());
    offline_deliver(&mut bob, &mut alice_box, actions, T0 + 4);
    let expected: Vec<_> = (0..50).map(|i| (Direction::Incoming, format!("m{i}"))).collect();
    assert_eq!(texts(&mut bob, &alice_id), expected);
    // Receipts are done once in Alice's mailbox: Bob's outbox is empty.
    assert!(bob.store().outbox().unwrap().is_empty());

    // Alice comes back: the receipts in her mailbox mark everything delivered.
    assert_eq!(alice_box.items.len(), 3);
    let items = alice_box.items.clone();
    let (deletable, _) = alice.e().on_mailbox_items(HOST, &items, T0 + 5, &mut rand::rng()).unwrap();
    assert_eq!(deletable.len(), 3);
    for id in &ids {
        assert_eq!(status(&mut alice, id), MessageStatus::Delivered);
    }
    assert!(alice.store().outbox().unwrap().is_empty());
}

#[test]
fn a_full_mailbox_keeps_the_rest_waiting_and_blocking_revokes_the_tag() {
    let (mut alice, mut bob, bob_id, alice_id) = alice_and_bob();
    let a = add_mailbox(&mut bob, HOST);
    pump(&mut bob, &mut alice, a, T0);
    let (ids, actions) = alice
        .e()
        .send_many(&bob_id, (0..5).map(|i| Content::text(format!("m{i}"))).collect(), T0, &mut rand::rng())
        .unwrap();
    let (peer, sent, _) = transmits(&actions).remove(0);
    let deposits = alice.e().on_transmit_failed(&peer, &sent, T0).unwrap();
    let Some(Action::Deposit { message_ids, .. }) = deposits.first() else { panic!("no deposit: {deposits:?}") };
    // The host took 2 of 5, then said its quota is full.
    let partial = kabar_node::mailbox::DepositOutcome { accepted: 2, status: kabar_node::mailbox::Status::QuotaFull };
    let events = alice.e().on_deposit_result(&peer, message_ids, Ok(partial), T0).unwrap();
    assert!(events.iter().any(|a| matches!(
        a,
        Action::Notify(kabar_node::engine::NodeEvent::DepositRefused { reason, waiting: 3, .. }) if reason == "quota_full"
    )));
    assert_eq!(status(&mut alice, &ids[1]), MessageStatus::Stored);
    assert_eq!(status(&mut alice, &ids[2]), MessageStatus::Sent);
    assert_eq!(alice.store().outbox().unwrap().len(), 5);
    // A new message goes out with those that wait, not with the two a
    // mailbox holds (their direct retries slow down).
    let (_, more) = alice.e().send(&bob_id, Content::text("m5"), T0, &mut rand::rng()).unwrap();
    let (_, resent, _) = transmits(&more).remove(0);
    assert_eq!(resent.len(), 4, "three waiting and the new one");
    assert!(!resent.contains(&ids[0]) && !resent.contains(&ids[1]));
    alice.e().on_transmit_failed(&peer, &resent, T0).unwrap();
    // No new deposit before the pause; after it, only the three that wait.
    assert!(alice.e().on_transmit_failed(&peer, &sent, T0 + 1).unwrap().is_empty());
    let later = alice.e().on_transmit_failed(&peer, &sent, T0 + 60_000).unwrap();
    let Some(Action::Deposit { message_ids, .. }) = later.first() else { panic!("no deposit: {later:?}") };
    assert_eq!(message_ids.len(), 4);
    assert!(ids[2..].iter().all(|id| message_ids.contains(id)));

    // Bob blocks Alice: her tag in his mailbox is revoked.
    let (_, actions) = bob.e().set_blocked(&alice_id, true).unwrap();
    let [Action::Revoke { tag, revoked: true, .. }] = actions.as_slice() else { panic!("{actions:?}") };
    assert_eq!(*tag, alice.store().contact_mailboxes(&bob_id).unwrap().theirs[0].tag);
}

#[test]
fn a_deposit_whose_result_never_comes_back_is_tried_again_after_the_in_flight_limit() {
    let (mut alice, mut bob, bob_id, _) = alice_and_bob();
    let a = add_mailbox(&mut bob, HOST);
    pump(&mut bob, &mut alice, a, T0);
    let (_, actions) = alice.e().send(&bob_id, Content::text("m0"), T0, &mut rand::rng()).unwrap();
    let (peer, sent, _) = transmits(&actions).remove(0);
    let deposits = alice.e().on_transmit_failed(&peer, &sent, T0).unwrap();
    assert!(matches!(deposits.first(), Some(Action::Deposit { .. })), "{deposits:?}");
    // The deposit's result is lost (never reported): none is started again
    // while it may still be under way…
    let limit = kabar_node::engine::IN_FLIGHT_MAX_MS;
    let soon = alice.e().on_transmit_failed(&peer, &sent, T0 + limit - 1).unwrap();
    assert!(!soon.iter().any(|a| matches!(a, Action::Deposit { .. })), "{soon:?}");
    // …and it is once the limit has passed: the contact is not stuck.
    let later = alice.e().on_transmit_failed(&peer, &sent, T0 + limit).unwrap();
    let Some(Action::Deposit { message_ids, .. }) = later.first() else { panic!("no deposit: {later:?}") };
    assert_eq!(message_ids, &sent);
}

#[test]
fn garbage_from_a_mailbox_is_deleted_and_changes_nothing() {
    let mut bob = Party::new("bob", ProfileKind::Personal);
    let mut alice = Party::new("alice", ProfileKind::Personal);
    let alice_id = bob.knows(&mut alice, "Alice");
    let key = kabar_node::mailbox::OwnerKey::generate(&mut rand::rng());
    let own = OwnMailbox { address: HOST.into(), key: key.to_bytes(), added_at_ms: T0 };
    bob.e().add_mailbox(own, T0, &mut rand::rng()).unwrap();
    let alice_key = alice.key();
    let alice_tag = kabar_node::offline::tag(&key.to_bytes(), &alice_key);
    let card_tag = kabar_node::offline::card_tag(&key.to_bytes());
    let item = |seq: u64, tag: [u8; 16], envelope: Vec<u8>| kabar_node::mailbox::Item {
        seq,
        tag,
        deposited_at_ms: T0,
        envelope,
    };
    let items = vec![
        item(1, alice_tag, vec![]),
        item(2, alice_tag, vec![0xff; 300]),
        item(3, card_tag, vec![1; 64]),
        item(4, [7; 16], vec![2; 64]),
    ];
    let (deletable, actions) = bob.e().on_mailbox_items(HOST, &items, T0, &mut rand::rng()).unwrap();
    let mut sorted = deletable.clone();
    sorted.sort();
    assert_eq!(sorted, [1, 2, 3, 4], "everything unusable is deleted");
    assert!(transmits(&actions).is_empty(), "no receipts for garbage");
    assert!(texts(&mut bob, &alice_id).is_empty());
    assert_eq!(bob.store().contacts().unwrap().len(), 1, "no contact made up from garbage");
    // A page for a mailbox the profile does not have is ignored.
    let (none, _) = bob.e().on_mailbox_items("/ip4/1.2.3.4/tcp/1/p2p/x", &items, T0, &mut rand::rng()).unwrap();
    assert!(none.is_empty());
}

/// Receipts are stored like messages but never shown: the inbox's last
/// message and a history page are the visible messages before them, however
/// many receipts came after.
#[test]
fn receipts_are_never_the_inbox_last_message_nor_take_a_page_s_place() {
    let (mut alice, mut bob, alice_bob, bob_alice) = alice_and_bob();
    for text in ["one", "two", "three"] {
        let (_, actions) = bob.e().send(&bob_alice, Content::text(text), T0, &mut rand::rng()).unwrap();
        pump(&mut bob, &mut alice, actions, T0);
    }
    // More receipts after them than a page's first read (twice its size).
    for _ in 0..40 {
        let receipt = Content::Receipt { read: vec![], delivered: vec![], retry: vec![] };
        alice.e().send(&alice_bob, receipt, T0 + 1, &mut rand::rng()).unwrap();
    }
    let shown = |page: Vec<(u64, MessageRecord)>| -> Vec<String> {
        page.into_iter()
            .map(|(_, m)| match Message::decode(&m.body).unwrap().content {
                Content::Text { text, .. } => text,
                other => format!("{other:?}"),
            })
            .collect()
    };
    let inbox = alice.e().inbox().unwrap();
    assert_eq!(shown(inbox[0].last.clone().into_iter().collect()), ["three"]);
    assert_eq!(shown(alice.e().history_page(&alice_bob, 2, None).unwrap()), ["two", "three"]);
    assert_eq!(shown(alice.e().history_page(&alice_bob, 10, None).unwrap()), ["one", "two", "three"]);
}

#[test]
fn a_receipt_applies_only_to_our_own_messages_to_that_contact() {
    let mut alice = Party::new("alice", ProfileKind::Personal);
    let mut bob = Party::new("bob", ProfileKind::Personal);
    let mut mallory = Party::new("mallory", ProfileKind::Personal);
    let bob_id = alice.knows(&mut bob, "Bob");
    bob.knows(&mut alice, "Alice");
    alice.knows(&mut mallory, "Mallory");
    let alice_at_mallory = mallory.knows(&mut alice, "Alice");
    let (to_bob, actions) = alice.e().send(&bob_id, Content::text("for Bob"), T0, &mut rand::rng()).unwrap();
    pump(&mut alice, &mut bob, actions, T0);
    assert_eq!(status(&mut alice, &to_bob), MessageStatus::Delivered);
    // Bob's answer: an incoming message of Alice's.
    let alice_at_bob = bob.contact_of(&mut alice);
    let (from_bob, actions) = bob.e().send(&alice_at_bob, Content::text("hi"), T0, &mut rand::rng()).unwrap();
    pump(&mut bob, &mut alice, actions, T0);

    // Mallory, a contact with a session, names Alice's message to Bob and
    // Bob's message to Alice as read and delivered.
    let hex = |id: &[u8; 16]| kabar_crypto::hex::encode(id);
    let forged =
        Content::Receipt { read: vec![hex(&to_bob), hex(&from_bob)], delivered: vec![hex(&to_bob)], retry: vec![] };
    let (_, actions) = mallory.e().send(&alice_at_mallory, forged, T0, &mut rand::rng()).unwrap();
    let events = transmits(&actions)
        .into_iter()
        .flat_map(|(_, _, envs)| alice.e().on_request(&mallory.key(), &envs, T0, &mut rand::rng()).unwrap().1)
        .collect::<Vec<_>>();
    assert!(!events.iter().any(|a| matches!(a, Action::Notify(kabar_node::engine::NodeEvent::StatusChanged { .. }))));
    assert_eq!(status(&mut alice, &to_bob), MessageStatus::Delivered, "not Mallory's to mark");
    assert_eq!(status(&mut alice, &from_bob), MessageStatus::Delivered, "an incoming message is not ours to mark");

    // Bob himself cannot mark Alice's incoming message read either, but can
    // mark hers to him.
    let receipt = Content::Receipt { read: vec![hex(&to_bob), hex(&from_bob)], delivered: vec![], retry: vec![] };
    let (_, actions) = bob.e().send(&alice_at_bob, receipt, T0, &mut rand::rng()).unwrap();
    pump(&mut bob, &mut alice, actions, T0);
    assert_eq!(status(&mut alice, &to_bob), MessageStatus::Read);
    assert_eq!(status(&mut alice, &from_bob), MessageStatus::Delivered);

    // A receipt over the bound is malformed content: dropped before any work.
    let many: Vec<String> = (0..=MAX_RECEIPT_IDS).map(|i| hex(&[i as u8; 16])).collect();
    assert!(Content::Receipt { read: many, delivered: vec![], retry: vec![] }.check().is_err());
}

#[test]
fn blocking_drops_what_is_queued_to_the_contact_and_refuses_what_it_sends() {
    let mut shop = Party::new("shop", ProfileKind::Business);
    let mut stranger = Party::new("stranger", ProfileKind::Personal);
    let to_shop = stranger.knows(&mut shop, "Bakery");
    let greeting = Automations { greeting: Some("Welcome!".into()), ..Automations::default() };
    shop.store().set_automations(&greeting).unwrap();
    // The stranger writes once; the greeting to it waits in the shop's outbox
    // (the stranger never answers).
    let (_, actions) = stranger.e().send(&to_shop, Content::text("hi"), T0, &mut rand::rng()).unwrap();
    let (_, _, envs) = transmits(&actions).remove(0);
    let envs_first = envs.clone();
    let stranger_key = stranger.key();
    let (acks, replies) = shop.e().on_request(&stranger_key, &envs, T0, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Accepted]);
    let (_, greeting_ids, _) = transmits(&replies).remove(0);
    shop.e().on_transmit_failed(&stranger_key, &greeting_ids, T0).unwrap();
    assert_eq!(shop.store().outbox().unwrap().len(), 1);

    let them = shop.contact_of(&mut stranger);
    let (_, actions) = shop.e().set_blocked(&them, true).unwrap();
    assert!(shop.store().outbox().unwrap().is_empty(), "nothing stays queued to a blocked contact");
    assert_eq!(status(&mut shop, &greeting_ids[0]), MessageStatus::Failed);
    assert!(actions.iter().any(|a| matches!(a, Action::Notify(kabar_node::engine::NodeEvent::StatusChanged { .. }))));
    assert!(
        transmits(&shop.e().on_tick(T0 + 3_600_000, &mut rand::rng()).unwrap()).is_empty(),
        "and nothing is retried"
    );

    // What it sends next, in the same session, is refused and not stored.
    let before = texts(&mut shop, &them).len();
    let (_, actions) = stranger.e().send(&to_shop, Content::text("again"), T0 + 1, &mut rand::rng()).unwrap();
    let (_, _, envs) = transmits(&actions).remove(0);
    let (acks, follow) = shop.e().on_request(&stranger_key, &envs, T0 + 1, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Rejected(RejectReason::Blocked)]);
    assert!(follow.is_empty());
    assert_eq!(texts(&mut shop, &them).len(), before);

    // A message stored before the block and sent again (its sender lost the
    // acknowledgement, which is not made durable on its own) is still a
    // duplicate, never "blocked": a delivered message must not fail.
    let (acks, _) = shop
        .e()
        .on_request(&stranger_key, &[envs_first[0].clone(), envs[0].clone()], T0 + 2, &mut rand::rng())
        .unwrap();
    assert_eq!(acks, [Ack::Duplicate, Ack::Rejected(RejectReason::Blocked)]);
    assert_eq!(texts(&mut shop, &them).len(), before);
}

/// A first message from a fresh identity (a stranger who never comes back):
/// its key and the envelope.
fn fresh_stranger(to: &mut Party, text: &str, now: u64) -> (PeerKey, Vec<u8>) {
    let rng = &mut rand::rng();
    let me = kabar_crypto::IdentityKeyPair::generate(ProfileKind::Personal, rng);
    let bundle = to.store().prekey_bundle(false).unwrap();
    let mut session = kabar_crypto::Session::initiate(&me, &bundle, rng).unwrap();
    let body =
        Message { v: kabar_node::content::CONTENT_VERSION, seq: 0, sent_at_ms: now, content: Content::text(text) };
    (me.public().signing, session.encrypt(&body.encode(), rng).unwrap().encode())
}

#[test]
fn strangers_who_never_come_back_cost_a_shop_a_bounded_queue_that_empties_and_stays_empty() {
    use kabar_node::engine::{MAX_STRANGER_QUEUE, STRANGER_REPLY_TTL_MS};
    let mut shop = Party::new("shop", ProfileKind::Business);
    let greeting = Automations { greeting: Some("Welcome!".into()), ..Automations::default() };
    shop.store().set_automations(&greeting).unwrap();
    let strangers = MAX_STRANGER_QUEUE + 44;
    let mut now = T0;
    for i in 0..strangers {
        // One a second: within the profile's budget of session starts.
        now = T0 + i as u64 * 1_000;
        let (key, envelope) = fresh_stranger(&mut shop, "hi", now);
        let (acks, replies) = shop.e().on_request(&key, &[envelope], now, &mut rand::rng()).unwrap();
        assert_eq!(acks, [Ack::Accepted], "stranger {i}");
        // The stranger is gone before the greeting can be delivered.
        for (peer, ids, _) in transmits(&replies) {
            shop.e().on_transmit_failed(&peer, &ids, now).unwrap();
        }
    }
    let queued = shop.store().outbox().unwrap().len();
    assert!(queued > 0 && queued <= MAX_STRANGER_QUEUE, "greetings to strangers are bounded: {queued}");
    // After their short time to live, the tick gives them up…
    let later = now + STRANGER_REPLY_TTL_MS + 1;
    shop.e().on_tick(later, &mut rand::rng()).unwrap();
    assert!(shop.store().outbox().unwrap().is_empty(), "nothing waits for strangers who left");
    // …and a restart finds nothing to do.
    shop.restart();
    assert!(shop.e().on_tick(later + 1, &mut rand::rng()).unwrap().is_empty());
    assert!(shop.store().outbox().unwrap().is_empty());
    // A customer who writes now still gets the greeting at once.
    let (key, envelope) = fresh_stranger(&mut shop, "hello", later + 2);
    let (_, replies) = shop.e().on_request(&key, &[envelope], later + 2, &mut rand::rng()).unwrap();
    assert_eq!(transmits(&replies).len(), 1, "the greeting goes out over the live connection");
}

#[test]
fn pending_strangers_are_capped_and_the_oldest_go_with_everything_they_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let mut dir = DataDir::create(tmp.path(), b"pw", KdfParams::TESTNET).unwrap();
    let store = dir.create_profile("me", ProfileKind::Personal, T0 / 1000, &mut rand::rng()).unwrap();
    let limits = StrangerLimits { max_count: 5, max_bytes: 1 << 20, max_bytes_each: 1 << 20 };
    let mut me = Party {
        _tmp: tmp,
        dir,
        name: "me".into(),
        engine: Some(Engine::new(store, EngineConfig { strangers: limits, ..config() }).unwrap()),
    };
    let mut first = Vec::new();
    let mut dropped_events = 0;
    for i in 0..8u64 {
        let now = T0 + i * 1_000;
        let (key, envelope) = fresh_stranger(&mut me, &format!("request {i}"), now);
        let (acks, events) = me.e().on_request(&key, &[envelope], now, &mut rand::rng()).unwrap();
        assert_eq!(acks, [Ack::Accepted]);
        dropped_events += events
            .iter()
            .filter(|a| matches!(a, Action::Notify(kabar_node::engine::NodeEvent::RequestsDropped { dropped: 1, .. })))
            .count();
        first.push(me.store().contact_id_for_key(&key));
    }
    let requests: Vec<_> = me.store().contacts().unwrap().into_iter().filter(|(_, c)| c.request).collect();
    assert_eq!(requests.len(), 5, "at most the limit");
    for gone in &first[..3] {
        assert!(me.store().contact(gone).unwrap().is_none(), "the oldest are dropped");
        assert!(me.store().history(gone, 10, None).unwrap().is_empty(), "with what they sent");
    }
    assert!(me.store().contact(&first[7]).unwrap().is_some(), "the newest stays");
    assert_eq!(dropped_events, 3);
    let status = me.e().guard_status();
    assert_eq!((status.pending_strangers, status.strangers_dropped, status.stranger_limit), (5, 3, 5));
    // Accepting one settles it: it is never dropped, however many follow.
    me.e().settle(&first[3]).unwrap();
    for i in 8..20u64 {
        let now = T0 + i * 1_000;
        let (key, envelope) = fresh_stranger(&mut me, "more", now);
        me.e().on_request(&key, &[envelope], now, &mut rand::rng()).unwrap();
    }
    assert!(me.store().contact(&first[3]).unwrap().is_some(), "a settled contact stays");
    me.restart();
    // Settling made room for one: 12 more strangers dropped 11.
    assert_eq!(me.e().guard_status().strangers_dropped, 3 + 11, "the count survives a restart");
}

#[test]
fn a_peer_that_sends_failing_envelopes_is_refused_before_any_cryptography_even_after_reconnecting() {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let mut c = Party::new("carol", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    b.knows(&mut a, "Alice");
    let c_bob = c.knows(&mut b, "Bob");
    b.knows(&mut c, "Carol");
    let (_, actions) = a.e().send(&a_bob, Content::text("hello"), T0, &mut rand::rng()).unwrap();
    pump(&mut a, &mut b, actions, T0);
    // 256 distinct envelopes in Alice's session, each with a broken tag.
    let texts_out: Vec<Content> = (0..256).map(|i| Content::text(format!("m{i}"))).collect();
    a.e().send_many(&a_bob, texts_out, T0, &mut rand::rng()).unwrap();
    let mut bad: Vec<Vec<u8>> = a.store().outbox().unwrap().into_iter().map(|e| e.envelope).collect();
    assert_eq!(bad.len(), 256);
    for e in &mut bad {
        *e.last_mut().unwrap() ^= 1;
    }
    let bad: Vec<Vec<u8>> = bad.into_iter().take(256).collect();
    let alice = a.key();
    let (acks, _) = b.e().on_request(&alice, &bad, T0, &mut rand::rng()).unwrap();
    assert!(acks.iter().all(|a| *a == Ack::Rejected(RejectReason::Undecryptable)), "{acks:?}");
    // The same request again (a replay, a reconnect changes nothing): no
    // envelope is looked at.
    let (acks, _) = b.e().on_request(&alice, &bad, T0 + 10, &mut rand::rng()).unwrap();
    assert!(acks.iter().all(|a| *a == Ack::Rejected(RejectReason::Busy)), "{acks:?}");
    assert!(RejectReason::Busy.is_transient(), "an honest sender retries later");
    assert_eq!(b.e().guard_status().refused_envelopes, 256);
    // Carol is not affected.
    let (id, actions) = c.e().send(&c_bob, Content::text("hi bob"), T0 + 10, &mut rand::rng()).unwrap();
    pump(&mut c, &mut b, actions, T0 + 10);
    assert_eq!(status(&mut c, &id), MessageStatus::Delivered);
}

#[test]
fn session_starts_from_fresh_identities_are_held_to_the_profile_budget() {
    use kabar_node::budget::PROFILE_SESSION_STARTS_PER_MINUTE;
    let mut shop = Party::new("shop", ProfileKind::Business);
    let mut cust = Party::new("customer", ProfileKind::Personal);
    let c_shop = cust.knows(&mut shop, "Bakery");
    let (_, actions) = cust.e().send(&c_shop, Content::text("regular"), T0, &mut rand::rng()).unwrap();
    pump(&mut cust, &mut shop, actions, T0);
    let s_cust = shop.contact_of(&mut cust);
    shop.e().settle(&s_cust).unwrap(); // the shop answered this customer once
    let now = T0 + 1;
    let mut accepted = 0;
    for _ in 0..200 {
        let (key, envelope) = fresh_stranger(&mut shop, "spam", now);
        let (acks, _) = shop.e().on_request(&key, &[envelope], now, &mut rand::rng()).unwrap();
        match acks[0] {
            Ack::Accepted => accepted += 1,
            Ack::Rejected(RejectReason::Busy) => {}
            other => panic!("{other:?}"),
        }
    }
    // One start already went to the regular customer at T0.
    assert_eq!(accepted, PROFILE_SESSION_STARTS_PER_MINUTE as usize - 1);
    // The settled customer still gets through at once.
    let (id, actions) = cust.e().send(&c_shop, Content::text("still there?"), now, &mut rand::rng()).unwrap();
    pump(&mut cust, &mut shop, actions, now);
    assert_eq!(status(&mut cust, &id), MessageStatus::Delivered);
}

#[test]
fn forged_card_tag_items_cannot_spend_a_contacts_budget_and_busy_items_stay_in_the_mailbox() {
    let (mut alice, mut bob, bob_id, alice_id) = alice_and_bob();
    let (_, actions) = alice.e().send(&bob_id, Content::text("hi"), T0, &mut rand::rng()).unwrap();
    pump(&mut alice, &mut bob, actions, T0);
    let key = kabar_node::mailbox::OwnerKey::generate(&mut rand::rng());
    let own = OwnMailbox { address: HOST.into(), key: key.to_bytes(), added_at_ms: T0 };
    bob.e().add_mailbox(own, T0, &mut rand::rng()).unwrap();
    let card_tag = kabar_node::offline::card_tag(&key.to_bytes());
    let alice_key = alice.key();
    let alice_tag = kabar_node::offline::tag(&key.to_bytes(), &alice_key);
    // Anyone with Bob's card: 300 first messages claiming to be Alice.
    let alice_identity = alice.store().identity().unwrap().public();
    let mut items = Vec::new();
    for seq in 0..300u64 {
        let (_, bytes) = fresh_stranger(&mut bob, "forged", T0);
        let mut envelope = kabar_crypto::Envelope::decode(&bytes).unwrap();
        envelope.prekey.as_mut().unwrap().identity = alice_identity;
        items.push(kabar_node::mailbox::Item { seq, tag: card_tag, deposited_at_ms: T0, envelope: envelope.encode() });
    }
    // Alice's real message, deposited under her own tag, after them.
    let (_, actions) = alice.e().send(&bob_id, Content::text("the real one"), T0, &mut rand::rng()).unwrap();
    let (_, _, envs) = transmits(&actions).remove(0);
    items.push(kabar_node::mailbox::Item { seq: 300, tag: alice_tag, deposited_at_ms: T0, envelope: envs[0].clone() });
    let (deletable, _) = bob.e().on_mailbox_items(HOST, &items, T0, &mut rand::rng()).unwrap();
    assert!(deletable.contains(&300), "the real message was taken");
    assert!(texts(&mut bob, &alice_id).iter().any(|(_, t)| t == "the real one"));
    let kept = items.iter().filter(|i| !deletable.contains(&i.seq)).count();
    assert!(kept > 0, "forgeries over the budget stay for later, not taken as refused for good");
    // Alice's own budget is untouched: her next direct message goes through.
    let (id, actions) = alice.e().send(&bob_id, Content::text("direct"), T0 + 1, &mut rand::rng()).unwrap();
    pump(&mut alice, &mut bob, actions, T0 + 1);
    assert_eq!(status(&mut alice, &id), MessageStatus::Delivered);
}

#[test]
fn reading_a_message_request_does_not_settle_it() {
    let mut me = Party::new("me", ProfileKind::Personal);
    let (key, envelope) = fresh_stranger(&mut me, "hello?", T0);
    me.e().on_request(&key, &[envelope], T0, &mut rand::rng()).unwrap();
    let them = me.store().contact_id_for_key(&key);
    assert_eq!(me.e().guard_status().pending_strangers, 1);
    me.e().mark_read(&them, T0 + 1, &mut rand::rng()).unwrap();
    assert_eq!(me.e().guard_status().pending_strangers, 1, "reading is not answering");
    let (_, _) = me.e().send(&them, Content::text("hi, who are you?"), T0 + 2, &mut rand::rng()).unwrap();
    assert_eq!(me.e().guard_status().pending_strangers, 0, "writing is");
}

// ---- protocol version 2: lost keys, prekeys -----------------------------------

/// Hands `ids` (queued at `from`) to `to` directly and feeds the acks back;
/// follow-up actions are dropped (what they would send stays queued).
fn deliver_ids(from: &mut Party, to: &mut Party, ids: &[[u8; 16]], now: u64) -> (Vec<Ack>, Vec<Action>) {
    let (fk, tk) = (from.key(), to.key());
    let outbox = from.store().outbox().unwrap();
    let envs: Vec<Vec<u8>> =
        ids.iter().map(|id| outbox.iter().find(|e| &e.message_id == id).unwrap().envelope.clone()).collect();
    let (acks, _) = to.e().on_request(&fk, &envs, now, &mut rand::rng()).unwrap();
    let more = from.e().on_acks(&tk, ids, &acks, now, &mut rand::rng()).unwrap();
    (acks, more)
}

fn texts_of(n: usize, tag: &str) -> Vec<Content> {
    (0..n).map(|i| Content::text(format!("{tag}{i}"))).collect()
}

/// Alice sends "the lost one" and holds it back; Bob gets the message after
/// it (one skipped key), then two more chains each skipping exactly the
/// per-chain bound (1,000): 2,001 skipped keys, so the oldest, the lost
/// one's, is evicted. Returns the lost message's id, still queued at Alice.
fn evict_a_message(a: &mut Party, b: &mut Party, a_bob: &ContactId, b_alice: &ContactId) -> [u8; 16] {
    let (lost, _) = a.e().send(a_bob, Content::text("the lost one"), T0 + 1, &mut rand::rng()).unwrap();
    let (next, _) = a.e().send(a_bob, Content::text("after it"), T0 + 1, &mut rand::rng()).unwrap();
    assert_eq!(deliver_ids(a, b, &[next], T0 + 1).0, [Ack::Accepted]);
    for round in 0..2u64 {
        let now = T0 + 10 + round;
        let (reply, _) = b.e().send(b_alice, Content::text(format!("reply {round}")), now, &mut rand::rng()).unwrap();
        assert_eq!(deliver_ids(b, a, &[reply], now).0, [Ack::Accepted]);
        let (ids, _) = a.e().send_many(a_bob, texts_of(1_001, "burst"), now, &mut rand::rng()).unwrap();
        assert_eq!(deliver_ids(a, b, &[*ids.last().unwrap()], now).0, [Ack::Accepted]);
    }
    lost
}

/// A message held back while its skipped key is evicted (more than
/// MAX_SKIPPED_TOTAL keys skipped after it) used to be taken for a duplicate:
/// acknowledged, `delivered` at the sender, never seen by the recipient.
/// Now the recipient answers `key_gone`, the sender encrypts the stored
/// plaintext again under the current session, and it arrives, once.
#[test]
fn a_message_whose_skipped_key_was_evicted_is_encrypted_again_and_delivered() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();
    let (_, act) = a.e().send(&a_bob, Content::text("hello"), T0, &mut rand::rng()).unwrap();
    pump(&mut a, &mut b, act, T0);
    let (_, act) = b.e().send(&b_alice, Content::text("hi"), T0, &mut rand::rng()).unwrap();
    pump(&mut b, &mut a, act, T0);

    let lost = evict_a_message(&mut a, &mut b, &a_bob, &b_alice);
    // The lost one arrives: its key is gone and its id was never received.
    let (acks, actions) = deliver_ids(&mut a, &mut b, &[lost], T0 + 20);
    assert_eq!(acks, [Ack::Rejected(RejectReason::KeyGone)]);
    assert_ne!(status(&mut a, &lost), MessageStatus::Delivered, "not delivered: Bob never read it");
    let again = a.store().outbox().unwrap().into_iter().find(|e| e.shown_as == Some(lost)).unwrap();
    assert_ne!(again.message_id, lost, "a new envelope, with a new wire id");
    assert_eq!(again.resends, 1);
    // Everything still queued goes through; the lost one arrives once.
    pump(&mut a, &mut b, actions, T0 + 21);
    assert_eq!(status(&mut a, &lost), MessageStatus::Delivered);
    let seen = texts(&mut b, &b_alice);
    assert_eq!(seen.iter().filter(|(_, t)| t == "the lost one").count(), 1);
    // A true duplicate (an id Bob received) is still a duplicate.
    let dup = b.e().on_request(&a.key(), &[again.envelope], T0 + 22, &mut rand::rng()).unwrap().0;
    assert_eq!(dup, [Ack::Duplicate]);
}

/// A recipient that keeps answering `key_gone` gets the message encrypted
/// again at most MAX_RESENDS times; then it fails, and the user is told.
#[test]
fn a_message_that_cannot_be_decrypted_after_the_resends_fails_and_says_why() {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    b.knows(&mut a, "Alice");
    let bk = b.key();
    let (id, _) = a.e().send(&a_bob, Content::text("x"), T0, &mut rand::rng()).unwrap();
    let mut wire = id;
    let mut events = Vec::new();
    for _ in 0..=kabar_node::engine::MAX_RESENDS {
        events = a.e().on_acks(&bk, &[wire], &[Ack::Rejected(RejectReason::KeyGone)], T0, &mut rand::rng()).unwrap();
        match a.store().outbox().unwrap().into_iter().find(|e| e.shown_id() == id) {
            Some(entry) => wire = entry.message_id,
            None => break,
        }
    }
    assert_eq!(status(&mut a, &id), MessageStatus::Failed);
    assert!(a.store().outbox().unwrap().is_empty());
    assert!(events.iter().any(|e| matches!(e,
        Action::Notify(kabar_node::engine::NodeEvent::ResendFailed { message_id, .. }) if *message_id == kabar_crypto::hex::encode(&id))));
    assert!(events.iter().any(|e| matches!(e,
        Action::Notify(kabar_node::engine::NodeEvent::StatusChanged { message_id, status: MessageStatus::Failed, .. })
            if *message_id == kabar_crypto::hex::encode(&id))));
}

/// The envelope's X3DH header, if it is a prekey message.
fn prekey_header(env: &[u8]) -> Option<kabar_crypto::PrekeyHeader> {
    kabar_crypto::Envelope::decode(env).unwrap().prekey
}

/// A prekey request that never reached the contact (it could not be
/// dialled) is made again the next time the contact is reachable; one that
/// reached it and got no answer waits the full fetch period.
#[test]
fn a_prekey_fetch_that_could_not_dial_is_asked_again_when_the_contact_is_reachable() {
    let fetches = |act: &[Action], key: &PeerKey| {
        act.iter().filter(|x| matches!(x, Action::FetchPrekeys { peer, .. } if peer == key)).count()
    };
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    a.knows(&mut b, "Bob");
    let bk = b.key();
    assert_eq!(fetches(&a.e().on_peer_reachable(&bk, T0).unwrap(), &bk), 1);
    a.e().on_prekeys_failed(&bk, true, T0 + 1, &mut rand::rng()).unwrap();
    assert_eq!(fetches(&a.e().on_peer_reachable(&bk, T0 + 2).unwrap(), &bk), 1, "asked again after a dial failure");
    // Reached, no answer: not again within the period, again after it.
    a.e().on_prekeys_failed(&bk, false, T0 + 3, &mut rand::rng()).unwrap();
    assert_eq!(fetches(&a.e().on_peer_reachable(&bk, T0 + 4).unwrap(), &bk), 0);
    let later = T0 + 2 + kabar_node::prekeys::FETCH_EVERY_MS;
    assert_eq!(fetches(&a.e().on_peer_reachable(&bk, later).unwrap(), &bk), 1);
}

/// Bob hands Alice a one-time prekey online; her session start uses it
/// (DH4), Bob deletes it when the message commits, and it is never handed
/// out again.
#[test]
fn a_one_time_prekey_fetched_online_is_used_once_in_the_session_start() {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    let (ak, bk) = (a.key(), b.key());
    let fetch = a.e().on_peer_reachable(&bk, T0).unwrap();
    assert!(fetch.iter().any(|x| matches!(x, Action::FetchPrekeys { peer, .. } if *peer == bk)));
    // Asked once: not again within the fetch period.
    assert!(!a.e().on_peer_reachable(&bk, T0 + 1).unwrap().iter().any(|x| matches!(x, Action::FetchPrekeys { .. })));
    let held = b.store().one_time_prekey_count().unwrap();
    let offerable = b.store().offerable_one_time_prekeys().unwrap();
    let response = b.e().serve_prekeys(&ak, T0).unwrap();
    assert_eq!(b.store().offerable_one_time_prekeys().unwrap(), offerable - 1);
    a.e().on_prekeys(&bk, &response, T0, &mut rand::rng()).unwrap();
    let opk = a.store().contact(&a_bob).unwrap().unwrap().one_time_prekey.unwrap();

    let (_, act) = a.e().send(&a_bob, Content::text("hello with DH4"), T0, &mut rand::rng()).unwrap();
    let (_, _, envs) = transmits(&act).remove(0);
    assert_eq!(prekey_header(&envs[0]).unwrap().one_time_prekey_id, Some(opk.id));
    assert_eq!(a.store().contact(&a_bob).unwrap().unwrap().one_time_prekey, None, "forgotten before use");
    pump(&mut a, &mut b, act, T0);
    assert_eq!(b.store().one_time_prekey_count().unwrap(), held - 1, "used and deleted");
    assert!(b.store().one_time_prekey(opk.id).unwrap().is_none());
    let b_alice = b.store().contact_id_for_key(&ak);
    assert_eq!(texts(&mut b, &b_alice), [(Direction::Incoming, "hello with DH4".to_string())]);
}

/// A crowd asking for prekeys: each requester gets a burst of 3, the profile
/// 40 at once; then answers carry the signed prekey alone, and a session
/// started from such an answer (no DH4) still works. An empty supply does
/// the same, until the schedule refills it.
#[test]
fn when_one_time_prekeys_run_out_session_starts_fall_back_to_the_signed_prekey() {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    let (ak, bk) = (a.key(), b.key());
    let with = |bytes: &[u8]| kabar_node::prekeys::PrekeyResponse::decode(bytes).unwrap().one_time_prekey.is_some();
    let granted = (0..100u8).filter(|i| with(&b.e().serve_prekeys(&[*i; 32], T0).unwrap())).count();
    assert_eq!(granted, 40, "the profile's burst");
    let last = b.e().serve_prekeys(&ak, T0).unwrap();
    assert!(!with(&last));
    a.e().on_prekeys(&bk, &last, T0, &mut rand::rng()).unwrap();
    let (_, act) = a.e().send(&a_bob, Content::text("no DH4"), T0, &mut rand::rng()).unwrap();
    let (_, _, envs) = transmits(&act).remove(0);
    assert_eq!(prekey_header(&envs[0]).unwrap().one_time_prekey_id, None);
    pump(&mut a, &mut b, act, T0);
    let b_alice = b.store().contact_id_for_key(&ak);
    assert_eq!(texts(&mut b, &b_alice), [(Direction::Incoming, "no DH4".to_string())]);

    // An empty supply: nothing to hand out, even with budget; the schedule
    // refills it.
    while b.store().hand_out_one_time_prekey(10_000).unwrap().is_some() {}
    assert!(!with(&b.e().serve_prekeys(&[200; 32], T0 + 3_600_000).unwrap()));
    b.e().maintain_prekeys(T0 + 3_600_000, &mut rand::rng()).unwrap();
    assert!(b.store().offerable_one_time_prekeys().unwrap() >= 50);
    assert!(with(&b.e().serve_prekeys(&[201; 32], T0 + 3_600_000).unwrap()));
}

/// Alice starts a session from Bob's signed prekey; Bob rotates before the
/// message arrives: it still opens (the old key is kept through the grace).
/// After the grace a session start with the old key is refused as
/// `unknown_prekey`, and Alice, fetching Bob's prekeys again, gets the new one.
#[test]
fn a_session_start_that_races_a_rotation_still_opens_within_the_grace() {
    use kabar_node::prekeys::{SIGNED_PREKEY_GRACE_S, SIGNED_PREKEY_PERIOD_S};
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    let (ak, bk) = (a.key(), b.key());
    let old = b.store().current_signed_prekey().unwrap().id();
    let (_, act) = a.e().send(&a_bob, Content::text("in flight"), T0, &mut rand::rng()).unwrap();
    // Bob's rotation happens while the message is in flight.
    let rotated_at = T0 + SIGNED_PREKEY_PERIOD_S * 1000;
    b.e().maintain_prekeys(rotated_at, &mut rand::rng()).unwrap();
    assert_ne!(b.store().current_signed_prekey().unwrap().id(), old);
    pump(&mut a, &mut b, act, rotated_at);
    let b_alice = b.store().contact_id_for_key(&ak);
    assert_eq!(texts(&mut b, &b_alice), [(Direction::Incoming, "in flight".to_string())]);

    // A third party with Bob's old card, after the grace.
    let mut c = Party::new("carol", ProfileKind::Personal);
    let c_bob = {
        let identity = b.store().identity().unwrap().public();
        let contact = Contact::new(identity, Some(b.store().signed_prekey(old).unwrap().unwrap().public()), "Bob", T0);
        c.store().upsert_contact(contact).unwrap().0
    };
    let after_grace = rotated_at + SIGNED_PREKEY_GRACE_S * 1000;
    b.e().maintain_prekeys(after_grace, &mut rand::rng()).unwrap();
    assert!(b.store().signed_prekey(old).unwrap().is_none(), "gone after the grace");
    let ck = c.key();
    let (_, act) = c.e().send(&c_bob, Content::text("stale card"), after_grace, &mut rand::rng()).unwrap();
    let (_, ids, envs) = transmits(&act).remove(0);
    let (acks, _) = b.e().on_request(&ck, &envs, after_grace, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Rejected(RejectReason::UnknownPrekey)]);
    // Carol drops the refused session start and asks Bob for his prekeys.
    let follow = c.e().on_acks(&bk, &ids, &acks, after_grace, &mut rand::rng()).unwrap();
    assert!(follow.iter().any(|x| matches!(x, Action::FetchPrekeys { peer, .. } if *peer == bk)));
    assert!(c.store().session(&c_bob).unwrap().is_none());
    // Online, Carol learns Bob's current signed prekey, and her queued
    // message goes again under a new session, which Bob opens.
    let response = b.e().serve_prekeys(&ck, after_grace).unwrap();
    let resent = c.e().on_prekeys(&bk, &response, after_grace, &mut rand::rng()).unwrap();
    let current = b.store().current_signed_prekey().unwrap().id();
    assert_eq!(c.store().contact(&c_bob).unwrap().unwrap().signed_prekey.unwrap().id, current);
    assert!(!transmits(&resent).is_empty());
    pump(&mut c, &mut b, resent, after_grace);
    let b_carol = b.store().contact_id_for_key(&ck);
    assert_eq!(texts(&mut b, &b_carol), [(Direction::Incoming, "stale card".to_string())]);
    assert_eq!(status(&mut c, &ids[0]), MessageStatus::Delivered);
}

/// The same loss through a mailbox: Bob fetches a message whose key is
/// gone; it is deleted from the mailbox, Bob's receipt names it under
/// `retry`, and Alice, reading the receipt, encrypts it again.
#[test]
fn a_mailbox_item_whose_key_is_gone_comes_back_through_a_retry_receipt() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();
    let act = add_mailbox(&mut b, HOST);
    pump(&mut b, &mut a, act, T0);
    let (_, act) = a.e().send(&a_bob, Content::text("hello"), T0, &mut rand::rng()).unwrap();
    pump(&mut a, &mut b, act, T0);

    let lost = evict_a_message(&mut a, &mut b, &a_bob, &b_alice);
    // The lost one waits in Bob's mailbox under Alice's tag.
    let own = b.store().mailboxes().unwrap().remove(0);
    let tag = kabar_node::offline::tag(&own.key, &a.key());
    let envelope = a.store().outbox().unwrap().into_iter().find(|e| e.message_id == lost).unwrap().envelope;
    let mut mailbox = FakeMailbox::default();
    mailbox.deposit(tag, &[envelope]);
    let items = mailbox.items.clone();
    let (deletable, actions) = b.e().on_mailbox_items(HOST, &items, T0 + 20, &mut rand::rng()).unwrap();
    assert_eq!(deletable, [items[0].seq], "the sender has it; the mailbox need not keep it");
    // Bob's receipt travels to Alice; she encrypts the lost one again.
    let (_, ids, envs) = transmits(&actions).remove(0);
    let (acks, follow) = a.e().on_request(&b.key(), &envs, T0 + 21, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Accepted]);
    b.e().on_acks(&a.key(), &ids, &acks, T0 + 21, &mut rand::rng()).unwrap();
    let again = a.store().outbox().unwrap().into_iter().find(|e| e.shown_as == Some(lost)).unwrap();
    assert_eq!(again.resends, 1);
    pump(&mut a, &mut b, follow, T0 + 22);
    assert_eq!(status(&mut a, &lost), MessageStatus::Delivered);
    assert_eq!(texts(&mut b, &b_alice).iter().filter(|(_, t)| t == "the lost one").count(), 1);
}

/// A party whose engine waits for prekeys before a first message, as a
/// node does.
fn waiting(name: &str) -> Party {
    let mut p = Party::new(name, ProfileKind::Personal);
    p.engine.take();
    let store = p.dir.open_profile(name).unwrap();
    let config = EngineConfig { prekey_wait_ms: kabar_node::prekeys::PREKEY_WAIT_MS, ..EngineConfig::default() };
    p.engine = Some(Engine::new(store, config).unwrap());
    p
}

/// A first message to a contact with no session waits, stored but not
/// encrypted, until the contact's prekeys arrive, then starts the session
/// with the one-time prekey; the user's id does not change. If the request
/// fails, or nothing comes within the wait, it goes without DH4.
#[test]
fn a_first_message_waits_for_the_contacts_prekeys_then_uses_its_one_time_prekey() {
    let mut a = waiting("alice");
    let mut b = Party::new("bob", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    let (ak, bk) = (a.key(), b.key());
    let (id, act) = a.e().send(&a_bob, Content::text("first"), T0, &mut rand::rng()).unwrap();
    assert!(transmits(&act).is_empty(), "nothing leaves before the prekeys");
    assert!(act.iter().any(|x| matches!(x, Action::FetchPrekeys { peer, .. } if *peer == bk)));
    assert_eq!(status(&mut a, &id), MessageStatus::Queued);
    assert!(a.store().session(&a_bob).unwrap().is_none(), "no session yet");
    let (id2, act) = a.e().send(&a_bob, Content::text("second"), T0 + 1, &mut rand::rng()).unwrap();
    assert!(transmits(&act).is_empty() && !act.iter().any(|x| matches!(x, Action::FetchPrekeys { .. })));
    // A restart while waiting loses nothing (the store holds both).
    let response = b.e().serve_prekeys(&ak, T0 + 5).unwrap();
    let opk = kabar_node::prekeys::PrekeyResponse::decode(&response).unwrap().one_time_prekey.unwrap();
    let act = a.e().on_prekeys(&bk, &response, T0 + 5, &mut rand::rng()).unwrap();
    let (_, wire, envs) = transmits(&act).remove(0);
    assert_eq!(envs.len(), 2);
    assert_eq!(prekey_header(&envs[0]).unwrap().one_time_prekey_id, Some(opk.id));
    assert!(!wire.contains(&id), "the envelope has its own id");
    // Events speak of the id the user was given.
    assert!(act.iter().any(|x| matches!(x,
        Action::Notify(kabar_node::engine::NodeEvent::StatusChanged { message_id, status: MessageStatus::Sent, .. })
            if *message_id == kabar_crypto::hex::encode(&id))));
    pump(&mut a, &mut b, act, T0 + 5);
    assert_eq!(status(&mut a, &id), MessageStatus::Delivered);
    assert_eq!(status(&mut a, &id2), MessageStatus::Delivered);
    let b_alice = b.store().contact_id_for_key(&ak);
    let seen: Vec<String> = texts(&mut b, &b_alice).into_iter().map(|(_, t)| t).collect();
    assert_eq!(seen, ["first", "second"]);

    // A contact that cannot be asked: the failure releases the message at once…
    let mut c = Party::new("carol", ProfileKind::Personal);
    let a_carol = a.knows(&mut c, "Carol");
    let ck = c.key();
    let (_, act) = a.e().send(&a_carol, Content::text("to carol"), T0 + 10, &mut rand::rng()).unwrap();
    assert!(transmits(&act).is_empty());
    let act = a.e().on_prekeys_failed(&ck, true, T0 + 11, &mut rand::rng()).unwrap();
    let (_, _, envs) = transmits(&act).remove(0);
    assert_eq!(prekey_header(&envs[0]).unwrap().one_time_prekey_id, None);

    // …and one that never answers is released by the tick after the wait.
    let mut d = Party::new("dave", ProfileKind::Personal);
    let a_dave = a.knows(&mut d, "Dave");
    let (dave_id, act) = a.e().send(&a_dave, Content::text("to dave"), T0 + 20, &mut rand::rng()).unwrap();
    assert!(transmits(&act).is_empty());
    a.restart_waiting();
    let dk = d.key();
    let to_dave = |act: &[Action]| transmits(act).into_iter().filter(|(p, _, _)| *p == dk).count();
    // After a restart the waiting message is encrypted at once (no
    // transmission from the start-up call itself: the first tick sends it).
    let act = a.e().upgrade_outbox(T0 + 22, &mut rand::rng()).unwrap();
    assert_eq!(to_dave(&act), 0);
    assert!(a.store().outbox().unwrap().iter().any(|e| e.shown_id() == dave_id && !e.envelope.is_empty()));
    assert_eq!(to_dave(&a.e().on_tick(T0 + 22, &mut rand::rng()).unwrap()), 1);
    assert_eq!(status(&mut a, &dave_id), MessageStatus::Sent);
    let mut e = Party::new("erin", ProfileKind::Personal);
    let a_erin = a.knows(&mut e, "Erin");
    let ek = e.key();
    let to_erin = |act: &[Action]| transmits(act).into_iter().filter(|(p, _, _)| *p == ek).count();
    let (_, act) = a.e().send(&a_erin, Content::text("to erin"), T0 + 30, &mut rand::rng()).unwrap();
    assert_eq!(to_erin(&act), 0);
    assert_eq!(to_erin(&a.e().on_tick(T0 + 30 + 2_999, &mut rand::rng()).unwrap()), 0);
    assert_eq!(to_erin(&a.e().on_tick(T0 + 30 + 3_000, &mut rand::rng()).unwrap()), 1);
}

/// The one-time prekey Alice holds was deleted at Bob's (more than 2,000
/// handed out and unused since): her session start is refused as
/// `unknown_prekey` though Bob's signed prekey did not change. She drops
/// the refused session and the prekey, fetches fresh ones, and what she
/// queued goes under a new session; nothing is lost and no loop starts.
#[test]
fn a_session_start_with_a_one_time_prekey_the_contact_no_longer_holds_recovers() {
    let mut a = Party::new("alice", ProfileKind::Personal);
    let mut b = Party::new("bob", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    let (ak, bk) = (a.key(), b.key());
    let response = b.e().serve_prekeys(&ak, T0).unwrap();
    a.e().on_prekeys(&bk, &response, T0, &mut rand::rng()).unwrap();
    let held = a.store().contact(&a_bob).unwrap().unwrap().one_time_prekey.unwrap();
    // Bob's handed-out window rolls over: Alice's one-time prekey is gone.
    b.store().hand_out_one_time_prekey(0).unwrap();
    assert!(b.store().one_time_prekey(held.id).unwrap().is_none());

    let (id, act) = a.e().send(&a_bob, Content::text("hello"), T0, &mut rand::rng()).unwrap();
    let (_, ids, envs) = transmits(&act).remove(0);
    let (acks, _) = b.e().on_request(&ak, &envs, T0, &mut rand::rng()).unwrap();
    assert_eq!(acks, [Ack::Rejected(RejectReason::UnknownPrekey)]);
    let follow = a.e().on_acks(&bk, &ids, &acks, T0, &mut rand::rng()).unwrap();
    assert!(transmits(&follow).is_empty(), "the refused envelope is not sent again as it is");
    assert!(follow.iter().any(|x| matches!(x, Action::FetchPrekeys { peer, .. } if *peer == bk)));
    assert!(a.store().session(&a_bob).unwrap().is_none());
    let response = b.e().serve_prekeys(&ak, T0 + 1).unwrap();
    let act = a.e().on_prekeys(&bk, &response, T0 + 1, &mut rand::rng()).unwrap();
    assert_eq!(transmits(&act).len(), 1);
    pump(&mut a, &mut b, act, T0 + 1);
    assert_eq!(status(&mut a, &id), MessageStatus::Delivered);
    let b_alice = b.store().contact_id_for_key(&ak);
    assert_eq!(texts(&mut b, &b_alice), [(Direction::Incoming, "hello".to_string())]);
}

/// Alice's data directory is restored from a backup taken before she sent
/// five messages that Bob read. Her next message reuses a chain position
/// Bob has used: with its own salt it is a different key and nonce, and a
/// different id, so Bob does not take it for a duplicate; he answers
/// `key_gone`, Alice encrypts it again, and the second time under a new
/// session. Bob sees it once.
#[test]
fn a_sender_restored_from_a_backup_gets_its_next_message_through() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();
    let (_, act) = a.e().send(&a_bob, Content::text("hello"), T0, &mut rand::rng()).unwrap();
    pump(&mut a, &mut b, act, T0);
    let (_, act) = b.e().send(&b_alice, Content::text("hi"), T0, &mut rand::rng()).unwrap();
    pump(&mut b, &mut a, act, T0);

    // The backup.
    a.engine.take();
    let file = a.dir.root().join("profiles/alice.redb");
    let backup = std::fs::read(&file).unwrap();
    a.restart();
    for i in 0..5 {
        let (_, act) = a.e().send(&a_bob, Content::text(format!("m{i}")), T0 + 1, &mut rand::rng()).unwrap();
        pump(&mut a, &mut b, act, T0 + 1);
    }
    // Restored.
    a.engine.take();
    std::fs::write(&file, &backup).unwrap();
    a.restart();
    let (id, act) = a.e().send(&a_bob, Content::text("after the restore"), T0 + 2, &mut rand::rng()).unwrap();
    pump(&mut a, &mut b, act, T0 + 2);
    assert_eq!(status(&mut a, &id), MessageStatus::Delivered);
    let seen: Vec<String> = texts(&mut b, &b_alice).into_iter().map(|(_, t)| t).collect();
    assert_eq!(seen.iter().filter(|t| *t == "after the restore").count(), 1, "{seen:?}");
    assert_eq!(seen.len(), 8, "hello, m0..m4, after the restore, and nothing twice: {seen:?}");
}

/// Content that decrypts but does not decode (text over the limit, bytes
/// that are not UTF-8, a type this version does not know) is refused as
/// `bad_content`, never acknowledged and dropped: nothing of it is stored,
/// and the sender's message fails.
#[test]
fn content_that_does_not_decode_is_refused_not_acknowledged() {
    let mut b = Party::new("bob", ProfileKind::Personal);
    let rng = &mut rand::rng();
    let bundle = b.store().prekey_bundle(false).unwrap();
    let bodies: Vec<Vec<u8>> = vec![
        Message { v: 1, seq: 0, sent_at_ms: T0, content: Content::text("x".repeat(40 * 1024)) }.encode(),
        b"{\"v\":1,\"seq\":0,\"sent_at_ms\":1,\"content\":{\"type\":\"text\",\"text\":\"\xff\xfe\"}}".to_vec(),
        br#"{"v":1,"seq":0,"sent_at_ms":1,"content":{"type":"hologram"}}"#.to_vec(),
    ];
    for body in bodies {
        let me = kabar_crypto::IdentityKeyPair::generate(ProfileKind::Personal, rng);
        let mut session = kabar_crypto::Session::initiate(&me, &bundle, rng).unwrap();
        let env = session.encrypt(&body, rng).unwrap().encode();
        let (acks, _) = b.e().on_request(&me.public().signing, &[env], T0, rng).unwrap();
        assert_eq!(acks, [Ack::Rejected(RejectReason::BadContent)]);
    }
    assert!(b.store().contacts().unwrap().is_empty(), "no stranger stored without a message");

    // The sender's side: the refusal is final, and the message fails.
    let mut a = Party::new("alice", ProfileKind::Personal);
    let a_bob = a.knows(&mut b, "Bob");
    let (id, act) = a.e().send(&a_bob, Content::text("hi"), T0, &mut rand::rng()).unwrap();
    let (_, ids, _) = transmits(&act).remove(0);
    let bk = b.key();
    a.e().on_acks(&bk, &ids, &[Ack::Rejected(RejectReason::BadContent)], T0, &mut rand::rng()).unwrap();
    assert_eq!(status(&mut a, &id), MessageStatus::Failed);
    assert!(a.store().outbox().unwrap().is_empty());
}

/// Each transmission in `actions` delivered to `to` and answered at `now`;
/// returns the sender's follow-up actions.
fn answer_all(from: &mut Party, to: &mut Party, actions: &[Action], now: u64) -> Vec<Action> {
    let (from_key, to_key) = (from.key(), to.key());
    let mut follow = Vec::new();
    for (_, ids, envs) in transmits(actions) {
        let (acks, _) = to.e().on_request(&from_key, &envs, now, &mut rand::rng()).unwrap();
        follow.extend(from.e().on_acks(&to_key, &ids, &acks, now, &mut rand::rng()).unwrap());
    }
    follow
}

#[test]
fn requests_to_a_peer_are_paced_to_what_it_answers_and_what_waits_leaves_together() {
    let (mut a, mut b, a_bob, _) = alice_and_bob();
    let burst = kabar_node::pace::REQUEST_BURST as usize;
    // One message at a time, each answered at once (the window never
    // fills): one request each, up to the burst, all in the same
    // millisecond.
    let mut requests = 0;
    let mut paced_at = None;
    for i in 0..burst + 20 {
        let (_, actions) = a.e().send(&a_bob, Content::text(format!("m{i}")), T0, &mut rand::rng()).unwrap();
        requests += transmits(&actions).len();
        for action in &actions {
            if let Action::FlushAt { at_ms, .. } = action {
                paced_at = Some(*at_ms);
            }
        }
        answer_all(&mut a, &mut b, &actions, T0);
    }
    assert_eq!(requests, burst, "more requests than the receiver answers per peer");
    let at = paced_at.expect("the messages past the burst say when they may leave");
    assert!(at > T0 && at <= T0 + 20, "next request at +{} ms", at - T0);
    assert_eq!(a.e().queued(), 20);
    // When the timer fires, the 20 that waited leave in one request.
    let key = b.key();
    let actions = a.e().flush_peer(&key, at).unwrap();
    let sent = transmits(&actions);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.len(), 20);
    answer_all(&mut a, &mut b, &actions, at);
    assert_eq!(a.e().queued(), 0);
    let b_alice = b.contact_of(&mut a);
    assert_eq!(b.e().store().history(&b_alice, 1_000, None).unwrap().len(), burst + 20);
}

#[test]
fn at_most_a_window_of_requests_is_in_flight_and_an_answer_sends_what_waited() {
    let (mut a, mut b, a_bob, _) = alice_and_bob();
    let window = kabar_node::pace::WINDOW;
    let mut in_flight = Vec::new();
    for i in 0..window + 5 {
        let (_, actions) = a.e().send(&a_bob, Content::text(format!("m{i}")), T0, &mut rand::rng()).unwrap();
        in_flight.extend(actions.into_iter().filter(|a| matches!(a, Action::Transmit { .. })));
    }
    assert_eq!(in_flight.len(), window, "requests in flight past the window");
    // The first answer sends the 5 that waited, together.
    let follow = answer_all(&mut a, &mut b, &in_flight[..1], T0);
    let sent = transmits(&follow);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.len(), 5);
}

#[test]
fn flushes_deferred_over_a_group_leave_as_one_request() {
    let (mut a, mut b, a_bob, _) = alice_and_bob();
    a.e().defer_flushes();
    for i in 0..16 {
        let (_, actions) = a.e().send(&a_bob, Content::text(format!("m{i}")), T0, &mut rand::rng()).unwrap();
        assert!(transmits(&actions).is_empty(), "a send inside a group transmitted at once");
    }
    let actions = a.e().flush_deferred(T0).unwrap();
    let sent = transmits(&actions);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1.len(), 16);
    // After the group, flushes are immediate again.
    answer_all(&mut a, &mut b, &actions, T0);
    let (_, actions) = a.e().send(&a_bob, Content::text("after"), T0, &mut rand::rng()).unwrap();
    assert_eq!(transmits(&actions).len(), 1);
}

#[test]
fn staged_sends_commit_together_continue_each_session_and_arrive_in_order() {
    let (mut a, mut b, a_bob, b_alice) = alice_and_bob();
    let mut c = Party::new("carol", ProfileKind::Personal);
    let mut d = Party::new("dave", ProfileKind::Personal);
    let a_carol = a.knows(&mut c, "Carol");
    let c_alice = c.knows(&mut a, "Alice");
    let a_dave = a.knows(&mut d, "Dave");
    // Sessions with Bob and Carol (none yet with Dave).
    for (to, party) in [(a_bob, &mut b), (a_carol, &mut c)] {
        let (_, actions) = a.e().send(&to, Content::text("hello"), T0, &mut rand::rng()).unwrap();
        pump(&mut a, party, actions, T0);
    }
    let t = T0 + 1;
    a.e().defer_flushes();
    a.e().stage_sends(true).unwrap();
    let mut ids = Vec::new();
    for (i, to) in [a_bob, a_bob, a_carol, a_bob, a_carol].iter().enumerate() {
        let (id, actions) = a.e().send(to, Content::text(format!("staged {i}")), t, &mut rand::rng()).unwrap();
        assert!(transmits(&actions).is_empty());
        ids.push(id);
    }
    assert_eq!(a.e().staged(), 5);
    assert!(ids.iter().all(|id| a.store().message(id).unwrap().is_none()), "staged: not in the store yet");
    // A send that starts a session (Dave's) is not staged: what is staged
    // is committed first, and it goes after.
    let (dave_id, _) = a.e().send(&a_dave, Content::text("hello dave"), t, &mut rand::rng()).unwrap();
    assert_eq!(a.e().staged(), 0);
    assert!(ids.iter().chain([&dave_id]).all(|id| status(&mut a, id) == MessageStatus::Queued));
    let (late, _) = a.e().send(&a_bob, Content::text("staged 5"), t, &mut rand::rng()).unwrap();
    assert_eq!(a.e().staged(), 1);
    ids.push(late);
    // The group's end commits the rest before anything leaves.
    let actions = a.e().flush_deferred(t).unwrap();
    assert_eq!(a.e().staged(), 0);
    a.e().stage_sends(false).unwrap();
    assert_eq!(a.e().queued(), a.store().outbox().unwrap().len());
    let seqs: Vec<u64> = a.store().history(&a_bob, 100, None).unwrap().iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (seqs[0]..seqs[0] + 5).collect::<Vec<_>>(), "Bob's messages numbered one after another");
    let (bob_key, carol_key) = (b.key(), c.key());
    let (to_bob, rest): (Vec<Action>, Vec<Action>) =
        actions.into_iter().partition(|x| matches!(x, Action::Transmit { peer, .. } if *peer == bob_key));
    let to_carol: Vec<Action> =
        rest.into_iter().filter(|x| matches!(x, Action::Transmit { peer, .. } if *peer == carol_key)).collect();
    pump(&mut a, &mut b, to_bob, t);
    pump(&mut a, &mut c, to_carol, t);
    let got = |p: &mut Party, from: &ContactId| -> Vec<String> { texts(p, from).into_iter().map(|(_, t)| t).collect() };
    assert_eq!(got(&mut b, &b_alice), ["hello", "staged 0", "staged 1", "staged 3", "staged 5"]);
    assert_eq!(got(&mut c, &c_alice), ["hello", "staged 2", "staged 4"]);
    assert!(ids.iter().all(|id| status(&mut a, id) == MessageStatus::Delivered));
}

#[test]
fn a_request_never_exceeds_the_byte_limit_however_large_its_messages() {
    let (mut a, mut b, a_bob, _) = alice_and_bob();
    let big = "x".repeat(30 * 1024);
    a.e().defer_flushes();
    for _ in 0..200 {
        a.e().send(&a_bob, Content::text(big.clone()), T0, &mut rand::rng()).unwrap();
    }
    let actions = a.e().flush_deferred(T0).unwrap();
    let sent = transmits(&actions);
    assert_eq!(sent.len(), 1);
    let bytes: usize = 2 + sent[0].2.iter().map(|e| 4 + e.len()).sum::<usize>();
    assert!(bytes <= kabar_node::wire::MAX_REQUEST_BYTES, "{bytes} bytes in one request");
    assert!(sent[0].1.len() < 200 && sent[0].1.len() > 64, "{} envelopes", sent[0].1.len());
    // Each answer sends more, until all 200 arrived.
    let mut actions = actions;
    for _ in 0..10 {
        if transmits(&actions).is_empty() {
            break;
        }
        actions = answer_all(&mut a, &mut b, &actions, T0);
    }
    assert_eq!(a.e().queued(), 0);
}
